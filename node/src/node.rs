//! A running node, as a bundle of parts that each own their state: [`Net`] (identity and
//! endpoint), [`Contents`] (what it holds), [`Stats`] (counters), the event bus (verified
//! pieces and changed contents), [`Trackers`] (the tracker client), the [`Pusher`], the upload
//! slots and the storage side of pushes. Functions take the parts they use; the parts below
//! this module know nothing of it, so dependencies point one way.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use shoal_core::{ContentId, NodeId, PeerAddr, Ticket};
use shoal_net::{Endpoint, Identity, Limits, RateLimiter};
use shoal_store::Store;
use shoal_wire::tracker::Directive;
use tokio::sync::mpsc;

use crate::config::NodeConfig;
use crate::contents::Contents;
use crate::events::Events;
use crate::net::Net;
use crate::push::Pusher;
use crate::push_gate::PushGate;
use crate::reveal::Reveals;
use crate::stats::Stats;
use crate::storage::Storage;
use crate::tracker::{Known, Parts, Trackers};
use crate::upload::Uploads;

pub use shoal_control::{ContentStatus, Status};

/// Uploads that may run at once (each holds one piece in memory); further requests wait and
/// are served in super-seeding order (see `upload`).
const UPLOAD_SLOTS: usize = 32;
/// Bytes the uploads in progress may hold together (pieces and manifests being sent). One
/// upload larger than this (a 64 MiB piece) still runs, alone.
const UPLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Requests that may wait for an upload slot; more are answered `Busy` at once.
const UPLOAD_WAITERS: usize = 1024;

