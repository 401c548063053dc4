//! Holders, their region lists, reports and word-wise counts.

use std::collections::BTreeSet;

use super::*;

fn ids(n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|_| {
            let kp = libp2p_identity::Keypair::generate_ed25519();
            NodeId::from_public_key(&kp.public()).unwrap()
        })
        .collect()
}

#[test]
fn holders_stay_consistent_through_swap_removes_and_sample_distinct_members() {
    // 13 pieces: two bytes a bitfield, the second partly used. Holder i holds piece i % 13
    // and piece 12, so each bitfield tells whose it is.
    let all = ids(50);
    let own = |i: usize| {
        let mut b = Bitfield::new(13);
        b.set(PieceIndex((i % 13) as u32));
        b.set(PieceIndex(12));
        b
    };
    let mut h = Holders::new(13);
    for (i, id) in all.iter().enumerate() {
        assert_eq!(h.insert(*id, &Bitfield::new(13)), None);
        // Replacing returns the old bitfield.
        assert_eq!(h.insert(*id, &own(i)), Some(Bitfield::new(13)));
    }
    for (i, id) in all.iter().enumerate().step_by(3) {
        assert_eq!(h.remove(id), Some(own(i)));
        assert!(h.remove(id).is_none());
    }
    assert_eq!(h.len(), 50 - all.iter().step_by(3).count());
    assert_eq!(h.bits.len(), h.len() * 2, "the arena shrinks with the holders");
    for (i, holder) in h.order.iter().enumerate() {
        assert_eq!(h.map[&holder.id], i, "index map follows the order vector");
    }
    // Every bitfield followed its holder through the swap removes.
    for (i, id) in all.iter().enumerate() {
        let want = (i % 3 != 0).then(|| own(i));
        assert_eq!(h.get(id), want, "holder {i}");
        assert_eq!(h.entry(id).map(|v| v.bitfield()), want);
    }
    let mut rng = fastrand::Rng::with_seed(7);
    // Far fewer than the holders (rejection sampling), at least half of them (everyone).
    for (k, expect) in [(5, 5), (16, 16), (17, h.len()), (40, h.len())] {
        let s: Vec<HolderView<'_>> =
            h.sample(&mut rng, k).into_iter().filter_map(|i| h.at(i)).collect();
        assert_eq!(s.len(), expect, "k {k}");
        assert_eq!(s.iter().map(|h| h.id).collect::<BTreeSet<_>>().len(), expect);
        assert!(s.iter().all(|x| h.contains(x.id) && h.get(x.id) == Some(x.bitfield())));
    }
}

#[test]
fn region_lists_and_the_holding_part_follow_holders_through_inserts_moves_and_swap_removes() {
    let all = ids(60);
    let mut h = Holders::new(8);
    let mut rng = fastrand::Rng::with_seed(3);
    // A model of what each holder announced last, and its region.
    let mut model: std::collections::HashMap<NodeId, (Bitfield, RegionId)> = Default::default();
    let check = |h: &Holders, model: &std::collections::HashMap<NodeId, (Bitfield, RegionId)>| {
        let mut seen = 0;
        for (&region, list) in &h.by_region {
            assert!(!list.is_empty(), "empty lists are dropped");
            for (pos, &i) in list.iter().enumerate() {
                assert_eq!(h.order[i].region, region);
                assert_eq!(h.order[i].region_pos, pos);
                seen += 1;
            }
        }
        assert_eq!(seen, h.order.iter().filter(|x| x.region != NO_REGION).count());
        assert!(h.order.iter().all(|x| (x.region == NO_REGION) == (x.region_pos == usize::MAX)));
        assert_eq!(h.order.len(), model.len());
        assert_eq!(h.bits.len(), h.order.len());
        for (i, x) in h.order.iter().enumerate() {
            let (bf, region) = &model[&x.id];
            assert_eq!(h.map[&x.id], i, "the map follows the order");
            assert_eq!(&h.view(i).bitfield(), bf, "the bitfield followed its holder");
            assert_eq!(x.region, *region);
            assert_eq!(i < h.holding, bf.count() > 0, "holders of some piece come first");
        }
        assert_eq!(h.complete, model.values().filter(|(b, _)| b.is_complete()).count());
    };
    for step in 0..4000 {
        let id = all[rng.usize(..all.len())];
        match rng.u8(..3) {
            0 => {
                // Empty a third of the time, full now and then, else a few pieces.
                let mut bf = Bitfield::new(8);
                match rng.u8(..6) {
                    0 | 1 => {}
                    2 => bf = Bitfield::full(8),
                    _ => {
                        for _ in 0..rng.u32(1..4) {
                            bf.set(PieceIndex(rng.u32(..8)));
                        }
                    }
                }
                let region = rng.u16(..4);
                h.insert(id, &bf);
                h.set_region(&id, region);
                model.insert(id, (bf, region));
            }
            1 => {
                assert_eq!(h.remove(&id), model.remove(&id).map(|(b, _)| b));
            }
            _ => {
                let region = rng.u16(..4);
                h.set_region(&id, region);
                if let Some(m) = model.get_mut(&id) {
                    m.1 = region;
                }
            }
        }
        if step % 20 == 0 {
            check(&h, &model);
        }
    }
    check(&h, &model);
    // A region's sample holds only its holders, distinct.
    let got: Vec<HolderView<'_>> =
        h.sample_region(&mut rng, 2, 3).into_iter().filter_map(|i| h.at(i)).collect();
    assert!(got.iter().all(|v| v.region == 2));
    assert_eq!(got.iter().map(|v| v.id).collect::<BTreeSet<_>>().len(), got.len());
}

