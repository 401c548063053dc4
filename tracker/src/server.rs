//! The tracker's QUIC service.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_core::NodeId;
use shoal_index::{Index, Persist, SledState};
use shoal_net::framed::{read_frame_within, ReadError};
use shoal_wire::tracker::{
    Directive, ReseedToken, StorageNode, TrackerRequest, MAX_REQUESTS_PER_STREAM,
    MAX_TRACKER_REQUEST_LEN,
};
use shoal_wire::{encode_into, Decoder};
use tokio::sync::Semaphore;
use tracing::{debug, warn, Instrument};

mod dispatch;
mod links;

/// Connections the tracker serves at once.
const MAX_CONNECTIONS: usize = 4096;
/// Requests one connection may have in progress at once; further streams wait in QUIC flow
/// control until one finishes.
const STREAMS_PER_CONNECTION: usize = 16;
/// How long a node may take to send a whole request frame (and a manifest body).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a request stream is read for, whatever it carries (then it is ended as after
/// its last request).
const STREAM_DEADLINE: Duration = Duration::from_secs(30);
/// Manifest body bytes being read at once, over all connections: bounds the memory a crowd
/// of slow uploaders can hold.
const MANIFEST_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;
/// Answer bytes buffered before they are written even though more requests are waiting: a
/// stream's memory stays bounded however many requests arrive together.
const FLUSH_AT: usize = 64 * 1024;
/// Lookups answered under one taking of the index lock, at most: a batch holds the lock about
/// a millisecond (32 lookups of about 30 µs), so others' requests wait little longer.
const LOOKUP_BATCH: usize = 32;
/// Close code for a connection that sent a malformed frame.
const CLOSE_PROTOCOL: u32 = 1;

/// The source a request counts as: its address, an IPv6 one by its /64 (as the index's rate
/// limits count it).
pub(crate) fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    shoal_index::source_key(ip)
}

pub(crate) use crate::clock::now_ms;

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
    /// Requests refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Storage claims from nodes the operator did not admit.
    pub unadmitted_storage: AtomicU64,
    /// Reports of holders that never delivered.
    pub reports: AtomicU64,
    /// (announces/s, lookups/s) over the last ten seconds. Held only to read or replace.
    pub rates: Mutex<(f64, f64)>,
}

/// Where the index's changes go.
#[derive(Debug)]
pub(crate) enum Backend {
    /// The embedded store (`--backend sled`, the default).
    Sled(SledState),
    /// Redis, shared with other replicas: changes queue for the writer thread.
    Redis(Arc<crate::replicas::Writer>),
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The index. Held only for one index call, never across an await.
    pub index: Arc<RwLock<Index>>,
    state: Backend,
    /// The tracker's key, which signs re-seed tokens.
    identity: shoal_net::Identity,
    /// Counters.
    pub metrics: Metrics,
    /// Permits for manifest body bytes being read (see [`MANIFEST_BYTES_IN_FLIGHT`]).
    manifest_bytes: Arc<tokio::sync::Semaphore>,
    /// Offline download sources by id (the operator's `--offline-source ID=URL`).
    pub(crate) sources: std::collections::HashMap<String, String>,
    /// Checks of nodes' links on other IPs.
    links: links::Links,
    /// Latencies, directive counts and the snapshot behind the metrics and admin views.
    pub(crate) obs: crate::metrics::Observed,
}

impl Shared {
    pub(crate) fn new(
        index: Arc<RwLock<Index>>,
        state: Backend,
        identity: shoal_net::Identity,
        sources: std::collections::HashMap<String, String>,
        endpoint: shoal_net::Endpoint,
    ) -> Self {
        Self {
            sources,
            obs: crate::metrics::Observed::new(identity.node_id(), endpoint.clone()),
            links: links::Links::new(endpoint),
            index,
            state,
            identity,
            metrics: Metrics::default(),
            manifest_bytes: Arc::new(tokio::sync::Semaphore::new(MANIFEST_BYTES_IN_FLIGHT)),
        }
    }

