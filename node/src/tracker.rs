//! The node's side of the tracker protocol.
//!
//! One client actor per tracker session keeps a connection, registers, announces what it may
//! (with manifests the tracker asks for), sends newly verified pieces as batched deltas and
//! heartbeats with the node's load. When the connection drops or the tracker has forgotten
//! the node, it reconnects with backoff and does it all again; a tracker that says "slow down"
//! is retried later. The current connection is published for lookups.
//!
//! Trust: the tracker's key is pinned. A tracker given as `NODE_ID@HOST:PORT` must prove that
//! id in the TLS handshake; one given as `HOST:PORT` is trusted on first connect and pinned for
//! the life of the process. Only the node's own `--tracker` ([`Scope::Own`]) gets a full
//! session: everything the node holds is announced there, its re-seed directives and stored
//! notices are obeyed, and its key signs the re-seed tokens a storage node accepts. A tracker
//! named only in a ticket ([`Scope::Content`]) registers the node and sees the announces of
//! that one content, for as long as the fetch holds the handle; its directives are ignored.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use quinn::Connection;
use shoal_core::ticket::TrackerAddr;
use shoal_core::{Bitfield, ContentId, NodeId, PeerAddr, PieceIndex};
use shoal_wire::tracker::{
    ErrorCode, Load, Role, TrackerRequest, TrackerResponse, MAX_DELTA, MAX_TRACKER_FRAME_LEN,
    TRACKER_ALPN, TRACKER_VERSION,
};
use shoal_wire::{encode, Decoder};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::node::Node;

/// How often batched deltas go out.
const DELTA_EVERY: Duration = Duration::from_millis(250);
/// Attempts of one request the tracker answers "slow down", and the first pause between them
/// (doubling up to [`MAX_PAUSE`]).
const RATE_LIMITED_ATTEMPTS: u32 = 8;
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// What a tracker session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The node's own `--tracker`: every content announced, directives obeyed, tokens trusted.
    Own,
    /// A tracker from a ticket: lookups, and announces of this content only (none if `None`).
    Content(Option<ContentId>),
}

impl Scope {
    fn covers(self, content: ContentId) -> bool {
        match self {
            Self::Own => true,
            Self::Content(c) => c == Some(content),
        }
    }
}

/// A handle on the client of one tracker session. For a [`Scope::Content`] session, dropping
/// the last clone ends the session and closes its connection.
#[derive(Debug, Clone)]
pub struct TrackerHandle {
    /// The tracker's address as given (`host:port`).
    pub addr: String,
    conn: watch::Receiver<Option<Connection>>,
    // Held only to read or replace.
    error: Arc<Mutex<Option<String>>>,
    /// The tracker's node id once pinned. Held only to read or set.
    pinned: Arc<Mutex<Option<NodeId>>>,
}

impl TrackerHandle {
    /// The current connection, waiting up to `wait` for one. On failure, the last error.
    /// Cancel-safe.
    pub async fn connection(&self, wait: Duration) -> Result<Connection, String> {
        let mut rx = self.conn.clone();
        let got = tokio::time::timeout(wait, rx.wait_for(|c| c.is_some())).await;
        match got {
            Ok(Ok(c)) => c.clone().ok_or_else(|| "no connection".to_string()),
            _ => Err(self
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "no answer yet".into())),
        }
    }

    /// The current connection, if there is one.
    pub fn current(&self) -> Option<Connection> {
        self.conn.borrow().clone()
    }

    /// The tracker's node id: the one given, or the one it proved first.
    pub fn node_id(&self) -> Option<NodeId> {
        *self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts a client of the tracker at `target` for `node`.
pub(crate) fn spawn(node: Arc<Node>, target: TrackerAddr, scope: Scope) -> TrackerHandle {
    let (tx, rx) = watch::channel(None);
    let error = Arc::new(Mutex::new(None));
    let pinned = Arc::new(Mutex::new(target.node_id));
    let handle = TrackerHandle {
        addr: target.addr.clone(),
        conn: rx,
        error: error.clone(),
        pinned: pinned.clone(),
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let warned = AtomicBool::new(false);
        let ctx =
            Session { node: &node, addr: &target.addr, scope, pinned: &pinned, warned: &warned };
        loop {
            let started = Instant::now();
            let err = tokio::select! {
                biased;
                _ = tx.closed() => break,
                r = ctx.run(&tx) => match r {
                    Ok(()) => break,
                    Err(e) => e,
                },
            };
            let _ = tx.send(None);
            let msg = format!("{err:#}");
            debug!(tracker = %target.addr, error = %msg, "tracker session ended");
            *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(250);
            }
            tokio::select! {
                _ = tx.closed() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
        // Every handle is gone: the fetch that needed this tracker is over.
        if let Some(c) = tx.send_replace(None) {
            c.close(0u32.into(), b"done");
        }
        debug!(tracker = %target.addr, "tracker session closed");
    });
    handle
}

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve tracker address {addr:?} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow!("tracker address {addr:?} resolves to nothing"))
}

