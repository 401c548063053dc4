//! The control API's offline-download and space routes: the daemon talks to its storage node
//! (found through its tracker) for the user this node acts for.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use shoal_control::offline::{
    FollowBody, OfflineAddBody, OfflineAddReply, SpaceEntry, SpaceReply, SpaceRmBody, TaskBody,
    TaskStatus,
};
use shoal_core::TaskId;
use shoal_wire::offline::{EntryState, TaskEvent, TaskState};
use tokio::sync::mpsc;

use super::{bad_request, internal, line, Api, ApiError};
use crate::offline::client::{follow, Storage};

/// An event as the JSON line `shoal offline watch --json` prints.
pub(crate) fn event_json(ev: &TaskEvent) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match ev {
        TaskEvent::Accepted { size } => json!({ "event": "accepted", "size": size }),
        TaskEvent::Segment(p) => {
            let piece = 1u64 << shoal_core::piece::piece_log2_for(p.size);
            let offset = u64::from(p.first.0) * piece;
            let end = (offset + piece * p.hashes.len() as u64).min(p.size);
            // A proof is checked before it gets here; a forged one still cannot underflow.
            json!({ "event": "segment", "offset": offset, "len": end.saturating_sub(offset) })
        }
        TaskEvent::Progress { bytes, size } => {
            json!({ "event": "progress", "bytes": bytes, "size": size })
        }
        TaskEvent::Done { content } => {
            json!({ "event": "done", "content_id": content.to_string() })
        }
        TaskEvent::Failed { reason } => json!({ "event": "failed", "reason": reason }),
        TaskEvent::Restarted { reason } => json!({ "event": "restarted", "reason": reason }),
        _ => return None,
    })
}

async fn storage(api: &Api) -> Result<Storage, ApiError> {
    Storage::connect(&api.node.pusher, None).await.map_err(|e| bad_request(format!("{e:#}")))
}

fn task_id(s: &str) -> Result<TaskId, ApiError> {
    s.parse().map_err(|_| {
        bad_request(format!("{s:?} is not a task id (32 hex digits, as `shoal offline ls` prints)"))
    })
}

fn ndjson(
    rx: mpsc::Receiver<Result<axum::body::Bytes, std::convert::Infallible>>,
) -> Result<Response, ApiError> {
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .map_err(|e| internal(e.into()))
}

/// `POST /v1/offline/add`: hands the URL to storage; with `follow`, streams the task's events
/// while fetching its segments into the file, then the report.
pub(crate) async fn add(
    State(api): State<Api>,
    Json(body): Json<OfflineAddBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if let Some(out) = &body.follow {
        if !out.is_absolute() {
            return Err(bad_request("the output path must be absolute"));
        }
    }
    let url = match (&body.id, body.url.is_empty()) {
        (Some(id), true) => crate::offline::client::resolve_source(&api.node.pusher, id)
            .await
            .map_err(|e| bad_request(format!("{e:#}")))?,
        (None, false) => body.url.clone(),
        _ => return Err(bad_request("give a URL or an --id, not both")),
    };
    let storage = storage(&api).await?;
    let name = body.name.clone().unwrap_or_default();
    let (task, instant) =
        storage.add(&url, &name).await.map_err(|e| bad_request(format!("{e:#}")))?;
    let Some(output) = body.follow else {
        storage.close();
        let reply =
            OfflineAddReply { task: task.to_string(), instant, storage: storage.addr.to_string() };
        return Ok(axum::response::IntoResponse::into_response(Json(reply)));
    };
    Ok(follow_task(&api, storage, task, instant, started, output))
}

/// Streams a follow of `task` into `output` as NDJSON: events, then the report or the error.
fn follow_task(
    api: &Api,
    storage: Storage,
    task: TaskId,
    instant: bool,
    started: Instant,
    output: std::path::PathBuf,
) -> Response {
    let (tx, rx) = mpsc::channel(64);
    let node = api.node.clone();
    tokio::spawn(async move {
        let events = tx.clone();
        let on_event = move |ev: &TaskEvent| {
            if let Some(v) = event_json(ev) {
                // A client too slow for the events misses some; the report still comes.
                let _ = events.try_send(line(v));
            }
        };
        let r = follow(&storage, &node.follows, task, instant, started, &output, on_event).await;
        storage.close();
        let v = match r {
            Ok(report) => serde_json::json!({ "done": report }),
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
        };
        let _ = tx.send(line(v)).await;
    });
    ndjson(rx).unwrap_or_else(axum::response::IntoResponse::into_response)
}

