//! A deterministic simulation of a swarm spread over two regions: the real [`Index`] with a
//! region per node, the real [`Picker`]s with other regions' peers marked remote, simulated
//! time, no sockets.
//!
//! Model: every node uploads one piece per tick; pieces between regions also take a place on
//! the border link, which carries at most `border` pieces per tick (a request that would cross
//! a full border waits in its uploader's queue). A downloader keeps [`PIPELINE`] requests in
//! flight per peer, looks up every [`LOOKUP_EVERY`] ticks (peers and hints), announces every
//! piece it verifies; connected peers learn of it at once. The seed is in region `r0`.

use std::collections::{BTreeSet, VecDeque};

use shoal_core::{piece, Bitfield, Manifest, NodeId, PieceHash, PieceIndex, Region};
use shoal_index::{Config, Index};
use shoal_swarm::Picker;
use shoal_wire::tracker::Role;

const PIPELINE: usize = 2;
const LOOKUP_EVERY: u64 = 4;

struct Run {
    /// Nodes in `r0` besides the seed, and nodes in `r1`.
    near: usize,
    far: usize,
    pieces: u32,
    /// Pieces the border carries per tick.
    border: usize,
    routing: bool,
    /// A tick at which the `r1` node that took the most pieces across leaves.
    border_node_leaves: Option<u64>,
}

#[derive(Debug)]
struct Outcome {
    crossed: u64,
    /// Last finish per region (ticks).
    finish: [u64; 2],
    /// Ticks in which the border carried less than it could while `r1` lacked a piece that an
    /// `r0` node with an idle uplink held, before `r1` held every piece between its nodes.
    border_idle: u64,
    border_busy: u64,
}

fn ids(n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| {
            let mut seed = [9u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let kp = libp2p_identity::Keypair::ed25519_from_bytes(seed).unwrap();
            NodeId::from_public_key(&kp.public()).unwrap()
        })
        .collect()
}

