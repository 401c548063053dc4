//! Node-wide and per-content counters: what `shoal status` and `/metrics` report, kept as the
//! node works so that answering reads counters, never the store.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use shoal_core::{ContentId, NodeId};

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
    /// Per-content counters. Held only for map updates.
    contents: Mutex<HashMap<ContentId, ContentStats>>,
}

/// Per-content counters: bytes uploaded and peers with a control session about it.
#[derive(Debug, Default, Clone)]
pub(crate) struct ContentStats {
    pub(crate) uploaded_bytes: u64,
    /// Sessions per peer (two nodes may hold two sessions, one each way).
    pub(crate) peers: HashMap<NodeId, u32>,
}

impl Stats {
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
            *stats.entry(content).or_default().peers.entry(peer).or_default() += 1;
            return;
        }
        let Some(entry) = stats.get_mut(&content) else { return };
        if let Some(n) = entry.peers.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                entry.peers.remove(&peer);
            }
        }
        if entry.peers.is_empty() && entry.uploaded_bytes == 0 {
            stats.remove(&content);
        }
    }
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
}
