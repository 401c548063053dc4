//! Pumping one control stream: hellos, subscriptions, bitfields and haves.

use std::collections::HashSet;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};
use shoal_wire::{Decoder, Event, Message, RejectReason, Session};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{CLOSE_PROTOCOL, HELLO_DEADLINE, WRITE_STALL};
use crate::io::{read_frame, write_frame_within, ReadError, Stalled, WriteError};
use crate::node::Node;

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
    // Contents this session is about (either side subscribed), for per-content peer counts.
    let mut about: HashSet<ContentId> = HashSet::new();
    let hello_by = tokio::time::Instant::now() + HELLO_DEADLINE;
    let reason = async {
        if let Some(m) = first {
            session.handle_message(m)?;
        }
        loop {
            while let Some(ev) = session.poll_event() {
                match ev {
                    Event::Subscribed(content) => {
                        let held = answer_subscription(&node, &mut session, content);
                        if held && about.insert(content) {
                            node.stats.peer_session(content, peer, true);
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
                    _ => {}
                }
            }
            while let Some(m) = session.poll_transmit() {
                write_frame_within(&mut send, &m, WRITE_STALL).await?;
            }
            let ready = session.is_ready();
            tokio::select! {
                frame = read_frame::<Message>(&mut recv, &mut dec) => match frame {
                    Ok(Some(m)) => session.handle_message(m)?,
                    Ok(None) => return Err(StreamError::Closed),
                    Err(e) => {
                        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
                        return Err(e.into());
                    }
                },
                have = haves.recv() => match have {
                    Ok((c, p)) => session.announce_have(c, p),
                    // Missed some: subscribers catch up from later haves.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err(StreamError::ShuttingDown),
                },
                () = tokio::time::sleep_until(hello_by), if !ready => {
                    return Err(Stalled { what: "hello", after: HELLO_DEADLINE }.into());
                }
            }
        }
    }
    .await;
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

/// Accepts a subscription with our bitfield or refuses it; true if accepted (we hold it).
fn answer_subscription(node: &Node, session: &mut Session, content: ContentId) -> bool {
    match node.contents.holding(content) {
        Ok(Some(b)) => {
            session.accept_subscription(content, b);
            true
        }
        Ok(None) => {
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
