//! A running node: identity, QUIC endpoint, piece store, limits and counters.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use shoal_core::ticket::TrackerAddr;
use shoal_core::{ContentId, NodeId, PeerAddr, PieceIndex, Ticket};
use shoal_net::{Endpoint, Identity, Limits, RateLimiter};
use shoal_store::Store;
use tokio::sync::broadcast;

use crate::config::NodeConfig;

/// Uploads that may run at once (each holds one piece in memory); further requests wait and
/// are served in super-seeding order (see `upload`).
const UPLOAD_SLOTS: usize = 32;
/// Bytes the uploads in progress may hold together (pieces and manifests being sent). One
/// upload larger than this (a 64 MiB piece) still runs, alone.
const UPLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Requests that may wait for an upload slot; more are answered `Busy` at once.
const UPLOAD_WAITERS: usize = 1024;

/// The shape of a content this node holds: enough to check a request against its manifest
/// before spending anything on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// File size in bytes.
    pub(crate) size: u64,
    /// Piece size in bytes.
    pub(crate) piece_size: u64,
    /// Pieces in the content.
    pub(crate) pieces: u32,
}

impl Shape {
    /// The length of piece `p`, or `None` past the end.
    pub(crate) fn piece_len(&self, p: PieceIndex) -> Option<u64> {
        let start = u64::from(p.0).checked_mul(self.piece_size)?;
        (p.0 < self.pieces).then(|| (self.size.saturating_sub(start)).min(self.piece_size))
    }

    /// An upper bound on the encoded manifest's length.
    pub(crate) fn manifest_bound(&self) -> u64 {
        let hashes = 32 * shoal_core::piece::MAX_PIECES as usize;
        let fixed = shoal_core::manifest::MAX_ENCODED_LEN - hashes;
        fixed as u64 + 32 * u64::from(self.pieces)
    }
}

/// Node-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Piece bytes sent to peers.
    pub uploaded_bytes: AtomicU64,
    /// Piece and manifest bytes received from peers.
    pub downloaded_bytes: AtomicU64,
    /// Pieces sent to peers.
    pub pieces_uploaded: AtomicU64,
    /// Received pieces that failed verification.
    pub bad_pieces: AtomicU64,
    /// Pushes refused for want of a valid token (storage nodes).
    pub pushes_refused: AtomicU64,
    /// Piece bytes pushed into storage.
    pub pushed_bytes: AtomicU64,
}

/// Per-content counters: bytes uploaded and peers with a control session about it.
#[derive(Debug, Default)]
pub(crate) struct ContentStats {
    pub(crate) uploaded_bytes: u64,
    /// Sessions per peer (two nodes may hold two sessions, one each way).
    pub(crate) peers: std::collections::HashMap<NodeId, u32>,
}

pub use shoal_control::{ContentStatus, Status};

/// A node.
#[derive(Debug)]
pub struct Node {
    pub(crate) identity: Identity,
    pub(crate) endpoint: Endpoint,
    pub(crate) store: Store,
    /// The object store of a storage node.
    pub(crate) cloud: Option<shoal_cloud::CloudStore>,
    /// The pinned node id of this node's own `--tracker` (never a ticket's tracker): re-seed
    /// tokens signed by it count. Held only for set access.
    pub(crate) tracker_ids: std::sync::Mutex<std::collections::HashSet<NodeId>>,
    /// Contents the tracker reported complete in storage. Held only for set access.
    pub(crate) stored: std::sync::Mutex<std::collections::HashSet<ContentId>>,
    /// Contents with a re-seed push under way. Held only for set access.
    pub(crate) reseeding: std::sync::Mutex<std::collections::HashSet<ContentId>>,
    pub(crate) upload: RateLimiter,
    pub(crate) download: RateLimiter,
    pub(crate) corrupt: f64,
    /// Testing only: advertise full bitfields (see `NodeConfig::danger_lie_bitfield`).
    pub(crate) lie: bool,
    pub(crate) stats: Stats,
    /// Newly verified pieces, for the control streams of peers subscribed to them and for
    /// tracker deltas.
    pub(crate) haves: broadcast::Sender<(ContentId, PieceIndex)>,
    /// Contents added or replaced in the store, for full tracker announces.
    pub(crate) contents_changed: broadcast::Sender<ContentId>,
    /// The tracker named at start (`--tracker`, as given), if any; tickets carry it.
    pub(crate) default_tracker: Option<String>,
    /// The same, parsed: its address and the node id it must prove, if given.
    own_tracker: Option<TrackerAddr>,
    /// The client of the own tracker, started on first use. Held only to read or set.
    own_handle: std::sync::Mutex<Option<crate::tracker::TrackerHandle>>,
    pub(crate) uploads: Arc<crate::upload::Uploads>,
    /// Who may push into this node's storage, and the memory budget for push bodies.
    pub(crate) push_gate: crate::storage::PushGate,
    /// Per-content counters. Held only for map updates.
    pub(crate) content_stats: std::sync::Mutex<std::collections::HashMap<ContentId, ContentStats>>,
    pub(crate) data_dir: PathBuf,
}

