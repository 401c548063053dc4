//! A download in progress: a preallocated partial file beside the output path.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use shoal_core::{Bitfield, ContentId, Manifest, PieceHash, PieceIndex};

use crate::meta::{ContentRecord, Source};
use crate::{Store, StoreError};

/// The shared part of a download: what other peers may be served from while it runs.
#[derive(Debug)]
pub(crate) struct PartialState {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    // Held only to read or set bits.
    have: Mutex<Bitfield>,
    /// Pieces this process hashed and then wrote (not those a resume found recorded): serving
    /// them needs no second hash. Held only to read or set bits.
    written: Mutex<Bitfield>,
}

impl PartialState {
    pub(crate) fn have(&self) -> Bitfield {
        self.have.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn written_here(&self, piece: PieceIndex) -> bool {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).get(piece)
    }
}

/// A download being written. Pieces are verified before they are written; verified pieces
/// become durable at [`Download::checkpoint`]; [`Download::finish`] moves the complete file to
/// its output path.
#[derive(Debug)]
pub struct Download {
    store: Store,
    manifest: Arc<Manifest>,
    output: PathBuf,
    state: Arc<PartialState>,
    /// Verified and written, not yet recorded as durable. Held only for push/take.
    pending: Mutex<Vec<PieceIndex>>,
    /// Serialises writes to the partial file; `true` once finished (later writes, such as
    /// endgame duplicates still in flight, are skipped).
    write_lock: Mutex<bool>,
    resumed: u32,
}

fn partial_path(output: &Path, id: ContentId) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".{name}.{}.shoal-part", id.fmt_short()))
}

fn preallocate(file: &File, path: &Path, size: u64) -> Result<(), StoreError> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => {
            Err(StoreError::NoSpace { path: path.to_path_buf(), needed: size })
        }
        // Filesystems without fallocate: a sparse file; a full disk shows at write time.
        Err(rustix::io::Errno::OPNOTSUPP) => {
            file.set_len(size).map_err(StoreError::io("cannot create", path))
        }
        Err(e) => Err(StoreError::io("cannot create", path)(e.into())),
    }
}

