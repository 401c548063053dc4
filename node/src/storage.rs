//! The storage side of pushes: a storage node accepts pushes ([`accept`]) from users it
//! granted space, for contents they own here, or with a re-seed token signed by its tracker
//! for exactly that holder, storage node, content and piece, not yet expired.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_core::{ContentId, NodeId, PieceIndex};
use shoal_wire::tracker::ReseedToken;

use crate::contents::Contents;
use crate::events::Events;
use crate::net::Net;
use crate::push_gate::PushGate;
use crate::stats::Stats;
use crate::tracker::Known;

mod accept;

pub(crate) use accept::serve_push;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The storage side of pushes: who may push (grants, and the tokens of this node's tracker),
/// the memory budget for bodies, and the parts a push updates.
#[derive(Debug)]
pub(crate) struct Storage {
    pub(crate) net: Arc<Net>,
    pub(crate) contents: Arc<Contents>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) events: Events,
    /// What this node's own tracker proved: its key signs the tokens that count here.
    pub(crate) known: Arc<Known>,
    pub(crate) push_gate: PushGate,
}

impl Storage {
    /// Checks a re-seed token for a push from `from`. The reason is what the pusher is told.
    pub(crate) fn check_token(
        &self,
        from: NodeId,
        content: ContentId,
        piece: PieceIndex,
        token: &[u8],
    ) -> Result<(), &'static str> {
        let t = ReseedToken::decode(token).map_err(|_| "malformed re-seed token")?;
        let signed = t.signed_bytes();
        let trackers = self.known.tracker_ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !trackers.iter().any(|id| id.public_key().verify(&signed, &t.signature)) {
            return Err("re-seed token not signed by this storage node's tracker (forged?)");
        }
        if t.storage != self.net.node_id() {
            return Err("re-seed token is for another storage node");
        }
        if t.holder != from {
            return Err("re-seed token was issued to another node");
        }
        if t.content != content || !t.pieces.contains(&piece) {
            return Err("re-seed token does not cover this piece");
        }
        if t.expires_ms <= now_ms() {
            return Err("re-seed token expired; wait for a new directive");
        }
        Ok(())
    }
}
