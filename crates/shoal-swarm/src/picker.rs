//! The piece picker.

use std::collections::{BTreeMap, BTreeSet};

use shoal_core::{Bitfield, PieceIndex};

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
    strikes: u32,
    banned: bool,
}

/// The scheduler of one download. `P` identifies a peer (a node id in a node, a number in a
/// simulation).
#[derive(Debug)]
pub struct Picker<P> {
    have: Bitfield,
    /// How many unbanned peers hold each piece.
    availability: Vec<u32>,
    /// How many peers each piece is requested from right now.
    requested: Vec<u32>,
    /// Tie-break order: a seeded permutation key per piece.
    order: Vec<u32>,
    /// Pieces the tracker handed us to fetch first (differential distribution).
    hinted: Vec<bool>,
    peers: BTreeMap<P, Peer>,
    /// (piece, peer) pairs that delivered bad data: never asked again.
    failed: BTreeSet<(PieceIndex, P)>,
}

impl<P: Copy + Ord + std::fmt::Debug> Picker<P> {
    /// A picker for a content of `have.len()` pieces of which `have` are already verified.
    /// `seed` shuffles the order among equally rare pieces.
    pub fn new(have: Bitfield, seed: u64) -> Self {
        let n = have.len() as usize;
        let mut x = seed | 1;
        let order = (0..n)
            .map(|_| {
                // xorshift64*: deterministic for a seed, different across downloaders.
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
            })
            .collect();
        Self {
            have,
            availability: vec![0; n],
            requested: vec![0; n],
            order,
            hinted: vec![false; n],
            peers: BTreeMap::new(),
            failed: BTreeSet::new(),
        }
    }

    /// Replaces the pieces to fetch first (the tracker's differential-distribution hints).
    pub fn set_hints(&mut self, hints: &[PieceIndex]) {
        self.hinted.iter_mut().for_each(|h| *h = false);
        for p in hints {
            if let Some(h) = self.hinted.get_mut(p.0 as usize) {
                *h = true;
            }
        }
    }

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// True when every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Adds a peer with its bitfield (or replaces its bitfield). Ignored for banned peers.
    pub fn add_peer(&mut self, peer: P, bitfield: Bitfield) {
        if bitfield.len() != self.have.len() {
            return;
        }
        if let Some(old) = self.peers.get(&peer) {
            if old.banned {
                return;
            }
            self.remove_peer(peer);
        }
        for i in bitfield.iter_ones() {
            self.availability[i.0 as usize] += 1;
        }
        let p = Peer { bitfield, in_flight: BTreeSet::new(), strikes: 0, banned: false };
        self.peers.insert(peer, p);
    }

    /// Forgets a peer (disconnected); its requests are released. A banned peer stays banned.
    pub fn remove_peer(&mut self, peer: P) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let in_flight = std::mem::take(&mut p.in_flight);
        for i in &in_flight {
            self.requested[i.0 as usize] -= 1;
        }
        if !p.banned {
            for i in p.bitfield.iter_ones() {
                self.availability[i.0 as usize] -= 1;
            }
            self.peers.remove(&peer);
        }
    }

    /// The peer gained a piece.
    pub fn peer_has(&mut self, peer: P, piece: PieceIndex) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if !p.banned && p.bitfield.set(piece) {
                self.availability[piece.0 as usize] += 1;
            }
        }
    }

    /// True if the peer is banned.
    pub fn is_banned(&self, peer: P) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.banned)
    }

    /// Requests in flight to this peer.
    pub fn in_flight(&self, peer: P) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.in_flight.len())
    }

    /// The next piece to request from `peer`, marked in flight; `None` if it has nothing we
    /// can use now.
    pub fn next_request(&mut self, peer: P) -> Option<Request> {
        let p = self.peers.get(&peer)?;
        if p.banned {
            return None;
        }
        let usable = |i: PieceIndex| {
            p.bitfield.get(i)
                && !self.have.get(i)
                && !p.in_flight.contains(&i)
                && !self.failed.contains(&(i, peer))
        };
        // Fresh pieces first (hinted ones before the rest, rarest first within each); then
        // endgame: the least duplicated in-flight piece.
        let mut best: Option<(bool, bool, u32, u32, PieceIndex)> = None;
        for i in (0..self.have.len()).map(PieceIndex) {
            if !usable(i) {
                continue;
            }
            let idx = i.0 as usize;
            let key = if self.requested[idx] == 0 {
                (false, !self.hinted[idx], self.availability[idx], self.order[idx], i)
            } else if self.requested[idx] < MAX_COPIES {
                (true, false, self.requested[idx], self.order[idx], i)
            } else {
                continue;
            };
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        let (endgame, _, _, _, piece) = best?;
        self.requested[piece.0 as usize] += 1;
        self.peers.get_mut(&peer).expect("peer exists").in_flight.insert(piece);
        Some(Request { piece, endgame })
    }

    /// The piece from `peer` verified. Returns the other peers still fetching it, whose
    /// requests the caller should cancel (they are released here).
    pub fn piece_verified(&mut self, peer: P, piece: PieceIndex) -> Vec<P> {
        self.release(peer, piece);
        self.have.set(piece);
        let mut others = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            if p.in_flight.remove(&piece) {
                self.requested[piece.0 as usize] -= 1;
                others.push(id);
            }
        }
        others
    }

    /// The request failed without bad data (rejected, stream reset, cancelled): release it.
    pub fn request_failed(&mut self, peer: P, piece: PieceIndex) {
        self.release(peer, piece);
    }

    /// The piece from `peer` failed verification. The piece is released and never asked of
    /// this peer again; the peer earns a strike and is banned at [`MAX_STRIKES`].
    pub fn piece_failed(&mut self, peer: P, piece: PieceIndex) -> Verdict {
        self.release(peer, piece);
        self.failed.insert((piece, peer));
        let Some(p) = self.peers.get_mut(&peer) else {
            return Verdict::Banned;
        };
        p.strikes += 1;
        if p.strikes < MAX_STRIKES {
            return Verdict::Strike(p.strikes);
        }
        if !p.banned {
            p.banned = true;
            for i in std::mem::take(&mut p.in_flight) {
                self.requested[i.0 as usize] -= 1;
            }
            for i in p.bitfield.iter_ones() {
                self.availability[i.0 as usize] -= 1;
            }
        }
        Verdict::Banned
    }

    fn release(&mut self, peer: P, piece: PieceIndex) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.in_flight.remove(&piece) {
                self.requested[piece.0 as usize] -= 1;
            }
        }
    }

    /// True if no usable peer holds some missing piece: the fetch cannot finish with the
    /// peers it has.
    pub fn is_stuck(&self) -> bool {
        self.have.iter_zeros().any(|i| {
            !self
                .peers
                .iter()
                .any(|(&id, p)| !p.banned && p.bitfield.get(i) && !self.failed.contains(&(i, id)))
        })
    }
}
