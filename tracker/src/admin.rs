//! The read-only admin API behind the dashboard: JSON over the tracker's HTTP address.
//! Every route and field is documented in `docs/admin-api.md`.
//!
//! Bounded by construction: lists come a page at a time, continued after the last id of the
//! previous page (never an offset into the whole registry); a heatmap has at most
//! [`shoal_index::MAX_CELLS`] cells; each request takes the index lock for one view call, and
//! at most `metrics::VIEWS_AT_ONCE` views are computed at once (others wait their turn).
//! Bad input (a malformed id, a number that is not one) is a 400 with one line saying what
//! was wrong; a content the tracker does not know is a 404.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use shoal_core::{ContentId, NodeId};
use shoal_index::{SwarmSummary, MAX_CELLS, MAX_PAGE, MAX_SWARM_PAGE};

use crate::Shared;

/// The longest query string read; longer ones are refused.
const MAX_QUERY: usize = 1024;
/// Rows in a page when the request names no `limit`.
const DEFAULT_LIMIT: usize = 50;
/// Heatmap cells when the request names no `cells`.
const DEFAULT_CELLS: usize = 256;

/// The routes, under `/api/v1`.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/swarms", get(swarms))
        .route("/api/v1/swarms/{content}", get(swarm))
        .route("/api/v1/nodes", get(nodes))
        .fallback(|| async {
            refuse(StatusCode::NOT_FOUND, "no such route (see docs/admin-api.md)")
        })
}

/// A refusal: `{"error": "..."}` with its status.
#[derive(Debug)]
pub(crate) struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn refuse(code: StatusCode, text: impl Into<String>) -> Refusal {
    Refusal(code, text.into())
}

fn bad(text: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, text)
}

/// The query's `key=value` pairs (no percent-decoding: no value here needs it, and one that
/// has `%` fails to parse as what it should be).
fn query(uri: &Uri) -> Result<Vec<(&str, &str)>, Refusal> {
    let q = uri.query().unwrap_or("");
    if q.len() > MAX_QUERY {
        return Err(bad(format!("query longer than {MAX_QUERY} bytes")));
    }
    Ok(q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect())
}

fn param<'a>(q: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    q.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A count parameter: absent gives `default`; past `max` is cut to it.
fn number(q: &[(&str, &str)], key: &str, default: usize, max: usize) -> Result<usize, Refusal> {
    match param(q, key) {
        None => Ok(default),
        // Digits only; any count of them (a number past u64 is just large: cut to `max`).
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(v.parse::<u64>().map_or(max, |n| usize::try_from(n).unwrap_or(max).min(max)))
        }
        Some(v) => {
            Err(bad(format!("{key}={v:?} is not a number (use a whole number from 0 to {max})")))
        }
    }
}

/// A turn to compute a view (see `metrics::VIEWS_AT_ONCE`).
async fn turn(shared: &Shared) -> Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
    // The semaphore is never closed; answer "busy" rather than panic if it were.
    shared.obs.views.acquire().await.map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "busy"))
}

fn content_id(s: &str, what: &str) -> Result<ContentId, Refusal> {
    s.parse().map_err(|_| bad(format!("{what} {s:?} is not a content id (64 hex digits)")))
}

/// One swarm in a list.
#[derive(Debug, Serialize)]
pub(crate) struct SwarmJson {
    content: String,
    name: String,
    size: u64,
    pieces: u32,
    holders: usize,
    complete_holders: usize,
    available_pieces: u32,
    min_availability: u32,
    storage_holders: usize,
    storage_pieces: u32,
}

impl From<SwarmSummary> for SwarmJson {
    fn from(s: SwarmSummary) -> Self {
        Self {
            content: s.content.to_string(),
            name: s.name,
            size: s.size,
            pieces: s.pieces,
            holders: s.holders,
            complete_holders: s.complete_holders,
            available_pieces: s.available_pieces,
            min_availability: s.min_availability,
            storage_holders: s.storage_holders,
            storage_pieces: s.storage_pieces,
        }
    }
}

async fn overview(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let ((nodes, swarms), known, (manifest_bytes, _)) = {
        let ix = shared.index_read();
        (ix.counts(), ix.swarm_count(), ix.footprint())
    };
    let m = &shared.metrics;
    let (announces, lookups) = *m.rates.lock().unwrap_or_else(|p| p.into_inner());
    let snap = shared.obs.snapshot();
    let regions: Vec<serde_json::Value> = snap
        .totals
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "region": r.region.as_ref().map(|r| r.as_str()),
                "nodes": r.nodes,
                "storage": r.storage,
                "active_uploads": r.active_uploads,
                "upload_bytes_per_second": r.upload_rate,
            })
        })
        .collect();
    let sum =
        |f: fn(&shoal_index::RegionLoad) -> u64| snap.totals.regions.iter().map(f).sum::<u64>();
    Json(serde_json::json!({
        "tracker": {
            "node_id": shared.obs.node_id.to_string(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": shared.obs.started.elapsed().as_secs(),
        },
        "nodes": nodes,
        "storage_nodes": sum(|r| r.storage as u64),
        "swarms": swarms,
        "swarms_known": known,
        "manifest_bytes": manifest_bytes,
        "storage_bytes": snap.storage_bytes,
        "connections": shared.obs.endpoint.open_connections(),
        "rates": {
            "announces_per_second": announces,
            "lookups_per_second": lookups,
            "upload_bytes_per_second": sum(|r| r.upload_rate),
            "active_uploads": sum(|r| r.active_uploads),
        },
        "totals": {
            "announces": m.announces.load(Ordering::Relaxed),
            "lookups": m.lookups.load(Ordering::Relaxed),
            "registers": m.registers.load(Ordering::Relaxed),
            "heartbeats": m.heartbeats.load(Ordering::Relaxed),
            "reseed_directives": shared.obs.directives.get(),
        },
        "regions": regions,
        "snapshot_ms": snap.taken_ms,
        "limits": { "swarms_page": MAX_SWARM_PAGE, "nodes_page": MAX_PAGE, "cells": MAX_CELLS },
    }))
}

