//! Splitting a task's segments among storage nodes: the home (the storage node that took the
//! task) asks up to [`MAX_HELPERS`] other storage nodes its tracker lists to fetch a share
//! each from the origin; it pulls each proven segment's pieces from the helper, checks them
//! against the helper's signed hashes, and records them as its own.
//!
//! The helper side: a helper accepts an `Assist` only from a node its tracker lists as
//! storage, runs at most [`MAX_ASSISTS`] at once, fetches its share into a temporary file
//! (bounded like any task: the origin's size limit, the task deadline), streams a proof per
//! segment, and serves those pieces to the home alone. It drops the file when the home
//! finishes its side of the stream, or the connection ends.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use quinn::{RecvStream, SendStream};
use shoal_cloud::origin::{Resource, Validators};
use shoal_core::{Bitfield, NodeId, PeerAddr, PieceHash, PieceIndex, TaskId};
use shoal_wire::offline::{OfflineReply, OfflineRequest, TaskEvent, MAX_REPLY_LEN};
use shoal_wire::tracker::StorageNode;
use shoal_wire::{Decoder, RejectReason};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::ctx::Ctx;
use super::piece::{refuse, send_checked, FilePiece};
use super::segments::{self, fetch_some, Hashed, Layout};
use crate::io::{finish_within, read_frame, write_frame, write_frame_within};
use crate::io::{DRAIN_DEADLINE, WRITE_STALL};
use crate::net::Net;

/// Other storage nodes a task's segments are split with, at most.
pub(crate) const MAX_HELPERS: usize = 3;
/// How long the tracker's list of storage nodes is reused for.
const STORAGE_LIST_AGE: Duration = Duration::from_secs(30);
/// Assists a storage node runs at once for others.
pub(crate) const MAX_ASSISTS: usize = 8;
/// How long a home waits for a helper's next proof (a slow origin's 4 MiB segment included).
const PROOF_IDLE: Duration = Duration::from_secs(120);
/// How long a home waits for one piece pulled from a helper.
const PULL_DEADLINE: Duration = Duration::from_secs(60);
/// How long a helper keeps its share after its last proof, for the home to pull it.
const LINGER: Duration = Duration::from_secs(600);

/// A helper reported that the resource changed at the origin: the task starts over.
#[derive(Debug, thiserror::Error)]
#[error("the resource changed at the origin (seen by a helper): {0}")]
pub(crate) struct Changed(pub(crate) String);

/// The reason a helper gives when the origin's resource changed.
const CHANGED: &str = "changed: ";

/// Whether the resource's URL and validators fit an `Assist` frame whole (else no helpers:
/// the frame would cut them and a helper would fetch something else).
pub(crate) fn fits_a_frame(res: &Resource) -> bool {
    use shoal_wire::offline::{MAX_URL_LEN, MAX_VALIDATOR_LEN};
    let v = &res.validators;
    res.url.as_str().len() <= MAX_URL_LEN
        && v.etag.as_ref().is_none_or(|e| e.len() <= MAX_VALIDATOR_LEN)
        && v.last_modified.as_ref().is_none_or(|l| l.len() <= MAX_VALIDATOR_LEN)
}

/// The storage nodes this node's tracker lists, least loaded first, without this node.
pub(crate) async fn storage_nodes(ctx: &Ctx) -> anyhow::Result<Vec<StorageNode>> {
    // A fresh enough list is reused: an assist from a stranger costs no tracker request.
    let cached = ctx.storage_list.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some((_, nodes)) = cached.filter(|(at, _)| at.elapsed() < STORAGE_LIST_AGE) {
        return Ok(nodes);
    }
    let me = ctx.net.node_id();
    let nodes: Vec<StorageNode> = ctx
        .trackers
        .storage_nodes("assisting")
        .await?
        .into_iter()
        .filter(|n| n.node_id != me)
        .collect();
    *ctx.storage_list.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((std::time::Instant::now(), nodes.clone()));
    Ok(nodes)
}

