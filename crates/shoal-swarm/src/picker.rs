//! The piece picker.
//!
//! The rule: among the pieces a peer holds that we lack and it may be asked for, hinted pieces
//! first, then the rarest, ties broken by a per-picker shuffle; if none of them is free, the
//! least duplicated piece in flight elsewhere (endgame, at most [`MAX_COPIES`] copies), asked
//! of a peer with requests of ours in flight only once every missing piece has a connected
//! holder (the fetch's endgame proper; before that, only of an idle peer).
//!
//! Regions: a peer marked remote ([`Picker::set_remote`], a peer the tracker placed in another
//! region) is asked only for pieces that no connected peer of our own region holds, and of
//! those only the hinted ones (the tracker hands each piece a region lacks to one of its
//! nodes) while our region's peers still have something for us; a second copy of a piece in
//! flight (endgame) only once no piece any peer holds is unrequested. What the region has stays
//! inside it, each missing piece crosses about once, and when the region has nothing left
//! for us anything it lacks is fetched from outside at once: nothing waits for a border copy
//! while an outside peer could send it.

use std::collections::{BTreeMap, BTreeSet};

use shoal_core::{Bitfield, PieceIndex};

use index::Pieces;

mod index;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

/// Bad pieces a peer may send before it is banned.
pub const MAX_STRIKES: u32 = 2;

/// The most peers one piece is requested from at once (in endgame).
pub const MAX_COPIES: u32 = 3;

/// A piece to request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The piece.
    pub piece: PieceIndex,
    /// True if another peer is already sending it (endgame).
    pub endgame: bool,
}

/// What a bad piece did to the peer that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The peer has this many strikes, fewer than [`MAX_STRIKES`].
    Strike(u32),
    /// The peer is banned; its requests were released.
    Banned,
}

#[derive(Debug)]
struct Peer {
    bitfield: Bitfield,
    in_flight: BTreeSet<PieceIndex>,
    /// Pieces it holds that we lack.
    missing: u32,
    /// Pieces it holds that are fresh (we lack them, nobody is fetching them).
    fresh: u32,
}

/// The scheduler of one download. `P` identifies a peer (a node id in a node, a number in a
/// simulation).
///
/// Strikes and bans belong to the peer's id for the whole download, not to its connection or
/// its bitfield: a peer that re-sends its bitfield or reconnects keeps its strikes, and a
/// banned peer is never added again.
///
/// The rule is evaluated from ordered indexes kept up to date on every event, never by
/// scanning every piece. With `n` pieces, `c` connected peers, `w` the peer's pieces
/// that we lack, and `f` the bad pieces ever reported (at most [`MAX_STRIKES`] per peer):
/// - `next_request`: walks the priority order from the top, skipping pieces the peer lacks,
///   for at most `max(32, (n / 64 + w) / 4)` entries, then finishes with one word-wise pass
///   over the peer's bitfield (`O(n / 64 + w)`); plus `O(c)` to update the holders' counts. So
///   `O(log n + c)` when the peer's best piece is near the top (a peer holding everything, or
///   a fair random share of the wanted pieces), and `O(min(k, n / 64 + w))` when it sits `k`
///   entries down behind rarer pieces the peer lacks: the worst case is linear in `n`, as the
///   walk of libtorrent's picker is. A peer holding no piece that nobody is fetching skips to
///   the endgame set, which holds only pieces in flight.
/// - `peer_has`: `O(log n)`; `request_failed`, `piece_verified`, the release in
///   `piece_failed`: `O(log n + c)` (the peers holding the piece keep a count of their free
///   pieces);
/// - `add_peer`, `remove_peer`: `O(n + k log n)` for the `k` pieces the peer holds;
///   `set_hints`: `O(h log n)` for the old and new hints;
/// - `is_useful`: `O(log f)`; `is_stuck`: `O(f)` (a counter of missing pieces nobody holds,
///   then only the pieces some holder failed).
#[derive(Debug)]
pub struct Picker<P> {
    pieces: Pieces,
    /// Connected, unbanned peers.
    peers: BTreeMap<P, Peer>,
    /// Strikes per peer that ever sent bad data; kept across bitfields and reconnects. Grows
    /// by one entry per peer that sent at least one bad piece (each cost the sender a piece).
    strikes: BTreeMap<P, u32>,
    /// Peers banned for the rest of the download.
    banned: BTreeSet<P>,
    /// (piece, peer) pairs that delivered bad data: never asked again. At most
    /// [`MAX_STRIKES`] per peer.
    failed: BTreeSet<(PieceIndex, P)>,
    /// Peers in another region than ours (connected or not; kept like strikes).
    remote: BTreeSet<P>,
    /// Peers of our region that cannot be asked now (in a `Busy` backoff): while benched they
    /// do not hold pieces back from other regions' peers.
    benched: BTreeSet<P>,
    /// How many connected peers of our own region, not benched, hold each piece and may be
    /// asked for it (a pair that failed does not count).
    local: Vec<u32>,
    /// The same pairs by peer.
    failed_by_peer: BTreeSet<(P, PieceIndex)>,
}

