//! Deterministic tests of each rule, time passed in.

use std::collections::BTreeSet;

use shoal_core::PieceHash;
use shoal_wire::tracker::PeerSummary;

use super::*;
use crate::limits::{Limits, Rate};
use crate::model::NodeEntry;

/// Node ids for the test, the same id for the same `i` within one test run.
fn node(i: usize) -> NodeId {
    thread_local! {
        static IDS: Vec<NodeId> = (0..64)
            .map(|_| {
                let kp = libp2p_identity::Keypair::generate_ed25519();
                NodeId::from_public_key(&kp.public()).unwrap()
            })
            .collect();
    }
    IDS.with(|ids| ids[i])
}

fn fresh_id() -> NodeId {
    let kp = libp2p_identity::Keypair::generate_ed25519();
    NodeId::from_public_key(&kp.public()).unwrap()
}

fn bf(n: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(n);
    ones.iter().for_each(|&i| {
        b.set(PieceIndex(i));
    });
    b
}

const OBSERVED: &str = "127.0.0.1:1";

fn observed() -> SocketAddr {
    OBSERVED.parse().unwrap()
}

/// A manifest of `n` 16 KiB pieces; `seed` makes distinct contents.
fn content(n: u32, seed: u8) -> (ContentId, Vec<u8>) {
    let hashes = (0..n).map(|i| PieceHash::of(&[seed, i as u8, (i >> 8) as u8])).collect();
    let m = Manifest::new(&format!("f{seed}"), u64::from(n) * 16 * 1024, hashes).unwrap();
    (m.content_id(), m.encode())
}

fn reg(ix: &mut Index, i: usize, role: Role) -> Role {
    ix.register(0, node(i), role, observed(), &[], None).role
}

/// Registers node `i` again, from its own address 10.0.0.`i`.
fn reg_apart(ix: &mut Index, i: usize) {
    let at = SocketAddr::new(IpAddr::from([10, 0, 0, i as u8]), 7000);
    ix.register(0, node(i), Role::Node, at, &[], None);
}

/// An index with nodes `0..nodes` registered and a content of `n` pieces with its manifest.
fn setup(config: Config, nodes: usize, n: u32) -> (Index, ContentId) {
    let mut ix = Index::new(config);
    for i in 0..nodes {
        reg(&mut ix, i, Role::Node);
    }
    let (c, m) = content(n, 1);
    ix.put_manifest(0, node(0), c, m).unwrap();
    (ix, c)
}

#[test]
fn lookup_ranks_light_load_first_then_rarest_holders() {
    let (mut ix, c) = setup(Config::default(), 4, 4);
    // node 0 holds everything; node 1 holds piece 3 only (rare: 2 holders); node 2 holds
    // pieces 0-2 like node 0 and node 3 the same but is busy.
    ix.announce(0, node(0), c, bf(4, &[0, 1, 2, 3])).unwrap();
    ix.announce(0, node(1), c, bf(4, &[3])).unwrap();
    ix.announce(0, node(2), c, bf(4, &[0, 1, 2])).unwrap();
    ix.announce(0, node(3), c, bf(4, &[0, 1, 2])).unwrap();
    ix.heartbeat(0, node(3), Load { active_uploads: 9, ..Load::default() }).unwrap();
    // Asker has nothing: availability of 3 is 2, of 0-2 is 3.
    let l = ix.lookup(None, c, None, 10).unwrap();
    let order: Vec<NodeId> = l.peers.iter().map(|p| p.node_id).collect();
    assert_eq!(order[..2].iter().collect::<BTreeSet<_>>(), [node(0), node(1)].iter().collect());
    assert_eq!(&order[2..], &[node(2), node(3)], "lightly loaded before busy");
    // An asker that only lacks piece 3 gets only its holders.
    let l = ix.lookup(None, c, Some(&bf(4, &[0, 1, 2])), 10).unwrap();
    assert_eq!(l.peers.len(), 2);
    assert!(ix.lookup(None, ContentId([9; 32]), None, 10).is_none(), "unknown content");
    // Never more peers than asked for, none included (a fuzzer found 0 answered with all).
    for max in [0, 1, 3] {
        assert_eq!(ix.lookup(None, c, None, max).unwrap().peers.len(), max, "max {max}");
        assert_eq!(ix.lookup_compact(None, c, None, max).unwrap().peers.len(), max);
    }
    // A busy holder of the rarest piece comes after idle holders of common ones.
    ix.heartbeat(0, node(1), Load { active_uploads: 5, ..Load::default() }).unwrap();
    ix.heartbeat(0, node(0), Load::default()).unwrap();
    ix.heartbeat(0, node(2), Load::default()).unwrap();
    let l = ix.lookup(None, c, None, 10).unwrap();
    let order: Vec<NodeId> = l.peers.iter().map(|p| p.node_id).collect();
    assert_eq!(order, [node(0), node(2), node(1), node(3)]);
}