/// The helpers for a task: up to [`MAX_HELPERS`] storage nodes (none without a tracker).
pub(crate) async fn helpers(ctx: &Ctx) -> Vec<StorageNode> {
    match storage_nodes(ctx).await {
        Ok(mut nodes) => {
            nodes.truncate(MAX_HELPERS);
            nodes
        }
        Err(e) => {
            debug!(error = %format!("{e:#}"), "no helpers for an offline task");
            Vec::new()
        }
    }
}

/// The home's side of one helper's share.
pub(crate) struct Job {
    pub(crate) net: Arc<Net>,
    pub(crate) helper: StorageNode,
    pub(crate) task: TaskId,
    pub(crate) res: Resource,
    pub(crate) layout: Layout,
    pub(crate) part: File,
    pub(crate) share: Vec<u32>,
}

impl Job {
    /// Asks the helper for its share and moves each proven segment into `part`, sending its
    /// hashes to `done`. Fails (leaving the rest of the share to the home) if the helper
    /// refuses, fails, stops early or sends anything that does not check out. Cancel-safe.
    pub(crate) async fn run(self, done: &mpsc::Sender<Hashed>) -> anyhow::Result<()> {
        let id = self.helper.node_id;
        let peer = PeerAddr { node_id: Some(id), addr: self.helper.addrs[0] };
        let (conn, _) = self.net.endpoint.connect(&peer, shoal_wire::ALPN).await?;
        let mut segments = Bitfield::new(self.layout.segments());
        for &s in &self.share {
            segments.set(PieceIndex(s));
        }
        let req = OfflineRequest::Assist {
            task: self.task,
            size: self.res.len,
            url: self.res.url.to_string(),
            etag: self.res.validators.etag.clone(),
            last_modified: self.res.validators.last_modified.clone(),
            segments,
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &req).await?;
        let mut left: std::collections::HashSet<u32> = self.share.iter().copied().collect();
        let mut dec = Decoder::with_limit(MAX_REPLY_LEN);
        let result = 'proofs: loop {
            let next =
                tokio::time::timeout(PROOF_IDLE, read_frame::<OfflineReply>(&mut recv, &mut dec));
            let Ok(next) = next.await else {
                break Err(anyhow!("helper sent nothing for {PROOF_IDLE:?}"));
            };
            match next? {
                Some(OfflineReply::Event(TaskEvent::Segment(proof))) => {
                    if proof.task != self.task || proof.size != self.res.len {
                        break Err(anyhow!("helper proved another task"));
                    }
                    proof.verify(&id).map_err(|e| anyhow!("{e}"))?;
                    let seg = proof.first.0 / self.layout.per_segment;
                    let pieces = self.layout.segment_pieces(seg);
                    if proof.first.0 != pieces.start
                        || proof.hashes.len() != pieces.len()
                        || !left.remove(&seg)
                    {
                        break Err(anyhow!("helper proved segment {seg}, not one of its share"));
                    }
                    for (i, hash) in proof.hashes.iter().enumerate() {
                        let p = pieces.start + i as u32;
                        let range = self.layout.bytes(&(p..p + 1));
                        let pulled = pull(&conn, self.task, p, range.end - range.start);
                        let data =
                            tokio::time::timeout(PULL_DEADLINE, pulled).await.map_err(|_| {
                                anyhow!("helper took over {PULL_DEADLINE:?} for piece {p}")
                            })??;
                        if shoal_core::PieceHash::of(&data) != *hash {
                            break 'proofs Err(anyhow!(
                                "helper's piece {p} does not match its proof"
                            ));
                        }
                        let part = self.part.try_clone()?;
                        tokio::task::spawn_blocking(move || part.write_all_at(&data, range.start))
                            .await??;
                    }
                    if done.send((pieces.start, proof.hashes)).await.is_err() {
                        break Ok(());
                    }
                }
                Some(OfflineReply::Event(TaskEvent::Failed { reason })) => {
                    match reason.strip_prefix(CHANGED) {
                        Some(what) => break Err(Changed(what.to_string()).into()),
                        None => break Err(anyhow!("helper failed: {reason}")),
                    }
                }
                Some(OfflineReply::Reject { text, .. }) => {
                    break Err(anyhow!("helper refused: {text}"))
                }
                Some(other) => break Err(anyhow!("unexpected answer {other:?}")),
                None if left.is_empty() => break Ok(()),
                None => break Err(anyhow!("helper stopped with {} segments to go", left.len())),
            }
        };
        // Done with the helper: it drops its temporary file.
        let _ = send.finish();
        conn.close(0u32.into(), b"done");
        result
    }
}

