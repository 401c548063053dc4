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
        if piece.0 >= self.pieces || self.is_over() {
            return;
        }
        self.progress = Some(now);
        self.keepers.stored(piece);
        self.held.release(piece);
        self.count(now, piece);
    }

    /// This node is about to send `piece` another way (pushing it into storage, which will
    /// serve it): a claim if nobody was sent, shown or asked for it, and it is then shown to
    /// nobody until [`Reveal::handle_copied`], [`Reveal::handle_unclaimed`] or
    /// `Config::send_deadline`. `None` if a subscriber may be getting it from this node
    /// already, or `Config::per_peer` claims are out: sending it both ways would be a copy more
    /// than the swarm needs, so the caller leaves it for later. Once the first copy is out,
    /// always a claim: while guarding, one that holds the piece back if it was to be shown
    /// (else nothing).
    pub fn claim(&mut self, now: Instant, piece: PieceIndex) -> Option<Claimed> {
        let open = Some(Claimed { piece, until: now });
        if self.is_over() {
            return open;
        }
        if piece.0 >= self.pieces
            || self.held.count(Holder::Push) >= self.config.per_peer.max(1)
            || !self.hidden.remove(&(self.order[piece.0 as usize], piece.0))
        {
            return if self.is_done() { open } else { None };
        }
        let until = now + self.config.send_deadline;
        self.held.hold(Holder::Push, piece, until);
        Some(Claimed { piece, until })
    }

    /// A piece claimed with [`Reveal::claim`] was not sent after all: it may be shown again.
    /// Only that claim is given up: one that lapsed and was made again since (by another push)
    /// stays.
    pub fn handle_unclaimed(&mut self, now: Instant, claim: Claimed) {
        let piece = claim.piece;
        if piece.0 >= self.pieces
            || self.is_over()
            || self.held.entry(piece) != Some((Holder::Push, claim.until))
        {
            return;
        }
        self.let_go(now, piece, &BTreeSet::new());
    }
}

/// A piece claimed for a push ([`Reveal::claim`]), to hand back if the push fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    piece: PieceIndex,
    /// When the claim lapses; with the piece, it names this claim among later ones.
    until: Instant,
}

impl Claimed {
    /// The piece claimed.
    pub fn piece(&self) -> PieceIndex {
        self.piece
    }
}
