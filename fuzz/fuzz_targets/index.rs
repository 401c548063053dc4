//! Sequences of tracker index operations from a handful of nodes (one admitted as storage, the
//! others claiming any role), with time moving forward: the index never panics, a lookup never
//! answers with more peers than asked or with a non-admitted storage node ranked as storage, a
//! content never has a swarm without its verified manifest, and no node ever exceeds the cap on
//! contents.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use shoal_core::{Bitfield, ContentId, Manifest, NodeId, PieceHash, PieceIndex};
use shoal_index::{Config, Index};
use shoal_wire::tracker::{Load, Role};

const NODES: usize = 6;

/// Fixed keys, so a saved crashing input reproduces in another process.
fn ids() -> &'static [NodeId; NODES] {
    use std::sync::OnceLock;
    static IDS: OnceLock<[NodeId; NODES]> = OnceLock::new();
    IDS.get_or_init(|| {
        std::array::from_fn(|i| {
            let kp = libp2p_identity::Keypair::ed25519_from_bytes([i as u8 + 1; 32]).unwrap();
            NodeId::from_public_key(&kp.public()).unwrap()
        })
    })
}

/// Two real contents (manifests that verify), of 3 and 9 pieces.
fn manifests() -> &'static [Manifest; 2] {
    use std::sync::OnceLock;
    static M: OnceLock<[Manifest; 2]> = OnceLock::new();
    M.get_or_init(|| {
        [3u32, 9].map(|n| {
            let pieces = (0..n).map(|i| PieceHash::of(&i.to_be_bytes())).collect();
            Manifest::new("f", u64::from(n) * 16 * 1024, pieces).unwrap()
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let ids = ids();
    let ms = manifests();
    let mut config = Config {
        max_contents_per_node: 2,
        lookup_sample: 3,
        allow_stated_region: true,
        ..Config::default()
    };
    let regions: [shoal_core::Region; 2] = ["r0".parse().unwrap(), "r1".parse().unwrap()];
    config.admitted_storage.insert(ids[0]);
    let mut ix = Index::new(config);
    let mut now = 0u64;
    for op in data.chunks(3) {
        let (a, b, c) = (op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0));
        let node = ids[usize::from(b) % NODES];
        let which = usize::from(c) % 3;
        // Content 2 is one no manifest describes.
        let content = ms.get(which).map_or(ContentId([9; 32]), |m| m.content_id());
        let pieces = ms.get(which).map_or(u32::from(c) % 20, |m| m.piece_count());
        now += u64::from(a & 0x0f) * 500;
        let observed: SocketAddr = SocketAddr::from(([127, 0, 0, 1 + b % 4], 7000 + u16::from(b)));
        match a >> 4 {
            0 => {
                let role = if c & 1 == 1 { Role::Storage } else { Role::Node };
                // Nodes move between two regions and none: holdings and hints follow.
                let region = regions.get(usize::from(c >> 1) % 3);
                let _ = ix.register(now, node, role, observed, &[observed], region);
            }
            1 | 2 => {
                let mut bf = Bitfield::new(pieces);
                for i in 0..pieces {
                    if (u32::from(c) >> (i % 8)) & 1 == 1 {
                        bf.set(PieceIndex(i));
                    }
                }
                let _ = ix.announce(now, node, content, bf);
            }
            3 => {
                let _ = ix.announce_delta(now, node, content, &[PieceIndex(u32::from(c) % 12)]);
            }
            4 => {
                if let Some(m) = ms.get(which) {
                    let _ = ix.put_manifest(now, node, content, m.encode());
                } else {
                    let _ = ix.put_manifest(now, node, content, op.to_vec());
                }
            }
            5 => {
                let _ = ix.heartbeat_plan(now, node, Load::default());
            }
            6 => {
                let _ = ix.report(now, node, content, ids[usize::from(c) % NODES]);
            }
            7 => {
                let _ = ix.expire(now);
            }
            8 => {
                let _ = ix.forget(now, node, content);
            }
            _ => {
                let max = usize::from(c % 5);
                let have = (b & 1 == 1).then(|| Bitfield::new(pieces));
                if let Some(l) = ix.lookup(Some(node), content, have.as_ref(), max) {
                    assert!(l.peers.len() <= max, "more peers than asked");
                    assert!(ix.manifest(content).is_some(), "a swarm without its manifest");
                    for p in &l.peers {
                        assert_eq!(p.bitfield.len(), l.piece_count);
                    }
                }
            }
        }
        let per_region: usize = ix.region_counts().iter().map(|(_, n)| n).sum();
        assert_eq!(per_region, ix.counts().0, "nodes per region add up to the nodes");
        for (id, addrs) in ix.storage_nodes(Some(node)) {
            assert_eq!(id, ids[0], "only the admitted node is storage");
            assert!(addrs.len() <= shoal_wire::tracker::MAX_ADDRS);
        }
    }
});
