//! Super-seeding by revealing: an origin seed shows each subscriber only a few of its pieces,
//! pieces nobody was sent or shown yet, and shows it another one as each is sent. So while any
//! piece has never left the seed, every piece the seed sends is one the swarm lacks, and the
//! downloaders complete each other from these first copies. Once every piece has been sent
//! once, the seed shows everything (the idea of BitTorrent's BEP 16, judged by the seed's own
//! send records instead of its peers' haves).
//!
//! Once every piece has left once, the origin guards that first copy for as long again as it
//! took (`Config::guard_share`, at least `Config::guard`, at most `Config::max_guard`): it
//! shows only pieces that nobody it
//! sent them to keeps any more (they unsubscribed: churn took the copy away), so downloaders
//! complete from each other and the origin does not send the swarm what it already holds.
//! Then it shows everything. (In the simulation of 1,000 nodes, its uplink was busy to the
//! end with copies of pieces others held: 1.44 copies in all; a seed that served only pieces
//! no other node held would have sent 1.02-1.05 copies with the same finish.)
//!
//! [`Reveal`] is a sans-I/O state machine like [`crate::Uploader`]: the driver asks it for the
//! bitfield to answer a subscription with ([`Reveal::subscribe`]), reports requests, pieces
//! sent and subscribers gone, passes the time in ([`Reveal::handle_timeout`] when
//! [`Reveal::poll_timeout`] says), and pumps [`Reveal::poll_event`] for haves to send to one
//! subscriber, or for the end of the mode (send every subscriber the full bitfield).
//!
//! Why only an origin: a node that fetched the content and finished is asked by downloaders in
//! their last seconds for the very pieces they lack; hiding pieces from them would hold them
//! back. An origin's first copy is what a swarm waits for; its later ones are what it saves.
//!
//! The first `Config::min_peers` subscribers see everything: with few downloaders the seed's
//! copies matter little, and one fed by another origin too would wait on the seed's showing.
//! When one more comes (a crowd is forming), they are narrowed to a view like the others
//! ([`Event::Narrow`]): seeing everything, they would ask the seed for pieces it sent already
//! whenever nothing unsent was left for them (at 16 simulated nodes, the seed's duplicates
//! fell from 0.07 to 0.04 copies and the last finish from 1.08 to 1.05 of the bound).
//!
//! Bounds: at most `Config::max_peers` subscribers get a view (later ones see nothing until the
//! mode ends), each holds at most `Config::per_peer` shown pieces and all together about
//! `Config::budget` (one each at least), and a shown piece its subscriber has not asked for
//! within `Config::deadline`, or whose request ended unsent, is hidden again and the
//! subscriber shown another (the first stays in its view: asked for, it is still served).
//! A piece a subscriber asks for outside its view (shown everything, or narrowed since) is
//! kept from the others until that request ends or `Config::send_deadline` passes, at most
//! `Config::per_peer` per subscriber; a stranger's request holds nothing back.
//! A piece the origin pushes into storage is claimed first ([`Reveal::claim`]): shown to
//! nobody until the push ends, at most `Config::per_peer` at once.
//! Memory: one entry per piece plus at most `max(budget, max_peers)` shown entries and one
//! held-back entry per piece, and one entry per piece sent to each subscriber (`keepers`).
//!
//! Layout: this file holds the machine and its inputs; `showing` the pieces waiting to be
//! shown and the views; `guard` the phases (the first copy, its guard, the end); `types` the
//! limits and events, `held` the pieces held back, `push` the copies that leave another way
//! (pushed into storage), `keepers` who may still hold each piece that left.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::Instant;

use shoal_core::{Bitfield, PieceIndex};

use guard::Phase;
use held::{Held, Holder};
use keepers::Keepers;
pub use push::Claimed;
use showing::{BACK, SHUFFLED};
pub use types::{Config, Event};

/// A piece shown to a subscriber and not yet sent to it.
#[derive(Debug, Clone, Copy)]
struct Shown {
    /// Hidden again at this time unless asked for (or, once asked for, sent) before.
    due: Option<Instant>,
    /// Asked for.
    requested: bool,
}

