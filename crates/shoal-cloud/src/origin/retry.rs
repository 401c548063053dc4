//! When to try again: exponential backoff with full jitter, and `Retry-After`. Pure functions
//! with time and randomness passed in, so the policy is tested without sleeping.

use std::time::{Duration, SystemTime};

/// The retry budget of one operation (a probe, or one range of a fetch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Attempts in all, the first included.
    pub(crate) max_attempts: u32,
    /// The backoff ceiling after the first failure; it doubles with each failure.
    pub(crate) base: Duration,
    /// The highest backoff ceiling.
    pub(crate) max: Duration,
    /// A longer `Retry-After` gives up at once: waiting that long holds a download slot.
    pub(crate) max_retry_after: Duration,
}

impl Policy {
    /// How long to wait after `attempts` attempts failed, the last one transiently, or `None`
    /// to give up. `retry_after` is what the origin asked for; `rand` is uniform in [0, 1).
    pub(crate) fn next(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        rand: f64,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let backoff = delay(attempts, self.base, self.max, rand);
        match retry_after {
            Some(asked) if asked > self.max_retry_after => None,
            // The origin's wish is a minimum; the jittered backoff still spreads the retries
            // of many nodes that were all told the same time.
            Some(asked) => Some(asked.max(backoff)),
            None => Some(backoff),
        }
    }
}

/// Full jitter (the AWS architecture blog's "exponential backoff and jitter"): a uniform wait
/// in [0, ceiling), where the ceiling is `base` doubled per failure after the first and capped
/// at `max`. `attempt` counts failures so far, from 1.
pub(crate) fn delay(attempt: u32, base: Duration, max: Duration, rand: f64) -> Duration {
    let doublings = attempt.saturating_sub(1);
    let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
    let ceiling = base.saturating_mul(factor).min(max);
    // Clamped so that a bad `rand` cannot panic; `try_from` because a huge ceiling times 1.0
    // may round above what a Duration holds.
    let rand = if rand.is_finite() { rand.clamp(0.0, 1.0) } else { 0.0 };
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * rand).unwrap_or(ceiling)
}

/// The wait a `Retry-After` value asks for (RFC 9110 §10.2.3): delay-seconds, or an HTTP date,
/// taken relative to `now` (a date in the past asks for no wait). `None` if it is neither.
pub(crate) fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only an overflow fails, and an absurd wait is as good as u64::MAX.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, max) = (250 * MS, 30_000 * MS);
        // rand close to 1 shows the ceiling; each row: failures so far, ceiling.
        let table = [
            (0, 250 * MS),     // called before any failure: as after the first
            (1, 250 * MS),     // first failure: the base
            (2, 500 * MS),     // doubled
            (3, 1_000 * MS),   // doubled again
            (8, 30_000 * MS),  // 250 ms * 128 = 32 s, capped
            (40, 30_000 * MS), // past 2^31: saturates, still capped
            (u32::MAX, max),   // no overflow
        ];
        for (attempt, ceiling) in table {
            let d = delay(attempt, base, max, 0.999_999);
            assert!(d <= ceiling && d + MS >= ceiling, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn jitter_spans_zero_to_the_ceiling() {
        let (base, max) = (100 * MS, Duration::from_secs(1));
        assert_eq!(delay(2, base, max, 0.0), Duration::ZERO);
        assert_eq!(delay(2, base, max, 0.5), 100 * MS);
        // Out-of-range randomness is clamped rather than trusted or panicking.
        assert_eq!(delay(2, base, max, 7.0), 200 * MS);
        assert_eq!(delay(2, base, max, -1.0), Duration::ZERO);
        assert_eq!(delay(2, base, max, f64::NAN), Duration::ZERO);
        // A huge cap does not overflow.
        assert!(delay(200, Duration::MAX, Duration::MAX, 1.0) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn reads_retry_after() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let table = [
            ("1", Some(Duration::from_secs(1))),       // seconds
            (" 120 ", Some(Duration::from_secs(120))), // surrounding space
            ("0", Some(Duration::ZERO)),               // now
            ("99999999999999999999999", Some(Duration::from_secs(u64::MAX))), // overflow
            ("Sun, 06 Nov 1994 08:50:07 GMT", Some(Duration::from_secs(30))), // a date ahead
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(Duration::ZERO)), // a date past
            ("Sunday, 06-Nov-94 08:49:47 GMT", Some(Duration::from_secs(10))), // RFC 850 date
            ("-5", None),                              // negative
            ("1.5", None),                             // not an integer
            ("soon", None),                            // garbage
            ("", None),                                // empty
        ];
        for (value, want) in table {
            assert_eq!(retry_after(value, now), want, "{value:?}");
        }
    }

    #[test]
    fn policy_gives_up_when_told_to() {
        let policy = Policy {
            max_attempts: 3,
            base: 10 * MS,
            max: 100 * MS,
            max_retry_after: Duration::from_secs(60),
        };
        // Within the budget: the jittered backoff.
        assert_eq!(policy.next(1, None, 0.5), Some(5 * MS));
        assert_eq!(policy.next(2, None, 0.5), Some(10 * MS));
        // The third attempt was the last.
        assert_eq!(policy.next(3, None, 0.5), None);
        // Retry-After is a minimum...
        assert_eq!(policy.next(1, Some(Duration::from_secs(1)), 0.5), Some(Duration::from_secs(1)));
        assert_eq!(policy.next(1, Some(Duration::ZERO), 0.5), Some(5 * MS));
        // ...up to the limit; past it there is no point waiting.
        assert_eq!(
            policy.next(1, Some(Duration::from_secs(60)), 0.0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(policy.next(1, Some(Duration::from_secs(61)), 0.0), None);
    }
}
