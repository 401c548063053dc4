//! Changes made by another tracker replica: the [`Persist`] operations it wrote to the shared
//! backend, applied to this replica's index so that its lookups see the same swarms.
//!
//! A replica is operator infrastructure, but what it wrote went through a store this process
//! does not control: each change is checked with the bounds the index enforces on a node's
//! own input (addresses, regions, piece counts, contents per node, manifest space, manifests
//! hashing to their id). Rate limits, hints and reports are each replica's own and are not
//! replicated. A change that does not fit is skipped with its reason; nothing panics.

use std::collections::BTreeSet;

use shoal_core::{Bitfield, ContentId, NodeId};
use shoal_wire::tracker::MAX_ADDRS;

use super::Index;
use crate::model::{NodeEntry, Persist, VerifiedManifest};
use crate::region::NO_REGION;

/// Why a change from another replica was not applied here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteSkip {
    /// A holding of a node this replica does not know (yet, or any more).
    #[error("holding of unknown node {0}")]
    UnknownNode(NodeId),
    /// A holding of a content whose manifest this replica does not have.
    #[error("holding of unknown content {0}")]
    UnknownContent(ContentId),
    /// A bitfield whose length is not the content's piece count.
    #[error("{got} pieces for a content of {expected}")]
    PieceCount {
        /// pieces in the bitfield
        got: u32,
        /// pieces in the content
        expected: u32,
    },
    /// The node already holds as many contents as the index accepts from one node.
    #[error("node holds {max} contents already")]
    TooManyContents {
        /// the cap
        max: usize,
    },
    /// A manifest that does not decode or does not hash to its content id.
    #[error("manifest does not match content {0}")]
    BadManifest(ContentId),
    /// No room for the manifest within the index's manifest space.
    #[error("manifest space ({max} bytes) is full")]
    ManifestSpace {
        /// the cap
        max: u64,
    },
    /// A manifest removal for a swarm that still has holders here.
    #[error("content {0} still has holders here")]
    StillHeld(ContentId),
}

impl Index {
    /// Applies one change another replica made (see the module docs). Idempotent: the same
    /// change twice leaves the index as once, so a replica may replay what it already saw.
    pub fn apply_remote(&mut self, now: u64, op: Persist) -> Result<(), RemoteSkip> {
        self.tick(now);
        match op {
            Persist::PutNode(id, entry) => {
                self.put_remote_node(now, id, entry);
                Ok(())
            }
            Persist::RemoveNode(id) => {
                if self.nodes.contains_key(&id) {
                    self.remove_node(now, id);
                }
                Ok(())
            }
            Persist::PutHolding(content, node, bf) => {
                self.put_remote_holding(now, content, node, bf)
            }
            Persist::RemoveHolding(content, node) => {
                self.unhold(now, content, node);
                Ok(())
            }
            Persist::PutManifest(content, bytes) => {
                if self.swarms.contains_key(&content) {
                    return Ok(());
                }
                let max = self.config.max_manifest_bytes;
                if self.manifest_bytes + bytes.len() as u64 > max {
                    return Err(RemoteSkip::ManifestSpace { max });
                }
                let m = VerifiedManifest::check(content, bytes)
                    .map_err(|_| RemoteSkip::BadManifest(content))?;
                // Charged to nobody here: the replica that took the upload charges its source.
                self.insert_swarm(now, content, m.piece_count, m.bytes, None);
                Ok(())
            }
            Persist::RemoveManifest(content) => {
                let Some(s) = self.swarms.get_mut(&content) else { return Ok(()) };
                if !s.holders.is_empty() {
                    return Err(RemoteSkip::StillHeld(content));
                }
                if let Some(mut s) = self.swarms.remove(&content) {
                    if let Some(t) = s.empty_since {
                        self.idle.remove(&(t, content));
                    }
                    self.manifest_bytes -= s.manifest.len() as u64;
                    Self::uncharge(&mut self.pending_manifests, &mut s);
                }
                Ok(())
            }
        }
    }