#[test]
fn lookups_spread_askers_over_holders_until_their_next_heartbeat() {
    // Four equal holders, askers wanting one peer each: a holder just handed out counts as
    // loaded (a client is on its way), so the next asker gets another one, and no holder is
    // handed out twice before every one was handed out once.
    let (mut ix, c) = setup(Config::default(), 8, 4);
    for i in 0..4 {
        ix.announce(0, node(i), c, Bitfield::full(4)).unwrap();
    }
    let mut first = Vec::new();
    for asker in 4..8 {
        let l = ix.lookup(Some(node(asker)), c, None, 1).unwrap();
        first.push(l.peers[0].node_id);
    }
    let distinct: BTreeSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 4, "each holder once: {first:?}");
    // A heartbeat replaces the estimate with the holder's own figure: node 0 says it is idle
    // while the others report uploads, so it is handed out first again.
    ix.heartbeat(0, node(0), Load::default()).unwrap();
    for i in 1..4 {
        ix.heartbeat(0, node(i), Load { active_uploads: 3, ..Load::default() }).unwrap();
    }
    let l = ix.lookup(Some(node(4)), c, None, 1).unwrap();
    assert_eq!(l.peers[0].node_id, node(0));
}

#[test]
fn hints_differ_between_askers_and_shrink_as_pieces_arrive() {
    let (mut ix, c) = setup(Config { hints: 4, ..Config::default() }, 3, 8);
    ix.announce(0, node(0), c, Bitfield::full(8)).unwrap();
    let a = ix.lookup(Some(node(1)), c, Some(&Bitfield::new(8)), 5).unwrap().hints;
    let b = ix.lookup(Some(node(2)), c, Some(&Bitfield::new(8)), 5).unwrap().hints;
    assert_eq!((a.len(), b.len()), (4, 4));
    assert!(a.iter().all(|p| !b.contains(p)), "distinct pieces: {a:?} {b:?}");
    // Node 1 gets one of its hints; the next lookup tops the set up with a new piece.
    ix.announce_delta(0, node(1), c, &[a[0]]).unwrap();
    let have = bf(8, &[a[0].0]);
    let again = ix.lookup(Some(node(1)), c, Some(&have), 5).unwrap().hints;
    assert_eq!(again.len(), 4);
    assert!(!again.contains(&a[0]));
}

#[test]
fn rejects_inconsistent_announces_and_unregistered_nodes() {
    let mut ix = Index::new(Config::default());
    let (c, m) = content(4, 3);
    assert_eq!(ix.heartbeat(0, node(0), Load::default()), Err(IndexError::NotRegistered));
    assert_eq!(ix.announce(0, node(0), c, Bitfield::new(4)), Err(IndexError::NotRegistered));
    assert_eq!(ix.put_manifest(0, node(0), c, m.clone()), Err(IndexError::NotRegistered));
    reg(&mut ix, 0, Role::Node);
    ix.put_manifest(0, node(0), c, m).unwrap();
    ix.announce(0, node(0), c, Bitfield::new(4)).unwrap();
    assert!(matches!(
        ix.announce(0, node(0), c, Bitfield::new(5)),
        Err(IndexError::PieceCount { .. })
    ));
    assert!(matches!(
        ix.announce_delta(0, node(0), c, &[PieceIndex(4)]),
        Err(IndexError::PieceOutOfRange(_))
    ));
    let other = ContentId([7; 32]);
    assert!(matches!(
        ix.put_manifest(0, node(0), other, vec![1, 2, 3]),
        Err(IndexError::ManifestMismatch(_))
    ));
    let (_, m2) = content(2, 4);
    assert!(
        matches!(ix.put_manifest(0, node(0), other, m2), Err(IndexError::ManifestMismatch(_))),
        "a valid manifest of another content"
    );
}

#[test]
fn an_announce_without_a_manifest_is_not_recorded_and_a_liar_cannot_lock_out_a_content() {
    let mut ix = Index::new(Config::default());
    reg(&mut ix, 0, Role::Node);
    reg(&mut ix, 1, Role::Node);
    let (c, m) = content(4, 5);
    // The liar announces first, with a piece count of its own choosing.
    assert_eq!(ix.announce(0, node(1), c, Bitfield::full(1)), Err(IndexError::NeedManifest(c)));
    assert_eq!(
        ix.announce_delta(0, node(1), c, &[PieceIndex(0)]),
        Err(IndexError::NeedManifest(c))
    );
    assert!(ix.lookup(None, c, None, 10).is_none(), "nothing recorded");
    // The honest uploader sends the manifest and announces: the count comes from it.
    ix.put_manifest(0, node(0), c, m).unwrap();
    ix.announce(0, node(0), c, Bitfield::full(4)).unwrap();
    assert!(matches!(
        ix.announce(0, node(1), c, Bitfield::full(1)),
        Err(IndexError::PieceCount { got: 1, expected: 4 })
    ));
    let l = ix.lookup(None, c, None, 10).unwrap();
    assert_eq!((l.piece_count, l.peers.len()), (4, 1));
}

