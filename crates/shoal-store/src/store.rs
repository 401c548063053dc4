//! The store: contents, their sources, and reading pieces for upload.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shoal_core::{hash, Bitfield, ContentId, Manifest, PieceHash, PieceIndex};

use crate::buffers::Buffers;
use crate::checked::{Checked, Stamp};
use crate::download::{Download, PartialState};
use crate::meta::{ContentRecord, MetaStore, SledMeta, Source};
use crate::StoreError;

/// What `shoal ls` shows for a content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// Every piece is held and served.
    Complete,
    /// A download holding `have` of `total` pieces.
    Partial {
        /// pieces verified
        have: u32,
        /// pieces in the content
        total: u32,
    },
    /// The seeded file changed on disk; it is not served.
    SourceChanged,
}

/// One content in the store.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The content id.
    pub content: ContentId,
    /// The file name.
    pub name: String,
    /// The file size.
    pub size: u64,
    /// Its state.
    pub state: EntryState,
    /// Where its bytes are (the seeded file, or the output path of a download).
    pub path: PathBuf,
}

/// The piece store of a node. Cheap to clone; all clones share state.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) meta: Arc<dyn MetaStore>,
    /// Downloads in progress in this process. Locks here are held only for map access.
    pub(crate) active: Mutex<HashMap<ContentId, Arc<PartialState>>>,
    /// Held by [`Download::begin`] from its first read of a content's record until it is
    /// listed in `active`, and by [`Store::remove_if_idle`]: a removal never lands between
    /// them. Never taken while `active` is held.
    pub(crate) removal: Mutex<()>,
    manifests: Mutex<HashMap<ContentId, Arc<Manifest>>>,
    files: Mutex<HashMap<ContentId, Arc<File>>>,
    /// Pieces of seeded files already checked against their hashes by this process.
    checked: Checked,
    /// Spare piece buffers, for reads and for downloads.
    pub(crate) buffers: Buffers,
}

/// What [`Store::remove_if_idle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Forgotten; this was its record.
    Removed(ContentRecord),
    /// Nothing to forget: no record of it.
    NotHeld,
    /// Not forgotten: its record is not one the caller would remove.
    Kept(ContentRecord),
    /// Not forgotten: a download of it runs in this process.
    Downloading,
}

/// Modification time in nanoseconds since the epoch (fits an i64 until 2262).
pub(crate) fn mtime_ns(md: &fs::Metadata) -> i64 {
    md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec())
}

