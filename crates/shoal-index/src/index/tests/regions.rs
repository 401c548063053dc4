//! Regions at the index: placement, region-first lookups and their pull-through candidates,
//! moving between regions, forgetting, links, and sampling a small region.

use super::*;

/// Registers node `i` in region `name` (stated; the config must allow it).
fn reg_in(ix: &mut Index, i: usize, role: Role, name: &str) {
    let r: Region = name.parse().unwrap();
    let got = ix.register(0, node(i), role, observed(), &[], Some(&r));
    assert_eq!(got.region, Some(r));
}

#[test]
fn lookups_rank_the_askers_region_then_its_storage_lacking_the_content_then_the_rest() {
    let mut config = Config { allow_stated_region: true, ..Config::default() };
    config.admitted_storage.insert(node(9));
    let mut ix = Index::new(config);
    reg_in(&mut ix, 0, Role::Node, "r0"); // the seed
    reg_in(&mut ix, 1, Role::Node, "r0");
    reg_in(&mut ix, 2, Role::Node, "r1"); // a holder in the asker's region
    reg_in(&mut ix, 3, Role::Node, "r1"); // the asker
    reg_in(&mut ix, 9, Role::Storage, "r1"); // r1's storage, lacking the content
    let (c, m) = content(16, 7);
    ix.put_manifest(0, node(0), c, m).unwrap();
    ix.announce(0, node(0), c, Bitfield::full(16)).unwrap();
    ix.announce(0, node(1), c, bf(16, &[0, 1, 2])).unwrap();
    ix.announce(0, node(2), c, bf(16, &[3])).unwrap();
    let l = ix.lookup(Some(node(3)), c, None, 8).unwrap();
    let order: Vec<NodeId> = l.peers.iter().map(|p| p.node_id).collect();
    assert_eq!(order[0], node(2), "the asker's region first");
    assert_eq!(order[1], node(9), "then its storage, to pull the content through");
    assert!(l.peers[1].bitfield.count() == 0);
    assert_eq!(order.len(), 4, "then everyone else, never fewer: {order:?}");
    assert_eq!(l.peers[0].region.as_ref().map(Region::as_str), Some("r1"));
    assert_eq!(l.peers[2].region.as_ref().map(Region::as_str), Some("r0"));
    // Storage asking (its own pull) is offered no storage; with two storage nodes in r1, every
    // asker is offered the same one, once.
    let l = ix.lookup(Some(node(9)), c, None, 8).unwrap();
    assert!(l.peers.iter().all(|p| p.node_id != node(9) && p.bitfield.count() > 0));
    let mut config = Config { allow_stated_region: true, ..Config::default() };
    config.admitted_storage.extend([node(9), node(10)]);
    let mut two = Index::new(config);
    for (i, r) in [(0, "r0"), (3, "r1"), (4, "r1")] {
        reg_in(&mut two, i, Role::Node, r);
    }
    reg_in(&mut two, 9, Role::Storage, "r1");
    reg_in(&mut two, 10, Role::Storage, "r1");
    let (c2, m2) = content(16, 8);
    two.put_manifest(0, node(0), c2, m2).unwrap();
    two.announce(0, node(0), c2, Bitfield::full(16)).unwrap();
    let empty = |l: &crate::Lookup| -> Vec<NodeId> {
        l.peers.iter().filter(|p| p.bitfield.count() == 0).map(|p| p.node_id).collect()
    };
    let a = empty(&two.lookup(Some(node(3)), c2, None, 8).unwrap());
    let b = empty(&two.lookup(Some(node(4)), c2, None, 8).unwrap());
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a, b, "every asker meets at the same pull");
    // Regions ignored: no storage lacking the content, ranks as before (no region first).
    let mut config =
        Config { allow_stated_region: true, region_routing: false, ..Config::default() };
    config.admitted_storage.insert(node(9));
    let mut off = Index::new(config);
    for (i, r) in [(0, "r0"), (1, "r0"), (2, "r1"), (3, "r1")] {
        reg_in(&mut off, i, Role::Node, r);
    }
    reg_in(&mut off, 9, Role::Storage, "r1");
    let (c, m) = content(16, 7);
    off.put_manifest(0, node(0), c, m).unwrap();
    off.announce(0, node(0), c, Bitfield::full(16)).unwrap();
    off.announce(0, node(2), c, bf(16, &[3])).unwrap();
    let l = off.lookup(Some(node(3)), c, None, 8).unwrap();
    assert!(l.peers.iter().all(|p| p.node_id != node(9)), "storage without it is not offered");
    assert_eq!(l.peers.len(), 2);
}

