//! Upload slots, granted in super-seeding order, bounded in count, bytes, waiters and time.
//!
//! At most `max_active` pieces (and manifests) are read and sent at once, holding at most
//! `max_bytes` between them (one upload may exceed it alone, so a piece larger than the budget
//! is still served, one at a time). When more requests wait, the next slot goes to the request
//! for the piece this node has sent least often (oldest first among equals), so a seed facing
//! many downloaders sends every piece once before it sends any twice, and the downloaders
//! complete each other. This is BitTorrent's super-seeding idea, done by ordering rather than by
//! hiding pieces.
//!
//! Fairness between peers: while other peers wait, a peer holding its share of the slots
//! (a quarter) is served after them, and one peer may hold at most a quarter of the waiting
//! places; so one peer that asks for everything and reads slowly cannot starve the others.
//!
//! Bounds, so strangers cannot grow this state: at most `max_waiting` requests wait (more are
//! refused at once with [`Busy`]), a waiter gives up after its deadline, and send counts are kept
//! only for contents the caller checked it holds, sized by their manifest's piece count
//! (`u16` per piece), for at most [`MAX_TRACKED_CONTENTS`] contents (least recently served
//! forgotten first): at most 32 x 65,536 x 2 B = 4 MiB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_core::{ContentId, NodeId, PieceIndex};
use tokio::sync::oneshot;

/// Contents whose per-piece send counts are kept.
pub(crate) const MAX_TRACKED_CONTENTS: usize = 32;

/// No slot: too many requests wait already, or none came free within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upload slots busy; try later or another peer")]
pub(crate) struct Busy;

/// A piece of a held content, checked by the caller: `piece < pieces`, the manifest's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PieceKey {
    pub(crate) content: ContentId,
    pub(crate) piece: PieceIndex,
    pub(crate) pieces: u32,
}

/// A granted upload slot; dropping it frees the slot for the next waiter.
#[derive(Debug)]
pub(crate) struct Slot {
    /// `None` once handed back by hand (a grant whose waiter vanished, under the lock).
    uploads: Option<Arc<Uploads>>,
    peer: NodeId,
    bytes: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(u) = self.uploads.take() {
            u.release(self.peer, self.bytes);
        }
    }
}

#[derive(Debug)]
struct Waiter {
    peer: NodeId,
    key: Option<PieceKey>,
    bytes: u64,
    seq: u64,
    tx: oneshot::Sender<Slot>,
}

/// Send counts of one content.
#[derive(Debug)]
struct Counts {
    per_piece: Vec<u16>,
    /// When this content was last served (a tick of [`Sent`]), for eviction.
    used: u64,
}

/// Send counts per content, at most [`MAX_TRACKED_CONTENTS`] of them.
#[derive(Debug, Default)]
struct Sent {
    contents: HashMap<ContentId, Counts>,
    tick: u64,
}

impl Sent {
    fn get(&self, key: &PieceKey) -> u16 {
        let counts = self.contents.get(&key.content);
        counts.and_then(|c| c.per_piece.get(key.piece.0 as usize)).copied().unwrap_or(0)
    }

    fn record(&mut self, key: &PieceKey) {
        if key.piece.0 >= key.pieces {
            return;
        }
        self.tick += 1;
        if !self.contents.contains_key(&key.content) && self.contents.len() >= MAX_TRACKED_CONTENTS
        {
            let oldest = self.contents.iter().min_by_key(|(_, c)| c.used).map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.contents.remove(&id);
            }
        }
        let c = self
            .contents
            .entry(key.content)
            .or_insert_with(|| Counts { per_piece: vec![0; key.pieces as usize], used: 0 });
        c.used = self.tick;
        // A content's piece count never changes (the content id fixes the manifest); if a
        // caller disagrees, the count is ignored rather than the vector grown.
        if let Some(n) = c.per_piece.get_mut(key.piece.0 as usize) {
            *n = n.saturating_add(1);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    active: usize,
    bytes: u64,
    /// Slots held and places waiting, per peer; an entry lives while either is non-zero.
    per_peer: HashMap<NodeId, (usize, usize)>,
    waiting: Vec<Waiter>,
    sent: Sent,
    seq: u64,
}

/// The node's upload slots.
#[derive(Debug)]
pub(crate) struct Uploads {
    max_active: usize,
    max_bytes: u64,
    max_waiting: usize,
    /// This value itself, for the slots `dispatch` grants (it runs from `&self`).
    me: std::sync::Weak<Uploads>,
    // Held only for bookkeeping, never across an await.
    state: Mutex<State>,
}

/// Removes a waiter that gave up (deadline or cancellation) from the queue.
struct WaitGuard<'a> {
    uploads: &'a Uploads,
    seq: u64,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.uploads.lock();
        if let Some(i) = s.waiting.iter().position(|w| w.seq == self.seq) {
            let w = s.waiting.swap_remove(i);
            count(&mut s.per_peer, w.peer, (0, -1));
            // Strict order may have held back smaller waiters behind this one: they may fit now.
            self.uploads.dispatch(&mut s);
        }
    }
}

