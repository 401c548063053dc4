//! `POST /v1/get`: the progress and the outcome of a download.

use serde::{Deserialize, Serialize};

/// Progress of a fetch, published several times a second.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// The file name.
    pub name: String,
    /// The file size.
    pub size: u64,
    /// Pieces verified.
    pub pieces_done: u32,
    /// Pieces in the content.
    pub pieces_total: u32,
    /// Bytes verified.
    pub bytes_done: u64,
    /// Bytes received from the network in this run.
    pub downloaded_bytes: u64,
    /// Peers currently used.
    pub peers: usize,
    /// Receive rate, bytes per second, smoothed.
    pub rate: f64,
    /// Something the user should know (a tracker that does not answer, say).
    #[serde(default)]
    pub warning: Option<String>,
}

/// Per-peer figures of a fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer's node id.
    pub node_id: String,
    /// The address used.
    pub addr: String,
    /// Verified pieces received from it.
    pub pieces: u32,
    /// Piece bytes received from it (good or bad).
    pub bytes: u64,
    /// True if it was banned for bad data (or for refusing pieces it claimed to hold).
    pub banned: bool,
    /// Why the fetch stopped using it, if it did before the end (stalled, sent no bitfield,
    /// replaced by a faster peer, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// The outcome of a fetch, as `shoal get --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchReport {
    /// The content id.
    pub content_id: String,
    /// The file size.
    pub size: u64,
    /// Bytes received from the network in this run.
    pub downloaded_bytes: u64,
    /// Wall time of the fetch.
    pub seconds: f64,
    /// Pieces that failed verification.
    pub bad_pieces: u64,
    /// Every peer used.
    pub peers: Vec<PeerReport>,
    /// Pieces already verified when this run started (a resume).
    pub resumed_pieces: u32,
    /// Where the file is.
    pub path: String,
}
