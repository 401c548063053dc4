//! "A node and the simulation make the same decisions from the same inputs": every call the
//! simulation makes on a recorded downloader's `PeerSet` goes through [`Driven`], which logs
//! it with its time; [`replay`] feeds the log, call by call, to a fresh `PeerSet` the way the
//! node's fetch driver does (`fetch/pieces.rs`: `handle_*` as things happen, `poll_action`
//! drained, `handle_timeout` at `poll_timeout`), and returns its decisions to compare.

use std::time::{Duration, Instant};

use shoal_core::{Bitfield, PieceIndex};
use shoal_swarm::{Action, Admit, Config, ManifestReply, PeerSet, PieceOutcome};

/// One call on a `PeerSet`, with its time as an offset from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `add_candidate`.
    Candidate(Duration, u32, Option<u32>),
    /// `handle_dialed`.
    Dialed(Duration, u32, Option<u32>),
    /// `handle_manifest`.
    Manifest(Duration, u32, ManifestReply),
    /// `start`.
    Start(Duration, Bitfield, usize),
    /// `set_hints`.
    Hints(Vec<PieceIndex>),
    /// `handle_bitfield`.
    Bitfield(Duration, u32, Bitfield),
    /// `handle_have`.
    Have(u32, PieceIndex),
    /// `handle_closed`.
    Closed(Duration, u32),
    /// `handle_piece`.
    Piece(Duration, u32, PieceIndex, PieceOutcome, u64),
    /// `handle_timeout`.
    Timeout(Duration),
    /// `poll_action` until it returns `None`.
    Poll(Duration),
}

/// What a `PeerSet` decided: an action, or the answer to a dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// From `poll_action`.
    Action(Action<u32, u32>),
    /// From `handle_dialed`.
    Admit(Admit),
}

/// A recorded downloader's inputs and the decisions its `PeerSet` made in the simulation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Log {
    /// The downloader (1-based: 0 is the seed).
    pub node: usize,
    /// The seed its `PeerSet` was made with.
    pub seed: u64,
    /// Every call, in order.
    pub inputs: Vec<Input>,
    /// Every decision, in order.
    pub outputs: Vec<Output>,
}

/// Feeds `log`'s inputs to a fresh `PeerSet` (node defaults, the log's seed) with its own
/// clock base, and returns the decisions it makes.
pub fn replay(log: &Log) -> Vec<Output> {
    let t0 = Instant::now();
    let mut set: PeerSet<u32, u32> = PeerSet::new(Config::default(), log.seed);
    let mut out = Vec::new();
    for input in log.inputs.iter().cloned() {
        match input {
            Input::Candidate(t, addr, id) => set.add_candidate(t0 + t, addr, id),
            Input::Dialed(t, addr, r) => {
                out.push(Output::Admit(set.handle_dialed(t0 + t, addr, r)))
            }
            Input::Manifest(t, peer, reply) => set.handle_manifest(t0 + t, peer, reply),
            Input::Start(t, have, window) => set.start(t0 + t, have, window),
            Input::Hints(h) => set.set_hints(&h),
            Input::Bitfield(t, peer, b) => set.handle_bitfield(t0 + t, peer, b),
            Input::Have(peer, piece) => set.handle_have(peer, piece),
            Input::Closed(t, peer) => set.handle_closed(t0 + t, peer),
            Input::Piece(t, peer, piece, o, bytes) => {
                set.handle_piece(t0 + t, peer, piece, o, bytes)
            }
            Input::Timeout(t) => set.handle_timeout(t0 + t),
            Input::Poll(t) => {
                while let Some(a) = set.poll_action(t0 + t) {
                    out.push(Output::Action(a));
                }
            }
        }
    }
    out
}

/// A downloader's `PeerSet` as the simulation drives it: every call logged when recording.
#[derive(Debug)]
pub(crate) struct Driven {
    pub(crate) set: PeerSet<u32, u32>,
    t0: Instant,
    log: Option<Log>,
}

impl Driven {
    pub(crate) fn new(t0: Instant, node: usize, seed: u64, record: bool) -> Self {
        let log = record.then(|| Log { node, seed, ..Log::default() });
        Self { set: PeerSet::new(Config::default(), seed), t0, log }
    }

    fn note(&mut self, input: impl FnOnce() -> Input) {
        if let Some(l) = &mut self.log {
            l.inputs.push(input());
        }
    }

    fn off(&self, now: Instant) -> Duration {
        now - self.t0
    }

    pub(crate) fn take_log(&mut self) -> Option<Log> {
        self.log.take()
    }

    pub(crate) fn add_candidate(&mut self, now: Instant, addr: u32, id: Option<u32>) {
        let t = self.off(now);
        self.note(|| Input::Candidate(t, addr, id));
        self.set.add_candidate(now, addr, id);
    }

    pub(crate) fn handle_dialed(&mut self, now: Instant, addr: u32, r: Option<u32>) -> Admit {
        let t = self.off(now);
        self.note(|| Input::Dialed(t, addr, r));
        let admit = self.set.handle_dialed(now, addr, r);
        if let Some(l) = &mut self.log {
            l.outputs.push(Output::Admit(admit));
        }
        admit
    }

    pub(crate) fn handle_manifest(&mut self, now: Instant, peer: u32, reply: ManifestReply) {
        let t = self.off(now);
        self.note(|| Input::Manifest(t, peer, reply));
        self.set.handle_manifest(now, peer, reply);
    }

    pub(crate) fn start(&mut self, now: Instant, have: Bitfield, window: usize) {
        let t = self.off(now);
        self.note(|| Input::Start(t, have.clone(), window));
        self.set.start(now, have, window);
    }

    pub(crate) fn set_hints(&mut self, hints: &[PieceIndex]) {
        self.note(|| Input::Hints(hints.to_vec()));
        self.set.set_hints(hints);
    }

    pub(crate) fn handle_bitfield(&mut self, now: Instant, peer: u32, b: Bitfield) {
        let t = self.off(now);
        self.note(|| Input::Bitfield(t, peer, b.clone()));
        self.set.handle_bitfield(now, peer, b);
    }

    pub(crate) fn handle_have(&mut self, peer: u32, piece: PieceIndex) {
        self.note(|| Input::Have(peer, piece));
        self.set.handle_have(peer, piece);
    }

    pub(crate) fn handle_closed(&mut self, now: Instant, peer: u32) {
        let t = self.off(now);
        self.note(|| Input::Closed(t, peer));
        self.set.handle_closed(now, peer);
    }

    pub(crate) fn handle_piece(
        &mut self,
        now: Instant,
        peer: u32,
        piece: PieceIndex,
        outcome: PieceOutcome,
        bytes: u64,
    ) {
        let t = self.off(now);
        self.note(|| Input::Piece(t, peer, piece, outcome, bytes));
        self.set.handle_piece(now, peer, piece, outcome, bytes);
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let t = self.off(now);
        self.note(|| Input::Timeout(t));
        self.set.handle_timeout(now);
    }

    /// Drains `poll_action` (one `Poll` input for the whole drain).
    pub(crate) fn poll_actions(&mut self, now: Instant) -> Vec<Action<u32, u32>> {
        let t = self.off(now);
        self.note(|| Input::Poll(t));
        let actions: Vec<_> = std::iter::from_fn(|| self.set.poll_action(now)).collect();
        if let Some(l) = &mut self.log {
            l.outputs.extend(actions.iter().map(|&a| Output::Action(a)));
        }
        actions
    }
}