/// Adds `delta` to a peer's (slots held, places waiting), dropping the entry at zero.
fn count(map: &mut HashMap<NodeId, (usize, usize)>, peer: NodeId, delta: (isize, isize)) {
    let e = map.entry(peer).or_default();
    e.0 = e.0.saturating_add_signed(delta.0);
    e.1 = e.1.saturating_add_signed(delta.1);
    if *e == (0, 0) {
        map.remove(&peer);
    }
}

impl Uploads {
    /// Slots for `max_active` uploads holding at most `max_bytes` together, with at most
    /// `max_waiting` requests waiting.
    pub(crate) fn new(max_active: usize, max_bytes: u64, max_waiting: usize) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            max_active: max_active.max(1),
            max_bytes,
            max_waiting,
            me: me.clone(),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads in progress.
    pub(crate) fn active(&self) -> usize {
        self.lock().active
    }

    fn fits(&self, s: &State, bytes: u64) -> bool {
        s.active < self.max_active && (s.active == 0 || s.bytes + bytes <= self.max_bytes)
    }

    /// Slots one peer may hold while others wait, and places it may take in the queue.
    fn shares(&self) -> (usize, usize) {
        ((self.max_active / 4).max(1), (self.max_waiting / 4).max(1))
    }

    fn grant(
        self: &Arc<Self>,
        s: &mut State,
        peer: NodeId,
        key: Option<&PieceKey>,
        bytes: u64,
    ) -> Slot {
        s.active += 1;
        s.bytes += bytes;
        count(&mut s.per_peer, peer, (1, 0));
        if let Some(k) = key {
            s.sent.record(k);
        }
        Slot { uploads: Some(self.clone()), peer, bytes }
    }

