//! Downloading one content from many peers at once.
//!
//! One driver task owns the [`Picker`] and reacts to events: results of piece requests (each on
//! its own QUIC stream, several in flight per peer) and bitfields and haves from the peers'
//! control streams. Piece bytes are hashed and written by the store only if they match; the
//! verified set becomes durable at checkpoints, once a second.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use quinn::{Connection, VarInt};
use serde::{Deserialize, Serialize};
use shoal_core::{Manifest, NodeId, PeerAddr, PieceIndex, Ticket};
use shoal_net::RateLimiter;
use shoal_store::StoreError;
use shoal_swarm::{Picker, Verdict};
use shoal_wire::RejectReason;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::node::Node;
use crate::serve::{PeerEvent, CLOSE_BANNED};
use crate::tracker;

mod requests;
use requests::{connect_all, fetch_manifest, open_control, request_piece};

/// How long a fetch waits for a tracker connection at start.
const TRACKER_WAIT: Duration = Duration::from_secs(3);
/// How often a running fetch asks the tracker for new holders and hints.
const LOOKUP_EVERY: Duration = Duration::from_secs(2);
/// Peers asked for per lookup.
const LOOKUP_PEERS: u8 = 32;
/// With a tracker, how long a fetch waits without progress before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);

type LookupResult = (Vec<shoal_wire::tracker::PeerInfo>, Vec<PieceIndex>);
type DialResult = (PeerAddr, Result<(Connection, NodeId), String>);

/// Bytes in flight per peer that the pipeline aims for.
const PIPELINE_BYTES: u64 = 16 * 1024 * 1024;

/// What to fetch and where to.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The ticket.
    pub ticket: Ticket,
    /// Peers given besides the ticket's.
    pub extra_peers: Vec<PeerAddr>,
    /// The output path.
    pub output: PathBuf,
    /// A cap for this fetch only (on top of the node's).
    pub limit: Option<u64>,
    /// A tracker to use besides the ticket's (which it overrides).
    pub tracker: Option<String>,
}

/// Progress of a fetch, published several times a second.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// The file name.
    pub name: String,
    /// The file size.
    pub size: u64,
    /// Pieces verified.
    pub pieces_done: u32,
    /// Pieces in the content.
    pub pieces_total: u32,
    /// Bytes verified.
    pub bytes_done: u64,
    /// Bytes received from the network in this run.
    pub downloaded_bytes: u64,
    /// Peers currently used.
    pub peers: usize,
    /// Receive rate, bytes per second, smoothed.
    pub rate: f64,
    /// Something the user should know (a tracker that does not answer, say).
    #[serde(default)]
    pub warning: Option<String>,
}

/// Per-peer figures of a fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer's node id.
    pub node_id: String,
    /// The address used.
    pub addr: String,
    /// Verified pieces received from it.
    pub pieces: u32,
    /// Piece bytes received from it (good or bad).
    pub bytes: u64,
    /// True if it was banned for bad data.
    pub banned: bool,
}

/// The outcome of a fetch, as `shoal get --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchReport {
    /// The content id.
    pub content_id: String,
    /// The file size.
    pub size: u64,
    /// Bytes received from the network in this run.
    pub downloaded_bytes: u64,
    /// Wall time of the fetch.
    pub seconds: f64,
    /// Pieces that failed verification.
    pub bad_pieces: u64,
    /// Every peer used.
    pub peers: Vec<PeerReport>,
    /// Pieces already verified when this run started (a resume).
    pub resumed_pieces: u32,
    /// Where the file is.
    pub path: String,
}

struct PeerState {
    conn: Connection,
    addr: SocketAddr,
    pieces: u32,
    bytes: u64,
    banned: bool,
    /// Bitfield not yet received.
    pending: bool,
    /// Gone, rejected or banned: no more requests.
    done: Option<String>,
    /// Requests this peer may have in flight: starts at [`INITIAL_WINDOW`], grows by one per
    /// verified piece up to the pipeline depth and drops to one after a bad piece, so a peer
    /// that has not proven itself (a corrupter, say) wastes exactly its two strikes.
    window: usize,
}

