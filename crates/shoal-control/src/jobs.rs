//! Jobs (`shoal get --detach`, `shoal jobs`, `shoal cancel`) and removing a content
//! (`shoal rm`).
//!
//! A job is a download the daemon runs on its own: the command that started it returns at
//! once with its id. Jobs live as long as the daemon (after a restart, the same `shoal get`
//! resumes from what was verified); finished ones are listed for a while, then dropped.

use serde::{Deserialize, Serialize};

/// Answer to `POST /v1/jobs` (its body is a [`crate::GetBody`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStarted {
    /// The job id, for `shoal jobs` and `shoal cancel`.
    pub job: String,
    /// The content id.
    pub content_id: String,
}

/// `POST /v1/jobs/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobBody {
    /// The job id.
    pub job: String,
}

/// One job, as `shoal jobs --json` lists it (`GET /v1/jobs` answers a list of them; `POST
/// /v1/jobs/cancel` answers the cancelled job).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job id.
    pub job: String,
    /// The content id.
    pub content_id: String,
    /// The file name (empty until the manifest is in).
    pub name: String,
    /// Where the file goes.
    pub output: String,
    /// `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Bytes verified.
    pub bytes_done: u64,
    /// The file size (0 until the manifest is in).
    pub size: u64,
    /// Receive rate, bytes per second, smoothed.
    pub rate: f64,
    /// Peers in use.
    pub peers: usize,
    /// Seconds since the job started (to its end, once it ended).
    pub seconds: f64,
    /// Why it failed, for a failed job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/rm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RmBody {
    /// A content id, or a unique prefix of one (at least 8 characters).
    pub content: String,
    /// Also delete the data this node stored for it (never a file added in place).
    #[serde(default)]
    pub delete: bool,
}

/// A file `shoal rm` left where it is, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptFile {
    /// The file.
    pub path: String,
    /// Why it was kept.
    pub why: String,
}

/// Answer to `POST /v1/rm`, as `shoal rm --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RmReply {
    /// The content id.
    pub content_id: String,
    /// The file name.
    pub name: String,
    /// Files deleted (with `delete`).
    pub deleted: Vec<String>,
    /// Files left in place.
    pub kept: Vec<KeptFile>,
    /// Whether the node's tracker was told it no longer holds the content (false without a
    /// tracker, or when it did not answer: it then lists the node until it expires it).
    pub tracker_told: bool,
}