/// Reads exactly `len` bytes at `offset` into a new buffer, without zeroing it first (at
/// several hundred MiB/s of uploads, zeroing each piece buffer costs as much as the read).
pub(crate) fn read_at(
    file: &File,
    mut buf: Vec<u8>,
    len: usize,
    offset: u64,
) -> std::io::Result<Vec<u8>> {
    buf.clear();
    buf.reserve(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        // `pread` into the spare capacity only: it extends `buf` by what it read.
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens the store of the data dir `dir` (sled in `dir/meta`). A lock this process let go
    /// of a moment ago is retried (see [`shoal_core::reopen`]) before it counts as another
    /// process's.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(StoreError::io("creating data dir", dir))?;
        let meta = shoal_core::reopen::retry_held_lock(|| SledMeta::open(&dir.join("meta")))
            .map_err(|e| match e {
                StoreError::Meta(m) if shoal_core::reopen::is_lock_held(&m) => {
                    StoreError::InUse { dir: dir.to_path_buf(), detail: m }
                }
                other => other,
            })?;
        Ok(Self::with_meta(Arc::new(meta)))
    }

    /// A store over any metadata backend.
    pub fn with_meta(meta: Arc<dyn MetaStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                meta,
                active: Mutex::new(HashMap::new()),
                removal: Mutex::new(()),
                manifests: Mutex::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
                checked: Checked::default(),
                buffers: Buffers::default(),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Hashes the file at `path` on all cores and records it as seeded from where it is.
    /// Blocking. `progress` gets the byte count of each hashed piece.
    pub fn import(
        &self,
        path: &Path,
        progress: impl Fn(u64) + Sync,
    ) -> Result<Manifest, StoreError> {
        let path = fs::canonicalize(path).map_err(StoreError::io("cannot read", path))?;
        let md = fs::metadata(&path).map_err(StoreError::io("cannot read", &path))?;
        if !md.is_file() {
            return Err(StoreError::NotAFile(path));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let manifest_err = |source| StoreError::Manifest { path: path.clone(), source };
        if md.len() > shoal_core::piece::MAX_FILE_SIZE {
            return Err(manifest_err(shoal_core::manifest::ManifestError::TooLarge(md.len())));
        }
        let file = File::open(&path).map_err(StoreError::io("cannot read", &path))?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hashes =
            hash::hash_pieces(md.len(), threads, |off, buf| file.read_exact_at(buf, off), progress)
                .map_err(StoreError::io("cannot read", &path))?;
        let after = fs::metadata(&path).map_err(StoreError::io("cannot read", &path))?;
        if after.len() != md.len() || mtime_ns(&after) != mtime_ns(&md) {
            return Err(StoreError::Io {
                what: "file changed while it was being added",
                path,
                source: std::io::Error::other("try again once it is no longer being written"),
            });
        }
        let manifest = Manifest::new(&name, md.len(), hashes).map_err(manifest_err)?;
        let rec = ContentRecord {
            name,
            size: md.len(),
            source: Source::Seeded {
                path,
                len: md.len(),
                mtime_ns: mtime_ns(&md),
                changed: false,
                fetched: false,
            },
        };
        let id = manifest.content_id();
        self.inner.meta.put_content(id, &rec, &manifest.encode())?;
        self.inner.meta.clear_verified(id)?;
        self.inner.meta.flush()?;
        lock(&self.inner.files).remove(&id);
        self.inner.checked.forget(id);
        Ok(manifest)
    }

    /// The manifest of a content in the store.
    pub fn manifest(&self, id: ContentId) -> Result<Option<Arc<Manifest>>, StoreError> {
        if let Some(m) = lock(&self.inner.manifests).get(&id) {
            return Ok(Some(m.clone()));
        }
        let Some(bytes) = self.inner.meta.manifest(id)? else {
            return Ok(None);
        };
        let m = Arc::new(
            Manifest::decode(&bytes)
                .map_err(|e| StoreError::Meta(format!("stored manifest of {id}: {e}")))?,
        );
        lock(&self.inner.manifests).insert(id, m.clone());
        Ok(Some(m))
    }

    /// The stored record of a content.
    pub fn record(&self, id: ContentId) -> Result<Option<ContentRecord>, StoreError> {
        self.inner.meta.record(id)
    }

    /// The pieces this node can serve; `None` if it holds nothing of the content.
    pub fn bitfield(&self, id: ContentId) -> Result<Option<Bitfield>, StoreError> {
        if let Some(p) = lock(&self.inner.active).get(&id) {
            return Ok(Some(p.have()));
        }
        let (Some(rec), Some(m)) = (self.inner.meta.record(id)?, self.manifest(id)?) else {
            return Ok(None);
        };
        Ok(match rec.source {
            Source::Seeded { changed: false, .. } => Some(Bitfield::full(m.piece_count())),
            Source::Seeded { changed: true, .. } => None,
            Source::Download { .. } => {
                let mut b = Bitfield::new(m.piece_count());
                for p in self.inner.meta.verified(id)? {
                    b.set(p);
                }
                Some(b)
            }
        })
    }

    /// Reads piece `piece` for upload and checks it against its hash. Blocking.
    ///
    /// A seeded file whose bytes no longer match, or whose length or modification time differ
    /// from the ones recorded at import, is marked changed (and logged) and
    /// [`StoreError::SourceChanged`] is returned, now and from then on. A piece is hashed
    /// once per process while the file stays untouched (see `checked.rs` for what that sees),
    /// and a piece this process verified and wrote during a download is not hashed again.
    ///
    /// The bytes are in a buffer that goes back to the store's spares once they are dropped.
    pub fn read_piece(&self, id: ContentId, piece: PieceIndex) -> Result<Bytes, StoreError> {
        let m = self.manifest(id)?.ok_or(StoreError::NotFound(id))?;
        let expected = m.piece_hash(piece).ok_or(StoreError::NotFound(id))?;
        let range = m.piece_range(piece);
        let len = (range.end - range.start) as usize;
        let fresh = || self.inner.buffers.take(len);
        let active = lock(&self.inner.active).get(&id).cloned();
        if let Some(p) = active {
            if !p.have().get(piece) {
                return Err(StoreError::NotFound(id));
            }
            let buf = read_at(&p.file, fresh(), len, range.start)
                .map_err(StoreError::io("cannot read", &p.path))?;
            if !p.written_here(piece) && PieceHash::of(&buf) != expected {
                return Err(StoreError::Io {
                    what: "verified piece no longer matches in",
                    path: p.path.clone(),
                    source: std::io::Error::other(format!("piece {piece}")),
                });
            }
            return Ok(self.inner.buffers.lend(buf));
        }
        let rec = self.inner.meta.record(id)?.ok_or(StoreError::NotFound(id))?;
        match &rec.source {
            Source::Seeded { changed: true, .. } => Err(StoreError::SourceChanged(id)),
            Source::Seeded { path, len: rec_len, mtime_ns, .. } => {
                let file = self.open_cached(id, path)?;
                let changed = |why: &str| {
                    self.mark_changed(id, rec.clone(), why);
                    StoreError::SourceChanged(id)
                };
                let stamp = match Stamp::of(&file) {
                    Ok(s) if s.matches(*rec_len, *mtime_ns) => s,
                    Ok(s) => {
                        let why = format!(
                            "size or modification time changed (recorded {rec_len} bytes at \
                             {mtime_ns} ns, now {s:?})"
                        );
                        return Err(changed(&why));
                    }
                    Err(e) => return Err(changed(&format!("cannot stat it: {e}"))),
                };
                let Ok(buf) = read_at(&file, fresh(), len, range.start) else {
                    return Err(changed(&format!("piece {piece} cannot be read")));
                };
                if !self.inner.checked.contains(id, stamp, piece) {
                    if PieceHash::of(&buf) != expected {
                        return Err(changed(&format!("piece {piece} no longer matches its hash")));
                    }
                    self.inner.checked.insert(id, stamp, m.piece_count(), piece);
                }
                Ok(self.inner.buffers.lend(buf))
            }
            Source::Download { partial, .. } => {
                if !self.inner.meta.is_verified(id, piece)? {
                    return Err(StoreError::NotFound(id));
                }
                let file = self.open_cached(id, partial)?;
                let buf = read_at(&file, fresh(), len, range.start)
                    .map_err(StoreError::io("cannot read", partial))?;
                if PieceHash::of(&buf) != expected {
                    return Err(StoreError::NotFound(id));
                }
                Ok(self.inner.buffers.lend(buf))
            }
        }
    }

    fn open_cached(&self, id: ContentId, path: &Path) -> Result<Arc<File>, StoreError> {
        if let Some(f) = lock(&self.inner.files).get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::SourceChanged(id)
            } else {
                StoreError::io("cannot read", path)(e)
            }
        })?);
        lock(&self.inner.files).insert(id, f.clone());
        Ok(f)
    }

    fn mark_changed(&self, id: ContentId, mut rec: ContentRecord, why: &str) {
        if let Source::Seeded { changed, path, .. } = &mut rec.source {
            if *changed {
                return;
            }
            *changed = true;
            tracing::warn!(content = %id, path = %path.display(), why, "source file changed on disk; no longer seeding it");
        }
        lock(&self.inner.files).remove(&id);
        self.inner.checked.forget(id);
        if let Err(e) =
            self.inner.meta.update_record(id, &rec).and_then(|()| self.inner.meta.flush())
        {
            tracing::warn!(content = %id, error = %e, "cannot record changed source");
        }
    }

    /// Every content, with its state. A seeded file whose size or modification time changed
    /// since it was recorded is marked changed here.
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for (id, rec) in self.inner.meta.records()? {
            let state = match &rec.source {
                Source::Seeded { changed: true, .. } => EntryState::SourceChanged,
                Source::Seeded { path, len, mtime_ns: t, .. } => match fs::metadata(path) {
                    Ok(md) if md.len() == *len && mtime_ns(&md) == *t => EntryState::Complete,
                    _ => {
                        self.mark_changed(id, rec.clone(), "size or modification time changed");
                        EntryState::SourceChanged
                    }
                },
                Source::Download { .. } => {
                    let b = self.bitfield(id)?.unwrap_or_default();
                    EntryState::Partial { have: b.count(), total: b.len() }
                }
            };
            let path = match &rec.source {
                Source::Seeded { path, .. } => path.clone(),
                Source::Download { output, .. } => output.clone(),
            };
            out.push(Entry { content: id, name: rec.name, size: rec.size, state, path });
        }
        Ok(out)
    }

    /// Starts or resumes downloading `manifest` into `output` (which must not exist; its
    /// directory must). Verified pieces of an earlier attempt at the same output are kept.
    /// Blocking.
    pub fn begin_download(
        &self,
        manifest: Arc<Manifest>,
        output: &Path,
    ) -> Result<Download, StoreError> {
        Download::begin(self.clone(), manifest, output)
    }

    /// Forgets a content: its record, manifest and verified pieces, and what is cached of
    /// them in memory. The file itself is the caller's (it may be a user's seeded file).
    /// Blocking.
    pub fn remove(&self, id: ContentId) -> Result<(), StoreError> {
        self.inner.meta.remove_content(id)?;
        lock(&self.inner.manifests).remove(&id);
        self.forget_file(id);
        Ok(())
    }

    /// [`Store::remove`] unless a download of `id` runs in this process, checked and done in
    /// one step: a download that begins meanwhile is either refused here or begins after the
    /// removal, from nothing (see `Inner::removal`). Only a record `only` accepts is removed
    /// (read in that same step: a fetch may have finished since the caller looked). Blocking.
    pub fn remove_if_idle(
        &self,
        id: ContentId,
        only: impl FnOnce(&ContentRecord) -> bool,
    ) -> Result<Removal, StoreError> {
        let _removal = lock(&self.inner.removal);
        if lock(&self.inner.active).contains_key(&id) {
            return Ok(Removal::Downloading);
        }
        let Some(rec) = self.inner.meta.record(id)? else { return Ok(Removal::NotHeld) };
        if !only(&rec) {
            return Ok(Removal::Kept(rec));
        }
        self.remove(id)?;
        Ok(Removal::Removed(rec))
    }

    /// True while a download of `id` runs in this process (its partial file is being
    /// written).
    pub fn is_downloading(&self, id: ContentId) -> bool {
        lock(&self.inner.active).contains_key(&id)
    }

    pub(crate) fn cache_manifest(&self, m: Arc<Manifest>) {
        lock(&self.inner.manifests).insert(m.content_id(), m);
    }

    pub(crate) fn forget_file(&self, id: ContentId) {
        lock(&self.inner.files).remove(&id);
        self.inner.checked.forget(id);
    }
}
