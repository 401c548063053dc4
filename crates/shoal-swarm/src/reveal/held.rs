//! Pieces held back while one copy of them may be on its way: a subscriber (shown everything,
//! or narrowed since) asked the origin for a piece it was not shown, or the origin is pushing
//! the piece into storage. While that lasts the piece is shown to nobody else. Each entry has
//! a deadline, one entry per piece, and each holder a count, so the origin can cap what one
//! holder holds back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use shoal_core::PieceIndex;

/// Who holds a piece back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Holder<P> {
    /// A subscriber's request outside its view.
    Peer(P),
    /// The origin's own push into storage.
    Push,
}

#[derive(Debug)]
pub(super) struct Held<P> {
    /// Who holds each held piece back, and until when.
    pieces: BTreeMap<PieceIndex, (Holder<P>, Instant)>,
    due: BTreeSet<(Instant, PieceIndex)>,
    per_peer: BTreeMap<Holder<P>, usize>,
}

impl<P> Default for Held<P> {
    fn default() -> Self {
        Self { pieces: BTreeMap::new(), due: BTreeSet::new(), per_peer: BTreeMap::new() }
    }
}

impl<P: Copy + Ord> Held<P> {
    /// Pieces `peer` holds back now.
    pub(super) fn count(&self, peer: Holder<P>) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// `piece` (not held) is held back for `peer` until `due`. A piece held already stays with
    /// its holder (callers take it from the hidden pieces first, so it never is).
    pub(super) fn hold(&mut self, peer: Holder<P>, piece: PieceIndex, due: Instant) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.pieces.entry(piece) {
            e.insert((peer, due));
            self.due.insert((due, piece));
            *self.per_peer.entry(peer).or_default() += 1;
        } else {
            debug_assert!(false, "piece {piece} held twice");
        }
    }

    /// Who holds `piece` back and until when, if anyone.
    pub(super) fn entry(&self, piece: PieceIndex) -> Option<(Holder<P>, Instant)> {
        self.pieces.get(&piece).copied()
    }

    /// Who holds `piece` back, if anyone.
    pub(super) fn holder(&self, piece: PieceIndex) -> Option<Holder<P>> {
        self.pieces.get(&piece).map(|&(p, _)| p)
    }

    /// `piece` is no longer held back (sent, given up or due).
    pub(super) fn release(&mut self, piece: PieceIndex) {
        let Some((peer, due)) = self.pieces.remove(&piece) else { return };
        self.due.remove(&(due, piece));
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// Releases and returns the pieces `peer` holds back (at most its cap, found in one pass
    /// over the held pieces, made only if it holds any).
    pub(super) fn release_peer(&mut self, peer: Holder<P>) -> Vec<PieceIndex> {
        if self.count(peer) == 0 {
            return Vec::new();
        }
        let mine: Vec<PieceIndex> =
            self.pieces.iter().filter(|(_, &(p, _))| p == peer).map(|(&i, _)| i).collect();
        mine.iter().for_each(|&i| self.release(i));
        mine
    }

    /// Releases and returns the pieces whose deadline has passed by `now`.
    pub(super) fn release_due(&mut self, now: Instant) -> Vec<PieceIndex> {
        let late: Vec<PieceIndex> =
            self.due.iter().take_while(|(d, _)| *d <= now).map(|&(_, i)| i).collect();
        late.iter().for_each(|&i| self.release(i));
        late
    }

    /// The next deadline.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|&(d, _)| d)
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}
