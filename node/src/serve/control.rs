//! Pumping one control stream: hellos, subscriptions, bitfields and haves.
//!
//! Our new pieces reach a subscribed peer in batches: a have waits at most [`HAVE_TICK`] for
//! others to share its write (or goes at once with [`HAVE_BATCH`] waiting). When this stream
//! fell behind the node's have broadcast and lost some, the peer gets the full bitfield of
//! each content it subscribed to instead, so its view of what we hold never goes wrong.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};
use shoal_wire::{encode, Decoder, Event, Message, RejectReason, Session};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{CLOSE_PROTOCOL, HELLO_DEADLINE, WRITE_STALL};
use crate::io::{read_frame, write_within, ReadError, Stalled, WriteError};
use crate::node::Node;
use crate::reveal::Shown;

/// The longest a have waits for others to share its write.
const HAVE_TICK: Duration = Duration::from_millis(50);
/// Haves that leave at once, without waiting for the tick.
const HAVE_BATCH: usize = 64;
/// Bytes gathered before a write goes out anyway (what one write holds, at most about).
const WRITE_CHUNK: usize = 64 * 1024;

/// What a control stream reports to a downloader.
#[derive(Debug)]
pub(crate) enum PeerEvent {
    Bitfield(NodeId, Bitfield),
    Have(NodeId, PieceIndex),
    Rejected(NodeId, RejectReason, String),
    Closed(NodeId, String),
}

/// Why a control stream ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StreamError {
    /// The peer broke the protocol (a message out of order or over a cap).
    #[error(transparent)]
    Protocol(#[from] shoal_wire::ProtocolError),
    /// The peer let a deadline pass (its hello, or taking what we sent).
    #[error(transparent)]
    Stalled(#[from] Stalled),
    /// A frame could not be read (malformed, oversized, or the stream failed).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// What we sent could not be written.
    #[error(transparent)]
    Write(WriteError),
    /// The peer ended the stream.
    #[error("control stream closed")]
    Closed,
    /// This node is shutting down.
    #[error("node shutting down")]
    ShuttingDown,
}

impl From<WriteError> for StreamError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stalled(s) => Self::Stalled(s),
            e => Self::Write(e),
        }
    }
}

