//! The events of the simulation, ordered by time then by scheduling order.

use std::cmp::Ordering;

use shoal_core::{Bitfield, PieceIndex};
use shoal_swarm::PieceOutcome;

use super::Us;

/// What happens to a node (`Event::node`).
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// Its fetch starts (or resumes after churn).
    Start,
    /// Its periodic tracker lookup.
    Lookup,
    /// Its dial to `peer` completes.
    Dialed(u32),
    /// `peer` answers its manifest request.
    Manifest(u32),
    /// `client` subscribes to its haves.
    Subscribe(u32),
    /// `peer`'s bitfield arrives.
    Bitfield(u32, Box<Bitfield>),
    /// `client` requests a piece of it.
    Request(u32, PieceIndex),
    /// `client` cancels a request.
    Cancel(u32, PieceIndex),
    /// The transfer at the head of its uplink is sent.
    SendDone,
    /// `peer` answers a request.
    Piece(u32, PieceIndex, PieceOutcome),
    /// Its haves reach its subscribers.
    Haves,
    /// `server` (a super-seeding seed) shows it one more piece.
    Show(u32, PieceIndex),
    /// Its `Reveal` timer.
    RevealTimer(Us),
    /// `peer`, which it fetches from, went away.
    ConnClosed(u32),
    /// `client` closed its connection to it.
    ServeClosed(u32),
    /// Its `PeerSet` timer.
    PeerTimer(Us),
    /// Its `Uploader` timer.
    UpTimer(Us),
    /// It leaves (churn).
    Leave,
    /// It comes back.
    Rejoin,
    /// The tracker's clock (node 0's event, whatever its state).
    Tick,
}

pub(crate) struct Event {
    pub(crate) time: Us,
    pub(crate) seq: u64,
    pub(crate) node: u32,
    /// The node's incarnation when scheduled: an event for an earlier one is dropped.
    pub(crate) inc: u32,
    pub(crate) kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    // Reversed: the heap pops the earliest, first scheduled first among equals.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}
