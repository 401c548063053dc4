//! Which pieces of a seeded file this process has already checked against their hashes, so a
//! piece served many times is hashed once rather than on every send.
//!
//! A piece stays checked only while the file looks untouched: the marks are tied to a
//! [`Stamp`] of the open file (inode, length, modification and status-change times), read with
//! one `fstat` per piece served, and any difference clears them. Every write through the file
//! system moves the status-change time, which no user can set back; what this does not see is a
//! change below the file system (a failing disk, a write to the raw device) after the piece
//! was checked. Such a piece is sent as it is read, and the receiver, which hashes every piece,
//! rejects it (and bans this node for it). The memory: one bit per piece of each content served.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use shoal_core::{Bitfield, ContentId, PieceIndex};

/// What identifies one state of a file's bytes, as far as the file system tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    /// The stamp of an open file (one `fstat`).
    pub(crate) fn of(file: &File) -> std::io::Result<Self> {
        let md = file.metadata()?;
        Ok(Self {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime_ns: crate::store::mtime_ns(&md),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec()),
        })
    }

    /// True if the file still has the length and modification time recorded at import.
    pub(crate) fn matches(&self, len: u64, mtime_ns: i64) -> bool {
        self.len == len && self.mtime_ns == mtime_ns
    }
}

/// Pieces checked per content, each set tied to the stamp it was checked under.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    // Held only for a lookup or an insert, never across I/O or hashing.
    map: Mutex<HashMap<ContentId, (Stamp, Bitfield)>>,
}

impl Checked {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContentId, (Stamp, Bitfield)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True if `piece` was checked while the file had `stamp`.
    pub(crate) fn contains(&self, id: ContentId, stamp: Stamp, piece: PieceIndex) -> bool {
        self.lock().get(&id).is_some_and(|(s, b)| *s == stamp && b.get(piece))
    }

    /// Records that `piece` matched its hash while the file had `stamp`; marks made under
    /// another stamp are dropped.
    pub(crate) fn insert(&self, id: ContentId, stamp: Stamp, pieces: u32, piece: PieceIndex) {
        let mut map = self.lock();
        let entry = map.entry(id).or_insert_with(|| (stamp, Bitfield::new(pieces)));
        if entry.0 != stamp || entry.1.len() != pieces {
            *entry = (stamp, Bitfield::new(pieces));
        }
        entry.1.set(piece);
    }

    /// Forgets every mark of a content (its file changed, or it was imported again).
    pub(crate) fn forget(&self, id: ContentId) {
        self.lock().remove(&id);
    }
}
