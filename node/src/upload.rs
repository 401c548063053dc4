//! Upload slots, granted in super-seeding order.
//!
//! At most `max_active` pieces are read and sent at once. When more requests wait, the next
//! slot goes to the request for the piece this node has sent least often (oldest first among
//! equals), so a seed facing many downloaders sends every piece once before it sends any twice,
//! and the downloaders complete each other. This is BitTorrent's super-seeding idea, done by
//! ordering rather than by hiding pieces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_core::{ContentId, PieceIndex};
use tokio::sync::oneshot;

/// A granted upload slot; dropping it frees the slot for the next waiter.
#[derive(Debug)]
pub(crate) struct Slot {
    uploads: Arc<Uploads>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.uploads.release();
    }
}

#[derive(Debug)]
struct Waiter {
    content: ContentId,
    piece: PieceIndex,
    seq: u64,
    tx: oneshot::Sender<Slot>,
}

#[derive(Debug, Default)]
struct State {
    active: usize,
    waiting: Vec<Waiter>,
    /// Times each piece was sent, per content.
    sent: HashMap<ContentId, Vec<u32>>,
    seq: u64,
}

impl State {
    fn sent(&self, content: ContentId, piece: PieceIndex) -> u32 {
        self.sent.get(&content).and_then(|v| v.get(piece.0 as usize)).copied().unwrap_or(0)
    }

    fn record(&mut self, content: ContentId, piece: PieceIndex) {
        let v = self.sent.entry(content).or_default();
        let i = piece.0 as usize;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] += 1;
    }
}

/// The node's upload slots.
#[derive(Debug)]
pub(crate) struct Uploads {
    max_active: usize,
    // Held only for bookkeeping, never across an await.
    state: Mutex<State>,
}

impl Uploads {
    pub(crate) fn new(max_active: usize) -> Arc<Self> {
        Arc::new(Self { max_active: max_active.max(1), state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads in progress.
    pub(crate) fn active(&self) -> usize {
        self.lock().active
    }

    /// Waits for a slot to send `piece` of `content`. Cancel-safe: a slot granted to a
    /// cancelled waiter is passed on.
    pub(crate) async fn acquire(self: &Arc<Self>, content: ContentId, piece: PieceIndex) -> Slot {
        let rx = {
            let mut s = self.lock();
            if s.active < self.max_active {
                s.active += 1;
                s.record(content, piece);
                return Slot { uploads: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            s.seq += 1;
            let seq = s.seq;
            s.waiting.push(Waiter { content, piece, seq, tx });
            rx
        };
        match rx.await {
            Ok(slot) => slot,
            // Unreachable while `self` lives: waiters are only dropped after a send.
            Err(_) => Slot { uploads: self.clone() },
        }
    }

    fn release(self: &Arc<Self>) {
        let mut s = self.lock();
        loop {
            let best = (0..s.waiting.len()).min_by_key(|&i| {
                let w = &s.waiting[i];
                (s.sent(w.content, w.piece), w.seq)
            });
            let Some(i) = best else {
                s.active -= 1;
                return;
            };
            let w = s.waiting.swap_remove(i);
            if w.tx.is_closed() {
                continue;
            }
            s.record(w.content, w.piece);
            // The slot changes hands; `active` stays. If the waiter vanished just now, the
            // returned slot is dropped after the lock is released and passes it on again.
            let slot = Slot { uploads: self.clone() };
            match w.tx.send(slot) {
                Ok(()) => return,
                Err(slot) => {
                    drop(s);
                    drop(slot);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn least_sent_pieces_go_first() {
        let u = Uploads::new(1);
        let c = ContentId([1; 32]);
        let first = u.acquire(c, PieceIndex(0)).await;
        // Waiting: piece 0 again (sent once), then piece 1 (never sent).
        let u2 = u.clone();
        let again = tokio::spawn(async move { u2.acquire(c, PieceIndex(0)).await });
        let u3 = u.clone();
        let fresh = tokio::spawn(async move { u3.acquire(c, PieceIndex(1)).await });
        while u.lock().waiting.len() < 2 {
            tokio::task::yield_now().await;
        }
        drop(first);
        let slot = fresh.await.unwrap();
        assert!(!again.is_finished(), "the never-sent piece was served first");
        drop(slot);
        drop(again.await.unwrap());
        assert_eq!(u.active(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiters_do_not_leak_slots() {
        let u = Uploads::new(1);
        let c = ContentId([2; 32]);
        let held = u.acquire(c, PieceIndex(0)).await;
        let u2 = u.clone();
        let waiter = tokio::spawn(async move { u2.acquire(c, PieceIndex(1)).await });
        while u.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(u.active(), 0);
        let _again = u.acquire(c, PieceIndex(2)).await;
        assert_eq!(u.active(), 1);
    }
}
