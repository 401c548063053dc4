//! What a node holds, wherever it keeps it, and the storage side of pushes.
//!
//! An ordinary node keeps pieces in files (`shoal-store`); a storage node keeps them in an
//! object store (`shoal-cloud`). The serving side and the tracker client ask the [`Node`]
//! through these methods and do not care which. A storage node also accepts pushes
//! ([`accept`]): from users it granted space, for contents they own here, or with a re-seed
//! token signed by its tracker for exactly that holder, storage node, content and piece, not
//! yet expired.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_cloud::CloudError;
use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};
use shoal_store::StoreError;
use shoal_wire::tracker::ReseedToken;

use crate::control::LsEntry;
use crate::node::Node;

mod accept;

pub(crate) use accept::{serve_push, PushGate};

/// Why a piece cannot be served.
#[derive(Debug)]
pub(crate) enum ServeError {
    NotFound,
    SourceChanged,
    Internal(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// True for a storage node.
    pub fn is_storage(&self) -> bool {
        self.cloud.is_some()
    }

    /// The pieces this node can serve of a content; `None` if it holds nothing of it.
    pub(crate) fn holding(&self, c: ContentId) -> anyhow::Result<Option<Bitfield>> {
        let held = match &self.cloud {
            Some(cloud) => cloud.bitfield(c)?,
            None => self.store.bitfield(c)?,
        };
        // A lying node (testing only) claims all of whatever it holds any of.
        Ok(if self.lie { held.map(|b| Bitfield::full(b.len())) } else { held })
    }

    /// The encoded manifest of a content it holds.
    pub(crate) fn manifest_bytes(&self, c: ContentId) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(match &self.cloud {
            Some(cloud) => cloud.manifest(c)?.map(|m| m.encode()),
            None => self.store.manifest(c)?.map(|m| m.encode()),
        })
    }

    /// Every content it holds (part of).
    pub(crate) fn content_ids(&self) -> anyhow::Result<Vec<ContentId>> {
        Ok(match &self.cloud {
            Some(cloud) => cloud.contents()?.into_iter().map(|(c, _)| c).collect(),
            None => self.store.list()?.into_iter().map(|e| e.content).collect(),
        })
    }

    /// What `shoal ls` shows. Blocking.
    pub fn list(&self) -> anyhow::Result<Vec<LsEntry>> {
        match &self.cloud {
            Some(cloud) => Ok(cloud
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
                .collect()),
            None => crate::control::list(&self.store),
        }
    }

    /// One piece for upload, checked against its hash.
    pub(crate) async fn piece(&self, c: ContentId, p: PieceIndex) -> Result<Bytes, ServeError> {
        if let Some(cloud) = &self.cloud {
            return cloud.read_piece(c, p).await.map_err(|e| match e {
                CloudError::UnknownContent(_) | CloudError::PieceOutOfRange(_) => {
                    ServeError::NotFound
                }
                e => ServeError::Internal(e.to_string()),
            });
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

    /// Checks a re-seed token for a push from `from`. The reason is what the pusher is told.
    pub(crate) fn check_token(
        &self,
        from: NodeId,
        content: ContentId,
        piece: PieceIndex,
        token: &[u8],
    ) -> Result<(), &'static str> {
        let t = ReseedToken::decode(token).map_err(|_| "malformed re-seed token")?;
        let signed = t.signed_bytes();
        let trackers = self.tracker_ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !trackers.iter().any(|id| id.public_key().verify(&signed, &t.signature)) {
            return Err("re-seed token not signed by this storage node's tracker (forged?)");
        }
        if t.storage != self.node_id() {
            return Err("re-seed token is for another storage node");
        }
        if t.holder != from {
            return Err("re-seed token was issued to another node");
        }
        if t.content != content || !t.pieces.contains(&piece) {
            return Err("re-seed token does not cover this piece");
        }
        if t.expires_ms <= now_ms() {
            return Err("re-seed token expired; wait for a new directive");
        }
        Ok(())
    }
}
