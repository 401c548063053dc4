//! The verified piece store of a storage node.

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use shoal_core::{Bitfield, ContentId, Manifest, PieceHash, PieceIndex};

/// What the index knows of a content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudContent {
    /// The file name.
    pub name: String,
    /// The file size.
    pub size: u64,
    /// Pieces stored.
    pub stored: u32,
    /// Pieces in the content.
    pub pieces: u32,
}

impl CloudContent {
    /// True when every piece is stored.
    pub fn is_complete(&self) -> bool {
        self.stored == self.pieces
    }
}

/// The outcome of storing a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutPiece {
    /// Stored now; `complete` if it was the last one missing.
    Stored {
        /// every piece is now stored
        complete: bool,
    },
    /// It was stored already; nothing was written.
    AlreadyStored,
}

/// Error from the cloud store. Messages say what the pusher can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// No manifest was pushed for this content.
    #[error("storage does not know content {0}: push its manifest first")]
    UnknownContent(ContentId),
    /// The manifest does not decode.
    #[error("bad manifest: {0}")]
    BadManifest(#[from] shoal_core::manifest::ManifestError),
    /// The piece does not exist in the content.
    #[error("piece {0} is past the end of the content")]
    PieceOutOfRange(PieceIndex),
    /// The piece's bytes do not match its hash; nothing was written.
    #[error("piece {0} does not match its hash; refused")]
    BadPiece(PieceIndex),
    /// The object store failed (disk full, S3 error); retry later.
    #[error("storage cannot write or read now ({0}); retry later")]
    Backend(#[from] object_store::Error),
    /// The index failed.
    #[error("storage index: {0}")]
    Index(#[from] sled::Error),
    /// A stored object no longer matches its hash.
    #[error("stored piece {0} is damaged")]
    Damaged(PieceIndex),
    /// The user's space has an entry of this name already.
    #[error("your space has an entry named {0:?} already: pick another --name, or remove it with `shoal space rm`")]
    EntryExists(String),
    /// The user's space has no such entry (or it belongs to another task).
    #[error("your space has no entry named {0:?} (see `shoal space ls`)")]
    NoEntry(String),
    /// The entry is still being fetched.
    #[error("{0:?} is still being fetched: cancel its task (`shoal offline cancel TASK`) instead")]
    Fetching(String),
    /// The user's space is full.
    #[error("your space holds {max} entries, the most it may: remove some with `shoal space rm`")]
    SpaceFull {
        /// the limit
        max: usize,
    },
    /// The user's quota cannot hold the content; nothing was recorded.
    #[error(
        "over quota: {} used of {}, this content needs {}: ask the storage operator to raise \
         your grant (--grant USER_ID=QUOTA)",
        shoal_core::units::human_bytes(*used as f64),
        shoal_core::units::human_bytes(*quota as f64),
        shoal_core::units::human_bytes(*need as f64)
    )]
    QuotaExceeded {
        /// bytes the user owns now
        used: u64,
        /// the user's quota
        quota: u64,
        /// the content's size
        need: u64,
    },
}

/// Manifests and verified pieces in an object store, indexed in sled.
#[derive(Debug, Clone)]
pub struct CloudStore {
    objects: Arc<dyn ObjectStore>,
    db: sled::Db,
    contents: sled::Tree,
    manifests: sled::Tree,
    pieces: sled::Tree,
    /// user key || content id -> the content's size charged to the user (u64 BE).
    pub(crate) owners: sled::Tree,
    /// user key -> bytes the user owns in total (u64 BE).
    pub(crate) usage: sled::Tree,
    /// content id || user key -> (): who owns a content, the reverse of `owners`.
    pub(crate) owned_by: sled::Tree,
    /// Serialises changes to users' spaces, whose checks read more than one record.
    pub(crate) space_lock: Arc<tokio::sync::Mutex<()>>,
    /// user key || entry name -> the entry (JSON), see `spaces`.
    pub(crate) spaces: sled::Tree,
    /// offline task id -> the task's record (JSON, the node's).
    pub(crate) tasks: sled::Tree,
    /// BLAKE3(URL) -> what it gave last (JSON, the node's), for instant offline tasks.
    pub(crate) resources: sled::Tree,
}

