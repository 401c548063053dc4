//! Two replicas: what one records, the other learns by applying its changes.

use std::net::SocketAddr;

use shoal_core::{Manifest, PieceHash, PieceIndex};
use shoal_wire::tracker::{Load, Role};

use super::*;
use crate::model::Config;

fn id() -> NodeId {
    let kp = libp2p_identity::Keypair::generate_ed25519();
    NodeId::from_public_key(&kp.public()).unwrap()
}

fn content(n: u32, seed: u8) -> (ContentId, Vec<u8>) {
    let hashes = (0..n).map(|i| PieceHash::of(&[seed, i as u8, (i >> 8) as u8])).collect();
    let m = Manifest::new(&format!("r{seed}"), u64::from(n) * 16 * 1024, hashes).unwrap();
    (m.content_id(), m.encode())
}

fn bf(n: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(n);
    ones.iter().for_each(|&i| {
        b.set(PieceIndex(i));
    });
    b
}

fn at(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7000))
}

/// Applies every change to `to`, as the tracker's stream reader does.
fn replay(to: &mut Index, now: u64, ops: Vec<Persist>) {
    for op in ops {
        to.apply_remote(now, op).unwrap();
    }
}

/// A node registered at `a` with a content announced there, replayed into `b`.
fn swarm_on_a(a: &mut Index, b: &mut Index, node: NodeId, pieces: &[u32]) -> ContentId {
    let (c, bytes) = content(8, 1);
    let r = a.register(0, node, Role::Node, at(1), &[], None);
    replay(b, 0, r.ops);
    replay(b, 0, a.put_manifest(0, node, c, bytes).unwrap());
    replay(b, 0, a.announce(0, node, c, bf(8, pieces)).unwrap());
    c
}