#[test]
fn word_wise_counts_match_bit_by_bit() {
    // Boundary table of lengths in bytes: 0, 1, 7, 8, 9, 17.
    for len in [0usize, 1, 7, 8, 9, 17] {
        let a: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let b: Vec<u8> = (0..len).map(|i| (i * 91 + 3) as u8).collect();
        let slow: u32 = a.iter().zip(&b).map(|(x, y)| (x & !y).count_ones()).sum();
        assert_eq!(count_and_not(&a, Some(&b)), slow, "len {len}");
        let all: u32 = a.iter().map(|x| x.count_ones()).sum();
        assert_eq!(count_and_not(&a, None), all);
        // A shorter `b` (a mask of another length): its missing bytes mask nothing.
        let short = &b[..len / 2];
        let slow: u32 = a
            .iter()
            .enumerate()
            .map(|(i, x)| (x & !short.get(i).copied().unwrap_or(0)).count_ones())
            .sum();
        assert_eq!(count_and_not(&a, Some(short)), slow, "len {len} short");
    }
}

fn ip(i: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, i])
}

#[test]
fn reports_are_distinct_and_bounded() {
    let r = ids(1);
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    let yes = |_: &NodeId| true;
    assert_eq!(s.report(r[0], ip(1), 3, 2, yes), 1);
    assert_eq!(s.report(r[0], ip(1), 3, 2, yes), 1, "the same source counts once");
    assert_eq!(s.report(r[0], ip(2), 3, 2, yes), 2);
    assert_eq!(s.report(r[0], ip(3), 3, 2, yes), 3);
    assert_eq!(s.report(r[0], ip(4), 3, 2, yes), 3, "capped");
    assert_eq!(s.reported(&r[0]), 3);
}

#[test]
fn a_full_report_table_evicts_unregistered_then_undemoted_holders_before_refusing() {
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    let throwaway = ids(MAX_REPORTED);
    let yes = |_: &NodeId| true;
    for &h in &throwaway {
        assert_eq!(s.report(h, ip(1), 5, 2, yes), 1);
    }
    assert_eq!(s.reports.len(), MAX_REPORTED);
    // The throwaway ids are gone from the tracker: a real report evicts them.
    let real = ids(1)[0];
    let gone = |h: &NodeId| !throwaway.contains(h);
    assert_eq!(s.report(real, ip(2), 5, 2, gone), 1);
    assert_eq!(s.reports.len(), 1, "unregistered holders' entries evicted");
    // Still registered but reported once (not demoted): one is evicted to make room.
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    for &h in &throwaway {
        s.report(h, ip(1), 5, 2, yes);
    }
    assert_eq!(s.report(real, ip(2), 5, 2, yes), 1);
    assert_eq!(s.reports.len(), MAX_REPORTED);
    // A table full of demoted holders keeps them and ignores a new one.
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    for &h in &throwaway {
        s.report(h, ip(1), 5, 2, yes);
        s.report(h, ip(2), 5, 2, yes);
    }
    assert_eq!(s.report(real, ip(3), 5, 2, yes), 0);
    assert!(!s.reports.contains_key(&real));
}

#[test]
fn a_draw_among_holders_of_something_finds_the_one_among_a_thousand_of_nothing() {
    // A flash crowd: every newcomer announced its empty bitfield, one seed holds everything.
    let crowd = ids(1001);
    let mut h = Holders::new(64);
    for id in &crowd[1..] {
        h.insert(*id, &Bitfield::new(64));
    }
    h.insert(crowd[0], &Bitfield::full(64));
    let mut rng = fastrand::Rng::with_seed(11);
    let ids_of = |h: &Holders, drawn: Vec<usize>| -> Vec<NodeId> {
        drawn.into_iter().filter_map(|i| h.at(i)).map(|v| *v.id).collect()
    };
    let mut seed_in_plain_draws = 0;
    for _ in 0..100 {
        assert_eq!(ids_of(&h, h.sample_holding(&mut rng, 64)), [crowd[0]]);
        // The plain draw is among everyone, as it was: the seed in about one in sixteen.
        let plain = ids_of(&h, h.sample(&mut rng, 64));
        assert_eq!(plain.len(), 64);
        seed_in_plain_draws += usize::from(plain.contains(&crowd[0]));
    }
    assert!((1..40).contains(&seed_in_plain_draws), "{seed_in_plain_draws} of 100");
    // Pieces spread: 200 newcomers hold one each, and draws among holders of something
    // come from those 201 only, each of them in time.
    for (k, id) in crowd[1..=200].iter().enumerate() {
        let mut bf = Bitfield::new(64);
        bf.set(PieceIndex(k as u32 % 64));
        h.insert(*id, &bf);
    }
    let holding: BTreeSet<NodeId> = crowd[..=200].iter().copied().collect();
    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let drawn = ids_of(&h, h.sample_holding(&mut rng, 64));
        assert_eq!(drawn.len(), 64);
        assert!(drawn.iter().all(|id| holding.contains(id)), "a holder of nothing was drawn");
        seen.extend(drawn);
    }
    assert_eq!(seen.len(), 201, "every holder of a piece is drawn in time");
    // One that announces nothing (its pieces gone) is no longer among them.
    h.insert(crowd[0], &Bitfield::new(64));
    for _ in 0..50 {
        assert!(!ids_of(&h, h.sample_holding(&mut rng, 64)).contains(&crowd[0]));
    }
}
