//! Upload slots as a sans-I/O state machine: granted in super-seeding order, fair between
//! peers, bounded in count, bytes, waiters and time.
//!
//! [`Uploader`] is driven like [`crate::PeerSet`]: the driver reports a request
//! ([`Uploader::handle_request`]), the end of an upload ([`Uploader::handle_done`]), a waiter
//! that gave up ([`Uploader::handle_cancel`]) and the time ([`Uploader::handle_timeout`] when
//! [`Uploader::poll_timeout`] says), and pumps [`Uploader::poll_event`] for waiters granted or
//! refused. No clock, no channel, no lock: a node wraps it in a mutex with a oneshot per
//! ticket, the simulation calls it directly.
//!
//! Policy:
//! - at most `max_active` pieces (and manifests) are read and sent at once, holding at most
//!   `max_bytes` between them (one upload may exceed it alone, so a piece larger than the
//!   budget is still served, one at a time);
//! - when more requests wait, the next slot goes to the request for the piece this node has
//!   sent least often (oldest first among equals; a manifest counts as never sent), so a seed
//!   facing many downloaders sends every piece once before it sends any twice, and the
//!   downloaders complete each other. This is BitTorrent's super-seeding idea, done by
//!   ordering rather than by hiding pieces;
//! - fairness between peers: while other peers wait, a peer holding its share of the slots
//!   (a quarter) is served after them, and one peer may hold at most a quarter of the waiting
//!   places; so one peer that asks for everything and reads slowly cannot starve the others;
//! - slots go strictly in that order: a large upload that does not fit the byte budget yet
//!   holds back smaller ones behind it rather than being passed over for ever.
//!
//! Bounds, so strangers cannot grow this state: at most `max_waiting` requests wait (more are
//! refused at once with [`Admit::Busy`]), a waiter is refused at its deadline, and send counts
//! are kept only for contents the caller checked it holds, sized by their manifest's piece
//! count (`u16` per piece), for at most [`MAX_TRACKED_CONTENTS`] contents (least recently
//! served forgotten first): at most 32 x 65,536 x 2 B = 4 MiB.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

mod queue;
mod sent;
mod types;

pub use sent::MAX_TRACKED_CONTENTS;
pub use types::{Admit, Config, Event, PieceKey, Ticket};

use queue::Queue;
use sent::Sent;

/// The upload slots of one node. `P` identifies a peer, `C` a content.
#[derive(Debug)]
pub struct Uploader<P, C> {
    config: Config,
    active: usize,
    bytes: u64,
    /// Slots held and places waiting, per peer; an entry lives while either is non-zero.
    per_peer: BTreeMap<P, (usize, usize)>,
    /// Granted uploads not yet done: their peer, bytes and piece (none for a manifest).
    granted: BTreeMap<Ticket, (P, u64, Option<PieceKey<C>>)>,
    /// Indexed by grant order, so a grant costs O(log n) however many wait.
    waiting: Queue<P, C>,
    sent: Sent<C>,
    next_ticket: u64,
    events: VecDeque<Event>,
}

impl<P: Copy + Ord + Debug, C: Copy + Eq + Hash + Debug> Uploader<P, C> {
    /// Empty slots with these limits (`max_active` at least one).
    pub fn new(mut config: Config) -> Self {
        config.max_active = config.max_active.max(1);
        Self {
            config,
            active: 0,
            bytes: 0,
            per_peer: BTreeMap::new(),
            granted: BTreeMap::new(),
            waiting: Queue::default(),
            sent: Sent::default(),
            next_ticket: 0,
            events: VecDeque::new(),
        }
    }

    /// A request from `peer` to send `bytes` bytes: a piece (`key`, counted for super-seeding
    /// order) or a manifest (`None`, counted as never sent). It waits at most `Config::wait`.
    pub fn handle_request(
        &mut self,
        now: Instant,
        peer: P,
        key: Option<PieceKey<C>>,
        bytes: u64,
    ) -> Admit {
        let deadline = now + self.config.wait;
        self.handle_request_until(now, deadline, peer, key, bytes)
    }

    /// [`Uploader::handle_request`] with its own deadline.
    pub fn handle_request_until(
        &mut self,
        now: Instant,
        deadline: Instant,
        peer: P,
        key: Option<PieceKey<C>>,
        bytes: u64,
    ) -> Admit {
        self.expire(now);
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        if self.waiting.is_empty() && self.fits(bytes) {
            self.grant(ticket, peer, key.as_ref(), bytes);
            return Admit::Granted(ticket);
        }
        let (held, waiting_here) = self.per_peer.get(&peer).copied().unwrap_or((0, 0));
        if self.waiting.len() >= self.config.max_waiting || waiting_here >= self.shares().1 {
            return Admit::Busy;
        }
        let count = key.as_ref().map_or(0, |k| self.sent.get(k));
        let under = held < self.shares().0;
        self.waiting.push(ticket, peer, key, bytes, deadline, count, under);
        count_peer(&mut self.per_peer, peer, (0, 1));
        Admit::Queued(ticket)
    }

    /// A granted upload ended: its slot goes to the next waiter. Unknown tickets are ignored.
    pub fn handle_done(&mut self, now: Instant, ticket: Ticket) {
        self.release(now, ticket, false);
    }

