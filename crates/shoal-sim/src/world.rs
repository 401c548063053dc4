//! The world: nodes, the event queue in simulated time, the tracker, and churn.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use shoal_core::{Bitfield, Manifest, NodeId, PieceHash, PieceIndex};
use shoal_index::Index;
use shoal_swarm::upload::{Config as UploadConfig, Ticket};
use shoal_swarm::Uploader;
use shoal_wire::tracker::Role;

use crate::down::Fetch;

mod churn;
mod event;
mod random;

use crate::{fluid_bound, Outcome, Scenario, SimError};
use event::Event;
pub(crate) use event::Kind;
use random::{node_id, pick, secs, unit, xorshift};

/// Simulated microseconds since the start.
pub(crate) type Us = u64;

/// How often a fetch looks the tracker up (the node's `LOOKUP_EVERY`).
pub(crate) const LOOKUP_EVERY: Us = 2_000_000;
/// Peers asked for per lookup (the node's `LOOKUP_PEERS`).
pub(crate) const LOOKUP_PEERS: usize = 32;
/// Bytes a fetch keeps in flight per peer at most (the node's `PIPELINE_BYTES`).
const PIPELINE_BYTES: u64 = 16 * 1024 * 1024;
/// The tracker clock: deltas flushed every 250 ms (`DELTA_EVERY`), heartbeats every 2 s,
/// expiry every second.
const TICK: Us = 250_000;

/// A granted upload waiting for (or on) the uplink.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) to: u32,
    pub(crate) piece: PieceIndex,
    pub(crate) ticket: Ticket,
    pub(crate) bytes: u64,
}

pub(crate) struct Node {
    pub(crate) id: NodeId,
    /// Bytes per second.
    pub(crate) uplink: f64,
    pub(crate) online: bool,
    pub(crate) inc: u32,
    pub(crate) have: Bitfield,
    pub(crate) fetch: Option<Fetch>,
    pub(crate) finished: Option<Us>,
    // Serving side.
    pub(crate) up: Uploader<u32, u8>,
    /// The seed's super-seeding state, while it reveals.
    pub(crate) reveal: Option<shoal_swarm::Reveal<u32>>,
    pub(crate) reveal_timer: Option<Us>,
    /// Requests waiting for a slot, by ticket.
    pub(crate) waiting: BTreeMap<Ticket, (u32, PieceIndex)>,
    /// Granted transfers, the head being sent.
    pub(crate) uplink_q: VecDeque<Transfer>,
    pub(crate) sending: bool,
    pub(crate) up_timer: Option<Us>,
    /// Nodes fetching from it (connected), and those subscribed to its haves.
    pub(crate) clients: BTreeSet<u32>,
    pub(crate) subscribers: BTreeSet<u32>,
    /// Haves not yet sent to subscribers (one batch in flight per latency).
    pub(crate) haves_out: Vec<PieceIndex>,
    pub(crate) uploaded: u64,
    /// Deltas not yet announced to the tracker.
    pub(crate) deltas: Vec<PieceIndex>,
    pub(crate) churn: Option<(Us, Us)>,
}

/// Figures that explain an outcome.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// `Busy` answers (at once, or a waiter's deadline).
    pub(crate) busy: u64,
    /// Times the seed sent each piece.
    seed_sent: Vec<u16>,
    /// Pieces the seed sent at least once, and when the last of them first went out.
    seed_distinct: u32,
    seed_all_sent: Option<Us>,
}

impl Stats {
    pub(crate) fn seed_sent(&mut self, piece: PieceIndex, now: Us) {
        let total = self.seed_sent.len();
        let Some(n) = self.seed_sent.get_mut(piece.0 as usize) else { return };
        if *n == 0 {
            self.seed_distinct += 1;
            if self.seed_distinct as usize == total {
                self.seed_all_sent = Some(now);
            }
        }
        *n = n.saturating_add(1);
    }
}

pub(crate) struct World {
    pub(crate) t0: Instant,
    pub(crate) now: Us,
    pub(crate) latency: Us,
    queue: BinaryHeap<Event>,
    seq: u64,
    pub(crate) events: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) by_id: BTreeMap<NodeId, u32>,
    pub(crate) index: Index,
    pub(crate) content: shoal_core::ContentId,
    pub(crate) pieces: u32,
    pub(crate) piece_size: u64,
    pub(crate) file_size: u64,
    pub(crate) window: usize,
    rng: u64,
    pub(crate) stats: Stats,
    record: BTreeSet<usize>,
    pub(crate) logs: Vec<crate::replay::Log>,
    bound_s: f64,
}

