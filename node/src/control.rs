//! The local control API: HTTP/JSON on 127.0.0.1, used by `shoal add/get/ls/status` and the
//! other commands that talk to the daemon; jobs (`shoal get --detach`, `jobs`, `cancel`) are
//! in `jobs`, removing a content (`shoal rm`) in `rm`.
//!
//! The daemon writes `control.json` (address, a random token, pid; mode 0600) into its data dir;
//! clients send the token (256 bits from the OS random source, compared in constant time) as a
//! bearer token, so only users who can read the data dir control the node. Every route but
//! `GET /metrics` needs it; `/metrics` serves the node's Prometheus metrics (see `metrics`),
//! whose labels name no content, file or peer, and which read no store.
//!
//! The routes, their bodies and answers are documented in `shoal-control`, which holds the
//! types and the client.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shoal_core::{PeerAddr, Ticket};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, watch};

use crate::fetch::{fetch, FetchRequest, Progress};

mod jobs;
mod offline;
mod rm;
use crate::node::Node;

pub use shoal_control::api::{
    AddBody, AddReply, ControlInfo, GetBody, LsEntry, PushBody, CONTROL_FILE,
};

/// A running control API.
#[derive(Debug)]
pub struct ControlHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    file: PathBuf,
}

impl ControlHandle {
    /// Stops the API and removes `control.json`.
    pub fn stop(self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = self.stop.send(());
    }
}

#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    token: Arc<str>,
    /// Downloads the daemon runs on its own (`shoal get --detach`).
    jobs: Arc<jobs::Jobs>,
}

impl Api {
    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let ok = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            // Constant time: the comparison must not tell a local prober how much it guessed.
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(self.token.as_bytes())));
        if ok {
            Ok(())
        } else {
            Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong control token".into()))
        }
    }
}

async fn require_token(
    State(api): State<Api>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match api.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Binds the API on 127.0.0.1 and writes `control.json`.
pub async fn serve(node: Arc<Node>) -> anyhow::Result<ControlHandle> {
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the control API")?;
    let addr = listener.local_addr()?;
    let token = new_token()?;
    let file = node.data_dir().join(CONTROL_FILE);
    write_private(
        &file,
        &serde_json::to_vec(&ControlInfo { addr, token: token.clone(), pid: std::process::id() })?,
    )?;
    let api = Api { node, token: token.into(), jobs: Arc::default() };
    // Every /v1 route checks the token before anything else runs, body parsing included.
    let v1 = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/ls", get(ls))
        .route("/v1/add", post(add))
        .route("/v1/get", post(get_content))
        .route("/v1/push", post(push))
        .route("/v1/jobs", post(jobs::start).get(jobs::list))
        .route("/v1/jobs/cancel", post(jobs::cancel))
        .route("/v1/rm", post(rm::rm))
        .route("/v1/offline/add", post(offline::add))
        .route("/v1/offline/watch", post(offline::watch))
        .route("/v1/offline/follow", post(offline::follow_existing))
        .route("/v1/offline/ls", get(offline::ls))
        .route("/v1/offline/cancel", post(offline::cancel))
        .route("/v1/space/ls", get(offline::space_ls))
        .route("/v1/space/rm", post(offline::space_rm))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), require_token));
    let metrics = crate::scrape::route(api.node.clone());
    let app = Router::new().merge(v1).with_state(api).merge(metrics);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "control API stopped");
        }
    });
    Ok(ControlHandle { addr, stop, file })
}

