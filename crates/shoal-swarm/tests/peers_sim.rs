//! A deterministic simulation of one download driven through [`PeerSet`]: simulated time,
//! simulated peers with hostile behaviours, no sockets. The driver does what the node's fetch
//! driver does: carries out actions, reports what happened, wakes at `poll_timeout`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use shoal_core::{Bitfield, PieceIndex};
use shoal_swarm::{Action, Config, DropReason, ManifestReply, PeerSet, PieceOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Serves what it holds, at its speed.
    Honest,
    /// Claims every piece; holds only its `holds`, refuses the rest.
    Liar,
    /// Sends bad bytes for every piece.
    Corrupter,
    /// A corrupter that re-sends its bitfield after every bad piece.
    Resender,
    /// Connects, then never answers anything.
    Silent,
    /// Sends a valid manifest and its bitfield, then never delivers a piece.
    Staller,
    /// Answers `Busy` to its first `n` requests, then serves honestly.
    Busy(u32),
    /// Sends a manifest of other content.
    ManifestLiar,
}

struct SimPeer {
    kind: Kind,
    holds: Bitfield,
    ms_per_piece: u64,
    free_at: u64,
    busy_left: u32,
}

fn sim_peer(kind: Kind, pieces: u32, ms_per_piece: u64) -> SimPeer {
    let holds = match kind {
        Kind::Liar => {
            let mut b = Bitfield::new(pieces);
            (0..pieces).filter(|i| i % 4 == 0).for_each(|i| {
                b.set(PieceIndex(i));
            });
            b
        }
        _ => Bitfield::full(pieces),
    };
    let busy_left = if let Kind::Busy(n) = kind { n } else { 0 };
    SimPeer { kind, holds, ms_per_piece, free_at: 0, busy_left }
}

#[derive(Debug, Clone)]
enum Ev {
    Dialed(u32),
    Manifest(u32, ManifestReply),
    Bitfield(u32, Bitfield),
    Piece(u32, PieceIndex, PieceOutcome),
}

struct Outcome {
    ms: u64,
    dropped: BTreeMap<u32, DropReason>,
    delivered: BTreeMap<u32, u32>,
    max_connected: usize,
    undelivered: Vec<u32>,
}