/// Pumps one control stream: sends what the session queues, feeds it what arrives, answers the
/// peer's subscriptions from the store, announces our new pieces to subscribers, and forwards
/// bitfields, haves and rejects of our own subscriptions to `events`.
///
/// Deadlines: the remote's hello must arrive within [`HELLO_DEADLINE`] of the start, and every
/// message we send must be taken by the peer within [`WRITE_STALL`]; otherwise the stream ends.
/// An idle but live control stream is fine (QUIC keep-alives show the peer is there). Per-peer
/// state: the session's bounded sets, and per-content counters only for contents this node
/// holds (subscriptions it accepted) or fetches (its own subscriptions).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive_control(
    node: Arc<Node>,
    conn: &Connection,
    peer: NodeId,
    mut session: Session,
    first: Option<Message>,
    mut send: SendStream,
    mut recv: RecvStream,
    mut dec: Decoder,
    events: Option<mpsc::Sender<PeerEvent>>,
) {
    let mut haves = node.events.haves.subscribe();
    // What this node, as a content's origin, shows the peer piece by piece (see `reveal`).
    let (shown_tx, mut shown_rx) = mpsc::channel(crate::reveal::QUEUE);
    let mut batch = HaveBatch::default();
    // Contents the peer subscribed to and we accepted: what a lag re-sends bitfields of.
    let mut served: HashSet<ContentId> = HashSet::new();
    // Contents this session is about (either side subscribed), for per-content peer counts.
    let mut about: HashSet<ContentId> = HashSet::new();
    let hello_by = Instant::now() + HELLO_DEADLINE;
    let reason = async {
        if let Some(m) = first {
            session.handle_message(m)?;
        }
        // Served contents whose bitfield is to be re-sent (after a lag).
        let mut resync: Vec<ContentId> = Vec::new();
        loop {
            while let Some(ev) = session.poll_event() {
                match ev {
                    Event::Subscribed(content) => {
                        let held =
                            answer_subscription(&node, &mut session, content, peer, &shown_tx);
                        if held {
                            served.insert(content);
                            if about.insert(content) {
                                node.stats.peer_session(content, peer, true);
                            }
                        }
                    }
                    Event::Bitfield(c, b) => {
                        // Only for our own subscriptions: a content this node is fetching.
                        if about.insert(c) {
                            node.stats.peer_session(c, peer, true);
                        }
                        forward(&events, PeerEvent::Bitfield(peer, b)).await
                    }
                    Event::Have(_, p) => forward(&events, PeerEvent::Have(peer, p)).await,
                    Event::Rejected(_, r, t) => {
                        forward(&events, PeerEvent::Rejected(peer, r, t)).await
                    }
                    Event::Ready => {
                        node.trackers.known().note_stated_region(peer, session.remote_region())
                    }
                    _ => {}
                }
            }
            // What is queued leaves in as few writes as possible, each at most about
            // WRITE_CHUNK; bitfields to re-send are read from the store one at a time.
            let mut out = BytesMut::new();
            loop {
                let m = match session.poll_transmit() {
                    Some(m) => m,
                    None => match resync.pop().map(|c| (c, resync_view(&node, c, peer))) {
                        Some((content, Ok(Some(bitfield)))) => {
                            session.replace_bitfield(content, bitfield);
                            continue;
                        }
                        // No longer held, or unreadable: nothing we can vouch for.
                        Some(_) => continue,
                        None => break,
                    },
                };
                out.extend_from_slice(&encode(&m));
                if out.len() >= WRITE_CHUNK {
                    write_within(&mut send, out.split().freeze(), WRITE_STALL).await?;
                }
            }
            if !out.is_empty() {
                write_within(&mut send, out.freeze(), WRITE_STALL).await?;
            }
            let ready = session.is_ready();
            let due = batch.due();
            tokio::select! {
                frame = read_frame::<Message>(&mut recv, &mut dec) => match frame {
                    Ok(Some(m)) => session.handle_message(m)?,
                    Ok(None) => return Err(StreamError::Closed),
                    Err(e) => {
                        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
                        return Err(e.into());
                    }
                },
                have = haves.recv(), if !batch.is_full() => match have {
                    // Only contents this peer subscribed to from us: the others' haves would
                    // fill batches (and make the stream lag) for nothing.
                    Ok((c, p)) if served.contains(&c) => batch.push(Instant::now(), c, p),
                    Ok(_) => {}
                    // Some haves were lost: the peer gets whole bitfields instead.
                    Err(broadcast::error::RecvError::Lagged(_)) => batch.lag(Instant::now()),
                    Err(_) => return Err(StreamError::ShuttingDown),
                },
                shown = shown_rx.recv() => match shown {
                    // Not batched: the peer waits for it to ask for the next piece.
                    Some(Shown::Piece(c, p)) => session.announce_have(c, p),
                    Some(Shown::All(c)) => resync.push(c),
                    Some(Shown::View(c, b)) => session.replace_bitfield(c, b),
                    // This stream holds a sender itself: never closed while it runs.
                    None => {}
                },
                () = sleep_until_some(due), if due.is_some() => match batch.take() {
                    Flush::Haves(list) => {
                        for (c, p) in list {
                            session.announce_have(c, p);
                        }
                    }
                    Flush::Bitfields => resync = served.iter().copied().collect(),
                },
                () = tokio::time::sleep_until(hello_by), if !ready => {
                    return Err(Stalled { what: "hello", after: HELLO_DEADLINE }.into());
                }
            }
        }
    }
    .await;
    for &c in &served {
        node.reveals.unsubscribe(c, peer, &shown_tx);
    }
    for c in about {
        node.stats.peer_session(c, peer, false);
    }
    let reason: Result<(), StreamError> = reason;
    let text = match reason {
        Err(e) => {
            match &e {
                StreamError::Protocol(pe) => {
                    debug!(error = %pe, "peer broke the protocol");
                    conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol error");
                }
                StreamError::Stalled(_) => {
                    debug!(error = %e, "control stream stalled");
                    conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"stalled");
                }
                _ => {}
            }
            e.to_string()
        }
        Ok(()) => "closed".into(),
    };
    if let Some(tx) = &events {
        let _ = tx.send(PeerEvent::Closed(peer, text)).await;
    }
}

/// The bitfield to re-send `peer` for `content`: its view, where this node reveals the
/// content, else what the store holds.
fn resync_view(node: &Node, content: ContentId, peer: NodeId) -> anyhow::Result<Option<Bitfield>> {
    match node.reveals.view(content, peer) {
        Some(view) => Ok(Some(view)),
        None => node.contents.holding(content),
    }
}

