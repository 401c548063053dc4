//! Bodies and answers of the offline-download and space routes.
//!
//! Task events travel as JSON objects, one per line, exactly as `shoal offline watch --json`
//! prints them: `{"event": "accepted", "size"}`, `{"event": "segment", "offset", "len"}`,
//! `{"event": "progress", "bytes", "size"}`, `{"event": "restarted", "reason"}`, then
//! `{"event": "done", "content_id"}` or `{"event": "failed", "reason"}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `POST /v1/offline/add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfflineAddBody {
    /// The URL storage fetches (empty when `id` names the resource).
    #[serde(default)]
    pub url: String,
    /// A resource id the tracker maps to a URL (its operator's `--offline-source ID=URL`).
    #[serde(default)]
    pub id: Option<String>,
    /// The name in the user's space (default: from the URL).
    #[serde(default)]
    pub name: Option<String>,
    /// Follow the task into this absolute path: the answer is then NDJSON, events and the
    /// [`FollowReport`] (`{"done": ..}`) or `{"error": ..}`.
    #[serde(default)]
    pub follow: Option<PathBuf>,
}

/// Answer to `POST /v1/offline/add` without `follow`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfflineAddReply {
    /// The task id.
    pub task: String,
    /// Storage had the resource already: the task is done.
    pub instant: bool,
    /// The storage node that runs it, `NODE_ID@IP:PORT`.
    pub storage: String,
}

/// `POST /v1/offline/watch` and `POST /v1/offline/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskBody {
    /// The task id.
    pub task: String,
}

/// `POST /v1/offline/follow`: a task already added, followed into a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowBody {
    /// The task id.
    pub task: String,
    /// Absolute output path.
    pub output: PathBuf,
}

/// One task, as `shoal offline ls --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task id.
    pub task: String,
    /// `fetching`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Bytes fetched.
    pub bytes: u64,
    /// The resource's size (0 until known).
    pub size: u64,
    /// The content id once done.
    pub content_id: Option<String>,
    /// The URL.
    pub url: String,
    /// The name in the user's space.
    pub name: String,
}

/// One entry of the user's space, as `shoal space ls --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceEntry {
    /// The name.
    pub name: String,
    /// The content id (none while temporary).
    pub content_id: Option<String>,
    /// Bytes.
    pub size: u64,
    /// `temporary` or `permanent`.
    pub state: String,
    /// When it was made or last changed, ms since the Unix epoch.
    pub time_ms: u64,
}

/// Answer to `GET /v1/space/ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpaceReply {
    /// The storage node holding the space, `NODE_ID@IP:PORT`.
    pub storage: String,
    /// The entries.
    pub entries: Vec<SpaceEntry>,
}

/// `POST /v1/space/rm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpaceRmBody {
    /// The entry's name.
    pub name: String,
}

/// What following a task gave, as `shoal offline add --follow --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowReport {
    /// The task id.
    pub task: String,
    /// The content id.
    pub content_id: String,
    /// Bytes.
    pub size: u64,
    /// Seconds from adding the task to its first segment being ready (none when instant).
    pub first_segment_s: Option<f64>,
    /// Seconds until storage had the whole resource.
    pub origin_done_s: f64,
    /// Seconds until the file was verified at its path.
    pub done_s: f64,
    /// Storage had the resource already.
    pub instant: bool,
}
