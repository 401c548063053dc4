//! Reopening an embedded database this very process has just closed.
//!
//! sled lets go of its lock file when the last handle on its internals drops, and its
//! background threads hold such handles a moment after the database itself was dropped (an
//! I/O job in flight, the flusher's last pass). A database reopened at once by the same
//! process (a store looked at and then fetched into, a restart within a test) would find the
//! lock held by itself. [`retry_held_lock`] retries such an open for [`REOPEN_GRACE`] before
//! it reports the lock as another process's. (The one piece of this crate that waits.)

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How long an open whose lock is held is retried.
pub const REOPEN_GRACE: Duration = Duration::from_secs(2);

/// Calls `open` until it succeeds, fails otherwise than on a held lock, or [`REOPEN_GRACE`]
/// has passed (then its last error is returned).
pub fn retry_held_lock<T, E: Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let end = Instant::now() + REOPEN_GRACE;
    loop {
        match open() {
            Err(e) if is_lock_held(&e) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// True if `e` says a database's lock file is held (sled's words; its error carries no kind
/// to match on).
pub fn is_lock_held(e: &impl Display) -> bool {
    e.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_retried_until_it_is_let_go() {
        let mut calls = 0;
        let r: Result<u32, String> = retry_held_lock(|| {
            calls += 1;
            if calls < 3 {
                Err("could not acquire lock on \"db\"".into())
            } else {
                Ok(7)
            }
        });
        assert_eq!((r, calls), (Ok(7), 3));
    }

    #[test]
    fn other_errors_are_not_retried_and_a_lock_never_let_go_is_reported() {
        let mut calls = 0;
        let r: Result<(), String> = retry_held_lock(|| {
            calls += 1;
            Err("corrupt".into())
        });
        assert_eq!((r, calls), (Err("corrupt".into()), 1));
        let started = Instant::now();
        let r: Result<(), String> = retry_held_lock(|| Err("could not acquire lock".into()));
        assert!(r.is_err() && started.elapsed() >= REOPEN_GRACE);
    }
}
