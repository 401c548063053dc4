//! The picker's cost per request against the piece count: the indexed `Picker` and the old
//! scan-every-piece rule (the test reference, included by path), driven by the same steps in
//! one run. Prints nanoseconds per step and the ratio; asserts nothing about speed.
//!
//! A step is one `next_request` to the next peer in turn, one `peer_has` from a random
//! leecher, and, once `4 * peers` requests are in flight, the verification of the oldest.
//! Peer 0 holds everything; leecher `k` holds a random share of 5 to 94% of the pieces.
//!
//! Run: `cargo bench -p shoal-swarm --bench picker`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shoal_core::{Bitfield, PieceIndex};
use shoal_swarm::{Picker, Request, Verdict, MAX_COPIES, MAX_STRIKES};

#[allow(dead_code, unreachable_pub)]
#[path = "../src/picker/reference.rs"]
mod reference;

/// What the benchmark needs of a picker.
trait Pick {
    fn build(have: Bitfield, seed: u64) -> Self;
    fn add(&mut self, peer: u32, bitfield: Bitfield);
    fn request(&mut self, peer: u32) -> Option<Request>;
    fn verified(&mut self, peer: u32, piece: PieceIndex);
    fn has(&mut self, peer: u32, piece: PieceIndex);
    fn complete(&self) -> bool;
}

macro_rules! pick {
    ($t:ty) => {
        impl Pick for $t {
            fn build(have: Bitfield, seed: u64) -> Self {
                <$t>::new(have, seed)
            }
            fn add(&mut self, peer: u32, bitfield: Bitfield) {
                self.add_peer(peer, bitfield);
            }
            fn request(&mut self, peer: u32) -> Option<Request> {
                self.next_request(peer)
            }
            fn verified(&mut self, peer: u32, piece: PieceIndex) {
                self.piece_verified(peer, piece);
            }
            fn has(&mut self, peer: u32, piece: PieceIndex) {
                self.peer_has(peer, piece);
            }
            fn complete(&self) -> bool {
                self.is_complete()
            }
        }
    };
}
pick!(Picker<u32>);
pick!(reference::Reference<u32>);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fresh download: the seed and the leechers connected.
fn start<T: Pick>(pieces: u32, peers: u32, rng: &mut Rng) -> T {
    let mut p = T::build(Bitfield::new(pieces), rng.next());
    p.add(0, Bitfield::full(pieces));
    for k in 1..peers {
        let share = 5 + rng.below(90);
        let mut b = Bitfield::new(pieces);
        for i in 0..pieces {
            if rng.below(100) < share {
                b.set(PieceIndex(i));
            }
        }
        p.add(k, b);
    }
    p
}

/// Runs `steps` steps; returns the time spent in them (setting up downloads not counted) and
/// a checksum of the choices, so both pickers can be seen to choose alike.
fn run<T: Pick>(pieces: u32, peers: u32, steps: u32) -> (Duration, u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut p: T = start(pieces, peers, &mut rng);
    let mut flight = VecDeque::new();
    let (mut spent, mut sum) = (Duration::ZERO, 0u64);
    let mut t = Instant::now();
    for step in 0..steps {
        let peer = step % peers;
        if let Some(r) = p.request(peer) {
            sum = sum.wrapping_mul(31).wrapping_add(u64::from(r.piece.0));
            flight.push_back((peer, r.piece));
        }
        p.has(
            1 + rng.below(u64::from(peers - 1)) as u32,
            PieceIndex(rng.below(pieces.into()) as u32),
        );
        if flight.len() > 4 * peers as usize {
            if let Some((peer, piece)) = flight.pop_front() {
                p.verified(peer, piece);
            }
        }
        if p.complete() || (flight.is_empty() && step % peers == peers - 1) {
            spent += t.elapsed();
            p = start(pieces, peers, &mut rng);
            flight.clear();
            t = Instant::now();
        }
    }
    (spent + t.elapsed(), sum)
}

fn main() {
    println!(
        "picker: ns per step (next_request + peer_has + at most one piece_verified), best of 3"
    );
    println!(
        "{:>7} {:>5} {:>7} {:>12} {:>12} {:>9}",
        "pieces", "peers", "steps", "old ns", "new ns", "old/new"
    );
    for pieces in [256u32, 2048, 65536] {
        for peers in [8u32, 32] {
            // The old rule costs ~n per step: fewer steps for big contents keep the run short.
            let steps = (400_000_000 / u64::from(pieces) / 16).clamp(2_000, 100_000) as u32;
            // Best of three, alternating, so a busy moment of the shared machine hits both.
            let (mut old, mut new) = (Duration::MAX, Duration::MAX);
            for _ in 0..3 {
                let (o, old_sum) = run::<reference::Reference<u32>>(pieces, peers, steps);
                let (n, new_sum) = run::<Picker<u32>>(pieces, peers, steps);
                assert_eq!(old_sum, new_sum, "both pickers must make the same choices");
                (old, new) = (old.min(o), new.min(n));
            }
            let ns = |d: Duration| d.as_nanos() as f64 / f64::from(steps);
            println!(
                "{pieces:>7} {peers:>5} {steps:>7} {:>12.0} {:>12.0} {:>9.1}",
                ns(old),
                ns(new),
                ns(old) / ns(new)
            );
        }
    }
    // Keep the reference's imports used in this crate too.
    let _ = (MAX_COPIES, MAX_STRIKES, Verdict::Banned);
}