    /// Everything a backend holds for this index, as changes: nodes, then manifests, then
    /// holdings. For writing a replica's state back into a shared store that lost it.
    pub fn persisted(&self) -> Vec<Persist> {
        let mut ops: Vec<Persist> =
            self.nodes.iter().map(|(id, e)| Persist::PutNode(*id, e.clone())).collect();
        for (c, s) in self.swarms.iter() {
            ops.push(Persist::PutManifest(*c, s.manifest.clone()));
        }
        for (node, contents) in &self.held {
            for c in contents {
                if let Some(bf) = self.swarms.lock(c).and_then(|s| s.holders.get(node)) {
                    ops.push(Persist::PutHolding(*c, *node, bf));
                }
            }
        }
        ops
    }

    /// A node registered or heartbeated at another replica: its entry here, and the copies of
    /// its load, addresses and region in the swarms it holds.
    fn put_remote_node(&mut self, now: u64, id: NodeId, mut entry: NodeEntry) {
        // A role is granted here too: each replica has the operator's admitted set.
        entry.storage = entry.storage && self.config.admitted_storage.contains(&id);
        entry.addrs.truncate(MAX_ADDRS);
        // A heartbeat from the future would keep a node alive forever.
        entry.last_seen_ms = entry.last_seen_ms.min(now);
        let region = self.regions.intern(entry.region.as_ref());
        if region == NO_REGION {
            entry.region = None;
        }
        let (old_region, old_addrs) = match self.nodes.get(&id) {
            Some(old) => {
                entry.last_seen_ms = entry.last_seen_ms.max(old.last_seen_ms);
                (Some(self.regions.intern(old.region.as_ref())), old.addrs.clone())
            }
            None => (None, Vec::new()),
        };
        match old_region {
            None => *self.region_nodes.entry(region).or_default() += 1,
            Some(old) if old != region => {
                self.uncount_region(old);
                *self.region_nodes.entry(region).or_default() += 1;
            }
            Some(_) => {}
        }
        let load = entry.active_uploads;
        let moved = old_region.is_some_and(|old| old != region);
        let readdressed = old_addrs != entry.addrs;
        let addrs = entry.addrs.clone();
        self.nodes.insert(id, entry);
        let held: Vec<ContentId> = self.held.get(&id).into_iter().flatten().copied().collect();
        for c in held {
            if moved {
                // Its holdings move to the new region's counts (as at a local registration).
                if let Some(bf) = self.swarms.lock(&c).and_then(|s| s.holders.get(&id)) {
                    self.hold(c, id, bf);
                }
            }
            if let Some(s) = self.swarms.get_mut(&c) {
                s.holders.set_load(&id, load);
                if readdressed {
                    s.holders.set_addrs(&id, &addrs);
                }
            }
        }
        if moved {
            // All its lookup state goes, and the list of where it was with it.
            for c in self.looked_mut().remove(&id).unwrap_or_default() {
                if let Some(s) = self.swarms.get_mut(&c) {
                    s.forget_hints(id);
                }
            }
        }
    }

    fn put_remote_holding(
        &mut self,
        now: u64,
        content: ContentId,
        node: NodeId,
        bf: Bitfield,
    ) -> Result<(), RemoteSkip> {
        let storage = self.nodes.get(&node).ok_or(RemoteSkip::UnknownNode(node))?.storage;
        let max = self.config.max_contents_per_node;
        let held = self.held.get(&node).map_or(0, BTreeSet::len);
        let already = self.held.get(&node).is_some_and(|s| s.contains(&content));
        let swarm = self.swarms.get_mut(&content).ok_or(RemoteSkip::UnknownContent(content))?;
        if swarm.piece_count != bf.len() {
            return Err(RemoteSkip::PieceCount { got: bf.len(), expected: swarm.piece_count });
        }
        if !already && held >= max {
            return Err(RemoteSkip::TooManyContents { max });
        }
        if storage {
            // Storage progress counts here too: this replica plans re-seeding as well.
            swarm.storage_progress(node, bf.count(), now);
            swarm.assigned.retain(|p, _| !bf.get(*p));
        }
        self.hold(content, node, bf);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
