//! Read-only views of the index for operators (the tracker's admin API and dashboard).
//!
//! Every view is bounded whatever the index holds: lists come a page at a time (at most
//! [`MAX_PAGE`] nodes or [`MAX_SWARM_PAGE`] swarms, ordered by id, continued after the last id of the previous page), a
//! swarm's availability is aggregated into at most [`MAX_CELLS`] cells, and a node's stored
//! bytes are summed only for admitted storage (whose per-content progress the index keeps).
//! A page costs one pass over the ids (no sort of the whole registry) and the rows it returns;
//! nothing here changes the index.

use std::collections::BinaryHeap;

use shoal_core::manifest::Header;
use shoal_core::{ContentId, NodeId, Region};

use crate::index::Index;
use crate::swarm::{count_and_not, Swarm};

/// The most rows one page of nodes or holders holds.
pub const MAX_PAGE: usize = 200;
/// The most swarms one page holds: a summary passes over the swarm's availability (up to
/// 65,536 pieces), so a page costs at most a few million counter reads under the lock.
pub const MAX_SWARM_PAGE: usize = 50;
/// The most cells a swarm's availability heatmap is aggregated into.
pub const MAX_CELLS: usize = 512;

/// One swarm, as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmSummary {
    /// The content.
    pub content: ContentId,
    /// The file name from its manifest (the uploader's choice: untrusted text).
    pub name: String,
    /// The file size in bytes.
    pub size: u64,
    /// The number of pieces.
    pub pieces: u32,
    /// Nodes holding at least one piece (or announcing an empty bitfield).
    pub holders: usize,
    /// Holders with every piece.
    pub complete_holders: usize,
    /// Pieces at least one holder has: the swarm can rebuild the file when this is `pieces`.
    pub available_pieces: u32,
    /// The fewest holders of any piece (0 while some piece is held by nobody).
    pub min_availability: u32,
    /// Admitted storage nodes holding part of the content.
    pub storage_holders: usize,
    /// The most pieces one storage node holds.
    pub storage_pieces: u32,
}

/// A swarm's piece availability, aggregated: cell `i` covers pieces
/// `i * pieces_per_cell .. (i + 1) * pieces_per_cell` (the last may be short).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heatmap {
    /// Pieces per cell (at least 1).
    pub pieces_per_cell: u32,
    /// Per cell, the fewest holders of any of its pieces.
    pub min: Vec<u32>,
    /// Per cell, the most holders of any of its pieces.
    pub max: Vec<u32>,
}

/// One holder of a swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRow {
    /// The node.
    pub node: NodeId,
    /// Pieces it holds.
    pub have: u32,
    /// Admitted storage.
    pub storage: bool,
    /// Its region.
    pub region: Option<Region>,
    /// Uploads under way at its last heartbeat.
    pub load: u32,
}

/// One swarm in detail: its summary, heatmap and a page of its holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmDetail {
    /// As in a list.
    pub summary: SwarmSummary,
    /// Availability per cell.
    pub heatmap: Heatmap,
    /// Holders from place `from` on (places change as holders leave).
    pub holders: Vec<HolderRow>,
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// The node.
    pub node: NodeId,
    /// Admitted storage.
    pub storage: bool,
    /// Its region.
    pub region: Option<Region>,
    /// Uploads under way at its last heartbeat.
    pub active_uploads: u32,
    /// Upload rate at its last heartbeat, bytes per second.
    pub upload_rate: u64,
    /// Wall-clock milliseconds of its last register or heartbeat.
    pub last_seen_ms: u64,
    /// Contents it holds part of.
    pub contents: usize,
    /// Storage only: contents it holds completely.
    pub complete_contents: Option<usize>,
    /// Storage only: bytes of the pieces it holds.
    pub stored_bytes: Option<u64>,
}

