//! A token bucket shared by every connection of a node.
//!
//! [`Bucket`] is the sans-I/O core (time is passed in); [`RateLimiter`] wraps it for async use.
//! A taker may drive the bucket into debt and then waits until the debt is repaid, so a large
//! request is never starved by small ones and the long-run rate is exact.
//!
//! Charge what actually moved: a reader takes tokens for the bytes a read returned (after the
//! read), never for the bytes it asked for, since a QUIC read returns whatever one packet
//! carried (a few KiB) however much was asked. Charging the asked-for size made a
//! `--download-limit` deliver about a tenth of the set rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The token bucket state.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket refilling at `rate` bytes per second, holding at most `burst` bytes.
    /// It starts empty: the first bytes already pay for themselves, so a transfer that starts
    /// with the bucket moves at the set rate from its first byte (a burst builds up only while
    /// takers are idle).
    pub fn new(now: Instant, rate: u64, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        Self { rate: rate.max(1) as f64, burst, tokens: 0.0, last: now }
    }

    /// Takes `n` tokens at `now`; returns how long the caller must wait before using them.
    pub fn take(&mut self, now: Instant, n: u64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A cloneable async rate limiter; `None` inside means unlimited.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    // The lock is held only for arithmetic, never across an await.
    bucket: Option<Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    /// A limiter at `rate` bytes per second, or unlimited for `None`.
    pub fn new(rate: Option<u64>) -> Self {
        let bucket = rate.map(|r| {
            // 50 ms of burst, at least 16 KiB: enough to absorb a late wake-up (takers go into
            // debt, so the burst is not what keeps a reader busy), small enough that a transfer
            // after an idle spell is not measurably above the rate.
            let burst = (r / 20).max(16 * 1024);
            Arc::new(Mutex::new(Bucket::new(Instant::now(), r, burst)))
        });
        Self { bucket }
    }

    /// The rate in bytes per second; `None` if unlimited.
    pub fn rate(&self) -> Option<u64> {
        let bucket = self.bucket.as_ref()?;
        Some(bucket.lock().unwrap_or_else(|p| p.into_inner()).rate as u64)
    }

    /// True if this limiter never waits.
    pub fn is_unlimited(&self) -> bool {
        self.bucket.is_none()
    }

    /// Takes `n` tokens now; returns how long the caller must wait before it moves more
    /// bytes. For callers that obey several limiters: take from each, wait for the longest.
    pub fn take(&self, n: u64) -> Duration {
        let Some(bucket) = &self.bucket else { return Duration::ZERO };
        bucket.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now(), n)
    }

    /// Waits until `n` bytes may pass. Cancel-safe: the tokens are taken when called, so
    /// cancelling only loses the wait.
    pub async fn acquire(&self, n: u64) {
        let wait = self.take(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_is_exact() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, 1000, 100);
        // It starts empty: each 100-byte take owes 0.1 s more.
        let w = b.take(t0, 100);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9);
        let w = b.take(t0, 100);
        assert!((w.as_secs_f64() - 0.2).abs() < 1e-9);
        // After 0.2 s the debt is repaid.
        assert_eq!(b.take(t0 + Duration::from_millis(200), 0), Duration::ZERO);
        // Idle time refills at most the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.take(later, 100), Duration::ZERO);
        assert!(b.take(later, 1) > Duration::ZERO);
    }

    /// A reader that charges what each read returned (packet-sized, uneven) and sleeps what it
    /// owes, waking a little late each time, moves bytes at the set rate.
    #[test]
    fn small_uneven_reads_keep_the_rate() {
        let t0 = Instant::now();
        let rate = 4 * 1024 * 1024;
        let mut b = Bucket::new(t0, rate, rate / 20);
        let (mut now, mut moved, mut x) = (t0, 0u64, 7u64);
        while moved < 3 * rate {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = 1000 + (x >> 33) % 6000;
            moved += n;
            let wait = b.take(now, n);
            now += wait + Duration::from_micros((x >> 20) % 500);
        }
        let achieved = moved as f64 / now.duration_since(t0).as_secs_f64();
        assert!((achieved / rate as f64 - 1.0).abs() < 0.01, "{achieved}");
    }
}
