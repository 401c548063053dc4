//! Metadata: what the node holds, behind a trait so that tests and other backends can stand in
//! for sled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use shoal_core::{ContentId, PieceIndex};

use crate::StoreError;

/// Where a content's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A complete file, served from where it is.
    Seeded {
        /// absolute path of the file
        path: PathBuf,
        /// its length when recorded
        len: u64,
        /// its modification time (nanoseconds since the epoch) when recorded
        mtime_ns: i64,
        /// set when the file no longer matches its manifest; it is not served then
        #[serde(default)]
        changed: bool,
        /// set when this node wrote the file (a finished download), unset for a file added
        /// in place (the user's own): only the former is the node's to delete
        #[serde(default)]
        fetched: bool,
    },
    /// A download in progress: verified pieces are in `partial`, the finished file goes to
    /// `output`.
    Download {
        /// the preallocated partial file
        partial: PathBuf,
        /// where the finished file goes
        output: PathBuf,
    },
}

/// One content the node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRecord {
    /// The file name from the manifest.
    pub name: String,
    /// The file size.
    pub size: u64,
    /// Where the bytes are.
    pub source: Source,
}

/// The metadata backend. Implementations must make each call atomic.
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// Stores the record and manifest of a content.
    fn put_content(
        &self,
        id: ContentId,
        rec: &ContentRecord,
        manifest: &[u8],
    ) -> Result<(), StoreError>;
    /// Updates the record of a content already stored.
    fn update_record(&self, id: ContentId, rec: &ContentRecord) -> Result<(), StoreError>;
    /// The record of a content.
    fn record(&self, id: ContentId) -> Result<Option<ContentRecord>, StoreError>;
    /// The encoded manifest of a content.
    fn manifest(&self, id: ContentId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every content.
    fn records(&self) -> Result<Vec<(ContentId, ContentRecord)>, StoreError>;
    /// Records pieces of a partial file as verified.
    fn mark_verified(&self, id: ContentId, pieces: &[PieceIndex]) -> Result<(), StoreError>;
    /// The verified pieces of a partial file.
    fn verified(&self, id: ContentId) -> Result<Vec<PieceIndex>, StoreError>;
    /// Whether one piece of a partial file is verified (a single lookup, for serving).
    fn is_verified(&self, id: ContentId, piece: PieceIndex) -> Result<bool, StoreError>;
    /// Forgets the verified pieces (the partial file is gone or complete).
    fn clear_verified(&self, id: ContentId) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Forgets a content: its record, manifest and verified pieces.
    fn remove_content(&self, id: ContentId) -> Result<(), StoreError>;
}

/// The sled backend: trees `records` and `manifests` keyed by content id, and `verified`
/// keyed by content id followed by the big-endian piece index.
#[derive(Debug)]
pub struct SledMeta {
    db: sled::Db,
    records: sled::Tree,
    manifests: sled::Tree,
    verified: sled::Tree,
}

impl SledMeta {
    /// Opens (or creates) the database in `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // sled caches up to 1 GiB by default; metadata is small, so keep memory low.
        let db = sled::Config::new().path(dir).cache_capacity(8 * 1024 * 1024).open()?;
        Ok(Self {
            records: db.open_tree("records")?,
            manifests: db.open_tree("manifests")?,
            verified: db.open_tree("verified")?,
            db,
        })
    }
}

fn piece_key(id: ContentId, piece: PieceIndex) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(id.as_bytes());
    k[32..].copy_from_slice(&piece.0.to_be_bytes());
    k
}

fn decode_record(bytes: &[u8]) -> Result<ContentRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Meta(format!("corrupt record: {e}")))
}

fn encode_record(rec: &ContentRecord) -> Vec<u8> {
    serde_json::to_vec(rec).expect("records serialise")
}

impl MetaStore for SledMeta {
    fn put_content(
        &self,
        id: ContentId,
        rec: &ContentRecord,
        manifest: &[u8],
    ) -> Result<(), StoreError> {
        self.manifests.insert(id.as_bytes(), manifest)?;
        self.records.insert(id.as_bytes(), encode_record(rec))?;
        Ok(())
    }

    fn update_record(&self, id: ContentId, rec: &ContentRecord) -> Result<(), StoreError> {
        self.records.insert(id.as_bytes(), encode_record(rec))?;
        Ok(())
    }

