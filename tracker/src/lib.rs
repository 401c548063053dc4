//! The Shoal tracker: the QUIC API over [`shoal_index::Index`], its persistence in sled, and
//! an HTTP endpoint with `/health` and Prometheus `/metrics`.
//!
//! [`run`] serves until its shutdown future completes; tests start it on port 0.

#![warn(missing_docs)]

mod http;
mod server;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_index::{Config as IndexConfig, Index, SledState};
use shoal_net::{Endpoint, Identity};

pub use server::Shared;

/// Tracker settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The UDP address for nodes.
    pub listen: SocketAddr,
    /// The HTTP address for `/health` and `/metrics`, if any.
    pub http: Option<SocketAddr>,
    /// Key and state.
    pub data_dir: PathBuf,
    /// Nodes silent for this long expire.
    pub node_ttl: Duration,
    /// The heartbeat interval nodes are told to keep.
    pub heartbeat: Duration,
    /// An upload into storage that has not progressed for this long is re-seeded from holders.
    pub reseed_after: Duration,
}

/// Where a running tracker listens.
#[derive(Debug, Clone)]
pub struct Running {
    /// The QUIC address.
    pub addr: SocketAddr,
    /// The HTTP address, if serving HTTP.
    pub http: Option<SocketAddr>,
    /// The tracker's node id.
    pub node_id: shoal_core::NodeId,
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
    let state = SledState::open(&config.data_dir.join("index")).with_context(|| {
        format!(
            "cannot open tracker state in {} (is another tracker using it?)",
            config.data_dir.display()
        )
    })?;
    let (nodes, holdings, manifests) = state.load().context("reading tracker state")?;
    let index_config = IndexConfig {
        node_ttl_ms: config.node_ttl.as_millis() as u64,
        heartbeat_ms: config.heartbeat.as_millis() as u32,
        reseed_after_ms: config.reseed_after.as_millis() as u64,
        ..IndexConfig::default()
    };
    let restored = (nodes.len(), holdings.len());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let index = Index::restore(index_config, now, nodes, holdings, manifests);
    tracing::info!(nodes = restored.0, holdings = restored.1, "state restored");
    let endpoint = Endpoint::bind(&identity, config.listen, &[shoal_wire::tracker::TRACKER_ALPN])?;
    let shared = Arc::new(Shared::new(index, state, identity.clone()));
    let http = match config.http {
        Some(addr) => Some(http::serve(addr, shared.clone()).await?),
        None => None,
    };
    let running = Running { addr: endpoint.local_addr()?, http, node_id: identity.node_id() };
    tokio::spawn(server::accept_loop(endpoint.clone(), shared.clone()));
    tokio::spawn(server::housekeeping(shared.clone()));
    started(&running);
    shutdown.await;
    endpoint.close();
    shared.flush();
    Ok(())
}
