//! Unit tests of [`Uploader`]: each rule driven step by step with simulated time (moved from
//! the node's async `Uploads`, which now wraps this machine).

use std::time::{Duration, Instant};

use shoal_core::PieceIndex;

use super::*;

type Up = Uploader<u32, u8>;

fn key(c: u8, piece: u32) -> Option<PieceKey<u8>> {
    Some(PieceKey { content: c, piece: PieceIndex(piece), pieces: 8 })
}

fn up(max_active: usize, max_bytes: u64, max_waiting: usize) -> Up {
    Uploader::new(Config { max_active, max_bytes, max_waiting, wait: Duration::from_secs(3600) })
}

fn granted(a: Admit) -> Ticket {
    match a {
        Admit::Granted(t) => t,
        other => panic!("not granted: {other:?}"),
    }
}

fn queued(a: Admit) -> Ticket {
    match a {
        Admit::Queued(t) => t,
        other => panic!("not queued: {other:?}"),
    }
}

fn events(u: &mut Up) -> Vec<Event> {
    std::iter::from_fn(|| u.poll_event()).collect()
}

#[test]
fn least_sent_pieces_go_first() {
    let t0 = Instant::now();
    let mut u = up(1, 1 << 20, 16);
    let first = granted(u.handle_request(t0, 0, key(1, 0), 1));
    // Waiting: piece 0 again (sent once), then piece 1 (never sent).
    let again = queued(u.handle_request(t0, 0, key(1, 0), 1));
    let fresh = queued(u.handle_request(t0, 0, key(1, 1), 1));
    u.handle_done(t0, first);
    assert_eq!(events(&mut u), [Event::Granted(fresh)], "the never-sent piece goes first");
    u.handle_done(t0, fresh);
    assert_eq!(events(&mut u), [Event::Granted(again)]);
    u.handle_done(t0, again);
    assert_eq!((u.active(), u.sent(&key(1, 0).unwrap())), (0, 2));
}

#[test]
fn manifests_count_as_never_sent_and_equals_go_oldest_first() {
    let t0 = Instant::now();
    let mut u = up(1, 1 << 20, 16);
    let held = granted(u.handle_request(t0, 0, key(1, 0), 1));
    // Piece 0 was sent once; the manifest and piece 2 never: those two go first, oldest first.
    let again = queued(u.handle_request(t0, 1, key(1, 0), 1));
    let m = queued(u.handle_request(t0, 2, None, 1));
    let fresh = queued(u.handle_request(t0, 3, key(1, 2), 1));
    u.handle_done(t0, held);
    u.handle_done(t0, m);
    u.handle_done(t0, fresh);
    let want = [Event::Granted(m), Event::Granted(fresh), Event::Granted(again)];
    assert_eq!(events(&mut u), want);
}

#[test]
fn cancelled_waiters_leave_the_queue_and_leak_no_slots() {
    let t0 = Instant::now();
    let mut u = up(1, 1 << 20, 16);
    let held = granted(u.handle_request(t0, 0, key(2, 0), 1));
    let waiter = queued(u.handle_request(t0, 0, key(2, 1), 1));
    assert!(u.handle_cancel(t0, waiter));
    assert!(!u.handle_cancel(t0, waiter), "a ticket leaves once");
    assert_eq!(u.waiting(), 0);
    u.handle_done(t0, held);
    u.handle_done(t0, held);
    assert_eq!((u.active(), u.peers()), (0, 0), "a second done of the same ticket is ignored");
    assert!(events(&mut u).is_empty());
    granted(u.handle_request(t0, 0, key(2, 2), 1));
    assert_eq!(u.active(), 1);
}

#[test]
fn a_full_queue_and_a_passed_deadline_answer_busy() {
    let t0 = Instant::now();
    let mut u = up(1, 1 << 20, 2);
    let _held = granted(u.handle_request(t0, 0, key(3, 0), 1));
    queued(u.handle_request(t0, 1, key(3, 1), 1));
    queued(u.handle_request(t0, 2, key(3, 2), 1));
    // Over the cap of waiters: refused at once, nothing queued.
    assert_eq!(u.handle_request(t0, 3, key(3, 3), 1), Admit::Busy);
    assert_eq!(u.waiting(), 2);
    // A waiter whose deadline passes is refused and leaves the queue.
    let mut u =
        Up::new(Config { max_active: 1, wait: Duration::from_millis(20), ..Config::default() });
    let held = granted(u.handle_request(t0, 0, key(3, 0), 1));
    let late = queued(u.handle_request(t0, 1, key(3, 1), 1));
    assert_eq!(u.poll_timeout(), Some(t0 + Duration::from_millis(20)));
    u.handle_timeout(t0 + Duration::from_millis(19));
    assert!(events(&mut u).is_empty(), "not before its deadline");
    u.handle_timeout(t0 + Duration::from_millis(20));
    assert_eq!(events(&mut u), [Event::Refused(late)]);
    assert_eq!((u.waiting(), u.poll_timeout()), (0, None));
    // A slot freed after the deadline does not go to a late waiter not yet timed out.
    let late = queued(u.handle_request(t0, 1, key(3, 1), 1));
    u.handle_done(t0 + Duration::from_secs(1), held);
    assert_eq!(events(&mut u), [Event::Refused(late)]);
}

