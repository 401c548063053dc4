//! Who may push into a storage node, and the memory budget for push bodies.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_core::NodeId;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::Grants;

/// Push body bytes held in memory at once, across all pushers.
pub(crate) const BODY_BUDGET: usize = 256 * 1024 * 1024;
/// Push body bytes one pusher (node id) may hold at once, unless it holds nothing else: one
/// slow sender cannot take the whole budget from the others.
pub(crate) const PEER_SHARE: u64 = BODY_BUDGET as u64 / 8;
/// Who may push into this storage node, and the memory budget for push bodies.
#[derive(Debug)]
pub(crate) struct PushGate {
    pub(crate) grants: Grants,
    budget: Semaphore,
    /// Body bytes reserved per pusher; an entry lives only while it holds some (so at most
    /// one per push in progress). Held only for map updates.
    held: Mutex<HashMap<NodeId, u64>>,
}

/// Body bytes reserved for one push; given back when dropped.
pub(crate) struct Reservation<'a> {
    gate: &'a PushGate,
    peer: NodeId,
    len: u64,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut held = self.gate.held();
        if let Some(h) = held.get_mut(&self.peer) {
            *h = h.saturating_sub(self.len);
            if *h == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

impl PushGate {
    pub(crate) fn new(grants: Grants) -> Self {
        Self { grants, budget: Semaphore::new(BODY_BUDGET), held: Mutex::new(HashMap::new()) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, u64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `len` body bytes for `peer`, or `None` when the budget is spent or the peer
    /// already holds its share ([`PEER_SHARE`]; a lone body larger than that still fits).
    pub(crate) fn reserve(&self, peer: NodeId, len: u32) -> Option<Reservation<'_>> {
        let mut held = self.held();
        let mine = held.get(&peer).copied().unwrap_or(0);
        if mine > 0 && mine + u64::from(len) > PEER_SHARE {
            return None;
        }
        // A zero-byte body reserves nothing (a permit of 0 is valid).
        let permit = self.budget.try_acquire_many(len).ok()?;
        *held.entry(peer).or_default() += u64::from(len);
        Some(Reservation { gate: self, peer, len: u64::from(len), _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeId {
        shoal_net::Identity::generate().node_id()
    }

    #[test]
    fn one_pusher_holds_at_most_its_share_of_the_body_budget() {
        let gate = PushGate::new(Grants::default());
        let (slow, other) = (id(), id());
        let piece = 4 * 1024 * 1024;
        // A slow pusher takes bodies up to its share, then is refused...
        let held: Vec<_> =
            (0..PEER_SHARE / piece).map(|_| gate.reserve(slow, piece as u32)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(gate.reserve(slow, piece as u32).is_none(), "over its share");
        // ...while others still get the rest of the budget.
        assert!(gate.reserve(other, piece as u32).is_some());
        // A lone body larger than a share still fits, once.
        let lone = id();
        let big = gate.reserve(lone, (PEER_SHARE + 1) as u32);
        assert!(big.is_some());
        assert!(gate.reserve(lone, 1).is_none());
        drop(held);
        drop(big);
        assert!(gate.held().get(&slow).is_none(), "entries go with their last reservation");
        assert!(gate.reserve(slow, piece as u32).is_some());
    }

    #[test]
    fn the_budget_bounds_all_pushers_together() {
        let gate = PushGate::new(Grants::default());
        let piece = PEER_SHARE as u32;
        let held: Vec<_> = (0..BODY_BUDGET as u64 / PEER_SHARE)
            .map(|_| gate.reserve(id(), piece).expect("within the budget"))
            .collect();
        assert!(gate.reserve(id(), 1).is_none(), "the budget is spent");
        drop(held);
        assert!(gate.reserve(id(), piece).is_some());
    }
}
