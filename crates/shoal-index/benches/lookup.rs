//! The index's lookup cost without the network: `cargo bench -p shoal-index --bench lookup --
//! [NODES] [CONTENTS] [PIECES]` registers NODES nodes, each holding one of CONTENTS contents of
//! PIECES pieces (a third complete, the rest a random half), then times lookups by registered
//! askers with no bitfield (a fetch's first lookup) and with one (its later lookups), in the
//! full form (holders with their bitfields) and the compact one (without).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use shoal_core::{Bitfield, Manifest, NodeId, PieceHash, PieceIndex};
use shoal_index::{Config, Index};
use shoal_wire::tracker::Role;

fn node(i: u64) -> NodeId {
    let mut seed = [9u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    let kp = libp2p_identity::Keypair::ed25519_from_bytes(seed).expect("32 bytes");
    NodeId::from_public_key(&kp.public()).expect("an ed25519 key")
}

fn addr(i: u64) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i as u32 & 0xff_ffff))), 7000)
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let nodes = args.first().copied().unwrap_or(100_000);
    let contents = args.get(1).copied().unwrap_or(1_000).max(1);
    let pieces = args.get(2).copied().unwrap_or(256).max(1) as u32;
    // The owner uploads every manifest: lift the per-address cap on unannounced ones.
    let mut ix = Index::new(Config {
        max_pending_manifest_bytes: u64::MAX,
        max_manifest_bytes: u64::MAX,
        ..Config::default()
    });
    let now = 1_000_000;
    let owner = node(u64::MAX);
    ix.register(now, owner, Role::Node, addr(0), &[addr(0)], None);
    let size = u64::from(pieces) * shoal_core::piece::MIN_PIECE_SIZE;
    let mut ids = Vec::new();
    let t = Instant::now();
    for c in 0..contents {
        let hashes = (0..pieces)
            .map(|i| PieceHash::of(&[c.to_le_bytes(), u64::from(i).to_le_bytes()].concat()))
            .collect();
        // The piece-size rule may give another count for this size: ask it.
        let m = match Manifest::new(&format!("c{c}"), size, hashes) {
            Ok(m) => m,
            Err(_) => {
                let log2 = shoal_core::piece::piece_log2_for(size);
                let n = shoal_core::piece::piece_count(size, log2) as u32;
                let hashes = (0..n)
                    .map(|i| PieceHash::of(&[c.to_le_bytes(), u64::from(i).to_le_bytes()].concat()))
                    .collect();
                Manifest::new(&format!("c{c}"), size, hashes).expect("a valid manifest")
            }
        };
        ix.put_manifest(now, owner, m.content_id(), m.encode()).expect("manifest accepted");
        ids.push((m.content_id(), m.piece_count()));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..nodes {
        let id = node(i);
        ix.register(now, id, Role::Node, addr(i), &[addr(i)], None);
        let (content, n) = ids[(i % contents) as usize];
        let complete = rng.u8(..3) == 0;
        let mut bf = Bitfield::new(n);
        (0..n).filter(|_| complete || rng.bool()).for_each(|p| {
            bf.set(PieceIndex(p));
        });
        ix.announce(now, id, content, bf).expect("announce accepted");
    }
    println!(
        "{nodes} nodes, {contents} contents of {} pieces: built in {:.1} s",
        ids[0].1,
        t.elapsed().as_secs_f64()
    );
    // What the tracker's once-a-second snapshot holds the index lock for (metrics, dashboard).
    let t = Instant::now();
    let totals = ix.totals();
    let totals_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let storage = ix.nodes_page(None, shoal_index::MAX_PAGE, true).len();
    println!(
        "snapshot: totals over {} regions {totals_ms:.2} ms, storage page ({storage} rows) {:.2} ms",
        totals.regions.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let askers: Vec<NodeId> = (0..64).map(|i| node(10_000_000 + i)).collect();
    for (i, a) in askers.iter().enumerate() {
        ix.register(now, *a, Role::Node, addr(i as u64), &[addr(i as u64)], None);
    }
    for (with_have, registered, compact) in
        [(false, true, false), (true, true, false), (false, false, false), (true, true, true)]
    {
        let rounds = 20_000;
        let haves: Vec<Bitfield> = ids
            .iter()
            .take(16)
            .map(|&(_, n)| {
                let mut bf = Bitfield::new(n);
                (0..n).filter(|_| rng.u8(..4) == 0).for_each(|p| {
                    bf.set(PieceIndex(p));
                });
                bf
            })
            .collect();
        let t = Instant::now();
        let mut peers = 0;
        for r in 0..rounds {
            let (content, _) = ids[rng.usize(..ids.len())];
            let have = with_have.then(|| &haves[r % haves.len()]);
            let asker = registered.then(|| askers[r % askers.len()]);
            peers += if compact {
                ix.lookup_compact(asker, content, have, 32).expect("known content").peers.len()
            } else {
                ix.lookup(asker, content, have, 32).expect("known content").peers.len()
            };
        }
        let ns = t.elapsed().as_nanos() as f64 / rounds as f64;
        println!(
            "lookup {} {}{}: {:.1} us each ({:.0}/s on one core), {:.1} peers per answer",
            if registered { "by a node" } else { "by a stranger (no hints)" },
            if with_have { "with a bitfield" } else { "without a bitfield" },
            if compact { ", compact answer" } else { "" },
            ns / 1000.0,
            1e9 / ns,
            peers as f64 / rounds as f64
        );
    }
}
