//! The tracker's QUIC service.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_core::NodeId;
use shoal_index::{Index, Persist, SledState};
use shoal_net::framed::{read_frame_within, ReadError};
use shoal_wire::tracker::{
    Directive, ReseedToken, StorageNode, TrackerRequest, MAX_TRACKER_REQUEST_LEN,
};
use shoal_wire::{encode, Decoder};
use tokio::sync::Semaphore;
use tracing::{debug, warn, Instrument};

mod dispatch;

/// Connections the tracker serves at once.
const MAX_CONNECTIONS: usize = 4096;
/// Requests one connection may have in progress at once; further streams wait in QUIC flow
/// control until one finishes.
const STREAMS_PER_CONNECTION: usize = 16;
/// How long a node may take to send a whole request frame (and a manifest body).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Manifest body bytes being read at once, over all connections: bounds the memory a crowd
/// of slow uploaders can hold.
const MANIFEST_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;
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
    /// Requests refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Storage claims from nodes the operator did not admit.
    pub unadmitted_storage: AtomicU64,
    /// Reports of holders that never delivered.
    pub reports: AtomicU64,
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
    /// Permits for manifest body bytes being read (see [`MANIFEST_BYTES_IN_FLIGHT`]).
    manifest_bytes: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    pub(crate) fn new(index: Index, state: SledState, identity: shoal_net::Identity) -> Self {
        Self {
            index: Mutex::new(index),
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

    pub(crate) fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn persist(&self, ops: &[Persist]) {
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
            debug!(changes = ops.len(), "expired silent nodes and idle swarms");
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

/// Serves one request stream: the frame within [`REQUEST_DEADLINE`], then the answer.
async fn handle(
    shared: &Shared,
    conn: &Connection,
    proven: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let mut dec = Decoder::with_limit(MAX_TRACKER_REQUEST_LEN);
    let read =
        read_frame_within::<TrackerRequest>(&mut recv, &mut dec, REQUEST_DEADLINE, "request");
    let req = match read.await {
        Ok(Some(r)) => r,
        // An end of stream, even inside a frame, is the node giving up: nothing to answer.
        Ok(None) | Err(ReadError::Truncated) => return Ok(()),
        Err(ReadError::Stalled(_)) => {
            let _ = recv.stop(VarInt::from_u32(0));
            anyhow::bail!("no whole request within {REQUEST_DEADLINE:?}");
        }
        Err(e) => {
            // Malformed or oversized: this connection only.
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed request");
            return Err(e.into());
        }
    };
    let (reply, raw) =
        dispatch::dispatch(shared, conn.remote_address(), proven, req, &mut dec, &mut recv).await?;
    // A node that does not read its answer loses the stream, not the tracker's memory.
    let write = async {
        send.write_all(&encode(&reply)).await?;
        if let Some(raw) = raw {
            // The shared bytes themselves go into the send buffer: no copy per request.
            send.write_chunk(raw).await?;
        }
        send.finish()?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(REQUEST_DEADLINE, write).await {
        Ok(r) => r,
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(0));
            anyhow::bail!("answer not read within {REQUEST_DEADLINE:?}")
        }
    }
}