#[test]
fn lookups_at_one_replica_see_holders_announced_at_the_other() {
    let (mut a, mut b) = (Index::new(Config::default()), Index::new(Config::default()));
    let seed = id();
    let c = swarm_on_a(&mut a, &mut b, seed, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let l = b.lookup(None, c, None, 8).expect("b knows the swarm");
    assert_eq!(l.piece_count, 8);
    assert_eq!(l.peers.len(), 1);
    assert_eq!(l.peers[0].node_id, seed);
    assert_eq!(l.peers[0].addrs, vec![at(1)]);
    assert_eq!(b.counts(), (1, 1));
    assert_eq!(b.manifest(c).map(|m| m.len()), a.manifest(c).map(|m| m.len()));
    // A delta at a: the full bitfield it persists replaces b's copy.
    let downloader = id();
    replay(&mut b, 1, a.register(1, downloader, Role::Node, at(2), &[], None).ops);
    replay(&mut b, 1, a.announce(1, downloader, c, bf(8, &[0])).unwrap());
    replay(&mut b, 2, a.announce_delta(2, downloader, c, &[PieceIndex(5)]).unwrap());
    let l = b.lookup(None, c, None, 8).unwrap();
    let d = l.peers.iter().find(|p| p.node_id == downloader).expect("downloader listed");
    assert_eq!(d.bitfield, bf(8, &[0, 5]));
    // A forget at a goes at b too.
    replay(&mut b, 3, a.forget(3, downloader, c).unwrap());
    assert!(b.lookup(None, c, None, 8).unwrap().peers.iter().all(|p| p.node_id != downloader));
}

#[test]
fn the_same_changes_twice_change_nothing_more() {
    let (mut a, mut b) = (Index::new(Config::default()), Index::new(Config::default()));
    let node = id();
    let (c, bytes) = content(8, 2);
    let mut ops = a.register(0, node, Role::Node, at(1), &[], None).ops;
    ops.extend(a.put_manifest(0, node, c, bytes).unwrap());
    ops.extend(a.announce(0, node, c, bf(8, &[1, 2])).unwrap());
    replay(&mut b, 0, ops.clone());
    replay(&mut b, 0, ops);
    assert_eq!(b.counts(), (1, 1));
    assert_eq!(b.footprint().0, a.footprint().0, "one manifest counted once");
    assert_eq!(b.lookup(None, c, None, 8).unwrap().peers.len(), 1);
}

#[test]
fn heartbeats_at_one_replica_keep_the_node_alive_at_the_other() {
    let config = Config { node_ttl_ms: 10_000, ..Config::default() };
    let (mut a, mut b) = (Index::new(config.clone()), Index::new(config));
    let node = id();
    let c = swarm_on_a(&mut a, &mut b, node, &[0, 1]);
    let load = Load { active_uploads: 3, upload_rate: 10, download_rate: 0 };
    replay(&mut b, 8_000, a.heartbeat(8_000, node, load).unwrap());
    // Past the TTL of its registration, not of its heartbeat at a.
    assert!(b.expire(15_000).is_empty());
    assert!(b.is_registered(node));
    assert_eq!(b.lookup(None, c, None, 8).unwrap().peers.len(), 1);
    // Silent at both: b expires it on its own clock.
    let ops = b.expire(18_001);
    assert!(ops.contains(&Persist::RemoveNode(node)), "{ops:?}");
    assert!(!b.is_registered(node));
}

#[test]
fn a_heartbeat_time_from_the_future_counts_as_now() {
    let config = Config { node_ttl_ms: 10_000, ..Config::default() };
    let mut b = Index::new(config);
    let node = id();
    let entry = NodeEntry {
        storage: false,
        addrs: vec![at(1)],
        last_seen_ms: u64::MAX,
        active_uploads: 0,
        upload_rate: 0,
        region: None,
    };
    b.apply_remote(1_000, Persist::PutNode(node, entry)).unwrap();
    assert!(b.expire(11_001).contains(&Persist::RemoveNode(node)));
}

#[test]
fn storage_is_only_what_this_replica_admitted() {
    let storage = id();
    let admitted =
        Config { admitted_storage: std::iter::once(storage).collect(), ..Config::default() };
    let mut a = Index::new(admitted.clone());
    let mut b_admits = Index::new(admitted);
    let mut b_does_not = Index::new(Config::default());
    let r = a.register(0, storage, Role::Storage, at(1), &[], None);
    assert_eq!(r.role, Role::Storage);
    replay(&mut b_admits, 0, r.ops.clone());
    replay(&mut b_does_not, 0, r.ops);
    assert_eq!(b_admits.storage_nodes(None).len(), 1);
    assert!(b_does_not.storage_nodes(None).is_empty());
}

#[test]
fn storage_progress_from_one_replica_plans_reseeding_at_the_other() {
    let storage = id();
    let config = Config {
        admitted_storage: std::iter::once(storage).collect(),
        reseed_after_ms: 1_000,
        ..Config::default()
    };
    let (mut a, mut b) = (Index::new(config.clone()), Index::new(config));
    let holder = id();
    let c = swarm_on_a(&mut a, &mut b, holder, &[0, 1, 2, 3, 4, 5, 6, 7]);
    replay(&mut b, 0, a.register(0, storage, Role::Storage, at(3), &[], None).ops);
    replay(&mut b, 0, a.announce(0, storage, c, bf(8, &[0, 1])).unwrap());
    // The holder now heartbeats at b: the stalled upload into storage is completed from it.
    let (_, plan) = b.heartbeat_plan(2_000, holder, Load::default()).unwrap();
    assert_eq!(plan.directives.len(), 1, "{plan:?}");
    assert_eq!(plan.directives[0].storage, storage);
    let pieces: Vec<u32> = plan.directives[0].pieces.iter().map(|p| p.0).collect();
    assert_eq!(pieces, vec![2, 3, 4, 5, 6, 7]);
    // Storage completes through a: b tells the holder it is stored.
    replay(&mut b, 3_000, a.announce(3_000, storage, c, bf(8, &[0, 1, 2, 3, 4, 5, 6, 7])).unwrap());
    let (_, plan) = b.heartbeat_plan(3_000, holder, Load::default()).unwrap();
    assert_eq!(plan.stored, vec![c]);
    assert!(plan.directives.is_empty());
}

#[test]
fn changes_that_break_the_index_bounds_are_skipped() {
    let config = Config { max_contents_per_node: 1, ..Config::default() };
    let mut b = Index::new(config);
    let (node, stranger) = (id(), id());
    let (c, bytes) = content(8, 3);
    let (c2, bytes2) = content(4, 4);
    // A holding before its node or manifest is known.
    assert_eq!(
        b.apply_remote(0, Persist::PutHolding(c, node, bf(8, &[0]))),
        Err(RemoteSkip::UnknownNode(node))
    );
    let entry = NodeEntry {
        storage: true,
        addrs: (1..=20).map(at).collect(),
        last_seen_ms: 0,
        active_uploads: 0,
        upload_rate: 0,
        region: None,
    };
    b.apply_remote(0, Persist::PutNode(node, entry)).unwrap();
    assert_eq!(
        b.apply_remote(0, Persist::PutHolding(c, node, bf(8, &[0]))),
        Err(RemoteSkip::UnknownContent(c))
    );
    // A manifest that is not the content's.
    assert_eq!(
        b.apply_remote(0, Persist::PutManifest(c, bytes2.clone().into())),
        Err(RemoteSkip::BadManifest(c))
    );
    assert_eq!(
        b.apply_remote(0, Persist::PutManifest(c, b"junk".to_vec().into())),
        Err(RemoteSkip::BadManifest(c))
    );
    b.apply_remote(0, Persist::PutManifest(c, bytes.into())).unwrap();
    b.apply_remote(0, Persist::PutManifest(c2, bytes2.into())).unwrap();
    // The wrong piece count.
    assert_eq!(
        b.apply_remote(0, Persist::PutHolding(c, node, bf(9, &[0]))),
        Err(RemoteSkip::PieceCount { got: 9, expected: 8 })
    );
    b.apply_remote(0, Persist::PutHolding(c, node, bf(8, &[0]))).unwrap();
    // Past the contents a node may hold.
    assert_eq!(
        b.apply_remote(0, Persist::PutHolding(c2, node, bf(4, &[0]))),
        Err(RemoteSkip::TooManyContents { max: 1 })
    );
    // A manifest whose swarm still has holders here stays.
    assert_eq!(b.apply_remote(0, Persist::RemoveManifest(c)), Err(RemoteSkip::StillHeld(c)));
    // Addresses are bounded, and storage was not admitted here.
    let l = b.lookup(None, c, None, 8).unwrap();
    assert_eq!(l.peers[0].addrs.len(), MAX_ADDRS);
    assert!(b.storage_nodes(None).is_empty());
    // Removing what is unknown is a no-op.
    b.apply_remote(0, Persist::RemoveHolding(c, stranger)).unwrap();
    b.apply_remote(0, Persist::RemoveNode(stranger)).unwrap();
    // The node goes with its holding; then the idle swarm's manifest can go.
    b.apply_remote(1, Persist::RemoveNode(node)).unwrap();
    assert_eq!(b.counts(), (0, 0));
    b.apply_remote(1, Persist::RemoveManifest(c)).unwrap();
    assert!(b.manifest(c).is_none());
    assert!(b.manifest(c2).is_some());
}

#[test]
fn manifest_space_bounds_remote_manifests() {
    let (c, bytes) = content(8, 5);
    let config = Config { max_manifest_bytes: bytes.len() as u64 - 1, ..Config::default() };
    let mut b = Index::new(config);
    assert!(matches!(
        b.apply_remote(0, Persist::PutManifest(c, bytes.into())),
        Err(RemoteSkip::ManifestSpace { .. })
    ));
}

#[test]
fn a_region_change_at_one_replica_moves_the_holdings_at_the_other() {
    let config = Config { allow_stated_region: true, ..Config::default() };
    let (mut a, mut b) = (Index::new(config.clone()), Index::new(config));
    let node = id();
    let eu: shoal_core::Region = "eu".parse().unwrap();
    let us: shoal_core::Region = "us".parse().unwrap();
    let (c, bytes) = content(8, 6);
    replay(&mut b, 0, a.register(0, node, Role::Node, at(1), &[], Some(&eu)).ops);
    replay(&mut b, 0, a.put_manifest(0, node, c, bytes).unwrap());
    replay(&mut b, 0, a.announce(0, node, c, bf(8, &[0])).unwrap());
    assert_eq!(b.region_of(node), Some(&eu));
    replay(&mut b, 70_000, a.register(70_000, node, Role::Node, at(1), &[], Some(&us)).ops);
    assert_eq!(b.region_of(node), Some(&us));
    assert_eq!(b.region_counts(), a.region_counts());
    let l = b.lookup(None, c, None, 8).unwrap();
    assert_eq!(l.peers[0].region.as_ref(), Some(&us));
}

#[test]
fn a_replica_rebuilt_from_another_ones_state_answers_the_same() {
    let (mut a, mut b) = (Index::new(Config::default()), Index::new(Config::default()));
    let (seed, d) = (id(), id());
    let c = swarm_on_a(&mut a, &mut b, seed, &[0, 1, 2, 3, 4, 5, 6, 7]);
    a.register(0, d, Role::Node, at(2), &[], None);
    a.announce(0, d, c, bf(8, &[3])).unwrap();
    let mut fresh = Index::new(Config::default());
    replay(&mut fresh, 0, a.persisted());
    assert_eq!(fresh.counts(), a.counts());
    assert_eq!(fresh.footprint().0, a.footprint().0);
    let mut peers: Vec<_> = fresh.lookup(None, c, None, 8).unwrap().peers;
    peers.sort_by_key(|p| p.node_id);
    let mut expected: Vec<_> = a.lookup(None, c, None, 8).unwrap().peers;
    expected.sort_by_key(|p| p.node_id);
    assert_eq!(peers, expected);
}

#[test]
fn a_snapshot_from_a_shared_store_is_bounded_like_a_registration() {
    let (c, bytes) = content(8, 7);
    let node = id();
    let entry = NodeEntry {
        storage: false,
        addrs: (1..=20).map(at).collect(),
        last_seen_ms: u64::MAX,
        active_uploads: 0,
        upload_rate: 0,
        region: None,
    };
    let config = Config { node_ttl_ms: 10_000, ..Config::default() };
    let mut ix = Index::restore(
        config,
        1_000,
        vec![(node, entry)],
        vec![(c, node, bf(8, &[0]))],
        vec![(c, bytes)],
    );
    assert_eq!(ix.lookup(None, c, None, 8).unwrap().peers[0].addrs.len(), MAX_ADDRS);
    assert!(ix.expire(11_001).contains(&Persist::RemoveNode(node)), "no heartbeat from the future");
}