/// A file size the piece-size rule cuts into exactly `count` pieces, if there is one.
fn size_with_pieces(count: u64) -> Option<u64> {
    use shoal_core::piece::{piece_count, piece_log2_for, MAX_PIECE_LOG2, MIN_PIECE_LOG2};
    (MIN_PIECE_LOG2..=MAX_PIECE_LOG2).find_map(|log2| {
        // The largest and the smallest size of `count` pieces of this size.
        [count << log2, ((count.saturating_sub(1)) << log2) + 1].into_iter().find(|&size| {
            size > 0 && piece_log2_for(size) == log2 && piece_count(size, log2) == count
        })
    })
}

impl World {
    pub(crate) fn new(s: &Scenario) -> Result<Self, SimError> {
        if s.nodes == 0 || s.uplink == 0 || s.file_size == 0 {
            return Err(SimError::Invalid("nodes, uplink and file size must be positive"));
        }
        if !(0.0..=1.0).contains(&s.slow_fraction) || !(0.0..=1.0).contains(&s.churn) {
            return Err(SimError::Invalid("fractions are between 0 and 1"));
        }
        if s.latency > std::time::Duration::from_secs(10) {
            return Err(SimError::Invalid("the latency is at most 10 s (10000 ms)"));
        }
        let rule_size = 1u64 << shoal_core::piece::piece_log2_for(s.file_size);
        let piece_size = s.piece_size.unwrap_or(rule_size);
        if piece_size == 0 {
            return Err(SimError::Invalid("the piece size must be at least one byte"));
        }
        let pieces = s.file_size.div_ceil(piece_size);
        if pieces > shoal_core::piece::TARGET_PIECES && piece_size != rule_size {
            return Err(SimError::Invalid(
                "an explicit piece size must give at most the rule's target piece count",
            ));
        }
        let pieces = pieces as u32;
        // The tracker only needs a verified manifest with this piece count: a file size for
        // which the rule gives exactly that many pieces.
        let tracker_size = if piece_size == rule_size {
            s.file_size
        } else {
            size_with_pieces(u64::from(pieces))
                .ok_or(SimError::Invalid("no file size gives this piece count"))?
        };
        let hashes = (0..pieces).map(|i| PieceHash::of(&i.to_le_bytes())).collect();
        let manifest = Manifest::new("sim", tracker_size, hashes)
            .map_err(|_| SimError::Invalid("the file size is beyond what a manifest holds"))?;
        let content = manifest.content_id();
        let mut index =
            Index::new(shoal_index::Config { seed: s.seed, hints: s.hints, ..Default::default() });
        let n = s.nodes + 1;
        let mut rng = s.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let slow: BTreeSet<usize> = pick(&mut rng, s.nodes, s.slow_fraction);
        let churners: BTreeSet<usize> = pick(&mut rng, s.nodes, s.churn);
        let u = s.uplink as f64;
        let uplink = |d: usize| if slow.contains(&d) { u / 4.0 } else { u };
        let stayers: Vec<f64> =
            (0..s.nodes).filter(|d| !churners.contains(d)).map(uplink).collect();
        let bound_s = fluid_bound(s.file_size, u, &stayers);
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let id = node_id(s.seed, i);
            index.register(0, id, Role::Node, addr, &[], None);
            let churn = (i > 0 && churners.contains(&(i - 1))).then(|| {
                let leave = bound_s * (0.2 + 0.4 * unit(&mut rng));
                let away = bound_s * (0.25 + 0.25 * unit(&mut rng));
                (secs(leave), secs(leave + away))
            });
            nodes.push(Node {
                id,
                uplink: if i == 0 { u } else { uplink(i - 1) },
                online: true,
                inc: 0,
                have: if i == 0 { Bitfield::full(pieces) } else { Bitfield::new(pieces) },
                fetch: None,
                finished: None,
                up: Uploader::new(UploadConfig::default()),
                reveal: (i == 0 && s.super_seed)
                    .then(|| shoal_swarm::Reveal::new(reveal_config(s), pieces, s.seed)),
                reveal_timer: None,
                waiting: BTreeMap::new(),
                uplink_q: VecDeque::new(),
                sending: false,
                up_timer: None,
                clients: BTreeSet::new(),
                subscribers: BTreeSet::new(),
                haves_out: Vec::new(),
                uploaded: 0,
                deltas: Vec::new(),
                churn,
            });
        }
        index
            .put_manifest(0, nodes[0].id, content, manifest.encode())
            .map_err(|_| SimError::Invalid("the tracker refused the manifest"))?;
        index
            .announce(0, nodes[0].id, content, Bitfield::full(pieces))
            .map_err(|_| SimError::Invalid("the tracker refused the seed's announce"))?;
        let mut w = World {
            t0: Instant::now(),
            now: 0,
            latency: s.latency.as_micros() as Us,
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
            by_id: nodes.iter().enumerate().map(|(i, n)| (n.id, i as u32)).collect(),
            nodes,
            index,
            content,
            pieces,
            piece_size,
            file_size: s.file_size,
            window: (PIPELINE_BYTES / piece_size).clamp(2, 32) as usize,
            rng,
            stats: Stats { seed_sent: vec![0; pieces as usize], ..Stats::default() },
            record: s.record.iter().copied().collect(),
            logs: Vec::new(),
            bound_s,
        };
        for i in 1..n as u32 {
            // A flash crowd: every fetch starts within the first second.
            let at = (unit(&mut w.rng) * 1e6) as Us;
            w.schedule_at(at, i, Kind::Start);
            if let Some((leave, back)) = w.nodes[i as usize].churn {
                w.schedule_at(leave, i, Kind::Leave);
                w.schedule_at(back, i, Kind::Rejoin);
            }
        }
        w.schedule_at(TICK, 0, Kind::Tick);
        Ok(w)
    }

    pub(crate) fn at(&self, t: Us) -> Instant {
        self.t0 + Duration::from_micros(t)
    }

    /// `t` in simulated microseconds, rounded up (waking early would change nothing).
    pub(crate) fn us(&self, t: Instant) -> Us {
        t.saturating_duration_since(self.t0).as_nanos().div_ceil(1000) as Us
    }

    pub(crate) fn schedule_at(&mut self, time: Us, node: u32, kind: Kind) {
        let inc = self.nodes[node as usize].inc;
        self.seq += 1;
        self.queue.push(Event { time, seq: self.seq, node, inc, kind });
    }

    /// Schedules `kind` for `node` after `delay`.
    pub(crate) fn after(&mut self, delay: Us, node: u32, kind: Kind) {
        self.schedule_at(self.now + delay, node, kind);
    }

    pub(crate) fn random(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    pub(crate) fn recording(&self, node: u32) -> bool {
        self.record.contains(&(node as usize))
    }

    fn unfinished(&self) -> usize {
        self.nodes[1..].iter().filter(|n| !n.have.is_complete()).count()
    }

    pub(crate) fn run(&mut self) -> Result<(), SimError> {
        // Far beyond any sane schedule: a stall, not slowness.
        let limit = secs(self.bound_s * 20.0 + 600.0);
        let mut left = self.unfinished();
        while left > 0 {
            let Some(ev) = self.queue.pop() else { break };
            if ev.time > limit {
                break;
            }
            self.now = ev.time;
            self.events += 1;
            let node = ev.node;
            // The clock and churn are the world's own events, for whatever incarnation.
            let world = matches!(ev.kind, Kind::Tick | Kind::Leave | Kind::Rejoin);
            if !world && ev.inc != self.nodes[node as usize].inc {
                continue;
            }
            let had = self.nodes[node as usize].have.is_complete();
            self.handle(node, ev.kind);
            if !had && self.nodes[node as usize].have.is_complete() {
                left -= 1;
            }
        }
        if left > 0 {
            return Err(SimError::Stuck { at_s: self.now as f64 / 1e6, unfinished: left });
        }
        for i in 1..self.nodes.len() {
            if let Some(log) = self.nodes[i].fetch.as_mut().and_then(|f| f.set.take_log()) {
                self.logs.push(log);
            }
        }
        self.logs.sort_by_key(|l| l.node);
        Ok(())
    }

    fn handle(&mut self, i: u32, kind: Kind) {
        match kind {
            Kind::Tick => self.tick(),
            Kind::Leave => self.leave(i),
            Kind::Rejoin => self.rejoin(i),
            _ if !self.nodes[i as usize].online => {}
            Kind::Start => self.start_fetch(i),
            Kind::Lookup => self.lookup(i),
            Kind::Dialed(p) => self.dialed(i, p),
            Kind::Manifest(p) => self.manifest(i, p),
            Kind::Subscribe(c) => self.subscribe(i, c),
            Kind::Bitfield(p, b) => self.bitfield(i, p, *b),
            Kind::Request(c, piece) => self.request(i, c, piece),
            Kind::Cancel(c, piece) => self.cancel(i, c, piece),
            Kind::SendDone => self.send_done(i),
            Kind::Piece(p, piece, o) => self.piece(i, p, piece, o),
            Kind::Haves => self.haves(i),
            Kind::Show(p, piece) => self.show(i, p, piece),
            Kind::RevealTimer(t) => self.reveal_timer(i, t),
            Kind::ConnClosed(p) => self.conn_closed(i, p),
            Kind::ServeClosed(c) => self.serve_closed(i, c),
            Kind::PeerTimer(t) => self.peer_timer(i, t),
            Kind::UpTimer(t) => self.up_timer(i, t),
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        let fin = |n: &Node| n.finished.unwrap_or(self.now) as f64 / 1e6;
        let downloaders = &self.nodes[1..];
        let stay: Vec<f64> = downloaders.iter().filter(|n| n.churn.is_none()).map(fin).collect();
        let all: Vec<f64> = downloaders.iter().map(fin).collect();
        let last = stay.iter().copied().fold(0.0, f64::max);
        let uploaded: u64 = self.nodes.iter().map(|n| n.uploaded).sum();
        Outcome {
            nodes: downloaders.len(),
            pieces: self.pieces,
            piece_size: self.piece_size,
            last_finish_s: last,
            mean_finish_s: stay.iter().sum::<f64>() / stay.len().max(1) as f64,
            last_finish_all_s: all.iter().copied().fold(0.0, f64::max),
            bound_s: self.bound_s,
            ratio: last / self.bound_s,
            seed_copies: self.nodes[0].uploaded as f64 / self.file_size as f64,
            churned: downloaders.len() - stay.len(),
            finish_s: all,
            seed_all_sent_s: self.stats.seed_all_sent.map_or(f64::NAN, |t| t as f64 / 1e6),
            busy: self.stats.busy,
            upload_overhead: uploaded as f64 / (self.file_size as f64 * downloaders.len() as f64),
            events: self.events,
            wall_s: 0.0,
            logs: self.logs.clone(),
        }
    }
}

/// The seed's reveal: the node's, without the guard after the first copy if the scenario
/// says so.
fn reveal_config(s: &Scenario) -> shoal_swarm::reveal::Config {
    let config = shoal_swarm::reveal::Config::default();
    if s.guard {
        config
    } else {
        shoal_swarm::reveal::Config { guard: Duration::ZERO, guard_share: 0.0, ..config }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_scenarios_are_refused_with_the_parameter_named() {
        let base = Scenario { nodes: 4, ..Scenario::default() };
        let bad = [
            Scenario { nodes: 0, ..base.clone() },
            Scenario { churn: 1.5, ..base.clone() },
            Scenario { slow_fraction: -0.1, ..base.clone() },
            Scenario { latency: std::time::Duration::from_secs(11), ..base.clone() },
            Scenario { piece_size: Some(0), ..base.clone() },
        ];
        for s in bad {
            assert!(matches!(World::new(&s), Err(SimError::Invalid(_))), "{s:?}");
        }
        assert!(World::new(&base).is_ok());
    }

    #[test]
    fn a_size_is_found_for_every_piece_count_the_rule_allows() {
        use shoal_core::piece::{piece_count, piece_log2_for};
        // One piece, the smallest files' 64, a count between, the target, and beyond it.
        for count in [1u64, 64, 128, 513, 1024, 4096] {
            let size = size_with_pieces(count).expect("a size exists");
            assert_eq!(piece_count(size, piece_log2_for(size)), count, "count {count}");
        }
    }
}
