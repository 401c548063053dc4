//! Holders: the arena, the part holding something, region lists and draws.

use std::collections::BTreeSet;

use shoal_core::PieceIndex;

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
