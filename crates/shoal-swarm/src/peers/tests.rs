//! Unit tests of [`PeerSet`]: each rule driven step by step with simulated time.

use std::time::{Duration, Instant};

use super::*;

type Set = PeerSet<u32, u32>;

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

fn drain(s: &mut Set, now: Instant) -> Vec<Action<u32, u32>> {
    std::iter::from_fn(|| s.poll_action(now)).collect()
}

/// A set with peers `ids` connected (address = id) and the manifest known: `pieces` pieces.
fn started(t0: Instant, ids: &[u32], pieces: u32) -> Set {
    let mut s = Set::new(Config::default(), 7);
    for &id in ids {
        s.add_candidate(t0, id, Some(id));
    }
    drain(&mut s, t0);
    for &id in ids {
        assert_eq!(s.handle_dialed(t0, id, Some(id)), Admit::Accepted);
    }
    s.start(t0, Bitfield::new(pieces), 8);
    s
}

fn requests(actions: &[Action<u32, u32>], peer: u32) -> Vec<PieceIndex> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Request { peer: p, piece } if p == peer => Some(piece),
            _ => None,
        })
        .collect()
}

#[test]
fn manifest_is_asked_of_four_at_once_and_the_first_valid_answer_cancels_the_rest() {
    let t0 = Instant::now();
    let mut s = Set::new(Config::default(), 1);
    for id in 0..6 {
        s.add_candidate(t0, id, Some(id));
    }
    let dials = drain(&mut s, t0);
    assert_eq!(dials.len(), 6);
    for id in 0..6 {
        s.handle_dialed(t0, id, Some(id));
    }
    let asks = drain(&mut s, t0);
    assert_eq!(asks, (0..4).map(Action::AskManifest).collect::<Vec<_>>());
    // Peer 1 lies: banned, and peer 4 is asked in its place.
    s.handle_manifest(ms(t0, 1), 1, ManifestReply::Invalid);
    let next = drain(&mut s, ms(t0, 1));
    assert_eq!(
        next,
        vec![Action::Close { peer: 1, reason: DropReason::Banned }, Action::AskManifest(4)]
    );
    s.handle_manifest(ms(t0, 2), 2, ManifestReply::Valid);
    let cancels = drain(&mut s, ms(t0, 2));
    let want: Vec<_> = [0, 3, 4].into_iter().map(Action::CancelManifest).collect();
    assert_eq!(cancels, want);
    // The liar is never admitted again, even long after.
    let later = ms(t0, 3_600_000);
    s.add_candidate(later, 1, Some(1));
    assert!(drain(&mut s, later).is_empty());
    assert_eq!(s.handle_dialed(later, 99, Some(1)), Admit::Refused);
    assert_eq!(s.undelivered(), vec![1]);
}

#[test]
fn a_silent_manifest_peer_is_dropped_at_its_deadline_and_the_round_ends_when_nobody_is_left() {
    let t0 = Instant::now();
    let mut s = Set::new(Config::default(), 1);
    s.add_candidate(t0, 0, None);
    drain(&mut s, t0);
    s.handle_dialed(t0, 0, Some(10));
    assert_eq!(drain(&mut s, t0), vec![Action::AskManifest(10)]);
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + Config::default().manifest_deadline);
    s.handle_timeout(due - Duration::from_millis(1));
    assert!(!s.manifest_exhausted());
    s.handle_timeout(due);
    assert_eq!(
        drain(&mut s, due),
        vec![Action::Close { peer: 10, reason: DropReason::ManifestTimeout }]
    );
    assert!(s.manifest_exhausted());
}

#[test]
fn no_bitfield_in_time_drops_the_peer() {
    let t0 = Instant::now();
    let mut s = started(t0, &[1, 2], 4);
    assert_eq!(drain(&mut s, t0), vec![Action::Subscribe(1), Action::Subscribe(2)]);
    s.handle_bitfield(ms(t0, 5), 2, Bitfield::full(4));
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + Config::default().bitfield_deadline);
    s.handle_timeout(due);
    let actions = drain(&mut s, due);
    assert!(actions.contains(&Action::Close { peer: 1, reason: DropReason::NoBitfield }));
    assert_eq!(s.drop_reason(1), Some(DropReason::NoBitfield));
    assert_eq!(s.drop_reason(2), None);
}

