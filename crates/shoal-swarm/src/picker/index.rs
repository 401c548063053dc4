//! The picker's per-piece state and the ordered indexes kept over it.
//!
//! Every missing piece is in at most one of two ordered sets:
//! - `fresh`: requested from nobody and held by at least one connected peer, keyed by
//!   (not hinted, availability, shuffle order, index): the first entry a peer holds is what the
//!   scan-everything rule would pick;
//! - `endgame`: requested from fewer than [`MAX_COPIES`] peers, keyed by (copies requested,
//!   shuffle order, index).
//!
//! Any change to a piece's state goes through [`Pieces::detach`] (take it out of its set) and
//! [`Pieces::attach`] (put it back under its new key), so the sets and the count of missing
//! pieces nobody holds never go stale.

use std::collections::BTreeSet;

use shoal_core::{Bitfield, PieceIndex};

use super::MAX_COPIES;

/// Entries of an ordered set always looked at before a search may fall back to one pass over
/// the peer's own bitfield.
const WALK: usize = 32;
/// Roughly how many items of the fallback pass one walk step costs (a B-tree step and a bit
/// test against three array reads). A search walks at most `pass / WALK_PER_ITEM` entries
/// before it makes the pass, so it stays within a small factor of the cheaper of the two: the
/// walk when the peer holds a fair share of the wanted pieces, the pass when its pieces sit
/// behind many rarer pieces it lacks.
const WALK_PER_ITEM: usize = 4;

/// (not hinted, availability, shuffle order, piece): smaller is picked first.
type FreshKey = (bool, u32, u32, u32);
/// (copies requested, shuffle order, piece): smaller is picked first.
type EndgameKey = (u32, u32, u32);

#[derive(Debug)]
pub(super) struct Pieces {
    pub(super) have: Bitfield,
    /// How many connected, unbanned peers hold each piece.
    pub(super) availability: Vec<u32>,
    /// How many peers each piece is requested from right now.
    pub(super) requested: Vec<u32>,
    /// Tie-break order: a seeded permutation key per piece.
    order: Vec<u32>,
    /// Pieces the tracker handed us to fetch first (differential distribution).
    hinted: Vec<bool>,
    /// The pieces set in `hinted`, so replacing the hints costs what they hold, not `n`.
    pub(super) hints: Vec<u32>,
    fresh: BTreeSet<FreshKey>,
    endgame: BTreeSet<EndgameKey>,
    /// Missing pieces no connected peer holds.
    pub(super) unavailable: u32,
}

impl Pieces {
    pub(super) fn new(have: Bitfield, seed: u64) -> Self {
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
        // Nobody is connected yet: every missing piece is unavailable, none is in a set.
        let unavailable = have.len() - have.count();
        Self {
            have,
            availability: vec![0; n],
            requested: vec![0; n],
            order,
            hinted: vec![false; n],
            hints: Vec::new(),
            fresh: BTreeSet::new(),
            endgame: BTreeSet::new(),
            unavailable,
        }
    }

    pub(super) fn missing(&self, i: u32) -> bool {
        i < self.have.len() && !self.have.get(PieceIndex(i))
    }

    /// Missing, requested from nobody, held by someone.
    pub(super) fn is_fresh(&self, i: u32) -> bool {
        let u = i as usize;
        self.missing(i) && self.requested[u] == 0 && self.availability[u] > 0
    }

    /// True if no piece is fresh: every missing piece some peer holds is requested.
    pub(super) fn no_fresh(&self) -> bool {
        self.fresh.is_empty()
    }

    pub(super) fn is_hinted(&self, i: u32) -> bool {
        self.hinted[i as usize]
    }

    fn in_endgame(&self, i: u32) -> bool {
        let r = self.requested[i as usize];
        self.missing(i) && r > 0 && r < MAX_COPIES
    }

    fn fresh_key(&self, i: u32) -> FreshKey {
        let u = i as usize;
        (!self.hinted[u], self.availability[u], self.order[u], i)
    }

    fn endgame_key(&self, i: u32) -> EndgameKey {
        (self.requested[i as usize], self.order[i as usize], i)
    }

    fn is_unavailable(&self, i: u32) -> bool {
        self.missing(i) && self.availability[i as usize] == 0
    }

    /// Takes piece `i` (in range) out of its set before its state changes; true if it was fresh.
    pub(super) fn detach(&mut self, i: u32) -> bool {
        let fresh = self.is_fresh(i);
        if fresh {
            self.fresh.remove(&self.fresh_key(i));
        } else if self.in_endgame(i) {
            self.endgame.remove(&self.endgame_key(i));
        }
        if self.is_unavailable(i) {
            self.unavailable -= 1;
        }
        fresh
    }