/// The revealing state of one content at its origin. `P` identifies a subscriber.
#[derive(Debug)]
pub struct Reveal<P> {
    config: Config,
    pieces: u32,
    phase: Phase,
    /// When the first piece left: the start of the first copy.
    began: Option<Instant>,
    /// Pieces to show and shown to nobody, by (order, piece): while revealing, those never
    /// sent; while guarding, those nobody keeps (see [`Reveal::showable`]).
    hidden: BTreeSet<(u64, u32)>,
    /// Each piece's place in `hidden`: a shuffle at first; a piece hidden again goes last, so
    /// a subscriber shown pieces it never asks for (it had them from elsewhere) is shown every
    /// other unsent piece in turn, not the same ones again.
    order: Vec<u64>,
    /// The next place at the back of `hidden`.
    back: u64,
    /// The place before the front of `hidden` (counting down).
    front: u64,
    sent: Bitfield,
    /// Subscribers with a view: their shown pieces.
    peers: BTreeMap<P, BTreeMap<PieceIndex, Shown>>,
    /// Who each shown piece is shown to (the same entries as `peers`, by piece): a piece in a
    /// view is never put back among those to show.
    viewer: BTreeMap<PieceIndex, P>,
    /// The first `Config::min_peers` subscribers, shown everything until a crowd forms.
    whole: BTreeSet<P>,
    /// A subscriber was given a partial view: from then on nobody is shown everything.
    crowd: bool,
    /// When a piece last left (or the first subscriber came).
    progress: Option<Instant>,
    /// The subscriber refilled last (refills go round from there).
    cursor: Option<P>,
    /// Shown, unrequested pieces by when they are hidden again.
    expiry: BTreeSet<(Instant, P, PieceIndex)>,
    /// Unsent pieces a subscriber (shown everything, or narrowed since) asked for outside
    /// its view: out of `hidden` until sent, given up or due (`Config::send_deadline`), so
    /// nobody is shown them meanwhile and sent a second copy. At most `Config::per_peer` per
    /// subscriber.
    held: Held<P>,
    /// Who may still hold each piece that left.
    keepers: Keepers<P>,
    events: VecDeque<Event<P>>,
}