#[test]
fn storage_that_forgets_a_pulled_content_stops_holding_it_and_is_not_reseeded() {
    let mut config = Config { reseed_after_ms: 10, ..Config::default() };
    config.admitted_storage.insert(node(9));
    let (mut ix, c) = setup(config, 2, 8);
    reg(&mut ix, 9, Role::Storage);
    ix.announce(0, node(0), c, Bitfield::full(8)).unwrap();
    ix.announce(0, node(9), c, bf(8, &[0, 1])).unwrap();
    // An empty announce (a storage node back from a crash with nothing flushed) stays a
    // holding to re-seed into.
    ix.announce(1, node(9), c, Bitfield::new(8)).unwrap();
    assert!(ix.swarms.lock(&c).unwrap().storage.contains_key(&node(9)));
    // Forgetting it (its cache dropped it) removes the holding: nothing to re-seed into.
    let ops = ix.forget(2, node(9), c).unwrap();
    assert_eq!(ops, vec![Persist::RemoveHolding(c, node(9))]);
    assert!(!ix.swarms.lock(&c).unwrap().holders.contains(&node(9)));
    assert!(!ix.swarms.lock(&c).unwrap().storage.contains_key(&node(9)));
    let (_, plan) = ix.heartbeat_plan(1_000, node(0), Load::default()).unwrap();
    assert!(plan.directives.is_empty(), "{plan:?}");
    assert!(ix.forget(3, node(9), c).unwrap().is_empty(), "forgetting twice changes nothing");
    assert_eq!(ix.forget(3, fresh_id(), c), Err(IndexError::NotRegistered));
}

#[test]
fn a_node_that_moves_region_takes_its_holdings_along_and_counts_stay_right() {
    let config = Config { allow_stated_region: true, ..Config::default() };
    let mut ix = Index::new(config);
    reg_in(&mut ix, 0, Role::Node, "r0");
    reg_in(&mut ix, 1, Role::Node, "r1");
    let (c, m) = content(8, 3);
    ix.put_manifest(0, node(0), c, m).unwrap();
    ix.announce(0, node(0), c, Bitfield::full(8)).unwrap();
    let r0 = ix.regions.id(&"r0".parse().unwrap()).unwrap();
    let r1 = ix.regions.id(&"r1".parse().unwrap()).unwrap();
    assert_eq!(ix.swarms.lock(&c).unwrap().regional[&r0].availability, vec![1; 8]);
    // The asker of r1 is handed pieces: each counted in r1.
    let l = ix.lookup(Some(node(1)), c, None, 8).unwrap();
    assert!(!l.hints.is_empty());
    let handed: u32 = ix.swarms.lock(&c).unwrap().regional[&r1].handed.iter().sum();
    assert_eq!(handed as usize, l.hints.len());
    // Node 0 moves to r1: its pieces count there now; node 1's hints are unaffected.
    ix.register(5, node(0), Role::Node, observed(), &[], Some(&"r1".parse().unwrap()));
    assert!(
        !ix.swarms.lock(&c).unwrap().regional.contains_key(&r0),
        "an empty region's view is freed"
    );
    assert_eq!(ix.swarms.lock(&c).unwrap().regional[&r1].availability, vec![1; 8]);
    let counts: Vec<(String, usize)> = ix
        .region_counts()
        .into_iter()
        .map(|(r, n)| (r.map(|r| r.to_string()).unwrap_or_default(), n))
        .collect();
    assert_eq!(counts, vec![("r1".to_string(), 2)]);
    // Node 1 moves too: its hints, counted in r1, go; expiry forgets everyone.
    ix.register(6, node(1), Role::Node, observed(), &[], Some(&"r0".parse().unwrap()));
    assert_eq!(ix.swarms.lock(&c).unwrap().regional[&r1].handed.iter().sum::<u32>(), 0);
    // It may not move back within the minute: it keeps r0.
    let again = ix.register(7, node(1), Role::Node, observed(), &[], Some(&"r1".parse().unwrap()));
    assert_eq!(again.region.map(|r| r.to_string()), Some("r0".to_string()));
    ix.expire(1_000_000);
    assert!(ix.region_counts().is_empty());
    assert!(ix.swarms.iter().all(|(_, s)| s.regional.is_empty()), "every region's view freed");
}

