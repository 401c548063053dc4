//! Who one download talks to, and when it stops talking to them.
//!
//! [`PeerSet`] is a sans-I/O state machine that owns the download's [`Picker`] once the manifest
//! is known. The driver feeds it what happened (a dial finished, a manifest or bitfield arrived,
//! a piece request ended, bytes arrived) with the current time, and pumps
//! [`PeerSet::poll_action`] for what to do next (dial, ask, subscribe, request, cancel, close).
//! [`PeerSet::poll_timeout`] says when to call [`PeerSet::handle_timeout`] next.
//!
//! Policy, every limit in [`Config`]:
//! - at most `max_connected` peers connected or being dialed; candidates beyond that wait in a
//!   bounded queue, and while they wait the slowest peer (never-delivering first) is rotated
//!   out every `rotate_every` to make room;
//! - the manifest is asked of up to `manifest_parallel` peers at once, each with a deadline;
//!   the first valid answer wins and the other asks are cancelled; a peer whose manifest does
//!   not hash to the content id is banned, one that does not answer in time is dropped;
//! - a subscribed peer must send its bitfield within `bitfield_deadline`;
//! - each peer's window of requests in flight grows by one per piece that arrives within
//!   `window_delay` of its request and shrinks by one (to one at least) per piece that took
//!   longer: a crowded peer keeps few of our pieces waiting in its queue;
//! - a peer with requests in flight must deliver some bytes every `stall_deadline`, or every
//!   `proven_stall_deadline` once it has delivered a piece (time spent waiting on our own rate
//!   limit does not count);
//! - `Busy` backs that peer off exponentially with jitter, capped; the others keep going;
//! - bad data and pieces refused after being advertised earn strikes in the picker (kept
//!   across re-sent bitfields and reconnects); at the limit the peer is banned for good;
//! - a dropped peer is not dialed again for `retry_after`; a banned one never (the set
//!   remembers at most `max_dropped` drops, bans last; the picker keeps every ban for good).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::Instant;

use shoal_core::{Bitfield, PieceIndex};

use crate::picker::{Picker, Verdict};
use timers::backoff;

mod timers;
mod types;

pub use types::{Action, Admit, Config, DropReason, ManifestReply, PieceOutcome};

/// Where the manifest request to a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Not asked (yet, or again after a cancel).
    Idle,
    /// Asked; the answer is due by then.
    Asked(Instant),
}

#[derive(Debug)]
struct Peer<A> {
    addr: A,
    connected_at: Instant,
    manifest: Ask,
    /// When its control stream was opened (the bitfield is due from then).
    subscribed: Option<Instant>,
    /// When its first bitfield arrived.
    active_since: Option<Instant>,
    /// Requests it may have in flight: starts at `Config::initial_window`, grows by one per
    /// piece verified within `Config::window_delay` of its request, shrinks by one per slower
    /// one, drops to one after a strike, so an unproven or crowded peer holds few requests.
    window: usize,
    /// When each request in flight to it was sent (at most `max_window` entries).
    sent: BTreeMap<PieceIndex, Instant>,
    /// The last sign of progress on its requests (or when its first request went out).
    last_progress: Instant,
    /// Bytes received from it, as last reported.
    received: u64,
    /// `Busy` answers in a row (since its last verified piece), and the end of the backoff.
    busy: u32,
    busy_until: Option<Instant>,
    pieces: u32,
    verified_bytes: u64,
    /// When it last delivered a verified piece.
    last_piece: Option<Instant>,
}

#[derive(Debug)]
enum Phase<P> {
    /// Looking for the manifest.
    Manifest,
    /// A peer sent a valid manifest; waiting for [`PeerSet::start`].
    Found,
    /// Fetching pieces.
    Pieces(Box<Picker<P>>),
}

/// A dropped peer: why, when, and whether it had delivered anything.
#[derive(Debug, Clone, Copy)]
struct Dropped {
    reason: DropReason,
    at: Instant,
    pieces: u32,
}