/// Requests in flight to a peer before it has delivered a verified piece.
const INITIAL_WINDOW: usize = 2;

impl PeerState {
    fn new(conn: Connection, addr: SocketAddr) -> Self {
        Self {
            conn,
            addr,
            pieces: 0,
            bytes: 0,
            banned: false,
            pending: true,
            done: None,
            window: INITIAL_WINDOW,
        }
    }
}

enum Outcome {
    Verified,
    Bad,
    Rejected(RejectReason, String),
    Failed(String),
    Fatal(StoreError),
}

struct Done {
    peer: NodeId,
    piece: PieceIndex,
    bytes: u64,
    outcome: Outcome,
}

/// Fetches a content. Returns when the file is at its output path, or with an error that says
/// what happened; verified pieces are kept for a resume either way. Cancel-safe: dropping the
/// future keeps what was verified.
pub async fn fetch(
    node: Arc<Node>,
    req: FetchRequest,
    progress: watch::Sender<Progress>,
) -> anyhow::Result<FetchReport> {
    let started = Instant::now();
    let content = req.ticket.content;
    let limit = RateLimiter::new(req.limit);
    let mut candidates: Vec<PeerAddr> =
        req.ticket.peers.iter().chain(&req.extra_peers).copied().collect();
    let tracker = node.tracker_for_fetch(&req.ticket, req.tracker.as_deref());
    let mut warning = None;
    let mut hints = Vec::new();
    let mut tracker_conn = None;
    if let Some(t) = &tracker {
        match t.connection(TRACKER_WAIT).await {
            Ok(c) => tracker_conn = Some(c),
            Err(e) => {
                let w =
                    format!("tracker {} is unreachable ({e}); using the ticket's peers", t.addr);
                warn!("{w}");
                warning = Some(w);
            }
        }
    }
    if let Some(c) = &tracker_conn {
        match tracker::lookup(c, content, None, LOOKUP_PEERS).await {
            Ok(Some((found, h))) => {
                candidates.extend(found.iter().flat_map(|p| {
                    p.addrs.iter().map(|&addr| PeerAddr { node_id: Some(p.node_id), addr })
                }));
                hints = h;
            }
            Ok(None) => {
                debug!(content = %content.fmt_short(), "the tracker does not know this content")
            }
            Err(e) => warn!(error = %format!("{e:#}"), "tracker lookup failed"),
        }
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|p| seen.insert(p.addr) && p.node_id != Some(node.node_id()));
    if candidates.is_empty() {
        if tracker.is_some() {
            bail!(
                "no peers: the ticket names none and the tracker knows none for content {content}"
            );
        }
        bail!("the ticket names no peers and no --peer was given: add --peer IP:PORT of a node that has the file");
    }
    let mut peers = match connect_all(&node, &candidates).await {
        Ok(p) => p,
        // With a tracker, peers found by later lookups can still serve the fetch.
        Err(e) if tracker_conn.is_some() => {
            warn!(error = %format!("{e:#}"), "no peer reachable yet; waiting for the tracker's");
            BTreeMap::new()
        }
        Err(e) => return Err(e),
    };
    let mut downloaded = 0u64;

    let manifest = match node.store.manifest(content)? {
        Some(m) => m,
        None => match fetch_manifest(&peers, content).await {
            Ok((m, n)) => {
                downloaded += n;
                node.stats.downloaded_bytes.fetch_add(n, Ordering::Relaxed);
                Arc::new(m)
            }
            Err(e) => {
                let Some(c) = &tracker_conn else { return Err(e) };
                let bytes = tracker::manifest(c, content).await?.ok_or(e)?;
                downloaded += bytes.len() as u64;
                node.stats.downloaded_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                match Manifest::decode(&bytes) {
                    Ok(m) if m.content_id() == content => Arc::new(m),
                    _ => bail!("the tracker sent a manifest that does not match content {content}"),
                }
            }
        },
    };
    let store = node.store.clone();
    let (m2, out) = (manifest.clone(), req.output.clone());
    let dl = Arc::new(tokio::task::spawn_blocking(move || store.begin_download(m2, &out)).await??);
    let resumed = dl.resumed_pieces();
    if resumed > 0 {
        info!(content = %content.fmt_short(), resumed, total = manifest.piece_count(), "resuming");
    }
    // Tell the tracker at once that we hold (part of) this content, so others find us.
    let _ = node.contents_changed.send(content);
    let mut picker = Picker::new(dl.have(), fastrand::u64(..));
    picker.set_hints(&hints);
    let pipeline = (PIPELINE_BYTES / manifest.piece_size()).clamp(2, 32) as usize;

    let (ev_tx, mut ev_rx) = mpsc::channel::<PeerEvent>(1024);
    let mut controls = JoinSet::new();
    if !picker.is_complete() {
        for (&id, p) in &peers {
            controls.spawn(open_control(
                node.clone(),
                p.conn.clone(),
                id,
                content,
                manifest.piece_count(),
                ev_tx.clone(),
            ));
        }
    }

    let mut requests: JoinSet<Done> = JoinSet::new();
    let mut lookups: JoinSet<anyhow::Result<Option<LookupResult>>> = JoinSet::new();
    let mut dials: JoinSet<DialResult> = JoinSet::new();
    let mut dialing: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
    let mut lookup_tick = tokio::time::interval(LOOKUP_EVERY);
    lookup_tick.reset();
    let mut last_progress = Instant::now();
    let mut aborts: HashMap<(NodeId, PieceIndex), AbortHandle> = HashMap::new();
    let mut bad_pieces = 0u64;
    let mut checkpoint = tokio::time::interval(Duration::from_secs(1));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut rate = RateMeter::new();

    while !picker.is_complete() {
        for (&id, p) in peers.iter() {
            if p.done.is_some() || p.pending {
                continue;
            }
            while picker.in_flight(id) < p.window.min(pipeline) {
                let Some(r) = picker.next_request(id) else {
                    break;
                };
                let job = request_piece(
                    p.conn.clone(),
                    id,
                    content,
                    r.piece,
                    manifest.piece_len(r.piece),
                    dl.clone(),
                    node.clone(),
                    limit.clone(),
                );
                aborts.insert((id, r.piece), requests.spawn(job));
            }
        }
        let idle = requests.is_empty()
            && dials.is_empty()
            && !peers.values().any(|p| p.pending && p.done.is_none());
        // With a tracker, new holders may still turn up: wait for them until the stall limit.
        if idle && (tracker.is_none() || last_progress.elapsed() > STALL_LIMIT) {
            let have = picker.have().count();
            let total = manifest.piece_count();
            let reasons: Vec<String> = peers
                .iter()
                .filter_map(|(id, p)| {
                    p.done.as_ref().map(|d| format!("{} ({}): {d}", p.addr, id.fmt_short()))
                })
                .collect();
            if tracker.is_some() {
                bail!(
                    "no progress for {}s: no reachable peer has the {} missing pieces ({have}/{total} verified and kept: run the same command again to resume)",
                    STALL_LIMIT.as_secs(),
                    total - have
                );
            }
            if peers.values().all(|p| p.done.is_some()) {
                bail!(
                    "lost every peer with {have}/{total} pieces verified (kept: run the same command again to resume): {}",
                    reasons.join("; ")
                );
            }
            bail!(
                "no connected peer has the {} missing pieces ({have}/{total} verified and kept for a resume)",
                total - have
            );
        }
        tokio::select! {
            biased;
            Some(joined) = requests.join_next() => {
                let Ok(done) = joined else { continue }; // cancelled endgame duplicate
                aborts.remove(&(done.peer, done.piece));
                downloaded += done.bytes;
                node.stats.downloaded_bytes.fetch_add(done.bytes, Ordering::Relaxed);
                rate.add(done.bytes);
                let Some(p) = peers.get_mut(&done.peer) else { continue };
                p.bytes += done.bytes;
                match done.outcome {
                    Outcome::Verified => {
                        last_progress = Instant::now();
                        p.pieces += 1;
                        p.window = (p.window + 1).min(pipeline);
                        for other in picker.piece_verified(done.peer, done.piece) {
                            if let Some(h) = aborts.remove(&(other, done.piece)) {
                                h.abort();
                            }
                        }
                        let _ = node.haves.send((content, done.piece));
                    }
                    Outcome::Bad => {
                        bad_pieces += 1;
                        // A peer on a strike gets one request at a time until it proves itself.
                        p.window = 1;
                        node.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                        if picker.piece_failed(done.peer, done.piece) == Verdict::Banned && !p.banned {
                            warn!(peer = %done.peer, addr = %p.addr, "peer sent bad data twice; banned");
                            p.banned = true;
                            p.done = Some("banned for sending bad data".into());
                            p.conn.close(VarInt::from_u32(CLOSE_BANNED), b"sent bad data");
                            aborts.retain(|&(peer, _), h| {
                                if peer == done.peer {
                                    h.abort();
                                }
                                peer != done.peer
                            });
                        } else {
                            warn!(peer = %done.peer, piece = %done.piece, "piece failed verification");
                        }
                    }
                    Outcome::Rejected(reason, text) => {
                        picker.request_failed(done.peer, done.piece);
                        if reason != RejectReason::Busy {
                            debug!(peer = %done.peer, ?reason, %text, "peer refused a piece");
                            picker.remove_peer(done.peer);
                            p.done = Some(format!("refused: {text}"));
                        }
                    }
                    Outcome::Failed(e) => {
                        picker.request_failed(done.peer, done.piece);
                        if p.done.is_none() {
                            debug!(peer = %done.peer, error = %e, "peer failed");
                            picker.remove_peer(done.peer);
                            p.done = Some(e);
                        }
                    }
                    Outcome::Fatal(e) => {
                        let dl = dl.clone();
                        let _ = tokio::task::spawn_blocking(move || dl.checkpoint()).await;
                        return Err(e.into());
                    }
                }
            }
            Some(ev) = ev_rx.recv() => handle_event(&mut picker, &mut peers, ev),
            Some(joined) = dials.join_next() => {
                let Ok((p, result)) = joined else { continue };
                if let Some(id) = p.node_id {
                    dialing.remove(&id);
                }
                match result {
                    Ok((conn, id)) if id != node.node_id() && !peers.contains_key(&id) => {
                        debug!(peer = %id, addr = %p.addr, "connected to a peer from the tracker");
                        controls.spawn(open_control(node.clone(), conn.clone(), id, content, manifest.piece_count(), ev_tx.clone()));
                        peers.insert(id, PeerState::new(conn, p.addr));
                    }
                    Ok((conn, _)) => conn.close(VarInt::from_u32(0), b"duplicate"),
                    Err(e) => debug!(addr = %p.addr, error = %e, "cannot reach a peer from the tracker"),
                }
            }
            Some(joined) = lookups.join_next() => {
                match joined {
                    Ok(Ok(Some((found, h)))) => {
                        picker.set_hints(&h);
                        for info in found {
                            if info.node_id == node.node_id() || peers.contains_key(&info.node_id) || !dialing.insert(info.node_id) {
                                continue;
                            }
                            let Some(&addr) = info.addrs.first() else { continue };
                            let target = PeerAddr { node_id: Some(info.node_id), addr };
                            let node = node.clone();
                            dials.spawn(async move {
                                let r = node.endpoint.connect(&target, shoal_wire::ALPN).await.map_err(|e| e.to_string());
                                (target, r)
                            });
                        }
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => debug!(error = %format!("{e:#}"), "tracker lookup failed"),
                    Err(_) => {}
                }
            }
            _ = lookup_tick.tick(), if tracker.is_some() && lookups.is_empty() => {
                if let Some(c) = tracker.as_ref().and_then(|t| t.current()) {
                    let have = picker.have().clone();
                    lookups.spawn(async move { tracker::lookup(&c, content, Some(have), LOOKUP_PEERS).await });
                }
            }
            _ = checkpoint.tick() => {
                let dl = dl.clone();
                tokio::task::spawn_blocking(move || dl.checkpoint()).await??;
            }
            _ = tick.tick() => {
                let mut snap = snapshot(&manifest, &picker, &peers, downloaded, rate.rate());
                snap.warning = warning.clone();
                let _ = progress.send(snap);
            }
        }
    }
    requests.abort_all();
    controls.abort_all();
    dials.abort_all();
    lookups.abort_all();
    // The final line shows the run's average rate (the smoothed one may have no sample yet).
    let average = downloaded as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let _ = progress.send(snapshot(&manifest, &picker, &peers, downloaded, average));
    // Aborted request tasks may still have a write running on a blocking thread; `finish`
    // makes any such late write a no-op.
    let path = {
        let dl = dl.clone();
        tokio::task::spawn_blocking(move || dl.finish()).await??
    };
    for (id, p) in &peers {
        let st = p.conn.stats();
        debug!(
            peer = %id,
            mtu = st.path.current_mtu,
            rtt_us = st.path.rtt.as_micros() as u64,
            cwnd = st.path.cwnd,
            lost = st.path.lost_packets,
            udp_rx = st.udp_rx.datagrams,
            "connection stats"
        );
        if !p.banned {
            p.conn.close(VarInt::from_u32(0), b"done");
        }
    }
    let report = FetchReport {
        content_id: content.to_string(),
        size: manifest.size(),
        downloaded_bytes: downloaded,
        seconds: started.elapsed().as_secs_f64(),
        bad_pieces,
        peers: peers
            .iter()
            .map(|(id, p)| PeerReport {
                node_id: id.to_string(),
                addr: p.addr.to_string(),
                pieces: p.pieces,
                bytes: p.bytes,
                banned: p.banned,
            })
            .collect(),
        resumed_pieces: resumed,
        path: path.display().to_string(),
    };
    info!(content = %content.fmt_short(), size = report.size, seconds = report.seconds, "fetch complete");
    Ok(report)
}

fn handle_event(
    picker: &mut Picker<NodeId>,
    peers: &mut BTreeMap<NodeId, PeerState>,
    ev: PeerEvent,
) {
    match ev {
        PeerEvent::Bitfield(id, b) => {
            if let Some(p) = peers.get_mut(&id) {
                p.pending = false;
                picker.add_peer(id, b);
            }
        }
        PeerEvent::Have(id, piece) => picker.peer_has(id, piece),
        PeerEvent::Rejected(id, reason, text) => {
            if let Some(p) = peers.get_mut(&id) {
                p.pending = false;
                p.done.get_or_insert(format!("refused the content ({reason:?}: {text})"));
            }
        }
        PeerEvent::Closed(id, why) => {
            if let Some(p) = peers.get_mut(&id) {
                p.pending = false;
                p.done.get_or_insert(why);
                picker.remove_peer(id);
            }
        }
    }
}

fn snapshot(
    m: &Manifest,
    picker: &Picker<NodeId>,
    peers: &BTreeMap<NodeId, PeerState>,
    downloaded: u64,
    rate: f64,
) -> Progress {
    let have = picker.have();
    let bytes_done = have.iter_ones().map(|i| m.piece_len(i)).sum();
    Progress {
        name: m.name().to_string(),
        size: m.size(),
        pieces_done: have.count(),
        pieces_total: have.len(),
        bytes_done,
        downloaded_bytes: downloaded,
        peers: peers.values().filter(|p| p.done.is_none()).count(),
        rate,
        warning: None,
    }
}

/// A receive rate smoothed over about two seconds.
struct RateMeter {
    last: Instant,
    acc: u64,
    rate: f64,
}

impl RateMeter {
    fn new() -> Self {
        Self { last: Instant::now(), acc: 0, rate: 0.0 }
    }

    fn add(&mut self, n: u64) {
        self.acc += n;
    }

    fn rate(&mut self) -> f64 {
        let dt = self.last.elapsed().as_secs_f64();
        if dt >= 0.2 {
            let inst = self.acc as f64 / dt;
            self.rate = if self.rate == 0.0 { inst } else { 0.7 * self.rate + 0.3 * inst };
            self.acc = 0;
            self.last = Instant::now();
        }
        self.rate
    }
}
