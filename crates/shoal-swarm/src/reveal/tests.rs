use std::collections::BTreeSet;
use std::time::Duration;

use super::*;

fn config(per_peer: usize) -> Config {
    Config {
        per_peer,
        budget: 64,
        max_peers: 4,
        min_peers: 0,
        deadline: Duration::from_secs(3),
        send_deadline: Duration::from_secs(5),
        stall: Duration::from_secs(60),
        guard: Duration::ZERO,
        guard_share: 0.0,
        max_guard: Duration::from_secs(3600),
        // A leaver's pieces are all taken as lost, however long it held them (tests of the
        // spread rule set it themselves).
        spread_after: Duration::MAX,
    }
}

fn ones(b: &Bitfield) -> Vec<PieceIndex> {
    b.iter_ones().collect()
}

fn events(r: &mut Reveal<u32>) -> Vec<Event<u32>> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

#[test]
fn subscribers_are_shown_distinct_pieces_and_one_more_per_piece_sent() {
    let t0 = Instant::now();
    let mut r = Reveal::new(config(2), 8, 7);
    let a = ones(&r.subscribe(t0, 1));
    let b = ones(&r.subscribe(t0, 2));
    assert_eq!((a.len(), b.len()), (2, 2));
    assert!(a.iter().all(|p| !b.contains(p)), "distinct: {a:?} {b:?}");
    // Subscribing again shows the same view, not new pieces.
    assert_eq!(ones(&r.subscribe(t0, 1)), a);
    r.handle_requested(t0, 1, a[0]);
    r.handle_sent(t0, 1, a[0]);
    let shown = events(&mut r);
    assert_eq!(shown.len(), 1);
    let Event::Show { peer: 1, piece } = shown[0] else { panic!("{shown:?}") };
    assert!(!a.contains(&piece) && !b.contains(&piece), "a piece nobody saw: {piece:?}");
}

#[test]
fn every_piece_sent_once_ends_the_mode_and_shows_everything() {
    let t0 = Instant::now();
    let mut r = Reveal::new(config(3), 5, 1);
    let mut sent = 0;
    // One subscriber takes whatever it is shown until every piece has left once.
    let mut view = ones(&r.subscribe(t0, 9));
    while !r.is_done() {
        let p = view.pop().expect("something shown while pieces are unsent");
        r.handle_sent(t0, 9, p);
        sent += 1;
        for e in events(&mut r) {
            match e {
                Event::Show { peer: 9, piece } => view.push(piece),
                Event::ShowAll => assert!(r.is_done()),
                e => panic!("{e:?}"),
            }
        }
    }
    assert_eq!(sent, 5, "each piece once");
    assert!(r.subscribe(t0, 10).is_complete(), "a later subscriber sees everything");
    assert_eq!(r.peers(), 0, "no per-peer state left");
}

#[test]
fn a_piece_left_unrequested_is_hidden_again_and_shown_to_another() {
    let t0 = Instant::now();
    let mut r = Reveal::new(config(4), 4, 3);
    let hoarded = ones(&r.subscribe(t0, 1));
    assert_eq!(hoarded.len(), 4);
    assert!(ones(&r.subscribe(t0, 2)).is_empty(), "nothing left to show");
    r.handle_requested(t0, 1, hoarded[0]);
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    r.handle_timeout(t0 + Duration::from_secs(3));
    let shown: BTreeSet<PieceIndex> = events(&mut r)
        .into_iter()
        .map(|e| match e {
            Event::Show { peer: 2, piece } => piece,
            e => panic!("only the waiting subscriber is shown more: {e:?}"),
        })
        .collect();
    assert_eq!(shown, hoarded[1..].iter().copied().collect(), "the three unrequested ones");
    // The one asked for and never sent (its peer vanished) goes at the send deadline.
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    r.handle_timeout(t0 + Duration::from_secs(5));
    assert!(!ones(&r.subscribe(t0, 1)).contains(&hoarded[0]) || r.is_done());
}