async fn swarms(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, Refusal> {
    let q = query(&uri)?;
    let after =
        param(&q, "after").filter(|s| !s.is_empty()).map(|s| content_id(s, "after")).transpose()?;
    let limit = number(&q, "limit", DEFAULT_LIMIT.min(MAX_SWARM_PAGE), MAX_SWARM_PAGE)?;
    let turn = turn(&shared).await?;
    let page = shared.index_read().swarms_page(after, limit);
    drop(turn);
    let next = (limit > 0 && page.len() == limit)
        .then(|| page.last().map(|s| s.content.to_string()))
        .flatten();
    let swarms: Vec<SwarmJson> = page.into_iter().map(Into::into).collect();
    Ok(Json(serde_json::json!({ "swarms": swarms, "next": next })))
}

async fn swarm(
    State(shared): State<Arc<Shared>>,
    Path(content): Path<String>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, Refusal> {
    let content = content_id(&content, "content")?;
    let q = query(&uri)?;
    let cells = number(&q, "cells", DEFAULT_CELLS, MAX_CELLS)?;
    let from = number(&q, "from", 0, usize::MAX)?;
    let limit = number(&q, "limit", DEFAULT_LIMIT, MAX_PAGE)?;
    let turn = turn(&shared).await?;
    let detail = shared.index_read().swarm_detail(content, cells, from, limit);
    drop(turn);
    let Some(d) = detail else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("this tracker knows no content {content}"),
        ));
    };
    // Saturating: `from` is the asker's number, up to usize::MAX.
    let end = from.saturating_add(limit);
    let next = (limit > 0 && d.holders.len() == limit && d.summary.holders > end).then_some(end);
    let holders: Vec<serde_json::Value> = d
        .holders
        .iter()
        .map(|h| {
            serde_json::json!({
                "node_id": h.node.to_string(),
                "have": h.have,
                "storage": h.storage,
                "region": h.region.as_ref().map(|r| r.as_str()),
                "load": h.load,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "swarm": SwarmJson::from(d.summary),
        "heatmap": {
            "cells": d.heatmap.min.len(),
            "pieces_per_cell": d.heatmap.pieces_per_cell,
            "min": d.heatmap.min,
            "max": d.heatmap.max,
        },
        "holders": holders,
        "holders_from": from,
        "holders_next": next,
    })))
}

async fn nodes(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, Refusal> {
    let q = query(&uri)?;
    let after = match param(&q, "after").filter(|s| !s.is_empty()) {
        Some(s) => {
            Some(s.parse::<NodeId>().map_err(|_| bad(format!("after {s:?} is not a node id")))?)
        }
        None => None,
    };
    let storage_only = match param(&q, "role") {
        None | Some("all") => false,
        Some("storage") => true,
        Some(other) => return Err(bad(format!("role={other:?}: use role=storage or role=all"))),
    };
    let limit = number(&q, "limit", DEFAULT_LIMIT, MAX_PAGE)?;
    let now = crate::clock::now_ms();
    let turn = turn(&shared).await?;
    let page = shared.index_read().nodes_page(after, limit, storage_only);
    drop(turn);
    let next = (limit > 0 && page.len() == limit)
        .then(|| page.last().map(|r| r.node.to_string()))
        .flatten();
    let rows: Vec<serde_json::Value> = page
        .iter()
        .map(|r| {
            serde_json::json!({
                "node_id": r.node.to_string(),
                "role": if r.storage { "storage" } else { "node" },
                "region": r.region.as_ref().map(|r| r.as_str()),
                "active_uploads": r.active_uploads,
                "upload_bytes_per_second": r.upload_rate,
                "last_seen_ms_ago": now.saturating_sub(r.last_seen_ms),
                "contents": r.contents,
                "complete_contents": r.complete_contents,
                "stored_bytes": r.stored_bytes,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "nodes": rows, "next": next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn numbers_are_digits_cut_to_their_maximum() {
        let uri = q("/x?limit=7&big=99999999999999999999999999999999&neg=-1&exp=1e3&empty=");
        let p = query(&uri).unwrap();
        assert_eq!(number(&p, "limit", 50, 200).unwrap(), 7);
        assert_eq!(number(&p, "absent", 50, 200).unwrap(), 50);
        // Past u64: still a number, cut to the maximum.
        assert_eq!(number(&p, "big", 50, 200).unwrap(), 200);
        for bad in ["neg", "exp", "empty"] {
            let e = number(&p, bad, 50, 200).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST);
            assert!(e.1.contains("not a number"), "{}", e.1);
        }
        // The last of a repeated key counts; a key without `=` has an empty value.
        let uri = q("/x?limit=1&limit=2&flag");
        let p = query(&uri).unwrap();
        assert_eq!(number(&p, "limit", 50, 200).unwrap(), 2);
        assert_eq!(param(&p, "flag"), Some(""));
    }

    #[test]
    fn long_queries_and_bad_ids_are_refused() {
        let long = format!("/x?a={}", "b".repeat(MAX_QUERY));
        assert_eq!(query(&q(&long)).unwrap_err().0, StatusCode::BAD_REQUEST);
        for bad in ["", "zz", "../../etc/passwd", &"a".repeat(63), &"a".repeat(65)] {
            let e = content_id(bad, "content").unwrap_err();
            assert!(e.1.contains("not a content id"), "{}", e.1);
        }
        assert!(content_id(&"ab".repeat(32), "content").is_ok());
    }
}