#[test]
fn a_stalled_peer_is_dropped_and_its_pieces_go_to_another() {
    let t0 = Instant::now();
    let mut s = started(t0, &[1], 4);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(4));
    let first = requests(&drain(&mut s, t0), 1);
    assert_eq!(first.len(), 2, "the initial window");
    // Bytes trickle in: progress. Then nothing for the stall deadline.
    let t1 = ms(t0, 5_000);
    s.handle_progress(t1, 1, 100, false);
    s.handle_timeout(ms(t0, 10_000));
    assert!(drain(&mut s, ms(t0, 10_000)).is_empty(), "progressed at 5 s");
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t1 + Config::default().stall_deadline);
    s.handle_timeout(due);
    assert_eq!(drain(&mut s, due), vec![Action::Close { peer: 1, reason: DropReason::Stalled }]);
    // A new peer gets the released pieces.
    s.add_candidate(due, 2, Some(2));
    drain(&mut s, due);
    s.handle_dialed(due, 2, Some(2));
    drain(&mut s, due);
    s.handle_bitfield(due, 2, Bitfield::full(4));
    let again = requests(&drain(&mut s, due), 2);
    assert_eq!(again.len(), 2);
    assert!(first.iter().all(|p| !s.picker().unwrap().have().get(*p)));
    assert_eq!(s.undelivered(), vec![1]);
}

#[test]
fn a_proven_peer_gets_more_patience_before_it_counts_as_stalled() {
    let t0 = Instant::now();
    let c = Config::default();
    let mut s = started(t0, &[1], 8);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(8));
    let r = requests(&drain(&mut s, t0), 1);
    s.handle_piece(t0, 1, r[0], PieceOutcome::Verified, 1);
    drain(&mut s, t0);
    s.handle_timeout(t0 + c.stall_deadline);
    assert!(drain(&mut s, t0 + c.stall_deadline).is_empty());
    assert_eq!(s.poll_timeout(), Some(t0 + c.proven_stall_deadline));
    s.handle_timeout(t0 + c.proven_stall_deadline);
    let closed = drain(&mut s, t0 + c.proven_stall_deadline);
    assert_eq!(closed, vec![Action::Close { peer: 1, reason: DropReason::Stalled }]);
    assert!(s.undelivered().is_empty(), "it delivered once: not reported");
}

#[test]
fn waiting_on_our_own_rate_limit_is_not_a_stall() {
    let t0 = Instant::now();
    let mut s = started(t0, &[1], 4);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(4));
    drain(&mut s, t0);
    for sec in 1..60 {
        let now = ms(t0, sec * 1000);
        s.handle_progress(now, 1, 0, true);
        s.handle_timeout(now);
        assert!(drain(&mut s, now).is_empty(), "dropped at {sec} s");
    }
}

#[test]
fn busy_backs_off_exponentially_with_a_cap_and_a_verified_piece_resets_it() {
    let t0 = Instant::now();
    let c = Config::default();
    let mut s = started(t0, &[1], 64);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(64));
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..10 {
        let reqs = requests(&drain(&mut s, now), 1);
        assert!(!reqs.is_empty(), "asked again once the backoff ended");
        for &r in &reqs {
            s.handle_piece(now, 1, r, PieceOutcome::Busy, 0);
        }
        assert!(drain(&mut s, now).is_empty(), "no request while backing off");
        let until = s.poll_timeout().unwrap();
        waits.push(until - now);
        now = until;
        s.handle_timeout(now);
    }
    // Each wait is the doubled base within the jitter, capped.
    for (i, w) in waits.iter().enumerate() {
        let base = c.busy_backoff.saturating_mul(1 << i.min(16)).min(c.busy_backoff_max);
        assert!(*w >= base.mul_f64(0.75) && *w < base.mul_f64(1.25), "wait {i}: {w:?}");
    }
    assert!(s.connected() == 1 && !s.is_idle(), "a busy peer is kept while it is useful");
    let r = requests(&drain(&mut s, now), 1)[0];
    s.handle_piece(now, 1, r, PieceOutcome::Verified, 1);
    let r = requests(&drain(&mut s, now), 1)[0];
    s.handle_piece(now, 1, r, PieceOutcome::Busy, 0);
    let w = s.poll_timeout().unwrap() - now;
    assert!(w < c.busy_backoff.mul_f64(1.25), "reset after a verified piece: {w:?}");
}

