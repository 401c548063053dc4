//! The picker as it was before its indexes: every request scans every piece. Kept as the
//! reference the indexed picker must agree with (property tests) and as the baseline of the
//! `picker` benchmark, which includes this file by path, so it depends only on the public API.

use std::collections::{BTreeMap, BTreeSet};

use shoal_core::{Bitfield, PieceIndex};

use super::{Request, Verdict, MAX_COPIES, MAX_STRIKES};

#[derive(Debug)]
struct Peer {
    bitfield: Bitfield,
    in_flight: BTreeSet<PieceIndex>,
}

/// The scheduler of one download. `P` identifies a peer (a node id in a node, a number in a
/// simulation).
///
/// Strikes and bans belong to the peer's id for the whole download, not to its connection or
/// its bitfield: a peer that re-sends its bitfield or reconnects keeps its strikes, and a
/// banned peer is never added again.
#[derive(Debug)]
pub(crate) struct Reference<P> {
    have: Bitfield,
    /// How many connected, unbanned peers hold each piece.
    availability: Vec<u32>,
    /// How many peers each piece is requested from right now.
    requested: Vec<u32>,
    /// Tie-break order: a seeded permutation key per piece.
    order: Vec<u32>,
    /// Pieces the tracker handed us to fetch first (differential distribution).
    hinted: Vec<bool>,
    /// Connected, unbanned peers.
    peers: BTreeMap<P, Peer>,
    /// Strikes per peer that ever sent bad data; kept across bitfields and reconnects. Grows
    /// by one entry per peer that sent at least one bad piece (each cost the sender a piece).
    strikes: BTreeMap<P, u32>,
    /// Peers banned for the rest of the download.
    banned: BTreeSet<P>,
    /// (piece, peer) pairs that delivered bad data: never asked again.
    failed: BTreeSet<(PieceIndex, P)>,
}

