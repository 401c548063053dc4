//! A token bucket shared by every connection of a node.
//!
//! [`Bucket`] is the sans-I/O core (time is passed in); [`RateLimiter`] wraps it for async use.
//! A taker may drive the bucket into debt and then waits until the debt is repaid, so a large
//! request is never starved by small ones and the long-run rate is exact.

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
    pub fn new(now: Instant, rate: u64, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        Self { rate: rate.max(1) as f64, burst, tokens: burst, last: now }
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
            // A quarter second of burst, at least one 64 KiB read.
            let burst = (r / 4).max(64 * 1024);
            Arc::new(Mutex::new(Bucket::new(Instant::now(), r, burst)))
        });
        Self { bucket }
    }

    /// True if this limiter never waits.
    pub fn is_unlimited(&self) -> bool {
        self.bucket.is_none()
    }

    /// Waits until `n` bytes may pass. Cancel-safe: the tokens are taken when called, so
    /// cancelling only loses the wait.
    pub async fn acquire(&self, n: u64) {
        let Some(bucket) = &self.bucket else { return };
        let wait = bucket.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now(), n);
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
        // Drain the burst, then each 100-byte take owes 0.1 s more.
        assert_eq!(b.take(t0, 100), Duration::ZERO);
        let w = b.take(t0, 100);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9);
        // After 0.1 s the debt is repaid.
        assert_eq!(b.take(t0 + Duration::from_millis(100), 0), Duration::ZERO);
        // Idle time refills at most the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.take(later, 100), Duration::ZERO);
        assert!(b.take(later, 1) > Duration::ZERO);
    }
}
