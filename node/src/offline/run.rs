//! Running one offline task on a storage node: find the resource, fetch its segments in
//! parallel into the temporary file, hash and sign each finished segment, then move the
//! content into the user's space.
//!
//! Segments are groups of whole pieces ([`SEGMENT_BYTES`], at least one piece), so a finished
//! segment's pieces can be hashed and proven at once. An origin without ranges is fetched as
//! one stream and every segment proven when it ends. A resource that changes at the origin
//! (new validators) voids every segment: the task starts over, at most
//! [`task::MAX_RESTARTS`] times. After a restart of the node, a task whose resource is
//! unchanged continues from the segments it had hashed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_cloud::origin::{OriginError, Resource};
use shoal_cloud::spaces::Commit;
use shoal_cloud::{CloudError, CloudStore};
use shoal_core::{Manifest, NodeId, PieceHash, PieceIndex};
use shoal_wire::offline::TaskEvent;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::ctx::{now_ms, Ctx, Seen, TASK_DEADLINE};
use super::segments::{fetch_some, Hashed, Layout, Meters, TaskError};
use super::task::{self, Stage, Task};

/// How often watchers hear of progress while segments are underway.
const PROGRESS_TICK: Duration = Duration::from_millis(500);

/// Runs `task` to its end: done, failed or cancelled. Records and logs the outcome.
///
/// A cancel counts until the content is complete in the temporary area; from then on the task
/// finishes (storing the content and committing the entry are not interrupted halfway). A task
/// waits for one of the user's slots ([`MAX_RUNNING_PER_USER`]) and then one of the
/// node's, cancellable while it waits, and may run at most [`TASK_DEADLINE`].
pub(crate) async fn run(task: Arc<Task>, ctx: Arc<Ctx>) {
    let mut cancel = task.cancel.subscribe();
    let user = task.user();
    let fetched = tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => Err(None),
        r = async {
            let _mine = ctx.user_slots(user).acquire_owned().await;
            let _node = ctx.running.clone().acquire_owned().await;
            match tokio::time::timeout(TASK_DEADLINE, fetch(&task, &ctx)).await {
                Ok(r) => r.map(|(res, layout, part)| (res, layout, part, _mine, _node)),
                Err(_) => Err(TaskError::Refused(format!(
                    "the fetch took longer than {} hours; add the task again",
                    TASK_DEADLINE.as_secs() / 3600
                ))),
            }
        } => r.map_err(Some),
    };
    let outcome = match fetched {
        Ok((res, layout, part, _mine, _node)) => {
            finish(&task, &ctx, &res, layout, &part).await.map_err(Some)
        }
        Err(e) => Err(e),
    };
    let (user, name) = {
        let s = task.lock();
        (s.record.user, s.record.name.clone())
    };
    let stage = match outcome {
        Ok(content) => {
            info!(task = %task.id.fmt_short(), %content, "offline task done");
            Stage::Done { content }
        }
        Err(e) => {
            if let Err(e) = ctx.cloud.remove_entry(user, &name, Some(task.id)).await {
                warn!(task = %task.id.fmt_short(), error = %e, "cannot remove a temporary entry");
            }
            match e {
                None => Stage::Cancelled,
                Some(e) => {
                    warn!(task = %task.id.fmt_short(), error = %e, "offline task failed");
                    Stage::Failed { reason: e.to_string() }
                }
            }
        }
    };
    let _ = std::fs::remove_file(ctx.part_path(task.id));
    ctx.release(task.id);
    task.served.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let event = match &stage {
        Stage::Done { content } => TaskEvent::Done { content: *content },
        Stage::Failed { reason } => TaskEvent::Failed { reason: reason.clone() },
        _ => TaskEvent::Failed { reason: "cancelled".into() },
    };
    let record = {
        let mut s = task.lock();
        s.record.stage = stage;
        s.record.hashes = Vec::new();
        s.record.clone()
    };
    if let Err(e) = ctx.save(task.id, &record).await {
        warn!(task = %task.id.fmt_short(), error = %e, "cannot record an offline task's end");
    }
    task.log(event);
}

