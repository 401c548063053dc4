//! The daemon lock: how a command tells "a daemon is starting" from "no daemon".
//!
//! A daemon takes an exclusive `flock` on [`LOCK_FILE`] (`daemon.lock` in its data dir) before
//! it opens anything else, writes its pid into it, and holds it until it exits; it writes
//! `control.json` only once its API answers. A command that finds no answering `control.json`
//! probes the lock: held means a daemon is starting (wait for it), free means none runs. The
//! kernel drops a `flock` when its holder dies, so a daemon that crashed leaves a file nobody
//! holds: a stale lock never makes anyone wait.
//!
//! A probe takes a shared lock for an instant; a daemon starting at that very instant retries
//! for [`ACQUIRE_FOR`] before it concludes that another daemon holds the data dir.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

/// The lock file in the data dir.
pub const LOCK_FILE: &str = "daemon.lock";

/// How long a daemon retries a lock that is held (by a probe, for an instant).
pub const ACQUIRE_FOR: Duration = Duration::from_millis(500);

/// Why a daemon cannot take its data dir.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another daemon holds the data dir.
    #[error(
        "data dir {} already has a running shoal daemon{}: stop it, or give this one another --data-dir",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The data dir.
        dir: PathBuf,
        /// The holder's pid, if it wrote it yet.
        pid: Option<u32>,
    },
    /// The lock file cannot be opened or written.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The daemon's hold on its data dir, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

const NO_FOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// `O_NOFOLLOW` on a symlink fails with `ELOOP`: say what it means.
fn refused_link(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return std::io::Error::other(
            "it is a symlink, which a lock file never is: remove it (and check who can write the data dir)",
        );
    }
    e
}

/// The lock file must be a regular file with one name: not a FIFO or device, nor a hard link
/// to a file elsewhere.
fn plain_file(f: &File) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    if !m.file_type().is_file() || m.nlink() != 1 {
        return Err(std::io::Error::other(
            "it is not a plain file (a FIFO, device or hard link was put there): remove it \
             (and check who can write the data dir)",
        ));
    }
    Ok(())
}

fn read_pid(f: &File) -> Option<u32> {
    let mut s = String::new();
    // The pid is a few digits; anything longer is not ours to read.
    Read::take(f, 32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

impl DaemonLock {
    /// Takes the data dir `dir` (which must exist) for a daemon, retrying for
    /// [`ACQUIRE_FOR`] while a probe holds the lock; writes this process's pid into it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io { path: path.clone(), source };
        // Never through a symlink, and only a file of ours alone: one planted in a data dir
        // others can write must not make the daemon truncate what it points to.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(NO_FOLLOW)
            .open(&path)
            .map_err(|e| io(refused_link(e)))?;
        plain_file(&file).map_err(io)?;
        let end = Instant::now() + ACQUIRE_FOR;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(LockError::Held { dir: dir.to_path_buf(), pid: read_pid(&file) });
                }
                Err(e) => return Err(io(e.into())),
            }
        }
        file.set_len(0).map_err(io)?;
        file.write_all(std::process::id().to_string().as_bytes()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// What the lock of a data dir says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// No daemon holds it.
    Free,
    /// A daemon holds it (running, or starting if `control.json` does not answer yet).
    Held {
        /// Its pid, if it wrote it yet.
        pid: Option<u32>,
    },
}

/// Probes the daemon lock of `dir` without keeping it.
pub fn probe(dir: &Path) -> std::io::Result<Probe> {
    // Not through a symlink, and without blocking on a FIFO put there instead of the file.
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(NO_FOLLOW | rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(dir.join(LOCK_FILE));
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Free),
        Err(e) => return Err(refused_link(e)),
    };
    plain_file(&file)?;
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        // Closing the file drops the shared lock at once.
        Ok(()) => Ok(Probe::Free),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(Probe::Held { pid: read_pid(&file) }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_or_fifo_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();
        let err = DaemonLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(probe(dir.path()).unwrap_err().to_string().contains("symlink"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the target was written");

        let dir = tempfile::tempdir().unwrap();
        std::fs::hard_link(&victim, dir.path().join(LOCK_FILE)).unwrap();
        let err = DaemonLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a plain file"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the target was written");

        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(LOCK_FILE);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Neither blocks on the FIFO; both refuse it.
        assert!(probe(dir.path()).unwrap_err().to_string().contains("not a plain file"));
        assert!(DaemonLock::acquire(dir.path()).is_err());
    }

    #[test]
    fn a_held_lock_is_seen_and_a_dropped_one_is_free() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(probe(dir.path()).unwrap(), Probe::Free, "no file: no daemon");
        let lock = DaemonLock::acquire(dir.path()).unwrap();
        assert_eq!(probe(dir.path()).unwrap(), Probe::Held { pid: Some(std::process::id()) });
        let e = DaemonLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, LockError::Held { pid: Some(_), .. }), "{e:?}");
        assert!(e.to_string().contains("already has a running shoal daemon"), "{e}");
        drop(lock);
        // The file stays, as after a crash: nobody holds it, so nobody waits on it.
        assert!(dir.path().join(LOCK_FILE).exists());
        assert_eq!(probe(dir.path()).unwrap(), Probe::Free);
        DaemonLock::acquire(dir.path()).unwrap();
    }
}
