//! Copies that leave the origin another way than to a subscriber: pushed into storage, which
//! then serves them. A piece is claimed before its push so that no subscriber is shown it
//! meanwhile (a copy sent both ways is one more than the swarm needs), and counts as out once
//! storage holds it.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Instant;

use shoal_core::PieceIndex;

use super::{Holder, Reveal};

impl<P: Copy + Ord + Debug> Reveal<P> {
    /// A copy of `piece` left this node another way (pushed into storage, which serves it):
    /// it is not shown to anyone any more.
    pub fn handle_copied(&mut self, now: Instant, piece: PieceIndex) {
        if piece.0 >= self.pieces || self.is_done() {
            return;
        }
        self.progress = Some(now);
        self.count(piece);
        self.held.release(piece);
        if self.is_done() {
            self.finish();
        }
    }

    /// This node is about to send `piece` another way (pushing it into storage, which will
    /// serve it): true if nobody was sent, shown or asked for it, and it is then shown to
    /// nobody until [`Reveal::handle_copied`], [`Reveal::handle_unclaimed`] or
    /// `Config::send_deadline`. False if a subscriber may be getting it from this node already,
    /// or `Config::per_peer` claims are out: sending it both ways would be a copy more than the
    /// swarm needs, so the caller leaves it for later. Once the mode is over, always true.
    pub fn claim(&mut self, now: Instant, piece: PieceIndex) -> bool {
        if self.is_done() {
            return true;
        }
        if piece.0 >= self.pieces
            || self.held.count(Holder::Push) >= self.config.per_peer.max(1)
            || !self.hidden.remove(&(self.order[piece.0 as usize], piece.0))
        {
            return false;
        }
        self.held.hold(Holder::Push, piece, now + self.config.send_deadline);
        true
    }

    /// A piece claimed with [`Reveal::claim`] was not sent after all: it may be shown again.
    pub fn handle_unclaimed(&mut self, now: Instant, piece: PieceIndex) {
        if piece.0 >= self.pieces || self.is_done() || self.held.holder(piece) != Some(Holder::Push)
        {
            return;
        }
        self.held.release(piece);
        self.hide(piece);
        self.refill(now, &BTreeSet::new());
    }
}