/// `POST /v1/offline/follow`: follows a task already added (from this device or another of
/// the user's) into a file, as NDJSON like a followed add.
pub(crate) async fn follow_existing(
    State(api): State<Api>,
    Json(body): Json<FollowBody>,
) -> Result<Response, ApiError> {
    let task = task_id(&body.task)?;
    if !body.output.is_absolute() {
        return Err(bad_request("the output path must be absolute"));
    }
    let storage = storage(&api).await?;
    Ok(follow_task(&api, storage, task, false, Instant::now(), body.output))
}

/// `POST /v1/offline/watch`: the task's events as NDJSON until it ends.
pub(crate) async fn watch(
    State(api): State<Api>,
    Json(body): Json<TaskBody>,
) -> Result<Response, ApiError> {
    let task = task_id(&body.task)?;
    let storage = storage(&api).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let events = tx.clone();
        let r = storage
            .watch(task, move |ev| {
                if let Some(v) = event_json(ev) {
                    let _ = events.try_send(line(v));
                }
            })
            .await;
        storage.close();
        if let Err(e) = r {
            let _ = tx.send(line(serde_json::json!({ "error": format!("{e:#}") }))).await;
        }
    });
    ndjson(rx)
}

/// `GET /v1/offline/ls`.
pub(crate) async fn ls(State(api): State<Api>) -> Result<Json<Vec<TaskStatus>>, ApiError> {
    let storage = storage(&api).await?;
    let tasks = storage.list().await.map_err(|e| bad_request(format!("{e:#}")));
    storage.close();
    Ok(Json(
        tasks?
            .into_iter()
            .map(|t| TaskStatus {
                task: t.task.to_string(),
                state: match t.state {
                    TaskState::Fetching => "fetching",
                    TaskState::Done => "done",
                    TaskState::Failed => "failed",
                    _ => "cancelled",
                }
                .into(),
                bytes: t.bytes,
                size: t.size,
                content_id: t.content.map(|c| c.to_string()),
                url: t.url,
                name: t.name,
            })
            .collect(),
    ))
}

/// `POST /v1/offline/cancel`.
pub(crate) async fn cancel(
    State(api): State<Api>,
    Json(body): Json<TaskBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = task_id(&body.task)?;
    let storage = storage(&api).await?;
    let r = storage.cancel(task).await.map_err(|e| bad_request(format!("{e:#}")));
    storage.close();
    r?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /v1/space/ls`.
pub(crate) async fn space_ls(State(api): State<Api>) -> Result<Json<SpaceReply>, ApiError> {
    let storage = storage(&api).await?;
    let entries = storage.space().await.map_err(|e| bad_request(format!("{e:#}")));
    storage.close();
    let mut entries: Vec<SpaceEntry> = entries?
        .into_iter()
        .map(|e| SpaceEntry {
            name: e.name,
            content_id: e.content.map(|c| c.to_string()),
            size: e.size,
            state: if e.state == EntryState::Permanent { "permanent" } else { "temporary" }.into(),
            time_ms: e.time_ms,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(SpaceReply { storage: storage.addr.to_string(), entries }))
}

/// `POST /v1/space/rm`.
pub(crate) async fn space_rm(
    State(api): State<Api>,
    Json(body): Json<SpaceRmBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let storage = storage(&api).await?;
    let r = storage.remove(&body.name).await.map_err(|e| bad_request(format!("{e:#}")));
    storage.close();
    r?;
    Ok(Json(serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    use shoal_core::offline::SegmentProof;
    use shoal_core::{PieceHash, PieceIndex, TaskId};

    use super::*;

    #[test]
    fn a_segment_past_the_end_of_its_resource_prints_no_negative_length() {
        // A 1-byte resource has one piece: a proof starting at piece 1000 lies past it.
        let p = SegmentProof {
            task: TaskId([1; 16]),
            size: 1,
            first: PieceIndex(1000),
            hashes: vec![PieceHash([0; 32])],
            signature: [0; 64],
        };
        let v = event_json(&TaskEvent::Segment(p)).unwrap();
        assert_eq!(v["len"], 0, "{v}");
        // A real one: 10 MiB in 32 KiB pieces, the last segment of 64 pieces.
        let p = SegmentProof {
            task: TaskId([1; 16]),
            size: 10 << 20,
            first: PieceIndex(256),
            hashes: vec![PieceHash([0; 32]); 64],
            signature: [0; 64],
        };
        let v = event_json(&TaskEvent::Segment(p)).unwrap();
        assert_eq!((v["offset"].as_u64(), v["len"].as_u64()), (Some(8 << 20), Some(2 << 20)));
    }
}
