//! Upload slots for the peer service: a thin async wrapper around [`shoal_swarm::Uploader`],
//! which holds the whole policy (super-seeding order, fairness between peers, the bounds on
//! slots, bytes, waiters and send counts; see its docs).
//!
//! This file only pumps it: a std mutex around the machine (never held across an await), one
//! oneshot per waiting ticket, the clock read here and passed in, and a [`Slot`] guard that
//! reports the upload done when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shoal_core::{ContentId, NodeId};
use shoal_swarm::upload::{Admit, Config, Event, Ticket};
use shoal_swarm::Uploader;
use tokio::sync::oneshot;

/// A piece of a held content, checked by the caller: `piece < pieces`, the manifest's count.
pub(crate) type PieceKey = shoal_swarm::upload::PieceKey<ContentId>;

/// No slot: too many requests wait already, or none came free within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upload slots busy; try later or another peer")]
pub(crate) struct Busy;

/// A granted upload slot; dropping it frees the slot for the next waiter. Unless
/// [`Slot::sent`] was called, the upload counts as abandoned: its piece is not counted as a
/// copy sent, so the super-seeding order still offers it first.
#[derive(Debug)]
pub(crate) struct Slot {
    uploads: Arc<Uploads>,
    ticket: Ticket,
    sent: bool,
}

impl Slot {
    /// The whole piece was handed to the transport: it counts as a copy sent.
    pub(crate) fn sent(&mut self) {
        self.sent = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.uploads.lock();
        if self.sent {
            s.machine.handle_done(Instant::now(), self.ticket);
        } else {
            s.machine.handle_abandoned(Instant::now(), self.ticket);
        }
        s.pump();
    }
}

#[derive(Debug)]
struct State {
    machine: Uploader<NodeId, ContentId>,
    /// The waiting tickets' senders: a grant sends the ticket, a refusal drops the sender.
    waiters: HashMap<Ticket, oneshot::Sender<Ticket>>,
}

impl State {
    /// Carries out the machine's events: grants to their waiters (a grant nobody takes any
    /// more is handed back at once), refusals by dropping the sender.
    fn pump(&mut self) {
        while let Some(ev) = self.machine.poll_event() {
            match ev {
                Event::Granted(t) => {
                    let taken = self.waiters.remove(&t).is_some_and(|tx| tx.send(t).is_ok());
                    if !taken {
                        self.machine.handle_abandoned(Instant::now(), t);
                    }
                }
                Event::Refused(t) => {
                    self.waiters.remove(&t);
                }
            }
        }
    }
}

/// The node's upload slots.
#[derive(Debug)]
pub(crate) struct Uploads {
    // Held only for bookkeeping, never across an await.
    state: Mutex<State>,
}

/// A waiter's receiver: on drop (cancellation, deadline) the waiter leaves the queue, and a
/// slot granted to it meanwhile but never taken is handed back.
struct Waiting<'a> {
    uploads: &'a Uploads,
    ticket: Ticket,
    rx: oneshot::Receiver<Ticket>,
    taken: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut s = self.uploads.lock();
        let now = Instant::now();
        s.waiters.remove(&self.ticket);
        if !s.machine.handle_cancel(now, self.ticket) {
            if let Ok(t) = self.rx.try_recv() {
                s.machine.handle_done(now, t);
            }
        }
        s.pump();
    }
}