/// Nodes and load in one region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionLoad {
    /// The region (`None`: nodes without one).
    pub region: Option<Region>,
    /// Nodes.
    pub nodes: usize,
    /// Of which admitted storage.
    pub storage: usize,
    /// Uploads under way, summed over its nodes' last heartbeats.
    pub active_uploads: u64,
    /// Upload rate, summed, bytes per second.
    pub upload_rate: u64,
}

/// The registry's totals, by region (one pass over the nodes: the tracker takes it once a
/// second, not per request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Per region, sorted by name (nodes without a region first).
    pub regions: Vec<RegionLoad>,
}

/// The `limit` smallest keys above `after`, in order: one pass, a heap of `limit`.
fn page<K: Ord + Copy>(
    keys: impl Iterator<Item = K>,
    after: Option<K>,
    limit: usize,
    max: usize,
) -> Vec<K> {
    let limit = limit.min(max);
    if limit == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<K> = BinaryHeap::with_capacity(limit + 1);
    for k in keys.filter(|k| after.is_none_or(|a| *k > a)) {
        if heap.len() < limit {
            heap.push(k);
        } else if heap.peek().is_some_and(|top| k < *top) {
            heap.pop();
            heap.push(k);
        }
    }
    heap.into_sorted_vec()
}

impl Index {
    fn summary(&self, content: ContentId, s: &Swarm) -> SwarmSummary {
        let (name, size) = match Header::read(&s.manifest) {
            Ok(h) => (h.name.to_string(), h.size),
            // Cannot happen: a swarm's manifest was verified before it was kept.
            Err(_) => (String::new(), 0),
        };
        let (holders, complete_holders) = s.holders.counts();
        // One pass: pieces held by anyone, and the fewest holders of a piece.
        let (available_pieces, min) = s
            .availability
            .iter()
            .fold((0u32, u32::MAX), |(n, m), &a| (n + u32::from(a > 0), m.min(a)));
        SwarmSummary {
            content,
            name,
            size,
            pieces: s.piece_count,
            holders,
            complete_holders,
            available_pieces,
            min_availability: if s.availability.is_empty() { 0 } else { min },
            storage_holders: s.storage.len(),
            storage_pieces: s.storage.values().map(|&(n, _, _)| n).max().unwrap_or(0),
        }
    }

    /// Swarms ordered by content id, the first `limit` (at most [`MAX_SWARM_PAGE`]) after
    /// `after`.
    pub fn swarms_page(&self, after: Option<ContentId>, limit: usize) -> Vec<SwarmSummary> {
        page(self.swarms.keys().copied(), after, limit, MAX_SWARM_PAGE)
            .into_iter()
            .filter_map(|c| self.swarms.lock(&c).map(|s| self.summary(c, &s)))
            .collect()
    }

    /// Swarms known, with or without holders.
    pub fn swarm_count(&self) -> usize {
        self.swarms.len()
    }

    /// One swarm: its heatmap in at most `cells` cells (at most [`MAX_CELLS`], at least 1),
    /// and up to `limit` holders (at most [`MAX_PAGE`]) from place `from`.
    pub fn swarm_detail(
        &self,
        content: ContentId,
        cells: usize,
        from: usize,
        limit: usize,
    ) -> Option<SwarmDetail> {
        let s = self.swarms.lock(&content)?;
        let cells = cells.clamp(1, MAX_CELLS);
        let per = (s.piece_count as usize).div_ceil(cells).max(1);
        let (mut min, mut max) = (Vec::new(), Vec::new());
        for chunk in s.availability.chunks(per) {
            min.push(chunk.iter().copied().min().unwrap_or(0));
            max.push(chunk.iter().copied().max().unwrap_or(0));
        }
        let holders = (from..from.saturating_add(limit.min(MAX_PAGE)))
            .map_while(|i| s.holders.at(i))
            .map(|h| HolderRow {
                node: *h.id,
                have: count_and_not(h.bits, None),
                storage: s.storage.contains_key(h.id),
                region: self.regions.name(h.region).cloned(),
                load: h.load,
            })
            .collect();
        Some(SwarmDetail {
            summary: self.summary(content, &s),
            heatmap: Heatmap { pieces_per_cell: per as u32, min, max },
            holders,
        })
    }