/// One request on its own stream; `raw` bytes follow the frame.
pub(crate) async fn call(
    conn: &Connection,
    req: &TrackerRequest,
    raw: Option<&[u8]>,
) -> anyhow::Result<(TrackerResponse, Vec<u8>)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode(req)).await?;
    if let Some(raw) = raw {
        // The tracker may answer without reading the body (it has the manifest already, or
        // refuses): its answer says which, so a stopped stream is not an error here.
        if let Err(e) = send.write_all(raw).await {
            debug!(error = %e, "tracker did not read the body");
        }
    }
    let _ = send.finish();
    let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    let resp = loop {
        if let Some(r) = dec.decode::<TrackerResponse>()? {
            break r;
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(c) => dec.feed(&c.bytes),
            None => bail!("tracker closed the stream without answering"),
        }
    };
    let mut extra = Vec::new();
    if let TrackerResponse::Manifest { len } = resp {
        extra = dec.take_rest().to_vec();
        if extra.len() > len as usize {
            bail!("manifest longer than announced");
        }
        let have = extra.len();
        extra.resize(len as usize, 0);
        recv.read_exact(&mut extra[have..]).await?;
    }
    Ok((resp, extra))
}

/// Like [`call`], but a "slow down" answer is retried after a growing pause (a bounded number
/// of times). Cancel-safe.
async fn call_patient(
    conn: &Connection,
    req: &TrackerRequest,
    raw: Option<&[u8]>,
) -> anyhow::Result<TrackerResponse> {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        let (resp, _) = call(conn, req, raw).await?;
        match resp {
            TrackerResponse::Error { code: ErrorCode::RateLimited, .. }
                if attempt < RATE_LIMITED_ATTEMPTS =>
            {
                debug!(?pause, "tracker asked to slow down");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                attempt += 1;
            }
            other => return Ok(other),
        }
    }
}

/// The tracker refused a request.
#[derive(Debug, thiserror::Error)]
#[error("tracker refused: {text}")]
pub(crate) struct TrackerRefused {
    pub(crate) code: ErrorCode,
    text: String,
}

/// Announces what the node holds of `content`; uploads the manifest if the tracker asks for it
/// and announces again. A refusal of this one content is logged, not fatal, unless the tracker
/// forgot the node.
async fn announce(node: &Node, conn: &Connection, content: ContentId) -> anyhow::Result<()> {
    let Some(bitfield) = node.holding(content)? else { return Ok(()) };
    let node_id = node.node_id();
    let req = TrackerRequest::Announce { node_id, content, bitfield };
    let mut resp = call_patient(conn, &req, None).await?;
    if resp == TrackerResponse::NeedManifest {
        let Some(bytes) = node.manifest_bytes(content)? else { return Ok(()) };
        let put = TrackerRequest::PutManifest { node_id, content, len: bytes.len() as u32 };
        resp = call_patient(conn, &put, Some(&bytes)).await?;
        if resp == TrackerResponse::Ok {
            resp = call_patient(conn, &req, None).await?;
        }
    }
    accept(resp, content)
}

