//! Offline download, the storage side: a storage node fetches URLs for the users it granted
//! space, into a temporary area, and moves each finished content into the user's space.
//!
//! - [`Offline`]: the tasks of this node (records in the cloud index survive restarts; a task
//!   still fetching continues after a restart from the segments it had hashed).
//! - `task`: one task's record, event log and watchers.
//! - `run`: fetching, hashing, proving and storing a task's resource.
//! - `serve`: the offline request streams users' devices open.
//! - `client`: the device side: adding, watching, listing and following tasks, and the space.
//!
//! Bounds: a user runs at most [`MAX_ACTIVE_PER_USER`] tasks at once and keeps at most
//! [`MAX_KEPT_PER_USER`] finished ones listed; the node fetches [`MAX_RUNNING`] tasks at once
//! (others wait their turn); every origin request is bounded by `shoal_cloud::origin::Config`
//! (size, redirects, attempts, stalls), and private addresses are refused unless the operator
//! passed `--offline-allow-private`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_cloud::origin::Origin;
use shoal_cloud::spaces::Commit;
use shoal_cloud::{CloudError, CloudStore};
use shoal_core::{ContentId, Manifest, TaskId, UserId};
use shoal_wire::offline::{TaskEvent, TaskInfo};
use shoal_wire::RejectReason;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::config::Grants;
use crate::net::Net;

mod assist;
pub(crate) mod client;
mod ctx;
pub(crate) mod follows;
mod piece;
mod run;
mod segments;
pub(crate) mod serve;
mod task;

use ctx::Seen;
pub(crate) use ctx::{now_ms, Ctx};
pub(crate) use task::Task;

/// Tasks the node fetches at once; more wait their turn.
pub(crate) const MAX_RUNNING: usize = 8;
/// Tasks one user may have underway at once.
pub(crate) const MAX_ACTIVE_PER_USER: usize = 16;
/// How long the probe of an instant answer may take before the task is fetched instead.
const INSTANT_PROBE: std::time::Duration = std::time::Duration::from_secs(10);
/// Finished tasks kept listed per user (the oldest are forgotten first).
pub(crate) const MAX_KEPT_PER_USER: usize = 64;

/// A refusal: the reason and the text the device is told.
pub(crate) type Refusal = (RejectReason, String);

fn refusal(reason: RejectReason, text: impl Into<String>) -> Refusal {
    (reason, text.into())
}

/// The offline tasks of a storage node.
#[derive(Debug)]
pub(crate) struct Offline {
    ctx: Arc<Ctx>,
    tasks: Mutex<HashMap<TaskId, Arc<Task>>>,
    /// Shares of other storage nodes' tasks this node fetches.
    pub(crate) assists: assist::Assists,
}

impl Offline {
    /// Loads the recorded tasks and continues those still fetching. Must run inside a tokio
    /// runtime.
    pub(crate) fn open(
        cloud: CloudStore,
        net: Arc<Net>,
        data_dir: &std::path::Path,
        grants: Grants,
        origin: shoal_cloud::origin::Config,
        trackers: Arc<crate::tracker::Trackers>,
    ) -> anyhow::Result<Arc<Self>> {
        let dir = data_dir.join("offline");
        std::fs::create_dir_all(&dir)?;
        assist::remove_leftovers(&dir);
        let origin_max_size = origin.max_size;
        let origin = Origin::new(origin)?;
        let running = Arc::new(Semaphore::new(MAX_RUNNING));
        let reserved = Mutex::default();
        let slots = Mutex::default();
        let ctx = Arc::new(Ctx {
            cloud,
            origin,
            net,
            dir,
            grants,
            running,
            reserved,
            slots,
            trackers,
            origin_max_size,
            storage_list: Mutex::default(),
            origin_bytes: Arc::default(),
        });
        let mut tasks = HashMap::new();
        for (id, raw) in ctx.cloud.task_records()? {
            let Ok(record) = serde_json::from_slice::<task::Record>(&raw) else {
                warn!(task = %id.fmt_short(), "unreadable offline task record; skipped");
                continue;
            };
            let task = Task::new(id, record);
            if !task.is_over() {
                info!(task = %id.fmt_short(), "continuing an offline task");
                tokio::spawn(run::run(task.clone(), ctx.clone()));
            }
            tasks.insert(id, task);
        }
        Ok(Arc::new(Self { ctx, tasks: Mutex::new(tasks), assists: Mutex::default() }))
    }