impl Node {
    /// Opens the data dir (key, store) and binds the QUIC endpoint. Must run inside a tokio
    /// runtime.
    pub fn open(config: &NodeConfig) -> anyhow::Result<Arc<Self>> {
        let dir = &config.data_dir;
        create_data_dir(dir)?;
        let identity = Identity::load_or_create(dir)?;
        let store = Store::open(dir)?;
        let cloud = match &config.storage {
            Some(url) => {
                let objects = shoal_cloud::backend::open(url, &config.s3)?;
                let cloud = shoal_cloud::CloudStore::open(objects, &dir.join("cloud-index"))
                    .context("opening the storage index")?;
                Some(cloud)
            }
            None => None,
        };
        let own_tracker = config
            .tracker
            .as_deref()
            .map(str::parse::<TrackerAddr>)
            .transpose()
            .context("reading --tracker")?;
        // A storage node receives pushed pieces on its serving side; an ordinary node only small
        // frames (see `Limits` for the windows and the memory ceiling they give).
        let limits = if config.storage.is_some() { Limits::storage() } else { Limits::node() };
        let endpoint = Endpoint::bind_with(&identity, config.listen, &[shoal_wire::ALPN], limits)?;
        Ok(Arc::new(Self {
            identity,
            endpoint,
            store,
            cloud,
            tracker_ids: std::sync::Mutex::new(std::collections::HashSet::new()),
            stored: std::sync::Mutex::new(std::collections::HashSet::new()),
            reseeding: std::sync::Mutex::new(std::collections::HashSet::new()),
            upload: RateLimiter::new(config.upload_limit.map(|r| r.0)),
            download: RateLimiter::new(config.download_limit.map(|r| r.0)),
            corrupt: config.danger_corrupt_uploads,
            lie: config.danger_lie_bitfield,
            stats: Stats::default(),
            haves: broadcast::channel(4096).0,
            contents_changed: broadcast::channel(256).0,
            default_tracker: own_tracker.as_ref().map(|t| t.addr.clone()),
            own_tracker,
            own_handle: std::sync::Mutex::new(None),
            uploads: crate::upload::Uploads::new(UPLOAD_SLOTS, UPLOAD_BYTES, UPLOAD_WAITERS),
            push_gate: crate::storage::PushGate::new(config.grants.clone()),
            content_stats: std::sync::Mutex::new(std::collections::HashMap::new()),
            data_dir: dir.clone(),
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Addresses peers can reach this node at: the bound address, or, if bound to every
    /// interface, the address of the default route and loopback.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let Ok(bound) = self.endpoint.local_addr() else {
            return Vec::new();
        };
        if !bound.ip().is_unspecified() {
            return vec![bound];
        }
        let mut out = Vec::new();
        if let Some(ip) = default_route_ip() {
            out.push(SocketAddr::new(ip, bound.port()));
        }
        out.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port()));
        out
    }

    /// A ticket for a content with this node as peer, and the node's tracker if it has one,
    /// pinned to the tracker's node id once known (given with `--tracker ID@..` or proven at
    /// the first connect).
    pub fn ticket(self: &Arc<Self>, content: ContentId) -> Ticket {
        let node_id = Some(self.node_id());
        let peers = self.addrs().into_iter().map(|addr| PeerAddr { node_id, addr }).collect();
        let tracker_id = self.own_tracker().and_then(|h| h.node_id());
        Ticket { content, peers, tracker: self.default_tracker.clone(), tracker_id }
    }

    /// The client of this node's own `--tracker` (full session), started on first use.
    pub fn own_tracker(self: &Arc<Self>) -> Option<crate::tracker::TrackerHandle> {
        let target = self.own_tracker.clone()?;
        let mut own = self.own_handle.lock().unwrap_or_else(|p| p.into_inner());
        let h = own.get_or_insert_with(|| {
            crate::tracker::spawn(self.clone(), target, crate::tracker::Scope::Own)
        });
        Some(h.clone())
    }