/// A crowded seed: every request waits for an upload slot as long as a serving node lets it
/// (`SLOT_WAIT` in node/src/serve.rs, 5 s) and is then answered `Busy`. It is backed off, never
/// dropped as silent or stalled while it answers, and when rotated out for a waiting candidate
/// it is dropped as `Busy`, never reported in `undelivered()`.
#[test]
fn a_peer_that_answers_busy_repeatedly_is_backed_off_and_never_reported() {
    const SLOT_WAIT: Duration = Duration::from_secs(5);
    let t0 = Instant::now();
    let c = Config { max_connected: 1, ..Config::default() };
    assert!(SLOT_WAIT < c.stall_deadline && SLOT_WAIT < c.manifest_deadline);
    let mut s = Set::new(c.clone(), 11);
    s.add_candidate(t0, 1, Some(1));
    drain(&mut s, t0);
    s.handle_dialed(t0, 1, Some(1));
    s.start(t0, Bitfield::new(16), 4);
    assert_eq!(drain(&mut s, t0), vec![Action::Subscribe(1)]);
    s.handle_bitfield(t0, 1, Bitfield::full(16));
    let mut due: Vec<(Instant, PieceIndex)> = Vec::new();
    let (mut now, mut busy, mut closed) = (t0, 0, None);
    // A candidate turns up after a minute: only then is the seed rotated out for it.
    let candidate_at = t0 + Duration::from_secs(60);
    while closed.is_none() && now < t0 + Duration::from_secs(120) {
        if now >= candidate_at {
            s.add_candidate(now, 2, Some(2));
        }
        let backing_off = s.peers.get(&1).and_then(|p| p.busy_until).filter(|&t| t > now);
        for a in drain(&mut s, now) {
            match a {
                Action::Request { peer: 1, piece } => {
                    assert!(backing_off.is_none(), "asked while backing off at {:?}", now - t0);
                    due.push((now + SLOT_WAIT, piece));
                }
                Action::Close { peer: 1, reason } => closed = Some((now, reason)),
                _ => {}
            }
        }
        let (answered, waiting) = due.into_iter().partition(|&(t, _)| t <= now);
        due = waiting;
        for (_, piece) in answered as Vec<_> {
            s.handle_piece(now, 1, piece, PieceOutcome::Busy, 0);
            busy += 1;
        }
        now += Duration::from_millis(250);
        s.handle_timeout(now);
    }
    let (at, reason) = closed.expect("rotated out for the waiting candidate");
    assert!(at >= candidate_at, "dropped before any candidate waited: {reason:?}");
    assert_eq!(reason, DropReason::Busy);
    assert!(busy >= 10, "answered Busy {busy} times");
    assert!(s.undelivered().is_empty(), "a busy seed is never reported: {:?}", s.undelivered());
}

#[test]
fn a_bitfield_resender_is_banned_at_its_second_bad_piece() {
    let t0 = Instant::now();
    let mut s = started(t0, &[1], 16);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(16));
    let r = requests(&drain(&mut s, t0), 1);
    s.handle_piece(t0, 1, r[0], PieceOutcome::Bad, 1);
    s.handle_bitfield(t0, 1, Bitfield::full(16));
    assert_eq!(s.picker().unwrap().strikes(1), 1, "strikes survive a re-sent bitfield");
    s.handle_piece(t0, 1, r[1], PieceOutcome::Bad, 1);
    assert_eq!(drain(&mut s, t0), vec![Action::Close { peer: 1, reason: DropReason::Banned }]);
    s.handle_bitfield(t0, 1, Bitfield::full(16));
    assert!(!s.picker().unwrap().is_connected(1));
}

