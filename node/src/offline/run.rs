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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_cloud::origin::{Origin, OriginError, Resource};
use shoal_cloud::spaces::Commit;
use shoal_cloud::{CloudError, CloudStore};
use shoal_core::offline::{resource_pieces, SegmentProof};
use shoal_core::piece::piece_log2_for;
use shoal_core::{Manifest, NodeId, PieceHash, PieceIndex};
use shoal_wire::offline::TaskEvent;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::task::{self, Stage, Task};
use super::{now_ms, Ctx};

/// Bytes per segment (whole pieces, at least one).
pub(crate) const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Other storage nodes a task's segments are split with, at most.
pub(crate) const MAX_HELPERS: usize = 3;
/// Segments fetched at once per task.
pub(crate) const PARALLEL: usize = 4;
// A segment's proof carries all its hashes in one frame.
const _: () = assert!(
    (SEGMENT_BYTES >> shoal_core::piece::MIN_PIECE_LOG2) as usize
        <= shoal_wire::offline::MAX_PROOF_HASHES
);
/// Bytes read at once when hashing a finished segment.
const HASH_CHUNK: u64 = 1024 * 1024;
/// How often watchers hear of progress while segments are underway.
const PROGRESS_TICK: Duration = Duration::from_millis(500);

/// The layout of a resource: piece size, piece count, pieces per segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) len: u64,
    pub(crate) piece: u64,
    pub(crate) pieces: u32,
    pub(crate) per_segment: u32,
}

impl Layout {
    pub(crate) fn of(len: u64) -> Self {
        let piece = 1u64 << piece_log2_for(len);
        let pieces = resource_pieces(len) as u32;
        let per_segment = (SEGMENT_BYTES / piece).max(1) as u32;
        Self { len, piece, pieces, per_segment }
    }

    pub(crate) fn segments(&self) -> u32 {
        self.pieces.div_ceil(self.per_segment)
    }

    /// Pieces of segment `s`.
    pub(crate) fn segment_pieces(&self, s: u32) -> std::ops::Range<u32> {
        let first = s * self.per_segment;
        first..(first + self.per_segment).min(self.pieces)
    }

    /// Byte range of pieces `r`.
    pub(crate) fn bytes(&self, r: &std::ops::Range<u32>) -> std::ops::Range<u64> {
        let start = u64::from(r.start) * self.piece;
        start..(u64::from(r.end) * self.piece).min(self.len)
    }
}

/// Why a task ended without its content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError {
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the resource changed at the origin {0} times while being fetched; try again later")]
    KeepsChanging(u32),
    #[error("{0}")]
    Refused(String),
}

