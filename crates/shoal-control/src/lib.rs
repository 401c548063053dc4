//! The local control API of a Shoal node: its types and a small blocking client, shared by the
//! `shoal` CLI, the testnet and third-party programs (none of which needs the node library).
//!
//! A running daemon writes [`CONTROL_FILE`] (`control.json`: address, bearer token, pid; mode
//! 0600) into its data dir and serves HTTP/JSON on 127.0.0.1. Every route but `GET /metrics`
//! needs the token as `authorization: Bearer TOKEN`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/status` | | [`Status`] |
//! | `GET /v1/ls` | | `[`[`LsEntry`]`]` |
//! | `POST /v1/add` | [`AddBody`] | [`AddReply`] |
//! | `POST /v1/get` | [`GetBody`] | NDJSON: `{"progress": `[`Progress`]`}` lines, then `{"done": `[`FetchReport`]`}` or `{"error": ".."}` |
//! | `POST /v1/push` | [`PushBody`] | [`PushReport`] |
//! | `POST /v1/offline/add` | [`OfflineAddBody`] | [`OfflineAddReply`]; with `follow`, NDJSON: event lines (see [`offline`]), then `{"done": `[`FollowReport`]`}` or `{"error": ".."}` |
//! | `POST /v1/offline/follow` | [`FollowBody`] | NDJSON like a followed add |
//! | `POST /v1/offline/watch` | [`TaskBody`] | NDJSON event lines until `done` or `failed` |
//! | `GET /v1/offline/ls` | | `[`[`TaskStatus`]`]` |
//! | `POST /v1/offline/cancel` | [`TaskBody`] | `{}` |
//! | `GET /v1/space/ls` | | [`SpaceReply`] |
//! | `POST /v1/space/rm` | [`SpaceRmBody`] | `{}` |
//! | `POST /v1/jobs` | [`GetBody`] | [`JobStarted`]: the download runs on in the daemon |
//! | `GET /v1/jobs` | | `[`[`JobStatus`]`]` |
//! | `POST /v1/jobs/cancel` | [`JobBody`] | [`JobStatus`] |
//! | `POST /v1/rm` | [`RmBody`] | [`RmReply`] |
//! | `GET /metrics` | | Prometheus text (format 0.0.4): the node's metrics, listed in the README ("Metrics"); no label names a content, file or peer |
//!
//! A refused request is answered with a 4xx or 5xx status and `{"error": ".."}`.
//!
//! - [`api`]: request and response bodies, and what `control.json` holds.
//! - [`status`]: [`Status`], the node's counters and contents.
//! - [`fetch`]: [`Progress`] and [`FetchReport`] of a download.
//! - [`offline`]: offline tasks, their events, and the user's space.
//! - [`units`]: [`Rate`] (`20MiB/s`) and [`human_bytes`].
//! - [`jobs`]: downloads the daemon runs on its own, and removing a content.
//! - [`client`]: [`Client`], a blocking client that finds the daemon of a data dir.
//! - [`lock`]: the daemon lock, which tells a starting daemon from none; [`wait`]: finding
//!   the daemon of a data dir, waiting briefly for one that is starting.

#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod fetch;
pub mod jobs;
pub mod lock;
pub mod offline;
pub mod status;
pub mod units;
pub mod wait;

pub use api::{
    AddBody, AddReply, ControlInfo, GetBody, LsEntry, PushBody, PushReport, CONTROL_FILE,
};
pub use client::{Client, Source};
pub use fetch::{FetchReport, PeerReport, Progress};
pub use jobs::{JobBody, JobStarted, JobStatus, KeptFile, RmBody, RmReply};
pub use lock::{DaemonLock, LockError};
pub use offline::{
    FollowBody, FollowReport, OfflineAddBody, OfflineAddReply, SpaceEntry, SpaceReply, SpaceRmBody,
    TaskBody, TaskStatus,
};
pub use status::{ContentStatus, LinkStatus, Status};
pub use units::{human_bytes, ParseRateError, ParseSizeError, Rate, Size};
pub use wait::{Need, WaitError};