    /// Registered nodes ordered by id, the first `limit` (at most [`MAX_PAGE`]) after `after`;
    /// only admitted storage with `storage_only`.
    pub fn nodes_page(
        &self,
        after: Option<NodeId>,
        limit: usize,
        storage_only: bool,
    ) -> Vec<NodeRow> {
        let ids = self.nodes.iter().filter(|(_, e)| e.storage || !storage_only).map(|(id, _)| *id);
        page(ids, after, limit, MAX_PAGE)
            .into_iter()
            .filter_map(|id| {
                let e = self.nodes.get(&id)?;
                let held = self.held.get(&id);
                let (complete_contents, stored_bytes) = if e.storage {
                    let (mut complete, mut bytes) = (0, 0u64);
                    for c in held.into_iter().flatten() {
                        let Some(s) = self.swarms.lock(c) else { continue };
                        let Some(&(have, _, _)) = s.storage.get(&id) else { continue };
                        let Ok(h) = Header::read(&s.manifest) else { continue };
                        complete += usize::from(have == s.piece_count);
                        // The last piece may be short: never more than the file.
                        bytes = bytes.saturating_add(
                            u64::from(have).saturating_mul(h.piece_size).min(h.size),
                        );
                    }
                    (Some(complete), Some(bytes))
                } else {
                    (None, None)
                };
                Some(NodeRow {
                    node: id,
                    storage: e.storage,
                    region: e.region.clone(),
                    active_uploads: e.active_uploads,
                    upload_rate: e.upload_rate,
                    last_seen_ms: e.last_seen_ms,
                    contents: held.map_or(0, |h| h.len()),
                    complete_contents,
                    stored_bytes,
                })
            })
            .collect()
    }