#[test]
fn a_subscriber_gone_gives_its_pieces_back_and_views_are_bounded() {
    let t0 = Instant::now();
    let mut r = Reveal::new(config(2), 64, 5);
    for p in 0..6 {
        r.subscribe(t0, p);
    }
    assert_eq!(r.peers(), 4, "max_peers");
    assert!(ones(&r.subscribe(t0, 5)).is_empty(), "beyond the cap: nothing shown");
    let first = ones(&r.subscribe(t0, 0));
    r.unsubscribe(t0, 0);
    assert_eq!(r.peers(), 3);
    // Its pieces are hidden again: a new subscriber can be shown them.
    let again = ones(&r.subscribe(t0, 7));
    assert_eq!(again.len(), 2);
    assert!(first.iter().any(|p| again.contains(p)) || first != again);
    // Out-of-range pieces and unknown peers change nothing.
    r.handle_sent(t0, 42, PieceIndex(1000));
    r.handle_requested(t0, 42, PieceIndex(3));
    r.unsubscribe(t0, 42);
    assert!(events(&mut r).is_empty());
}

#[test]
fn a_request_that_ends_unsent_or_a_copy_pushed_elsewhere_frees_the_piece() {
    let t0 = Instant::now();
    let mut r = Reveal::new(config(1), 4, 11);
    let a = ones(&r.subscribe(t0, 1));
    let b = ones(&r.subscribe(t0, 2));
    r.handle_requested(t0, 1, a[0]);
    // Peer 1 cancels (it had the piece from elsewhere): the piece goes to nobody's view at
    // once but back among the hidden, and peer 1 is shown another one.
    r.handle_abandoned(t0, 1, a[0]);
    let shown = events(&mut r);
    assert_eq!(shown.len(), 1, "{shown:?}");
    let Event::Show { peer: 1, piece } = shown[0] else { panic!("{shown:?}") };
    assert!(!b.contains(&piece));
    // Abandoning a piece it was not shown changes nothing.
    r.handle_abandoned(t0, 1, a[0]);
    assert!(events(&mut r).is_empty());
    // Pushed into storage: never shown again; all four gone ends the mode.
    for p in 0..4 {
        r.handle_copied(t0, PieceIndex(p));
    }
    assert!(r.is_done());
    assert_eq!(events(&mut r), vec![Event::ShowAll]);
}

#[test]
fn a_lone_subscriber_that_never_asks_is_shown_every_unsent_piece_in_turn() {
    // It has them from another source (the seed never hears of its haves): the seed must not
    // show it the same pieces for ever, or a piece only the seed has would never be shown.
    let t0 = Instant::now();
    let mut r = Reveal::new(Config { budget: 2, ..config(8) }, 8, 9);
    let mut seen: BTreeSet<PieceIndex> = ones(&r.subscribe(t0, 1)).into_iter().collect();
    let mut t = t0;
    for _ in 0..3 {
        t = r.poll_timeout().expect("a shown piece is due");
        r.handle_timeout(t);
        for e in events(&mut r) {
            let Event::Show { peer: 1, piece } = e else { panic!("{e:?}") };
            seen.insert(piece);
        }
    }
    assert_eq!(seen.len(), 8, "every piece shown within four rounds: {seen:?}");
    assert!(t <= t0 + Duration::from_secs(9));
}

#[test]
fn the_first_subscribers_see_everything_until_a_crowd_forms() {
    let t0 = Instant::now();
    let mut r = Reveal::new(Config { min_peers: 2, ..config(2) }, 16, 4);
    assert!(r.subscribe(t0, 1).is_complete());
    assert!(r.subscribe(t0, 2).is_complete());
    assert!(r.subscribe(t0, 1).is_complete(), "still whole");
    // A whole-view subscriber's pieces count as sent.
    r.handle_sent(t0, 1, PieceIndex(0));
    assert!(events(&mut r).is_empty());
    // A third comes: it is shown its view, and the first two are narrowed to theirs.
    let third = ones(&r.subscribe(t0, 3));
    assert_eq!(third.len(), 2);
    let narrowed = events(&mut r);
    assert_eq!(narrowed, vec![Event::Narrow { peer: 1 }, Event::Narrow { peer: 2 }]);
    let (v1, v2) = (ones(&r.view(1)), ones(&r.view(2)));
    assert_eq!((v1.len(), v2.len()), (2, 2));
    let all: BTreeSet<PieceIndex> = v1.iter().chain(&v2).chain(&third).copied().collect();
    assert_eq!(all.len(), 6, "distinct views: {v1:?} {v2:?} {third:?}");
    assert!(!all.contains(&PieceIndex(0)), "a piece sent is never shown");
    assert_eq!(ones(&r.subscribe(t0, 1)), v1, "subscribing again gives the same view");
    // Once every piece has left, everyone sees everything again.
    for p in 1..16 {
        r.handle_sent(t0, 3, PieceIndex(p));
    }
    assert!(r.view(1).is_complete() && r.view(3).is_complete());
}