impl Download {
    pub(crate) fn begin(
        store: Store,
        manifest: Arc<Manifest>,
        output: &Path,
    ) -> Result<Self, StoreError> {
        let id = manifest.content_id();
        let parent = match output.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return Err(StoreError::NoOutputDir(output.to_path_buf())),
        };
        if !parent.is_dir() {
            return Err(StoreError::NoOutputDir(parent.to_path_buf()));
        }
        let parent = fs::canonicalize(parent).map_err(StoreError::io("cannot open", parent))?;
        let output = parent
            .join(output.file_name().ok_or_else(|| StoreError::NoOutputDir(output.to_path_buf()))?);
        if output.symlink_metadata().is_ok() {
            return Err(StoreError::OutputExists(output));
        }
        let meta = store.inner().meta.clone();
        let partial = partial_path(&output, id);
        // From the first read of its record until it is listed as running: no removal lands
        // in between (it would delete what this resumes from).
        let removal = store.inner().removal.lock().unwrap_or_else(|p| p.into_inner());
        let previous = meta.record(id)?;
        let resumable = matches!(&previous,
            Some(ContentRecord { source: Source::Download { partial: p, output: o }, .. })
                if *p == partial && *o == output);
        let mut have = Bitfield::new(manifest.piece_count());
        // Never follow a symlink planted where the partial file goes (another local user
        // sharing the output directory could point it at a file of ours).
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&partial)
        {
            Ok(f) if resumable && f.metadata().is_ok_and(|md| md.len() == manifest.size()) => {
                for p in meta.verified(id)? {
                    have.set(p);
                }
                f
            }
            _ => {
                if let Some(ContentRecord {
                    source: Source::Download { partial: old, .. }, ..
                }) = &previous
                {
                    if *old != partial {
                        let _ = fs::remove_file(old);
                    }
                }
                // A stale partial file (or whatever sits at its name, a symlink included) is
                // removed, then the new one is created exclusively: O_EXCL fails rather than
                // follow a link or reuse a file someone else created in between.
                match fs::remove_file(&partial) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("cannot replace", &partial)(e)),
                }
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&partial)
                    .map_err(StoreError::io("cannot create", &partial))?;
                if let Err(e) = preallocate(&f, &partial, manifest.size()) {
                    drop(f);
                    let _ = fs::remove_file(&partial);
                    return Err(e);
                }
                meta.clear_verified(id)?;
                f
            }
        };
        let rec = ContentRecord {
            name: manifest.name().to_string(),
            size: manifest.size(),
            source: Source::Download { partial: partial.clone(), output: output.clone() },
        };
        let resumed = have.count();
        let written = Mutex::new(Bitfield::new(manifest.piece_count()));
        let state = Arc::new(PartialState { file, path: partial, have: Mutex::new(have), written });
        meta.put_content(id, &rec, &manifest.encode())?;
        meta.flush()?;
        store.inner().active.lock().unwrap_or_else(|p| p.into_inner()).insert(id, state.clone());
        drop(removal);
        store.cache_manifest(manifest.clone());
        store.forget_file(id);
        Ok(Self {
            store,
            manifest,
            output,
            state,
            pending: Mutex::new(Vec::new()),
            write_lock: Mutex::new(false),
            resumed,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The output path.
    pub fn output(&self) -> &Path {
        &self.output
    }

    /// The pieces verified so far (durable or not).
    pub fn have(&self) -> Bitfield {
        self.state.have()
    }

    /// An empty buffer with room for a piece of `len` bytes, from the store's spares if one
    /// fits: receive a piece into it, then hand it back with [`Download::give_back`].
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        self.store.inner().buffers.take(len)
    }

    /// Keeps a piece buffer for a later [`Download::buffer`] (within the store's bound on
    /// spare buffers, [`crate::MAX_SPARE_BYTES`]).
    pub fn give_back(&self, buf: Vec<u8>) {
        self.store.inner().buffers.give_back(buf);
    }

    /// Pieces that were already verified when this download began (a resume).
    pub fn resumed_pieces(&self) -> u32 {
        self.resumed
    }

    /// Checks `data` against the hash of piece `piece` and, if it matches, writes it at its
    /// offset. Returns false (writing nothing) if it does not match. Blocking.
    ///
    /// The piece arrives whole and contiguous on purpose: BLAKE3 runs at full SIMD width only
    /// on large inputs, and ext4 zeroes the rest of every block that a write covers only
    /// partly (fallocated blocks are "unwritten"), so one aligned write per piece is several
    /// times cheaper than writing network-sized chunks as they come.
    pub fn write_piece(&self, piece: PieceIndex, data: &[u8]) -> Result<bool, StoreError> {
        let Some(expected) = self.manifest.piece_hash(piece) else { return Ok(false) };
        let range = self.manifest.piece_range(piece);
        if data.len() as u64 != range.end - range.start || PieceHash::of(data) != expected {
            return Ok(false);
        }
        {
            // One writer at a time: concurrent writes to one file only contend on its inode
            // lock. Hashing above stays parallel.
            let finished = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            if *finished {
                return Ok(true);
            }
            self.state
                .file
                .write_all_at(data, range.start)
                .map_err(StoreError::io("cannot write", &self.state.path))?;
        }
        self.state.written.lock().unwrap_or_else(|p| p.into_inner()).set(piece);
        let newly = self.state.have.lock().unwrap_or_else(|p| p.into_inner()).set(piece);
        if newly {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(piece);
        }
        Ok(true)
    }

    /// Makes the pieces written so far durable: syncs the partial file, then records them as
    /// verified. Blocking.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        let meta = &self.store.inner().meta;
        let result = self
            .state
            .file
            .sync_data()
            .map_err(StoreError::io("cannot sync", &self.state.path))
            .and_then(|()| meta.mark_verified(self.manifest.content_id(), &pending))
            .and_then(|()| meta.flush());
        if result.is_err() {
            // Not durable: keep them pending so a later checkpoint can retry.
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).extend(pending);
        }
        result
    }

    /// Moves the complete file to the output path (fsync, rename, fsync of the directory) and
    /// records it as seeded from there. Writes that arrive afterwards are skipped. Blocking.
    pub fn finish(&self) -> Result<PathBuf, StoreError> {
        let id = self.manifest.content_id();
        assert!(self.have().is_complete(), "finish() called on an incomplete download");
        let mut finished = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if *finished {
            return Ok(self.output.clone());
        }
        // Late writes wait on this lock; they are skipped once `finished` is set, after the
        // move: a failed finish leaves the download resumable and a retry moves it again.
        self.checkpoint()?;
        let path = &self.state.path;
        self.state.file.sync_all().map_err(StoreError::io("cannot sync", path))?;
        // Never replace whatever appeared at the output meanwhile (a file, or a symlink planted
        // by another user): the rename refuses to overwrite, atomically.
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            path,
            rustix::fs::CWD,
            &self.output,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(StoreError::OutputExists(self.output.clone()))
            }
            // Filesystems without RENAME_NOREPLACE: check, then rename (a small window).
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
                if self.output.symlink_metadata().is_ok() {
                    return Err(StoreError::OutputExists(self.output.clone()));
                }
                fs::rename(path, &self.output)
                    .map_err(StoreError::io("cannot move into place", path))?;
            }
            Err(e) => return Err(StoreError::io("cannot move into place", path)(e.into())),
        }
        *finished = true;
        if let Some(dir) = self.output.parent() {
            // Make the rename itself durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let md = fs::metadata(&self.output).map_err(StoreError::io("cannot read", &self.output))?;
        let mtime_ns = crate::store::mtime_ns(&md);
        let rec = ContentRecord {
            name: self.manifest.name().to_string(),
            size: self.manifest.size(),
            source: Source::Seeded {
                path: self.output.clone(),
                len: md.len(),
                mtime_ns,
                changed: false,
                fetched: true,
            },
        };
        let meta = &self.store.inner().meta;
        meta.update_record(id, &rec)?;
        meta.clear_verified(id)?;
        meta.flush()?;
        Ok(self.output.clone())
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        // Best effort: whatever was verified stays resumable.
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "cannot record verified pieces");
        }
        let id = self.manifest.content_id();
        let mut active = self.store.inner().active.lock().unwrap_or_else(|p| p.into_inner());
        if active.get(&id).is_some_and(|s| Arc::ptr_eq(s, &self.state)) {
            active.remove(&id);
        }
        drop(active);
        self.store.forget_file(id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shoal_core::{Manifest, PieceHash};

    use super::*;
    use crate::{MemMeta, Removal};

    fn one_piece() -> (Arc<Manifest>, Vec<u8>) {
        let data = b"hello, shoal".to_vec();
        let m = Manifest::new("f", data.len() as u64, vec![PieceHash::of(&data)]).unwrap();
        (Arc::new(m), data)
    }

    #[test]
    fn a_symlink_at_the_partial_path_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with_meta(Arc::new(MemMeta::default()));
        let (m, data) = one_piece();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let output = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, partial_path(&output, m.content_id())).unwrap();
        let dl = store.begin_download(m, &output).unwrap();
        assert!(dl.write_piece(PieceIndex(0), &data).unwrap());
        dl.finish().unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious", "the link's target is untouched");
        assert_eq!(fs::read(&output).unwrap(), data);
    }

    #[test]
    fn a_file_that_appears_at_the_output_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with_meta(Arc::new(MemMeta::default()));
        let (m, data) = one_piece();
        let output = dir.path().join("out.bin");
        let dl = store.begin_download(m, &output).unwrap();
        assert!(dl.write_piece(PieceIndex(0), &data).unwrap());
        // Someone (or a symlink planted by another user) takes the name meanwhile.
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &output).unwrap();
        assert!(matches!(dl.finish(), Err(StoreError::OutputExists(_))));
        assert!(matches!(dl.finish(), Err(StoreError::OutputExists(_))), "a retry refuses too");
        assert!(output.symlink_metadata().unwrap().file_type().is_symlink());
        assert!(!dir.path().join("elsewhere").exists(), "nothing written through the link");
    }

    /// `shoal rm`'s removal is refused while a download of the content runs, and done once
    /// it ended; a download that begins after it starts from nothing.
    #[test]
    fn a_running_download_is_never_removed_from_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with_meta(Arc::new(MemMeta::default()));
        let (m, data) = one_piece();
        let id = m.content_id();
        let dl = store.begin_download(m.clone(), &dir.path().join("a.bin")).unwrap();
        assert_eq!(
            store.remove_if_idle(id, |_| true).unwrap(),
            Removal::Downloading,
            "refused while it runs"
        );
        assert!(store.record(id).unwrap().is_some(), "and nothing forgotten");
        drop(dl);
        let kept = store.remove_if_idle(id, |r| matches!(r.source, Source::Seeded { .. })).unwrap();
        assert!(matches!(kept, Removal::Kept(_)), "a record the caller would not remove stays");
        let removed = store.remove_if_idle(id, |_| true).unwrap();
        assert!(matches!(removed, Removal::Removed(r) if r.name == "f"), "done once it ended");
        assert!(store.record(id).unwrap().is_none());
        assert_eq!(store.remove_if_idle(id, |_| true).unwrap(), Removal::NotHeld);
        let dl = store.begin_download(m, &dir.path().join("b.bin")).unwrap();
        assert_eq!(dl.resumed_pieces(), 0);
        assert!(dl.write_piece(PieceIndex(0), &data).unwrap());
        dl.finish().unwrap();
        assert!(store.record(id).unwrap().is_some());
    }
}
