//! The Shoal tracker: the QUIC API over [`shoal_index::Index`], its persistence in sled (or in
//! Redis, shared by several replicas: see `replicas`), and an HTTP endpoint with `/health`,
//! Prometheus `/metrics` (`metrics`), a dashboard at `/` (`dashboard`) and its read-only JSON
//! admin API (`admin`, documented in `docs/admin-api.md`).
//!
//! [`run`] serves until its shutdown future completes; tests start it on port 0.

#![warn(missing_docs)]

mod admin;
mod clock;
mod dashboard;
mod http;
mod metrics;
mod replicas;
mod server;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use shoal_core::NodeId;
use shoal_index::{Config as IndexConfig, Index, Loaded, RedisState, SledState};
use shoal_net::{Endpoint, Identity};

pub use server::Shared;
pub use shoal_index::{Limits, Rate};

/// Where the tracker keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// sled under the data dir (the default): one tracker process.
    #[default]
    Sled,
    /// Redis at this URL (`redis://HOST:PORT[/DB]` or `redis+unix:///PATH`), shared by every
    /// tracker replica given the same URL.
    Redis(String),
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sled" {
            return Ok(Self::Sled);
        }
        // No TLS (rediss://) in this build: Redis is reached on a trusted network or socket.
        let schemes = ["redis://", "redis+unix://", "unix://"];
        if schemes.iter().any(|p| s.starts_with(p)) && redis_url_ok(s) {
            return Ok(Self::Redis(s.to_string()));
        }
        Err(format!(
            "--backend {s:?} is not sled, redis://HOST:PORT[/DB] or redis+unix:///PATH/TO/SOCKET"
        ))
    }
}

/// `url` with its password (user info) hidden, for messages and logs.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// Whether the Redis client takes `url` (checked before anything starts).
fn redis_url_ok(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    url.into_connection_info().is_ok()
}

/// Tracker settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The UDP address for nodes.
    pub listen: SocketAddr,
    /// The HTTP address for `/health`, `/metrics`, the dashboard and the admin API, if any.
    pub http: Option<SocketAddr>,
    /// Host names the HTTP address answers to besides IP addresses and `localhost` (a name a
    /// reverse proxy passes on): a page from any other name (DNS rebinding) is refused.
    pub http_hosts: Vec<String>,
    /// Key and state.
    pub data_dir: PathBuf,
    /// Where state is kept: sled under `data_dir` (default), or Redis shared by replicas.
    pub backend: Backend,
    /// Nodes silent for this long expire.
    pub node_ttl: Duration,
    /// The heartbeat interval nodes are told to keep.
    pub heartbeat: Duration,
    /// An upload into storage that has not progressed for this long is re-seeded from holders.
    pub reseed_after: Duration,
    /// Node ids the operator admitted as storage; any other node is ordinary.
    pub admitted_storage: HashSet<NodeId>,
    /// The most contents one node may announce (default 4096).
    pub max_contents_per_node: usize,
    /// The most manifest bytes kept in total (default 256 MiB).
    pub max_manifest_bytes: u64,
    /// The most bytes of not yet announced manifests uploaded from one address (default
    /// 32 MiB).
    pub max_pending_manifest_bytes: u64,
    /// Rate limits per source address and node id.
    pub limits: Limits,
    /// Resources an offline task may name by id: id → URL (`--offline-source ID=URL`).
    pub offline_sources: std::collections::HashMap<String, String>,
    /// Address ranges naming regions (`--region CIDR=NAME`).
    pub regions: shoal_index::RegionMap,
    /// Take a node's stated region over the map's (`--allow-stated-region`).
    pub allow_stated_region: bool,
    /// Route by region (off with `--ignore-regions`).
    pub region_routing: bool,
}

impl Config {
    /// Defaults for everything but where to listen and keep state.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        let index = IndexConfig::default();
        Self {
            listen,
            http: None,
            http_hosts: Vec::new(),
            data_dir,
            backend: Backend::Sled,
            node_ttl: Duration::from_millis(index.node_ttl_ms),
            heartbeat: Duration::from_millis(u64::from(index.heartbeat_ms)),
            reseed_after: Duration::from_millis(index.reseed_after_ms),
            admitted_storage: HashSet::new(),
            max_contents_per_node: index.max_contents_per_node,
            max_manifest_bytes: index.max_manifest_bytes,
            max_pending_manifest_bytes: index.max_pending_manifest_bytes,
            limits: index.limits,
            offline_sources: std::collections::HashMap::new(),
            regions: index.regions,
            allow_stated_region: index.allow_stated_region,
            region_routing: index.region_routing,
        }
    }
}

/// Where a running tracker listens.
#[derive(Debug, Clone)]
pub struct Running {
    /// The QUIC address.
    pub addr: SocketAddr,
    /// The HTTP address, if serving HTTP.
    pub http: Option<SocketAddr>,
    /// The tracker's node id.
    pub node_id: NodeId,
}