/// One piece of a helper's share.
async fn pull(
    conn: &quinn::Connection,
    task: TaskId,
    piece: u32,
    len: u64,
) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(
        &mut send,
        &OfflineRequest::Piece { cert: None, task, piece: PieceIndex(piece), direct: true },
    )
    .await?;
    send.finish()?;
    let mut dec = Decoder::new();
    let data = super::client::read_raw(&mut recv, &mut dec, len)
        .await
        .with_context(|| format!("piece {piece}"))?;
    if data.len() as u64 != len {
        bail!("helper sent piece {piece} of {} bytes, not {len}", data.len());
    }
    Ok(data)
}

/// An assist this node runs for a home.
#[derive(Debug)]
pub(crate) struct Assist {
    layout: Layout,
    /// Hashes of the pieces fetched and proven so far. Held only for access.
    hashes: Mutex<Vec<Option<PieceHash>>>,
    path: std::path::PathBuf,
}

/// The assists a node runs, by home and task. Held only for map access.
pub(crate) type Assists = Mutex<HashMap<(NodeId, TaskId), Arc<Assist>>>;

/// Drops an assist's entry and file when its serving ends, however it ends.
struct Cleanup<'a> {
    assists: &'a Assists,
    key: (NodeId, TaskId),
    path: std::path::PathBuf,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.assists.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes helper files a crash left behind (a restarted node has no assist underway).