/// Fetches the resource into the temporary file: every piece hashed and proven.
async fn fetch(task: &Arc<Task>, ctx: &Ctx) -> Result<(Resource, Layout, File), TaskError> {
    let url = task.lock().record.url.clone();
    loop {
        let res = ctx.origin.probe(&url).await?;
        let layout = Layout::of(res.len);
        let part = open_part(task, ctx, &res, layout)?;
        let record = task.lock().record.clone();
        ctx.save(task.id, &record).await?;
        task.log(TaskEvent::Accepted { size: res.len });
        let (user, name) = {
            let s = task.lock();
            (s.record.user, s.record.name.clone())
        };
        ctx.cloud.set_temporary_size(user, &name, task.id, res.len)?;
        // Refuse early what could not be kept (the quota is charged only at the end), counting
        // the temporary data of the user's other tasks: a user's temporary area is bounded by
        // its quota too.
        ctx.reserve(task.id, user, res.len)?;
        // Segments hashed before a restart of the node are proven again to new watchers.
        for s in 0..layout.segments() {
            let r = layout.segment_pieces(s);
            let done: Option<Vec<PieceHash>> = task.lock().record.hashes
                [r.start as usize..r.end as usize]
                .iter()
                .copied()
                .collect();
            if let Some(hashes) = done {
                task.lock().bytes += layout.bytes(&r).end - layout.bytes(&r).start;
                task.log(TaskEvent::Segment(ctx.prove(task.id, res.len, r.start, hashes)));
            }
        }
        match fetch_segments(task, ctx, &res, layout, &part).await {
            Ok(()) => return Ok((res, layout, part)),
            Err(TaskError::Origin(OriginError::Changed { what })) => {
                let restarts = {
                    let mut s = task.lock();
                    s.record.restarts += 1;
                    s.record.resource = None;
                    s.bytes = 0;
                    s.record.restarts
                };
                if restarts > task::MAX_RESTARTS {
                    return Err(TaskError::KeepsChanging(restarts - 1));
                }
                warn!(task = %task.id.fmt_short(), %what, "resource changed at the origin; starting over");
                task.log(TaskEvent::Restarted {
                    reason: format!("the resource changed at the origin ({what})"),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens the temporary file for `res`: the existing one if the record is of the same resource
/// (continuing from its hashed segments), else a fresh one of the resource's length.
fn open_part(task: &Task, ctx: &Ctx, res: &Resource, layout: Layout) -> Result<File, TaskError> {
    let path = ctx.part_path(task.id);
    let mut s = task.lock();
    // Without ranges the resource comes as one stream from its start: nothing to continue.
    let same = res.ranges
        && s.record.resource.as_ref().is_some_and(|old| {
            old.len == res.len && old.validators == res.validators && old.url == res.url
        })
        && s.record.hashes.len() == layout.pieces as usize;
    if same {
        if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            if f.metadata()?.len() == res.len {
                return Ok(f);
            }
        }
    }
    s.record.resource = Some(res.clone());
    s.record.hashes = vec![None; layout.pieces as usize];
    s.bytes = 0;
    // Which follower holds what of an earlier version no longer matters.
    task.served.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    f.set_len(res.len)?;
    Ok(f)
}

/// Who fetches what of a task: the home (this node) and its helpers.
enum Worker {
    Home,
    /// A helper and its share.
    Helper(NodeId, Vec<u32>),
}

/// Fetches every segment not hashed yet, hashing, recording and proving each as it finishes.
/// With ranges and other storage nodes about, the segments are split among this node and up
/// to [`MAX_HELPERS`] helpers (one share each, round robin); what a failing helper left is
/// fetched here after.
async fn fetch_segments(
    task: &Arc<Task>,
    ctx: &Ctx,
    res: &Resource,
    layout: Layout,
    part: &File,
) -> Result<(), TaskError> {
    let todo = |task: &Task| -> Vec<u32> {
        let s = task.lock();
        (0..layout.segments())
            .filter(|&seg| {
                let r = layout.segment_pieces(seg);
                s.record.hashes[r.start as usize..r.end as usize].iter().any(Option::is_none)
            })
            .collect()
    };
    let first = todo(task);
    if first.is_empty() {
        return Ok(());
    }
    let mut helpers = if res.ranges && first.len() > 1 && super::assist::fits_a_frame(res) {
        super::assist::helpers(ctx).await
    } else {
        Vec::new()
    };
    // Every helper gets at least one segment, and the home one too.
    helpers.truncate(first.len() - 1);
    let shares = helpers.len() + 1;
    // Bytes arrived in segments underway here, for progress.
    let meters = Meters { inflight: Arc::default(), fetched: ctx.origin_bytes.clone() };
    let (tx, mut rx) = mpsc::channel::<Hashed>(64);
    let mut workers: JoinSet<(Worker, Result<(), TaskError>)> = JoinSet::new();
    let mine: Vec<u32> = first.iter().copied().step_by(shares).collect();
    let spawn_home = |workers: &mut JoinSet<_>, segs: Vec<u32>| -> Result<(), TaskError> {
        let (origin, res, part) = (ctx.origin.clone(), res.clone(), part.try_clone()?);
        let (meters, tx) = (meters.clone(), tx.clone());
        workers.spawn(async move {
            let r = fetch_some(&origin, &res, layout, &part, segs, &meters, &tx).await;
            (Worker::Home, r)
        });
        Ok(())
    };
    spawn_home(&mut workers, mine)?;
    for (i, helper) in helpers.into_iter().enumerate() {
        let share: Vec<u32> = first.iter().copied().skip(i + 1).step_by(shares).collect();
        let job = super::assist::Job {
            net: ctx.net.clone(),
            helper: helper.clone(),
            task: task.id,
            res: res.clone(),
            layout,
            part: part.try_clone()?,
            share,
        };
        let (tx, shared) = (tx.clone(), job.share.clone());
        workers.spawn(async move {
            let id = helper.node_id;
            let r = job.run(&tx).await.map_err(|e| match e.downcast::<super::assist::Changed>() {
                Ok(c) => TaskError::Origin(OriginError::Changed { what: c.0 }),
                Err(e) => TaskError::Refused(format!("{e:#}")),
            });
            (Worker::Helper(id, shared), r)
        });
    }
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    loop {
        tokio::select! {
            Some(hashed) = rx.recv() => record(task, ctx, res, layout, hashed).await?,
            Some(joined) = workers.join_next(), if !workers.is_empty() => {
                match joined.map_err(|e| std::io::Error::other(e.to_string()))? {
                    (Worker::Home, r) => r?,
                    (Worker::Helper(_, _), Err(e @ TaskError::Origin(OriginError::Changed { .. }))) => {
                        return Err(e);
                    }
                    (Worker::Helper(id, share), Err(e)) => {
                        warn!(helper = %id.fmt_short(), error = %e, "a helper failed; fetching its share here");
                        // At once, not after the others: what it delivered is recorded first.
                        while let Ok(hashed) = rx.try_recv() {
                            record(task, ctx, res, layout, hashed).await?;
                        }
                        let left: Vec<u32> = {
                            let pending = todo(task);
                            share.into_iter().filter(|seg| pending.contains(seg)).collect()
                        };
                        if !left.is_empty() {
                            spawn_home(&mut workers, left)?;
                        }
                    }
                    (Worker::Helper(_, _), Ok(())) => {}
                }
                if workers.is_empty() {
                    // Everything sent is recorded before deciding what is left.
                    while let Ok(hashed) = rx.try_recv() {
                        record(task, ctx, res, layout, hashed).await?;
                    }
                    let left = todo(task);
                    if left.is_empty() {
                        return Ok(());
                    }
                    spawn_home(&mut workers, left)?;
                }
            }
            _ = tick.tick() => {
                task.lock().inflight = meters.inflight.load(Ordering::Relaxed);
                task.poke();
            }
        }
    }
}

/// Records a finished segment's hashes (durably), and proves it to watchers.
async fn record(
    task: &Arc<Task>,
    ctx: &Ctx,
    res: &Resource,
    layout: Layout,
    (first, hashes): Hashed,
) -> Result<(), TaskError> {
    let record = {
        let mut s = task.lock();
        for (i, h) in hashes.iter().enumerate() {
            s.record.hashes[first as usize + i] = Some(*h);
        }
        let r = layout.bytes(&(first..first + hashes.len() as u32));
        s.bytes += r.end - r.start;
        s.record.clone()
    };
    ctx.save(task.id, &record).await?;
    task.log(TaskEvent::Segment(ctx.prove(task.id, res.len, first, hashes)));
    Ok(())
}

/// Builds the manifest from the hashes, stores the content and turns the entry permanent.
async fn finish(
    task: &Arc<Task>,
    ctx: &Ctx,
    res: &Resource,
    layout: Layout,
    part: &File,
) -> Result<shoal_core::ContentId, TaskError> {
    let (user, name, hashes) = {
        let s = task.lock();
        let hashes: Option<Vec<PieceHash>> = s.record.hashes.iter().copied().collect();
        (s.record.user, s.record.name.clone(), hashes)
    };
    let hashes =
        hashes.ok_or_else(|| TaskError::Refused("a segment is missing its hashes".into()))?;
    let m = Manifest::new(&name, res.len, hashes)
        .map_err(|e| TaskError::Refused(format!("cannot build the manifest: {e}")))?;
    let id = m.content_id();
    store_content(&ctx.cloud, &m, part, layout).await?;
    let commit = Commit { task: task.id, content: id, size: res.len, time_ms: now_ms() };
    if let Err(e) = ctx.cloud.commit_entry(user, &name, commit, ctx.quota(user).flatten()).await {
        // Stored but not charged to anyone: not kept.
        if let Err(d) = ctx.cloud.delete_if_unowned(id).await {
            warn!(content = %id, error = %d, "cannot delete an uncommitted content");
        }
        return Err(e.into());
    }
    let seen = Seen { content: id, resource: res.clone() };
    let url = task.lock().record.url.clone();
    ctx.cloud.put_resource_record(&url, &serde_json::to_vec(&seen).expect("serialises")).await?;
    Ok(id)
}

/// Writes the manifest and every piece (each checked against the manifest) into the store.
async fn store_content(
    cloud: &CloudStore,
    m: &Manifest,
    part: &File,
    layout: Layout,
) -> Result<(), TaskError> {
    cloud.put_manifest(&m.encode()).await?;
    let id = m.content_id();
    for p in 0..layout.pieces {
        let b = layout.bytes(&(p..p + 1));
        let part = part.try_clone()?;
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; (b.end - b.start) as usize];
            part.read_exact_at(&mut buf, b.start).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        match cloud.put_piece(id, PieceIndex(p), data).await {
            Ok(_) => {}
            Err(CloudError::BadPiece(_)) => {
                return Err(TaskError::Refused(format!(
                    "piece {p} changed in the temporary area since it was hashed (disk fault?); add the task again"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
