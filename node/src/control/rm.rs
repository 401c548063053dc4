//! `POST /v1/rm` (`shoal rm CONTENT [--delete]`): stop holding and seeding a content.
//!
//! The content leaves the store's index first (so nothing more of it is served), then the
//! node's tracker is told (`Forget`), so lookups stop listing this node for it. Files are left
//! where they are unless `delete` is set, and even then only what this node wrote is
//! deleted: a partial download, or a finished one whose file is unchanged since. A file added
//! in place (`shoal add` never copies) is the user's own and is always kept, and the reply
//! says so.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shoal_control::jobs::{KeptFile, RmBody, RmReply};
use shoal_core::ContentId;
use shoal_store::{Removal, Source, Store};
use shoal_wire::tracker::{TrackerRequest, TrackerResponse};

use super::{internal, Api, ApiError};
use crate::node::Node;

/// The shortest content id prefix taken.
const MIN_PREFIX: usize = 8;
/// How long `rm` waits for the tracker to take the `Forget`.
const TRACKER_WAIT: Duration = Duration::from_secs(5);

fn refuse(status: StatusCode, why: String) -> ApiError {
    ApiError(status, why)
}

/// The content a full id or a unique prefix names, among those the node holds.
fn resolve(node: &Node, given: &str) -> Result<ContentId, ApiError> {
    pick(given, || node.contents.content_ids().map_err(internal))
}

/// The content a full id (held or not) or a unique prefix of at least [`MIN_PREFIX`]
/// characters names among `held()`.
fn pick(
    given: &str,
    held: impl FnOnce() -> Result<Vec<ContentId>, ApiError>,
) -> Result<ContentId, ApiError> {
    let given = given.trim();
    let not_held = || {
        refuse(
            StatusCode::NOT_FOUND,
            format!("content {given} is not held by this node: `shoal ls` lists what it holds"),
        )
    };
    if let Ok(id) = given.parse::<ContentId>() {
        return Ok(id);
    }
    if given.len() < MIN_PREFIX {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{given:?} is not a content id: give the id `shoal ls` prints (or its first \
                 {MIN_PREFIX} characters or more)"
            ),
        ));
    }
    let ids = held()?;
    let mut found = ids.into_iter().filter(|id| id.to_string().starts_with(given));
    match (found.next(), found.next()) {
        (Some(id), None) => Ok(id),
        (Some(_), Some(_)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("{given} names several contents: give more of the id"),
        )),
        (None, _) => Err(not_held()),
    }
}

fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec())
}

fn kept(path: &Path, why: &str) -> KeptFile {
    KeptFile { path: path.display().to_string(), why: why.to_string() }
}

/// Forgets `id` in the store, then deletes (with `delete`) what this node wrote for it.
/// Blocking.
fn remove(store: &Store, id: ContentId, delete: bool) -> Result<RmReply, ApiError> {
    // The record acted on is the one removed, read in the same step (a fetch that finished
    // meanwhile has its file recorded, not its partial one).
    let rec = match store.remove_if_idle(id, |_| true).map_err(|e| internal(e.into()))? {
        Removal::Removed(rec) => rec,
        Removal::NotHeld | Removal::Kept(_) => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("content {id} is not held by this node: `shoal ls` lists what it holds"),
            ))
        }
        Removal::Downloading => {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("content {id} is being fetched (it began just now): stop it first"),
            ))
        }
    };
    let mut reply = RmReply {
        content_id: id.to_string(),
        name: rec.name,
        deleted: Vec::new(),
        kept: Vec::new(),
        tracker_told: false,
    };
    let mut delete_file = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => reply.deleted.push(path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => reply.kept.push(kept(path, &format!("cannot delete it: {e}"))),
    };
    match rec.source {
        Source::Download { partial, .. } if delete => delete_file(&partial),
        Source::Download { partial, .. } => {
            if partial.exists() {
                reply.kept.push(kept(&partial, "a partial download: --delete deletes it"));
            }
        }
        Source::Seeded { path, fetched: false, .. } => {
            reply.kept.push(kept(&path, "added in place: your own file, never deleted by shoal"));
        }
        Source::Seeded { path, changed: true, .. } => {
            reply.kept.push(kept(&path, "changed since this node wrote it: yours now"));
        }
        Source::Seeded { path, len, mtime_ns: t, .. } => {
            let unchanged =
                std::fs::metadata(&path).is_ok_and(|md| md.len() == len && mtime_ns(&md) == t);
            if !unchanged {
                reply.kept.push(kept(&path, "changed since this node wrote it: yours now"));
            } else if delete {
                delete_file(&path);
            } else {
                reply.kept.push(kept(&path, "fetched by this node: --delete deletes it"));
            }
        }
    }
    Ok(reply)
}