    /// Tasks per state, for metrics: a pass over the in-memory table (bounded per user by
    /// [`MAX_ACTIVE_PER_USER`] and [`MAX_KEPT_PER_USER`]), never the cloud index.
    pub(crate) fn state_counts(&self) -> [(&'static str, usize); 4] {
        let mut counts = [("fetching", 0), ("done", 0), ("failed", 0), ("cancelled", 0)];
        let tasks: Vec<Arc<Task>> = self.tasks().values().cloned().collect();
        for t in tasks {
            let i = match t.lock().record.stage {
                task::Stage::Fetching => 0,
                task::Stage::Done { .. } => 1,
                task::Stage::Failed { .. } => 2,
                task::Stage::Cancelled => 3,
            };
            counts[i].1 += 1;
        }
        counts
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a task for `user` (who must hold a grant here): `(task, instant)`.
    pub(crate) async fn add(
        &self,
        user: UserId,
        url: &str,
        name: &str,
    ) -> Result<(TaskId, bool), Refusal> {
        if self.ctx.quota(user).is_none() {
            return Err(refusal(
                RejectReason::Unauthorized,
                format!(
                    "user {user} has no space here: ask the storage operator for --grant {user}"
                ),
            ));
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            refusal(
                RejectReason::BadRequest,
                format!("bad URL {url:?}: {e} (give a full http:// or https:// URL)"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(refusal(
                RejectReason::BadRequest,
                format!("cannot fetch {url:?}: only http and https URLs"),
            ));
        }
        let name = if name.is_empty() { name_from_url(&parsed) } else { name.to_string() };
        // The name must be a manifest's: check it now, not after the fetch.
        Manifest::new(&name, 0, Vec::new())
            .map_err(|e| refusal(RejectReason::BadRequest, e.to_string()))?;
        self.forget_old(user).await;
        let id = TaskId(rand_bytes());
        let now = now_ms();
        let record = task::Record {
            user,
            url: url.to_string(),
            name: name.clone(),
            created_ms: now,
            stage: task::Stage::Fetching,
            resource: None,
            hashes: Vec::new(),
            restarts: 0,
        };
        let task = Task::new(id, record.clone());
        {
            // Counted and taken under one lock: concurrent adds cannot all pass the check.
            let mut tasks = self.tasks();
            let active = tasks.values().filter(|t| t.user() == user && !t.is_over()).count();
            if active >= MAX_ACTIVE_PER_USER {
                return Err(refusal(
                    RejectReason::Busy,
                    format!("you have {active} offline tasks underway, the most at once: wait for one to end"),
                ));
            }
            tasks.insert(id, task.clone());
        }
        let taken = async {
            self.ctx.cloud.add_temporary(user, &name, id, now).await.map_err(cloud_refusal)?;
            if let Some(content) = self.instant(user, url, &name, id).await {
                let record = task::Record { stage: task::Stage::Done { content }, ..record };
                self.ctx.save(id, &record).await.map_err(cloud_refusal)?;
                task.lock().record = record;
                task.log(TaskEvent::Done { content });
                info!(task = %id.fmt_short(), %content, "offline task done at once: storage holds the resource");
                return Ok(true);
            }
            self.ctx.save(id, &record).await.map_err(cloud_refusal)?;
            Ok(false)
        }
        .await;
        match taken {
            Ok(true) => Ok((id, true)),
            Ok(false) => {
                info!(task = %id.fmt_short(), url, "offline task added");
                tokio::spawn(run::run(task, self.ctx.clone()));
                Ok((id, false))
            }
            Err(r) => {
                self.tasks().remove(&id);
                let _ = self.ctx.cloud.remove_entry(user, &name, Some(id)).await;
                Err(r)
            }
        }
    }

    /// The content if storage holds what `url` gave before and the origin still reports the
    /// same resource; the entry is then committed at once.
    async fn instant(&self, user: UserId, url: &str, name: &str, id: TaskId) -> Option<ContentId> {
        let raw = self.ctx.cloud.resource_record(url).ok()??;
        let seen: Seen = serde_json::from_slice(&raw).ok()?;
        let held = self.ctx.cloud.content(seen.content).ok()??;
        if !held.is_complete() {
            return None;
        }
        // Only a resource with a validator can be known unchanged; the probe is bounded, as it
        // runs while the device waits for its answer.
        let v = &seen.resource.validators;
        if v.etag.is_none() && v.last_modified.is_none() {
            return None;
        }
        let probe = self.ctx.origin.probe(url);
        let now = tokio::time::timeout(INSTANT_PROBE, probe).await.ok()?.ok()?;
        if now.len != seen.resource.len || now.validators != seen.resource.validators {
            return None;
        }
        let quota = self.ctx.quota(user).flatten();
        let commit = Commit { task: id, content: seen.content, size: now.len, time_ms: now_ms() };
        match self.ctx.cloud.commit_entry(user, name, commit, quota).await {
            Ok(()) => Some(seen.content),
            Err(e) => {
                warn!(error = %e, "cannot commit an instant offline task; fetching it instead");
                None
            }
        }
    }

    /// Forgets the oldest finished tasks of `user` beyond [`MAX_KEPT_PER_USER`].
    async fn forget_old(&self, user: UserId) {
        let mut over: Vec<(u64, TaskId)> = self
            .tasks()
            .values()
            .filter(|t| t.user() == user && t.is_over())
            .map(|t| (t.lock().record.created_ms, t.id))
            .collect();
        if over.len() < MAX_KEPT_PER_USER {
            return;
        }
        over.sort();
        for (_, id) in over.iter().take(over.len() + 1 - MAX_KEPT_PER_USER) {
            self.tasks().remove(id);
            let _ = self.ctx.cloud.remove_task_record(*id).await;
        }
    }

    /// A task of `user`; another user's task is as unknown as a missing one.
    pub(crate) fn task(&self, user: UserId, id: TaskId) -> Result<Arc<Task>, Refusal> {
        match self.tasks().get(&id) {
            Some(t) if t.user() == user => Ok(t.clone()),
            _ => Err(refusal(
                RejectReason::NotFound,
                format!("no offline task {id} of yours here (see `shoal offline ls`)"),
            )),
        }
    }

    /// `user`'s tasks, newest first.
    pub(crate) fn list(&self, user: UserId) -> Vec<TaskInfo> {
        let mut tasks: Vec<(u64, TaskInfo)> = self
            .tasks()
            .values()
            .filter(|t| t.user() == user)
            .map(|t| {
                let created = t.lock().record.created_ms;
                (created, t.info())
            })
            .collect();
        tasks.sort_by_key(|t| std::cmp::Reverse(t.0));
        tasks.into_iter().map(|(_, t)| t).collect()
    }

    /// Cancels a task of `user`; one that ended already is left as it is.
    pub(crate) fn cancel(&self, user: UserId, id: TaskId) -> Result<(), Refusal> {
        let task = self.task(user, id)?;
        task.cancel.send_replace(true);
        Ok(())
    }

    pub(crate) fn ctx(&self) -> &Ctx {
        &self.ctx
    }
}

/// Events a watcher has not seen: the log from `seen` on, and the latest progress.
pub(crate) fn pending(task: &Task, seen: usize) -> (Vec<TaskEvent>, Option<TaskEvent>, bool) {
    let s = task.lock();
    let new = s.log.get(seen..).map(<[TaskEvent]>::to_vec).unwrap_or_default();
    let size = s.record.resource.as_ref().map_or(0, |r| r.len);
    let progress = (size > 0).then(|| TaskEvent::Progress { bytes: s.progress(), size });
    let over = s.record.stage != task::Stage::Fetching
        && s.log
            .last()
            .is_some_and(|e| matches!(e, TaskEvent::Done { .. } | TaskEvent::Failed { .. }));
    (new, progress, over)
}

fn cloud_refusal(e: CloudError) -> Refusal {
    let reason = match e {
        CloudError::EntryExists(_) | CloudError::SpaceFull { .. } => RejectReason::BadRequest,
        CloudError::QuotaExceeded { .. } => RejectReason::QuotaExceeded,
        _ => RejectReason::StorageError,
    };
    (reason, e.to_string())
}

/// A name for a URL's resource: its last path segment, else its host.
fn name_from_url(url: &url::Url) -> String {
    let last = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or("");
    let decoded = percent_decode(last);
    let clean: String = decoded.chars().filter(|c| *c != '/' && *c != '\0').collect();
    match clean.as_str() {
        "" | "." | ".." => url.host_str().unwrap_or("download").to_string(),
        _ => {
            // At most 200 bytes, cut at a character boundary (a name is at most 255 bytes).
            let mut end = clean.len().min(200);
            while !clean.is_char_boundary(end) {
                end -= 1;
            }
            clean[..end].to_string()
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    // The OS source cannot fail on Linux once the kernel's pool is ready (it is, at boot);
    // a fallback from the clock and a counter still gives unique ids within this process.
    if getrandom::getrandom(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_be_bytes());
        b[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_last_path_segment_or_the_host() {
        let n = |u: &str| name_from_url(&url::Url::parse(u).unwrap());
        assert_eq!(n("http://h/a/b/file.iso"), "file.iso");
        assert_eq!(n("http://h/a/my%20file.txt?x=1"), "my file.txt");
        assert_eq!(n("http://example.org/"), "example.org");
        assert_eq!(n("http://h/a/%2e%2e"), "h");
        assert_eq!(n("http://h/a/b%2Fc"), "bc");
        // Long non-ASCII names are cut to 200 bytes at a character boundary.
        let long = n(&format!("http://h/{}", "%C3%A9".repeat(300)));
        assert!(long.len() <= 200 && long.chars().all(|c| c == 'é'), "{}", long.len());
    }

    #[test]
    fn a_layout_groups_whole_pieces_into_segments() {
        // 10 MiB: 32 KiB pieces (320), 128 per 4 MiB segment: 3 segments, the last of 64.
        let l = segments::Layout::of(10 << 20);
        assert_eq!((l.piece, l.pieces, l.per_segment, l.segments()), (32 << 10, 320, 128, 3));
        assert_eq!(l.segment_pieces(2), 256..320);
        assert_eq!(l.bytes(&l.segment_pieces(2)), (8 << 20)..(10 << 20));
        // 1 byte: one piece, one segment of one byte.
        let l = segments::Layout::of(1);
        assert_eq!((l.pieces, l.segments()), (1, 1));
        assert_eq!(l.bytes(&l.segment_pieces(0)), 0..1);
        // 0 bytes: nothing to fetch.
        assert_eq!(segments::Layout::of(0).segments(), 0);
        // 100 GiB: 128 MiB... capped at 64 MiB pieces, one per segment.
        let l = segments::Layout::of(100 << 30);
        assert_eq!((l.piece, l.per_segment), (64 << 20, 1));
    }
}