impl<P: Copy + Ord + std::fmt::Debug> Picker<P> {
    /// A picker for a content of `have.len()` pieces of which `have` are already verified.
    /// `seed` shuffles the order among equally rare pieces.
    pub fn new(have: Bitfield, seed: u64) -> Self {
        Self {
            peers: BTreeMap::new(),
            strikes: BTreeMap::new(),
            banned: BTreeSet::new(),
            failed: BTreeSet::new(),
            failed_by_peer: BTreeSet::new(),
            remote: BTreeSet::new(),
            benched: BTreeSet::new(),
            local: vec![0; have.len() as usize],
            pieces: Pieces::new(have, seed),
        }
    }

    /// Marks a peer as being in another region (`true`) or ours: a remote peer is asked only
    /// for pieces no connected peer of our region holds. Call it before or after adding the
    /// peer.
    pub fn set_remote(&mut self, peer: P, remote: bool) {
        if self.remote.contains(&peer) == remote {
            return;
        }
        self.count_local(peer, false);
        if remote {
            self.remote.insert(peer);
        } else {
            self.remote.remove(&peer);
        }
        self.count_local(peer, true);
    }

    /// Benches a peer of our region (it answered `Busy` and is backing off) or brings it
    /// back: while benched, what it holds does not keep other regions' peers from being asked,
    /// so one busy (or lying) local peer cannot stall the download.
    pub fn set_benched(&mut self, peer: P, benched: bool) {
        if self.benched.contains(&peer) == benched {
            return;
        }
        self.count_local(peer, false);
        if benched {
            self.benched.insert(peer);
        } else {
            self.benched.remove(&peer);
        }
        self.count_local(peer, true);
    }

    /// True if `peer` holding piece `i` keeps other regions' peers from being asked for it.
    fn counts_local(&self, peer: P, i: u32) -> bool {
        !self.remote.contains(&peer)
            && !self.benched.contains(&peer)
            && !self.failed.contains(&(PieceIndex(i), peer))
    }

    /// Adds (`up`) or takes away what a connected `peer` contributes to `local`.
    fn count_local(&mut self, peer: P, up: bool) {
        let Some(p) = self.peers.get(&peer) else { return };
        let held: Vec<u32> = p.bitfield.iter_ones().map(|i| i.0).collect();
        for i in held {
            if self.counts_local(peer, i) {
                let l = &mut self.local[i as usize];
                *l = if up { *l + 1 } else { *l - 1 };
            }
        }
    }

    /// True if the peer is marked as being in another region.
    pub fn is_remote(&self, peer: P) -> bool {
        self.remote.contains(&peer)
    }

