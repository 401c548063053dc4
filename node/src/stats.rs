//! Node-wide and per-content counters: what `shoal status` and `/metrics` report, kept as the
//! node works so that answering reads counters, never the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use shoal_control::LsEntry;
use shoal_core::{ContentId, NodeId};

use crate::contents::Contents;

/// Node-wide counters, and per-content ones for contents held or fetched.
#[derive(Debug, Default)]
pub struct Stats {
    /// Piece bytes sent to peers.
    pub uploaded_bytes: AtomicU64,
    /// Piece and manifest bytes received from peers.
    pub downloaded_bytes: AtomicU64,
    /// Pieces sent to peers.
    pub pieces_uploaded: AtomicU64,
    /// Received pieces that failed verification.
    pub bad_pieces: AtomicU64,
    /// Pushes refused for want of a valid token (storage nodes).
    pub pushes_refused: AtomicU64,
    /// Piece bytes pushed into storage.
    pub pushed_bytes: AtomicU64,
    /// Piece bytes received from peers the tracker placed in another region than this node.
    pub cross_region_bytes: AtomicU64,
    /// Piece bytes received from other regions for requests that ended without their piece.
    pub cross_region_wasted_bytes: AtomicU64,
    /// The Prometheus instruments (labelled counters, histograms, gauges kept as things change).
    pub(crate) metrics: crate::metrics::NodeMetrics,
    /// Per-content counters. Held only for map updates.
    contents: Mutex<HashMap<ContentId, ContentStats>>,
    /// What the node holds, per content. Held only for map updates, never across store reads.
    held: Mutex<Held>,
}

/// The rows of what the node holds, as `shoal status` shows them: read from the store once,
/// then kept up to date by counting verified pieces, and read again only after a content was
/// added, replaced or finished. Answering a status call reads no store.
#[derive(Debug, Default)]
struct Held {
    /// `None` until first read.
    rows: Option<BTreeMap<ContentId, LsEntry>>,
    /// A content changed since the rows were read.
    stale: bool,
    /// The rows are being read again: what changes meanwhile is read on the next call.
    reading: bool,
}

/// Per-content counters: bytes uploaded and peers with a control session about it.
#[derive(Debug, Default, Clone)]
pub(crate) struct ContentStats {
    pub(crate) uploaded_bytes: u64,
    /// Sessions per peer (two nodes may hold two sessions, one each way).
    pub(crate) peers: HashMap<NodeId, u32>,
}

impl Stats {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A piece of `content` was verified: one more held.
    pub(crate) fn piece_verified(&self, content: ContentId) {
        self.metrics.pieces_verified.inc();
        let mut held = self.held();
        if held.reading {
            held.stale = true;
            return;
        }
        let Some(rows) = &mut held.rows else { return };
        let stale = match rows.get_mut(&content) {
            Some(row) if row.state == "partial" => {
                let before = held_bytes(row);
                row.pieces_have = (row.pieces_have + 1).min(row.pieces_total);
                self.metrics.held_bytes.inc_by(held_bytes(row).saturating_sub(before) as i64);
                // The last piece: the content's state changes with it (a storage node's
                // object turns complete).
                row.pieces_have == row.pieces_total
            }
            Some(_) => false,
            // A content not seen yet: its row comes with the next read.
            None => true,
        };
        held.stale |= stale;
    }

    /// A content was added, replaced or finished: its row is read again before it is shown.
    pub(crate) fn content_changed(&self) {
        self.held().stale = true;
    }

    /// True if what the node holds changed since it was last read (or was never read).
    pub(crate) fn is_stale(&self) -> bool {
        let held = self.held();
        held.rows.is_none() || held.stale
    }