/// Tells the node's own tracker, if it has one, that it no longer holds `content` (unless it
/// still holds some of it); true once the tracker took it.
pub(super) async fn tell_tracker_forgotten(node: &Arc<Node>, content: ContentId) -> bool {
    if node.trackers.default_addr().is_none()
        || node.contents.holding(content).ok().flatten().is_some()
    {
        return false;
    }
    let req = TrackerRequest::Forget { node_id: node.node_id(), content };
    let call = node.trackers.call_own(&req, "forgetting a content");
    match tokio::time::timeout(TRACKER_WAIT, call).await {
        Ok(Ok(TrackerResponse::Ok)) => true,
        Ok(Ok(other)) => {
            tracing::warn!(answer = ?other, "the tracker refused a Forget");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot tell the tracker");
            false
        }
        Err(_) => {
            tracing::warn!("the tracker did not take a Forget in time");
            false
        }
    }
}

/// `POST /v1/rm`.
pub(super) async fn rm(
    State(api): State<Api>,
    Json(body): Json<RmBody>,
) -> Result<Json<RmReply>, ApiError> {
    let node = api.node.clone();
    let id = {
        let (node, given) = (node.clone(), body.content.clone());
        tokio::task::spawn_blocking(move || resolve(&node, &given))
            .await
            .map_err(|e| internal(e.into()))??
    };
    if node.store().is_downloading(id) {
        let why = match api.jobs.running_for(id) {
            Some(job) => format!(
                "content {id} is being fetched by job {job}: cancel it first (`shoal cancel {job}`)"
            ),
            None => format!(
                "content {id} is being fetched (a `shoal get` through this daemon): stop it first"
            ),
        };
        return Err(refuse(StatusCode::CONFLICT, why));
    }
    if let Some(cloud) = &node.contents.cloud {
        if cloud.content(id).map_err(|e| internal(e.into()))?.is_some() {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "content {id} is in this storage node's object store, kept for the users \
                     who own it: they remove it with `shoal space rm` (storage deletes a content \
                     nobody owns)"
                ),
            ));
        }
    }
    if let (Some(pulls), Some(rec)) =
        (&node.pulls, node.store().record(id).map_err(|e| internal(e.into()))?)
    {
        let path = match &rec.source {
            Source::Seeded { path, .. } => path,
            Source::Download { output, .. } => output,
        };
        if path.starts_with(pulls.dir()) {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "content {id} is in the pull-through cache, which drops what it holds \
                     itself (least recently used first)"
                ),
            ));
        }
    }
    let store = node.store().clone();
    let delete = body.delete;
    let mut reply = tokio::task::spawn_blocking(move || remove(&store, id, delete))
        .await
        .map_err(|e| internal(e.into()))??;
    node.stats.content_changed();
    reply.tracker_told = tell_tracker_forgotten(&node, id).await;
    tracing::info!(content = %id.fmt_short(), deleted = reply.deleted.len(), "content removed");
    Ok(Json(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: &[u8]) -> ContentId {
        let mut b = [0x11; 32];
        b[..first.len()].copy_from_slice(first);
        ContentId(b)
    }

    #[test]
    fn a_prefix_names_one_held_content_or_is_refused_with_why() {
        let (a, b, c) =
            (id(&[0xab, 0xcd, 0xef, 0x01, 0x23]), id(&[0xab, 0xcd, 0xef, 0x01, 0x99]), id(&[0x42]));
        let held = || Ok(vec![a, b, c]);
        let hex = |x: ContentId| x.to_string();
        let refused = |given: &str| match pick(given, held) {
            Err(ApiError(status, why)) => (status, why),
            Ok(x) => panic!("{given:?} named {x}"),
        };
        // A prefix two ids share is refused, naming the problem and what to do.
        let (status, why) = refused(&hex(a)[..8]);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("names several contents") && why.contains("give more"), "{why}");
        // One character more tells them apart; surrounding spaces are ignored.
        assert_eq!(pick(&format!(" {} ", &hex(a)[..9]), held).unwrap(), a);
        assert_eq!(pick(&hex(b)[..9], held).unwrap(), b);
        assert_eq!(pick(&hex(c)[..8], held).unwrap(), c);
        // Too short to be taken, whatever it matches.
        let (status, why) = refused(&hex(c)[..7]);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("first 8 characters"), "{why}");
        // A prefix of nothing held.
        assert_eq!(refused("ffffffffff").0, StatusCode::NOT_FOUND);
        // A full id is taken as it is (the store then says whether it is held).
        let other = id(&[0x77]);
        assert_eq!(pick(&hex(other), held).unwrap(), other);
    }
}
