//! One offline task on a storage node: its durable record, its event log and its watchers.
//!
//! The log is what a watcher replays from the start: `Accepted`, a `Segment` proof per
//! finished segment, `Restarted` when the resource changed (at most [`MAX_RESTARTS`] times),
//! and `Done` or `Failed` last. Progress is not logged, only kept as the latest figure, so the
//! log is bounded by the segment count times (1 + restarts). Watchers learn of changes through
//! a `watch` channel carrying the log's length, which never blocks the runner.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shoal_cloud::origin::Resource;
use shoal_core::{ContentId, NodeId, PieceHash, TaskId, UserId};
use shoal_wire::offline::{TaskEvent, TaskInfo, TaskState};
use tokio::sync::watch;

/// Times a task starts over because the resource changed at the origin before it fails.
pub(crate) const MAX_RESTARTS: u32 = 3;

/// Where a task stands, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Stage {
    Fetching,
    Done { content: ContentId },
    Failed { reason: String },
    Cancelled,
}

/// What survives a restart: enough to continue from the verified segments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) user: UserId,
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) created_ms: u64,
    pub(crate) stage: Stage,
    /// The resource as found, once probed.
    pub(crate) resource: Option<Resource>,
    /// The hash of each piece in the temporary file, once its segment was fetched and hashed.
    pub(crate) hashes: Vec<Option<PieceHash>>,
    pub(crate) restarts: u32,
}

/// A task: its record and log under one lock (never held across an await), its watchers'
/// channel, and its cancel switch.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) id: TaskId,
    pub(crate) state: Mutex<State>,
    /// The log's length, bumped on every change (progress included).
    changed: watch::Sender<u64>,
    /// Set to true to cancel.
    pub(crate) cancel: watch::Sender<bool>,
    /// Nodes watching the task now (the user's devices following it), with the address storage
    /// sees them at. Held only for access.
    pub(crate) watchers: Mutex<HashMap<NodeId, (SocketAddr, u32)>>,
    /// The first follower each piece was sent to, and when: later followers are pointed there.
    /// Held only for access; at most one entry per piece.
    pub(crate) served: Mutex<HashMap<u32, (NodeId, Instant)>>,
}

/// A task's mutable state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) record: Record,
    pub(crate) log: Vec<TaskEvent>,
    /// Bytes of finished segments in the temporary file.
    pub(crate) bytes: u64,
    /// Bytes of segments underway, as of the last progress tick.
    pub(crate) inflight: u64,
}

impl State {
    /// Bytes fetched so far, for progress (never past the size).
    pub(crate) fn progress(&self) -> u64 {
        let size = self.record.resource.as_ref().map_or(0, |r| r.len);
        (self.bytes + self.inflight).min(size)
    }
}

impl Task {
    pub(crate) fn new(id: TaskId, record: Record) -> Arc<Self> {
        let mut log = Vec::new();
        match &record.stage {
            Stage::Done { content } => log.push(TaskEvent::Done { content: *content }),
            Stage::Failed { reason } => log.push(TaskEvent::Failed { reason: reason.clone() }),
            Stage::Cancelled => log.push(TaskEvent::Failed { reason: "cancelled".into() }),
            Stage::Fetching => {}
        }
        Arc::new(Self {
            id,
            state: Mutex::new(State { record, log, bytes: 0, inflight: 0 }),
            changed: watch::channel(0).0,
            cancel: watch::channel(false).0,
            watchers: Mutex::default(),
            served: Mutex::default(),
        })
    }

    /// The state, locked (no await while held).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn user(&self) -> UserId {
        self.lock().record.user
    }

    /// Appends an event to the log and wakes the watchers.
    pub(crate) fn log(&self, ev: TaskEvent) {
        let n = {
            let mut s = self.lock();
            s.log.push(ev);
            s.log.len() as u64
        };
        self.changed.send_replace(n);
    }

    /// Wakes the watchers without logging (progress).
    pub(crate) fn poke(&self) {
        self.changed.send_modify(|_| {});
    }

    /// A receiver that wakes on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// True once the task ended (done, failed or cancelled).
    pub(crate) fn is_over(&self) -> bool {
        self.lock().record.stage != Stage::Fetching
    }

    /// The task as listed.
    pub(crate) fn info(&self) -> TaskInfo {
        let s = self.lock();
        let r = &s.record;
        let (state, content) = match &r.stage {
            Stage::Fetching => (TaskState::Fetching, None),
            Stage::Done { content } => (TaskState::Done, Some(*content)),
            Stage::Failed { .. } => (TaskState::Failed, None),
            Stage::Cancelled => (TaskState::Cancelled, None),
        };
        let size = r.resource.as_ref().map_or(0, |res| res.len);
        let bytes = if matches!(r.stage, Stage::Done { .. }) { size } else { s.progress() };
        TaskInfo {
            task: self.id,
            state,
            bytes,
            size,
            content,
            url: r.url.clone(),
            name: r.name.clone(),
        }
    }
}