/// A request that ends `Bad` after its peer was dropped (it stalled with that request in
/// flight) earns the second strike: the ban is recorded, and the peer is never dialed again.
#[test]
fn a_ban_earned_after_the_drop_replaces_the_drop_reason() {
    let t0 = Instant::now();
    let c = Config::default();
    let mut s = started(t0, &[1], 16);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(16));
    let r = requests(&drain(&mut s, t0), 1);
    s.handle_piece(t0, 1, r[0], PieceOutcome::Bad, 1);
    drain(&mut s, t0);
    let due = t0 + c.stall_deadline;
    s.handle_timeout(due);
    assert_eq!(drain(&mut s, due), vec![Action::Close { peer: 1, reason: DropReason::Stalled }]);
    // The request still in flight at the drop ends, bad.
    s.handle_piece(due, 1, r[1], PieceOutcome::Bad, 1);
    assert_eq!(s.drop_reason(1), Some(DropReason::Banned));
    let later = due + c.retry_after * 10;
    s.add_candidate(later, 1, Some(1));
    assert!(drain(&mut s, later).is_empty(), "a banned peer is not dialed again");
    assert_eq!(s.handle_dialed(later, 1, Some(1)), Admit::Refused);
}

/// A dropped peer offered again after its cool-down keeps its record (and its report) while it
/// waits in the queue; connected again, it is no longer reported.
#[test]
fn a_queued_candidate_keeps_its_drop_record_until_it_is_connected() {
    let t0 = Instant::now();
    let c = Config { max_connected: 1, ..Config::default() };
    let mut s = Set::new(c.clone(), 3);
    s.add_candidate(t0, 1, Some(1));
    drain(&mut s, t0);
    s.handle_dialed(t0, 1, Some(1));
    s.start(t0, Bitfield::new(4), 4);
    s.handle_bitfield(t0, 1, Bitfield::full(4));
    drain(&mut s, t0);
    let due = t0 + c.stall_deadline;
    s.handle_timeout(due);
    drain(&mut s, due);
    assert_eq!(s.undelivered(), vec![1]);
    // Peer 2 takes the only slot; peer 1, offered again, waits in the queue.
    let later = due + c.retry_after;
    s.add_candidate(later, 2, Some(2));
    assert_eq!(drain(&mut s, later), vec![Action::Dial { addr: 2, id: Some(2) }]);
    s.add_candidate(later, 1, Some(1));
    assert!(drain(&mut s, later).is_empty());
    assert_eq!(s.undelivered(), vec![1], "still reported while queued");
    // Peer 2's dial fails: peer 1 is dialed and connected.
    s.handle_dialed(later, 2, None);
    assert_eq!(drain(&mut s, later), vec![Action::Dial { addr: 1, id: Some(1) }]);
    assert_eq!(s.handle_dialed(later, 1, Some(1)), Admit::Accepted);
    assert!(s.undelivered().is_empty(), "connected again: no longer reported");
}

/// `max_dropped` bounds every record, bans included: drops that are not bans go first, then
/// the oldest bans. A ban forgotten by the set still holds once pieces are fetched.
#[test]
fn drop_records_are_bounded_and_a_forgotten_ban_still_holds() {
    let t0 = Instant::now();
    let c = Config { max_dropped: 4, max_connected: 64, max_dialing: 64, ..Config::default() };
    let mut s = Set::new(c.clone(), 5);
    // Manifest round: peers 0..6 lie about the manifest (banned), 6..8 are silent.
    for id in 0..8 {
        s.add_candidate(t0, id, Some(id));
    }
    drain(&mut s, t0);
    for id in 0..8 {
        s.handle_dialed(t0, id, Some(id));
    }
    let mut now = t0;
    for id in 0..8 {
        drain(&mut s, now);
        now += Duration::from_millis(1);
        if id < 6 {
            s.handle_manifest(now, id, ManifestReply::Invalid);
        } else {
            s.handle_timeout(now + c.manifest_deadline);
        }
        assert!(s.dropped.len() <= c.max_dropped, "{} records", s.dropped.len());
    }
    // Bans 4 and 5 evicted bans 0 and 1 (every record was a ban); 6's timeout evicted ban 2
    // for the same reason; 7's evicted 6, the oldest drop that is not a ban, before ban 3.
    let kept: Vec<u32> = s.dropped.keys().copied().collect();
    assert_eq!(kept, vec![3, 4, 5, 7]);
    assert_eq!(s.drop_reason(3), Some(DropReason::Banned));
    assert_eq!(s.drop_reason(7), Some(DropReason::ManifestTimeout));
    // Pieces: the manifest round's bans still recorded go to the picker and hold for good
    // (0..3, forgotten after four later drops, are what `max_dropped` gives up).
    s.start(now, Bitfield::new(4), 4);
    let later = now + c.retry_after * 10;
    for id in 3..6 {
        s.add_candidate(later, id, Some(id));
    }
    assert!(drain(&mut s, later).is_empty(), "a banned peer is dialed again");
    // Bad pieces ban more peers than the set remembers; every one stays out.
    for id in 10..20 {
        s.add_candidate(later, id, Some(id));
        drain(&mut s, later);
        s.handle_dialed(later, id, Some(id));
        drain(&mut s, later);
        s.handle_bitfield(later, id, Bitfield::full(4));
        let r = requests(&drain(&mut s, later), id);
        s.handle_piece(later, id, r[0], PieceOutcome::Bad, 1);
        s.handle_piece(later, id, r[1], PieceOutcome::Bad, 1);
        assert_eq!(
            drain(&mut s, later),
            vec![Action::Close { peer: id, reason: DropReason::Banned }]
        );
        assert!(s.dropped.len() <= c.max_dropped);
    }
    let much_later = later + c.retry_after * 10;
    for id in (3..8).chain(10..20) {
        s.add_candidate(much_later, id, Some(id));
    }
    let dials: Vec<_> = drain(&mut s, much_later);
    assert_eq!(
        dials,
        vec![Action::Dial { addr: 6, id: Some(6) }, Action::Dial { addr: 7, id: Some(7) }]
    );
}

