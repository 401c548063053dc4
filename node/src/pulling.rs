//! The pull-through driver: fetches the contents [`crate::pull::Pulls`] asks for into its
//! cache, and drops what the cache evicts (store entry, file, and the tracker's record).

use std::sync::Arc;

use shoal_core::{Bitfield, ContentId, Ticket};
use shoal_wire::tracker::TrackerRequest;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::fetch::FetchRequest;
use crate::node::Node;
use crate::pull::PullRequests;

/// Runs until the node's pull requests end (the node is dropped). Each pull is its own task;
/// [`crate::pull::MAX_PULLS`] bounds how many there are.
pub(crate) async fn run(node: Arc<Node>, mut requests: PullRequests) {
    while let Some((content, done)) = requests.recv().await {
        let node = node.clone();
        tokio::spawn(async move {
            let Some(pulls) = node.pulls.clone() else { return };
            let size = match pull(&node, pulls.dir().to_path_buf(), content).await {
                Ok(size) => Some(size),
                Err(e) => {
                    warn!(content = %content.fmt_short(), error = %format!("{e:#}"), "pull-through failed");
                    forget(&node, pulls.dir(), content).await;
                    None
                }
            };
            for old in pulls.finished(content, size) {
                info!(content = %old.fmt_short(), "dropping a pulled content (cache full)");
                forget(&node, pulls.dir(), old).await;
            }
            let _ = done.send(true);
        });
    }
}

/// Fetches `content` into `dir` through the own tracker; its size when complete.
async fn pull(
    node: &Arc<Node>,
    dir: std::path::PathBuf,
    content: ContentId,
) -> anyhow::Result<u64> {
    let tracker = node.trackers.default_addr().map(str::to_string);
    let tracker_id = node.trackers.own().and_then(|h| h.node_id());
    let ticket = Ticket { content, peers: Vec::new(), tracker, tracker_id };
    let output = dir.join(content.to_string());
    info!(content = %content.fmt_short(), "pulling through");
    let req = FetchRequest { ticket, extra_peers: Vec::new(), output, limit: None, tracker: None };
    let (progress, _) = watch::channel(Default::default());
    let report = crate::fetch::fetch(node.clone(), req, progress).await?;
    Ok(report.size)
}

/// Forgets a pulled content: its store entry, its file, and the tracker's record of it here
/// (an empty announce, which makes the tracker drop a storage node's holding).
async fn forget(node: &Arc<Node>, dir: &std::path::Path, content: ContentId) {
    let store = node.contents.store().clone();
    let path = dir.join(content.to_string());
    let pieces = store.manifest(content).ok().flatten().map(|m| m.piece_count());
    let removed = tokio::task::spawn_blocking(move || {
        store.remove(content)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => anyhow::Ok(()),
        }
    })
    .await;
    if !matches!(removed, Ok(Ok(()))) {
        warn!(content = %content.fmt_short(), "cannot remove a pulled content");
    }
    node.stats.content_changed();
    if let Some(pieces) = pieces {
        let req = TrackerRequest::Announce {
            node_id: node.net.node_id(),
            content,
            bitfield: Bitfield::new(pieces),
        };
        if let Err(e) = node.trackers.call_own(&req, "forgetting a pulled content").await {
            debug!(error = %format!("{e:#}"), "cannot tell the tracker");
        }
    }
}
