//! The sled backend: the index's state on disk.
//!
//! Trees: `nodes` (node key → JSON [`NodeEntry`]), `holdings` (content id ‖ node key → piece
//! count u32 ‖ bits) and `manifests` (content id → manifest bytes).

use std::path::Path;

use shoal_core::{Bitfield, ContentId, NodeId};

use crate::{NodeEntry, Persist};

/// Persisted tracker state.
#[derive(Debug)]
pub struct SledState {
    db: sled::Db,
    nodes: sled::Tree,
    holdings: sled::Tree,
    manifests: sled::Tree,
}

/// What was persisted: nodes, holdings and manifests.
pub type Loaded =
    (Vec<(NodeId, NodeEntry)>, Vec<(ContentId, NodeId, Bitfield)>, Vec<(ContentId, Vec<u8>)>);

fn holding_key(c: ContentId, n: NodeId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(c.as_bytes());
    k[32..].copy_from_slice(n.public_key_bytes());
    k
}

impl SledState {
    /// Opens (or creates) the state in `dir`. Fails if another process holds it (a lock this
    /// process let go of a moment ago is retried: see [`shoal_core::reopen`]).
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        let db = shoal_core::reopen::retry_held_lock(|| {
            sled::Config::new().path(dir).cache_capacity(16 * 1024 * 1024).open()
        })?;
        Ok(Self {
            nodes: db.open_tree("nodes")?,
            holdings: db.open_tree("holdings")?,
            manifests: db.open_tree("manifests")?,
            db,
        })
    }

    /// Applies changes. They are durable after [`SledState::flush`] (or sled's periodic flush).
    pub fn apply(&self, ops: &[Persist]) -> Result<(), sled::Error> {
        for op in ops {
            match op {
                Persist::PutNode(id, e) => {
                    let v = serde_json::to_vec(e).expect("node entries serialise");
                    self.nodes.insert(id.public_key_bytes(), v)?;
                }
                Persist::RemoveNode(id) => {
                    self.nodes.remove(id.public_key_bytes())?;
                }
                Persist::PutHolding(c, n, bf) => {
                    let mut v = bf.len().to_be_bytes().to_vec();
                    v.extend_from_slice(bf.as_bytes());
                    self.holdings.insert(holding_key(*c, *n), v)?;
                }
                Persist::RemoveHolding(c, n) => {
                    self.holdings.remove(holding_key(*c, *n))?;
                }
                Persist::PutManifest(c, bytes) => {
                    self.manifests.insert(c.as_bytes(), bytes.as_ref())?;
                }
                Persist::RemoveManifest(c) => {
                    self.manifests.remove(c.as_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// Makes everything applied so far durable.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        Ok(())
    }

    /// Everything persisted. Entries that do not decode are skipped.
    pub fn load(&self) -> Result<Loaded, sled::Error> {
        let mut nodes = Vec::new();
        for kv in self.nodes.iter() {
            let (k, v) = kv?;
            let Ok(key) = <[u8; 32]>::try_from(k.as_ref()) else { continue };
            let (Ok(id), Ok(e)) = (NodeId::from_public_key_bytes(key), serde_json::from_slice(&v))
            else {
                continue;
            };
            nodes.push((id, e));
        }
        let mut holdings = Vec::new();
        for kv in self.holdings.iter() {
            let (k, v) = kv?;
            if k.len() != 64 || v.len() < 4 {
                continue;
            }
            let content = ContentId(k[..32].try_into().expect("32 bytes"));
            let Ok(node) = NodeId::from_public_key_bytes(k[32..].try_into().expect("32 bytes"))
            else {
                continue;
            };
            let len = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
            let Ok(bf) = Bitfield::from_bytes(len, &v[4..]) else { continue };
            holdings.push((content, node, bf));
        }
        let mut manifests = Vec::new();
        for kv in self.manifests.iter() {
            let (k, v) = kv?;
            let Ok(key) = <[u8; 32]>::try_from(k.as_ref()) else { continue };
            manifests.push((ContentId(key), v.to_vec()));
        }
        Ok((nodes, holdings, manifests))
    }
}
