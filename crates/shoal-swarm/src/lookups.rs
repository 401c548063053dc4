//! When a download asks its tracker again for holders and hints.
//!
//! A fetch that just started knows only the holders of its first lookup, often the seed alone,
//! while the other newcomers of the same swarm announce their first pieces within a quarter of a
//! second. So the second lookup comes soon ([`FIRST`]) and the gap doubles up to [`EVERY`]: a
//! new swarm's downloaders find each other within the first second, and a long fetch still
//! costs the tracker one lookup per [`EVERY`].

use std::time::{Duration, Instant};

/// The gap before the second lookup.
pub const FIRST: Duration = Duration::from_millis(250);
/// The steady gap between lookups.
pub const EVERY: Duration = Duration::from_secs(2);

/// The lookup schedule of one download. Time is passed in.
#[derive(Debug, Clone)]
pub struct Lookups {
    gap: Duration,
    next: Instant,
}

impl Lookups {
    /// A schedule for a download whose first lookup was at `now`.
    pub fn new(now: Instant) -> Self {
        Self { gap: FIRST, next: now + FIRST }
    }

    /// When the next lookup is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// A lookup went out at `now`: the next is due one gap later, the gap doubling up to
    /// [`EVERY`].
    pub fn handle_lookup(&mut self, now: Instant) {
        self.gap = (self.gap * 2).min(EVERY);
        self.next = now + self.gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_come_fast_at_the_start_then_every_two_seconds() {
        let t0 = Instant::now();
        let mut l = Lookups::new(t0);
        let mut at = vec![];
        for _ in 0..6 {
            let due = l.poll_timeout();
            at.push(due.duration_since(t0).as_millis());
            l.handle_lookup(due);
        }
        // 250 ms, then gaps of 500 ms, 1 s, 2 s, 2 s, 2 s.
        assert_eq!(at, vec![250, 750, 1750, 3750, 5750, 7750]);
    }
}
