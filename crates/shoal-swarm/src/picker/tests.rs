use proptest::prelude::*;

use super::reference::Reference;
use super::*;

fn full(n: u32) -> Bitfield {
    Bitfield::full(n)
}

#[test]
fn a_resent_bitfield_keeps_strikes_and_requests() {
    let mut p = Picker::new(Bitfield::new(8), 1);
    assert!(p.add_peer(7u8, full(8)));
    let a = p.next_request(7).unwrap().piece;
    let b = p.next_request(7).unwrap().piece;
    assert_eq!(p.piece_failed(7, a), Verdict::Strike(1));
    // The liar re-sends its bitfield, hoping for a clean slate.
    assert!(p.add_peer(7, full(8)));
    assert_eq!(p.strikes(7), 1);
    assert_eq!(p.in_flight(7), 1, "the request for {b} is still in flight");
    let c = p.next_request(7).unwrap().piece;
    assert_eq!(p.piece_failed(7, c), Verdict::Banned);
    assert!(!p.add_peer(7, full(8)), "a banned peer is never re-added");
    assert!(p.next_request(7).is_none());
}

#[test]
fn a_reconnect_keeps_strikes() {
    let mut p = Picker::new(Bitfield::new(8), 1);
    p.add_peer(1u8, full(8));
    let a = p.next_request(1).unwrap().piece;
    p.piece_failed(1, a);
    assert_eq!(p.remove_peer(1), vec![]);
    assert!(p.add_peer(1, full(8)));
    let b = p.next_request(1).unwrap().piece;
    assert_ne!(a, b, "a piece it sent badly is not asked of it again");
    assert_eq!(p.piece_failed(1, b), Verdict::Banned);
    assert!(p.is_banned(1) && !p.is_connected(1));
}

#[test]
fn availability_follows_replaced_bitfields() {
    let mut p = Picker::new(Bitfield::new(4), 1);
    let mut one = Bitfield::new(4);
    one.set(PieceIndex(3));
    p.add_peer(1u8, full(4));
    p.add_peer(1, one.clone());
    p.add_peer(2, one);
    assert_eq!(p.pieces.availability, vec![0, 0, 0, 2]);
    assert!(!p.add_peer(3, Bitfield::new(5)), "wrong length refused");
    p.remove_peer(1);
    assert_eq!(p.pieces.availability, vec![0, 0, 0, 1]);
    // An out-of-range have from a hostile peer changes nothing and does not panic.
    p.peer_has(2, PieceIndex(u32::MAX));
    assert!(p.is_useful(2));
}

#[test]
fn a_peer_with_few_late_pieces_is_found_past_the_walk() {
    // 200 pieces only the seed holds come first (rarest); the leecher holds 3 common ones.
    let n = 400;
    let mut p = Picker::new(Bitfield::new(n), 9);
    let mut r = Reference::new(Bitfield::new(n), 9);
    let mut common = Bitfield::new(n);
    for i in (200..400).step_by(67) {
        common.set(PieceIndex(i));
    }
    for (id, b) in [(0u8, full(n)), (1, common.clone()), (2, common)] {
        p.add_peer(id, b.clone());
        r.add_peer(id, b);
    }
    for _ in 0..3 {
        let got = p.next_request(1);
        assert_eq!(got, r.next_request(1));
        assert!(got.is_some_and(|g| !g.endgame && g.piece.0 >= 200));
    }
    assert_eq!(p.next_request(1), None, "it holds nothing else");
    let dup = p.next_request(2);
    assert_eq!(dup, r.next_request(2));
    assert!(dup.unwrap().endgame, "only pieces in flight elsewhere are left for peer 2");
}

#[test]
fn a_busy_peer_is_asked_for_a_second_copy_only_once_every_missing_piece_has_a_holder() {
    // Peers 1 and 2 hold pieces 0 and 1; piece 2 has no holder yet (a seed-bound swarm).
    let n = 3;
    let mut p = Picker::new(Bitfield::new(n), 3);
    let mut r = Reference::new(Bitfield::new(n), 3);
    let mut two = Bitfield::new(n);
    two.set(PieceIndex(0));
    two.set(PieceIndex(1));
    for id in [1u8, 2] {
        p.add_peer(id, two.clone());
        r.add_peer(id, two.clone());
    }
    let a = p.next_request(1).unwrap();
    assert_eq!(Some(a), r.next_request(1));
    let b = p.next_request(2).unwrap();
    assert_eq!(Some(b), r.next_request(2));
    assert!(!a.endgame && !b.endgame && a.piece != b.piece, "{a:?} {b:?}");
    // Each is busy with one request and piece 2 has no holder: no second copies.
    assert_eq!(p.next_request(1), None);
    assert_eq!(r.next_request(1), None);
    // Peer 2's piece arrives: peer 2 is idle, and an idle peer may take a second copy.
    p.piece_verified(2, b.piece);
    r.piece_verified(2, b.piece);
    let c = p.next_request(2).unwrap();
    assert_eq!(Some(c), r.next_request(2));
    assert_eq!((c.piece, c.endgame), (a.piece, true));
    // A third peer holds everything: every missing piece has a holder, so once busy with
    // piece 2 it may still take a third copy of the first (the fetch's endgame proper).
    p.add_peer(3, full(n));
    r.add_peer(3, full(n));
    let d = p.next_request(3).unwrap();
    assert_eq!(Some(d), r.next_request(3));
    assert_eq!((d.piece, d.endgame), (PieceIndex(2), false));
    let e = p.next_request(3).unwrap();
    assert_eq!(Some(e), r.next_request(3));
    assert_eq!((e.piece, e.endgame), (a.piece, true));
    check(&p);
}