/// A node: its parts.
#[derive(Debug)]
pub struct Node {
    pub(crate) net: Arc<Net>,
    pub(crate) contents: Arc<Contents>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) events: Events,
    pub(crate) trackers: Arc<Trackers>,
    pub(crate) uploads: Arc<Uploads>,
    /// Contents added to this daemon, revealed to subscribers a few pieces at a time.
    pub(crate) reveals: Arc<Reveals>,
    /// Pushes into storage and re-seeds.
    pub(crate) pusher: Pusher,
    /// The storage side of pushes: who may push, and the memory budget for push bodies.
    pub(crate) storage: Storage,
    /// A storage node's offline tasks.
    pub(crate) offline: Option<Arc<crate::offline::Offline>>,
    /// The offline tasks this node follows, whose pieces it serves to the user's devices.
    pub(crate) follows: Arc<crate::offline::follows::Follows>,
    /// A storage node's pull-through cache (`None`: not storage, or turned off).
    pub(crate) pulls: Option<Arc<crate::pull::Pulls>>,
    /// Its requests, until the daemon hands them to the driver.
    pull_requests: Mutex<Option<crate::pull::PullRequests>>,
    pub(crate) upload: RateLimiter,
    pub(crate) download: RateLimiter,
    /// Testing only: the share of uploaded pieces to corrupt.
    pub(crate) corrupt: f64,
    /// The own tracker's re-seed directives, until the daemon hands them to the pusher.
    directives: Mutex<Option<mpsc::Receiver<Directive>>>,
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
            .map(shoal_core::ticket::parse_trackers)
            .transpose()
            .context("reading --tracker")?
            .unwrap_or_default();
        // A storage node receives pushed pieces on its serving side; an ordinary node only small
        // frames (see `Limits` for the windows and the memory ceiling they give).
        let limits = if config.storage.is_some() { Limits::storage() } else { Limits::node() };
        let mut links = Vec::with_capacity(1 + config.more_links.len());
        let first = std::iter::once((config.listen, config.listen_name.clone()));
        for (addr, name) in first.chain(config.more_links.iter().cloned()) {
            let endpoint = Endpoint::bind_with(&identity, addr, &[shoal_wire::ALPN], limits)
                .map_err(|e| bind_error(e, addr))?;
            links.push((endpoint, name));
        }
        let net = Arc::new(Net::new(identity, links, config.advertise.clone()));
        let contents = Arc::new(Contents { store, cloud, lie: config.danger_lie_bitfield });
        let stats = Arc::new(Stats::default());
        let events = Events::new(stats.clone());
        let uploads = Uploads::new(UPLOAD_SLOTS, UPLOAD_BYTES, UPLOAD_WAITERS);
        let known = Arc::new(Known { stated_region: config.region.clone(), ..Known::default() });
        let reveals = Arc::new(Reveals::default());
        Reveals::spawn_clock(&reveals);
        let (trackers, directives) = Trackers::new(
            |directives| Parts {
                net: net.clone(),
                contents: contents.clone(),
                events: events.clone(),
                stats: stats.clone(),
                uploads: uploads.clone(),
                known: known.clone(),
                directives,
            },
            own_tracker,
        );
        let trackers = Arc::new(trackers);
        let upload = RateLimiter::new(config.upload_limit.map(|r| r.0));
        let pusher = Pusher {
            net: net.clone(),
            contents: contents.clone(),
            trackers: trackers.clone(),
            stats: stats.clone(),
            upload: upload.clone(),
            data_dir: dir.clone(),
            reseeding: Arc::default(),
            reveals: reveals.clone(),
            storage: Arc::default(),
        };
        let offline = match &contents.cloud {
            Some(cloud) => {
                let origin = shoal_cloud::origin::Config {
                    allow_private: config.offline_allow_private,
                    ..Default::default()
                };
                let grants = config.grants.clone();
                let (cloud, net, trackers) = (cloud.clone(), net.clone(), trackers.clone());
                Some(crate::offline::Offline::open(cloud, net, dir, grants, origin, trackers)?)
            }
            None => None,
        };
        let (pulls, pull_requests) = match (&contents.cloud, config.pull_through_cache) {
            (Some(_), limit) if limit > 0 => {
                let (p, rx) =
                    crate::pull::Pulls::open(contents.store(), dir.join("pull-through"), limit)?;
                (Some(p), Some(rx))
            }
            _ => (None, None),
        };
        let storage = Storage {
            net: net.clone(),
            contents: contents.clone(),
            stats: stats.clone(),
            events: events.clone(),
            known,
            push_gate: PushGate::new(config.grants.clone()),
        };
        Ok(Arc::new(Self {
            net,
            contents,
            stats,
            events,
            trackers,
            uploads,
            reveals,
            pusher,
            storage,
            offline,
            follows: Arc::default(),
            pulls,
            pull_requests: Mutex::new(pull_requests),
            upload,
            download: RateLimiter::new(config.download_limit.map(|r| r.0)),
            corrupt: config.danger_corrupt_uploads,
            directives: Mutex::new(Some(directives)),
            data_dir: dir.clone(),
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.net.node_id()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.contents.store()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The tracker client.
    pub fn trackers(&self) -> &Trackers {
        &self.trackers
    }

    /// The pull-through requests, once (for the daemon's driver).
    pub(crate) fn take_pull_requests(&self) -> Option<crate::pull::PullRequests> {
        self.pull_requests.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The own tracker's re-seed directives; `None` once taken.
    pub(crate) fn take_directives(&self) -> Option<mpsc::Receiver<Directive>> {
        self.directives.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// A ticket for a content with this node as peer, and the node's tracker if it has one,
    /// pinned to the tracker's node id once known (given with `--tracker ID@..` or proven at
    /// the first connect).
    pub fn ticket(&self, content: ContentId) -> Ticket {
        let node_id = Some(self.node_id());
        let peers = self.net.addrs().into_iter().map(|addr| PeerAddr { node_id, addr }).collect();
        Ticket { peers, ..self.trackers.ticket(content) }
    }

    /// Counters and identity, with the state of every content, from counters (blocking only
    /// after a content changed: its rows are read again then).
    pub fn status(&self) -> Status {
        let s = &self.stats;
        let storage = self.contents.is_storage();
        let entries = self.stats.held_rows(&self.contents).unwrap_or_default();
        let stored = self.trackers.known().stored.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let contents = {
            let stats = self.stats.contents();
            entries
                .into_iter()
                .map(|e| {
                    let id: Option<ContentId> = e.content_id.parse().ok();
                    let c = id.and_then(|id| stats.get(&id));
                    ContentStatus {
                        stored: id.is_some_and(|id| stored.contains(&id))
                            || (storage && e.state == "complete"),
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
            addrs: self.net.addrs().iter().map(|a| a.to_string()).collect(),
            uploaded_bytes: s.uploaded_bytes.load(Ordering::Relaxed),
            downloaded_bytes: s.downloaded_bytes.load(Ordering::Relaxed),
            pieces_uploaded: s.pieces_uploaded.load(Ordering::Relaxed),
            bad_pieces: s.bad_pieces.load(Ordering::Relaxed),
            pushed_bytes: s.pushed_bytes.load(Ordering::Relaxed),
            pushes_refused: s.pushes_refused.load(Ordering::Relaxed),
            offline_origin_bytes: self
                .offline
                .as_ref()
                .map_or(0, |o| o.ctx().origin_bytes.load(Ordering::Relaxed)),
            offline_peer_bytes: self.follows.1.load(Ordering::Relaxed),
            role: if storage { "storage" } else { "node" }.into(),
            region: self.trackers.known().region().map(|r| r.to_string()).unwrap_or_default(),
            cross_region_bytes: s.cross_region_bytes.load(Ordering::Relaxed),
            cross_region_wasted_bytes: s.cross_region_wasted_bytes.load(Ordering::Relaxed),
            pull_through_bytes: self.pulls.as_ref().map_or(0, |p| p.bytes()),
            links: self
                .net
                .links
                .iter()
                .map(|l| shoal_control::LinkStatus {
                    addr: l.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                    name: l.name.clone().unwrap_or_default(),
                    connections: l.connections.load(Ordering::Relaxed),
                })
                .collect(),
            contents,
        }
    }

    /// Closes all connections, waiting briefly for them to close cleanly.
    pub async fn close(&self) {
        self.net.close().await;
    }
}

/// A listen address that cannot be bound, in one line; a port in use says what to pass.
fn bind_error(e: shoal_net::endpoint::EndpointError, addr: std::net::SocketAddr) -> anyhow::Error {
    match &e {
        shoal_net::endpoint::EndpointError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            anyhow::anyhow!(
                "port {} is in use: pass --listen ADDR (another shoal daemon may hold it; \
                 --listen 0.0.0.0:0 takes any free port)",
                addr.port()
            )
        }
        _ => anyhow::Error::new(e).context(format!("cannot listen on {addr}")),
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