/// The peers of one download. `P` identifies a peer, `A` is an address to dial.
#[derive(Debug)]
pub struct PeerSet<P, A> {
    config: Config,
    phase: Phase<P>,
    peers: BTreeMap<P, Peer<A>>,
    candidates: VecDeque<(A, Option<P>)>,
    dialing: BTreeMap<A, Option<P>>,
    dropped: BTreeMap<P, Dropped>,
    actions: VecDeque<Action<P, A>>,
    next_rotation: Option<Instant>,
    rng: u64,
    max_window: usize,
    /// Peers the tracker placed in another region (at most [`MAX_REMOTE`]), handed to the
    /// picker when it starts.
    remote: BTreeSet<P>,
}

/// The most peers a download remembers as being in another region. Past it further ones
/// count as of our region: fetched from like any peer, never starved.
pub const MAX_REMOTE: usize = 4096;

impl<P: Copy + Ord + Debug, A: Copy + Ord + Debug> PeerSet<P, A> {
    /// An empty set looking for the manifest. `seed` drives the picker's shuffle and the
    /// backoff jitter: the same seed and inputs give the same actions.
    pub fn new(config: Config, seed: u64) -> Self {
        Self {
            config,
            phase: Phase::Manifest,
            peers: BTreeMap::new(),
            candidates: VecDeque::new(),
            dialing: BTreeMap::new(),
            dropped: BTreeMap::new(),
            actions: VecDeque::new(),
            next_rotation: None,
            rng: seed | 1,
            max_window: 1,
            remote: BTreeSet::new(),
        }
    }

    /// Marks `peer` as being in another region than ours (`true`) or in ours: it is then asked
    /// only for pieces no connected peer of our region holds (see [`Picker::set_remote`]).
    pub fn set_remote(&mut self, peer: P, remote: bool) {
        if remote {
            if self.remote.len() >= MAX_REMOTE && !self.remote.contains(&peer) {
                return;
            }
            self.remote.insert(peer);
        } else {
            self.remote.remove(&peer);
        }
        if let Phase::Pieces(picker) = &mut self.phase {
            picker.set_remote(peer, remote);
        }
    }

    /// Offers a peer to dial. Ignored when the queue is full, when the address or id is
    /// already connected, dialing or queued, for a banned peer, and for a dropped one until
    /// `Config::retry_after` has passed.
    pub fn add_candidate(&mut self, now: Instant, addr: A, id: Option<P>) {
        if self.candidates.len() >= self.config.max_candidates
            || self.dialing.contains_key(&addr)
            || self.candidates.iter().any(|&(a, i)| a == addr || (id.is_some() && i == id))
            || self.peers.values().any(|p| p.addr == addr)
            || id.is_some_and(|id| self.dialing.values().any(|&i| i == Some(id)))
            || id.is_some_and(|id| !self.admissible(now, id))
        {
            return;
        }
        self.candidates.push_back((addr, id));
    }

    /// A dial asked for by [`Action::Dial`] finished: `Some(id)` with the id the peer proved,
    /// `None` if it failed.
    pub fn handle_dialed(&mut self, now: Instant, addr: A, result: Option<P>) -> Admit {
        // Only dials the set asked for: anything else cannot take a slot.
        if self.dialing.remove(&addr).is_none() {
            return Admit::Refused;
        }
        let Some(id) = result else { return Admit::Refused };
        if !self.admissible(now, id) || self.is_done() {
            return Admit::Refused;
        }
        // Connected again after its cool-down: its next drop, if any, is recorded afresh.
        self.dropped.remove(&id);
        let subscribed = matches!(self.phase, Phase::Pieces(_)).then_some(now);
        if subscribed.is_some() {
            self.actions.push_back(Action::Subscribe(id));
        }
        self.peers.insert(
            id,
            Peer {
                addr,
                connected_at: now,
                manifest: Ask::Idle,
                subscribed,
                active_since: None,
                window: self.config.initial_window,
                sent: BTreeMap::new(),
                last_progress: now,
                received: 0,
                busy: 0,
                busy_until: None,
                pieces: 0,
                verified_bytes: 0,
                last_piece: None,
            },
        );
        Admit::Accepted
    }

