//! The daemon: starts the node's parts (serving peers, carrying out re-seed directives, the
//! own tracker's session) and the control API, and runs until shutdown.

use std::future::Future;
use std::sync::Arc;

use crate::config::NodeConfig;
use crate::node::Node;

/// Starts serving peers and carrying out the own tracker's re-seed directives, in the
/// background.
pub fn start(node: &Arc<Node>) {
    for link in 0..node.net.links.len() {
        tokio::spawn(crate::serve::accept_loop(node.clone(), link));
    }
    if let Some(directives) = node.take_directives() {
        crate::push::spawn_directives(node.pusher.clone(), directives);
    }
    if let Some(requests) = node.take_pull_requests() {
        tokio::spawn(crate::pulling::run(node.clone(), requests));
    }
}

/// Runs the daemon until `shutdown` completes: serves peers and the control API.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = Node::open(&config)?;
    // Bound first: an address in use fails the start before anything else is up.
    let metrics = match config.metrics {
        Some(addr) => Some(crate::metrics::serve(node.clone(), addr).await?),
        None => None,
    };
    start(&node);
    if let Some(dir) = &config.sync_dir {
        if !dir.is_dir() {
            anyhow::bail!("--sync-dir {} is not a directory: create it first", dir.display());
        }
        if config.tracker.is_none() {
            anyhow::bail!("--sync-dir needs a tracker to find storage: add --tracker HOST:PORT");
        }
        tokio::spawn(crate::sync::run(node.clone(), dir.clone()));
    }
    node.trackers().own();
    let control = crate::control::serve(node.clone()).await?;
    crate::metrics::spawn_refresh(node.clone());
    let listen = node.net.endpoint.local_addr()?;
    tracing::info!(node_id = %node.node_id(), %listen, control = %control.addr, "node running");
    println!(
        "shoal daemon: node {} listening on {listen}, control http://{}",
        node.node_id(),
        control.addr
    );
    if let Some(addr) = metrics {
        println!("shoal daemon: metrics http://{addr}/metrics");
    }
    shutdown.await;
    tracing::info!("shutting down");
    control.stop();
    node.close().await;
    Ok(())
}