#[test]
fn unadmitted_storage_claims_are_ordinary_nodes() {
    let admitted = node(9);
    let cfg = Config {
        admitted_storage: [admitted].into_iter().collect(),
        reseed_after_ms: 0,
        ..Config::default()
    };
    let (mut ix, c) = setup(cfg, 3, 4);
    let liar = node(8);
    assert_eq!(reg(&mut ix, 8, Role::Storage), Role::Node, "claimed, not admitted");
    assert_eq!(reg(&mut ix, 9, Role::Storage), Role::Storage);
    assert_eq!(ix.storage_nodes(None).iter().map(|s| s.0).collect::<Vec<_>>(), vec![admitted]);
    ix.announce(0, node(1), c, Bitfield::full(4)).unwrap();
    // The liar's complete bitfield produces no "stored" notice and no re-seed orders to it.
    ix.announce(0, liar, c, Bitfield::full(4)).unwrap();
    let out = ix.heartbeat_plan(10, node(1), Load::default()).unwrap().1;
    assert!(out.stored.is_empty() && out.directives.is_empty(), "{out:?}");
    // It ranks as an ordinary holder, not first.
    ix.heartbeat(10, liar, Load { active_uploads: 5, ..Load::default() }).unwrap();
    let l = ix.lookup(None, c, None, 10).unwrap();
    assert_eq!(l.peers[0].node_id, node(1));
    // Admitted storage holding part of it ranks first and gets re-seeded into.
    ix.announce(10, admitted, c, bf(4, &[0])).unwrap();
    assert_eq!(ix.lookup(None, c, None, 10).unwrap().peers[0].node_id, admitted);
    let d = ix.heartbeat_plan(20, node(1), Load::default()).unwrap().1.directives;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].storage, admitted);
    ix.announce(30, admitted, c, Bitfield::full(4)).unwrap();
    assert_eq!(ix.heartbeat_plan(30, node(1), Load::default()).unwrap().1.stored, vec![c]);
    // After a restart without the admission, the role is gone.
    let ix = Index::restore(
        Config::default(),
        30,
        vec![(admitted, NodeEntry { storage: true, ..ix.nodes[&admitted].clone() })],
        vec![],
        vec![],
    );
    assert!(ix.storage_nodes(None).is_empty());
}

