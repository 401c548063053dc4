//! A deterministic simulation of one download from many peers: simulated time, no sockets.
//! Peers have different speeds and holdings; one corrupts every piece it sends. The driver
//! keeps a fixed number of requests in flight per peer, as the node's driver does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use shoal_core::{Bitfield, PieceIndex};
use shoal_swarm::{Picker, Verdict};

const PIPELINE: usize = 4;

struct SimPeer {
    holds: Bitfield,
    /// Ticks to deliver one piece.
    ticks_per_piece: u64,
    corrupt: bool,
    busy_until: u64,
}

struct Outcome {
    ticks: u64,
    received: u64,
    bad: u64,
    banned: Vec<usize>,
    delivered_by: Vec<u64>,
}

fn simulate(pieces: u32, peers: &mut [SimPeer], seed: u64) -> Outcome {
    let mut picker = Picker::new(Bitfield::new(pieces), seed);
    for (id, p) in peers.iter().enumerate() {
        picker.add_peer(id, p.holds.clone());
    }
    // (completion time, peer, piece, generation)
    let mut events: BinaryHeap<Reverse<(u64, usize, u32)>> = BinaryHeap::new();
    let mut now = 0;
    let mut out = Outcome {
        ticks: 0,
        received: 0,
        bad: 0,
        banned: vec![],
        delivered_by: vec![0; peers.len()],
    };
    let fill = |picker: &mut Picker<usize>,
                peers: &mut [SimPeer],
                events: &mut BinaryHeap<_>,
                now: u64| {
        for (id, p) in peers.iter_mut().enumerate() {
            while picker.in_flight(id) < PIPELINE {
                let Some(req) = picker.next_request(id) else {
                    break;
                };
                assert!(p.holds.get(req.piece), "asked peer {id} for piece it lacks");
                // A peer serves its requests one after another.
                p.busy_until = p.busy_until.max(now) + p.ticks_per_piece;
                events.push(Reverse((p.busy_until, id, req.piece.0)));
            }
        }
    };
    fill(&mut picker, peers, &mut events, now);
    while let Some(Reverse((t, id, piece))) = events.pop() {
        now = t;
        let piece = PieceIndex(piece);
        if picker.in_flight(id) == 0 || picker.have().get(piece) || picker.is_banned(id) {
            // Cancelled (endgame duplicate or released by a ban): the bytes still arrived.
            out.received += 1;
            continue;
        }
        out.received += 1;
        if peers[id].corrupt {
            out.bad += 1;
            if picker.piece_failed(id, piece) == Verdict::Banned {
                out.banned.push(id);
            }
        } else {
            picker.piece_verified(id, piece);
            out.delivered_by[id] += 1;
        }
        if picker.is_complete() {
            break;
        }
        fill(&mut picker, peers, &mut events, now);
        assert!(!events.is_empty() || picker.is_complete(), "stalled at {now}");
    }
    assert!(picker.is_complete());
    out.ticks = now;
    out
}

fn peer(pieces: u32, holds: impl Fn(u32) -> bool, speed: u64, corrupt: bool) -> SimPeer {
    let mut b = Bitfield::new(pieces);
    (0..pieces).filter(|&i| holds(i)).for_each(|i| {
        b.set(PieceIndex(i));
    });
    SimPeer { holds: b, ticks_per_piece: speed, corrupt, busy_until: 0 }
}

#[test]
fn three_seeders_share_the_work_and_the_corrupter_is_banned() {
    let n = 512;
    let mut peers = vec![
        peer(n, |_| true, 10, false),
        peer(n, |_| true, 10, false),
        peer(n, |_| true, 20, false),
        peer(n, |_| true, 1, true),
    ];
    let out = simulate(n, &mut peers, 7);
    assert_eq!(out.banned, vec![3]);
    assert_eq!(out.bad, 2, "banned after exactly two bad pieces");
    // Work is spread in proportion to speed: the two fast seeders each do more than the slow.
    assert!(out.delivered_by[0] > out.delivered_by[2] && out.delivered_by[1] > out.delivered_by[2]);
    assert_eq!(out.delivered_by.iter().sum::<u64>(), u64::from(n));
    // Near the ideal aggregate rate (0.1 + 0.1 + 0.05 pieces per tick): within 10 %.
    let ideal = f64::from(n) / 0.25;
    assert!((out.ticks as f64) < ideal * 1.1, "{} ticks vs ideal {ideal}", out.ticks);
    // Endgame duplicates are few.
    assert!(out.received <= u64::from(n) + 2 + 3 * PIPELINE as u64 * 3);
}

#[test]
fn partial_peers_complete_the_file_and_rarest_goes_first() {
    let n = 64;
    // Peer 0 holds the first half, peer 1 everything, peer 2 only piece 63 (with peer 1).
    let mut peers = vec![
        peer(n, |i| i < 32, 5, false),
        peer(n, |_| true, 5, false),
        peer(n, |i| i == 63, 5, false),
    ];
    let mut picker = Picker::new(Bitfield::new(n), 1);
    for (id, p) in peers.iter().enumerate() {
        picker.add_peer(id, p.holds.clone());
    }
    // Peer 1's rarest pieces are 32..63 (held by it alone).
    let first = picker.next_request(1).unwrap();
    assert!((32..63).contains(&first.piece.0), "{first:?}");
    let out = simulate(n, &mut peers, 3);
    assert!(out.banned.is_empty());
    assert_eq!(out.delivered_by.iter().sum::<u64>(), u64::from(n));
}

#[test]
fn a_missing_piece_is_reported_as_stuck() {
    let n = 8;
    let mut picker = Picker::new(Bitfield::new(n), 1);
    let mut b = Bitfield::new(n);
    b.set(PieceIndex(0));
    picker.add_peer(0usize, b);
    assert!(picker.is_stuck());
    picker.add_peer(1, Bitfield::full(n));
    assert!(!picker.is_stuck());
    // A corrupter that sent piece 5 badly is no source for piece 5.
    picker.remove_peer(0);
    let r = picker.next_request(1).unwrap();
    picker.piece_failed(1, r.piece);
    assert!(picker.is_stuck());
}

#[test]
fn simulation_is_deterministic() {
    let mk = || vec![peer(100, |_| true, 3, false), peer(100, |i| i % 2 == 0, 2, false)];
    let a = simulate(100, &mut mk(), 9);
    let b = simulate(100, &mut mk(), 9);
    assert_eq!((a.ticks, a.delivered_by), (b.ticks, b.delivered_by));
}
