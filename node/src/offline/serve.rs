//! The storage side of offline request streams: who asks (the connection's node, or the user
//! its device certificate names, if granted here), then the answer.
//!
//! Every request acts for a user granted space here; a user sees only its own tasks and
//! entries (another user's task is answered as unknown). A watch streams the task's log from
//! its start, then progress and new events as they come, until the task ends; each frame must
//! be taken within the serving side's write deadline. A task's piece is served from the
//! temporary file only once its segment was hashed, and checked against that hash first.

use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use shoal_core::{DeviceCert, NodeId, PieceIndex, TaskId, UserId};
use shoal_wire::offline::{EntryState, OfflineReply, OfflineRequest, SpaceEntry, TaskEvent};
use shoal_wire::RejectReason;

use super::piece::{send_checked, FilePiece};
use super::segments::Layout;
use super::{pending, Offline, Refusal};
use crate::io::{finish_within, write_frame_within};
use crate::io::{DRAIN_DEADLINE, WRITE_STALL};
use crate::upload::Uploads;

/// What serving offline requests uses of the node: its offline tasks (storage nodes only),
/// its upload slots and its upload limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) offline: Option<&'a Offline>,
    pub(crate) follows: &'a super::follows::Follows,
    /// The address the request came from (where a watching follower is pointed to).
    pub(crate) remote: std::net::SocketAddr,
    pub(crate) uploads: &'a std::sync::Arc<Uploads>,
    pub(crate) limit: &'a shoal_net::RateLimiter,
}

/// Followers of one task storage points others to, at most.
const MAX_WATCHERS: usize = 16;
/// How long after storage sent a piece to one follower it points others there (before, the
/// first may not have it verified yet).
const POINT_AFTER: Duration = Duration::from_millis(200);
/// How often a watch sends progress while nothing else happens.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The user a request acts for: the certificate's user if it is granted here and the
/// certificate verifies for `peer`, else `peer`'s own key. Refused if that user has no grant.
fn user_of(offline: &Offline, peer: NodeId, cert: Option<&DeviceCert>) -> Result<UserId, Refusal> {
    // The certificate first: a stranger's forged one must not learn who is granted here.
    if let Some(c) = cert {
        c.verify(&peer).map_err(|e| (RejectReason::Unauthorized, e.to_string()))?;
    }
    let user = cert.map_or(UserId::from(peer), |c| c.user);
    if offline.ctx().quota(user).is_none() {
        return Err((
            RejectReason::Unauthorized,
            format!("user {user} has no space here: ask the storage operator for --grant {user}"),
        ));
    }
    Ok(user)
}

async fn reply(send: &mut SendStream, r: &OfflineReply) -> anyhow::Result<()> {
    Ok(write_frame_within(send, r, WRITE_STALL).await?)
}

async fn refuse(mut send: SendStream, (reason, text): Refusal) -> anyhow::Result<()> {
    reply(&mut send, &OfflineReply::Reject { reason, text }).await?;
    finish_within(&mut send, DRAIN_DEADLINE).await
}

