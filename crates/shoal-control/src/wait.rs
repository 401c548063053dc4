//! Finding the daemon of a data dir, waiting briefly for one that is starting.
//!
//! A command run right after `shoal daemon &` (in the same script) finds a daemon that holds
//! its lock but does not answer yet: it waits for it, up to [`wait_bound`] (15 s, or
//! `SHOAL_DAEMON_WAIT` seconds), and fails with one line if it never answers or stops while
//! starting. A command that needs a daemon and finds none looks again for [`GRACE`] first: the
//! daemon started just before it may not have run its first line yet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::{Client, Error};
use crate::lock::{probe, Probe};

/// The environment variable that sets how long commands wait for a starting daemon, in
/// seconds (`0`: do not wait).
pub const WAIT_ENV: &str = "SHOAL_DAEMON_WAIT";
/// How long commands wait for a starting daemon by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);
/// How long a command that needs a daemon looks for one that was just started, before it
/// says there is none (at most the wait bound).
pub const GRACE: Duration = Duration::from_secs(1);
/// How often the data dir is looked at again while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Whether a command can do without a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// It cannot (`add`, `status`, `jobs`...): look for a just-started daemon for [`GRACE`].
    Daemon,
    /// It runs standalone without one (`get`, `ls`): decide at once when none holds the lock.
    Optional,
}

/// Why no daemon could be waited for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The wait bound in the environment is not a number of seconds.
    #[error("{WAIT_ENV}={0:?}: write a number of seconds, like 15")]
    BadBound(String),
    /// The daemon holds its lock but did not answer within the bound.
    #[error(
        "the shoal daemon of data dir {}{} did not start within {}s: see its output, or wait longer with {WAIT_ENV}=SECONDS",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        waited.as_secs()
    )]
    NotStarted {
        /// The data dir.
        dir: PathBuf,
        /// The daemon's pid, if known.
        pid: Option<u32>,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The daemon let go of its lock before it answered: it failed to start.
    #[error("the shoal daemon of data dir {} stopped before it answered (it failed to start, or was stopped): its output says why", .0.display())]
    Stopped(PathBuf),
    /// The lock file cannot be read.
    #[error("cannot read the daemon lock of data dir {}: {source}", dir.display())]
    Lock {
        /// The data dir.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon's control file or API failed.
    #[error(transparent)]
    Client(#[from] Error),
}

/// The wait bound: `SHOAL_DAEMON_WAIT` seconds, else [`DEFAULT_WAIT`].
pub fn wait_bound() -> Result<Duration, WaitError> {
    match std::env::var(WAIT_ENV) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or(WaitError::BadBound(v)),
        Err(_) => Ok(DEFAULT_WAIT),
    }
}

impl Client {
    /// The daemon of `data_dir`: at once if it answers; after waiting up to `bound` if it is
    /// starting (calling `on_wait` once, with its pid, when the wait begins); `None` if no
    /// daemon runs there (for [`Need::Daemon`], after looking again for [`GRACE`]). Blocking.
    pub fn find_waiting(
        data_dir: &Path,
        need: Need,
        bound: Duration,
        mut on_wait: impl FnMut(Option<u32>),
    ) -> Result<Option<Self>, WaitError> {
        let start = Instant::now();
        let grace = if need == Need::Daemon { GRACE.min(bound) } else { Duration::ZERO };
        let mut waiting = false;
        loop {
            if let Some(c) = Client::find(data_dir)? {
                return Ok(Some(c));
            }
            let state = probe(data_dir)
                .map_err(|source| WaitError::Lock { dir: data_dir.to_path_buf(), source })?;
            match state {
                Probe::Held { pid } => {
                    if start.elapsed() >= bound {
                        let dir = data_dir.to_path_buf();
                        return Err(WaitError::NotStarted { dir, pid, waited: bound });
                    }
                    if !waiting {
                        waiting = true;
                        on_wait(pid);
                    }
                }
                // It answered meanwhile and stopped, or it gave up starting.
                Probe::Free if waiting => {
                    return match Client::find(data_dir)? {
                        Some(c) => Ok(Some(c)),
                        None => Err(WaitError::Stopped(data_dir.to_path_buf())),
                    }
                }
                Probe::Free if start.elapsed() >= grace => return Ok(None),
                Probe::Free => {}
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::DaemonLock;

    #[test]
    fn no_daemon_is_none_and_a_silent_one_is_waited_for_then_named() {
        let dir = tempfile::tempdir().unwrap();
        let found = Client::find_waiting(dir.path(), Need::Optional, DEFAULT_WAIT, |_| {
            panic!("nothing to wait for")
        });
        assert!(found.unwrap().is_none());
        let t = Instant::now();
        assert!(Client::find_waiting(dir.path(), Need::Daemon, GRACE, |_| {}).unwrap().is_none());
        assert!(t.elapsed() >= GRACE, "a command that needs a daemon looks again first");
        // A daemon that holds its lock and never answers: waited for, then named.
        let _lock = DaemonLock::acquire(dir.path()).unwrap();
        let mut told = Vec::new();
        let bound = Duration::from_millis(300);
        let e =
            Client::find_waiting(dir.path(), Need::Optional, bound, |p| told.push(p)).unwrap_err();
        assert_eq!(told, vec![Some(std::process::id())], "one message, with the pid");
        assert!(matches!(e, WaitError::NotStarted { .. }), "{e:?}");
        assert!(e.to_string().contains("did not start within 0s"), "{e}");
    }

    #[test]
    fn a_daemon_that_stops_while_starting_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DaemonLock::acquire(dir.path()).unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let on_wait = |_| tx.send(()).unwrap();
            Client::find_waiting(&path, Need::Daemon, DEFAULT_WAIT, on_wait).map(|c| c.is_some())
        });
        rx.recv().unwrap();
        drop(lock);
        let e = waiter.join().unwrap().unwrap_err();
        assert!(matches!(e, WaitError::Stopped(_)), "{e:?}");
    }
}
