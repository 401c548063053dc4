//! The limits a [`Reveal`](super::Reveal) works within and the events it asks its driver to
//! carry out.

use std::time::Duration;

use shoal_core::PieceIndex;

/// Limits of a [`Reveal`](super::Reveal). `Default` gives the values a node uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pieces shown to one subscriber and not yet sent, at most (default 32: a lone
    /// downloader keeps its requests pipelined).
    pub per_peer: usize,
    /// Pieces shown and not yet sent over all subscribers (default 32), shared out evenly
    /// but at least one each: requests for them wait in the seed's upload queue, and a
    /// longer queue only ages them.
    pub budget: usize,
    /// Subscribers given a view (default 1024); later ones see nothing until the mode ends.
    pub max_peers: usize,
    /// Subscribers that see everything before any is given a partial view (default 3): with
    /// few downloaders the seed's copies matter little, while a downloader that has pieces
    /// from elsewhere (another origin) would wait for the seed to show it others.
    pub min_peers: usize,
    /// How long a shown piece may go unrequested before it is hidden again (default 1 s): the
    /// subscriber may have had it from elsewhere (the seed does not hear of its haves).
    pub deadline: Duration,
    /// How long a requested piece may go unsent before it is hidden again (default 8 s): longer
    /// than a request may wait for an upload slot (a node's 5 s) plus its sending, so a
    /// request that is only queued is not shown to another subscriber meanwhile.
    pub send_deadline: Duration,
    /// How long the mode may go without a piece leaving before it ends and everything is
    /// shown (default 10 s): whatever holds the first copy back (subscribers that take what
    /// they are shown and never ask, say), downloaders are not held back for longer.
    pub stall: Duration,
    /// After the first copy is out, how long the origin at least goes on showing only pieces
    /// nobody it sent them to keeps any more (default 10 s), before it shows everything.
    pub guard: Duration,
    /// The same as a share of the time the first copy took, from the first piece sent
    /// (default 1: as long again), when that is longer than `guard`: a swarm needs longer to
    /// spread a longer first copy.
    pub guard_share: f64,
    /// The guard's longest (default 60 s): a recipient that keeps pieces and never serves
    /// them (unreachable, or hostile) holds them from the others no longer than this.
    pub max_guard: Duration,
    /// How long a subscriber holds a piece the origin sent it before it counts as having
    /// passed it on (default 2 s): when it leaves, such a piece is kept by the swarm, not
    /// shown again while guarding. Only a piece its recipients left with sooner is taken
    /// as lost. `Duration::MAX`: every piece of a leaver is shown again.
    pub spread_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            per_peer: 32,
            budget: 32,
            max_peers: 1024,
            min_peers: 3,
            deadline: Duration::from_secs(1),
            send_deadline: Duration::from_secs(8),
            stall: Duration::from_secs(10),
            guard: Duration::from_secs(10),
            guard_share: 1.0,
            max_guard: Duration::from_secs(60),
            spread_after: Duration::from_secs(2),
        }
    }
}

/// What the driver should tell subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<P> {
    /// Send this subscriber a have for this piece.
    Show {
        /// The subscriber.
        peer: P,
        /// The piece.
        piece: PieceIndex,
    },
    /// The mode is over (the guard after the first copy ended, or the mode stalled): send
    /// every subscriber the full bitfield.
    ShowAll,
    /// A crowd formed: this subscriber, shown everything so far, now sees only a few pieces;
    /// send it [`Reveal::view`](super::Reveal::view) as its bitfield (it replaces the whole one it was sent).
    Narrow {
        /// The subscriber.
        peer: P,
    },
}