/// Opens the state, binds the endpoints and serves until `shutdown` completes. `started` is
/// called once everything listens.
pub async fn run(
    config: Config,
    started: impl FnOnce(&Running),
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let identity = Identity::load_or_create(&config.data_dir)?;
    let (identity, opened) = open_state(&config, identity)?;
    let index_config = IndexConfig {
        node_ttl_ms: config.node_ttl.as_millis() as u64,
        heartbeat_ms: config.heartbeat.as_millis() as u32,
        reseed_after_ms: config.reseed_after.as_millis() as u64,
        admitted_storage: config.admitted_storage.clone(),
        max_contents_per_node: config.max_contents_per_node,
        max_manifest_bytes: config.max_manifest_bytes,
        max_pending_manifest_bytes: config.max_pending_manifest_bytes,
        limits: config.limits.clone(),
        regions: config.regions.clone(),
        allow_stated_region: config.allow_stated_region,
        region_routing: config.region_routing,
        // Unpredictable lookup samples: a sybil cannot arrange to be the one drawn.
        seed: fastrand::u64(..),
        ..IndexConfig::default()
    };
    let (nodes, holdings, manifests) = opened.loaded;
    let restored = (nodes.len(), holdings.len());
    let now = crate::clock::now_ms();
    let index =
        Arc::new(RwLock::new(Index::restore(index_config, now, nodes, holdings, manifests)));
    tracing::info!(nodes = restored.0, holdings = restored.1, "state restored");
    tracing::info!(admitted = config.admitted_storage.len(), "storage nodes admitted");
    let endpoint = Endpoint::bind_with(
        &identity,
        config.listen,
        &[
            shoal_wire::tracker::TRACKER_ALPN,
            shoal_wire::tracker::TRACKER_ALPN_V3,
            shoal_wire::tracker::TRACKER_ALPN_V2,
        ],
        shoal_net::Limits::tracker(),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let state = match opened.redis {
        None => server::Backend::Sled(opened.sled.context("sled state")?),
        Some((url, position)) => {
            let writer = Arc::new(replicas::Writer::default());
            let replica = replicas::replica_id();
            tracing::info!(%replica, "tracker replica sharing state through Redis");
            let (u, r, w) = (url.clone(), replica.clone(), writer.clone());
            std::thread::Builder::new()
                .name("redis-writer".into())
                .spawn(move || replicas::write_loop(u, r, w))
                .context("starting the Redis writer")?;
            let (ix, w, st) = (index.clone(), writer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("redis-reader".into())
                .spawn(move || replicas::read_loop(url, replica, position, ix, w, st))
                .context("starting the Redis reader")?;
            server::Backend::Redis(writer)
        }
    };
    let shared = Arc::new(Shared::new(
        index,
        state,
        identity.clone(),
        config.offline_sources.clone(),
        endpoint.clone(),
    ));
    let http = match config.http {
        Some(addr) => Some(http::serve(addr, shared.clone(), config.http_hosts.clone()).await?),
        None => None,
    };
    let running = Running { addr: endpoint.local_addr()?, http, node_id: identity.node_id() };
    tokio::spawn(server::accept_loop(endpoint.clone(), shared.clone()));
    tokio::spawn(server::housekeeping(shared.clone()));
    started(&running);
    shutdown.await;
    endpoint.close();
    stop.store(true, Ordering::Relaxed);
    shared.close();
    Ok(())
}

/// The state a tracker starts from, and where it keeps it.
struct Opened {
    loaded: Loaded,
    sled: Option<SledState>,
    /// With Redis: its URL and the position the snapshot was loaded at.
    redis: Option<(String, replicas::Position)>,
}

/// Opens the backend and loads its state; with Redis, the tracker key is the one the first
/// replica offered (this replica offers its own, so a tracker moving from sled to Redis keeps
/// its node id).
fn open_state(config: &Config, local: Identity) -> anyhow::Result<(Identity, Opened)> {
    match &config.backend {
        Backend::Sled => {
            let state = SledState::open(&config.data_dir.join("index")).with_context(|| {
                format!(
                    "cannot open tracker state in {} (is another tracker using it?)",
                    config.data_dir.display()
                )
            })?;
            let loaded = state.load().context("reading tracker state")?;
            Ok((local, Opened { loaded, sled: Some(state), redis: None }))
        }
        Backend::Redis(url) => {
            // One line: the client's error repeats its cause in its source chain.
            let mut redis = RedisState::connect(url, replicas::COMMAND_TIMEOUT).map_err(|e| {
                let url = redacted(url);
                anyhow::anyhow!("cannot reach Redis at {url}: {e} (is redis-server running there?)")
            })?;
            let key = redis
                .offer_key(&local.key_bytes())
                .context("reading the tracker key from Redis")?;
            let identity = key.as_deref().and_then(Identity::from_key_bytes).with_context(|| {
                format!("the tracker key in Redis at {} is not a key (delete shoal:tracker:key to start afresh)", redacted(url))
            })?;
            if identity.node_id() != local.node_id() {
                tracing::info!(tracker = %identity.node_id(), "using the tracker key another replica stored in Redis");
            }
            // The stream's end first: whatever is written while the snapshot loads is read again.
            let epoch = redis.epoch().context("reading the state's epoch in Redis")?;
            let position = redis.tail().context("reading the change stream in Redis")?;
            let loaded = redis.load().context("reading tracker state from Redis")?;
            let key = identity.key_bytes();
            Ok((
                identity,
                Opened {
                    loaded,
                    sled: None,
                    redis: Some((url.clone(), replicas::Position { entry: position, epoch, key })),
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse() {
        assert_eq!("sled".parse::<Backend>(), Ok(Backend::Sled));
        for (url, shown) in [
            ("redis://:secret@10.0.0.5:6379/1", "redis://***@10.0.0.5:6379/1"),
            ("redis://user:p@ss@h:1", "redis://***@h:1"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis+unix:///run/redis.sock", "redis+unix:///run/redis.sock"),
        ] {
            assert_eq!(redacted(url), shown);
        }
        for url in ["redis://127.0.0.1:6379", "redis://h:1/2", "redis+unix:///run/redis.sock"] {
            assert_eq!(url.parse::<Backend>(), Ok(Backend::Redis(url.into())), "{url}");
        }
        for bad in ["", "redis", "rediss://h:1", "http://h:1", "redis://h:notaport", "Sled"] {
            let e = bad.parse::<Backend>().unwrap_err();
            assert!(e.contains("redis+unix:///"), "{bad}: {e}");
        }
    }
}