#[test]
fn a_piece_asked_outside_a_view_is_shown_to_nobody_until_that_request_ends() {
    let t0 = Instant::now();
    let mut r = Reveal::new(Config { min_peers: 1, ..config(1) }, 4, 5);
    assert!(r.subscribe(t0, 1).is_complete());
    // Subscriber 1 sees everything and asks for the first piece it likes.
    r.handle_requested(t0, 1, PieceIndex(2));
    // The next three are shown one piece each: never piece 2 while that request lasts.
    let mut shown = BTreeSet::new();
    for peer in 2..=4 {
        shown.extend(ones(&r.subscribe(t0, peer)));
    }
    let _ = events(&mut r);
    assert!(!shown.contains(&PieceIndex(2)), "{shown:?}");
    // The request ends unsent: piece 2 is shown again, to a subscriber whose view is short.
    let freed = *shown.iter().next().unwrap();
    let holder = (2..=4).find(|&p| r.view(p).get(freed)).unwrap();
    r.handle_requested(t0, holder, freed);
    r.handle_sent(t0, holder, freed);
    let _ = events(&mut r);
    r.handle_abandoned(t0, 1, PieceIndex(2));
    let again = events(&mut r);
    let shown_again = again.iter().any(|e| matches!(e, Event::Show { piece: PieceIndex(2), .. }));
    assert!(shown_again, "{again:?}");
    assert!(!r.was_sent(PieceIndex(2)));
}

#[test]
fn a_piece_asked_outside_a_view_is_held_back_only_until_its_deadline_and_never_by_strangers() {
    let t0 = Instant::now();
    let config = Config { min_peers: 1, send_deadline: Duration::from_secs(5), ..config(1) };
    let mut r = Reveal::new(config, 8, 2);
    assert!(r.subscribe(t0, 1).is_complete());
    // A stranger (never subscribed) asks for a piece: it is served, but holds nothing back.
    r.handle_requested(t0, 99, PieceIndex(5));
    // The whole-view subscriber asks for two; it may hold one back (`per_peer`).
    r.handle_requested(t0, 1, PieceIndex(6));
    r.handle_requested(t0, 1, PieceIndex(7));
    // What is left behind: one piece held for the subscriber, none for the stranger.
    assert_eq!((r.held.count(Holder::Peer(1)), r.held.count(Holder::Peer(99))), (1, 0));
    let mut seen = BTreeSet::new();
    for peer in 2..=4 {
        seen.extend(ones(&r.subscribe(t0, peer)));
    }
    seen.extend(ones(&r.view(1)));
    let _ = events(&mut r);
    assert!(!seen.contains(&PieceIndex(6)), "held back: {seen:?}");
    // The request is never sent: at its deadline the piece goes back to be shown.
    let due = r.poll_timeout().expect("a deadline");
    assert!(due <= t0 + Duration::from_secs(5));
    // Views are full meanwhile (one piece each): it is shown once a view has room, as
    // unasked pieces are hidden again in turn.
    let mut t = t0;
    let mut shown_again = false;
    while !shown_again && t < t0 + Duration::from_secs(20) {
        t = r.poll_timeout().expect("a deadline");
        r.handle_timeout(t);
        shown_again |=
            events(&mut r).iter().any(|e| matches!(e, Event::Show { piece: PieceIndex(6), .. }));
    }
    assert!(shown_again, "shown to a subscriber once its request was due");
    assert_eq!(r.held.count(Holder::Peer(1)), 0, "nothing held back past its deadline");
}

