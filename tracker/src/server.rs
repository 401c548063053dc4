//! The tracker's QUIC service.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_core::NodeId;
use shoal_index::{Index, IndexError, Persist, SledState};
use shoal_wire::tracker::{
    Directive, ErrorCode, ReseedToken, StorageNode, TrackerRequest, TrackerResponse,
    MAX_LOOKUP_PEERS, MAX_TRACKER_FRAME_LEN,
};
use shoal_wire::{encode, Decoder};
use tracing::{debug, warn, Instrument};

/// Connections the tracker serves at once.
const MAX_CONNECTIONS: usize = 4096;
/// Close code for a connection that sent a malformed frame.
const CLOSE_PROTOCOL: u32 = 1;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Request counters and their recent rates.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Announces and deltas served.
    pub announces: AtomicU64,
    /// Lookups served.
    pub lookups: AtomicU64,
    /// Registrations served.
    pub registers: AtomicU64,
    /// Heartbeats served.
    pub heartbeats: AtomicU64,
    /// Requests refused because they spoke for another node.
    pub forged: AtomicU64,
    /// (announces/s, lookups/s) over the last ten seconds. Held only to read or replace.
    pub rates: Mutex<(f64, f64)>,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The index. Held only for one index call, never across an await.
    pub index: Mutex<Index>,
    state: SledState,
    /// The tracker's key, which signs re-seed tokens.
    identity: shoal_net::Identity,
    /// Counters.
    pub metrics: Metrics,
}

impl Shared {
    pub(crate) fn new(index: Index, state: SledState, identity: shoal_net::Identity) -> Self {
        Self { index: Mutex::new(index), state, identity, metrics: Metrics::default() }
    }

    /// Turns planned re-seed orders into directives with signed tokens.
    fn sign(&self, proven: NodeId, planned: Vec<shoal_index::Planned>) -> Vec<Directive> {
        planned
            .into_iter()
            .map(|p| {
                let mut token = ReseedToken {
                    content: p.content,
                    storage: p.storage,
                    holder: proven,
                    expires_ms: p.expires_ms,
                    pieces: p.pieces,
                    signature: Vec::new(),
                };
                token.signature = self.identity.sign(&token.signed_bytes());
                Directive {
                    content: p.content,
                    storage: StorageNode { node_id: p.storage, addrs: p.addrs },
                    token: token.encode(),
                }
            })
            .collect()
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, ops: &[Persist]) {
        if let Err(e) = self.state.apply(ops) {
            warn!(error = %e, "cannot persist tracker state");
        }
    }

    pub(crate) fn flush(&self) {
        if let Err(e) = self.state.flush() {
            warn!(error = %e, "cannot flush tracker state");
        }
    }
}

/// Expires silent nodes, flushes state and updates rates, once a second.
pub(crate) async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut history: VecDeque<(u64, u64)> = VecDeque::new();
    loop {
        tick.tick().await;
        let ops = shared.index().expire(now_ms());
        if !ops.is_empty() {
            debug!(changes = ops.len(), "expired silent nodes");
            shared.persist(&ops);
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.flush()).await;
        let m = &shared.metrics;
        history.push_back((m.announces.load(Ordering::Relaxed), m.lookups.load(Ordering::Relaxed)));
        if history.len() > 11 {
            history.pop_front();
        }
        if let (Some(first), Some(last)) = (history.front(), history.back()) {
            let secs = (history.len() - 1).max(1) as f64;
            *m.rates.lock().unwrap_or_else(|p| p.into_inner()) =
                ((last.0 - first.0) as f64 / secs, (last.1 - first.1) as f64 / secs);
        }
    }
}

/// Accepts nodes until the endpoint closes.
pub(crate) async fn accept_loop(endpoint: shoal_net::Endpoint, shared: Arc<Shared>) {
    endpoint
        .serve(MAX_CONNECTIONS, move |conn, node| serve_connection(shared.clone(), conn, node))
        .await;
}

async fn serve_connection(shared: Arc<Shared>, conn: Connection, node: NodeId) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return debug!(reason = %e, "node disconnected"),
        };
        let (shared, conn) = (shared.clone(), conn.clone());
        tokio::spawn(
            async move {
                if let Err(e) = handle(&shared, &conn, node, send, recv).await {
                    debug!(error = %format!("{e:#}"), "request failed");
                }
            }
            .in_current_span(),
        );
    }
}

async fn read_request(
    recv: &mut RecvStream,
    dec: &mut Decoder,
) -> anyhow::Result<Option<TrackerRequest>> {
    loop {
        if let Some(f) = dec.decode::<TrackerRequest>()? {
            return Ok(Some(f));
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(c) => dec.feed(&c.bytes),
            None => return Ok(None),
        }
    }
}

fn refuse(code: ErrorCode, text: impl std::fmt::Display) -> TrackerResponse {
    TrackerResponse::Error { code, text: text.to_string() }
}

fn index_error(e: IndexError) -> TrackerResponse {
    match e {
        IndexError::NotRegistered => refuse(ErrorCode::NotRegistered, e),
        e => refuse(ErrorCode::BadRequest, e),
    }
}

