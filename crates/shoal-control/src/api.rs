//! Request and response bodies of the control API's routes, and what `control.json` holds.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file in the data dir that tells clients where the API is.
pub const CONTROL_FILE: &str = "control.json";

/// What `control.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlInfo {
    /// The API address.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: String,
    /// The daemon's process id.
    pub pid: u32,
}

/// `POST /v1/add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddBody {
    /// Absolute path of the file to share.
    pub path: PathBuf,
}

/// Answer to `POST /v1/add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddReply {
    /// The content id.
    pub content_id: String,
    /// The ticket to share.
    pub ticket: String,
    /// The file name.
    pub name: String,
    /// The file size.
    pub size: u64,
}

/// `POST /v1/get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetBody {
    /// The ticket.
    pub ticket: String,
    /// Absolute output path.
    pub output: PathBuf,
    /// Extra peers, `IP:PORT` or `NODE_ID@IP:PORT`.
    #[serde(default)]
    pub peers: Vec<String>,
    /// A download cap for this fetch, bytes per second.
    #[serde(default)]
    pub limit: Option<u64>,
    /// A tracker to use besides (or instead of) the ticket's.
    #[serde(default)]
    pub tracker: Option<String>,
}

/// `POST /v1/push`: a file to add and push, or a content id the node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushBody {
    /// Absolute path of a file (added first), or a content id.
    pub target: String,
}

/// The outcome of `shoal push` (answer to `POST /v1/push`), as `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushReport {
    /// The content id.
    pub content_id: String,
    /// The file size.
    pub size: u64,
    /// Piece bytes sent in this run.
    pub pushed_bytes: u64,
    /// Storage held every piece already: nothing was sent.
    pub already_stored: bool,
    /// Storage now holds every piece.
    pub stored: bool,
    /// Wall time.
    pub seconds: f64,
}

/// One line of `shoal ls` (`GET /v1/ls` answers a list of them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LsEntry {
    /// The content id.
    pub content_id: String,
    /// The file name.
    pub name: String,
    /// The file size.
    pub size: u64,
    /// `complete`, `partial` or `source changed`.
    pub state: String,
    /// Pieces verified.
    pub pieces_have: u32,
    /// Pieces in the content.
    pub pieces_total: u32,
    /// Where the file is (or will be).
    pub path: String,
}