fn simulate(run: &Run) -> Outcome {
    let pieces = run.pieces;
    let n = 1 + run.near + run.far;
    let ids = ids(n);
    let region = |j: usize| usize::from(j > run.near);
    let names: [Region; 2] = ["r0".parse().unwrap(), "r1".parse().unwrap()];
    let hashes = (0..pieces).map(|i| PieceHash::of(&i.to_le_bytes())).collect();
    let size = (14..=26)
        .map(|log2| u64::from(pieces) << log2)
        .find(|&size| piece::piece_count(size, piece::piece_log2_for(size)) == u64::from(pieces))
        .expect("a file size of that many whole pieces");
    let manifest = Manifest::new("sim", size, hashes).unwrap();
    let content = manifest.content_id();
    let config =
        Config { allow_stated_region: true, region_routing: run.routing, ..Config::default() };
    let mut index = Index::new(config);
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    for (j, &id) in ids.iter().enumerate() {
        let r = index.register(0, id, Role::Node, addr, &[], Some(&names[region(j)]));
        assert_eq!(r.region.as_ref(), Some(&names[region(j)]));
    }
    index.put_manifest(0, ids[0], content, manifest.encode()).unwrap();
    index.announce(0, ids[0], content, Bitfield::full(pieces)).unwrap();
    let mut pickers: Vec<Picker<usize>> =
        (0..n).map(|i| Picker::new(Bitfield::new(pieces), i as u64 + 1)).collect();
    pickers[0] = Picker::new(Bitfield::full(pieces), 1);
    let mut known: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut queues: Vec<VecDeque<(usize, PieceIndex)>> = vec![VecDeque::new(); n];
    let mut gone = vec![false; n];
    let mut took_across = vec![0u64; n];
    let mut out = Outcome { crossed: 0, finish: [0; 2], border_idle: 0, border_busy: 0 };
    let position = |id: &NodeId| ids.iter().position(|x| x == id).unwrap();
    let live = |gone: &[bool], j: usize| !gone[j];

    for tick in 0..200_000u64 {
        if (1..n).all(|d| gone[d] || pickers[d].is_complete()) {
            break;
        }
        if run.border_node_leaves == Some(tick) {
            let leaver = (run.near + 1..n).max_by_key(|&j| took_across[j]).unwrap();
            gone[leaver] = true;
            queues[leaver].clear();
            for (k, set) in known.iter_mut().enumerate() {
                if set.remove(&leaver) {
                    pickers[k].remove_peer(leaver);
                }
            }
            // Its registration lapses: the index forgets it and what it held.
            index.expire(u64::MAX / 2);
            for (j, &id) in ids.iter().enumerate().filter(|&(j, _)| !gone[j]) {
                index.register(0, id, Role::Node, addr, &[], Some(&names[region(j)]));
                let have = pickers[j].have().clone();
                index.announce(0, id, content, have).unwrap();
            }
        }
        if tick % LOOKUP_EVERY == 0 {
            for d in 1..n {
                if gone[d] || pickers[d].is_complete() {
                    continue;
                }
                let l = index.lookup(Some(ids[d]), content, Some(pickers[d].have()), 16).unwrap();
                for p in l.peers {
                    let j = position(&p.node_id);
                    if live(&gone, j) && known[d].insert(j) {
                        // A node follows its tracker: only with routing are other regions'
                        // peers remote.
                        pickers[d].set_remote(j, run.routing && region(j) != region(d));
                        let current = pickers[j].have().clone();
                        pickers[d].add_peer(j, current);
                    }
                }
                pickers[d].set_hints(&l.hints);
            }
        }
        for d in 1..n {
            if gone[d] {
                continue;
            }
            for &j in &known[d] {
                while pickers[d].in_flight(j) < PIPELINE {
                    let Some(r) = pickers[d].next_request(j) else { break };
                    queues[j].push_back((d, r.piece));
                }
            }
        }
        // Would the border have had work: r1 lacks (between its nodes) a piece r0 holds?
        let mut far_has = Bitfield::new(pieces);
        for d in (run.near + 1..n).filter(|&d| !gone[d]) {
            for p in pickers[d].have().iter_ones() {
                far_has.set(p);
            }
        }
        let far_lacks = !far_has.is_complete();
        let mut border_left = run.border;
        let mut deliveries = Vec::new();
        for (j, q) in queues.iter_mut().enumerate() {
            q.retain(|&(d, p)| {
                !gone[d] && !pickers[d].have().get(p) && pickers[d].in_flight(j) > 0
            });
            // Oldest request first whose path is open this tick.
            let pick = q.iter().position(|&(d, _)| region(d) == region(j) || border_left > 0);
            if let Some(i) = pick {
                let (d, p) = q.remove(i).expect("index in range");
                if region(d) != region(j) {
                    border_left -= 1;
                    out.crossed += 1;
                    took_across[d] += 1;
                }
                deliveries.push((j, d, p));
            }
        }
        if far_lacks {
            // Starved: the border had room and an r0 uplink holding a piece r1 lacks sent
            // nothing, so r1 waited while outside capacity sat idle.
            let senders: BTreeSet<usize> = deliveries.iter().map(|&(j, _, _)| j).collect();
            let idle_source = (0..=run.near).any(|j| {
                !senders.contains(&j) && pickers[j].have().iter_ones().any(|p| !far_has.get(p))
            });
            if border_left > 0 && idle_source {
                out.border_idle += 1;
            } else {
                out.border_busy += 1;
            }
        }
        for (j, d, p) in deliveries {
            if pickers[d].have().get(p) {
                pickers[d].request_failed(j, p);
                continue;
            }
            pickers[d].piece_verified(j, p);
            index.announce_delta(tick, ids[d], content, &[p]).unwrap();
            for (k, set) in known.iter().enumerate() {
                if set.contains(&d) {
                    pickers[k].peer_has(d, p);
                }
            }
            if pickers[d].is_complete() {
                out.finish[region(d)] = tick + 1;
            }
        }
    }
    assert!((1..n).all(|d| gone[d] || pickers[d].is_complete()), "every downloader completes");
    out
}