#[test]
fn a_mode_without_progress_ends_and_shows_everything() {
    // Subscribers that take what they are shown and never ask (sybils) hold the first copy
    // back: after `stall` without a piece leaving, everything is shown to everyone.
    let t0 = Instant::now();
    let mut r = Reveal::new(Config { stall: Duration::from_secs(10), ..config(2) }, 16, 6);
    let _ = r.subscribe(t0, 1);
    r.handle_sent(t0, 1, PieceIndex(3));
    let _ = events(&mut r);
    let mut t = t0;
    while !r.is_done() {
        t = r.poll_timeout().expect("a deadline while the mode lasts");
        assert!(t <= t0 + Duration::from_secs(10), "no later than the stall limit");
        r.handle_timeout(t);
    }
    assert!(events(&mut r).contains(&Event::ShowAll));
    assert!(r.subscribe(t, 2).is_complete());
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn a_piece_counts_as_sent_once_a_copy_left_whichever_way() {
    let t0 = Instant::now();
    let mut r = Reveal::new(config(2), 4, 3);
    let shown = ones(&r.subscribe(t0, 1));
    assert!((0..4).all(|p| !r.was_sent(PieceIndex(p))));
    r.handle_requested(t0, 1, shown[0]);
    r.handle_sent(t0, 1, shown[0]);
    let other = (0..4).map(PieceIndex).find(|p| !shown.contains(p)).unwrap();
    r.handle_copied(t0, other);
    assert!(r.was_sent(shown[0]) && r.was_sent(other));
    assert!(!r.was_sent(shown[1]), "shown is not sent");
    // A request that ended unsent leaves the piece unsent; out of range is never sent.
    r.handle_requested(t0, 1, shown[1]);
    r.handle_abandoned(t0, 1, shown[1]);
    assert!(!r.was_sent(shown[1]) && !r.was_sent(PieceIndex(9)));
}

/// Every piece `r` announces from now on (haves, and the views of narrowed subscribers).
fn shown(r: &mut Reveal<u32>) -> BTreeSet<PieceIndex> {
    let mut out = BTreeSet::new();
    for e in events(r) {
        match e {
            Event::Show { piece, .. } => {
                out.insert(piece);
            }
            Event::Narrow { peer } => out.extend(ones(&r.view(peer))),
            Event::ShowAll => out.extend((0..r.pieces).map(PieceIndex)),
        }
    }
    out
}

#[test]
fn a_piece_claimed_for_a_push_is_shown_to_nobody_until_the_push_ends_or_its_deadline() {
    let t0 = Instant::now();
    // 8 pieces, views of two, at most two claims at once (`per_peer`).
    let mut r = Reveal::new(config(2), 8, 3);
    let view = ones(&r.subscribe(t0, 1));
    assert_eq!(view.len(), 2);
    // Shown to a subscriber (it may be asking for them now): not claimed, the push waits.
    assert!(
        view.iter().all(|&p| r.claim(t0, p).is_none()),
        "a shown piece is left to the subscriber"
    );
    let hidden: Vec<PieceIndex> = (0..8).map(PieceIndex).filter(|p| !view.contains(p)).collect();
    let (first, second) = (r.claim(t0, hidden[0]), r.claim(t0, hidden[1]));
    let second = second.expect("shown to nobody");
    assert!(first.is_some());
    // The worst a caller can do: claim more than its share, the same piece twice, a piece
    // past the end. Each is refused and leaves nothing behind.
    assert!(r.claim(t0, hidden[2]).is_none(), "at most `per_peer` claims at once");
    assert!(r.claim(t0, hidden[0]).is_none(), "claimed already");
    assert!(r.claim(t0, PieceIndex(8)).is_none(), "past the end");
    assert_eq!(r.held.count(Holder::Push), 2);
    // Subscribers come and take every other piece in turn: never the claimed ones.
    let mut seen: BTreeSet<PieceIndex> = view.iter().copied().collect();
    for peer in 2..=4 {
        seen.extend(ones(&r.subscribe(t0, peer)));
    }
    for &p in &view {
        r.handle_requested(t0, 1, p);
        r.handle_sent(t0, 1, p);
    }
    seen.extend(shown(&mut r));
    assert!(!seen.contains(&hidden[0]) && !seen.contains(&hidden[1]), "{seen:?}");
    // The first push lands: a copy is out, never shown again. The second fails: it may be
    // shown again, to a subscriber whose view has room.
    r.handle_copied(t0, hidden[0]);
    assert!(r.was_sent(hidden[0]));
    r.handle_unclaimed(t0, second);
    assert!(!r.was_sent(hidden[1]));
    assert_eq!(r.held.count(Holder::Push), 0);
    // Once every piece left once, a push takes anything.
    for p in (0..8).map(PieceIndex) {
        r.handle_copied(t0, p);
    }
    assert!(r.is_done() && r.claim(t0, PieceIndex(0)).is_some());

    // A claim whose push never reports back ends at `send_deadline`, and the piece is shown.
    let mut r = Reveal::new(config(2), 8, 3);
    r.claim(t0, PieceIndex(5)).expect("shown to nobody");
    let seen = ones(&r.subscribe(t0, 1));
    assert!(!seen.contains(&PieceIndex(5)));
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(3)), "the view's deadline first");
    let mut t = t0;
    let mut shown_again = false;
    while !shown_again && t < t0 + Duration::from_secs(20) {
        t = r.poll_timeout().expect("a deadline");
        r.handle_timeout(t);
        shown_again |= shown(&mut r).contains(&PieceIndex(5));
    }
    assert!(shown_again && t >= t0 + Duration::from_secs(5), "shown once its claim was due");
    assert_eq!(r.held.count(Holder::Push), 0, "nothing claimed past its deadline");

    // A lapsed claim, made again by another push: the first push, failing late, gives back
    // only its own claim, not the second one's.
    let mut r: Reveal<u32> = Reveal::new(config(2), 8, 3);
    let lapsed = r.claim(t0, PieceIndex(5)).expect("shown to nobody");
    let t1 = t0 + Duration::from_secs(5);
    r.handle_timeout(t1);
    let again = r.claim(t1, PieceIndex(5)).expect("hidden again after its deadline");
    r.handle_unclaimed(t1, lapsed);
    assert_eq!(r.held.entry(PieceIndex(5)).map(|(h, _)| h), Some(Holder::Push), "still claimed");
    r.handle_unclaimed(t1, again);
    assert_eq!(r.held.entry(PieceIndex(5)), None);
}