    /// True if `target` is this node's own tracker: the same address, and no other id.
    fn is_own_tracker(&self, target: &TrackerAddr) -> bool {
        let Some(own) = &self.own_tracker else { return false };
        let pinned = self
            .own_handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|h| h.node_id())
            .or(own.node_id);
        own.addr == target.addr && (target.node_id.is_none() || target.node_id == pinned)
    }

    /// The client of the tracker at `addr` (`HOST:PORT` or `NODE_ID@HOST:PORT`): the own
    /// tracker's full session if it names it, otherwise a new session scoped to lookups.
    pub fn tracker(self: &Arc<Self>, addr: &str) -> crate::tracker::TrackerHandle {
        let target = addr
            .parse::<TrackerAddr>()
            .unwrap_or_else(|_| TrackerAddr { node_id: None, addr: addr.to_string() });
        self.tracker_session(target, crate::tracker::Scope::Content(None))
    }

    fn tracker_session(
        self: &Arc<Self>,
        target: TrackerAddr,
        scope: crate::tracker::Scope,
    ) -> crate::tracker::TrackerHandle {
        if self.is_own_tracker(&target) {
            if let Some(h) = self.own_tracker() {
                return h;
            }
        }
        crate::tracker::spawn(self.clone(), target, scope)
    }

    /// The tracker a fetch of `ticket` should use: `override_addr` (`get --tracker`) or the
    /// ticket's, pinned to the ticket's tracker id. The own tracker's full session if it is
    /// the same tracker; otherwise a session scoped to this one content that ends when the
    /// returned handle's last clone is dropped. `None` without any tracker.
    pub fn tracker_for_fetch(
        self: &Arc<Self>,
        ticket: &Ticket,
        override_addr: Option<&str>,
    ) -> Option<crate::tracker::TrackerHandle> {
        let target = match override_addr {
            // Both entry points (`shoal get --tracker` and the control API) refuse a malformed
            // address with its reason first; the fallback only keeps this total.
            Some(a) => a
                .parse::<TrackerAddr>()
                .unwrap_or_else(|_| TrackerAddr { node_id: None, addr: a.to_string() }),
            None => TrackerAddr { node_id: ticket.tracker_id, addr: ticket.tracker.clone()? },
        };
        Some(self.tracker_session(target, crate::tracker::Scope::Content(Some(ticket.content))))
    }

    /// Uploads in progress.
    pub fn active_uploads(&self) -> usize {
        self.uploads.active()
    }

    fn content_stats(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<ContentId, ContentStats>> {
        self.content_stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shape of a content this node holds (part of), from its manifest; `None` if it
    /// holds nothing of it. Reads no piece data: the store keeps manifests in memory, the
    /// object store's index keeps size and piece count.
    pub(crate) fn shape(&self, c: ContentId) -> anyhow::Result<Option<Shape>> {
        Ok(match &self.cloud {
            Some(cloud) => cloud.content(c)?.map(|rec| Shape {
                size: rec.size,
                // The piece size is fixed by the file size (part of the canonical manifest).
                piece_size: 1 << shoal_core::piece::piece_log2_for(rec.size),
                pieces: rec.pieces,
            }),
            None => self.store.manifest(c)?.map(|m| Shape {
                size: m.size(),
                piece_size: m.piece_size(),
                pieces: m.piece_count(),
            }),
        })
    }

    /// Counts piece bytes uploaded of a content. Callers count only contents they serve, so
    /// entries exist only for held contents.
    pub(crate) fn count_upload(&self, content: ContentId, bytes: u64) {
        self.content_stats().entry(content).or_default().uploaded_bytes += bytes;
    }

    /// A control session with `peer` about `content` began (`true`) or ended (`false`).
    /// Callers report only contents this node holds or is fetching; an entry with no peers
    /// and no uploads is removed, so nothing outlives its sessions.
    pub(crate) fn peer_session(&self, content: ContentId, peer: NodeId, up: bool) {
        let mut stats = self.content_stats();
        if up {
            *stats.entry(content).or_default().peers.entry(peer).or_default() += 1;
            return;
        }
        let Some(entry) = stats.get_mut(&content) else { return };
        if let Some(n) = entry.peers.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                entry.peers.remove(&peer);
            }
        }
        if entry.peers.is_empty() && entry.uploaded_bytes == 0 {
            stats.remove(&content);
        }
    }

    /// Counters and identity, with the state of every content (reads the store: blocking).
    pub fn status(&self) -> Status {
        let s = &self.stats;
        let entries = self.list().unwrap_or_default();
        let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let contents = {
            let stats = self.content_stats();
            entries
                .into_iter()
                .map(|e| {
                    let id: ContentId = e.content_id.parse().expect("store ids print and parse");
                    let c = stats.get(&id);
                    ContentStatus {
                        stored: stored.contains(&id)
                            || (self.is_storage() && e.state == "complete"),
                        content_id: e.content_id,
                        name: e.name,
                        state: e.state,
                        pieces_have: e.pieces_have,
                        pieces_total: e.pieces_total,
                        peers: c.map_or(0, |c| c.peers.len()),
                        uploaded_bytes: c.map_or(0, |c| c.uploaded_bytes),
                    }
                })
                .collect()
        };
        Status {
            node_id: self.node_id().to_string(),
            addrs: self.addrs().iter().map(|a| a.to_string()).collect(),
            uploaded_bytes: s.uploaded_bytes.load(Ordering::Relaxed),
            downloaded_bytes: s.downloaded_bytes.load(Ordering::Relaxed),
            pieces_uploaded: s.pieces_uploaded.load(Ordering::Relaxed),
            bad_pieces: s.bad_pieces.load(Ordering::Relaxed),
            pushed_bytes: s.pushed_bytes.load(Ordering::Relaxed),
            pushes_refused: s.pushes_refused.load(Ordering::Relaxed),
            role: if self.is_storage() { "storage" } else { "node" }.into(),
            contents,
        }
    }

    /// Starts serving peers in the background.
    pub fn spawn_serving(self: &Arc<Self>) {
        tokio::spawn(crate::serve::accept_loop(self.clone()));
    }

    /// Closes all connections, waiting briefly for them to close cleanly.
    pub async fn close(&self) {
        self.endpoint.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}

