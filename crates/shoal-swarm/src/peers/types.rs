//! The public types of [`super::PeerSet`]: its limits, what it asks of the driver, and what
//! the driver reports back.

use std::time::Duration;

use shoal_core::PieceIndex;

/// Limits and deadlines of a `PeerSet`. `Default` gives the values a node uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// Peers connected or being dialed at once (default 32).
    pub max_connected: usize,
    /// Dials in progress at once (default 8).
    pub max_dialing: usize,
    /// Candidates waiting to be dialed; more are ignored (default 256).
    pub max_candidates: usize,
    /// Dropped peers remembered, bans included (default 4096): so they are not redialed at once,
    /// and reported by `PeerSet::undelivered`. When full, the oldest drop that is not a ban is
    /// forgotten first, then the oldest ban. Once pieces are fetched a forgotten ban still holds:
    /// the picker keeps every ban of the download (one per peer that was connected), including
    /// the manifest round's, handed to it at start. Before that, a ban is forgotten only after
    /// `max_dropped` later drops, and the manifest round dials each candidate it was given once.
    pub max_dropped: usize,
    /// Peers asked for the manifest at once (default 4).
    pub manifest_parallel: usize,
    /// How long a peer may take to answer the manifest request (default 10 s).
    pub manifest_deadline: Duration,
    /// How long a subscribed peer may take to send its bitfield (default 10 s).
    pub bitfield_deadline: Duration,
    /// How long a peer with requests in flight may send no bytes (default 10 s).
    pub stall_deadline: Duration,
    /// The same for a peer that has delivered a verified piece (default 30 s): a proven
    /// source whose upload queue is long (a busy seed) is given more patience.
    pub proven_stall_deadline: Duration,
    /// First backoff after a `Busy` (default 250 ms); doubles per `Busy` in a row.
    pub busy_backoff: Duration,
    /// The longest backoff after `Busy` (default 10 s).
    pub busy_backoff_max: Duration,
    /// Requests in flight to a peer that has not delivered yet (default 2).
    pub initial_window: usize,
    /// The longest a request may take from being sent to its piece being verified and still
    /// grow the peer's window (default 250 ms). A slower one waited in the peer's upload
    /// queue: the window shrinks by one instead, so the pieces it would have held go to
    /// peers with short queues rather than waiting behind a crowded one.
    pub window_delay: Duration,
    /// How often, at most, a peer is rotated out for a waiting candidate (default 500 ms): the
    /// first peers a flash crowd learns of are everyone's (their uplinks crowded while later
    /// arrivals' idle), so the set keeps trading its worst peer for the tracker's newer
    /// suggestions.
    pub rotate_every: Duration,
    /// How long a peer is kept before it may be rotated out (default 2 s).
    pub rotate_grace: Duration,
    /// How long a dropped (not banned) peer waits before it may be dialed again (default 30 s).
    pub retry_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connected: 32,
            max_dialing: 8,
            max_candidates: 256,
            max_dropped: 4096,
            manifest_parallel: 4,
            manifest_deadline: Duration::from_secs(10),
            bitfield_deadline: Duration::from_secs(10),
            stall_deadline: Duration::from_secs(10),
            proven_stall_deadline: Duration::from_secs(30),
            busy_backoff: Duration::from_millis(250),
            busy_backoff_max: Duration::from_secs(10),
            initial_window: 2,
            window_delay: Duration::from_millis(250),
            rotate_every: Duration::from_millis(500),
            rotate_grace: Duration::from_secs(2),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// Why a peer was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// It sent a manifest that is not the content's, bad pieces, or refused pieces it
    /// advertised, too often: never asked again in this download.
    Banned,
    /// It did not answer the manifest request in time.
    ManifestTimeout,
    /// It sent no bitfield in time.
    NoBitfield,
    /// Its requests made no progress in time.
    Stalled,
    /// Rotated out for a waiting candidate, having delivered nothing.
    NeverDelivered,
    /// Rotated out for a waiting candidate while in a run of `Busy` answers (backing off, or
    /// asking again after a backoff): a crowded holder, not one that fails to deliver.
    Busy,
    /// Rotated out for a waiting candidate: the slowest.
    Slow,
    /// It refused the content or a request (it does not hold it, or its copy changed).
    Refused,
    /// It broke the protocol (a bitfield of the wrong length, say).
    Protocol,
    /// The connection closed or a request failed on it.
    Gone,
}

impl DropReason {
    /// True for reasons that mean a holder does not deliver (what a tracker should hear of).
    /// Never `Busy`: a seed at its upload capacity answers `Busy` (a serving node does so well
    /// before the 10 s deadlines here), and a crowded seed is not a holder that fails to deliver.
    pub fn is_undelivering(self) -> bool {
        matches!(
            self,
            Self::Banned
                | Self::ManifestTimeout
                | Self::NoBitfield
                | Self::Stalled
                | Self::NeverDelivered
        )
    }
}

/// What a request for a piece came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceOutcome {
    /// The piece arrived and matched its hash.
    Verified,
    /// The piece arrived and did not match its hash.
    Bad,
    /// The peer said it does not hold a piece it advertised.
    NotHeld,
    /// The peer is at its upload capacity.
    Busy,
    /// The peer refused for another reason (its copy changed, say): no more requests.
    Refused,
    /// The stream or connection failed.
    Failed,
}

/// What the manifest request to a peer came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestReply {
    /// A manifest that hashes to the content id.
    Valid,
    /// A manifest that does not (or does not decode): the peer lies.
    Invalid,
    /// Refused, or the stream failed.
    Failed,
}

/// What the driver should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<P, A> {
    /// Connect to this address (expecting this id, if known); report with
    /// `PeerSet::handle_dialed`.
    Dial {
        /// The address.
        addr: A,
        /// The id the peer must prove, if known.
        id: Option<P>,
    },
    /// Ask this peer for the manifest; report with `PeerSet::handle_manifest`.
    AskManifest(P),
    /// Stop asking this peer for the manifest (another answered first); report nothing.
    CancelManifest(P),
    /// Open the control stream: subscribe to the content to receive the peer's bitfield.
    Subscribe(P),
    /// Request this piece; report with `PeerSet::handle_piece`.
    Request {
        /// The peer.
        peer: P,
        /// The piece.
        piece: PieceIndex,
    },
    /// Cancel this request (another copy arrived first); report nothing.
    Cancel {
        /// The peer.
        peer: P,
        /// The piece.
        piece: PieceIndex,
    },
    /// Close the connection and cancel everything in flight to this peer; report nothing.
    Close {
        /// The peer.
        peer: P,
        /// Why.
        reason: DropReason,
    },
}

/// What a dial came to, as far as the set is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Keep the connection.
    Accepted,
    /// Close the new connection: a duplicate, or a peer dropped or banned earlier.
    Refused,
}