fn guarded(per_peer: usize) -> Config {
    Config { guard: Duration::from_secs(10), guard_share: 1.0, ..config(per_peer) }
}

#[test]
fn after_the_first_copy_only_pieces_nobody_keeps_are_shown_until_the_guard_ends() {
    let t0 = Instant::now();
    let mut r = Reveal::new(guarded(8), 8, 1);
    let _ = r.subscribe(t0, 1);
    let _ = r.subscribe(t0, 2);
    // The first copy takes 20 s: pieces 0-3 go to subscriber 1, 4-6 to 2, 7 to a stranger.
    let t1 = t0 + Duration::from_secs(20);
    for p in 0..8 {
        let to = match p {
            0..4 => 1,
            4..7 => 2,
            _ => 99,
        };
        // The first piece at once, the rest 20 s later.
        r.handle_sent(if p == 0 { t0 } else { t1 }, to, PieceIndex(p));
    }
    assert!(r.is_done() && !r.is_over(), "the first copy is out, the guard begins");
    let first = shown(&mut r);
    assert_eq!(first, BTreeSet::from([PieceIndex(7)]), "only the stranger's piece");
    assert!(ones(&r.view(1)).iter().chain(&ones(&r.view(2))).all(|&p| p == PieceIndex(7)));
    // Subscriber 2 leaves: what it alone was sent is shown to the others.
    r.unsubscribe(t1 + Duration::from_secs(1), 2);
    let again = shown(&mut r);
    assert!((4..7).all(|p| again.contains(&PieceIndex(p))), "{again:?}");
    assert!((0..4).all(|p| !again.contains(&PieceIndex(p))), "1 still keeps 0-3: {again:?}");
    // Piece 4 sent to 1 (kept again), piece 5 pushed into storage (kept for good).
    let t2 = t1 + Duration::from_secs(2);
    r.handle_sent(t2, 1, PieceIndex(4));
    r.handle_copied(t2, PieceIndex(5));
    r.unsubscribe(t2, 1);
    let _ = events(&mut r);
    let view = ones(&r.subscribe(t2, 3));
    let expect: Vec<PieceIndex> = [0, 1, 2, 3, 4, 6, 7].map(PieceIndex).to_vec();
    assert_eq!(view, expect, "all but the stored piece 5");
    // The guard lasts as long as the first copy took from its first piece (20 s, more than
    // `guard`).
    assert_eq!(r.poll_timeout().map(|t| t <= t1 + Duration::from_secs(20)), Some(true));
    r.handle_timeout(t1 + Duration::from_secs(19));
    assert!(!r.is_over());
    assert!(!events(&mut r).contains(&Event::ShowAll));
    let mut t = t1;
    while !r.is_over() {
        t = r.poll_timeout().expect("the guard's end");
        r.handle_timeout(t);
    }
    assert_eq!(t, t1 + Duration::from_secs(20));
    assert!(events(&mut r).contains(&Event::ShowAll));
    assert!(r.subscribe(t, 4).is_complete());
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn a_piece_wanted_by_a_subscriber_that_went_away_is_shown_first_while_guarding() {
    let t0 = Instant::now();
    let mut r = Reveal::new(guarded(1), 8, 2);
    let _ = r.subscribe(t0, 1);
    let _ = r.subscribe(t0, 2);
    for p in 0..8 {
        r.handle_sent(t0, 1, PieceIndex(p));
    }
    let _ = events(&mut r);
    // 1 leaves with every piece: all eight may be lost; 2 is shown one and asks for it.
    r.unsubscribe(t0, 1);
    let _ = events(&mut r);
    let x = ones(&r.view(2));
    assert_eq!(x.len(), 1);
    r.handle_requested(t0, 2, x[0]);
    // 2 goes away before it is sent (a fetch rotating this node out): the next one is shown it.
    r.unsubscribe(t0, 2);
    assert_eq!(ones(&r.subscribe(t0, 3)), x, "the wanted piece first");
    // 3 never asks and goes: the piece goes last. Then sent to a peer that is no subscriber
    // (gone meanwhile): likely lost, so first again.
    r.unsubscribe(t0, 3);
    assert_ne!(ones(&r.subscribe(t0, 4)), x);
    r.unsubscribe(t0, 4);
    r.handle_sent(t0, 7, x[0]);
    assert_eq!(ones(&r.subscribe(t0, 5)), x);
}

#[test]
fn the_guard_ends_at_its_longest_and_shows_each_piece_to_one_subscriber_at_a_time() {
    let t0 = Instant::now();
    let config = Config { max_guard: Duration::from_secs(30), ..guarded(1) };
    let mut r = Reveal::new(config, 4, 3);
    let _ = r.subscribe(t0, 1);
    // A first copy of 100 s (one piece at a time, to one subscriber that keeps everything).
    for p in 0..4 {
        r.handle_sent(t0 + Duration::from_secs(25 * (p + 1)), 1, PieceIndex(p as u32));
    }
    let t1 = t0 + Duration::from_secs(100);
    // Three more subscribers, then 1 leaves: its four pieces are shown, one to each.
    for p in 2..5 {
        let _ = r.subscribe(t1, p);
    }
    r.unsubscribe(t1, 1);
    let _ = events(&mut r);
    let views: Vec<Vec<PieceIndex>> = (2..5).map(|p| ones(&r.view(p))).collect();
    let shown: BTreeSet<PieceIndex> = views.iter().flatten().copied().collect();
    assert_eq!(shown.len(), 3, "three distinct pieces, one per view: {views:?}");
    // 2 asks for the piece shown to 3 (outside its own view), is sent it and leaves: that
    // piece is kept by nobody again, yet stays in 3's view only.
    let x = views[1][0];
    r.handle_sent(t1, 2, x);
    r.unsubscribe(t1, 2);
    for p in 5..8 {
        let _ = r.subscribe(t1, p);
    }
    let _ = events(&mut r);
    let all: Vec<PieceIndex> = (3..8).flat_map(|p| ones(&r.view(p))).collect();
    let distinct: BTreeSet<PieceIndex> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "one subscriber per piece: {all:?}");
    assert!(ones(&r.view(3)).contains(&x));
    // Guarded for at most `max_guard` (not the 100 s the first copy took).
    assert_eq!(r.poll_timeout().map(|t| t <= t1 + Duration::from_secs(30)), Some(true));
    r.handle_timeout(t1 + Duration::from_secs(30));
    assert!(r.is_over());
}