    /// Replaces the pieces to fetch first (the tracker's differential-distribution hints).
    pub fn set_hints(&mut self, hints: &[PieceIndex]) {
        for i in std::mem::take(&mut self.pieces.hints) {
            self.pieces.set_hinted(i, false);
        }
        let mut set = BTreeSet::new();
        for p in hints {
            if p.0 < self.pieces.have.len() && set.insert(p.0) {
                self.pieces.set_hinted(p.0, true);
            }
        }
        self.pieces.hints = set.into_iter().collect();
    }

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.pieces.have
    }

    /// True when every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.pieces.have.is_complete()
    }

    /// Adds a peer with its bitfield, or replaces the bitfield of a connected peer (its
    /// requests in flight and its strikes stay). Returns false, changing nothing, for a banned
    /// peer or a bitfield of the wrong length.
    pub fn add_peer(&mut self, peer: P, bitfield: Bitfield) -> bool {
        if bitfield.len() != self.pieces.have.len() || self.banned.contains(&peer) {
            return false;
        }
        // The peer stays out of `peers` while availability changes: its own counts are
        // computed afresh below, and no other peer's count depends on availability.
        let in_flight = match self.peers.remove(&peer) {
            Some(old) => {
                for i in old.bitfield.iter_ones() {
                    self.change_availability(peer, i.0, false);
                }
                old.in_flight
            }
            None => BTreeSet::new(),
        };
        let (mut missing, mut fresh) = (0, 0);
        for i in bitfield.iter_ones() {
            self.change_availability(peer, i.0, true);
            missing += u32::from(self.pieces.missing(i.0));
            fresh += u32::from(self.pieces.is_fresh(i.0));
        }
        self.peers.insert(peer, Peer { bitfield, in_flight, missing, fresh });
        true
    }

    /// Forgets a connected peer (disconnected or dropped); returns its requests in flight,
    /// which are released. Its strikes and a ban stay.
    pub fn remove_peer(&mut self, peer: P) -> Vec<PieceIndex> {
        let Some(p) = self.peers.remove(&peer) else {
            return Vec::new();
        };
        for i in &p.in_flight {
            self.change_requested(i.0, false);
        }
        for i in p.bitfield.iter_ones() {
            self.change_availability(peer, i.0, false);
        }
        p.in_flight.into_iter().collect()
    }

    /// The peer gained a piece.
    pub fn peer_has(&mut self, peer: P, piece: PieceIndex) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if piece.0 >= self.pieces.have.len() || !p.bitfield.set(piece) {
            return;
        }
        p.missing += u32::from(self.pieces.missing(piece.0));
        self.change_availability(peer, piece.0, true);
        let fresh = u32::from(self.pieces.is_fresh(piece.0));
        // Found above; `change_availability` touches no peer.
        if let Some(p) = self.peers.get_mut(&peer) {
            p.fresh += fresh;
        }
    }

    /// Bans a peer for the rest of the download (for a fault found outside the picker, such
    /// as a false manifest): removed if connected, never added again.
    pub fn ban(&mut self, peer: P) {
        self.remove_peer(peer);
        self.banned.insert(peer);
    }

    /// True if the peer is banned.
    pub fn is_banned(&self, peer: P) -> bool {
        self.banned.contains(&peer)
    }

    /// The strikes a peer has earned in this download (connected or not).
    pub fn strikes(&self, peer: P) -> u32 {
        self.strikes.get(&peer).copied().unwrap_or(0)
    }

    /// True if the peer is connected (added and not removed or banned).
    pub fn is_connected(&self, peer: P) -> bool {
        self.peers.contains_key(&peer)
    }

    /// True if the peer holds a missing piece that it may be asked for, whether or not it is
    /// in flight elsewhere: it could still help this download.
    pub fn is_useful(&self, peer: P) -> bool {
        let Some(p) = self.peers.get(&peer) else {
            return false;
        };
        let bad = self
            .failed_by_peer
            .range((peer, PieceIndex(0))..=(peer, PieceIndex(u32::MAX)))
            .filter(|&&(_, i)| self.pieces.missing(i.0) && p.bitfield.get(i))
            .count();
        p.missing as usize > bad
    }

    /// Requests in flight to this peer.
    pub fn in_flight(&self, peer: P) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.in_flight.len())
    }

    /// The next piece to request from `peer`, marked in flight; `None` if it has nothing we
    /// can use now.
    pub fn next_request(&mut self, peer: P) -> Option<Request> {
        let p = self.peers.get(&peer)?;
        let failed = &self.failed;
        // A remote peer: only what no peer of our region holds, and of that only what the
        // tracker handed us (it hands each piece our region lacks to one of its nodes), unless
        // our region's peers have nothing left for us.
        let remote = self.remote.contains(&peer);
        let starving = remote && self.is_starving();
        let (local, pieces) = (&self.local, &self.pieces);
        let usable = |i: u32| {
            !failed.contains(&(PieceIndex(i), peer))
                && !(remote && (local[i as usize] > 0 || !(starving || pieces.is_hinted(i))))
        };
        let fresh =
            if p.fresh > 0 { self.pieces.best_fresh(&p.bitfield, p.missing, usable) } else { None };
        let (piece, endgame) = match fresh {
            Some(i) => (i, false),
            // A second copy across a border only in the fetch's endgame proper, once every
            // piece any peer holds is requested: before that the copy in flight is not the
            // last thing this fetch waits for, and the border is what the region lacks most.
            // (A remote peer trickling one piece delays only that piece: the fetch goes on
            // with the hints of later lookups, and the copy goes once nothing else is left.
            // Letting fresh pieces nobody may ask for yet not count, so that a copy goes
            // earlier, brought the border's cancelled bytes back from 1% to 5% of the file and
            // the far region from 1.15-1.19 to 1.23-1.24 times its bound.)
            None if remote && !self.pieces.no_fresh() => return None,
            // While some missing piece is held by no connected peer, a peer already busy with
            // our requests is not asked for a second copy: the fetch is waiting on the swarm,
            // not on that copy, and the duplicate would take an uplink the swarm needs (in a
            // seed-bound swarm every downloader is caught up most of the time, and copies
            // asked "because nothing else was free" were 8% of all bytes at 16 nodes). An idle
            // peer still takes one, so nothing waits on a single slow sender.
            None if self.pieces.unavailable > 0 && !p.in_flight.is_empty() => return None,
            None => {
                let usable = |i: u32| !p.in_flight.contains(&PieceIndex(i)) && usable(i);
                (self.pieces.best_endgame(&p.bitfield, p.missing, usable)?, true)
            }
        };
        let piece = PieceIndex(piece);
        // Found above, and nothing removed it since.
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight.insert(piece);
        }
        self.change_requested(piece.0, true);
        Some(Request { piece, endgame })
    }

    /// True if neither a peer of our region has a piece for us nor a request of ours is in
    /// flight to another region: only then may a remote peer be asked for unhinted pieces.
    fn is_starving(&self) -> bool {
        !self.peers.iter().any(|(id, q)| {
            if self.remote.contains(id) {
                !q.in_flight.is_empty()
            } else {
                q.fresh > 0 && !self.benched.contains(id)
            }
        })
    }

    /// The piece from `peer` verified. Returns the other peers still fetching it, whose
    /// requests the caller should cancel (they are released here).
    pub fn piece_verified(&mut self, peer: P, piece: PieceIndex) -> Vec<P> {
        let mut others = Vec::new();
        if piece.0 >= self.pieces.have.len() {
            return others;
        }
        let i = piece.0 as usize;
        let was_fresh = self.pieces.detach(piece.0);
        let gained = self.pieces.have.set(piece);
        for (&id, p) in self.peers.iter_mut() {
            if p.in_flight.remove(&piece) {
                self.pieces.requested[i] -= 1;
                if id != peer {
                    others.push(id);
                }
            }
            if p.bitfield.get(piece) {
                p.missing -= u32::from(gained);
                p.fresh -= u32::from(was_fresh);
            }
        }
        self.pieces.attach(piece.0);
        others
    }

    /// The request failed without bad data (rejected, stream reset, cancelled): release it.
    pub fn request_failed(&mut self, peer: P, piece: PieceIndex) {
        self.release(peer, piece);
    }

    /// The piece from `peer` failed verification (or the peer refused a piece it advertised).
    /// The piece is released and never asked of this peer again; the peer earns a strike and
    /// is banned at [`MAX_STRIKES`]: then it is removed and never added again.
    pub fn piece_failed(&mut self, peer: P, piece: PieceIndex) -> Verdict {
        self.release(peer, piece);
        if self.banned.contains(&peer) {
            return Verdict::Banned;
        }
        // The pair no longer counts as a local source of the piece.
        let held = self.peers.get(&peer).is_some_and(|p| p.bitfield.get(piece));
        if held && self.counts_local(peer, piece.0) {
            self.local[piece.0 as usize] -= 1;
        }
        self.failed.insert((piece, peer));
        self.failed_by_peer.insert((peer, piece));
        let strikes = self.strikes.entry(peer).or_insert(0);
        *strikes += 1;
        if *strikes < MAX_STRIKES {
            return Verdict::Strike(*strikes);
        }
        self.remove_peer(peer);
        self.banned.insert(peer);
        Verdict::Banned
    }

    fn release(&mut self, peer: P, piece: PieceIndex) {
        if self.peers.get_mut(&peer).is_some_and(|p| p.in_flight.remove(&piece)) {
            self.change_requested(piece.0, false);
        }
    }

    /// True if no usable peer holds some missing piece: the fetch cannot finish with the
    /// peers it has.
    pub fn is_stuck(&self) -> bool {
        if self.pieces.unavailable > 0 {
            return true;
        }
        // Every missing piece has a holder: stuck only if each holder of one of them failed it.
        let mut failed = self.failed.iter().peekable();
        while let Some(&&(piece, _)) = failed.peek() {
            let mut spoilt = 0;
            while let Some((_, id)) = failed.next_if(|(i, _)| *i == piece) {
                spoilt += u32::from(self.peers.get(id).is_some_and(|p| p.bitfield.get(piece)));
            }
            if self.pieces.missing(piece.0) && spoilt == self.pieces.availability[piece.0 as usize]
            {
                return true;
            }
        }
        false
    }

    /// One more or one fewer connected peer (`peer`) holds piece `i` (in range). Only the
    /// availability key changes: a piece turns fresh or stale here only with its first or last
    /// holder, whose count the caller keeps.
    fn change_availability(&mut self, peer: P, i: u32, up: bool) {
        if self.counts_local(peer, i) {
            let l = &mut self.local[i as usize];
            *l = if up { *l + 1 } else { *l - 1 };
        }
        self.pieces.detach(i);
        let a = &mut self.pieces.availability[i as usize];
        *a = if up { *a + 1 } else { *a - 1 };
        self.pieces.attach(i);
    }

    /// One more or one fewer request for piece `i` (in range) is in flight; when the piece
    /// turns fresh or stale, so it does for every peer holding it.
    fn change_requested(&mut self, i: u32, up: bool) {
        let was = self.pieces.detach(i);
        let r = &mut self.pieces.requested[i as usize];
        *r = if up { *r + 1 } else { *r - 1 };
        let now = self.pieces.attach(i);
        if was != now {
            for p in self.peers.values_mut().filter(|p| p.bitfield.get(PieceIndex(i))) {
                p.fresh = if now { p.fresh + 1 } else { p.fresh - 1 };
            }
        }
    }
}