/// Creates a data dir (and missing parents) private to its owner: it holds the node key, the
/// control token and the store's metadata, and what a node holds is nobody else's business.
/// An existing directory is left as it is.
pub fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))
}

/// The local address of the default route, found without sending anything.
fn default_route_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // 192.0.2.1 is TEST-NET-1: connect() on UDP only picks a route; no packet leaves.
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// Runs the daemon until `shutdown` completes: serves peers and the control API.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = Node::open(&config)?;
    node.spawn_serving();
    node.own_tracker();
    let control = crate::control::serve(node.clone()).await?;
    let listen = node.endpoint.local_addr()?;
    tracing::info!(node_id = %node.node_id(), %listen, control = %control.addr, "node running");
    println!(
        "shoal daemon: node {} listening on {listen}, control http://{}",
        node.node_id(),
        control.addr
    );
    shutdown.await;
    tracing::info!("shutting down");
    control.stop();
    node.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lengths_come_from_the_shape() {
        // 64 pieces of 16 KiB, the last one short.
        let s = Shape { size: 63 * 16384 + 100, piece_size: 16384, pieces: 64 };
        let table = [
            (0, Some(16384)),  // first
            (62, Some(16384)), // last full
            (63, Some(100)),   // last, short
            (64, None),        // one past the end
            (u32::MAX, None),  // the probe that once grew a daemon to 4.4 GiB
            (1 << 31, None),   // far past, no overflow
        ];
        for (p, want) in table {
            assert_eq!(s.piece_len(PieceIndex(p)), want, "piece {p}");
        }
        assert!(s.manifest_bound() >= 64 * 32);
        assert!(s.manifest_bound() <= shoal_core::manifest::MAX_ENCODED_LEN as u64);
    }

    #[tokio::test]
    async fn per_content_stats_are_pruned_when_their_sessions_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(dir.path().to_path_buf());
        config.listen = "127.0.0.1:0".parse().unwrap();
        let node = Node::open(&config).unwrap();
        let count = || node.content_stats().len();
        let c = ContentId([1; 32]);
        let peer = Identity::generate().node_id();
        // Two sessions with one peer (one each way), then both end: nothing is left.
        node.peer_session(c, peer, true);
        node.peer_session(c, peer, true);
        node.peer_session(c, peer, false);
        assert_eq!(count(), 1);
        node.peer_session(c, peer, false);
        assert_eq!(count(), 0);
        // A session ending for a content never counted creates nothing.
        node.peer_session(ContentId([2; 32]), peer, false);
        assert_eq!(count(), 0);
        // Uploads of a held content are kept as its lifetime counter.
        node.count_upload(c, 10);
        node.peer_session(c, peer, true);
        node.peer_session(c, peer, false);
        assert_eq!(count(), 1);
        node.close().await;
    }
}