#[test]
fn each_asker_is_handed_the_least_loaded_link_and_keeps_it() {
    let (mut ix, c) = setup(Config::default(), 4, 8);
    // Node 0 listens on two ports of its address: two links.
    let (a, b): (SocketAddr, SocketAddr) =
        ("127.0.0.1:7001".parse().unwrap(), "127.0.0.1:7002".parse().unwrap());
    ix.register(0, node(0), Role::Node, a, &[a, b], None);
    ix.announce(0, node(0), c, Bitfield::full(8)).unwrap();
    ix.set_links(node(0), &[(a, 5), (b, 1)]);
    let first = |ix: &mut Index, asker: usize| {
        let l = ix.lookup(Some(node(asker)), c, None, 4).unwrap();
        l.peers.iter().find(|p| p.node_id == node(0)).unwrap().addrs[0]
    };
    assert_eq!(first(&mut ix, 1), b, "the least loaded link");
    // Handing b out counts on it: 5 against 2 still sends the next asker to b, and the
    // heartbeat then reports b busy.
    assert_eq!(first(&mut ix, 2), b);
    ix.set_links(node(0), &[(a, 0), (b, 9)]);
    assert_eq!(first(&mut ix, 3), a, "a new asker gets the now idle link");
    assert_eq!(first(&mut ix, 1), b, "an asker keeps the link it was given");
    // Both addresses are always in the answer, the chosen one first.
    let l = ix.lookup(Some(node(1)), c, None, 4).unwrap();
    let p = l.peers.iter().find(|p| p.node_id == node(0)).unwrap();
    assert_eq!(p.addrs, vec![b, a]);
    // A link the node did not register is ignored; one it did not report counts as idle.
    ix.set_links(node(0), &[("10.9.9.9:1".parse().unwrap(), 0), (a, 3)]);
    assert_eq!(first(&mut ix, 2), b, "asker 2 keeps b");
    assert_eq!(ix.add_verified_addr(node(0), "10.0.0.7:7003".parse().unwrap()).len(), 1);
    assert!(ix.add_verified_addr(node(0), "10.0.0.7:7003".parse().unwrap()).is_empty());
    let l = ix.lookup(Some(node(3)), c, None, 4).unwrap();
    let p = l.peers.iter().find(|p| p.node_id == node(0)).unwrap();
    assert_eq!(p.addrs.len(), 3, "a verified address joins the answers: {:?}", p.addrs);
}

#[test]
fn a_small_regions_holders_are_found_in_a_large_swarm() {
    // 1,000 holders in r0, 3 in r1: a lookup samples 64 of the swarm, and the asker's region
    // apart, so r1's asker is offered its own region's holders first.
    let config = Config { allow_stated_region: true, ..Config::default() };
    let mut ix = Index::new(config);
    let (c, m) = content(8, 4);
    let r0: Region = "r0".parse().unwrap();
    let r1: Region = "r1".parse().unwrap();
    let many: Vec<NodeId> = (0..1000).map(|_| fresh_id()).collect();
    for id in &many {
        ix.register(0, *id, Role::Node, observed(), &[], Some(&r0));
    }
    ix.put_manifest(0, many[0], c, m).unwrap();
    for id in &many {
        ix.announce(0, *id, c, Bitfield::full(8)).unwrap();
    }
    let near: Vec<NodeId> = (0..3).map(|_| fresh_id()).collect();
    for id in &near {
        ix.register(0, *id, Role::Node, observed(), &[], Some(&r1));
        ix.announce(0, *id, c, Bitfield::full(8)).unwrap();
    }
    let asker = fresh_id();
    ix.register(0, asker, Role::Node, observed(), &[], Some(&r1));
    let l = ix.lookup(Some(asker), c, None, 16).unwrap();
    let first: BTreeSet<NodeId> = l.peers.iter().take(3).map(|p| p.node_id).collect();
    assert_eq!(first, near.iter().copied().collect(), "r1's holders first");
    assert_eq!(l.peers.len(), 16, "then the rest of the swarm");
}