impl<P: Copy + Ord + Debug> Reveal<P> {
    /// A content of `pieces` pieces of which none has been sent. `seed` shuffles the order in
    /// which pieces are shown.
    pub fn new(config: Config, pieces: u32, seed: u64) -> Self {
        let mut x = seed | 1;
        let order: Vec<u64> = (0..pieces)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                SHUFFLED + (x >> 32)
            })
            .collect();
        let hidden = (0..pieces).map(|i| (order[i as usize], i)).collect();
        Self {
            config,
            pieces,
            phase: Phase::Revealing,
            began: None,
            hidden,
            order,
            back: BACK,
            front: SHUFFLED,
            sent: Bitfield::new(pieces),
            peers: BTreeMap::new(),
            viewer: BTreeMap::new(),
            whole: BTreeSet::new(),
            crowd: false,
            progress: None,
            cursor: None,
            expiry: BTreeSet::new(),
            held: Held::default(),
            keepers: Keepers::new(pieces),
            events: VecDeque::new(),
        }
    }

    /// True if a copy of `piece` has left (sent to a subscriber, or copied into storage).
    pub fn was_sent(&self, piece: PieceIndex) -> bool {
        piece.0 < self.pieces && self.sent.get(piece)
    }

    /// True once every piece has been sent at least once (the first copy is out), or the
    /// mode is over.
    pub fn is_done(&self) -> bool {
        self.phase != Phase::Revealing
    }

    /// True once the mode is over: every subscriber sees everything, and the driver may drop
    /// the machine.
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    fn is_subscriber(&self, peer: P) -> bool {
        self.whole.contains(&peer) || self.peers.contains_key(&peer)
    }

    /// The bitfield to answer `peer`'s subscription with: everything once the mode is over,
    /// else the pieces shown to it (new ones drawn for a new subscriber).
    pub fn subscribe(&mut self, now: Instant, peer: P) -> Bitfield {
        if self.is_over() || self.whole.contains(&peer) {
            return Bitfield::full(self.pieces);
        }
        self.progress.get_or_insert(now);
        if !self.peers.contains_key(&peer)
            && !self.crowd
            && self.whole.len() < self.config.min_peers
        {
            self.whole.insert(peer);
            return Bitfield::full(self.pieces);
        }
        if !self.peers.contains_key(&peer) {
            if self.peers.len() >= self.config.max_peers {
                return Bitfield::new(self.pieces);
            }
            self.peers.insert(peer, BTreeMap::new());
            self.narrow(now);
            self.top_up(now, peer, false);
        }
        self.view(peer)
    }

    /// What `peer` is shown now: everything once the mode is over or to a subscriber shown
    /// everything, else the pieces in its view (none for a stranger).
    pub fn view(&self, peer: P) -> Bitfield {
        if self.is_over() || self.whole.contains(&peer) {
            return Bitfield::full(self.pieces);
        }
        let mut b = Bitfield::new(self.pieces);
        for &p in self.peers.get(&peer).into_iter().flat_map(|s| s.keys()) {
            b.set(p);
        }
        b
    }

    /// A subscriber was given a partial view: the crowd is forming, and those shown
    /// everything get views too (within `Config::max_peers`; the rest keep seeing everything).
    fn narrow(&mut self, now: Instant) {
        self.crowd = true;
        let mut narrowed = Vec::new();
        for peer in std::mem::take(&mut self.whole) {
            if self.peers.len() >= self.config.max_peers {
                self.whole.insert(peer);
                continue;
            }
            self.peers.insert(peer, BTreeMap::new());
            narrowed.push(peer);
        }
        // Views sized once all are counted, so each gets its share.
        for peer in narrowed {
            self.top_up(now, peer, false);
            self.events.push_back(Event::Narrow { peer });
        }
    }

    /// `peer` asked for `piece`: a shown piece is no longer at risk of being hidden again.
    /// (Showing the next one already now, rather than once this one is sent, was tried: with
    /// a queue twice as long at a crowded seed, 1,000 simulated nodes finished at 1.22 to
    /// 1.27 of the bound instead of 1.17 to 1.18.)
    pub fn handle_requested(&mut self, now: Instant, peer: P, piece: PieceIndex) {
        let Some(shown) = self.peers.get_mut(&peer).and_then(|s| s.get_mut(&piece)) else {
            // Outside its view: a piece shown to nobody yet is kept from the others until
            // this request ends (a subscriber's, within its share; strangers' are served
            // but hold nothing back).
            let subscriber = self.is_subscriber(peer);
            let share = self.held.count(Holder::Peer(peer));
            if piece.0 < self.pieces
                && !self.is_done()
                && subscriber
                && share < self.config.per_peer.max(1)
                && self.hidden.remove(&(self.order[piece.0 as usize], piece.0))
            {
                self.held.hold(Holder::Peer(peer), piece, now + self.config.send_deadline);
            }
            return;
        };
        if shown.requested {
            return;
        }
        // Asked for, it has longer to be sent: a subscriber that vanished without closing
        // (killed; its connection times out much later) must not hold pieces for ever.
        shown.requested = true;
        let due = now + self.config.send_deadline;
        if let Some(old) = shown.due.replace(due) {
            self.expiry.remove(&(old, peer, piece));
        }
        self.expiry.insert((due, peer, piece));
    }

    /// `piece` was sent whole to `peer`: counted, and `peer` is shown another piece.
    pub fn handle_sent(&mut self, now: Instant, peer: P, piece: PieceIndex) {
        if piece.0 >= self.pieces || self.is_over() {
            return;
        }
        self.progress = Some(now);
        self.unshow(peer, piece);
        self.held.release(piece);
        let kept = self.is_subscriber(peer);
        if kept {
            self.keepers.sent(now, peer, piece);
        }
        self.count(now, piece);
        let waiting = self.hidden.contains(&(self.order[piece.0 as usize], piece.0));
        if !kept && waiting && self.is_done() {
            // Sent to nobody who keeps it (it left meanwhile, or never subscribed): likely
            // lost on the way, so first among those to show. (One shown to a subscriber
            // already stays where it is.)
            self.hide_first(piece);
            self.refill(now, &BTreeSet::new());
        }
        if self.peers.contains_key(&peer) {
            self.top_up(now, peer, true);
        }
    }

    /// A request by `peer` for `piece` ended without the piece sent (cancelled, refused, the
    /// stream failed): it may have the piece from elsewhere now, so the piece is hidden again
    /// and `peer` is shown another.
    pub fn handle_abandoned(&mut self, now: Instant, peer: P, piece: PieceIndex) {
        if piece.0 >= self.pieces || self.is_over() {
            return;
        }
        if !self.unshow(peer, piece) {
            // Asked for outside its view: back among the pieces to show, to others (it may
            // have had the piece from elsewhere).
            if self.held.holder(piece) == Some(Holder::Peer(peer)) {
                self.let_go(now, piece, &BTreeSet::from([peer]));
            }
            return;
        }
        // Shown another piece before this one is hidden again, so not the same one: it may
        // hold that one by now.
        self.top_up(now, peer, true);
        self.hide(piece);
        self.refill(now, &BTreeSet::from([peer]));
        // What nobody else took may go back to it (a lone subscriber needs them).
        self.top_up(now, peer, true);
    }

    /// `peer` is gone: its shown, unsent pieces may be shown to others.
    pub fn unsubscribe(&mut self, now: Instant, peer: P) {
        // What it alone kept may be shown again once the first copy is out (before, the
        // first copy goes on; the guard starts with what nobody keeps).
        let orphans = self.keepers.left(now, peer, self.config.spread_after);
        if self.is_done() {
            orphans.into_iter().for_each(|piece| self.hide(piece));
        }
        self.whole.remove(&peer);
        for piece in self.held.release_peer(Holder::Peer(peer)) {
            self.hide(piece);
        }
        for (piece, s) in self.peers.remove(&peer).unwrap_or_default() {
            self.viewer.remove(&piece);
            if let Some(due) = s.due {
                self.expiry.remove(&(due, peer, piece));
            }
            if s.requested && self.is_done() {
                // Wanted, and the one who wanted it is gone (a fetch that rotated this node
                // out): the next in line is likely to want it too.
                self.hide_first(piece);
            } else {
                self.hide(piece);
            }
        }
        self.refill(now, &BTreeSet::new());
    }

    /// Hides again the shown pieces not asked for by their deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Over => return,
            Phase::Guarding { until } if until <= now => {
                self.finish();
                return;
            }
            Phase::Guarding { .. } => {}
            Phase::Revealing => {}
        }
        if self.phase == Phase::Revealing
            && self.progress.is_some_and(|t| t + self.config.stall <= now)
        {
            // No piece left for too long: whatever holds it back, show everything.
            self.sent = Bitfield::full(self.pieces);
            self.finish();
            return;
        }
        // Pieces asked for outside a view and not sent in time go back among those to show.
        let overdue = self.held.release_due(now);
        for &piece in &overdue {
            self.hide(piece);
        }
        if !overdue.is_empty() {
            self.refill(now, &BTreeSet::new());
        }
        let mut late = Vec::new();
        while let Some(&(due, peer, piece)) = self.expiry.first() {
            if due > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(s) = self.peers.get_mut(&peer) {
                s.remove(&piece);
                self.viewer.remove(&piece);
            }
            late.push((peer, piece));
        }
        if late.is_empty() {
            return;
        }
        // Each subscriber is shown others before its late pieces are hidden again, so not
        // the same ones (it may hold them from elsewhere); the late ones go to the rest.
        for &(peer, _) in &late {
            self.top_up(now, peer, true);
        }
        for &(_, piece) in &late {
            self.hide(piece);
        }
        let late: BTreeSet<P> = late.into_iter().map(|(p, _)| p).collect();
        self.refill(now, &late);
        // What nobody else took may go back to them: a subscriber that did not ask in time
        // may have had its window full (and a lone one needs them).
        for &p in &late {
            self.top_up(now, p, true);
        }
    }

    /// When the next shown piece is due to be hidden again, or the mode to end for lack of
    /// progress.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let end = match self.phase {
            Phase::Revealing => self.progress.map(|t| t + self.config.stall),
            Phase::Guarding { until } => Some(until),
            Phase::Over => None,
        };
        [self.expiry.first().map(|&(d, _, _)| d), self.held.next_due(), end]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing to tell subscribers.
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// Subscribers with a view.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

mod guard;
mod held;
mod keepers;
mod push;
mod showing;
#[cfg(test)]
mod tests;
mod types;
