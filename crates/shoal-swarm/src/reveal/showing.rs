//! The pieces waiting to be shown (`Reveal::hidden`, in order) and the subscribers' views:
//! pieces go back first or last, views are topped up within their share of the budget, and a
//! piece is shown to one subscriber at a time.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Instant;

use shoal_core::PieceIndex;

use super::{Event, Reveal, Shown};

/// Places in `Reveal::hidden`: pieces put first count down from `SHUFFLED`, the first shuffle
/// lies between it and `BACK`, pieces put last count up from `BACK`.
pub(super) const SHUFFLED: u64 = 1 << 41;
pub(super) const BACK: u64 = 1 << 42;

impl<P: Copy + Ord + Debug> Reveal<P> {
    /// Takes `piece` out of `peer`'s view; true if it was there.
    pub(super) fn unshow(&mut self, peer: P, piece: PieceIndex) -> bool {
        let Some(shown) = self.peers.get_mut(&peer).and_then(|s| s.remove(&piece)) else {
            return false;
        };
        self.viewer.remove(&piece);
        if let Some(due) = shown.due {
            self.expiry.remove(&(due, peer, piece));
        }
        true
    }

    /// A held-back piece is let go: back among those to show, and shown to subscribers whose
    /// view is short (but `except`).
    pub(super) fn let_go(&mut self, now: Instant, piece: PieceIndex, except: &BTreeSet<P>) {
        self.held.release(piece);
        self.hide(piece);
        self.refill(now, except);
    }

    /// `piece` goes back among those to show, last (if it may be shown).
    pub(super) fn hide(&mut self, piece: PieceIndex) {
        let place = self.back;
        if self.place(piece, place) {
            self.back += 1;
        }
    }

    /// `piece` goes back among those to show, first: a subscriber wanted it and went away
    /// before it was sent, or it was sent to nobody who keeps it.
    pub(super) fn hide_first(&mut self, piece: PieceIndex) {
        let place = self.front.saturating_sub(1);
        if self.place(piece, place) {
            self.front = place;
        }
    }

    pub(super) fn place(&mut self, piece: PieceIndex, place: u64) -> bool {
        // Shown to a subscriber already: it stays there, never shown to two at once.
        if !self.showable(piece) || self.viewer.contains_key(&piece) {
            return false;
        }
        let i = piece.0 as usize;
        self.hidden.remove(&(self.order[i], piece.0));
        self.order[i] = place;
        self.hidden.insert((place, piece.0));
        true
    }

    /// Shows `peer` hidden pieces up to `Config::per_peer`; `announce`: as haves (else the
    /// subscription's bitfield carries them).
    pub(super) fn top_up(&mut self, now: Instant, peer: P, announce: bool) {
        let due = now + self.config.deadline;
        let view = self.view_size();
        let Some(shown) = self.peers.get_mut(&peer) else { return };
        while shown.len() < view {
            let Some((_, i)) = self.hidden.pop_first() else { break };
            let piece = PieceIndex(i);
            shown.insert(piece, Shown { due: Some(due), requested: false });
            self.viewer.insert(piece, peer);
            self.expiry.insert((due, peer, piece));
            if announce {
                self.events.push_back(Event::Show { peer, piece });
            }
        }
    }

    /// How many unsent pieces one subscriber is shown at most now.
    pub(super) fn view_size(&self) -> usize {
        (self.config.budget / self.peers.len().max(1)).clamp(1, self.config.per_peer.max(1))
    }

    /// Pieces hidden again go to subscribers whose view is short, in turn, except those
    /// that just gave them back.
    pub(super) fn refill(&mut self, now: Instant, except: &BTreeSet<P>) {
        let view = self.view_size();
        let mut short: Vec<P> = self
            .peers
            .iter()
            .filter(|(p, s)| s.len() < view && !except.contains(p))
            .map(|(&p, _)| p)
            .collect();
        // Round robin from after the last one refilled, not from the lowest id: ids cost
        // nothing to make, and low ones would otherwise be first to every piece hidden again.
        if let Some(c) = self.cursor {
            let at = short.partition_point(|&p| p <= c);
            short.rotate_left(at);
        }
        for p in short {
            if self.hidden.is_empty() {
                break;
            }
            self.top_up(now, p, true);
            self.cursor = Some(p);
        }
    }
}