impl Uploads {
    /// Slots for `max_active` uploads holding at most `max_bytes` together, with at most
    /// `max_waiting` requests waiting.
    pub(crate) fn new(max_active: usize, max_bytes: u64, max_waiting: usize) -> Arc<Self> {
        // The wait is given per request (`acquire`'s deadline); the default is never used.
        let config = Config { max_active, max_bytes, max_waiting, ..Config::default() };
        let machine = Uploader::new(config);
        Arc::new(Self { state: Mutex::new(State { machine, waiters: HashMap::new() }) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads in progress.
    pub(crate) fn active(&self) -> usize {
        self.lock().machine.active()
    }

    /// Waits at most `deadline` for a slot to send `bytes` bytes: a piece (`key`, counted for
    /// super-seeding order) or a manifest (`None`, counted as never sent). Cancel-safe: a
    /// cancelled waiter leaves the queue, and a slot granted to it just then is passed on.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        peer: NodeId,
        key: Option<PieceKey>,
        bytes: u64,
        deadline: Duration,
    ) -> Result<Slot, Busy> {
        let (ticket, rx, until) = {
            let mut s = self.lock();
            let now = Instant::now();
            let until = now + deadline;
            let admit = s.machine.handle_request_until(now, until, peer, key, bytes);
            // The request may have refused waiters past their deadline.
            s.pump();
            match admit {
                Admit::Granted(ticket) => {
                    return Ok(Slot { uploads: self.clone(), ticket, sent: false })
                }
                Admit::Busy => return Err(Busy),
                Admit::Queued(ticket) => {
                    let (tx, rx) = oneshot::channel();
                    s.waiters.insert(ticket, tx);
                    (ticket, rx, until)
                }
            }
        };
        let mut w = Waiting { uploads: self, ticket, rx, taken: false };
        let got = match tokio::time::timeout_at(until.into(), &mut w.rx).await {
            Ok(got) => got.ok(),
            Err(_) => {
                let mut s = self.lock();
                s.machine.handle_timeout(Instant::now());
                s.pump();
                drop(s);
                // Granted between the deadline and the refusal: taken.
                w.rx.try_recv().ok()
            }
        };
        match got {
            Some(ticket) => {
                w.taken = true;
                Ok(Slot { uploads: self.clone(), ticket, sent: false })
            }
            // Refused (the sender was dropped), or still waiting past the deadline, which the
            // guard's drop cancels.
            None => Err(Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The async plumbing only; the policy's tests are `shoal_swarm::upload`'s.
    use shoal_core::PieceIndex;

    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    /// The same id for the same `i` within a test run.
    fn peer(i: usize) -> NodeId {
        thread_local! {
            static IDS: Vec<NodeId> =
                (0..3).map(|_| shoal_net::Identity::generate().node_id()).collect();
        }
        IDS.with(|ids| ids[i])
    }

    fn key(piece: u32) -> Option<PieceKey> {
        Some(PieceKey { content: ContentId([1; 32]), piece: PieceIndex(piece), pieces: 8 })
    }

    async fn until_waiting(u: &Uploads, n: usize) {
        while u.lock().waiters.len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_freed_slot_reaches_the_least_sent_waiter() {
        let u = Uploads::new(1, 1 << 20, 16);
        let mut first = u.acquire(peer(0), key(0), 1, LONG).await.unwrap();
        let u2 = u.clone();
        let again = tokio::spawn(async move { u2.acquire(peer(0), key(0), 1, LONG).await });
        until_waiting(&u, 1).await;
        let u3 = u.clone();
        let fresh = tokio::spawn(async move { u3.acquire(peer(0), key(1), 1, LONG).await });
        until_waiting(&u, 2).await;
        first.sent();
        drop(first);
        let slot = fresh.await.unwrap().unwrap();
        assert!(!again.is_finished(), "the never-sent piece was served first");
        drop(slot);
        drop(again.await.unwrap().unwrap());
        assert_eq!(u.active(), 0);
    }

    #[tokio::test]
    async fn a_slot_given_up_before_its_piece_went_out_counts_no_copy() {
        let u = Uploads::new(1, 1 << 20, 16);
        let first = u.acquire(peer(0), key(0), 1, LONG).await.unwrap();
        let u2 = u.clone();
        let again = tokio::spawn(async move { u2.acquire(peer(1), key(0), 1, LONG).await });
        until_waiting(&u, 1).await;
        let u3 = u.clone();
        let fresh = tokio::spawn(async move { u3.acquire(peer(2), key(1), 1, LONG).await });
        until_waiting(&u, 2).await;
        // Dropped without `sent`: piece 0 was never delivered, so it is as unsent as piece 1
        // and its older waiter goes first.
        drop(first);
        let slot = again.await.unwrap().unwrap();
        assert!(!fresh.is_finished(), "the older waiter of an undelivered piece went first");
        drop(slot);
        drop(fresh.await.unwrap().unwrap());
        assert_eq!(u.active(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiters_and_passed_deadlines_leak_no_slots() {
        let u = Uploads::new(1, 1 << 20, 16);
        let held = u.acquire(peer(0), key(0), 1, LONG).await.unwrap();
        let u2 = u.clone();
        let waiter = tokio::spawn(async move { u2.acquire(peer(1), key(1), 1, LONG).await });
        until_waiting(&u, 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert!(u.lock().waiters.is_empty());
        assert_eq!(u.lock().machine.waiting(), 0);
        // A waiter whose deadline passes gets Busy and leaves the queue.
        let late = u.acquire(peer(2), key(2), 1, Duration::from_millis(20)).await;
        assert_eq!(late.unwrap_err(), Busy);
        assert_eq!(u.lock().machine.waiting(), 0);
        drop(held);
        assert_eq!(u.active(), 0);
        let _again = u.acquire(peer(0), key(3), 1, LONG).await.unwrap();
        assert_eq!(u.active(), 1);
    }
}
