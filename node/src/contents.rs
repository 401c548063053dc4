//! What a node holds, wherever it keeps it: pieces in files (`shoal-store`) for an ordinary
//! node, an object store (`shoal-cloud`) for a storage node. The serving side, the tracker
//! client and the control API ask [`Contents`] and do not care which.

use bytes::Bytes;
use shoal_cloud::{CloudError, CloudStore};
use shoal_control::LsEntry;
use shoal_core::{Bitfield, ContentId, PieceIndex};
use shoal_store::{Entry, EntryState, Store, StoreError};

/// The shape of a content this node holds: enough to check a request against its manifest
/// before spending anything on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// File size in bytes.
    pub(crate) size: u64,
    /// Piece size in bytes.
    pub(crate) piece_size: u64,
    /// Pieces in the content.
    pub(crate) pieces: u32,
}

impl Shape {
    /// The length of piece `p`, or `None` past the end.
    pub(crate) fn piece_len(&self, p: PieceIndex) -> Option<u64> {
        let start = u64::from(p.0).checked_mul(self.piece_size)?;
        (p.0 < self.pieces).then(|| (self.size.saturating_sub(start)).min(self.piece_size))
    }

    /// An upper bound on the encoded manifest's length.
    pub(crate) fn manifest_bound(&self) -> u64 {
        let hashes = 32 * shoal_core::piece::MAX_PIECES as usize;
        let fixed = shoal_core::manifest::MAX_ENCODED_LEN - hashes;
        fixed as u64 + 32 * u64::from(self.pieces)
    }
}

/// Why a piece cannot be served.
#[derive(Debug)]
pub(crate) enum ServeError {
    NotFound,
    SourceChanged,
    Internal(String),
}

/// The node's contents: its piece store, and the object store of a storage node.
#[derive(Debug)]
pub struct Contents {
    pub(crate) store: Store,
    /// The object store of a storage node.
    pub(crate) cloud: Option<CloudStore>,
    /// Testing only: advertise full bitfields (see `NodeConfig::danger_lie_bitfield`).
    pub(crate) lie: bool,
}

impl Contents {
    /// The piece store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// True for a storage node.
    pub fn is_storage(&self) -> bool {
        self.cloud.is_some()
    }

    // Each call below asks the object store first (a storage node's own copy) and the piece
    // store after it (an ordinary node's contents, or a storage node's pull-through cache):
    // a storage node may hold one content in both at once, pushed pieces in the object store
    // and pulled ones in the cache, and serves (so advertises) either.

    /// What the object store keeps of a content (a storage node's own copy, for good).
    fn kept(&self, c: ContentId) -> anyhow::Result<Option<Bitfield>> {
        Ok(self.cloud.as_ref().map(|cloud| cloud.bitfield(c)).transpose()?.flatten())
    }

    /// A lying node (testing only) claims all of whatever it holds any of.
    fn claimed(&self, held: Option<Bitfield>) -> Option<Bitfield> {
        if self.lie {
            held.map(|b| Bitfield::full(b.len()))
        } else {
            held
        }
    }

    /// The pieces this node can serve of a content; `None` if it holds nothing of it.
    pub(crate) fn holding(&self, c: ContentId) -> anyhow::Result<Option<Bitfield>> {
        let held = match (self.kept(c)?, self.store.bitfield(c)?) {
            (Some(mut b), Some(cached)) if cached.len() == b.len() => {
                cached.iter_ones().for_each(|p| {
                    b.set(p);
                });
                Some(b)
            }
            (Some(b), _) => Some(b),
            (None, cached) => cached,
        };
        Ok(self.claimed(held))
    }

    /// What this node tells its tracker (and a pusher) it holds of a content:
    /// [`Contents::holding`], except that a storage node holding the content in its object
    /// store names only what is kept there for good, not pieces it has in its pull-through
    /// cache meanwhile (which may be evicted), so that they are still pushed.
    pub(crate) fn announced(&self, c: ContentId) -> anyhow::Result<Option<Bitfield>> {
        let held = match self.kept(c)? {
            Some(kept) => Some(kept),
            None => self.store.bitfield(c)?,
        };
        Ok(self.claimed(held))
    }

    /// Keeps of `pieces` (new pieces of `c`, for an announce delta) those the tracker is to
    /// hear of: all of them, except that a storage node keeping `c` in its object store names
    /// only pieces kept there (see [`Contents::announced`]), not ones its pull-through cache
    /// verified meanwhile.
    pub(crate) fn retain_announced(
        &self,
        c: ContentId,
        pieces: &mut Vec<PieceIndex>,
    ) -> anyhow::Result<()> {
        if let Some(kept) = self.kept(c)? {
            pieces.retain(|&p| kept.get(p));
        }
        Ok(())
    }