/// Accepts a subscription with our bitfield (the part shown to `peer`, for a content this node
/// reveals) or refuses it; true if accepted (we hold it).
fn answer_subscription(
    node: &Node,
    session: &mut Session,
    content: ContentId,
    peer: NodeId,
    shown: &mpsc::Sender<Shown>,
) -> bool {
    if let Some(view) = node.reveals.subscribe(content, peer, shown) {
        session.accept_subscription(content, view);
        return true;
    }
    match node.contents.holding(content) {
        Ok(Some(b)) => {
            session.accept_subscription(content, b);
            true
        }
        Ok(None) => {
            // A storage node asked for what it lacks starts pulling it through (the asker may
            // have taken the manifest from another peer and never ask this one for it): it is
            // a holder at the asker's next lookup.
            if let Some(pulls) = &node.pulls {
                pulls.request(content);
            }
            session.reject_subscription(content, RejectReason::NotFound, "content not held here");
            false
        }
        Err(e) => {
            warn!(error = %e, "cannot read bitfield");
            session.reject_subscription(content, RejectReason::Internal, "cannot read store");
            false
        }
    }
}

async fn forward(events: &Option<mpsc::Sender<PeerEvent>>, ev: PeerEvent) {
    if let Some(tx) = events {
        let _ = tx.send(ev).await;
    }
}

/// Sleeps until `at`; for ever without one (the `select!` branch is disabled then anyway).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a batch sends when it is due.
#[derive(Debug, PartialEq, Eq)]
enum Flush {
    /// These haves, in the order they came.
    Haves(Vec<(ContentId, PieceIndex)>),
    /// The full bitfield of every served content (haves were lost).
    Bitfields,
}

/// Our new pieces gathered for one peer. Holds at most [`HAVE_BATCH`] haves: at that count it
/// is due at once, and the driver does not read the broadcast until it took it.
#[derive(Debug, Default)]
struct HaveBatch {
    haves: Vec<(ContentId, PieceIndex)>,
    /// When the oldest waiting have (or the lag) arrived.
    since: Option<Instant>,
    /// The broadcast lagged since the last flush.
    lagged: bool,
}

impl HaveBatch {
    fn push(&mut self, now: Instant, content: ContentId, piece: PieceIndex) {
        self.since.get_or_insert(now);
        // After a lag the bitfields, read when the batch is taken, hold this piece too.
        if !self.lagged {
            self.haves.push((content, piece));
        }
    }

    fn lag(&mut self, now: Instant) {
        self.since.get_or_insert(now);
        self.lagged = true;
        self.haves.clear();
    }

    fn is_full(&self) -> bool {
        self.haves.len() >= HAVE_BATCH
    }

    /// When the batch is to be taken; `None` while empty.
    fn due(&self) -> Option<Instant> {
        let since = self.since?;
        Some(if self.is_full() { since } else { since + HAVE_TICK })
    }

    fn take(&mut self) -> Flush {
        self.since = None;
        if std::mem::take(&mut self.lagged) {
            Flush::Bitfields
        } else {
            Flush::Haves(std::mem::take(&mut self.haves))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(b: u8) -> ContentId {
        ContentId([b; 32])
    }

    #[test]
    fn haves_wait_a_tick_or_a_full_batch() {
        let t0 = Instant::now();
        let mut b = HaveBatch::default();
        assert_eq!(b.due(), None, "nothing to send");
        b.push(t0, content(1), PieceIndex(3));
        b.push(t0 + Duration::from_millis(30), content(2), PieceIndex(4));
        assert_eq!(b.due(), Some(t0 + HAVE_TICK), "the oldest have sets the tick");
        let want = vec![(content(1), PieceIndex(3)), (content(2), PieceIndex(4))];
        assert_eq!(b.take(), Flush::Haves(want));
        assert_eq!(b.due(), None);
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..HAVE_BATCH as u32 {
            b.push(t1, content(1), PieceIndex(i));
        }
        assert!(b.is_full());
        assert_eq!(b.due(), Some(t1), "a full batch is due at once");
    }

    #[test]
    fn a_lag_sends_bitfields_not_a_partial_list() {
        let t0 = Instant::now();
        let mut b = HaveBatch::default();
        b.push(t0, content(1), PieceIndex(1));
        b.lag(t0 + Duration::from_millis(10));
        b.push(t0 + Duration::from_millis(20), content(1), PieceIndex(2));
        assert_eq!(b.due(), Some(t0 + HAVE_TICK));
        assert_eq!(b.take(), Flush::Bitfields);
        b.push(t0 + Duration::from_secs(1), content(1), PieceIndex(5));
        assert_eq!(b.take(), Flush::Haves(vec![(content(1), PieceIndex(5))]), "lag is over");
    }
}