#[test]
fn a_bitfield_of_the_wrong_length_is_a_protocol_error() {
    let t0 = Instant::now();
    let mut s = started(t0, &[1], 16);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(17));
    assert_eq!(drain(&mut s, t0), vec![Action::Close { peer: 1, reason: DropReason::Protocol }]);
}

#[test]
fn peers_are_capped_and_the_never_delivering_one_is_rotated_out() {
    let t0 = Instant::now();
    // A grace as long as the stall deadline: a peer rotated out sooner without delivering
    // goes as `Slow` (see the next test).
    let c = Config { rotate_grace: Config::default().stall_deadline, ..Config::default() };
    let mut s = Set::new(c.clone(), 3);
    s.start(t0, Bitfield::new(1024), 4);
    for id in 0..40 {
        s.add_candidate(t0, id, Some(id));
    }
    let mut connected = 0;
    let mut asked = Vec::new();
    loop {
        let actions = drain(&mut s, t0);
        asked.extend(actions.iter().copied());
        let dials: Vec<u32> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Dial { addr, .. } => Some(addr),
                _ => None,
            })
            .collect();
        if dials.is_empty() {
            break;
        }
        assert!(dials.len() <= c.max_dialing);
        for id in dials {
            s.handle_dialed(t0, id, Some(id));
            s.handle_bitfield(t0, id, Bitfield::full(1024));
            connected += 1;
        }
    }
    assert_eq!(connected, c.max_connected);
    // Every peer but 5 delivers; 5 sends nothing (its requests are still in flight).
    let now = ms(t0, 9_000);
    for id in 0..32 {
        s.handle_progress(now, id, 1, false);
        if id != 5 {
            let r = requests(&asked, id)[0];
            s.handle_piece(now, id, r, PieceOutcome::Verified, 1 << 20);
        }
    }
    drain(&mut s, now);
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + c.rotate_grace, "rotation waits for the grace period");
    s.handle_timeout(due);
    let actions = drain(&mut s, due);
    assert_eq!(actions[0], Action::Close { peer: 5, reason: DropReason::NeverDelivered });
    assert_eq!(actions[1], Action::Dial { addr: 32, id: Some(32) });
    // While the replacement's dial is under way (a candidate that never answers holds it
    // until the handshake deadline), no further working peer is given up.
    let later = due + 3 * c.rotate_every;
    s.handle_timeout(later);
    assert!(drain(&mut s, later).iter().all(|a| !matches!(a, Action::Close { .. })));
    // The next rotation waits `rotate_every`.
    s.handle_dialed(due, 32, Some(32));
    drain(&mut s, due);
    s.handle_timeout(due + c.rotate_every - Duration::from_millis(1));
    assert!(drain(&mut s, due).iter().all(|a| !matches!(a, Action::Close { .. })));
}

