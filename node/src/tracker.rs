//! The node's side of the tracker protocol.
//!
//! One client actor per tracker address keeps a connection, registers, announces everything
//! the store holds (with manifests the tracker lacks), sends newly verified pieces as batched
//! deltas and heartbeats with the node's load. When the connection drops or the tracker has
//! forgotten the node (after a restart with lost state, or expiry), it reconnects with backoff
//! and does it all again. The current connection is published for lookups.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use quinn::Connection;
use shoal_core::{Bitfield, ContentId, PeerAddr, PieceIndex};
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

/// A handle on the client of one tracker.
#[derive(Debug, Clone)]
pub struct TrackerHandle {
    /// The tracker's address as given (`host:port`).
    pub addr: String,
    conn: watch::Receiver<Option<Connection>>,
    // Held only to read or replace.
    error: Arc<Mutex<Option<String>>>,
}

impl TrackerHandle {
    /// The current connection, waiting up to `wait` for one. On failure, the last error.
    /// Cancel-safe.
    pub async fn connection(&self, wait: Duration) -> Result<Connection, String> {
        let mut rx = self.conn.clone();
        let got = tokio::time::timeout(wait, rx.wait_for(|c| c.is_some())).await;
        match got {
            Ok(Ok(c)) => Ok(c.clone().expect("waited for Some")),
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
}

/// Starts the client of the tracker at `addr` for `node`.
pub(crate) fn spawn(node: Arc<Node>, addr: String) -> TrackerHandle {
    let (tx, rx) = watch::channel(None);
    let error = Arc::new(Mutex::new(None));
    let handle = TrackerHandle { addr: addr.clone(), conn: rx, error: error.clone() };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            let started = Instant::now();
            let err = session(&node, &addr, &tx).await.unwrap_err();
            let _ = tx.send(None);
            let msg = format!("{err:#}");
            debug!(tracker = %addr, error = %msg, "tracker session ended");
            *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(250);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
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
        send.write_all(raw).await?;
    }
    send.finish()?;
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

fn expect_ok(resp: TrackerResponse) -> anyhow::Result<bool> {
    match resp {
        TrackerResponse::Ok => Ok(false),
        TrackerResponse::NeedManifest => Ok(true),
        TrackerResponse::Error { code, text } => bail!(TrackerRefused { code, text }),
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

/// The tracker refused a request.
#[derive(Debug, thiserror::Error)]
#[error("tracker refused: {text}")]
pub(crate) struct TrackerRefused {
    pub(crate) code: ErrorCode,
    text: String,
}

async fn announce(node: &Node, conn: &Connection, content: ContentId) -> anyhow::Result<()> {
    let Some(bitfield) = node.holding(content)? else { return Ok(()) };
    let node_id = node.node_id();
    let (resp, _) =
        call(conn, &TrackerRequest::Announce { node_id, content, bitfield }, None).await?;
    if expect_ok(resp)? {
        if let Some(bytes) = node.manifest_bytes(content)? {
            let req = TrackerRequest::PutManifest { node_id, content, len: bytes.len() as u32 };
            expect_ok(call(conn, &req, Some(&bytes)).await?.0)?;
        }
    }
    Ok(())
}

async fn session(
    node: &Arc<Node>,
    addr: &str,
    tx: &watch::Sender<Option<Connection>>,
) -> anyhow::Result<()> {
    let sock = resolve(addr).await?;
    let (conn, tracker_id) =
        node.endpoint.connect(&PeerAddr { node_id: None, addr: sock }, TRACKER_ALPN).await?;
    // Re-seed tokens signed by this key are valid here (for a storage node).
    node.tracker_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(tracker_id);
    let node_id = node.node_id();
    let role = if node.is_storage() { Role::Storage } else { Role::Node };
    let register =
        TrackerRequest::Register { node_id, version: TRACKER_VERSION, role, addrs: node.addrs() };
    let heartbeat_ms = match call(&conn, &register, None).await?.0 {
        TrackerResponse::Registered { heartbeat_ms } => heartbeat_ms.clamp(200, 60_000),
        TrackerResponse::Error { text, .. } => bail!("tracker refused registration: {text}"),
        other => bail!("unexpected tracker answer {other:?}"),
    };
    // Listen for changes before announcing, so nothing verified meanwhile is missed.
    let mut haves = node.haves.subscribe();
    let mut changed = node.contents_changed.subscribe();
    let mut announced = HashSet::new();
    for c in node.content_ids()? {
        announce(node, &conn, c).await?;
        announced.insert(c);
    }
    info!(tracker = %addr, contents = announced.len(), "registered with tracker");
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
                    upload_rate: ((up - last.1) as f64 / secs) as u64,
                    download_rate: ((down.saturating_sub(last.2)) as f64 / secs) as u64,
                };
                last = (Instant::now(), up, down);
                match call(&conn, &TrackerRequest::Heartbeat { node_id, load }, None).await?.0 {
                    TrackerResponse::HeartbeatReply { stored, directives } => {
                        node.stored.lock().unwrap_or_else(|p| p.into_inner()).extend(stored);
                        for d in directives {
                            debug!(content = %d.content.fmt_short(), storage = %d.storage.node_id, "re-seed directive");
                            crate::push::run_directive(node.clone(), d);
                        }
                    }
                    TrackerResponse::Ok => {}
                    TrackerResponse::Error { code: ErrorCode::NotRegistered, .. } => {
                        bail!("the tracker forgot this node; registering again")
                    }
                    other => bail!("unexpected heartbeat answer {other:?}"),
                }
            }
            have = haves.recv() => match have {
                Ok((c, p)) => pending.entry(c).or_default().push(p),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: announce every content in full at the next flush.
                    full.extend(announced.iter().copied());
                }
                Err(_) => bail!("node shutting down"),
            },
            c = changed.recv() => match c {
                Ok(c) => { full.insert(c); }
                Err(broadcast::error::RecvError::Lagged(_)) => full.extend(announced.iter().copied()),
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
                        if let Err(e) = expect_ok(call(&conn, &req, None).await?.0) {
                            warn!(error = %e, "tracker refused a delta; announcing in full");
                            announce(node, &conn, c).await?;
                        }
                    }
                }
            }
        }
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