fn piece_key(c: ContentId, p: PieceIndex) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(c.as_bytes());
    k[32..].copy_from_slice(&p.0.to_be_bytes());
    k
}

fn manifest_path(c: ContentId) -> Path {
    Path::from(format!("manifests/{c}"))
}

fn piece_path(c: ContentId, p: PieceIndex) -> Path {
    Path::from(format!("pieces/{c}/{:08}", p.0))
}

/// Opens the sled index, retrying a lock this process let go of a moment ago (a restart in
/// the same process; see [`shoal_core::reopen`]).
fn open_index(index_dir: &FsPath) -> Result<sled::Db, sled::Error> {
    shoal_core::reopen::retry_held_lock(|| {
        sled::Config::new().path(index_dir).cache_capacity(8 * 1024 * 1024).open()
    })
}

impl CloudStore {
    /// A store over `objects`, with its index in `index_dir`.
    pub fn open(objects: Arc<dyn ObjectStore>, index_dir: &FsPath) -> Result<Self, CloudError> {
        let db = open_index(index_dir)?;
        let store = Self {
            objects,
            contents: db.open_tree("contents")?,
            manifests: db.open_tree("manifests")?,
            pieces: db.open_tree("pieces")?,
            owners: db.open_tree("owners")?,
            usage: db.open_tree("usage")?,
            owned_by: db.open_tree("owned_by")?,
            space_lock: Arc::default(),
            spaces: db.open_tree("spaces")?,
            tasks: db.open_tree("tasks")?,
            resources: db.open_tree("resources")?,
            db,
        };
        store.index_owners()?;
        Ok(store)
    }

    /// Builds the reverse owner index of an index written before it existed.
    fn index_owners(&self) -> Result<(), CloudError> {
        if !self.owned_by.is_empty() {
            return Ok(());
        }
        for k in self.owners.iter().keys() {
            let k = k?;
            if k.len() == 64 {
                let mut by = [0u8; 64];
                by[..32].copy_from_slice(&k[32..]);
                by[32..].copy_from_slice(&k[..32]);
                self.owned_by.insert(by, &[])?;
            }
        }
        Ok(())
    }