pub(crate) fn remove_leftovers(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("assist-") && name.ends_with(".part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Serves an `Assist` request: checks the home is storage, fetches the share, streams proofs,
/// then waits for the home to finish. Not cancel-safe.
pub(crate) async fn serve_assist(
    ctx: &Ctx,
    assists: &Assists,
    home: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
    req: OfflineRequest,
) -> anyhow::Result<()> {
    let OfflineRequest::Assist { task, size, url, etag, last_modified, segments } = req else {
        bail!("not an assist");
    };
    let refuse = |reason, text: String| OfflineReply::Reject { reason, text };
    let layout = Layout::of(size);
    let url = url::Url::parse(&url).ok();
    // The cheap checks first, then the tracker's word that the home is storage.
    let reply = if segments.len() != layout.segments() || segments.count() == 0 {
        Some(refuse(RejectReason::BadRequest, "the share does not fit the size".into()))
    } else if size > ctx.origin_max_size {
        Some(refuse(
            RejectReason::BadRequest,
            "the resource is larger than this node fetches".into(),
        ))
    } else if url.is_none() {
        Some(refuse(RejectReason::BadRequest, "bad URL".into()))
    } else if assists.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_ASSISTS {
        Some(refuse(RejectReason::Busy, "this storage node assists enough tasks now".into()))
    } else if !storage_nodes(ctx).await.is_ok_and(|n| n.iter().any(|s| s.node_id == home)) {
        Some(refuse(
            RejectReason::Unauthorized,
            "assists are for storage nodes of this tracker".into(),
        ))
    } else {
        None
    };
    let (Some(url), None) = (url, &reply) else {
        let r = reply.unwrap_or_else(|| refuse(RejectReason::BadRequest, "bad URL".into()));
        write_frame_within(&mut send, &r, WRITE_STALL).await?;
        return finish_within(&mut send, DRAIN_DEADLINE).await;
    };
    let path = ctx.dir.join(format!("assist-{task}-{}.part", home.fmt_short()));
    let assist = Arc::new(Assist {
        layout,
        hashes: Mutex::new(vec![None; layout.pieces as usize]),
        path: path.clone(),
    });
    let key = (home, task);
    let taken = {
        let mut assists = assists.lock().unwrap_or_else(|p| p.into_inner());
        let free = assists.len() < MAX_ASSISTS && !assists.contains_key(&key);
        if free {
            assists.insert(key, assist.clone());
        }
        free
    };
    if !taken {
        let r = refuse(RejectReason::Busy, "this storage node assists enough tasks now".into());
        write_frame_within(&mut send, &r, WRITE_STALL).await?;
        return finish_within(&mut send, DRAIN_DEADLINE).await;
    }
    // Whatever ends this assist (a panic included) drops its entry and its file.
    let _cleanup = Cleanup { assists, key, path: path.clone() };
    info!(%task, home = %home.fmt_short(), "assisting an offline task");
    let result = async {
        let part = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        part.set_len(size)?;
        let res = Resource { url, len: size, validators: Validators { etag, last_modified }, ranges: true };
        let share: Vec<u32> = segments.iter_ones().map(|p| p.0).collect();
        let (tx, mut rx) = mpsc::channel::<Hashed>(16);
        let meters = segments::Meters { inflight: Arc::default(), fetched: ctx.origin_bytes.clone() };
        let fetch = fetch_some(&ctx.origin, &res, layout, &part, share, &meters, &tx);
        tokio::pin!(fetch);
        let mut fetched = false;
        loop {
            tokio::select! {
                r = &mut fetch, if !fetched => {
                    r?;
                    fetched = true;
                }
                Some((first, hashes)) = rx.recv() => {
                    {
                        let mut h = assist.hashes.lock().unwrap_or_else(|p| p.into_inner());
                        for (i, x) in hashes.iter().enumerate() {
                            h[first as usize + i] = Some(*x);
                        }
                    }
                    let proof = ctx.prove(task, size, first, hashes);
                    write_frame_within(&mut send, &OfflineReply::Event(TaskEvent::Segment(proof)), WRITE_STALL).await?;
                }
                else => break,
            }
            if fetched && rx.is_empty() {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        let reason = match e.downcast_ref::<segments::TaskError>() {
            Some(segments::TaskError::Origin(shoal_cloud::origin::OriginError::Changed {
                what,
            })) => {
                format!("{CHANGED}{what}")
            }
            _ => format!("{e:#}"),
        };
        let failed = OfflineReply::Event(TaskEvent::Failed { reason });
        let _ = write_frame_within(&mut send, &failed, WRITE_STALL).await;
    }
    let _ = send.finish();
    // The home pulls the pieces, then finishes its side (or goes away): until then they stay,
    // [`LINGER`] at most.
    let _ = tokio::time::timeout(LINGER, recv.read_to_end(64)).await;
    result
}

/// Serves a piece of an assist to its home (within the node's upload slots); `None` if `task`
/// is no assist of `peer`'s.
pub(crate) async fn serve_piece(
    uploads: &Arc<crate::upload::Uploads>,
    assists: &Assists,
    peer: NodeId,
    task: TaskId,
    piece: PieceIndex,
    send: &mut SendStream,
) -> Option<anyhow::Result<()>> {
    let assist = assists.lock().unwrap_or_else(|p| p.into_inner()).get(&(peer, task)).cloned()?;
    let hash = assist
        .hashes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(piece.0 as usize)
        .copied()
        .flatten();
    Some(
        async {
            let Some(hash) = hash else {
                return refuse(send, RejectReason::NotFound, "piece not proven yet").await;
            };
            let range = assist.layout.bytes(&(piece.0..piece.0 + 1));
            let at = FilePiece { path: assist.path.clone(), range, hash };
            send_checked(send, uploads, None, peer, at, "piece changed here").await.map(|_| ())
        }
        .await,
    )
}