    /// Puts piece `i` back after its state changed; true if it is fresh now.
    pub(super) fn attach(&mut self, i: u32) -> bool {
        let fresh = self.is_fresh(i);
        if fresh {
            self.fresh.insert(self.fresh_key(i));
        } else if self.in_endgame(i) {
            self.endgame.insert(self.endgame_key(i));
        }
        if self.is_unavailable(i) {
            self.unavailable += 1;
        }
        fresh
    }

    /// Sets or clears the hint of piece `i` (in range); its freshness does not change.
    pub(super) fn set_hinted(&mut self, i: u32, hinted: bool) {
        self.detach(i);
        self.hinted[i as usize] = hinted;
        self.attach(i);
    }

    /// The first fresh piece in priority order that `held` holds and `usable` accepts;
    /// `missing` is how many pieces `held` holds that we lack.
    pub(super) fn best_fresh(
        &self,
        held: &Bitfield,
        missing: u32,
        usable: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let budget = self.walk_budget(missing);
        for (step, &(_, _, _, i)) in self.fresh.iter().enumerate() {
            if step == budget {
                return self.scan(held, |i| {
                    (self.requested[i as usize] == 0 && usable(i)).then(|| self.fresh_key(i))
                });
            }
            if held.get(PieceIndex(i)) && usable(i) {
                return Some(i);
            }
        }
        None
    }

    /// The least requested in-flight piece that `held` holds and `usable` accepts.
    pub(super) fn best_endgame(
        &self,
        held: &Bitfield,
        missing: u32,
        usable: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let budget = self.walk_budget(missing);
        for (step, &(_, _, i)) in self.endgame.iter().enumerate() {
            if step == budget {
                return self.scan(held, |i| {
                    (self.in_endgame(i) && usable(i)).then(|| self.endgame_key(i))
                });
            }
            if held.get(PieceIndex(i)) && usable(i) {
                return Some(i);
            }
        }
        None
    }

    /// How far a walk goes before the pass over a bitfield holding `missing` wanted pieces,
    /// which visits `n / 64` words and `missing` pieces, is the cheaper way on.
    fn walk_budget(&self, missing: u32) -> usize {
        let pass = self.have.len() as usize / 64 + missing as usize;
        WALK.max(pass / WALK_PER_ITEM)
    }

    /// The piece with the smallest key among those `held` holds and we lack (`key` is `None`
    /// for a piece that does not qualify): one pass over both bitfields, 64 pieces a word.
    fn scan<K: Ord>(&self, held: &Bitfield, key: impl Fn(u32) -> Option<K>) -> Option<u32> {
        let mut best: Option<(K, u32)> = None;
        let words = held.as_bytes().chunks(8).zip(self.have.as_bytes().chunks(8));
        for (w, (theirs, ours)) in words.enumerate() {
            // Bits past the last piece are zero in every bitfield, so `i` stays in range.
            let mut word = be_word(theirs) & !be_word(ours);
            while word != 0 {
                let bit = word.leading_zeros();
                word &= !(1u64 << (63 - bit));
                let i = w as u32 * 64 + bit;
                if let Some(k) = key(i) {
                    if best.as_ref().is_none_or(|(b, _)| k < *b) {
                        best = Some((k, i));
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }
}

#[cfg(test)]
impl Pieces {
    /// Panics unless the sets and the unavailable count match a recount from the arrays.
    pub(super) fn check(&self) {
        let n = self.have.len();
        let fresh: BTreeSet<_> =
            (0..n).filter(|&i| self.is_fresh(i)).map(|i| self.fresh_key(i)).collect();
        let endgame: BTreeSet<_> =
            (0..n).filter(|&i| self.in_endgame(i)).map(|i| self.endgame_key(i)).collect();
        assert_eq!(self.fresh, fresh, "fresh set");
        assert_eq!(self.endgame, endgame, "endgame set");
        let unavailable = (0..n).filter(|&i| self.is_unavailable(i)).count() as u32;
        assert_eq!(self.unavailable, unavailable, "unavailable count");
        let hinted: Vec<u32> = (0..n).filter(|&i| self.hinted[i as usize]).collect();
        let mut hints = self.hints.clone();
        hints.sort_unstable();
        assert_eq!(hints, hinted, "hint list");
    }
}

/// Up to eight bytes of a bitfield as a word, the first piece in the highest bit.
fn be_word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..bytes.len()].copy_from_slice(bytes);
    u64::from_be_bytes(w)
}