    /// Turns planned re-seed orders into directives with signed tokens.
    pub(crate) fn sign(
        &self,
        proven: NodeId,
        planned: Vec<shoal_index::Planned>,
    ) -> Vec<Directive> {
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

    /// The index, held exclusively: for anything that changes it.
    pub(crate) fn index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The index, shared: lookups (which lock the one swarm they rank), rate checks and
    /// views run side by side under it.
    pub(crate) fn index_read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn persist(&self, ops: &[Persist]) {
        self.persist_from(ops, false);
    }

    /// Persists changes; `expiry`: made by expiry (other replicas expire on their own).
    fn persist_from(&self, ops: &[Persist], expiry: bool) {
        match &self.state {
            Backend::Sled(state) => {
                if let Err(e) = state.apply(ops) {
                    warn!(error = %e, "cannot persist tracker state");
                }
            }
            Backend::Redis(writer) => writer.push(ops, expiry),
        }
    }

    /// Makes what was persisted durable (sled); Redis is written as changes come.
    pub(crate) fn flush(&self) {
        if let Backend::Sled(state) = &self.state {
            if let Err(e) = state.flush() {
                warn!(error = %e, "cannot flush tracker state");
            }
        }
    }

    /// At shutdown: what waits for Redis is written (for a few seconds at most).
    pub(crate) fn close(&self) {
        match &self.state {
            Backend::Sled(_) => self.flush(),
            Backend::Redis(writer) => writer.close(Duration::from_secs(3)),
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
            debug!(changes = ops.len(), "expired silent nodes and idle swarms");
            shared.persist_from(&ops, true);
        }
        crate::metrics::refresh(&shared, now_ms());
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
    let streams = Arc::new(Semaphore::new(STREAMS_PER_CONNECTION));
    loop {
        // Accept a stream only with a free slot: the node's further streams wait in QUIC.
        let Ok(permit) = streams.clone().acquire_owned().await else { return };
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
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// Serves one request stream: requests one after another (pipelining, protocol version 3),
/// each within [`REQUEST_DEADLINE`], answered in order; at most [`MAX_REQUESTS_PER_STREAM`],
/// and none read after [`STREAM_DEADLINE`] (a node dripping requests cannot hold one of its
/// connection's streams for 256 request deadlines).
/// Answers to requests that arrived together are written together: the buffer is flushed when
/// the next request is not here yet, or when it holds [`FLUSH_AT`] bytes.
async fn handle(
    shared: &Arc<Shared>,
    conn: &Connection,
    proven: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let mut dec = Decoder::with_limit(MAX_TRACKER_REQUEST_LEN);
    let mut out = Vec::new();
    let ends = tokio::time::Instant::now() + STREAM_DEADLINE;
    // A request decoded while gathering a batch of lookups, answered next.
    let mut next: Option<TrackerRequest> = None;
    let mut handled = 0;
    while handled < MAX_REQUESTS_PER_STREAM {
        let decoded = match next.take() {
            Some(r) => Ok(Some(r)),
            None => dec.decode::<TrackerRequest>(),
        };
        let req = match decoded {
            Ok(Some(r)) => Some(r),
            // Not here yet: what is answered goes out before the tracker waits.
            Ok(None) => {
                flush(&mut send, &mut out).await?;
                let left = ends.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let wait = left.min(REQUEST_DEADLINE);
                let read =
                    read_frame_within::<TrackerRequest>(&mut recv, &mut dec, wait, "request");
                match read.await {
                    Ok(r) => r,
                    // An end of stream inside a frame is the node giving up: nothing to answer.
                    Err(ReadError::Truncated) => return Ok(()),
                    // The stream's time is up: ended like a full one.
                    Err(ReadError::Stalled(_)) if wait < REQUEST_DEADLINE => break,
                    Err(ReadError::Stalled(_)) => {
                        let _ = recv.stop(VarInt::from_u32(0));
                        anyhow::bail!("no whole request within {REQUEST_DEADLINE:?}");
                    }
                    Err(e) => return Err(malformed(conn, e.into())),
                }
            }
            Err(e) => return Err(malformed(conn, e.into())),
        };
        // A clean end of stream: every request was answered.
        let Some(req) = req else { return finish(&mut send, &mut out).await };
        if matches!(req, TrackerRequest::Lookup { .. }) {
            // Lookups that arrived together are answered under one taking of the index lock.
            let mut batch = vec![req];
            while batch.len() < LOOKUP_BATCH && handled + batch.len() < MAX_REQUESTS_PER_STREAM {
                match dec.decode::<TrackerRequest>() {
                    Ok(Some(r @ TrackerRequest::Lookup { .. })) => batch.push(r),
                    Ok(Some(r)) => {
                        next = Some(r);
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(malformed(conn, e.into())),
                }
            }
            handled += batch.len();
            for reply in dispatch::lookups(shared, conn.remote_address(), proven, batch) {
                encode_into(&reply.0, &mut out);
            }
            if out.len() >= FLUSH_AT {
                flush(&mut send, &mut out).await?;
            }
            continue;
        }
        handled += 1;
        // A manifest upload ends its stream: its body may go unread (known already, refused),
        // so nothing after it can be told from the body.
        let last = matches!(req, TrackerRequest::PutManifest { .. });
        let remote = conn.remote_address();
        let (reply, raw) =
            dispatch::dispatch(shared, remote, proven, req, &mut dec, &mut recv).await?;
        encode_into(&reply, &mut out);
        if let Some(raw) = raw {
            flush(&mut send, &mut out).await?;
            // The shared bytes themselves go into the send buffer: no copy per request.
            write_raw(&mut send, raw).await?;
        } else if out.len() >= FLUSH_AT {
            flush(&mut send, &mut out).await?;
        }
        if last {
            break;
        }
    }
    // The most a stream carries, its deadline, or a manifest upload: further requests on it
    // are not read (the node opens another stream).
    let _ = recv.stop(VarInt::from_u32(0));
    finish(&mut send, &mut out).await
}

/// Closes the connection of a node that sent a malformed or oversized frame: this connection
/// only.
fn malformed(conn: &Connection, e: anyhow::Error) -> anyhow::Error {
    conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed request");
    e
}

/// Writes the buffered answers, keeping the buffer for the next ones. A node that does not
/// read its answers loses the stream, not the tracker's memory: each write must be taken
/// within [`REQUEST_DEADLINE`].
async fn flush(send: &mut SendStream, out: &mut Vec<u8>) -> anyhow::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let written = tokio::time::timeout(REQUEST_DEADLINE, send.write_all(out)).await;
    out.clear();
    // A stream waiting for its next request keeps no more than an ordinary batch.
    out.shrink_to(FLUSH_AT);
    in_time(send, written)
}

/// Writes raw bytes that follow an answer (a manifest), within [`REQUEST_DEADLINE`].
async fn write_raw(send: &mut SendStream, raw: Bytes) -> anyhow::Result<()> {
    let written = tokio::time::timeout(REQUEST_DEADLINE, send.write_chunk(raw)).await;
    in_time(send, written)
}

/// A write's outcome; one past the deadline resets the stream.
fn in_time(
    send: &mut SendStream,
    written: Result<Result<(), quinn::WriteError>, tokio::time::error::Elapsed>,
) -> anyhow::Result<()> {
    match written {
        Ok(r) => Ok(r?),
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(0));
            anyhow::bail!("answer not read within {REQUEST_DEADLINE:?}")
        }
    }
}

/// Writes what is buffered, then the end of the stream.
async fn finish(send: &mut SendStream, out: &mut Vec<u8>) -> anyhow::Result<()> {
    flush(send, out).await?;
    send.finish()?;
    Ok(())
}