/// Runs a download of `pieces` pieces from `peers` (peer i at address i) until complete, or
/// panics if it stalls. The manifest is found first, as in a node.
fn run(pieces: u32, peers: &mut [SimPeer], config: Config, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut set: PeerSet<u32, u32> = PeerSet::new(config, seed);
    for id in 0..peers.len() as u32 {
        set.add_candidate(at(0), id, Some(id));
    }
    let mut queue: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut events: Vec<Ev> = Vec::new();
    let push = |queue: &mut BinaryHeap<_>, events: &mut Vec<Ev>, t: u64, ev: Ev| {
        queue.push(Reverse((t, events.len() as u64, events.len())));
        events.push(ev);
    };
    let mut closed: BTreeSet<u32> = BTreeSet::new();
    let mut cancelled: BTreeSet<(u32, PieceIndex)> = BTreeSet::new();
    let mut manifest_cancelled: BTreeSet<u32> = BTreeSet::new();
    let mut out = Outcome {
        ms: 0,
        dropped: BTreeMap::new(),
        delivered: BTreeMap::new(),
        max_connected: 0,
        undelivered: vec![],
    };
    let mut now = 0u64;
    let mut started = false;
    loop {
        while let Some(a) = set.poll_action(at(now)) {
            match a {
                Action::Dial { addr, .. } => {
                    push(&mut queue, &mut events, now + 1, Ev::Dialed(addr))
                }
                Action::AskManifest(p) => {
                    manifest_cancelled.remove(&p);
                    let reply = match peers[p as usize].kind {
                        Kind::Silent => continue,
                        Kind::ManifestLiar => ManifestReply::Invalid,
                        _ => ManifestReply::Valid,
                    };
                    // The liar answers first, to be sure it is caught rather than outrun.
                    let delay = if reply == ManifestReply::Invalid { 1 } else { 5 };
                    push(&mut queue, &mut events, now + delay, Ev::Manifest(p, reply));
                }
                Action::CancelManifest(p) => {
                    manifest_cancelled.insert(p);
                }
                Action::Subscribe(p) => {
                    let sp = &peers[p as usize];
                    let b = match sp.kind {
                        Kind::Silent => continue,
                        Kind::Liar => Bitfield::full(pieces),
                        _ => sp.holds.clone(),
                    };
                    push(&mut queue, &mut events, now + 5, Ev::Bitfield(p, b));
                }
                Action::Request { peer, piece } => {
                    cancelled.remove(&(peer, piece));
                    let sp = &mut peers[peer as usize];
                    let (delay, outcome) = match sp.kind {
                        Kind::Silent | Kind::Staller => continue,
                        Kind::Liar if !sp.holds.get(piece) => (1, PieceOutcome::NotHeld),
                        Kind::Corrupter | Kind::Resender => (sp.ms_per_piece, PieceOutcome::Bad),
                        Kind::Busy(_) if sp.busy_left > 0 => {
                            sp.busy_left -= 1;
                            (1, PieceOutcome::Busy)
                        }
                        _ => {
                            // A peer serves its requests one after another.
                            sp.free_at = sp.free_at.max(now) + sp.ms_per_piece;
                            (sp.free_at - now, PieceOutcome::Verified)
                        }
                    };
                    push(&mut queue, &mut events, now + delay, Ev::Piece(peer, piece, outcome));
                }
                Action::Cancel { peer, piece } => {
                    cancelled.insert((peer, piece));
                }
                Action::Close { peer, reason } => {
                    closed.insert(peer);
                    out.dropped.insert(peer, reason);
                }
            }
        }
        out.max_connected = out.max_connected.max(set.connected());
        if set.is_done() {
            break;
        }
        assert!(!set.manifest_exhausted(), "nobody sent the manifest");
        assert!(!set.is_idle(), "stalled at {now} ms");
        let next_event = queue.peek().map(|Reverse((t, _, _))| *t);
        // Rounded up: waking before a deadline would change nothing and spin.
        let next_timer = set.poll_timeout().map(|t| (t - t0).as_nanos().div_ceil(1_000_000) as u64);
        let next = match (next_event, next_timer) {
            (Some(e), Some(t)) => e.min(t),
            (e, t) => e.or(t).expect("something to wait for"),
        };
        assert!(next >= now && next < 3_600_000, "time runs backwards or forever: {next}");
        now = next;
        if next_event == Some(now) {
            let Reverse((_, _, i)) = queue.pop().unwrap();
            match events[i].clone() {
                Ev::Dialed(addr) => {
                    set.handle_dialed(at(now), addr, Some(addr));
                    closed.remove(&addr);
                }
                Ev::Manifest(p, reply) => {
                    if !closed.contains(&p) && !manifest_cancelled.contains(&p) {
                        set.handle_manifest(at(now), p, reply);
                        if reply == ManifestReply::Valid && !started {
                            started = true;
                            set.start(at(now), Bitfield::new(pieces), 4);
                        }
                    }
                }
                Ev::Bitfield(p, b) => {
                    if !closed.contains(&p) {
                        set.handle_bitfield(at(now), p, b);
                    }
                }
                Ev::Piece(p, piece, outcome) => {
                    if closed.contains(&p) || cancelled.remove(&(p, piece)) {
                        continue;
                    }
                    if outcome == PieceOutcome::Verified {
                        *out.delivered.entry(p).or_default() += 1;
                    }
                    set.handle_piece(at(now), p, piece, outcome, 1024);
                    if peers[p as usize].kind == Kind::Resender {
                        set.handle_bitfield(at(now), p, Bitfield::full(pieces));
                    }
                }
            }
        } else {
            set.handle_timeout(at(now));
        }
    }
    out.ms = now;
    out.undelivered = set.undelivered();
    out
}