#[test]
fn candidates_are_deduplicated_and_bounded() {
    let t0 = Instant::now();
    let c = Config { max_connected: 1, ..Config::default() };
    let mut s = Set::new(c.clone(), 3);
    for round in 0..3 {
        for id in 0..1000 {
            s.add_candidate(t0, id, Some(id % 500 + round));
        }
    }
    assert_eq!(s.candidates.len(), c.max_candidates);
    assert_eq!(drain(&mut s, t0).len(), 1);
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Candidate(u8),
        Dialed(u8, Option<u8>),
        Manifest(u8, u8),
        Start,
        Bitfield(u8, u32),
        Have(u8, u32),
        Piece(u8, u32, u8),
        Progress(u8, u64, bool),
        Refused(u8),
        Closed(u8),
        Wait(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Candidate),
            (any::<u8>(), any::<Option<u8>>()).prop_map(|(a, b)| Op::Dialed(a, b)),
            (any::<u8>(), 0..3u8).prop_map(|(a, b)| Op::Manifest(a, b)),
            Just(Op::Start),
            (any::<u8>(), 14..18u32).prop_map(|(a, b)| Op::Bitfield(a, b)),
            (any::<u8>(), any::<u32>()).prop_map(|(a, b)| Op::Have(a, b)),
            (any::<u8>(), 0..20u32, 0..6u8).prop_map(|(a, b, c)| Op::Piece(a, b, c)),
            (any::<u8>(), any::<u64>(), any::<bool>()).prop_map(|(a, b, c)| Op::Progress(a, b, c)),
            any::<u8>().prop_map(Op::Refused),
            any::<u8>().prop_map(Op::Closed),
            any::<u16>().prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever peers send and in whatever order, the set never panics, never exceeds its
        /// peer cap, and only asks connected peers for pieces they claimed.
        #[test]
        fn any_sequence_keeps_the_limits(ops in proptest::collection::vec(op(), 0..300)) {
            let t0 = Instant::now();
            let c = Config { max_connected: 5, max_dialing: 2, max_candidates: 8, ..Config::default() };
            let mut s: PeerSet<u8, u8> = PeerSet::new(c.clone(), 1);
            let mut now = t0;
            let outcomes = [
                PieceOutcome::Verified, PieceOutcome::Bad, PieceOutcome::NotHeld,
                PieceOutcome::Busy, PieceOutcome::Refused, PieceOutcome::Failed,
            ];
            let replies = [ManifestReply::Valid, ManifestReply::Invalid, ManifestReply::Failed];
            for op in ops {
                match op {
                    Op::Candidate(a) => s.add_candidate(now, a, Some(a / 2)),
                    Op::Dialed(a, id) => { s.handle_dialed(now, a, id); }
                    Op::Manifest(p, r) => s.handle_manifest(now, p, replies[r as usize]),
                    Op::Start => if s.picker().is_none() { s.start(now, Bitfield::new(16), 4) },
                    Op::Bitfield(p, len) => s.handle_bitfield(now, p, Bitfield::full(len)),
                    Op::Have(p, i) => s.handle_have(p, PieceIndex(i)),
                    Op::Piece(p, i, o) => {
                        s.handle_piece(now, p, PieceIndex(i), outcomes[o as usize], 1)
                    }
                    Op::Progress(p, n, w) => s.handle_progress(now, p, n, w),
                    Op::Refused(p) => s.handle_refused(now, p),
                    Op::Closed(p) => s.handle_closed(now, p),
                    Op::Wait(ms) => {
                        now += Duration::from_millis(u64::from(ms));
                        s.handle_timeout(now);
                    }
                }
                while let Some(a) = s.poll_action(now) {
                    if let Action::Request { peer, .. } = a {
                        prop_assert!(s.peers.contains_key(&peer));
                    }
                }
                prop_assert!(s.peers.len() + s.dialing.len() <= c.max_connected);
                prop_assert!(s.candidates.len() <= c.max_candidates);
                if let Some(t) = s.poll_timeout() {
                    // A deadline that has passed is handled by the next timeout.
                    if t <= now {
                        s.handle_timeout(now);
                        while s.poll_action(now).is_some() {}
                        prop_assert!(s.poll_timeout().is_none_or(|t2| t2 > now), "timer spins");
                    }
                }
            }
        }
    }
}