/// Answers one offline request on its stream. Not cancel-safe (a cancelled answer leaves the
/// stream half written; the caller drops it).
pub(crate) async fn serve_offline(
    parts: Parts<'_>,
    peer: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
    req: OfflineRequest,
) -> anyhow::Result<()> {
    let Some(offline) = parts.offline else {
        let _ = recv.stop(VarInt::from_u32(0));
        // A device following a task serves the user's other followers.
        if let OfflineRequest::Piece { task, piece, cert, .. } = &req {
            let served = super::follows::serve_piece(
                parts.uploads,
                parts.limit,
                parts.follows,
                peer,
                cert.as_ref(),
                *task,
                *piece,
                &mut send,
            );
            if let Some(r) = served.await {
                return r;
            }
        }
        let text = "this node is not a storage node: offline tasks go to storage";
        return refuse(send, (RejectReason::BadRequest, text.into())).await;
    };
    // Storage nodes among themselves: an assist, and the pieces of one (no user involved).
    if let OfflineRequest::Assist { .. } = req {
        return super::assist::serve_assist(offline.ctx(), &offline.assists, peer, send, recv, req)
            .await;
    }
    let _ = recv.stop(VarInt::from_u32(0));
    if let OfflineRequest::Piece { task, piece, .. } = &req {
        if let Some(r) = super::assist::serve_piece(
            parts.uploads,
            &offline.assists,
            peer,
            *task,
            *piece,
            &mut send,
        )
        .await
        {
            return r;
        }
    }
    let cert = match &req {
        OfflineRequest::Add { cert, .. }
        | OfflineRequest::Watch { cert, .. }
        | OfflineRequest::List { cert }
        | OfflineRequest::Cancel { cert, .. }
        | OfflineRequest::Space { cert }
        | OfflineRequest::SpaceRemove { cert, .. }
        | OfflineRequest::Piece { cert, .. } => cert.clone(),
        _ => return refuse(send, (RejectReason::BadRequest, "unknown request".into())).await,
    };
    let user = match user_of(offline, peer, cert.as_ref()) {
        Ok(u) => u,
        Err(r) => return refuse(send, r).await,
    };
    let answer = match req {
        OfflineRequest::Add { url, name, .. } => match offline.add(user, &url, &name).await {
            Ok((task, instant)) => OfflineReply::Accepted { task, instant },
            Err(r) => return refuse(send, r).await,
        },
        OfflineRequest::Watch { task, .. } => {
            return watch(offline, user, task, (peer, parts.remote), send).await
        }
        OfflineRequest::List { .. } => OfflineReply::Tasks(offline.list(user)),
        OfflineRequest::Cancel { task, .. } => match offline.cancel(user, task) {
            Ok(()) => OfflineReply::Done,
            Err(r) => return refuse(send, r).await,
        },
        OfflineRequest::Space { .. } => match space(offline, user) {
            Ok(e) => OfflineReply::Entries(e),
            Err(r) => return refuse(send, r).await,
        },
        OfflineRequest::SpaceRemove { name, .. } => {
            let cloud = &offline.ctx().cloud;
            match cloud.remove_entry(user, &name, None).await {
                Ok(Some(e)) => {
                    // What nobody owns any more is deleted: quotas bound the disk.
                    if let Some(content) = e.content {
                        if let Err(err) = cloud.delete_if_unowned(content).await {
                            tracing::warn!(%content, error = %err, "cannot delete a content nobody owns");
                        }
                    }
                    OfflineReply::Done
                }
                Ok(None) => {
                    let text =
                        format!("your space has no entry named {name:?} (see `shoal space ls`)");
                    return refuse(send, (RejectReason::NotFound, text)).await;
                }
                Err(e @ shoal_cloud::CloudError::Fetching(_)) => {
                    return refuse(send, (RejectReason::BadRequest, e.to_string())).await
                }
                Err(e) => return refuse(send, (RejectReason::StorageError, e.to_string())).await,
            }
        }
        OfflineRequest::Piece { task, piece, direct, .. } => {
            return task_piece(parts, offline, peer, user, (task, piece, direct), send).await
        }
        _ => return refuse(send, (RejectReason::BadRequest, "unknown request".into())).await,
    };
    reply(&mut send, &answer).await?;
    finish_within(&mut send, DRAIN_DEADLINE).await
}

fn space(offline: &Offline, user: UserId) -> Result<Vec<SpaceEntry>, Refusal> {
    let entries = offline
        .ctx()
        .cloud
        .entries(user)
        .map_err(|e| (RejectReason::StorageError, e.to_string()))?;
    Ok(entries
        .into_iter()
        .map(|(name, e)| SpaceEntry {
            name,
            content: e.content,
            size: e.size,
            state: if e.permanent { EntryState::Permanent } else { EntryState::Temporary },
            time_ms: e.time_ms,
        })
        .collect())
}