#[test]
fn one_honest_peer_among_liars_corrupters_resenders_and_silent_peers_completes() {
    let n = 256;
    let mut peers = vec![
        sim_peer(Kind::Silent, n, 10),
        sim_peer(Kind::ManifestLiar, n, 10),
        sim_peer(Kind::Liar, n, 1),
        sim_peer(Kind::Corrupter, n, 1),
        sim_peer(Kind::Resender, n, 1),
        sim_peer(Kind::Staller, n, 10),
        sim_peer(Kind::Silent, n, 10),
        // Slow enough (about 50 s for the file) that every deadline passes before the end.
        sim_peer(Kind::Honest, n, 200),
    ];
    let out = run(n, &mut peers, Config::default(), 5);
    let d = &out.dropped;
    assert_eq!(d.get(&1), Some(&DropReason::Banned), "manifest liar: {d:?}");
    assert_eq!(d.get(&2), Some(&DropReason::Banned), "liar: {d:?}");
    assert_eq!(d.get(&3), Some(&DropReason::Banned), "corrupter: {d:?}");
    assert_eq!(d.get(&4), Some(&DropReason::Banned), "re-sending its bitfield saves nobody");
    assert_eq!(d.get(&5), Some(&DropReason::Stalled), "staller: {d:?}");
    for silent in [0, 6] {
        assert!(
            matches!(d.get(&silent), Some(DropReason::NoBitfield | DropReason::ManifestTimeout)),
            "silent peer {silent}: {d:?}"
        );
    }
    assert!(!d.contains_key(&7), "the honest peer is kept");
    assert_eq!(
        out.delivered.get(&7).copied().unwrap_or(0) + out.delivered.get(&2).copied().unwrap_or(0),
        n
    );
    // Everyone dropped without delivering is what the tracker hears of; the liar delivered
    // some real pieces before its ban, so it is not among them.
    let mut undelivered = out.undelivered.clone();
    undelivered.sort();
    let want: Vec<u32> =
        [0, 1, 3, 4, 5, 6].into_iter().filter(|p| !out.delivered.contains_key(p)).collect();
    assert_eq!(undelivered, want);
}

#[test]
fn a_busy_peer_backs_off_while_another_keeps_going() {
    let n = 128;
    // Three `Busy` answers cost about 1.75 s of backoff; the other peer needs about 13 s.
    let mut peers = vec![sim_peer(Kind::Busy(3), n, 100), sim_peer(Kind::Honest, n, 100)];
    let out = run(n, &mut peers, Config::default(), 2);
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    // The busy peer rejoined after its backoffs and shared the work.
    assert!(out.delivered[&0] > 0 && out.delivered[&1] > 0, "{:?}", out.delivered);
    assert_eq!(out.delivered.values().sum::<u32>(), n);
}

#[test]
fn peers_are_capped_and_the_silent_ones_are_replaced_by_waiting_candidates() {
    let n = 512;
    // Rotation as slow as the stall deadline's scale: with the default (a rotation every
    // 500 ms) the three honest candidates take the silent peers' slots within 4 s and finish
    // the file before the staller's stall deadline, so it would end the run still connected.
    let config = Config {
        max_connected: 4,
        rotate_every: Duration::from_secs(5),
        rotate_grace: Duration::from_secs(10),
        ..Config::default()
    };
    // Three silent peers and a staller fill every slot at first; the honest ones wait.
    let mut peers = vec![
        sim_peer(Kind::Silent, n, 10),
        sim_peer(Kind::Silent, n, 10),
        sim_peer(Kind::Silent, n, 10),
        sim_peer(Kind::Staller, n, 10),
        sim_peer(Kind::Honest, n, 20),
        sim_peer(Kind::Honest, n, 20),
        sim_peer(Kind::Honest, n, 5),
    ];
    let out = run(n, &mut peers, config, 11);
    assert!(out.max_connected <= 4, "cap exceeded: {}", out.max_connected);
    for p in 0..4 {
        assert!(out.dropped.contains_key(&p), "peer {p} kept: {:?}", out.dropped);
    }
    assert_eq!(out.delivered.values().sum::<u32>(), n);
    assert!(out.delivered[&6] > out.delivered[&4], "the fast peer did more: {:?}", out.delivered);
}

#[test]
fn a_slow_peer_that_keeps_delivering_is_not_dropped_as_stalled() {
    let n = 16;
    // Nine seconds a piece: under the ten-second stall deadline, with two in flight.
    let mut peers = vec![sim_peer(Kind::Honest, n, 4_500)];
    let out = run(n, &mut peers, Config::default(), 1);
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    assert_eq!(out.delivered[&0], n);
}

#[test]
fn the_simulation_is_deterministic() {
    let mk = |n| {
        vec![
            sim_peer(Kind::Busy(3), n, 7),
            sim_peer(Kind::Corrupter, n, 3),
            sim_peer(Kind::Honest, n, 5),
            sim_peer(Kind::Liar, n, 2),
        ]
    };
    let a = run(200, &mut mk(200), Config::default(), 9);
    let b = run(200, &mut mk(200), Config::default(), 9);
    assert_eq!((a.ms, a.delivered, a.dropped), (b.ms, b.delivered, b.dropped));
}