/// A piece that took longer than `window_delay` from request to verification (it waited in
/// the peer's upload queue) shrinks the peer's window; a prompt one grows it.
#[test]
fn a_crowded_peer_holds_fewer_requests_and_a_prompt_one_more() {
    let t0 = Instant::now();
    let c = Config::default();
    let mut s = started(t0, &[1, 2], 64);
    drain(&mut s, t0);
    s.handle_bitfield(t0, 1, Bitfield::full(64));
    s.handle_bitfield(t0, 2, Bitfield::full(64));
    let first = drain(&mut s, t0);
    let (mut one, mut two) = (requests(&first, 1), requests(&first, 2));
    assert_eq!((one.len(), two.len()), (2, 2), "the initial window");
    // Peer 1 answers promptly: its window grows to three, so two requests replace the piece.
    let quick = t0 + c.window_delay / 2;
    s.handle_piece(quick, 1, one.remove(0), PieceOutcome::Verified, 1);
    one.extend(requests(&drain(&mut s, quick), 1));
    assert_eq!(one.len(), 3);
    // Peer 2's pieces waited in its queue: each shrinks its window by one, down to one.
    let late = t0 + c.window_delay * 4;
    s.handle_piece(late, 2, two.remove(0), PieceOutcome::Verified, 1);
    assert!(requests(&drain(&mut s, late), 2).is_empty(), "window 1, one still in flight");
    s.handle_piece(late, 2, two.remove(0), PieceOutcome::Verified, 1);
    let next = requests(&drain(&mut s, late), 2);
    assert_eq!(next.len(), 1, "the window stays at one at least");
}

/// Rotated out within the stall deadline, a peer that has not delivered yet is not reported as
/// never delivering: its requests may still wait in a crowded queue.
#[test]
fn a_young_peer_rotated_out_before_delivering_is_not_reported() {
    let t0 = Instant::now();
    let c = Config { max_connected: 1, ..Config::default() };
    let mut s = Set::new(c.clone(), 3);
    s.start(t0, Bitfield::new(16), 4);
    s.add_candidate(t0, 1, Some(1));
    drain(&mut s, t0);
    s.handle_dialed(t0, 1, Some(1));
    s.handle_bitfield(t0, 1, Bitfield::full(16));
    assert_eq!(requests(&drain(&mut s, t0), 1).len(), 2);
    s.add_candidate(t0, 2, Some(2));
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + c.rotate_grace);
    s.handle_timeout(due);
    let actions = drain(&mut s, due);
    assert_eq!(actions[0], Action::Close { peer: 1, reason: DropReason::Slow });
    assert!(s.undelivered().is_empty());
}

#[test]
fn a_peer_that_delivered_within_the_grace_is_not_rotated_out() {
    let t0 = Instant::now();
    let mut s = Set::new(Config::default(), 3);
    s.start(t0, Bitfield::new(1024), 4);
    // More candidates than places: rotation is wanted once the places are full.
    for id in 0..40 {
        s.add_candidate(t0, id, Some(id));
    }
    let mut ids = Vec::new();
    let mut asked = Vec::new();
    loop {
        let actions = drain(&mut s, t0);
        asked.extend(actions.iter().copied());
        let dials: Vec<u32> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Dial { addr, .. } => Some(addr),
                _ => None,
            })
            .collect();
        if dials.is_empty() {
            break;
        }
        for id in dials {
            s.handle_dialed(t0, id, Some(id));
            s.handle_bitfield(t0, id, Bitfield::full(1024));
            ids.push(id);
        }
    }
    asked.extend(drain(&mut s, t0));
    assert_eq!(ids.len(), Config::default().max_connected);
    // Every peer delivers a piece at 3 s, past the 2 s grace.
    let at = ms(t0, 3_000);
    for &id in &ids {
        s.handle_piece(at, id, requests(&asked, id)[0], PieceOutcome::Verified, 1 << 16);
    }
    drain(&mut s, at);
    let soon = ms(t0, 3_600);
    s.handle_timeout(soon);
    assert!(
        drain(&mut s, soon).iter().all(|a| !matches!(a, Action::Close { .. })),
        "working peers are kept"
    );
    // Silent for longer than the grace: the slowest goes, a candidate is dialled.
    let later = ms(t0, 5_600);
    s.handle_timeout(later);
    let actions = drain(&mut s, later);
    assert!(actions.iter().any(|a| matches!(a, Action::Close { .. })), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Dial { .. })), "{actions:?}");
}