/// Panics unless every counter the picker keeps matches a recount.
fn check<P: Copy + Ord + std::fmt::Debug>(p: &Picker<P>) {
    p.pieces.check();
    for i in 0..p.pieces.have.len() {
        let piece = PieceIndex(i);
        let holders = p.peers.values().filter(|q| q.bitfield.get(piece)).count() as u32;
        assert_eq!(p.pieces.availability[i as usize], holders, "availability of {i}");
        let asked = p.peers.values().filter(|q| q.in_flight.contains(&piece)).count() as u32;
        assert_eq!(p.pieces.requested[i as usize], asked, "requests of {i}");
    }
    for (id, q) in &p.peers {
        let ones = || q.bitfield.iter_ones();
        let missing = ones().filter(|i| p.pieces.missing(i.0)).count() as u32;
        let fresh = ones().filter(|i| p.pieces.is_fresh(i.0)).count() as u32;
        assert_eq!((q.missing, q.fresh), (missing, fresh), "counts of {id:?}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A peer's bitfield: piece `i` held if `bits[i] < density`.
    Add(u8, u8, Vec<u8>),
    WrongLength(u8),
    Remove(u8),
    Ban(u8),
    Have(u8, u32),
    Request(u8),
    /// On the `sel`-th request made so far.
    Verified(usize),
    Failed(usize),
    PieceFailed(usize),
    /// On any peer and piece, in range or not.
    VerifiedAny(u8, u32),
    PieceFailedAny(u8, u32),
    Hints(Vec<u32>),
}

fn op(n: u32) -> impl Strategy<Value = Op> {
    let peer = 0u8..6;
    let piece = 0..n + 2;
    prop_oneof![
        3 => (peer.clone(), 0u8..=4, prop::collection::vec(0u8..4, n as usize))
            .prop_map(|(p, d, b)| Op::Add(p, d, b)),
        1 => peer.clone().prop_map(Op::WrongLength),
        1 => peer.clone().prop_map(Op::Remove),
        1 => peer.clone().prop_map(Op::Ban),
        4 => (peer.clone(), piece.clone()).prop_map(|(p, i)| Op::Have(p, i)),
        10 => peer.clone().prop_map(Op::Request),
        4 => any::<usize>().prop_map(Op::Verified),
        2 => any::<usize>().prop_map(Op::Failed),
        1 => any::<usize>().prop_map(Op::PieceFailed),
        1 => (peer.clone(), piece.clone()).prop_map(|(p, i)| Op::VerifiedAny(p, i)),
        1 => (peer, piece.clone()).prop_map(|(p, i)| Op::PieceFailedAny(p, i)),
        1 => prop::collection::vec(piece, 0..8).prop_map(Op::Hints),
    ]
}

fn case() -> impl Strategy<Value = (u32, u64, Vec<bool>, Vec<Op>)> {
    // Up to 150 pieces: more than two bitfield words, and more than the walk before a scan.
    (0u32..150).prop_flat_map(|n| {
        let have = prop::collection::vec(prop::bool::weighted(0.2), n as usize);
        (Just(n), any::<u64>(), have, prop::collection::vec(op(n), 1..250))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The indexed picker makes exactly the choices of the scan-everything rule.
    #[test]
    fn agrees_with_the_reference((n, seed, have, ops) in case()) {
        let mut bits = Bitfield::new(n);
        for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
            bits.set(PieceIndex(i as u32));
        }
        let mut new = Picker::new(bits.clone(), seed);
        let mut old = Reference::new(bits, seed);
        let mut sent: Vec<(u8, PieceIndex)> = Vec::new();
        for op in ops {
            let nth = |sel: usize| sent.get(sel % sent.len().max(1)).copied();
            match op {
                Op::Add(p, density, b) => {
                    let mut bf = Bitfield::new(n);
                    for (i, _) in b.iter().enumerate().filter(|(_, v)| **v < density) {
                        bf.set(PieceIndex(i as u32));
                    }
                    prop_assert_eq!(new.add_peer(p, bf.clone()), old.add_peer(p, bf));
                }
                Op::WrongLength(p) => {
                    let bf = Bitfield::full(n + 1);
                    prop_assert_eq!(new.add_peer(p, bf.clone()), old.add_peer(p, bf));
                }
                Op::Remove(p) => prop_assert_eq!(new.remove_peer(p), old.remove_peer(p)),
                Op::Ban(p) => {
                    new.ban(p);
                    old.ban(p);
                }
                Op::Have(p, i) => {
                    new.peer_has(p, PieceIndex(i));
                    old.peer_has(p, PieceIndex(i));
                }
                Op::Request(p) => {
                    let r = new.next_request(p);
                    prop_assert_eq!(r, old.next_request(p));
                    if let Some(r) = r {
                        sent.push((p, r.piece));
                    }
                }
                Op::Verified(sel) => if let Some((p, i)) = nth(sel) {
                    prop_assert_eq!(new.piece_verified(p, i), old.piece_verified(p, i));
                },
                Op::Failed(sel) => if let Some((p, i)) = nth(sel) {
                    new.request_failed(p, i);
                    old.request_failed(p, i);
                },
                Op::PieceFailed(sel) => if let Some((p, i)) = nth(sel) {
                    prop_assert_eq!(new.piece_failed(p, i), old.piece_failed(p, i));
                },
                Op::VerifiedAny(p, i) => {
                    let i = PieceIndex(i);
                    prop_assert_eq!(new.piece_verified(p, i), old.piece_verified(p, i));
                }
                Op::PieceFailedAny(p, i) => {
                    let i = PieceIndex(i);
                    prop_assert_eq!(new.piece_failed(p, i), old.piece_failed(p, i));
                }
                Op::Hints(h) => {
                    let h: Vec<_> = h.into_iter().map(PieceIndex).collect();
                    new.set_hints(&h);
                    old.set_hints(&h);
                }
            }
            check(&new);
            prop_assert_eq!(new.is_stuck(), old.is_stuck());
            prop_assert_eq!(new.have(), old.have());
            prop_assert_eq!(new.is_complete(), old.is_complete());
            for p in 0..6u8 {
                prop_assert_eq!(new.is_useful(p), old.is_useful(p), "is_useful({})", p);
                prop_assert_eq!(new.in_flight(p), old.in_flight(p));
                prop_assert_eq!(new.is_connected(p), old.is_connected(p));
                prop_assert_eq!(new.is_banned(p), old.is_banned(p));
                prop_assert_eq!(new.strikes(p), old.strikes(p));
            }
        }
    }
}

#[test]
fn a_remote_peer_is_asked_only_for_what_no_local_peer_holds() {
    // 8 pieces. Peer 1 (ours) holds 0..4, peer 2 (remote) holds everything; hinted: 4 and 5.
    let mut p: Picker<u32> = Picker::new(Bitfield::new(8), 3);
    let mut local = Bitfield::new(8);
    (0..4).for_each(|i| {
        local.set(PieceIndex(i));
    });
    p.set_remote(2, true);
    assert!(p.add_peer(1, local));
    assert!(p.add_peer(2, Bitfield::full(8)));
    p.set_hints(&[PieceIndex(4), PieceIndex(5)]);
    let mut asked = Vec::new();
    while let Some(r) = p.next_request(2) {
        asked.push(r.piece.0);
    }
    asked.sort_unstable();
    assert_eq!(asked, vec![4, 5], "while our region has pieces for us, only hinted ones cross");
    // Our region's peer has nothing left for us (its pieces in flight) and nothing is in
    // flight across: starving, so the remote peer may be asked for any piece the region lacks.
    while p.next_request(1).is_some() {}
    p.request_failed(2, PieceIndex(4));
    p.request_failed(2, PieceIndex(5));
    p.set_hints(&[]);
    let r = p.next_request(2).expect("a starving download fetches across at once");
    assert!(r.piece.0 >= 4, "{r:?}");
    assert_eq!(p.next_request(2), None, "one unhinted request across at a time");
    // The local peer leaves: what it held may now come from the remote peer.
    p.request_failed(2, r.piece);
    p.remove_peer(1);
    let mut asked = Vec::new();
    while let Some(r) = p.next_request(2) {
        asked.push(r.piece.0);
        p.request_failed(2, r.piece);
        p.piece_verified(2, r.piece);
    }
    asked.sort_unstable();
    assert_eq!(asked, (0..8).collect::<Vec<_>>(), "nothing is withheld once no local peer has it");
    p.pieces.check();
    // Marking the peer as ours again lifts the rule; marking after adding counts the same.
    let mut q: Picker<u32> = Picker::new(Bitfield::new(2), 1);
    let mut one = Bitfield::new(2);
    one.set(PieceIndex(0));
    q.add_peer(1, one);
    q.add_peer(2, Bitfield::full(2));
    q.set_remote(2, true);
    assert_eq!(q.next_request(2), None, "piece 0 is ours to share, piece 1 unhinted");
    q.set_remote(2, false);
    assert!(q.next_request(2).is_some());
}

#[test]
fn a_second_copy_crosses_a_border_only_once_nothing_is_left_unrequested() {
    // 4 pieces, hinted 0 and 1. Remote peers 2 and 3 hold everything; local peer 1 holds 3.
    let mut p: Picker<u32> = Picker::new(Bitfield::new(4), 5);
    p.set_remote(2, true);
    p.set_remote(3, true);
    let mut three = Bitfield::new(4);
    three.set(PieceIndex(3));
    p.add_peer(1, three);
    p.add_peer(2, Bitfield::full(4));
    p.add_peer(3, Bitfield::full(4));
    p.set_hints(&[PieceIndex(0), PieceIndex(1)]);
    let a = p.next_request(2).unwrap();
    let b = p.next_request(3).unwrap();
    assert!(!a.endgame && !b.endgame && a.piece != b.piece, "{a:?} {b:?}");
    // Piece 3 (held in our region) is still unrequested: no second copy of 0 or 1 across,
    // where a local peer would be sent one (endgame) by the old rule.
    assert_eq!(p.next_request(2), None);
    assert_eq!(p.next_request(3), None);
    // Piece 3 requested from our region: piece 2 (unhinted, so not asked across while
    // requests are in flight across) is still fresh, so nothing is duplicated across.
    let local = p.next_request(1).unwrap();
    assert_eq!(local.piece, PieceIndex(3));
    assert_eq!(p.next_request(2), None, "piece 2 is fresh: nothing is duplicated across");
    // Everything in flight arrives and the tracker hands us piece 2: it crosses, and then,
    // with nothing left unrequested, the endgame proper may send a second copy across.
    for (peer, r) in [(1, local), (2, a), (3, b)] {
        p.piece_verified(peer, r.piece);
    }
    p.set_hints(&[PieceIndex(2)]);
    let c = p.next_request(2).unwrap();
    assert_eq!((c.piece, c.endgame), (PieceIndex(2), false));
    let d = p.next_request(3).expect("every piece requested: a second copy may cross");
    assert!(d.endgame, "{d:?}");
    p.pieces.check();
}

#[test]
fn a_local_peer_that_fails_a_piece_or_backs_off_no_longer_holds_remote_peers_back() {
    // Peer 1 (ours) claims everything; peer 2 (remote) holds everything; piece 0 hinted.
    let mut p: Picker<u32> = Picker::new(Bitfield::new(4), 9);
    p.set_remote(2, true);
    p.add_peer(1, Bitfield::full(4));
    p.add_peer(2, Bitfield::full(4));
    p.set_hints(&[PieceIndex(0), PieceIndex(1)]);
    assert_eq!(p.next_request(2), None, "everything is held in our region");
    // Peer 1 fails piece 0 (it lied about holding it): piece 0 may now cross.
    let r = p.next_request(1).unwrap();
    assert_eq!(p.piece_failed(1, r.piece), Verdict::Strike(1));
    let got = p.next_request(2).map(|r| r.piece);
    assert_eq!(got, Some(r.piece), "the piece a local peer failed comes from outside");
    // Peer 1 answers Busy and backs off: while benched, hinted pieces cross too.
    while p.next_request(1).is_some() {}
    for i in 0..4 {
        p.request_failed(1, PieceIndex(i));
    }
    p.set_benched(1, true);
    let other = if r.piece.0 == 0 { 1 } else { 0 };
    assert_eq!(p.next_request(2).map(|r| r.piece.0), Some(other), "the other hinted piece");
    assert_eq!(p.next_request(2), None, "unhinted ones wait while requests cross");
    // Nothing in flight across and our region's only peer benched: starving, so an unhinted
    // piece crosses at once.
    p.request_failed(2, PieceIndex(other));
    p.request_failed(2, got.unwrap());
    p.set_hints(&[]);
    assert!(p.next_request(2).is_some(), "a starving download fetches an unhinted piece across");
    assert_eq!(p.next_request(2), None, "one at a time");
    // Back from its backoff, it counts again; the counts survive a full cycle.
    p.set_benched(1, false);
    p.remove_peer(1);
    p.remove_peer(2);
    assert!(p.local.iter().all(|&l| l == 0), "{:?}", p.local);
    p.pieces.check();
}