    /// True if `id` may be connected now: not connected already, not banned, not in a
    /// cool-down. Changes nothing (a queued candidate keeps its drop record until it is
    /// connected again).
    fn admissible(&self, now: Instant, id: P) -> bool {
        !self.peers.contains_key(&id) && !self.is_blocked(now, id)
    }

    /// The manifest request to `peer` came to `reply`. The first valid one ends the round:
    /// the other requests are cancelled, and the driver calls [`PeerSet::start`].
    pub fn handle_manifest(&mut self, now: Instant, peer: P, reply: ManifestReply) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.manifest = Ask::Idle;
        if !matches!(self.phase, Phase::Manifest) {
            return;
        }
        match reply {
            ManifestReply::Valid => {
                self.phase = Phase::Found;
                for (&id, p) in self.peers.iter_mut() {
                    if matches!(p.manifest, Ask::Asked(_)) {
                        p.manifest = Ask::Idle;
                        self.actions.push_back(Action::CancelManifest(id));
                    }
                }
            }
            ManifestReply::Invalid => self.drop_peer(now, peer, DropReason::Banned),
            ManifestReply::Failed => self.drop_peer(now, peer, DropReason::Refused),
        }
    }

    /// Starts fetching pieces, with the manifest known: `have` is what is already verified,
    /// `max_window` the most requests in flight per peer. Subscribes to every connected peer.
    pub fn start(&mut self, now: Instant, have: Bitfield, max_window: usize) {
        let seed = self.next_random();
        let mut picker = Box::new(Picker::new(have, seed));
        // The manifest round's bans (false manifests) hold for the rest of the download even
        // once `dropped` forgets them.
        for (&id, _) in self.dropped.iter().filter(|(_, d)| d.reason == DropReason::Banned) {
            picker.ban(id);
        }
        for &id in &self.remote {
            picker.set_remote(id, true);
        }
        self.phase = Phase::Pieces(picker);
        self.max_window = max_window.max(1);
        for (&id, p) in self.peers.iter_mut() {
            p.subscribed = Some(now);
            p.manifest = Ask::Idle;
            self.actions.push_back(Action::Subscribe(id));
        }
    }

    /// The tracker's pieces to fetch first.
    pub fn set_hints(&mut self, hints: &[PieceIndex]) {
        if let Phase::Pieces(picker) = &mut self.phase {
            picker.set_hints(hints);
        }
    }

    /// The peer's bitfield arrived (first or again: a re-sent one changes what it holds,
    /// never its strikes).
    pub fn handle_bitfield(&mut self, now: Instant, peer: P, bitfield: Bitfield) {
        let Phase::Pieces(picker) = &mut self.phase else { return };
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if picker.add_peer(peer, bitfield) {
            if p.active_since.is_none() {
                p.active_since = Some(now);
                p.last_progress = now;
            }
            return;
        }
        let reason = if picker.is_banned(peer) { DropReason::Banned } else { DropReason::Protocol };
        self.drop_peer(now, peer, reason);
    }

    /// The peer gained a piece.
    pub fn handle_have(&mut self, peer: P, piece: PieceIndex) {
        if let Phase::Pieces(picker) = &mut self.phase {
            picker.peer_has(peer, piece);
        }
    }

    /// The peer refused our subscription (it does not hold the content).
    pub fn handle_refused(&mut self, now: Instant, peer: P) {
        self.drop_peer(now, peer, DropReason::Refused);
    }

    /// The peer's connection or control stream closed.
    pub fn handle_closed(&mut self, now: Instant, peer: P) {
        self.drop_peer(now, peer, DropReason::Gone);
    }

    /// `received`: bytes received from the peer so far; `waiting_locally`: a request to it is
    /// waiting on our own rate limit (time the peer is not to blame for).
    pub fn handle_progress(&mut self, now: Instant, peer: P, received: u64, waiting_locally: bool) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if received > p.received || waiting_locally {
                p.last_progress = now;
            }
            p.received = p.received.max(received);
        }
    }

    /// A piece request ended. `bytes` is the piece's length (for the peer's rate).
    pub fn handle_piece(
        &mut self,
        now: Instant,
        peer: P,
        piece: PieceIndex,
        outcome: PieceOutcome,
        bytes: u64,
    ) {
        let Phase::Pieces(picker) = &mut self.phase else { return };
        let mut p = self.peers.get_mut(&peer);
        let sent = p.as_mut().and_then(|p| p.sent.remove(&piece));
        let drop = match outcome {
            PieceOutcome::Verified => {
                for other in picker.piece_verified(peer, piece) {
                    if let Some(o) = self.peers.get_mut(&other) {
                        o.sent.remove(&piece);
                    }
                    self.actions.push_back(Action::Cancel { peer: other, piece });
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    let queued = sent.is_some_and(|t| {
                        now.saturating_duration_since(t) > self.config.window_delay
                    });
                    p.window = if queued {
                        p.window.saturating_sub(1).max(1)
                    } else {
                        (p.window + 1).min(self.max_window)
                    };
                    p.pieces += 1;
                    p.verified_bytes += bytes;
                    p.busy = 0;
                    p.last_progress = now;
                    p.last_piece = Some(now);
                }
                None
            }
            PieceOutcome::Bad | PieceOutcome::NotHeld => {
                let verdict = picker.piece_failed(peer, piece);
                if let Some(p) = p {
                    p.window = 1;
                    p.last_progress = now;
                }
                (verdict == Verdict::Banned).then_some(DropReason::Banned)
            }
            PieceOutcome::Busy => {
                picker.request_failed(peer, piece);
                // Several requests in flight answer `Busy` together: one backoff step.
                if let Some(p) = p.filter(|p| p.busy_until.is_none_or(|t| t <= now)) {
                    p.busy = p.busy.saturating_add(1);
                    p.last_progress = now;
                    let delay = backoff(&self.config, p.busy, xorshift(&mut self.rng));
                    p.busy_until = Some(now + delay);
                    // Backing off: what it holds must not hold other regions' peers back.
                    picker.set_benched(peer, true);
                }
                None
            }
            PieceOutcome::Refused => {
                picker.request_failed(peer, piece);
                Some(DropReason::Refused)
            }
            PieceOutcome::Failed => {
                picker.request_failed(peer, piece);
                Some(DropReason::Gone)
            }
        };
        if let Some(reason) = drop {
            self.drop_peer(now, peer, reason);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action<P, A>> {
        if self.actions.is_empty() {
            self.fill(now);
        }
        self.actions.pop_front()
    }

    /// The picker, once pieces are being fetched.
    pub fn picker(&self) -> Option<&Picker<P>> {
        match &self.phase {
            Phase::Pieces(p) => Some(p),
            _ => None,
        }
    }

    /// True once every piece is verified.
    pub fn is_done(&self) -> bool {
        self.picker().is_some_and(|p| p.is_complete())
    }

    /// True while looking for the manifest with nobody left to ask: no peer connected or
    /// being dialed, no candidate waiting.
    pub fn manifest_exhausted(&self) -> bool {
        matches!(self.phase, Phase::Manifest)
            && self.peers.is_empty()
            && self.dialing.is_empty()
            && self.candidates.is_empty()
    }

    /// True while fetching pieces if nothing is under way and nothing will happen without
    /// new candidates: no dial, no bitfield awaited, no request in flight, no useful peer
    /// backing off.
    pub fn is_idle(&self) -> bool {
        let Phase::Pieces(picker) = &self.phase else { return false };
        self.dialing.is_empty()
            && self.candidates.is_empty()
            && self.peers.iter().all(|(&id, p)| {
                p.active_since.is_some()
                    && picker.in_flight(id) == 0
                    && !(p.busy_until.is_some() && picker.is_useful(id))
            })
    }

    /// Peers connected now.
    pub fn connected(&self) -> usize {
        self.peers.len()
    }

    /// Why a peer was dropped, if it was (and is still remembered).
    pub fn drop_reason(&self, peer: P) -> Option<DropReason> {
        self.dropped.get(&peer).map(|d| d.reason)
    }

    /// Dropped peers that never delivered a verified piece, for a reason that says they do
    /// not deliver (see [`DropReason::is_undelivering`]): what the tracker should hear of.
    pub fn undelivered(&self) -> Vec<P> {
        self.dropped
            .iter()
            .filter(|(_, d)| d.pieces == 0 && d.reason.is_undelivering())
            .map(|(&id, _)| id)
            .collect()
    }

    fn drop_peer(&mut self, now: Instant, peer: P, reason: DropReason) {
        let Some(p) = self.peers.remove(&peer) else {
            // A late verdict on a peer already dropped (a request that ended after the drop):
            // a ban replaces the earlier reason, so the peer is never dialed again.
            if reason == DropReason::Banned {
                let pieces = self.dropped.get(&peer).map_or(0, |d| d.pieces);
                self.remember(peer, Dropped { reason, at: now, pieces });
            }
            return;
        };
        if let Phase::Pieces(picker) = &mut self.phase {
            picker.remove_peer(peer);
        }
        self.remember(peer, Dropped { reason, at: now, pieces: p.pieces });
        self.actions.push_back(Action::Close { peer, reason });
    }

    /// Records a drop, keeping at most `Config::max_dropped` records: when full, the oldest
    /// drop that is not a ban is forgotten, or, if every record is a ban, the oldest ban.
    fn remember(&mut self, peer: P, d: Dropped) {
        if !self.dropped.contains_key(&peer) && self.dropped.len() >= self.config.max_dropped {
            let oldest = |bans: bool| {
                self.dropped
                    .iter()
                    .filter(|(_, d)| bans || d.reason != DropReason::Banned)
                    .min_by_key(|(_, d)| d.at)
                    .map(|(&id, _)| id)
            };
            if let Some(id) = oldest(false).or_else(|| oldest(true)) {
                self.dropped.remove(&id);
            }
        }
        self.dropped.insert(peer, d);
    }

    /// Queues dials, manifest asks and piece requests as far as the limits allow.
    fn fill(&mut self, now: Instant) {
        let c = &self.config;
        if self.is_done() {
            return;
        }
        while self.peers.len() + self.dialing.len() < c.max_connected
            && self.dialing.len() < c.max_dialing
        {
            let Some((addr, id)) = self.candidates.pop_front() else { break };
            if id.is_some_and(|id| !self.admissible(now, id)) {
                continue;
            }
            self.dialing.insert(addr, id);
            self.actions.push_back(Action::Dial { addr, id });
        }
        match &mut self.phase {
            Phase::Manifest => {
                let mut asked =
                    self.peers.values().filter(|p| matches!(p.manifest, Ask::Asked(_))).count();
                for (&id, p) in self.peers.iter_mut() {
                    if asked >= c.manifest_parallel {
                        break;
                    }
                    if p.manifest == Ask::Idle {
                        p.manifest = Ask::Asked(now + c.manifest_deadline);
                        asked += 1;
                        self.actions.push_back(Action::AskManifest(id));
                    }
                }
            }
            Phase::Found => {}
            Phase::Pieces(picker) => {
                for (&id, p) in self.peers.iter_mut() {
                    if p.active_since.is_none() {
                        continue;
                    }
                    match p.busy_until {
                        Some(t) if t > now => continue,
                        Some(_) => {
                            p.busy_until = None;
                            picker.set_benched(id, false);
                        }
                        None => {}
                    }
                    let window = p.window.min(self.max_window);
                    while picker.in_flight(id) < window {
                        let idle = picker.in_flight(id) == 0;
                        let Some(r) = picker.next_request(id) else { break };
                        if idle {
                            p.last_progress = now;
                        }
                        p.sent.insert(r.piece, now);
                        self.actions.push_back(Action::Request { peer: id, piece: r.piece });
                    }
                }
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }
}

/// The next value of a xorshift64 generator: deterministic for a seed.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[cfg(test)]
mod tests;