    /// The encoded manifest of a content it holds.
    pub(crate) fn manifest_bytes(&self, c: ContentId) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(m) = self.cloud.as_ref().map(|cloud| cloud.manifest(c)).transpose()?.flatten() {
            return Ok(Some(m.encode()));
        }
        Ok(self.store.manifest(c)?.map(|m| m.encode()))
    }

    /// Every content it holds (part of).
    pub(crate) fn content_ids(&self) -> anyhow::Result<Vec<ContentId>> {
        let mut ids: Vec<ContentId> = match &self.cloud {
            Some(cloud) => cloud.contents()?.into_iter().map(|(c, _)| c).collect(),
            None => Vec::new(),
        };
        // A storage node's piece store holds its pull-through cache.
        ids.extend(self.store.list()?.into_iter().map(|e| e.content));
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// What `shoal ls` shows. Blocking.
    pub fn list(&self) -> anyhow::Result<Vec<LsEntry>> {
        match &self.cloud {
            Some(cloud) => {
                let mut rows: Vec<LsEntry> = cloud
                    .contents()?
                    .into_iter()
                    .map(|(id, c)| LsEntry {
                        content_id: id.to_string(),
                        state: if c.is_complete() { "complete" } else { "partial" }.into(),
                        name: c.name,
                        size: c.size,
                        pieces_have: c.stored,
                        pieces_total: c.pieces,
                        path: "(object store)".into(),
                    })
                    .collect();
                // The pull-through cache, beside the object store's own copies.
                rows.extend(list(&self.store)?);
                Ok(rows)
            }
            None => list(&self.store),
        }
    }

    /// The shape of a content this node holds (part of), from its manifest; `None` if it
    /// holds nothing of it. Reads no piece data: the store keeps manifests in memory, the
    /// object store's index keeps size and piece count.
    pub(crate) fn shape(&self, c: ContentId) -> anyhow::Result<Option<Shape>> {
        if let Some(rec) = self.cloud.as_ref().map(|cloud| cloud.content(c)).transpose()?.flatten()
        {
            return Ok(Some(Shape {
                size: rec.size,
                // The piece size is fixed by the file size (part of the canonical manifest).
                piece_size: 1 << shoal_core::piece::piece_log2_for(rec.size),
                pieces: rec.pieces,
            }));
        }
        Ok(self.store.manifest(c)?.map(|m| Shape {
            size: m.size(),
            piece_size: m.piece_size(),
            pieces: m.piece_count(),
        }))
    }

    /// One piece for upload, checked against its hash.
    pub(crate) async fn piece(&self, c: ContentId, p: PieceIndex) -> Result<Bytes, ServeError> {
        if let Some(cloud) = &self.cloud {
            match cloud.read_piece(c, p).await {
                Ok(d) => return Ok(d),
                // Not in the object store: the pull-through cache may hold it (a content
                // pulled through and pushed at once has pieces in both).
                Err(CloudError::UnknownContent(_) | CloudError::PieceOutOfRange(_)) => {}
                Err(e) => return Err(ServeError::Internal(e.to_string())),
            }
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.read_piece(c, p)).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(StoreError::SourceChanged(_))) => Err(ServeError::SourceChanged),
            Ok(Err(StoreError::NotFound(_))) => Err(ServeError::NotFound),
            Ok(Err(e)) => Err(ServeError::Internal(e.to_string())),
            Err(e) => Err(ServeError::Internal(e.to_string())),
        }
    }
}

/// The API form of a store entry.
pub fn ls_entry(e: &Entry, pieces_total: u32) -> LsEntry {
    let (state, have) = match e.state {
        EntryState::Complete => ("complete", pieces_total),
        EntryState::Partial { have, .. } => ("partial", have),
        EntryState::SourceChanged => ("source changed", 0),
    };
    LsEntry {
        content_id: e.content.to_string(),
        name: e.name.clone(),
        size: e.size,
        state: state.into(),
        pieces_have: have,
        pieces_total,
        path: e.path.display().to_string(),
    }
}

/// Lists a piece store (`shoal ls` without a daemon, too). Blocking.
pub fn list(store: &Store) -> anyhow::Result<Vec<LsEntry>> {
    let mut out = Vec::new();
    for e in store.list()? {
        let total = store.manifest(e.content)?.map_or(0, |m| m.piece_count());
        out.push(ls_entry(&e, total));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lengths_come_from_the_shape() {
        // 64 pieces of 16 KiB, the last one short.
        let s = Shape { size: 63 * 16384 + 100, piece_size: 16384, pieces: 64 };
        let table = [
            (0, Some(16384)),  // first
            (62, Some(16384)), // last full
            (63, Some(100)),   // last, short
            (64, None),        // one past the end
            (u32::MAX, None),  // the probe that once grew a daemon to 4.4 GiB
            (1 << 31, None),   // far past, no overflow
        ];
        for (p, want) in table {
            assert_eq!(s.piece_len(PieceIndex(p)), want, "piece {p}");
        }
        assert!(s.manifest_bound() >= 64 * 32);
        assert!(s.manifest_bound() <= shoal_core::manifest::MAX_ENCODED_LEN as u64);
    }
}
