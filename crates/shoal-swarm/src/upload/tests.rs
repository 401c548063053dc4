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
fn an_abandoned_upload_is_not_counted_as_a_copy() {
    let t0 = Instant::now();
    let mut u = up(1, 1 << 20, 16);
    let first = granted(u.handle_request(t0, 0, key(1, 0), 1));
    // Waiting: piece 0 (granted once, about to be abandoned), then piece 1 (never sent).
    let again = queued(u.handle_request(t0, 2, key(1, 0), 1));
    let other = queued(u.handle_request(t0, 1, key(1, 1), 1));
    u.handle_abandoned(t0, first);
    // Both never sent now: the older request first (counted as a copy, it would go last).
    assert_eq!(events(&mut u), [Event::Granted(again)]);
    assert_eq!(u.sent(&key(1, 0).unwrap()), 1, "the abandoned grant was taken back");
    u.handle_done(t0, again);
    assert_eq!(events(&mut u), [Event::Granted(other)]);
    u.handle_done(t0, other);
    assert_eq!((u.sent(&key(1, 0).unwrap()), u.sent(&key(1, 1).unwrap())), (1, 1));
    assert_eq!(u.active(), 0);
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

/// The policy as first written (node/src/upload.rs before the machine): a scan of every waiter
/// per grant. The indexed queue must decide exactly as it does.
mod reference {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::super::{Admit, Config, Event, PieceKey, Ticket};

    struct Waiter {
        ticket: Ticket,
        peer: u32,
        key: Option<PieceKey<u8>>,
        bytes: u64,
        deadline: Instant,
    }

    pub(super) struct Model {
        c: Config,
        active: usize,
        bytes: u64,
        per_peer: BTreeMap<u32, (usize, usize)>,
        granted: BTreeMap<Ticket, (u32, u64)>,
        waiting: Vec<Waiter>,
        sent: BTreeMap<(u8, u32), u16>,
        next: u64,
        pub(super) events: Vec<Event>,
    }

    fn add(m: &mut BTreeMap<u32, (usize, usize)>, p: u32, d: (isize, isize)) {
        let e = m.entry(p).or_default();
        e.0 = e.0.saturating_add_signed(d.0);
        e.1 = e.1.saturating_add_signed(d.1);
        if *e == (0, 0) {
            m.remove(&p);
        }
    }

    impl Model {
        pub(super) fn new(c: Config) -> Self {
            Self {
                c,
                active: 0,
                bytes: 0,
                per_peer: BTreeMap::new(),
                granted: BTreeMap::new(),
                waiting: Vec::new(),
                sent: BTreeMap::new(),
                next: 0,
                events: Vec::new(),
            }
        }

        fn fits(&self, b: u64) -> bool {
            self.active < self.c.max_active
                && (self.active == 0 || self.bytes + b <= self.c.max_bytes)
        }

        fn grant(&mut self, t: Ticket, p: u32, k: Option<PieceKey<u8>>, b: u64) {
            self.active += 1;
            self.bytes += b;
            add(&mut self.per_peer, p, (1, 0));
            self.granted.insert(t, (p, b));
            if let Some(k) = k {
                *self.sent.entry((k.content, k.piece.0)).or_default() += 1;
            }
        }

        fn expire(&mut self, now: Instant) -> bool {
            let before = self.waiting.len();
            let (pp, ev) = (&mut self.per_peer, &mut self.events);
            self.waiting.retain(|w| {
                if w.deadline <= now {
                    add(pp, w.peer, (0, -1));
                    ev.push(Event::Refused(w.ticket));
                }
                w.deadline > now
            });
            self.waiting.len() != before
        }

        fn dispatch(&mut self) {
            let share = (self.c.max_active / 4).max(1);
            loop {
                let under = |w: &Waiter| self.per_peer.get(&w.peer).map_or(0, |e| e.0) < share;
                let fair = self.waiting.iter().any(under);
                let best = (0..self.waiting.len())
                    .filter(|&i| !fair || under(&self.waiting[i]))
                    .min_by_key(|&i| {
                        let w = &self.waiting[i];
                        let n = w.key.map_or(0, |k| {
                            self.sent.get(&(k.content, k.piece.0)).copied().unwrap_or(0)
                        });
                        (n, w.ticket)
                    });
                let Some(i) = best.filter(|&i| self.fits(self.waiting[i].bytes)) else { return };
                let w = self.waiting.swap_remove(i);
                add(&mut self.per_peer, w.peer, (0, -1));
                self.grant(w.ticket, w.peer, w.key, w.bytes);
                self.events.push(Event::Granted(w.ticket));
            }
        }

        pub(super) fn request(
            &mut self,
            now: Instant,
            peer: u32,
            key: Option<PieceKey<u8>>,
            bytes: u64,
        ) -> Admit {
            self.expire(now);
            let t = Ticket(self.next);
            self.next += 1;
            if self.waiting.is_empty() && self.fits(bytes) {
                self.grant(t, peer, key, bytes);
                return Admit::Granted(t);
            }
            let here = self.per_peer.get(&peer).map_or(0, |e| e.1);
            if self.waiting.len() >= self.c.max_waiting || here >= (self.c.max_waiting / 4).max(1) {
                return Admit::Busy;
            }
            let deadline = now + self.c.wait;
            self.waiting.push(Waiter { ticket: t, peer, key, bytes, deadline });
            add(&mut self.per_peer, peer, (0, 1));
            Admit::Queued(t)
        }

        pub(super) fn done(&mut self, now: Instant, t: Ticket) {
            let Some((p, b)) = self.granted.remove(&t) else { return };
            self.active -= 1;
            self.bytes -= b;
            add(&mut self.per_peer, p, (-1, 0));
            self.expire(now);
            self.dispatch();
        }

        pub(super) fn cancel(&mut self, now: Instant, t: Ticket) -> bool {
            let Some(i) = self.waiting.iter().position(|w| w.ticket == t) else { return false };
            let w = self.waiting.swap_remove(i);
            add(&mut self.per_peer, w.peer, (0, -1));
            self.expire(now);
            self.dispatch();
            true
        }

        pub(super) fn timeout(&mut self, now: Instant) {
            if self.expire(now) {
                self.dispatch();
            }
        }

        pub(super) fn granted(&self) -> Vec<Ticket> {
            self.granted.keys().copied().collect()
        }

        pub(super) fn waiting(&self) -> Vec<Ticket> {
            self.waiting.iter().map(|w| w.ticket).collect()
        }
    }
}

/// Refusals come before grants within one call; their order among themselves is free.
fn normalized(mut ev: Vec<Event>) -> Vec<Event> {
    let refused = ev.iter().take_while(|e| matches!(e, Event::Refused(_))).count();
    ev[..refused].sort_by_key(|e| match e {
        Event::Refused(t) | Event::Granted(t) => *t,
    });
    ev
}

#[test]
fn the_indexed_queue_decides_as_the_scan_it_replaced() {
    for seed in 1..=40u64 {
        let t0 = Instant::now();
        let config = Config {
            max_active: 4,
            max_bytes: 100,
            max_waiting: 12,
            wait: Duration::from_millis(50),
        };
        let mut u = Up::new(config.clone());
        let mut m = reference::Model::new(config);
        let mut rng = seed;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut now = t0;
        for step in 0..400 {
            now += Duration::from_millis(next() % 7);
            let op = next() % 10;
            let (got, want) = if op < 5 {
                let peer = (next() % 6) as u32;
                let key = (next() % 8 != 0).then(|| PieceKey {
                    content: (next() % 2) as u8,
                    piece: PieceIndex((next() % 6) as u32),
                    pieces: 6,
                });
                let bytes = [1, 40, 90][(next() % 3) as usize];
                let a = u.handle_request(now, peer, key, bytes);
                let b = m.request(now, peer, key, bytes);
                assert_eq!(a, b, "seed {seed} step {step}: admission");
                (events(&mut u), std::mem::take(&mut m.events))
            } else if op < 8 {
                let g = m.granted();
                if g.is_empty() {
                    continue;
                }
                let t = g[(next() % g.len() as u64) as usize];
                u.handle_done(now, t);
                m.done(now, t);
                (events(&mut u), std::mem::take(&mut m.events))
            } else if op < 9 {
                let w = m.waiting();
                if w.is_empty() {
                    continue;
                }
                let t = w[(next() % w.len() as u64) as usize];
                assert_eq!(u.handle_cancel(now, t), m.cancel(now, t), "seed {seed} step {step}");
                (events(&mut u), std::mem::take(&mut m.events))
            } else {
                u.handle_timeout(now);
                m.timeout(now);
                (events(&mut u), std::mem::take(&mut m.events))
            };
            assert_eq!(normalized(got), normalized(want), "seed {seed} step {step}: events");
            assert_eq!(u.waiting(), m.waiting().len());
        }
    }
}