    /// Nodes and load per region: one pass over the registry.
    pub fn totals(&self) -> Totals {
        let mut by: std::collections::BTreeMap<Option<&Region>, RegionLoad> = Default::default();
        for e in self.nodes.values() {
            let r = by.entry(e.region.as_ref()).or_default();
            r.nodes += 1;
            r.storage += usize::from(e.storage);
            r.active_uploads += u64::from(e.active_uploads);
            r.upload_rate = r.upload_rate.saturating_add(e.upload_rate);
        }
        let regions = by
            .into_iter()
            .map(|(region, mut r)| {
                r.region = region.cloned();
                r
            })
            .collect();
        Totals { regions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_the_smallest_keys_after_the_cursor() {
        let keys = [9u32, 3, 7, 1, 5, 8, 2];
        assert_eq!(page(keys.iter().copied(), None, 3, MAX_PAGE), vec![1, 2, 3]);
        assert_eq!(page(keys.iter().copied(), Some(3), 3, MAX_PAGE), vec![5, 7, 8]);
        assert_eq!(page(keys.iter().copied(), Some(8), 3, MAX_PAGE), vec![9]);
        assert_eq!(page(keys.iter().copied(), Some(9), 3, MAX_PAGE), Vec::<u32>::new());
        assert_eq!(page(keys.iter().copied(), None, 0, MAX_PAGE), Vec::<u32>::new());
        // A huge limit is cut to the page size.
        assert_eq!(page(0..10_000u32, None, usize::MAX, MAX_PAGE).len(), MAX_PAGE);
    }

    fn id() -> NodeId {
        let kp = libp2p_identity::Keypair::generate_ed25519();
        NodeId::from_public_key(&kp.public()).unwrap()
    }

    fn bf(n: u32, ones: std::ops::Range<u32>) -> shoal_core::Bitfield {
        let mut b = shoal_core::Bitfield::new(n);
        ones.for_each(|i| {
            b.set(shoal_core::PieceIndex(i));
        });
        b
    }

    #[test]
    fn views_count_holders_availability_and_storage() {
        use shoal_wire::tracker::Role;
        let (seed, leech, store) = (id(), id(), id());
        let config = crate::Config {
            admitted_storage: [store].into_iter().collect(),
            ..crate::Config::default()
        };
        let mut ix = Index::new(config);
        let at: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        for (n, role) in [(seed, Role::Node), (leech, Role::Node), (store, Role::Storage)] {
            ix.register(0, n, role, at, &[], None);
        }
        // Some hundreds of pieces, named with markup (kept as is: escaping is the page's job).
        let size = 100 * 1024 * 1024 + 1;
        let log2 = shoal_core::piece::piece_log2_for(size);
        let n = shoal_core::piece::piece_count(size, log2) as u32;
        assert!(n > MAX_CELLS as u32, "{n} pieces");
        let hashes = (0..n).map(|i: u32| shoal_core::PieceHash::of(&i.to_be_bytes())).collect();
        let m =
            shoal_core::Manifest::new("<img src=x onerror=alert(1)>.bin", size, hashes).unwrap();
        let c = m.content_id();
        ix.put_manifest(0, seed, c, m.encode()).unwrap();
        ix.announce(0, seed, c, bf(n, 0..n)).unwrap();
        ix.announce(0, leech, c, bf(n, 0..100)).unwrap();
        ix.announce(0, store, c, bf(n, 0..200)).unwrap();
        let s = &ix.swarms_page(None, 10)[0];
        assert_eq!(s.name, "<img src=x onerror=alert(1)>.bin");
        assert_eq!((s.pieces, s.holders, s.complete_holders), (n, 3, 1));
        assert_eq!((s.available_pieces, s.min_availability), (n, 1));
        assert_eq!((s.storage_holders, s.storage_pieces), (1, 200));
        // The leech completes: two complete holders.
        ix.announce(0, leech, c, bf(n, 0..n)).unwrap();
        assert_eq!(ix.swarms_page(None, 10)[0].complete_holders, 2);
        assert!(ix.swarms_page(Some(c), 10).is_empty());
        // More pieces than cells: aggregated into at most 512 cells.
        let d = ix.swarm_detail(c, 100_000, 0, 10).unwrap();
        let per = n.div_ceil(MAX_CELLS as u32);
        assert_eq!(d.heatmap.pieces_per_cell, per);
        assert_eq!(d.heatmap.min.len(), n.div_ceil(per) as usize);
        assert_eq!((d.heatmap.min[0], d.heatmap.max[0]), (3, 3));
        assert_eq!(*d.heatmap.min.last().unwrap(), 2);
        assert_eq!(d.holders.len(), 3);
        assert!(ix.swarm_detail(c, 0, usize::MAX, usize::MAX).unwrap().holders.is_empty());
        let piece = 1u64 << log2;
        // Storage's stored bytes come from its progress; ordinary nodes have none.
        let storage = ix.nodes_page(None, 10, true);
        assert_eq!(storage.len(), 1);
        assert_eq!(
            (storage[0].stored_bytes, storage[0].complete_contents),
            (Some(200 * piece), Some(0))
        );
        let all = ix.nodes_page(None, 10, false);
        assert_eq!(all.len(), 3);
        assert!(all
            .iter()
            .filter(|r| !r.storage)
            .all(|r| r.stored_bytes.is_none() && r.contents == 1));
        let t = ix.totals();
        assert_eq!((t.regions.len(), t.regions[0].nodes, t.regions[0].storage), (1, 3, 1));
        // Leaving: the holder and its completeness go.
        ix.forget(0, seed, c).unwrap();
        let s = &ix.swarms_page(None, 10)[0];
        assert_eq!((s.holders, s.complete_holders), (2, 1));
    }
}