#[test]
fn a_push_while_guarding_holds_back_a_piece_that_was_to_be_shown() {
    let t0 = Instant::now();
    let mut r = Reveal::new(guarded(1), 4, 5);
    let _ = r.subscribe(t0, 1);
    for p in 0..4 {
        r.handle_sent(t0, 1, PieceIndex(p));
    }
    r.unsubscribe(t0, 1);
    let _ = events(&mut r);
    // Nobody subscribed: all four wait to be shown. A push claims one: the next subscriber
    // is shown another.
    let claim = r.claim(t0, PieceIndex(2)).expect("always a claim once the first copy is out");
    let view = ones(&r.subscribe(t0, 2));
    assert_eq!(view.len(), 1);
    assert_ne!(view[0], PieceIndex(2), "claimed: shown to nobody");
    // The push failed: the piece may be shown again; pushed, it would be kept for good.
    r.handle_unclaimed(t0, claim);
    r.unsubscribe(t0, 2);
    let _ = r.subscribe(t0, 3);
    let claim = r.claim(t0, PieceIndex(2)).expect("a claim");
    r.handle_copied(t0, claim.piece());
    r.unsubscribe(t0, 3);
    for p in 4..8 {
        assert!(!ones(&r.subscribe(t0, p)).contains(&PieceIndex(2)), "stored: never shown");
    }
}