/// Turns an announce answer into the session's next step.
fn accept(resp: TrackerResponse, content: ContentId) -> anyhow::Result<()> {
    match resp {
        TrackerResponse::Ok => Ok(()),
        TrackerResponse::Error { code: ErrorCode::NotRegistered, text } => {
            bail!(TrackerRefused { code: ErrorCode::NotRegistered, text })
        }
        TrackerResponse::Error { code, text } => {
            warn!(content = %content.fmt_short(), ?code, reason = %text, "tracker refused an announce");
            Ok(())
        }
        TrackerResponse::NeedManifest => {
            warn!(content = %content.fmt_short(), "tracker still lacks the manifest");
            Ok(())
        }
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

struct Session<'a> {
    node: &'a Arc<Node>,
    addr: &'a str,
    scope: Scope,
    pinned: &'a Mutex<Option<NodeId>>,
    /// Whether the "not admitted as storage" warning was given.
    warned: &'a AtomicBool,
}

impl Session<'_> {
    /// Connects, pins the tracker's key and registers; returns the connection and heartbeat
    /// interval.
    async fn open(&self) -> anyhow::Result<(Connection, u32)> {
        let (node, addr) = (self.node, self.addr);
        let sock = resolve(addr).await?;
        let expected = *self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        let (conn, tracker_id) = node
            .endpoint
            .connect(&PeerAddr { node_id: expected, addr: sock }, TRACKER_ALPN)
            .await
            .with_context(|| match expected {
                Some(id) => format!("cannot reach tracker {id}@{addr}"),
                None => format!("cannot reach tracker {addr}"),
            })?;
        // Trust on first connect: from now on this key, and only this key, is the tracker.
        *self.pinned.lock().unwrap_or_else(|p| p.into_inner()) = Some(tracker_id);
        if self.scope == Scope::Own {
            // Re-seed tokens signed by this key are valid here (for a storage node).
            node.tracker_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(tracker_id);
        }
        let role =
            if node.is_storage() && self.scope == Scope::Own { Role::Storage } else { Role::Node };
        let register = TrackerRequest::Register {
            node_id: node.node_id(),
            version: TRACKER_VERSION,
            role,
            addrs: node.addrs(),
        };
        let heartbeat_ms = match call_patient(&conn, &register, None).await? {
            TrackerResponse::Registered { heartbeat_ms, role: granted } => {
                if granted != role && !self.warned.swap(true, Ordering::Relaxed) {
                    warn!(
                        tracker = %addr,
                        "the tracker did not admit this node as storage: start it with `shoal-tracker serve --admit-storage {}`",
                        node.node_id()
                    );
                }
                heartbeat_ms.clamp(200, 60_000)
            }
            TrackerResponse::Error { text, .. } => bail!("tracker refused registration: {text}"),
            other => bail!("unexpected tracker answer {other:?}"),
        };
        Ok((conn, heartbeat_ms))
    }

    /// One session, until the connection fails (an error) or the node shuts down.
    async fn run(&self, tx: &watch::Sender<Option<Connection>>) -> anyhow::Result<()> {
        let (node, addr, scope) = (self.node, self.addr, self.scope);
        let (conn, heartbeat_ms) = self.open().await?;
        let node_id = node.node_id();
        // Listen for changes before announcing, so nothing verified meanwhile is missed.
        let mut haves = node.haves.subscribe();
        let mut changed = node.contents_changed.subscribe();
        let mut announced = HashSet::new();
        let contents = match scope {
            Scope::Own => node.content_ids()?,
            Scope::Content(c) => c.into_iter().collect(),
        };
        for c in contents {
            announce(node, &conn, c).await?;
            announced.insert(c);
        }
        info!(tracker = %addr, contents = announced.len(), ?scope, "registered with tracker");
        let _ = tx.send(Some(conn.clone()));
        let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(heartbeat_ms)));
        let mut flush = tokio::time::interval(DELTA_EVERY);
        let mut pending: HashMap<ContentId, Vec<PieceIndex>> = HashMap::new();
        let mut full: HashSet<ContentId> = HashSet::new();
        let mut last = (
            Instant::now(),
            node.stats.uploaded_bytes.load(Ordering::Relaxed),
            node.stats.downloaded_bytes.load(Ordering::Relaxed),
        );
        loop {
            tokio::select! {
                biased;
                reason = conn.closed() => bail!("tracker connection closed: {reason}"),
                _ = heartbeat.tick() => {
                    let up = node.stats.uploaded_bytes.load(Ordering::Relaxed);
                    let down = node.stats.downloaded_bytes.load(Ordering::Relaxed);
                    let secs = last.0.elapsed().as_secs_f64().max(0.001);
                    let load = Load {
                        active_uploads: node.active_uploads() as u32,
                        upload_rate: (up.saturating_sub(last.1) as f64 / secs) as u64,
                        download_rate: (down.saturating_sub(last.2) as f64 / secs) as u64,
                    };
                    last = (Instant::now(), up, down);
                    match call(&conn, &TrackerRequest::Heartbeat { node_id, load }, None).await?.0 {
                        TrackerResponse::HeartbeatReply { stored, directives } if scope == Scope::Own => {
                            node.stored.lock().unwrap_or_else(|p| p.into_inner()).extend(stored);
                            for d in directives {
                                debug!(content = %d.content.fmt_short(), storage = %d.storage.node_id, "re-seed directive");
                                crate::push::run_directive(node.clone(), d);
                            }
                        }
                        TrackerResponse::HeartbeatReply { directives, .. } => {
                            if !directives.is_empty() {
                                debug!(tracker = %addr, "ignored directives from a ticket's tracker");
                            }
                        }
                        TrackerResponse::Ok => {}
                        TrackerResponse::Error { code: ErrorCode::NotRegistered, .. } => {
                            bail!("the tracker forgot this node; registering again")
                        }
                        TrackerResponse::Error { code: ErrorCode::RateLimited, .. } => {}
                        other => bail!("unexpected heartbeat answer {other:?}"),
                    }
                }
                have = haves.recv() => match have {
                    Ok((c, p)) if scope.covers(c) => pending.entry(c).or_default().push(p),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some: announce every content in full at the next flush.
                        full.extend(announced.iter().copied());
                        if let Scope::Content(Some(c)) = scope {
                            full.insert(c);
                        }
                    }
                    Err(_) => bail!("node shutting down"),
                },
                c = changed.recv() => match c {
                    Ok(c) if scope.covers(c) => { full.insert(c); }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        full.extend(announced.iter().copied());
                        if let Scope::Content(Some(c)) = scope {
                            full.insert(c);
                        }
                    }
                    Err(_) => bail!("node shutting down"),
                },
                _ = flush.tick() => {
                    for c in std::mem::take(&mut full) {
                        pending.remove(&c);
                        announce(node, &conn, c).await?;
                        announced.insert(c);
                    }
                    for (c, pieces) in std::mem::take(&mut pending) {
                        if !announced.contains(&c) {
                            announce(node, &conn, c).await?;
                            announced.insert(c);
                            continue;
                        }
                        for chunk in pieces.chunks(MAX_DELTA) {
                            let req = TrackerRequest::AnnounceDelta { node_id, content: c, pieces: chunk.to_vec() };
                            if call_patient(&conn, &req, None).await? != TrackerResponse::Ok {
                                debug!(content = %c.fmt_short(), "tracker refused a delta; announcing in full");
                                announce(node, &conn, c).await?;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Tells the tracker that `peer` was asked for pieces of `content` and delivered none: the
/// tracker demotes holders that several downloaders report. Cancel-safe.
// Called by the fetch driver (being rewritten in parallel); tested end to end in
// tests/tracker_trust.rs through the tracker's protocol.
#[allow(dead_code)]
pub(crate) async fn report_undelivered(
    conn: &Connection,
    content: ContentId,
    peer: NodeId,
) -> anyhow::Result<()> {
    match call(conn, &TrackerRequest::Report { content, peer }, None).await?.0 {
        TrackerResponse::Ok => Ok(()),
        TrackerResponse::Error { text, .. } => bail!("tracker refused the report: {text}"),
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

/// Looks up `content` at the tracker: peers and hints, or `None` if it is unknown there.
pub(crate) async fn lookup(
    conn: &Connection,
    content: ContentId,
    have: Option<Bitfield>,
    max_peers: u8,
) -> anyhow::Result<Option<(Vec<shoal_wire::tracker::PeerInfo>, Vec<PieceIndex>)>> {
    match call(conn, &TrackerRequest::Lookup { content, max_peers, have }, None).await?.0 {
        TrackerResponse::LookupReply { peers, hints, .. } => Ok(Some((peers, hints))),
        TrackerResponse::Unknown => Ok(None),
        TrackerResponse::Error { text, .. } => bail!("tracker refused the lookup: {text}"),
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

/// The manifest of `content` from the tracker, if it has one.
pub(crate) async fn manifest(
    conn: &Connection,
    content: ContentId,
) -> anyhow::Result<Option<Vec<u8>>> {
    match call(conn, &TrackerRequest::GetManifest { content }, None).await? {
        (TrackerResponse::Manifest { .. }, bytes) => Ok(Some(bytes)),
        (TrackerResponse::Unknown, _) => Ok(None),
        (other, _) => bail!("unexpected tracker answer {other:?}"),
    }
}