    fn record(&self, id: ContentId) -> Result<Option<ContentRecord>, StoreError> {
        self.records.get(id.as_bytes())?.map(|v| decode_record(&v)).transpose()
    }

    fn manifest(&self, id: ContentId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.manifests.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    fn records(&self) -> Result<Vec<(ContentId, ContentRecord)>, StoreError> {
        self.records
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = ContentId(
                    k.as_ref().try_into().map_err(|_| StoreError::Meta("bad key".into()))?,
                );
                Ok((id, decode_record(&v)?))
            })
            .collect()
    }

    fn mark_verified(&self, id: ContentId, pieces: &[PieceIndex]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for &p in pieces {
            batch.insert(&piece_key(id, p)[..], &[][..]);
        }
        self.verified.apply_batch(batch)?;
        Ok(())
    }

    fn verified(&self, id: ContentId) -> Result<Vec<PieceIndex>, StoreError> {
        self.verified
            .scan_prefix(id.as_bytes())
            .keys()
            .map(|k| {
                let k = k?;
                let idx: [u8; 4] =
                    k[32..].try_into().map_err(|_| StoreError::Meta("bad key".into()))?;
                Ok(PieceIndex(u32::from_be_bytes(idx)))
            })
            .collect()
    }

    fn is_verified(&self, id: ContentId, piece: PieceIndex) -> Result<bool, StoreError> {
        Ok(self.verified.contains_key(piece_key(id, piece))?)
    }

    fn clear_verified(&self, id: ContentId) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self.verified.scan_prefix(id.as_bytes()).keys() {
            batch.remove(k?);
        }
        self.verified.apply_batch(batch)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn remove_content(&self, id: ContentId) -> Result<(), StoreError> {
        // The record first: a content without a record is not listed, whatever is left.
        self.records.remove(id.as_bytes())?;
        self.clear_verified(id)?;
        self.manifests.remove(id.as_bytes())?;
        Ok(())
    }
}

/// An in-memory backend, for tests and throwaway nodes.
#[derive(Debug, Default)]
pub struct MemMeta {
    // Held only for map operations, never across an await.
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    records: BTreeMap<ContentId, ContentRecord>,
    manifests: BTreeMap<ContentId, Vec<u8>>,
    verified: BTreeMap<ContentId, BTreeSet<PieceIndex>>,
}

impl MemMeta {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MetaStore for MemMeta {
    fn put_content(
        &self,
        id: ContentId,
        rec: &ContentRecord,
        manifest: &[u8],
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.manifests.insert(id, manifest.to_vec());
        g.records.insert(id, rec.clone());
        Ok(())
    }

    fn update_record(&self, id: ContentId, rec: &ContentRecord) -> Result<(), StoreError> {
        self.lock().records.insert(id, rec.clone());
        Ok(())
    }

    fn record(&self, id: ContentId) -> Result<Option<ContentRecord>, StoreError> {
        Ok(self.lock().records.get(&id).cloned())
    }

    fn manifest(&self, id: ContentId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().manifests.get(&id).cloned())
    }

    fn records(&self) -> Result<Vec<(ContentId, ContentRecord)>, StoreError> {
        Ok(self.lock().records.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    fn mark_verified(&self, id: ContentId, pieces: &[PieceIndex]) -> Result<(), StoreError> {
        self.lock().verified.entry(id).or_default().extend(pieces.iter().copied());
        Ok(())
    }

    fn verified(&self, id: ContentId) -> Result<Vec<PieceIndex>, StoreError> {
        Ok(self.lock().verified.get(&id).map(|s| s.iter().copied().collect()).unwrap_or_default())
    }

    fn is_verified(&self, id: ContentId, piece: PieceIndex) -> Result<bool, StoreError> {
        Ok(self.lock().verified.get(&id).is_some_and(|s| s.contains(&piece)))
    }

    fn clear_verified(&self, id: ContentId) -> Result<(), StoreError> {
        self.lock().verified.remove(&id);
        Ok(())
    }

    fn remove_content(&self, id: ContentId) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.records.remove(&id);
        g.manifests.remove(&id);
        g.verified.remove(&id);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