    /// A granted upload was given up before its piece was sent (the requester cancelled or
    /// went away): as [`Uploader::handle_done`], and the piece's send is taken back, so the
    /// super-seeding order does not count a copy nobody received.
    pub fn handle_abandoned(&mut self, now: Instant, ticket: Ticket) {
        self.release(now, ticket, true);
    }

    fn release(&mut self, now: Instant, ticket: Ticket, abandoned: bool) {
        let Some((peer, bytes, key)) = self.granted.remove(&ticket) else { return };
        if let Some(k) = key.filter(|_| abandoned) {
            self.sent.unrecord(&k);
            self.waiting.recount(k.content, k.piece.0, self.sent.get(&k));
        }
        self.active -= 1;
        self.bytes -= bytes;
        count_peer(&mut self.per_peer, peer, (-1, 0));
        let held = self.per_peer.get(&peer).map_or(0, |e| e.0);
        if held + 1 == self.shares().0 {
            self.waiting.set_peer(peer, true);
        }
        self.expire(now);
        self.dispatch();
    }

    /// A waiter gave up (its peer went away): it leaves the queue, and those behind it may
    /// fit now. Returns false if it was not waiting (granted or refused already, or unknown).
    pub fn handle_cancel(&mut self, now: Instant, ticket: Ticket) -> bool {
        let Some(w) = self.waiting.remove(ticket) else { return false };
        count_peer(&mut self.per_peer, w.peer, (0, -1));
        self.expire(now);
        self.dispatch();
        true
    }

    /// Refuses every waiter whose deadline has passed by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expire(now) {
            // Strict order may have held back smaller waiters behind one refused: they may fit.
            self.dispatch();
        }
    }

    /// The next waiter granted or refused, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the next waiter's deadline passes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.next_deadline()
    }

    /// Uploads granted and not yet done.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Bytes the granted uploads hold.
    pub fn active_bytes(&self) -> u64 {
        self.bytes
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// How often this piece was granted (0 once its content is forgotten).
    pub fn sent(&self, key: &PieceKey<C>) -> u16 {
        self.sent.get(key)
    }

    /// Contents whose send counts are kept (at most [`MAX_TRACKED_CONTENTS`]).
    pub fn tracked_contents(&self) -> usize {
        self.sent.len()
    }

    /// True if this content's send counts are kept.
    pub fn tracks(&self, content: &C) -> bool {
        self.sent.tracks(content)
    }

    /// Peers holding a slot or a waiting place.
    pub fn peers(&self) -> usize {
        self.per_peer.len()
    }

    fn fits(&self, bytes: u64) -> bool {
        self.active < self.config.max_active
            && (self.active == 0 || self.bytes + bytes <= self.config.max_bytes)
    }

    /// Slots one peer may hold while others wait, and places it may take in the queue.
    fn shares(&self) -> (usize, usize) {
        ((self.config.max_active / 4).max(1), (self.config.max_waiting / 4).max(1))
    }

    fn grant(&mut self, ticket: Ticket, peer: P, key: Option<&PieceKey<C>>, bytes: u64) {
        self.active += 1;
        self.bytes += bytes;
        count_peer(&mut self.per_peer, peer, (1, 0));
        if self.per_peer.get(&peer).map_or(0, |e| e.0) == self.shares().0 {
            self.waiting.set_peer(peer, false);
        }
        self.granted.insert(ticket, (peer, bytes, key.copied()));
        if let Some(k) = key {
            if let Some(forgotten) = self.sent.record(k) {
                self.waiting.forget(forgotten);
            }
            self.waiting.recount(k.content, k.piece.0, self.sent.get(k));
        }
    }

    /// Refuses the waiters past their deadline; true if any was.
    fn expire(&mut self, now: Instant) -> bool {
        let late = self.waiting.expired(now);
        for &t in &late {
            if let Some(w) = self.waiting.remove(t) {
                count_peer(&mut self.per_peer, w.peer, (0, -1));
                self.events.push_back(Event::Refused(t));
            }
        }
        !late.is_empty()
    }

    /// Grants free slots to waiters: among peers under their share first (any peer if none
    /// is), the least-sent piece, oldest first; strictly in that order, so a large upload is
    /// not passed over for ever by small ones.
    fn dispatch(&mut self) {
        while self.active < self.config.max_active {
            let Some(t) = self.waiting.best() else { return };
            let Some(bytes) = self.waiting.get(t).map(|w| w.bytes) else { return };
            if !self.fits(bytes) {
                return;
            }
            let Some(w) = self.waiting.remove(t) else { return };
            count_peer(&mut self.per_peer, w.peer, (0, -1));
            self.grant(t, w.peer, w.key.as_ref(), w.bytes);
            self.events.push_back(Event::Granted(t));
        }
    }
}

/// Adds `delta` to a peer's (slots held, places waiting), dropping the entry at zero.
fn count_peer<P: Copy + Ord>(
    map: &mut BTreeMap<P, (usize, usize)>,
    peer: P,
    delta: (isize, isize),
) {
    let e = map.entry(peer).or_default();
    e.0 = e.0.saturating_add_signed(delta.0);
    e.1 = e.1.saturating_add_signed(delta.1);
    if *e == (0, 0) {
        map.remove(&peer);
    }
}

#[cfg(test)]
mod tests;