async fn handle(
    shared: &Shared,
    conn: &Connection,
    proven: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    let req = match read_request(&mut recv, &mut dec).await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) => {
            // Malformed or oversized: this connection only.
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed request");
            return Err(e);
        }
    };
    let claimed = match &req {
        TrackerRequest::Register { node_id, .. }
        | TrackerRequest::Announce { node_id, .. }
        | TrackerRequest::AnnounceDelta { node_id, .. }
        | TrackerRequest::PutManifest { node_id, .. }
        | TrackerRequest::Heartbeat { node_id, .. } => Some(*node_id),
        _ => None,
    };
    let now = now_ms();
    let m = &shared.metrics;
    let (reply, raw): (TrackerResponse, Option<Vec<u8>>) = if claimed.is_some_and(|c| c != proven) {
        m.forged.fetch_add(1, Ordering::Relaxed);
        warn!(claimed = %claimed.expect("some"), %proven, "refused a request for another node id");
        (
            refuse(
                ErrorCode::Forged,
                format!(
                    "this connection is authenticated as {proven}, not as the node it speaks for"
                ),
            ),
            None,
        )
    } else {
        match req {
            TrackerRequest::Register { version, role, mut addrs, .. } => {
                m.registers.fetch_add(1, Ordering::Relaxed);
                if version != shoal_wire::tracker::TRACKER_VERSION {
                    (
                        refuse(
                            ErrorCode::BadRequest,
                            format!("tracker protocol version {version} is not supported"),
                        ),
                        None,
                    )
                } else {
                    // An address bound to every interface is reachable at the one it came from.
                    let remote = conn.remote_address();
                    for a in &mut addrs {
                        if a.ip().is_unspecified() {
                            a.set_ip(remote.ip());
                        }
                    }
                    let (ops, heartbeat_ms) = {
                        let mut ix = shared.index();
                        (ix.register(now, proven, role, addrs), ix.config().heartbeat_ms)
                    };
                    shared.persist(&ops);
                    (TrackerResponse::Registered { heartbeat_ms }, None)
                }
            }
            TrackerRequest::Announce { content, bitfield, .. } => {
                m.announces.fetch_add(1, Ordering::Relaxed);
                let r = shared.index().announce(now, proven, content, bitfield);
                match r {
                    Ok((need, ops)) => {
                        shared.persist(&ops);
                        (
                            if need { TrackerResponse::NeedManifest } else { TrackerResponse::Ok },
                            None,
                        )
                    }
                    Err(e) => (index_error(e), None),
                }
            }
            TrackerRequest::AnnounceDelta { content, pieces, .. } => {
                m.announces.fetch_add(1, Ordering::Relaxed);
                let r = shared.index().announce_delta(now, proven, content, &pieces);
                match r {
                    Ok(ops) => {
                        shared.persist(&ops);
                        (TrackerResponse::Ok, None)
                    }
                    Err(e) => (index_error(e), None),
                }
            }
            TrackerRequest::PutManifest { content, len, .. } => {
                let mut bytes = dec.take_rest().to_vec();
                if bytes.len() > len as usize {
                    bail!("manifest longer than announced");
                }
                let have = bytes.len();
                bytes.resize(len as usize, 0);
                recv.read_exact(&mut bytes[have..]).await.context("reading manifest")?;
                let r = shared.index().put_manifest(content, bytes);
                match r {
                    Ok(ops) => {
                        shared.persist(&ops);
                        (TrackerResponse::Ok, None)
                    }
                    Err(e) => (index_error(e), None),
                }
            }
            TrackerRequest::Heartbeat { load, .. } => {
                m.heartbeats.fetch_add(1, Ordering::Relaxed);
                let r = shared.index().heartbeat_plan(now, proven, load);
                match r {
                    Ok((ops, plan)) => {
                        shared.persist(&ops);
                        if !plan.directives.is_empty() {
                            debug!(directives = plan.directives.len(), "re-seed orders issued");
                        }
                        let directives = shared.sign(proven, plan.directives);
                        (TrackerResponse::HeartbeatReply { stored: plan.stored, directives }, None)
                    }
                    Err(e) => (index_error(e), None),
                }
            }
            TrackerRequest::FindStorage => {
                let nodes = shared
                    .index()
                    .storage_nodes()
                    .into_iter()
                    .map(|(node_id, addrs)| StorageNode { node_id, addrs })
                    .collect();
                (TrackerResponse::StorageNodes { nodes }, None)
            }
            TrackerRequest::Lookup { content, max_peers, have } => {
                m.lookups.fetch_add(1, Ordering::Relaxed);
                let max = (max_peers as usize).min(MAX_LOOKUP_PEERS);
                let mut ix = shared.index();
                let asker = ix.is_registered(proven).then_some(proven);
                match ix.lookup(asker, content, have.as_ref(), max) {
                    Some(l) => (
                        TrackerResponse::LookupReply {
                            piece_count: l.piece_count,
                            peers: l.peers,
                            hints: l.hints,
                        },
                        None,
                    ),
                    None => (TrackerResponse::Unknown, None),
                }
            }
            TrackerRequest::GetManifest { content } => match shared.index().manifest(content) {
                Some(bytes) => {
                    (TrackerResponse::Manifest { len: bytes.len() as u32 }, Some(bytes.to_vec()))
                }
                None => (TrackerResponse::Unknown, None),
            },
            _ => (refuse(ErrorCode::BadRequest, "unknown request"), None),
        }
    };
    send.write_all(&encode(&reply)).await?;
    if let Some(raw) = raw {
        send.write_all(&raw).await?;
    }
    send.finish()?;
    Ok(())
}
