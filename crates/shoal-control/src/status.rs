//! `GET /v1/status`: a node's identity, counters and contents.

use serde::{Deserialize, Serialize};

/// One content in `shoal status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentStatus {
    /// The content id.
    pub content_id: String,
    /// The file name.
    pub name: String,
    /// `complete`, `partial` or `source changed`.
    pub state: String,
    /// Pieces held.
    pub pieces_have: u32,
    /// Pieces in the content.
    pub pieces_total: u32,
    /// Peers connected about this content.
    pub peers: usize,
    /// True once the tracker reported the content complete in storage.
    #[serde(default)]
    pub stored: bool,
    /// Piece bytes uploaded of this content since the node started.
    pub uploaded_bytes: u64,
}

/// One address a node listens on (`shoal daemon --listen ADDR[=NAME]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The address it is bound to.
    pub addr: String,
    /// The operator's name for it (empty if none).
    pub name: String,
    /// Peer connections it serves now.
    pub connections: u32,
}

/// A node's counters and identity, as the control API reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The node id.
    pub node_id: String,
    /// Addresses peers can reach this node at.
    pub addrs: Vec<String>,
    /// Piece bytes sent to peers.
    pub uploaded_bytes: u64,
    /// Bytes received from peers.
    pub downloaded_bytes: u64,
    /// Pieces sent to peers.
    pub pieces_uploaded: u64,
    /// Received pieces that failed verification.
    pub bad_pieces: u64,
    /// Piece bytes pushed into storage.
    #[serde(default)]
    pub pushed_bytes: u64,
    /// Pushes refused for want of a valid token (storage nodes).
    #[serde(default)]
    pub pushes_refused: u64,
    /// Bytes a storage node fetched from origins for offline tasks (its own and assists).
    #[serde(default)]
    pub offline_origin_bytes: u64,
    /// Bytes this node sent to the user's other devices following the same offline task.
    #[serde(default)]
    pub offline_peer_bytes: u64,
    /// `node` or `storage`.
    #[serde(default)]
    pub role: String,
    /// The region the tracker placed this node in; empty if the tracker has no regions.
    #[serde(default)]
    pub region: String,
    /// Piece bytes received from peers in another region (as the tracker's lookups named
    /// their regions).
    #[serde(default)]
    pub cross_region_bytes: u64,
    /// Piece bytes received from peers in another region for requests that ended without
    /// their piece (cancelled when a copy came first from elsewhere, failed, or cut off): what
    /// the border carried for nothing.
    #[serde(default)]
    pub cross_region_wasted_bytes: u64,
    /// Bytes in a storage node's pull-through cache (complete pulls).
    #[serde(default)]
    pub pull_through_bytes: u64,
    /// The addresses it listens on, with their loads.
    #[serde(default)]
    pub links: Vec<LinkStatus>,
    /// Per content.
    #[serde(default)]
    pub contents: Vec<ContentStatus>,
}