/// Runs `task` to its end: done, failed or cancelled. Records and logs the outcome.
///
/// A cancel counts until the content is complete in the temporary area; from then on the task
/// finishes (storing the content and committing the entry are not interrupted halfway). A task
/// waits for one of the user's slots ([`super::MAX_RUNNING_PER_USER`]) and then one of the
/// node's, cancellable while it waits, and may run at most [`super::TASK_DEADLINE`].
pub(crate) async fn run(task: Arc<Task>, ctx: Arc<Ctx>) {
    let mut cancel = task.cancel.subscribe();
    let user = task.user();
    let fetched = tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => Err(None),
        r = async {
            let _mine = ctx.user_slots(user).acquire_owned().await;
            let _node = ctx.running.clone().acquire_owned().await;
            match tokio::time::timeout(super::TASK_DEADLINE, fetch(&task, &ctx)).await {
                Ok(r) => r.map(|(res, layout, part)| (res, layout, part, _mine, _node)),
                Err(_) => Err(TaskError::Refused(format!(
                    "the fetch took longer than {} hours; add the task again",
                    super::TASK_DEADLINE.as_secs() / 3600
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
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    f.set_len(res.len)?;
    Ok(f)
}

/// Byte counters a fetch keeps: bytes of segments underway (for progress), and bytes fetched
/// from the origin in all (the node's total).
#[derive(Debug, Clone, Default)]
pub(crate) struct Meters {
    pub(crate) inflight: Arc<AtomicU64>,
    pub(crate) fetched: Arc<AtomicU64>,
}

/// A finished segment: its first piece and the hashes of its pieces.
pub(crate) type Hashed = (u32, Vec<PieceHash>);

/// Fetches `todo` (segments) of `res` from the origin into `part`, [`PARALLEL`] at a time (one
/// stream of the whole resource without ranges), and sends each segment's hashes to `done`
/// as it finishes. Counts bytes as they arrive in `inflight` and `fetched` (the node's total). Cancel-safe: dropping it stops
/// the fetches (what was sent on `done` stays sent).
pub(crate) async fn fetch_some(
    origin: &Origin,
    res: &Resource,
    layout: Layout,
    part: &File,
    todo: Vec<u32>,
    meters: &Meters,
    done: &mpsc::Sender<Hashed>,
) -> Result<(), TaskError> {
    let Meters { inflight, fetched } = meters;
    let mut jobs = JoinSet::new();
    let groups: Vec<Vec<u32>> =
        if res.ranges { todo.iter().map(|&s| vec![s]).collect() } else { vec![todo] };
    let mut queue = groups.into_iter();
    loop {
        while jobs.len() < PARALLEL {
            let Some(group) = queue.next() else { break };
            let (origin, res, part) = (origin.clone(), res.clone(), part.try_clone()?);
            let (inflight, fetched) = (inflight.clone(), fetched.clone());
            jobs.spawn(async move {
                // Without ranges the only fetch is the whole resource (every segment is to do:
                // `open_part` never continues such a task).
                let bytes = match (group.first(), group.last()) {
                    _ if !res.ranges => 0..layout.len,
                    (Some(&a), Some(&b)) => {
                        layout.bytes(&layout.segment_pieces(a)).start
                            ..layout.bytes(&layout.segment_pieces(b)).end
                    }
                    _ => 0..0,
                };
                let mut sink = |offset: u64, chunk: &[u8]| {
                    inflight.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    fetched.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    part.write_all_at(chunk, offset)
                };
                origin.fetch_range(&res, bytes.start, bytes.end - bytes.start, &mut sink).await?;
                let hashed = tokio::task::spawn_blocking(move || hash_group(&part, layout, &group))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??;
                Ok::<_, TaskError>(hashed)
            });
        }
        let Some(joined) = jobs.join_next().await else { return Ok(()) };
        let hashed = joined.map_err(|e| std::io::Error::other(e.to_string()))??;
        for h in hashed {
            let bytes = layout.bytes(&(h.0..h.0 + h.1.len() as u32));
            let _ = inflight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes.end - bytes.start))
            });
            if done.send(h).await.is_err() {
                return Ok(());
            }
        }
    }
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

/// The BLAKE3 hash of bytes `r` of `file`, read `buf.len()` at a time.
pub(crate) fn hash_range(
    file: &File,
    r: std::ops::Range<u64>,
    buf: &mut [u8],
) -> std::io::Result<PieceHash> {
    let mut hasher = blake3::Hasher::new();
    let mut at = r.start;
    while at < r.end {
        let n = (r.end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(PieceHash::from(hasher.finalize()))
}

/// Hashes the pieces of each segment in `group` from the temporary file, reading at most
/// [`HASH_CHUNK`] at a time (a piece may be 64 MiB).
pub(crate) fn hash_group(
    part: &File,
    layout: Layout,
    group: &[u32],
) -> std::io::Result<Vec<(u32, Vec<PieceHash>)>> {
    let mut out = Vec::with_capacity(group.len());
    let mut buf = vec![0u8; HASH_CHUNK.min(layout.piece) as usize];
    for &s in group {
        let r = layout.segment_pieces(s);
        let mut hashes = Vec::with_capacity(r.len());
        for p in r.clone() {
            hashes.push(hash_range(part, layout.bytes(&(p..p + 1)), &mut buf)?);
        }
        out.push((r.start, hashes));
    }
    Ok(out)
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
    let seen = super::Seen { content: id, resource: res.clone() };
    let url = task.lock().record.url.clone();
    ctx.cloud
        .put_resource_record(&res_key(&url), &serde_json::to_vec(&seen).expect("serialises"))
        .await?;
    Ok(id)
}

/// The key a URL's last result is remembered under.
pub(crate) fn res_key(url: &str) -> String {
    url.to_string()
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

/// The path of a task's temporary file.
pub(crate) fn part_file(dir: &std::path::Path, task: shoal_core::TaskId) -> PathBuf {
    dir.join(format!("{task}.part"))
}

impl Ctx {
    /// A signed proof of pieces `first..` of `task`.
    pub(crate) fn prove(
        &self,
        task: shoal_core::TaskId,
        size: u64,
        first: u32,
        hashes: Vec<PieceHash>,
    ) -> SegmentProof {
        let first = PieceIndex(first);
        let signed = SegmentProof::signed_bytes(&task, size, first, &hashes);
        let sig = self.net.identity.sign(&signed);
        // An ed25519 signature is always 64 bytes.
        let signature = sig.try_into().unwrap_or([0; 64]);
        SegmentProof { task, size, first, hashes, signature }
    }
}