    /// Sets the held-content gauges from freshly read rows.
    fn set_held_gauges<'a>(&self, rows: impl Iterator<Item = &'a LsEntry>) {
        let mut by_state: BTreeMap<&'static str, i64> =
            [("complete", 0), ("partial", 0), ("source changed", 0)].into_iter().collect();
        let mut bytes = 0u64;
        for row in rows {
            let state = match row.state.as_str() {
                "complete" => "complete",
                "partial" => "partial",
                _ => "source changed",
            };
            *by_state.entry(state).or_default() += 1;
            bytes = bytes.saturating_add(held_bytes(row));
        }
        for (state, n) in by_state {
            self.metrics.contents.get_or_create(&[("state", state)]).set(n);
        }
        self.metrics.held_bytes.set(bytes.min(i64::MAX as u64) as i64);
    }

    /// What the node holds, per content. Blocking: reads `contents` the first time and after
    /// a change, never otherwise.
    pub(crate) fn held_rows(&self, contents: &Contents) -> anyhow::Result<Vec<LsEntry>> {
        {
            let mut held = self.held();
            if let (false, Some(rows)) = (held.stale, &held.rows) {
                return Ok(rows.values().cloned().collect());
            }
            held.stale = false;
            held.reading = true;
        }
        let listed = contents.list();
        let mut held = self.held();
        held.reading = false;
        let listed = match listed {
            Ok(l) => l,
            Err(e) => {
                held.stale = true;
                return Err(e);
            }
        };
        let rows: BTreeMap<ContentId, LsEntry> = listed
            .into_iter()
            .filter_map(|row| Some((row.content_id.parse().ok()?, row)))
            .collect();
        let out = rows.values().cloned().collect();
        self.set_held_gauges(rows.values());
        held.rows = Some(rows);
        Ok(out)
    }

    pub(crate) fn contents(&self) -> MutexGuard<'_, HashMap<ContentId, ContentStats>> {
        self.contents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts piece bytes uploaded of a content. Callers count only contents they serve, so
    /// entries exist only for held contents.
    pub(crate) fn count_upload(&self, content: ContentId, bytes: u64) {
        self.contents().entry(content).or_default().uploaded_bytes += bytes;
    }

    /// A control session with `peer` about `content` began (`true`) or ended (`false`).
    /// Callers report only contents this node holds or is fetching; an entry with no peers
    /// and no uploads is removed, so nothing outlives its sessions.
    pub(crate) fn peer_session(&self, content: ContentId, peer: NodeId, up: bool) {
        let mut stats = self.contents();
        if up {
            let entry = stats.entry(content).or_default();
            if entry.peers.is_empty() {
                self.metrics.swarms.inc();
            }
            *entry.peers.entry(peer).or_default() += 1;
            return;
        }
        let Some(entry) = stats.get_mut(&content) else { return };
        if let Some(n) = entry.peers.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                entry.peers.remove(&peer);
                if entry.peers.is_empty() {
                    self.metrics.swarms.dec();
                }
            }
        }
        if entry.peers.is_empty() && entry.uploaded_bytes == 0 {
            stats.remove(&content);
        }
    }
}

/// Bytes of verified pieces a row stands for: the size when complete, else pro rata.
fn held_bytes(row: &LsEntry) -> u64 {
    if row.state == "complete" || row.pieces_total == 0 {
        return row.size;
    }
    (u128::from(row.size) * u128::from(row.pieces_have) / u128::from(row.pieces_total)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_content_stats_are_pruned_when_their_sessions_end() {
        let stats = Stats::default();
        let count = || stats.contents().len();
        let c = ContentId([1; 32]);
        let peer = shoal_net::Identity::generate().node_id();
        // Two sessions with one peer (one each way), then both end: nothing is left.
        stats.peer_session(c, peer, true);
        stats.peer_session(c, peer, true);
        stats.peer_session(c, peer, false);
        assert_eq!(count(), 1);
        stats.peer_session(c, peer, false);
        assert_eq!(count(), 0);
        // A session ending for a content never counted creates nothing.
        stats.peer_session(ContentId([2; 32]), peer, false);
        assert_eq!(count(), 0);
        // Uploads of a held content are kept as its lifetime counter.
        stats.count_upload(c, 10);
        stats.peer_session(c, peer, true);
        stats.peer_session(c, peer, false);
        assert_eq!(count(), 1);
    }

    #[test]
    fn held_rows_are_read_once_and_again_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let contents = Contents {
            store: shoal_store::Store::open(&dir.path().join("data")).unwrap(),
            cloud: None,
            lie: false,
        };
        let file = |name: &str, len: usize| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![name.as_bytes()[0]; len]).unwrap();
            contents.store.import(&path, |_| {}).unwrap()
        };
        let stats = Stats::default();
        let a = file("a", 100_000);
        let rows = stats.held_rows(&contents).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].state.as_str(), rows[0].pieces_have), ("complete", a.piece_count()));
        // Added behind the counters' back: not seen, so the store was not read again...
        file("b", 50_000);
        assert_eq!(stats.held_rows(&contents).unwrap().len(), 1);
        // ...until a change is told.
        stats.content_changed();
        assert_eq!(stats.held_rows(&contents).unwrap().len(), 2);
        // A verified piece of a content not seen yet makes the rows stale too.
        file("c", 10);
        stats.piece_verified(ContentId([9; 32]));
        assert_eq!(stats.held_rows(&contents).unwrap().len(), 3);
    }
}