/// A bearer token of 256 bits from the operating system's random source, as hex.
fn new_token() -> anyhow::Result<String> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).context("reading the OS random source for the control token")?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file readable only by its owner, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let (mut f, tmp) = shoal_net::identity::create_private_beside(path)
        .with_context(|| format!("cannot write beside {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn status(State(api): State<Api>) -> Result<Json<crate::node::Status>, ApiError> {
    let node = api.node.clone();
    let status =
        tokio::task::spawn_blocking(move || node.status()).await.map_err(|e| internal(e.into()))?;
    Ok(Json(status))
}

async fn ls(State(api): State<Api>) -> Result<Json<Vec<LsEntry>>, ApiError> {
    let node = api.node.clone();
    let entries = tokio::task::spawn_blocking(move || node.contents.list())
        .await
        .map_err(|e| internal(e.into()))?;
    Ok(Json(entries.map_err(internal)?))
}

async fn add(
    State(api): State<Api>,
    Json(body): Json<AddBody>,
) -> Result<Json<AddReply>, ApiError> {
    let store = api.node.store().clone();
    let path = body.path.clone();
    let manifest = tokio::task::spawn_blocking(move || store.import(&path, |_| {}))
        .await
        .map_err(|e| internal(e.into()))?
        .map_err(bad_request)?;
    let id = manifest.content_id();
    // This node is the content's origin: its first copy goes out a few pieces at a time.
    api.node.reveals.start(id, manifest.piece_count());
    api.node.events.content_changed(id);
    tracing::info!(content = %id, path = %body.path.display(), size = manifest.size(), "added");
    Ok(Json(AddReply {
        content_id: id.to_string(),
        ticket: api.node.ticket(id).to_string(),
        name: manifest.name().to_string(),
        size: manifest.size(),
    }))
}

async fn push(
    State(api): State<Api>,
    Json(body): Json<PushBody>,
) -> Result<Json<crate::push::PushReport>, ApiError> {
    let content = match body.target.parse::<shoal_core::ContentId>() {
        Ok(c) => c,
        Err(_) => {
            let store = api.node.store().clone();
            let path = PathBuf::from(&body.target);
            let m = tokio::task::spawn_blocking(move || store.import(&path, |_| {}))
                .await
                .map_err(|e| internal(e.into()))?
                .map_err(bad_request)?;
            api.node.reveals.start(m.content_id(), m.piece_count());
            api.node.events.content_changed(m.content_id());
            m.content_id()
        }
    };
    // Dropping this future (the client went away) stops the push; storage keeps what it stored.
    let report = crate::push::push(api.node.pusher.clone(), content, None)
        .await
        .map_err(|e| bad_request(format!("{e:#}")))?;
    Ok(Json(report))
}

fn line(v: serde_json::Value) -> Result<Bytes, Infallible> {
    let mut s = v.to_string();
    s.push('\n');
    Ok(Bytes::from(s))
}

/// The fetch a `GET /v1/get` or `POST /v1/jobs` body asks for, checked.
fn fetch_request(body: GetBody) -> Result<FetchRequest, ApiError> {
    let ticket: Ticket =
        body.ticket.parse().map_err(|e| bad_request(format!("cannot read ticket: {e}")))?;
    let extra_peers = body
        .peers
        .iter()
        .map(|p| p.parse::<PeerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_request)?;
    if let Some(t) = &body.tracker {
        shoal_core::ticket::parse_trackers(t)
            .map_err(|e| bad_request(format!("cannot read tracker {t:?}: {e}")))?;
    }
    Ok(FetchRequest {
        ticket,
        extra_peers,
        output: body.output,
        limit: body.limit,
        tracker: body.tracker,
    })
}

async fn get_content(
    State(api): State<Api>,
    Json(body): Json<GetBody>,
) -> Result<Response, ApiError> {
    let req = fetch_request(body)?;
    let (tx, rx) = mpsc::channel(16);
    let node = api.node.clone();
    tokio::spawn(async move {
        let (ptx, mut prx) = watch::channel(Progress::default());
        let fut = fetch(node, req, ptx);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                res = &mut fut => {
                    let v = match res {
                        Ok(report) => serde_json::json!({ "done": report }),
                        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                    };
                    let _ = tx.send(line(v)).await;
                    return;
                }
                Ok(()) = prx.changed() => {
                    let p = prx.borrow_and_update().clone();
                    if tx.send(line(serde_json::json!({ "progress": p }))).await.is_err() {
                        // The client went away: dropping the fetch keeps what was verified.
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| internal(e.into()))
}
