//! The phases of a reveal: the first copy going out, the guard after it, the end (everything
//! shown), and which pieces each phase may show.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use shoal_core::PieceIndex;

use super::{Event, Reveal};

/// Where a reveal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Until every piece has left once: pieces nobody was sent are shown.
    Revealing,
    /// The first copy is out: until `until`, only pieces nobody keeps any more are shown.
    Guarding { until: Instant },
    /// Everything is shown.
    Over,
}

impl<P: Copy + Ord + Debug> Reveal<P> {
    /// True if `piece` may be shown: while revealing, if it was never sent; while guarding, if
    /// nobody it was sent to keeps it.
    pub(super) fn showable(&self, piece: PieceIndex) -> bool {
        match self.phase {
            Phase::Revealing => !self.sent.get(piece),
            Phase::Guarding { .. } => !self.keepers.is_kept(piece),
            Phase::Over => false,
        }
    }

    /// One copy of `piece` left: not shown again while it is kept. The last piece's first
    /// copy starts the guard.
    pub(super) fn count(&mut self, now: Instant, piece: PieceIndex) {
        self.began.get_or_insert(now);
        self.sent.set(piece);
        if !self.showable(piece) {
            self.hidden.remove(&(self.order[piece.0 as usize], piece.0));
        }
        if self.phase == Phase::Revealing && self.sent.is_complete() {
            self.guard(now);
        }
    }

    /// Every piece left once: views start afresh with the pieces nobody keeps (copies that
    /// left with their subscribers), until the guard ends.
    pub(super) fn guard(&mut self, now: Instant) {
        let took = self.began.map_or(Duration::ZERO, |b| now.saturating_duration_since(b));
        let share = self.config.guard_share;
        let relative = if share.is_finite() && share > 0.0 {
            took.mul_f64(share.min(16.0))
        } else {
            Duration::ZERO
        };
        let guard = self.config.guard.max(relative).min(self.config.max_guard);
        if guard.is_zero() {
            self.finish();
            return;
        }
        self.phase = Phase::Guarding { until: now + guard };
        // Views held unsent pieces only, and none is left; nothing is held back any more.
        self.peers.values_mut().for_each(BTreeMap::clear);
        self.viewer.clear();
        self.expiry.clear();
        self.held.clear();
        self.hidden.clear();
        for i in 0..self.pieces {
            let piece = PieceIndex(i);
            if self.keepers.is_kept(piece) {
                continue;
            }
            if self.keepers.was_kept(piece) {
                self.hidden.insert((self.order[i as usize], i));
            } else {
                // Never sent to a subscriber: its copies were likely lost on the way, first.
                self.hide_first(piece);
            }
        }
        self.refill(now, &BTreeSet::new());
    }

    /// The mode is over: every subscriber is to see everything.
    pub(super) fn finish(&mut self) {
        self.phase = Phase::Over;
        self.peers.clear();
        self.viewer.clear();
        self.whole.clear();
        self.expiry.clear();
        self.held.clear();
        self.hidden.clear();
        self.keepers.clear();
        self.events.push_back(Event::ShowAll);
    }
}