impl<P: Copy + Ord + std::fmt::Debug> Reference<P> {
    /// A picker for a content of `have.len()` pieces of which `have` are already verified.
    /// `seed` shuffles the order among equally rare pieces.
    pub(crate) fn new(have: Bitfield, seed: u64) -> Self {
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
            strikes: BTreeMap::new(),
            banned: BTreeSet::new(),
            failed: BTreeSet::new(),
        }
    }

    /// Replaces the pieces to fetch first (the tracker's differential-distribution hints).
    pub(crate) fn set_hints(&mut self, hints: &[PieceIndex]) {
        self.hinted.iter_mut().for_each(|h| *h = false);
        for p in hints {
            if let Some(h) = self.hinted.get_mut(p.0 as usize) {
                *h = true;
            }
        }
    }

    /// The verified pieces.
    pub(crate) fn have(&self) -> &Bitfield {
        &self.have
    }

    /// True when every piece is verified.
    pub(crate) fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Adds a peer with its bitfield, or replaces the bitfield of a connected peer (its
    /// requests in flight and its strikes stay). Returns false, changing nothing, for a banned
    /// peer or a bitfield of the wrong length.
    pub(crate) fn add_peer(&mut self, peer: P, bitfield: Bitfield) -> bool {
        if bitfield.len() != self.have.len() || self.banned.contains(&peer) {
            return false;
        }
        let in_flight = match self.peers.remove(&peer) {
            Some(old) => {
                for i in old.bitfield.iter_ones() {
                    self.availability[i.0 as usize] -= 1;
                }
                old.in_flight
            }
            None => BTreeSet::new(),
        };
        for i in bitfield.iter_ones() {
            self.availability[i.0 as usize] += 1;
        }
        self.peers.insert(peer, Peer { bitfield, in_flight });
        true
    }

    /// Forgets a connected peer (disconnected or dropped); returns its requests in flight,
    /// which are released. Its strikes and a ban stay.
    pub(crate) fn remove_peer(&mut self, peer: P) -> Vec<PieceIndex> {
        let Some(p) = self.peers.remove(&peer) else {
            return Vec::new();
        };
        for i in &p.in_flight {
            self.requested[i.0 as usize] -= 1;
        }
        for i in p.bitfield.iter_ones() {
            self.availability[i.0 as usize] -= 1;
        }
        p.in_flight.into_iter().collect()
    }

    /// The peer gained a piece.
    pub(crate) fn peer_has(&mut self, peer: P, piece: PieceIndex) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if piece.0 < self.have.len() && p.bitfield.set(piece) {
                self.availability[piece.0 as usize] += 1;
            }
        }
    }

    /// Bans a peer for the rest of the download (for a fault found outside the picker, such
    /// as a false manifest): removed if connected, never added again.
    pub(crate) fn ban(&mut self, peer: P) {
        self.remove_peer(peer);
        self.banned.insert(peer);
    }

    /// True if the peer is banned.
    pub(crate) fn is_banned(&self, peer: P) -> bool {
        self.banned.contains(&peer)
    }

    /// The strikes a peer has earned in this download (connected or not).
    pub(crate) fn strikes(&self, peer: P) -> u32 {
        self.strikes.get(&peer).copied().unwrap_or(0)
    }

    /// True if the peer is connected (added and not removed or banned).
    pub(crate) fn is_connected(&self, peer: P) -> bool {
        self.peers.contains_key(&peer)
    }

    /// True if the peer holds a missing piece that it may be asked for, whether or not it is
    /// in flight elsewhere: it could still help this download.
    pub(crate) fn is_useful(&self, peer: P) -> bool {
        let Some(p) = self.peers.get(&peer) else {
            return false;
        };
        self.have.iter_zeros().any(|i| p.bitfield.get(i) && !self.failed.contains(&(i, peer)))
    }

    /// Requests in flight to this peer.
    pub(crate) fn in_flight(&self, peer: P) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.in_flight.len())
    }

    /// The next piece to request from `peer`, marked in flight; `None` if it has nothing we
    /// can use now.
    pub(crate) fn next_request(&mut self, peer: P) -> Option<Request> {
        let p = self.peers.get(&peer)?;
        let usable = |i: PieceIndex| {
            p.bitfield.get(i)
                && !self.have.get(i)
                && !p.in_flight.contains(&i)
                && !self.failed.contains(&(i, peer))
        };
        // Fresh pieces first (hinted ones before the rest, rarest first within each); then
        // endgame: the least duplicated in-flight piece.
        // A second copy from a peer busy with our requests only once every missing piece
        // has a connected holder.
        let unavailable = self.have.iter_zeros().any(|i| self.availability[i.0 as usize] == 0);
        let copies_ok = !unavailable || p.in_flight.is_empty();
        let mut best: Option<(bool, bool, u32, u32, PieceIndex)> = None;
        for i in (0..self.have.len()).map(PieceIndex) {
            if !usable(i) {
                continue;
            }
            let idx = i.0 as usize;
            let key = if self.requested[idx] == 0 {
                (false, !self.hinted[idx], self.availability[idx], self.order[idx], i)
            } else if self.requested[idx] < MAX_COPIES && copies_ok {
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
        // The peer was found above and nothing removed it since.
        self.peers.get_mut(&peer).expect("peer exists").in_flight.insert(piece);
        Some(Request { piece, endgame })
    }

    /// The piece from `peer` verified. Returns the other peers still fetching it, whose
    /// requests the caller should cancel (they are released here).
    pub(crate) fn piece_verified(&mut self, peer: P, piece: PieceIndex) -> Vec<P> {
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
    pub(crate) fn request_failed(&mut self, peer: P, piece: PieceIndex) {
        self.release(peer, piece);
    }

    /// The piece from `peer` failed verification (or the peer refused a piece it advertised).
    /// The piece is released and never asked of this peer again; the peer earns a strike and
    /// is banned at [`MAX_STRIKES`]: then it is removed and never added again.
    pub(crate) fn piece_failed(&mut self, peer: P, piece: PieceIndex) -> Verdict {
        self.release(peer, piece);
        if self.banned.contains(&peer) {
            return Verdict::Banned;
        }
        self.failed.insert((piece, peer));
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
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.in_flight.remove(&piece) {
                self.requested[piece.0 as usize] -= 1;
            }
        }
    }

    /// True if no usable peer holds some missing piece: the fetch cannot finish with the
    /// peers it has.
    pub(crate) fn is_stuck(&self) -> bool {
        self.have.iter_zeros().any(|i| {
            !self.peers.iter().any(|(&id, p)| p.bitfield.get(i) && !self.failed.contains(&(i, id)))
        })
    }
}