    /// Waits at most `deadline` for a slot to send `bytes` bytes: a piece (`key`, counted for
    /// super-seeding order) or a manifest (`None`, served first). Cancel-safe: a cancelled
    /// waiter leaves the queue, and a slot granted to it just then is passed on.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        peer: NodeId,
        key: Option<PieceKey>,
        bytes: u64,
        deadline: Duration,
    ) -> Result<Slot, Busy> {
        let (mut rx, seq) = {
            let mut s = self.lock();
            if s.waiting.is_empty() && self.fits(&s, bytes) {
                return Ok(self.grant(&mut s, peer, key.as_ref(), bytes));
            }
            let waiting_here = s.per_peer.get(&peer).map_or(0, |e| e.1);
            if s.waiting.len() >= self.max_waiting || waiting_here >= self.shares().1 {
                return Err(Busy);
            }
            let (tx, rx) = oneshot::channel();
            s.seq += 1;
            let seq = s.seq;
            s.waiting.push(Waiter { peer, key, bytes, seq, tx });
            count(&mut s.per_peer, peer, (0, 1));
            (rx, seq)
        };
        let guard = WaitGuard { uploads: self, seq };
        match tokio::time::timeout(deadline, &mut rx).await {
            Ok(Ok(slot)) => Ok(slot),
            // The sender is only dropped after a send or with the waiter removed by us.
            Ok(Err(_)) => Err(Busy),
            Err(_) => {
                drop(guard);
                // A slot may have been granted between the deadline and the removal.
                rx.try_recv().map_err(|_| Busy)
            }
        }
    }

    fn release(self: &Arc<Self>, peer: NodeId, bytes: u64) {
        let mut s = self.lock();
        s.active -= 1;
        s.bytes -= bytes;
        count(&mut s.per_peer, peer, (-1, 0));
        self.dispatch(&mut s);
    }

    /// Grants free slots to waiters: among peers under their share first (any peer if none
    /// is), the least-sent piece, oldest first; strictly in that order, so a large upload is
    /// not passed over for ever by small ones.
    fn dispatch(&self, s: &mut State) {
        let share = self.shares().0;
        loop {
            let under = |w: &Waiter| s.per_peer.get(&w.peer).map_or(0, |e| e.0) < share;
            let fair = s.waiting.iter().any(under);
            let best =
                (0..s.waiting.len()).filter(|&i| !fair || under(&s.waiting[i])).min_by_key(|&i| {
                    let w = &s.waiting[i];
                    (w.key.as_ref().map_or(0, |k| s.sent.get(k)), w.seq)
                });
            let Some(i) = best.filter(|&i| self.fits(s, s.waiting[i].bytes)) else { return };
            let w = s.waiting.swap_remove(i);
            count(&mut s.per_peer, w.peer, (0, -1));
            if w.tx.is_closed() {
                continue;
            }
            let Some(me) = self.me.upgrade() else { return };
            let slot = me.grant(s, w.peer, w.key.as_ref(), w.bytes);
            if let Err(mut slot) = w.tx.send(slot) {
                // The waiter went away just now: undo the grant here (we hold the lock, so the
                // slot must not release itself) and go on.
                slot.uploads = None;
                s.active -= 1;
                s.bytes -= w.bytes;
                count(&mut s.per_peer, w.peer, (-1, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    /// The same id for the same `i` within a test run.
    fn peer(i: usize) -> NodeId {
        thread_local! {
            static IDS: Vec<NodeId> =
                (0..4).map(|_| shoal_net::Identity::generate().node_id()).collect();
        }
        IDS.with(|ids| ids[i])
    }

    fn key(c: ContentId, piece: u32) -> Option<PieceKey> {
        Some(PieceKey { content: c, piece: PieceIndex(piece), pieces: 8 })
    }

    async fn until_waiting(u: &Uploads, n: usize) {
        while u.lock().waiting.len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn least_sent_pieces_go_first() {
        let u = Uploads::new(1, 1 << 20, 16);
        let c = ContentId([1; 32]);
        let first = u.acquire(peer(0), key(c, 0), 1, LONG).await.unwrap();
        // Waiting: piece 0 again (sent once), then piece 1 (never sent).
        let u2 = u.clone();
        let again = tokio::spawn(async move { u2.acquire(peer(0), key(c, 0), 1, LONG).await });
        until_waiting(&u, 1).await;
        let u3 = u.clone();
        let fresh = tokio::spawn(async move { u3.acquire(peer(0), key(c, 1), 1, LONG).await });
        until_waiting(&u, 2).await;
        drop(first);
        let slot = fresh.await.unwrap().unwrap();
        assert!(!again.is_finished(), "the never-sent piece was served first");
        drop(slot);
        drop(again.await.unwrap().unwrap());
        assert_eq!(u.active(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiters_leave_the_queue_and_leak_no_slots() {
        let u = Uploads::new(1, 1 << 20, 16);
        let c = ContentId([2; 32]);
        let held = u.acquire(peer(0), key(c, 0), 1, LONG).await.unwrap();
        let u2 = u.clone();
        let waiter = tokio::spawn(async move { u2.acquire(peer(0), key(c, 1), 1, LONG).await });
        until_waiting(&u, 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert!(u.lock().waiting.is_empty());
        drop(held);
        assert_eq!(u.active(), 0);
        let _again = u.acquire(peer(0), key(c, 2), 1, LONG).await.unwrap();
        assert_eq!(u.active(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_and_a_passed_deadline_answer_busy() {
        let u = Uploads::new(1, 1 << 20, 2);
        let c = ContentId([3; 32]);
        let _held = u.acquire(peer(0), key(c, 0), 1, LONG).await.unwrap();
        let mut waiters = Vec::new();
        for p in 1..3 {
            let u2 = u.clone();
            waiters.push(tokio::spawn(async move {
                u2.acquire(peer(p as usize), key(c, p), 1, LONG).await
            }));
            until_waiting(&u, p as usize).await;
        }
        // Over the cap of waiters: refused at once, nothing queued.
        assert_eq!(u.acquire(peer(3), key(c, 3), 1, LONG).await.unwrap_err(), Busy);
        assert_eq!(u.lock().waiting.len(), 2);
        for w in &waiters {
            w.abort();
        }
        for w in waiters {
            let _ = w.await;
        }
        // A waiter whose deadline passes gets Busy and leaves the queue.
        assert_eq!(
            u.acquire(peer(0), key(c, 4), 1, Duration::from_millis(20)).await.unwrap_err(),
            Busy
        );
        assert!(u.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_uploads_but_never_blocks_a_lone_large_one() {
        let u = Uploads::new(8, 100, 16);
        let c = ContentId([4; 32]);
        // Larger than the budget, but alone: granted.
        let big = u.acquire(peer(0), key(c, 0), 1000, LONG).await.unwrap();
        let u2 = u.clone();
        let small = tokio::spawn(async move { u2.acquire(peer(0), key(c, 1), 60, LONG).await });
        until_waiting(&u, 1).await;
        drop(big);
        let s1 = small.await.unwrap().unwrap();
        // 60 + 60 > 100: the second waits for the first.
        let u3 = u.clone();
        let second = tokio::spawn(async move { u3.acquire(peer(0), key(c, 2), 60, LONG).await });
        until_waiting(&u, 1).await;
        assert_eq!(u.active(), 1);
        drop(s1);
        drop(second.await.unwrap().unwrap());
        assert_eq!((u.active(), u.lock().bytes), (0, 0));
    }

    #[tokio::test]
    async fn send_counts_are_bounded_by_contents_and_manifest() {
        let u = Uploads::new(4, 1 << 20, 16);
        // A piece index past the manifest's count allocates nothing.
        let far = PieceKey { content: ContentId([5; 32]), piece: PieceIndex(u32::MAX), pieces: 4 };
        drop(u.acquire(peer(0), Some(far), 1, LONG).await.unwrap());
        assert!(u.lock().sent.contents.is_empty());
        for i in 0..(MAX_TRACKED_CONTENTS as u32 * 3) {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let k = PieceKey { content: ContentId(id), piece: PieceIndex(1), pieces: 16 };
            drop(u.acquire(peer(0), Some(k), 1, LONG).await.unwrap());
        }
        let s = u.lock();
        assert_eq!(s.sent.contents.len(), MAX_TRACKED_CONTENTS);
        // The most recently served content is kept.
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&(MAX_TRACKED_CONTENTS as u32 * 3 - 1).to_be_bytes());
        assert!(s.sent.contents.contains_key(&ContentId(last)));
    }

    #[tokio::test]
    async fn a_peer_holding_its_share_is_served_after_the_others() {
        // 4 slots: a peer's share is 1 while others wait.
        let u = Uploads::new(4, 1 << 20, 64);
        let c = ContentId([9; 32]);
        let hog: Vec<Slot> = {
            let mut v = Vec::new();
            for p in 0..4 {
                v.push(u.acquire(peer(0), key(c, p), 1, LONG).await.unwrap());
            }
            v
        };
        // The hog asks for more first; an honest peer asks after it.
        let u2 = u.clone();
        let more = tokio::spawn(async move { u2.acquire(peer(0), key(c, 5), 1, LONG).await });
        until_waiting(&u, 1).await;
        let u3 = u.clone();
        let honest = tokio::spawn(async move { u3.acquire(peer(1), key(c, 6), 1, LONG).await });
        until_waiting(&u, 2).await;
        let mut hog = hog;
        drop(hog.pop());
        let slot = honest.await.unwrap().unwrap();
        assert!(!more.is_finished(), "the peer under its share went first");
        drop(slot);
        drop(more.await.unwrap().unwrap());
        drop(hog);
        assert_eq!(u.active(), 0);
        assert!(u.lock().per_peer.is_empty(), "per-peer counts go with their last slot");
    }

    #[tokio::test]
    async fn one_peer_takes_at_most_a_quarter_of_the_waiting_places() {
        let u = Uploads::new(1, 1 << 20, 8);
        let c = ContentId([10; 32]);
        let _held = u.acquire(peer(0), key(c, 0), 1, LONG).await.unwrap();
        let mut waiters = Vec::new();
        for p in 1..3 {
            let u2 = u.clone();
            waiters
                .push(tokio::spawn(async move { u2.acquire(peer(1), key(c, p), 1, LONG).await }));
        }
        until_waiting(&u, 2).await;
        assert_eq!(u.acquire(peer(1), key(c, 3), 1, LONG).await.unwrap_err(), Busy);
        let u2 = u.clone();
        waiters.push(tokio::spawn(async move { u2.acquire(peer(2), key(c, 4), 1, LONG).await }));
        until_waiting(&u, 3).await;
        for w in waiters {
            w.abort();
        }
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_lets_the_ones_behind_it_in() {
        // Bytes budget 100: a 90-byte upload runs; a 50-byte waiter cannot fit, a 10-byte one
        // behind it could, but strict order holds it back until the first gives up.
        let u = Uploads::new(4, 100, 16);
        let c = ContentId([11; 32]);
        let _big = u.acquire(peer(0), key(c, 0), 90, LONG).await.unwrap();
        let u2 = u.clone();
        let blocked = tokio::spawn(async move {
            u2.acquire(peer(1), key(c, 1), 50, Duration::from_millis(50)).await
        });
        until_waiting(&u, 1).await;
        let u3 = u.clone();
        let small = tokio::spawn(async move { u3.acquire(peer(2), key(c, 2), 10, LONG).await });
        until_waiting(&u, 2).await;
        assert_eq!(blocked.await.unwrap().unwrap_err(), Busy);
        let slot = tokio::time::timeout(Duration::from_secs(5), small).await;
        assert!(matches!(slot, Ok(Ok(Ok(_)))), "granted when the head gave up: {slot:?}");
    }
}