/// Streams a task's events until it ends.
async fn watch(
    offline: &Offline,
    user: UserId,
    id: TaskId,
    (peer, at): (NodeId, std::net::SocketAddr),
    mut send: SendStream,
) -> anyhow::Result<()> {
    let task = match offline.task(user, id) {
        Ok(t) => t,
        Err(r) => return refuse(send, r).await,
    };
    // A watcher is a follower others may be pointed to, for as long as it watches.
    // (Counted per node: the same node may watch on two streams.)
    struct Watching<'a>(&'a super::Task, NodeId);
    impl Drop for Watching<'_> {
        fn drop(&mut self) {
            let mut w = self.0.watchers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, n)) = w.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    w.remove(&self.1);
                }
            }
        }
    }
    let _watching = {
        let mut w = task.watchers.lock().unwrap_or_else(|p| p.into_inner());
        // An IPv4 peer seen on an IPv6 socket is dialed at its IPv4 address.
        let at = std::net::SocketAddr::new(at.ip().to_canonical(), at.port());
        if w.len() < MAX_WATCHERS || w.contains_key(&peer) {
            w.entry(peer).or_insert((at, 0)).1 += 1;
            Some(Watching(&task, peer))
        } else {
            None
        }
    };
    let mut changed = task.subscribe();
    let mut seen = 0;
    let mut last_progress = None;
    loop {
        let (new, progress, over) = pending(&task, seen);
        seen += new.len();
        for ev in new {
            reply(&mut send, &OfflineReply::Event(ev)).await?;
        }
        if over {
            return finish_within(&mut send, DRAIN_DEADLINE).await;
        }
        if let Some(p @ TaskEvent::Progress { .. }) = progress {
            if last_progress.as_ref() != Some(&p) {
                reply(&mut send, &OfflineReply::Event(p.clone())).await?;
                last_progress = Some(p);
            }
        }
        // Woken by a change, or at the latest to send progress.
        let _ = tokio::time::timeout(PROGRESS_EVERY, changed.changed()).await;
    }
}

/// Serves one piece of a task from its temporary file, checked against its hash first.
async fn task_piece(
    parts: Parts<'_>,
    offline: &Offline,
    peer: NodeId,
    user: UserId,
    (id, piece, direct): (TaskId, PieceIndex, bool),
    mut send: SendStream,
) -> anyhow::Result<()> {
    let task = match offline.task(user, id) {
        Ok(t) => t,
        Err(r) => return refuse(send, r).await,
    };
    let found = {
        let s = task.lock();
        s.record.resource.as_ref().and_then(|res| {
            // Only an index with a hash is in range, so `+ 1` cannot overflow.
            let hash = s.record.hashes.get(piece.0 as usize).copied().flatten()?;
            Some((hash, Layout::of(res.len).bytes(&(piece.0..piece.0 + 1))))
        })
    };
    let Some((hash, range)) = found else {
        let text = format!("piece {piece} of task {id} is not in storage yet (or the task ended)");
        return refuse(send, (RejectReason::NotFound, text)).await;
    };
    // Sent to another follower a moment ago, which still watches: take it from there.
    if !direct {
        let first = task.served.lock().unwrap_or_else(|p| p.into_inner()).get(&piece.0).copied();
        if let Some((node, _)) = first.filter(|(n, t)| *n != peer && t.elapsed() >= POINT_AFTER) {
            let at = task.watchers.lock().unwrap_or_else(|p| p.into_inner()).get(&node).copied();
            if let Some((addr, _)) = at {
                let r = shoal_wire::offline::PieceReply::Elsewhere { node, addr };
                write_frame_within(&mut send, &r, WRITE_STALL).await?;
                return finish_within(&mut send, DRAIN_DEADLINE).await;
            }
        }
    }
    let path = offline.ctx().part_path(id);
    let gone = format!("piece {piece} of task {id} is no longer in the temporary area");
    let piece_at = FilePiece { path, range, hash };
    let sent =
        send_checked(&mut send, parts.uploads, Some(parts.limit), peer, piece_at, &gone).await?;
    if sent > 0 {
        // Delivered (acknowledged): others may be pointed to this follower for it.
        task.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(piece.0)
            .or_insert((peer, std::time::Instant::now()));
    }
    Ok(())
}