#[test]
fn a_leaver_that_held_its_pieces_a_while_passed_them_on_one_that_left_at_once_did_not() {
    let t0 = Instant::now();
    let config = Config { spread_after: Duration::from_secs(2), ..guarded(8) };
    let mut r = Reveal::new(config, 8, 1);
    for peer in [1, 2, 3] {
        let _ = r.subscribe(t0, peer);
    }
    // Pieces 0-3 reach subscriber 1 at once, 4-7 reach subscriber 2 as the first copy ends
    // at 20 s; subscriber 3 was sent nothing.
    let t1 = t0 + Duration::from_secs(20);
    for p in 0..8 {
        let (at, to) = if p < 4 { (t0, 1) } else { (t1, 2) };
        r.handle_sent(at, to, PieceIndex(p));
    }
    assert!(r.is_done() && !r.is_over());
    let _ = events(&mut r);
    // Subscriber 1 leaves after holding 0-3 for 21 s: it had time to pass them on, so they
    // are not sent again. Subscriber 2 leaves 1 s after its pieces came: they are lost with it.
    let t2 = t1 + Duration::from_secs(1);
    r.unsubscribe(t2, 1);
    r.unsubscribe(t2, 2);
    let again = shown(&mut r);
    assert!((0..4).all(|p| !again.contains(&PieceIndex(p))), "passed on: {again:?}");
    assert!((4..8).all(|p| again.contains(&PieceIndex(p))), "lost: {again:?}");
    let view = ones(&r.view(3));
    assert!(view.iter().all(|p| p.0 >= 4), "only the lost pieces: {view:?}");
}