#[test]
fn registered_addresses_are_vetted_against_the_observed_address() {
    let seen: SocketAddr = "203.0.113.7:4000".parse().unwrap();
    let claimed: Vec<SocketAddr> = [
        "0.0.0.0:5000",     // unspecified: becomes the observed IP
        "203.0.113.7:6000", // same IP, another port: kept
        "198.51.100.1:80",  // a third party: dropped
        "127.0.0.1:4000",   // loopback of someone else: dropped
        "203.0.113.7:0",    // port 0: dropped
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let want: Vec<SocketAddr> = ["203.0.113.7:4000", "203.0.113.7:5000", "203.0.113.7:6000"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(vet_addrs(seen, &claimed), want);
    assert_eq!(vet_addrs(seen, &[]), vec![seen], "the observed address is always valid");
    let many: Vec<SocketAddr> = (1..100).map(|p| SocketAddr::new(seen.ip(), p)).collect();
    assert_eq!(vet_addrs(seen, &many).len(), MAX_ADDRS, "bounded");
    let mut ix = Index::new(Config::default());
    let r = ix.register(0, node(0), Role::Node, seen, &claimed, None);
    assert_eq!(r.addrs, want);
    assert_eq!(ix.nodes[&node(0)].addrs, want);
}

#[test]
fn contents_per_node_are_capped() {
    let mut ix = Index::new(Config { max_contents_per_node: 3, ..Config::default() });
    reg(&mut ix, 0, Role::Node);
    let contents: Vec<(ContentId, Vec<u8>)> = (0..5).map(|s| content(1, 10 + s)).collect();
    for (c, m) in &contents {
        ix.put_manifest(0, node(0), *c, m.clone()).unwrap();
    }
    for (c, _) in &contents[..3] {
        ix.announce(0, node(0), *c, Bitfield::full(1)).unwrap();
    }
    let (c4, _) = contents[3];
    assert_eq!(
        ix.announce(0, node(0), c4, Bitfield::full(1)),
        Err(IndexError::TooManyContents { max: 3 })
    );
    assert!(ix.announce_delta(0, node(0), c4, &[PieceIndex(0)]).is_err());
    // Re-announcing a content it already holds is fine.
    ix.announce(0, node(0), contents[0].0, Bitfield::full(1)).unwrap();
}

#[test]
fn swarms_nobody_holds_are_collected_with_their_manifests() {
    let cfg = Config { node_ttl_ms: 100, max_manifest_bytes: 10_000, ..Config::default() };
    let mut ix = Index::new(cfg);
    reg(&mut ix, 0, Role::Node);
    let (held, m1) = content(2, 20);
    let (orphan, m2) = content(2, 21);
    ix.put_manifest(0, node(0), held, m1.clone()).unwrap();
    ix.put_manifest(0, node(0), orphan, m2.clone()).unwrap();
    ix.announce(0, node(0), held, Bitfield::full(2)).unwrap();
    assert_eq!(ix.footprint().0, (m1.len() + m2.len()) as u64);
    // Nobody announced the orphan: collected after the TTL; the held one stays.
    ix.heartbeat(150, node(0), Load::default()).unwrap();
    let ops = ix.expire(150);
    assert_eq!(ops, vec![Persist::RemoveManifest(orphan)]);
    assert!(ix.manifest(orphan).is_none() && ix.manifest(held).is_some());
    assert_eq!(ix.footprint().0, m1.len() as u64, "its bytes are freed");
    // The holder goes silent: its holding, then (a TTL later) the swarm go too.
    let ops = ix.expire(300);
    assert!(ops.contains(&Persist::RemoveNode(node(0))));
    assert!(ops.contains(&Persist::RemoveHolding(held, node(0))));
    assert!(ix.manifest(held).is_some(), "not before the swarm was idle for the TTL");
    assert_eq!(ix.expire(401), vec![Persist::RemoveManifest(held)]);
    assert_eq!(ix.footprint().0, 0);
    assert_eq!(ix.counts(), (0, 0));
}

#[test]
fn manifest_uploads_need_registration_and_fit_the_total() {
    let (c1, m1) = content(2, 30);
    let (c2, m2) = content(2, 31);
    let cfg = Config { max_manifest_bytes: (m1.len() + m2.len() - 1) as u64, ..Config::default() };
    let mut ix = Index::new(cfg);
    assert_eq!(ix.admit_manifest(node(0), c1, m1.len() as u32), Err(IndexError::NotRegistered));
    reg(&mut ix, 0, Role::Node);
    assert_eq!(ix.admit_manifest(node(0), c1, m1.len() as u32), Ok(true));
    ix.put_manifest(0, node(0), c1, m1.clone()).unwrap();
    assert_eq!(ix.admit_manifest(node(0), c1, m1.len() as u32), Ok(false), "already known");
    assert!(ix.put_manifest(0, node(0), c1, m1).unwrap().is_empty());
    let full: Result<(), IndexError> =
        Err(IndexError::ManifestSpace { max: ix.config.max_manifest_bytes });
    assert_eq!(ix.admit_manifest(node(0), c2, m2.len() as u32).map(|_| ()), full.clone());
    assert_eq!(ix.put_manifest(0, node(0), c2, m2).map(|_| ()), full);
}

#[test]
fn one_address_fills_only_its_share_of_manifest_space_until_its_manifests_are_announced() {
    let (c1, m1) = content(4, 50);
    let (c2, m2) = content(4, 51);
    let (c3, m3) = content(4, 52);
    let cfg = Config {
        node_ttl_ms: 100,
        max_pending_manifest_bytes: (m1.len() + m2.len()) as u64,
        ..Config::default()
    };
    let mut ix = Index::new(cfg);
    // The hog's ids all sit at one address; the honest uploader at another.
    reg_apart(&mut ix, 1);
    let hog2 = fresh_id();
    ix.register(0, hog2, Role::Node, SocketAddr::from(([10, 0, 0, 1], 9)), &[], None);
    reg_apart(&mut ix, 2);
    ix.put_manifest(0, node(1), c1, m1.clone()).unwrap();
    ix.put_manifest(0, hog2, c2, m2).unwrap();
    // Its share is full, whichever of its ids uploads.
    let quota = Err(IndexError::ManifestQuota { max: ix.config.max_pending_manifest_bytes });
    assert_eq!(ix.admit_manifest(node(1), c3, m3.len() as u32).map(|_| ()), quota);
    assert_eq!(ix.put_manifest(0, hog2, c3, m3.clone()).map(|_| ()), quota);
    // Another address's upload still succeeds.
    assert_eq!(ix.put_manifest(0, node(2), c3, m3).map(|_| ()), Ok(()));
    // Once someone announces a content, its manifest no longer counts against the uploader.
    ix.announce(0, node(2), c1, Bitfield::full(4)).unwrap();
    let (c4, m4) = content(4, 53);
    ix.put_manifest(0, node(1), c4, m4).unwrap();
    // Unannounced ones are collected after the TTL, with their charge.
    ix.heartbeat(150, node(2), Load::default()).unwrap();
    ix.expire(150);
    assert!(ix.pending_manifests.is_empty(), "{:?}", ix.pending_manifests);
}

#[test]
fn holders_reported_as_never_delivering_are_demoted_then_dropped() {
    let cfg = Config { demote_after: 2, drop_after: 3, ..Config::default() };
    let (mut ix, c) = setup(cfg, 6, 2);
    let (liar, honest) = (node(0), node(1));
    ix.announce(0, liar, c, Bitfield::full(2)).unwrap();
    ix.announce(0, honest, c, Bitfield::full(2)).unwrap();
    // The liar is lightly loaded, so it ranks first at the start.
    ix.heartbeat(0, honest, Load { active_uploads: 3, ..Load::default() }).unwrap();
    let first = |ix: &mut Index| ix.lookup(None, c, None, 10).unwrap().peers[0].node_id;
    assert_eq!(first(&mut ix), liar);
    // Reporters at addresses of their own (reports count by address), each offered the liar
    // by a lookup.
    for i in 2..5 {
        reg_apart(&mut ix, i);
        ix.lookup(Some(node(i)), c, None, 10).unwrap();
    }
    // One reporter, even repeated, does not demote; a self-report or a stranger's is ignored.
    for _ in 0..5 {
        ix.report(0, node(2), c, liar).unwrap();
    }
    ix.report(0, liar, c, liar).unwrap();
    assert_eq!(ix.report(0, fresh_id(), c, liar), Err(IndexError::NotRegistered));
    assert_eq!(first(&mut ix), liar);
    ix.report(0, node(3), c, liar).unwrap();
    assert_eq!(first(&mut ix), honest, "demoted after two distinct reporters");
    let ops = ix.report(0, node(4), c, liar).unwrap();
    assert_eq!(ops, vec![Persist::RemoveHolding(c, liar)], "dropped after three");
    assert_eq!(ix.lookup(None, c, None, 10).unwrap().peers.len(), 1);
    // Re-announcing does not bring it back.
    assert!(ix.announce(0, liar, c, Bitfield::full(2)).unwrap().is_empty());
    assert_eq!(ix.lookup(None, c, None, 10).unwrap().peers.len(), 1);
}

#[test]
fn sybil_ids_behind_one_address_neither_drop_nor_demote_an_honest_holder() {
    let (mut ix, c) = setup(Config::default(), 3, 2);
    let (honest, other) = (node(0), node(1));
    ix.announce(0, honest, c, Bitfield::full(2)).unwrap();
    ix.announce(0, other, c, Bitfield::full(2)).unwrap();
    ix.heartbeat(0, other, Load { active_uploads: 3, ..Load::default() }).unwrap();
    let first = |ix: &mut Index| ix.lookup(None, c, None, 10).unwrap().peers[0].node_id;
    assert_eq!(first(&mut ix), honest);
    // Fifty fresh ids from one address (within one registration burst) report the honest
    // holder: one address, one report.
    let sybil_ip: SocketAddr = "198.51.100.66:4000".parse().unwrap();
    for _ in 0..50 {
        let id = fresh_id();
        ix.register(0, id, Role::Node, sybil_ip, &[], None);
        ix.lookup(Some(id), c, None, 10).unwrap();
        assert!(ix.report(0, id, c, honest).unwrap().is_empty(), "never dropped");
    }
    assert_eq!(ix.swarms.lock(&c).unwrap().reported(&honest), 1);
    assert_eq!(first(&mut ix), honest, "not demoted");
    assert_eq!(ix.lookup(None, c, None, 10).unwrap().peers.len(), 2);
    // Reporters at distinct addresses still demote, then drop, a real non-deliverer.
    for i in 3..8 {
        let at = SocketAddr::new(IpAddr::from([10, 0, 1, i as u8]), 7000);
        ix.register(0, node(i), Role::Node, at, &[], None);
    }
    // A report about a holder the reporter was never offered is ignored.
    ix.report(0, node(3), c, honest).unwrap();
    assert_eq!(ix.swarms.lock(&c).unwrap().reported(&honest), 1);
    for i in 3..8 {
        ix.lookup(Some(node(i)), c, None, 10).unwrap();
    }
    ix.report(0, node(3), c, honest).unwrap();
    assert_eq!(first(&mut ix), other, "demoted after a second address reported it");
    ix.report(0, node(4), c, honest).unwrap();
    ix.report(0, node(5), c, honest).unwrap();
    let ops = ix.report(0, node(6), c, honest).unwrap();
    assert_eq!(ops, vec![Persist::RemoveHolding(c, honest)], "dropped after five addresses");
}

#[test]
fn reports_about_a_holder_go_when_it_expires() {
    let (mut ix, c) = setup(Config { node_ttl_ms: 100, ..Config::default() }, 4, 2);
    ix.announce(0, node(0), c, Bitfield::full(2)).unwrap();
    ix.announce(0, node(1), c, Bitfield::full(2)).unwrap();
    reg_apart(&mut ix, 2);
    reg_apart(&mut ix, 3);
    ix.lookup(Some(node(2)), c, None, 10).unwrap();
    ix.lookup(Some(node(3)), c, None, 10).unwrap();
    ix.report(0, node(2), c, node(0)).unwrap();
    ix.report(0, node(3), c, node(0)).unwrap();
    ix.report(0, node(2), c, node(1)).unwrap();
    assert_eq!(ix.swarms.lock(&c).unwrap().reports.len(), 2);
    // Node 0 goes silent; the others keep heartbeating.
    for i in 1..4 {
        ix.heartbeat(90, node(i), Load::default()).unwrap();
    }
    ix.expire(150);
    {
        let s = ix.swarms.lock(&c).unwrap();
        assert!(!s.reports.contains_key(&node(0)), "its report entry went with it");
        assert_eq!(s.reported(&node(1)), 1);
    }
    assert!(!ix.reported_in.contains_key(&node(0)));
    // Everyone goes: nothing about them is left.
    ix.expire(1_000);
    assert!(ix.reported_in.is_empty());
    assert!(ix.swarms.lock(&c).is_none_or(|s| s.reports.is_empty()));
}

#[test]
fn what_lookups_hand_a_node_that_never_announces_is_forgotten_when_it_expires() {
    let (mut ix, c) = setup(Config { node_ttl_ms: 100, hints: 4, ..Config::default() }, 3, 8);
    let (c2, m2) = content(8, 2);
    ix.put_manifest(0, node(0), c2, m2).unwrap();
    ix.announce(0, node(0), c, Bitfield::full(8)).unwrap();
    ix.announce(0, node(0), c2, Bitfield::full(8)).unwrap();
    // Nodes 1 and 2 look both contents up (hints, offered holders) and never announce them.
    for i in [1, 2] {
        for content in [c, c2] {
            assert_eq!(ix.lookup(Some(node(i)), content, None, 10).unwrap().hints.len(), 4);
        }
    }
    assert_eq!(ix.swarms.lock(&c).unwrap().askers.len(), 2);
    assert!(ix
        .swarms
        .lock(&c)
        .unwrap()
        .askers
        .values()
        .all(|a| !a.hints.is_empty() && !a.offered.is_empty()));
    assert_eq!(ix.looked_mut().len(), 2);
    // The seed keeps heartbeating; the askers go silent and expire.
    ix.heartbeat(90, node(0), Load::default()).unwrap();
    ix.expire(150);
    for content in [c, c2] {
        let s = &*ix.swarms.lock(&content).unwrap();
        assert!(s.askers.is_empty(), "hints and offered holders kept for expired askers");
        assert!(s.handed_count.iter().all(|&n| n == 0), "handed counts freed");
    }
    assert!(ix.looked_mut().is_empty());
    // A fresh asker's hints are as good as the first ones were: nothing counts as handed.
    reg(&mut ix, 1, Role::Node);
    assert_eq!(ix.lookup(Some(node(1)), c, None, 10).unwrap().hints.len(), 4);
}

#[test]
fn a_lookup_ranks_a_bounded_sample_and_always_offers_admitted_storage() {
    let storage = fresh_id();
    let cfg = Config {
        admitted_storage: [storage].into_iter().collect(),
        lookup_sample: 8,
        ..Config::default()
    };
    let (mut ix, c) = setup(cfg, 1, 64);
    ix.register(0, storage, Role::Storage, observed(), &[], None);
    ix.announce(0, storage, c, bf(64, &[0])).unwrap();
    let holders: Vec<NodeId> = (0..500).map(|_| fresh_id()).collect();
    for &h in &holders {
        ix.register(0, h, Role::Node, observed(), &[], None);
        ix.announce(0, h, c, Bitfield::full(64)).unwrap();
    }
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let l = ix.lookup(None, c, None, 4).unwrap();
        assert_eq!(l.peers.len(), 4);
        assert_eq!(l.peers[0].node_id, storage, "admitted storage first, sampled or not");
        seen.extend(l.peers[1..].iter().map(|p| p.node_id));
    }
    // Samples vary between lookups: the load spreads over the swarm.
    assert!(seen.len() > 10, "only {} distinct holders offered", seen.len());
    // A sample of 8 out of 500 is drawn, never the whole swarm.
    let mut rng = fastrand::Rng::with_seed(1);
    let swarm = &*ix.swarms.lock(&c).unwrap();
    assert_eq!(swarm.holders.sample(&mut rng, ix.config.lookup_sample).len(), 8);
}

#[test]
fn a_flash_crowd_of_holders_of_nothing_still_finds_the_seed_in_every_answer() {
    // One seed, then 1,000 newcomers that announced their empty bitfields (as a node does once
    // it has the manifest): the draw of 64 among all holders misses the seed 15 times in 16.
    let (mut ix, c) = setup(Config::default(), 1, 64);
    ix.announce(0, node(0), c, Bitfield::full(64)).unwrap();
    let crowd: Vec<NodeId> = (0..1000).map(|_| fresh_id()).collect();
    for &n in &crowd {
        ix.register(0, n, Role::Node, observed(), &[], None);
        ix.announce(0, n, c, Bitfield::new(64)).unwrap();
    }
    for &n in crowd.iter().take(200) {
        let l = ix.lookup(Some(n), c, None, 32).unwrap();
        let peers: Vec<NodeId> = l.peers.iter().map(|p| p.node_id).collect();
        assert_eq!(peers, [node(0)], "the seed, and only it (nobody else holds anything)");
        assert!(!l.hints.is_empty());
    }
    // Once many hold something, answers come from the draw among everyone as before: more
    // than one peer, and different peers for different askers.
    for (k, &n) in crowd.iter().enumerate().take(500) {
        ix.announce(0, n, c, bf(64, &[k as u32 % 64])).unwrap();
    }
    let mut seen = BTreeSet::new();
    for &n in crowd.iter().skip(500).take(50) {
        let l = ix.lookup(Some(n), c, None, 32).unwrap();
        assert!(l.peers.len() > 1, "{} peers", l.peers.len());
        seen.extend(l.peers.iter().map(|p| p.node_id));
    }
    assert!(seen.len() > 200, "only {} distinct holders offered", seen.len());
    // An asker that holds all that anyone holds is answered with nobody: there is no one to
    // fill the answer with.
    let (mut ix, c) = setup(Config::default(), 3, 64);
    ix.announce(0, node(1), c, bf(64, &[1])).unwrap();
    ix.announce(0, node(2), c, bf(64, &[1, 2])).unwrap();
    assert!(ix.lookup(Some(node(2)), c, Some(&bf(64, &[1, 2])), 32).unwrap().peers.is_empty());
}

#[test]
fn rate_limits_refuse_bursts_from_one_address_and_refill_with_time() {
    let limits = Limits {
        register_per_ip: Rate { per_sec: 1, burst: 2 },
        announce_per_node: Rate { per_sec: 10, burst: 3 },
        ..Limits::default()
    };
    let ix = Index::new(Config { limits, ..Config::default() });
    let ip: IpAddr = "10.1.1.1".parse().unwrap();
    let ok = (0..5).filter(|_| ix.check_rate(0, Action::Register, ip, fresh_id()).is_ok()).count();
    assert_eq!(ok, 2);
    assert_eq!(ix.check_rate(999, Action::Register, ip, fresh_id()), Err(IndexError::RateLimited));
    assert!(ix.check_rate(1_000, Action::Register, ip, fresh_id()).is_ok());
    let n = node(0);
    assert!((0..3).all(|_| ix.check_rate(0, Action::Announce, ip, n).is_ok()));
    assert_eq!(ix.check_rate(0, Action::Announce, ip, n), Err(IndexError::RateLimited));
    assert!(ix.check_rate(100, Action::Announce, ip, n).is_ok(), "10/s: one token per 100 ms");
}

#[test]
fn silent_nodes_expire_with_their_holdings() {
    let (mut ix, c) = setup(Config { node_ttl_ms: 100, ..Config::default() }, 2, 2);
    ix.announce(0, node(0), c, Bitfield::full(2)).unwrap();
    ix.announce(0, node(1), c, Bitfield::full(2)).unwrap();
    ix.heartbeat(90, node(1), Load::default()).unwrap();
    let ops = ix.expire(150);
    assert!(ops.contains(&Persist::RemoveNode(node(0))));
    assert!(ops.contains(&Persist::RemoveHolding(c, node(0))));
    let l = ix.lookup(None, c, None, 10).unwrap();
    assert_eq!(l.peers.len(), 1);
    assert_eq!(l.peers[0].node_id, node(1));
}

#[test]
fn stalled_uploads_into_storage_are_reseeded_from_holders() {
    let storage = node(10);
    let cfg = Config {
        reseed_after_ms: 100,
        directive_pieces: 3,
        node_ttl_ms: 1_000,
        admitted_storage: [storage].into_iter().collect(),
        ..Config::default()
    };
    let (mut ix, c) = setup(cfg, 3, 8);
    let (a, b) = (node(1), node(2));
    reg(&mut ix, 10, Role::Storage);
    ix.announce(0, a, c, Bitfield::full(8)).unwrap();
    ix.announce(0, b, c, Bitfield::full(8)).unwrap();
    ix.announce(0, storage, c, bf(8, &[0, 1])).unwrap();
    // Not stalled yet: no directives.
    assert!(ix.heartbeat_plan(50, a, Load::default()).unwrap().1.directives.is_empty());
    // Stalled: A and B get disjoint batches of what storage lacks.
    let da = ix.heartbeat_plan(150, a, Load::default()).unwrap().1.directives;
    let db = ix.heartbeat_plan(150, b, Load::default()).unwrap().1.directives;
    assert_eq!(da.len(), 1);
    assert_eq!(da[0].storage, storage);
    assert_eq!(da[0].pieces.len(), 3);
    assert!(da[0].pieces.iter().all(|p| p.0 >= 2), "only missing pieces");
    assert!(db[0].pieces.iter().all(|p| !da[0].pieces.contains(p)), "spread over holders");
    // A vanishes; B pushes its batch; B's next order includes what A had been given.
    ix.heartbeat(900, b, Load::default()).unwrap();
    ix.heartbeat(900, storage, Load::default()).unwrap();
    assert!(ix.expire(1_200).contains(&Persist::RemoveNode(a)));
    ix.announce_delta(1_200, storage, c, &db[0].pieces).unwrap();
    let d = ix.heartbeat_plan(1_200, b, Load::default()).unwrap().1.directives;
    assert!(d[0].pieces.iter().any(|p| da[0].pieces.contains(p)), "a's pieces reissued: {d:?}");
    // Complete in storage: holders hear "stored" and get no more directives.
    ix.announce(1_400, storage, c, Bitfield::full(8)).unwrap();
    let out = ix.heartbeat_plan(1_400, b, Load::default()).unwrap().1;
    assert_eq!(out.stored, vec![c]);
    assert!(out.directives.is_empty());
}

#[test]
fn restores_from_sled() {
    let dir = tempfile::tempdir().unwrap();
    let (c, m) = content(1, 40);
    let (gone, m_gone) = content(1, 41);
    {
        let state = crate::SledState::open(dir.path()).unwrap();
        let mut ix = Index::new(Config { node_ttl_ms: 10, ..Config::default() });
        state.apply(&ix.register(5, node(0), Role::Node, observed(), &[], None).ops).unwrap();
        assert_eq!(ix.announce(5, node(0), c, Bitfield::full(1)), Err(IndexError::NeedManifest(c)));
        state.apply(&ix.put_manifest(5, node(0), c, m).unwrap()).unwrap();
        state.apply(&ix.announce(5, node(0), c, Bitfield::full(1)).unwrap()).unwrap();
        // A manifest nobody announces is collected, in sled too.
        state.apply(&ix.put_manifest(5, node(0), gone, m_gone).unwrap()).unwrap();
        ix.heartbeat(20, node(0), Load::default()).unwrap();
        state.apply(&ix.expire(20)).unwrap();
        state.flush().unwrap();
    }
    let state = crate::SledState::open(dir.path()).unwrap();
    let (nodes, holdings, manifests) = state.load().unwrap();
    assert_eq!(manifests.len(), 1);
    let mut ix = Index::restore(Config::default(), 5, nodes, holdings, manifests);
    let l = ix.lookup(None, c, None, 10).unwrap();
    assert_eq!(l.peers[0].node_id, node(0));
    assert!(ix.manifest(c).is_some() && ix.manifest(gone).is_none());
    // Still subject to expiry from its persisted last heartbeat.
    assert!(!ix.expire(5 + 10_001).is_empty());
}

#[test]
fn a_compact_lookup_offers_the_same_peers_and_hints_without_bitfields() {
    // Two indexes built alike (same seed): one answers in full, the other compact, the same
    // sequence of lookups. Holders hold distinct pieces so that ranks differ.
    let build = || {
        let (mut ix, c) = setup(Config { seed: 11, ..Config::default() }, 40, 64);
        for i in 1..40 {
            let ones: Vec<u32> =
                (0..64).filter(|p| (p + i as u32) % 5 != 0 || i % 3 == 0).collect();
            ix.announce(0, node(i), c, bf(64, &ones)).unwrap();
        }
        (ix, c)
    };
    let ((full, c), (compact, _)) = (build(), build());
    for (asker, have) in
        [(Some(node(0)), None), (Some(node(0)), Some(bf(64, &[1, 2]))), (None, None)]
    {
        let f = full.lookup(asker, c, have.as_ref(), 8).unwrap();
        let k = compact.lookup_compact(asker, c, have.as_ref(), 8).unwrap();
        assert_eq!(f.piece_count, k.piece_count);
        assert_eq!(f.hints, k.hints);
        let brief: Vec<PeerSummary> = f
            .peers
            .iter()
            .map(|p| PeerSummary {
                node_id: p.node_id,
                load: p.load,
                addrs: p.addrs.clone(),
                region: p.region.clone(),
            })
            .collect();
        assert_eq!(brief, k.peers);
        assert_eq!(k.peers.len(), 8);
    }
}

#[test]
fn a_registration_with_new_addresses_reaches_the_lookups_of_what_the_node_holds() {
    let (mut ix, c) = setup(Config::default(), 2, 8);
    ix.announce(0, node(1), c, Bitfield::full(8)).unwrap();
    let moved: SocketAddr = "203.0.113.9:4000".parse().unwrap();
    ix.register(1, node(1), Role::Node, moved, &[moved], None);
    let l = ix.lookup(None, c, None, 4).unwrap();
    let want = ix.nodes[&node(1)].addrs.clone();
    assert!(want.contains(&moved), "{want:?}");
    assert_eq!(l.peers[0].addrs, want, "the swarm's copy follows the registration");
    let k = ix.lookup_compact(None, c, None, 4).unwrap();
    assert_eq!(k.peers[0].addrs, want);
}

mod regions;

#[test]
fn lookups_from_many_threads_keep_every_asker_state_listed_and_every_count_exact() {
    // More contents than an asker's list holds (MAX_LOOKED_UP), so lookups on four threads
    // evict and forget state in other swarms while those swarms are looked up elsewhere.
    let mut ix = Index::new(Config {
        max_pending_manifest_bytes: u64::MAX,
        max_manifest_bytes: u64::MAX,
        ..Config::default()
    });
    let holders: Vec<NodeId> = (0..50).map(|_| fresh_id()).collect();
    let askers: Vec<NodeId> = (0..8).map(|_| fresh_id()).collect();
    for (i, id) in holders.iter().chain(&askers).enumerate() {
        let at = SocketAddr::new(IpAddr::from([10, 0, 1, i as u8]), 7000);
        ix.register(0, *id, Role::Node, at, &[], None);
    }
    let n = 8u32;
    let mut contents = Vec::new();
    for k in 0..(MAX_LOOKED_UP as u32 + 44) {
        let hashes =
            (0..n).map(|i| PieceHash::of(&[k.to_le_bytes(), i.to_le_bytes()].concat())).collect();
        let m = Manifest::new(&format!("t{k}"), u64::from(n) * 16 * 1024, hashes).unwrap();
        let c = m.content_id();
        ix.put_manifest(0, holders[0], c, m.encode()).unwrap();
        for j in 0..2 {
            let h = holders[(k as usize * 2 + j) % holders.len()];
            ix.announce(0, h, c, bf(n, &[0, 1, 2, 3, (k + j as u32) % n])).unwrap();
        }
        contents.push(c);
    }
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (ix, askers, contents) = (&ix, &askers, &contents);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                for _ in 0..3000 {
                    let asker = askers[rng.usize(..askers.len())];
                    let c = contents[rng.usize(..contents.len())];
                    let have = rng.bool().then(|| bf(n, &[rng.u32(..n)]));
                    let l = ix.lookup_compact(Some(asker), c, have.as_ref(), 4).unwrap();
                    assert!(!l.peers.is_empty() && l.hints.len() <= n as usize);
                }
            });
        }
    });
    let looked = ix.looked_mut().clone();
    for list in looked.values() {
        assert!(list.len() <= MAX_LOOKED_UP);
        assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), list.len(), "listed twice");
    }
    for (c, s) in ix.swarms.iter() {
        let mut counted = vec![0u32; n as usize];
        for (asker, asked) in &s.askers {
            // State exists only where the asker's list names the content: it is forgotten in
            // time, however the threads interleaved.
            assert!(looked.get(asker).is_some_and(|l| l.contains(c)), "state not listed");
            for p in &asked.hints {
                counted[p.0 as usize] += 1;
            }
        }
        assert_eq!(counted, s.handed_count, "hints counted once each, none lost");
    }
}