fn two_regions(routing: bool) -> Run {
    Run { near: 7, far: 8, pieces: 128, border: 1, routing, border_node_leaves: None }
}

#[test]
fn with_routing_each_piece_crosses_into_a_region_about_once() {
    let on = simulate(&two_regions(true));
    let off = simulate(&two_regions(false));
    let s = 128.0;
    // r1's bound: every piece must cross a border of one piece per tick.
    println!(
        "routing: {} crossings ({:.2} × file), r1 last finish {} ticks ({:.2} × its bound of {s}), r0 {}",
        on.crossed,
        on.crossed as f64 / s,
        on.finish[1],
        on.finish[1] as f64 / s,
        on.finish[0]
    );
    println!(
        "ignored: {} crossings ({:.2} × file), r1 last finish {} ticks ({:.2} × bound), r0 {}",
        off.crossed,
        off.crossed as f64 / s,
        off.finish[1],
        off.finish[1] as f64 / s,
        off.finish[0]
    );
    assert!(on.crossed as f64 <= 1.2 * s, "{on:?}");
    assert!(off.crossed > on.crossed, "routing saves crossings: {off:?} against {on:?}");
    // Not 1.25: in this model r0's own uplinks are the slower part (r0 finishes later than
    // r1, with or without routing), and r1's crossings queue behind r0's own requests.
    assert!(on.finish[1] as f64 <= 1.5 * s, "{on:?}");
    assert!(on.finish[1] <= off.finish[1], "{on:?} against {off:?}");
}

#[test]
fn a_region_without_a_local_holder_gets_the_border_at_full_speed() {
    // Four r1 nodes, every source in r0, a border of two pieces a tick: r1 is fed across the
    // border all along, each piece crossing about once.
    //
    // In this model r0's uplinks, not the border, are the narrow part (four uplinks of one
    // piece a tick serve seven downloaders), and a request waits in its uploader's queue
    // behind the others (a fixed two per peer; a node's windows shrink instead). Endgame copies
    // across hedged that wait; since a second copy crosses only once nothing is left
    // unrequested (in the testnet, where the border is the narrow part, parallel copies
    // crossed it side by side and wasted 7 to 10% of it), the border sits unused in about a
    // quarter of the ticks r1 could have used it (7% before), and r1 finishes at 95 ticks
    // against 91, with 68 crossings against 76.
    let run =
        Run { near: 3, far: 4, pieces: 64, border: 2, routing: true, border_node_leaves: None };
    let o = simulate(&run);
    println!("{o:?}");
    let idle = o.border_idle as f64 / (o.border_idle + o.border_busy) as f64;
    assert!(idle <= 0.3, "border idle in {:.0}% of the ticks r1 needed it: {o:?}", idle * 100.0);
    assert!(o.finish[1] <= 100, "r1 held back: {o:?}");
    assert!(o.crossed as f64 <= 1.1 * 64.0, "{o:?}");
}

#[test]
fn a_region_whose_border_node_leaves_still_completes() {
    // The r1 node that took the most pieces across leaves a third of the way in: the rest of
    // r1 gets what only it held from r0 again, at once.
    let mut run = two_regions(true);
    run.border_node_leaves = Some(40);
    let o = simulate(&run);
    println!("{o:?}");
    assert!(o.finish[1] > 0, "r1 completes: {o:?}");
    assert!(o.finish[1] as f64 <= 1.6 * 128.0, "{o:?}");
}

#[test]
fn the_region_simulation_is_deterministic() {
    let a = simulate(&two_regions(true));
    let b = simulate(&two_regions(true));
    assert_eq!((a.crossed, a.finish), (b.crossed, b.finish));
}