    /// Deletes a content nobody owns: its index records first (so nothing claims it any
    /// more), then its objects. Returns whether it was deleted.
    pub async fn delete_if_unowned(&self, id: ContentId) -> Result<bool, CloudError> {
        if self.is_owned(id)? {
            return Ok(false);
        }
        let Some(rec) = self.content(id)? else { return Ok(false) };
        self.contents.remove(id.as_bytes())?;
        self.manifests.remove(id.as_bytes())?;
        let held: Vec<sled::IVec> =
            self.pieces.scan_prefix(id.as_bytes()).keys().collect::<Result<_, _>>()?;
        for k in &held {
            self.pieces.remove(k)?;
        }
        self.flush().await?;
        for p in 0..rec.pieces {
            match self.objects.delete(&piece_path(id, PieceIndex(p))).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match self.objects.delete(&manifest_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(content = %id, "deleted a content nobody owns");
        Ok(true)
    }

    /// Records a content from its manifest (written as an object first). Idempotent. Who may
    /// push it is the caller's business: see [`CloudStore::claim`].
    pub async fn put_manifest(&self, bytes: &[u8]) -> Result<Manifest, CloudError> {
        let m = Manifest::decode(bytes)?;
        let id = m.content_id();
        if self.contents.contains_key(id.as_bytes())? {
            return Ok(m);
        }
        self.objects.put(&manifest_path(id), PutPayload::from(bytes.to_vec())).await?;
        let rec = CloudContent {
            name: m.name().to_string(),
            size: m.size(),
            stored: 0,
            pieces: m.piece_count(),
        };
        self.manifests.insert(id.as_bytes(), bytes)?;
        self.contents.insert(id.as_bytes(), serde_json::to_vec(&rec).expect("serialises"))?;
        self.db.flush_async().await?;
        Ok(m)
    }

    /// The manifest of a content.
    pub fn manifest(&self, id: ContentId) -> Result<Option<Manifest>, CloudError> {
        match self.manifests.get(id.as_bytes())? {
            Some(b) => Ok(Some(Manifest::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// What the index knows of a content.
    pub fn content(&self, id: ContentId) -> Result<Option<CloudContent>, CloudError> {
        Ok(self.contents.get(id.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every content.
    pub fn contents(&self) -> Result<Vec<(ContentId, CloudContent)>, CloudError> {
        let mut out = Vec::new();
        for kv in self.contents.iter() {
            let (k, v) = kv?;
            let (Ok(key), Ok(rec)) = (<[u8; 32]>::try_from(k.as_ref()), serde_json::from_slice(&v))
            else {
                continue;
            };
            out.push((ContentId(key), rec));
        }
        Ok(out)
    }

    /// The pieces stored of a content.
    pub fn bitfield(&self, id: ContentId) -> Result<Option<Bitfield>, CloudError> {
        let Some(rec) = self.content(id)? else { return Ok(None) };
        // A complete content (what storage mostly holds) needs no scan of its pieces.
        if rec.is_complete() {
            return Ok(Some(Bitfield::full(rec.pieces)));
        }
        let mut b = Bitfield::new(rec.pieces);
        for k in self.pieces.scan_prefix(id.as_bytes()).keys() {
            let k = k?;
            if let Ok(i) = <[u8; 4]>::try_from(&k[32..]) {
                b.set(PieceIndex(u32::from_be_bytes(i)));
            }
        }
        Ok(Some(b))
    }

    /// Stores one piece after checking it against the manifest. A piece that does not match
    /// is refused before anything is written.
    pub async fn put_piece(
        &self,
        id: ContentId,
        piece: PieceIndex,
        data: Bytes,
    ) -> Result<PutPiece, CloudError> {
        let m = self.manifest(id)?.ok_or(CloudError::UnknownContent(id))?;
        let expected = m.piece_hash(piece).ok_or(CloudError::PieceOutOfRange(piece))?;
        if data.len() as u64 != m.piece_len(piece) || PieceHash::of(&data) != expected {
            return Err(CloudError::BadPiece(piece));
        }
        if self.pieces.contains_key(piece_key(id, piece))? {
            return Ok(PutPiece::AlreadyStored);
        }
        // The object first, the index after: the index never claims a piece that is not stored.
        self.objects.put(&piece_path(id, piece), PutPayload::from(data)).await?;
        let newly = self.pieces.insert(piece_key(id, piece), &[])?.is_none();
        let mut complete = false;
        if newly {
            // Count under sled's compare-and-swap so concurrent pushes agree on completion.
            let updated = self.contents.update_and_fetch(id.as_bytes(), |old| {
                let mut rec: CloudContent = serde_json::from_slice(old?).ok()?;
                rec.stored = (rec.stored + 1).min(rec.pieces);
                Some(serde_json::to_vec(&rec).expect("serialises"))
            })?;
            let rec: Option<CloudContent> = updated.and_then(|v| serde_json::from_slice(&v).ok());
            complete = rec.as_ref().is_some_and(|r| r.is_complete());
            if complete {
                self.db.flush_async().await?;
                tracing::info!(content = %id, "content complete in storage");
            }
        }
        Ok(PutPiece::Stored { complete })
    }

    /// Reads a stored piece, checking it against its hash.
    pub async fn read_piece(&self, id: ContentId, piece: PieceIndex) -> Result<Bytes, CloudError> {
        let m = self.manifest(id)?.ok_or(CloudError::UnknownContent(id))?;
        let expected = m.piece_hash(piece).ok_or(CloudError::PieceOutOfRange(piece))?;
        if !self.pieces.contains_key(piece_key(id, piece))? {
            return Err(CloudError::PieceOutOfRange(piece));
        }
        let data = self.objects.get(&piece_path(id, piece)).await?.bytes().await?;
        if PieceHash::of(&data) != expected {
            return Err(CloudError::Damaged(piece));
        }
        Ok(data)
    }

    /// Makes the index durable.
    pub async fn flush(&self) -> Result<(), CloudError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
