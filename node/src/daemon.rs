//! The daemon: starts the node's parts (serving peers, carrying out re-seed directives, the
//! own tracker's session) and the control API, and runs until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_store::StoreError;

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
///
/// First it takes the data dir's daemon lock (see `shoal_control::lock`), so that commands
/// run meanwhile wait for it instead of failing; `control.json` appears once the API answers.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::node::create_data_dir(&config.data_dir)?;
    let _lock = shoal_control::DaemonLock::acquire(&config.data_dir)?;
    slow_start_for_tests().await;
    let node = open_waiting(&config).await?;
    // Bound first: an address in use fails the start before anything else is up.
    let metrics = match config.metrics {
        Some(addr) => Some(crate::scrape::serve(node.clone(), addr).await?),
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
    crate::scrape::spawn_refresh(node.clone());
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
    // Peers and the control API answer from here on: tell systemd (Type=notify), if it
    // started us (a no-op without NOTIFY_SOCKET).
    notify(sd_notify::NotifyState::Ready);
    shutdown.await;
    notify(sd_notify::NotifyState::Stopping);
    tracing::info!("shutting down");
    control.stop();
    node.close().await;
    Ok(())
}

/// Tells the service manager the daemon's state, if one started it; a failure is only logged.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(error = %e, %state, "cannot notify the service manager");
    }
}

/// Opens the node; while a standalone command (`shoal ls`, `shoal get` without a daemon) holds
/// the store, waits for it to let go, up to the commands' own bound (`SHOAL_DAEMON_WAIT`):
/// `shoal daemon & shoal ls` must not fail because `ls` looked a moment before the daemon.
async fn open_waiting(config: &NodeConfig) -> anyhow::Result<Arc<Node>> {
    let bound = shoal_control::wait::wait_bound()?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match Node::open(config) {
            Err(e) if in_use(&e) && start.elapsed() < bound => {
                // A command holds the store for an instant while it looks for a daemon: say
                // something only if the wait lasts.
                if !told && start.elapsed() >= Duration::from_secs(1) {
                    told = true;
                    tracing::warn!(
                        data_dir = %config.data_dir.display(),
                        "another shoal process holds the data dir; waiting for it to finish"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

fn in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<StoreError>(), Some(StoreError::InUse { .. })))
}

/// TESTING ONLY: `SHOAL_DANGER_START_DELAY_MS` holds the daemon this long after it took its
/// lock, as a daemon with a large store or a slow object store would be, so that tests can
/// run commands against a daemon that is starting.
async fn slow_start_for_tests() {
    let ms = std::env::var("SHOAL_DANGER_START_DELAY_MS").ok().and_then(|v| v.parse().ok());
    if let Some(ms) = ms.filter(|&ms: &u64| ms > 0) {
        tracing::warn!(ms, "delaying the start on purpose (SHOAL_DANGER_START_DELAY_MS)");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