#[test]
fn the_byte_budget_bounds_uploads_but_never_blocks_a_lone_large_one() {
    let t0 = Instant::now();
    let mut u = up(8, 100, 16);
    // Larger than the budget, but alone: granted.
    let big = granted(u.handle_request(t0, 0, key(4, 0), 1000));
    let small = queued(u.handle_request(t0, 0, key(4, 1), 60));
    u.handle_done(t0, big);
    assert_eq!(events(&mut u), [Event::Granted(small)]);
    // 60 + 60 > 100: the second waits for the first.
    let second = queued(u.handle_request(t0, 0, key(4, 2), 60));
    assert_eq!(u.active(), 1);
    u.handle_done(t0, small);
    assert_eq!(events(&mut u), [Event::Granted(second)]);
    u.handle_done(t0, second);
    assert_eq!((u.active(), u.active_bytes()), (0, 0));
}

#[test]
fn send_counts_are_bounded_by_contents_and_manifest() {
    let t0 = Instant::now();
    let mut u: Uploader<u32, u32> = Uploader::new(Config::default());
    // A piece index past the manifest's count allocates nothing.
    let far = PieceKey { content: 5, piece: PieceIndex(u32::MAX), pieces: 4 };
    let t = granted(u.handle_request(t0, 0, Some(far), 1));
    u.handle_done(t0, t);
    assert_eq!(u.tracked_contents(), 0);
    let n = MAX_TRACKED_CONTENTS as u32 * 3;
    for i in 0..n {
        let k = PieceKey { content: i, piece: PieceIndex(1), pieces: 16 };
        let t = granted(u.handle_request(t0, 0, Some(k), 1));
        u.handle_done(t0, t);
    }
    assert_eq!(u.tracked_contents(), MAX_TRACKED_CONTENTS);
    // The most recently served content is kept, the first forgotten.
    assert!(u.tracks(&(n - 1)) && !u.tracks(&0));
}

#[test]
fn a_peer_holding_its_share_is_served_after_the_others() {
    let t0 = Instant::now();
    // 4 slots: a peer's share is 1 while others wait.
    let mut u = up(4, 1 << 20, 64);
    let mut hog: Vec<Ticket> =
        (0..4).map(|p| granted(u.handle_request(t0, 0, key(9, p), 1))).collect();
    // The hog asks for more first; an honest peer asks after it.
    let more = queued(u.handle_request(t0, 0, key(9, 5), 1));
    let honest = queued(u.handle_request(t0, 1, key(9, 6), 1));
    u.handle_done(t0, hog.pop().unwrap());
    assert_eq!(events(&mut u), [Event::Granted(honest)], "the peer under its share goes first");
    u.handle_done(t0, honest);
    assert_eq!(events(&mut u), [Event::Granted(more)]);
    u.handle_done(t0, more);
    for t in hog {
        u.handle_done(t0, t);
    }
    assert_eq!(u.active(), 0);
    assert_eq!(u.peers(), 0, "per-peer counts go with their last slot");
}

#[test]
fn one_peer_takes_at_most_a_quarter_of_the_waiting_places() {
    let t0 = Instant::now();
    let mut u = up(1, 1 << 20, 8);
    let _held = granted(u.handle_request(t0, 0, key(10, 0), 1));
    queued(u.handle_request(t0, 1, key(10, 1), 1));
    queued(u.handle_request(t0, 1, key(10, 2), 1));
    assert_eq!(u.handle_request(t0, 1, key(10, 3), 1), Admit::Busy);
    queued(u.handle_request(t0, 2, key(10, 4), 1));
    assert_eq!(u.waiting(), 3);
}

#[test]
fn a_waiter_that_gives_up_lets_the_ones_behind_it_in() {
    let t0 = Instant::now();
    // Bytes budget 100: a 90-byte upload runs; a 50-byte waiter cannot fit, a 10-byte one
    // behind it could, but strict order holds it back until the first gives up.
    let mut u = up(4, 100, 16);
    let _big = granted(u.handle_request(t0, 0, key(11, 0), 90));
    let blocked = u.handle_request_until(t0, t0 + Duration::from_millis(50), 1, key(11, 1), 50);
    let blocked = queued(blocked);
    let small = queued(u.handle_request(t0, 2, key(11, 2), 10));
    assert!(events(&mut u).is_empty(), "strict order: the small one waits");
    u.handle_timeout(t0 + Duration::from_millis(50));
    assert_eq!(events(&mut u), [Event::Refused(blocked), Event::Granted(small)]);
    // The same through a cancel.
    u.handle_done(t0, small);
    let blocked = queued(u.handle_request(t0, 1, key(11, 3), 50));
    let small = queued(u.handle_request(t0, 2, key(11, 4), 10));
    assert!(u.handle_cancel(t0, blocked));
    assert_eq!(events(&mut u), [Event::Granted(small)]);
}
