//! The pull-through driver: fetches the contents [`crate::pull::Pulls`] asks for into its
//! cache, and drops what the cache evicts (store entry, file, and the tracker's record).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use shoal_core::{ContentId, Manifest};
use shoal_wire::tracker::TrackerRequest;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::fetch::FetchRequest;
use crate::node::Node;
use crate::pull::{PullRequests, Pulls};

/// Runs until the node's pull requests end (the node is dropped). Each pull is its own task;
/// [`crate::pull::MAX_PULLS`] bounds how many there are.
pub(crate) async fn run(node: Arc<Node>, mut requests: PullRequests) {
    while let Some((content, done)) = requests.recv().await {
        let Some(pulls) = node.pulls.clone() else { return };
        let node = node.clone();
        tokio::spawn(async move {
            // Ends the pull whatever happens to the task (a panic included): its slot is given
            // back and its waiters woken.
            let mut ended = Ended { pulls: pulls.clone(), content, done: Some(done), size: None };
            match pull(&node, &pulls, content).await {
                Ok(size) => ended.size = Some(size),
                Err(e) => {
                    warn!(content = %content.fmt_short(), error = %format!("{e:#}"), "pull-through failed");
                    forget(&node, &pulls, content).await;
                }
            }
            for old in ended.end() {
                info!(content = %old.fmt_short(), "dropping a pulled content (cache full)");
                forget(&node, &pulls, old).await;
                pulls.dropped(old);
            }
        });
    }
}

/// Reports a pull's end to [`Pulls`] once, on [`Ended::end`] or when dropped.
struct Ended {
    pulls: Arc<Pulls>,
    content: ContentId,
    done: Option<watch::Sender<bool>>,
    size: Option<u64>,
}

impl Ended {
    /// Ends the pull; the contents evicted to make room, for the caller to remove.
    fn end(&mut self) -> Vec<ContentId> {
        let Some(done) = self.done.take() else { return Vec::new() };
        let evicted = self.pulls.finished(self.content, self.size);
        let _ = done.send(true);
        evicted
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        // Only after a panic: contents evicted then stay marked as being dropped (never served
        // half-removed) and their files are left for the next start to find.
        let _ = self.end();
    }
}

/// Fetches `content` into the cache through the own tracker; its size when complete. A content
/// the tracker does not know, larger than half the cache, or whose pull outlasts its deadline
/// (a minute, plus a second per quarter MiB) fails.
async fn pull(node: &Arc<Node>, pulls: &Pulls, content: ContentId) -> anyhow::Result<u64> {
    let own = node.trackers.own().context("pulling through needs a tracker")?;
    let conn = own
        .connection(Duration::from_secs(5))
        .await
        .map_err(|e| anyhow!("the tracker is unreachable: {e}"))?;
    let Some(bytes) = crate::tracker::manifest(&conn, content).await? else {
        bail!("the tracker does not know this content");
    };
    let m = Manifest::decode(&bytes).context("the tracker's manifest does not decode")?;
    if m.content_id() != content {
        bail!("the tracker's manifest is not this content's");
    }
    let size = m.size();
    if size > pulls.max_content() {
        let cache = 2 * pulls.max_content();
        bail!("{size} bytes is more than half the pull-through cache ({cache} bytes)");
    }
    let ticket = node.trackers.ticket(content);
    let output = pulls.dir().join(content.to_string());
    info!(content = %content.fmt_short(), size, "pulling through");
    let req = FetchRequest { ticket, extra_peers: Vec::new(), output, limit: None, tracker: None };
    let (progress, _) = watch::channel(Default::default());
    let deadline = Duration::from_secs(60 + size / (256 * 1024));
    let fetch = crate::fetch::fetch(node.clone(), req, progress);
    let report = tokio::time::timeout(deadline, fetch)
        .await
        .map_err(|_| anyhow!("the pull outlasted its deadline of {}s", deadline.as_secs()))??;
    Ok(report.size)
}

/// Forgets a pulled content: its store entry, its file, and the tracker's record of it here
/// (a `Forget`, so it is neither offered nor re-seeded into) unless the object store holds it
/// too.
async fn forget(node: &Arc<Node>, pulls: &Pulls, content: ContentId) {
    let store = node.contents.store().clone();
    let path = pulls.dir().join(content.to_string());
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
    let kept = node.contents.holding(content).ok().flatten();
    if let (Some(_), None) = (pieces, kept) {
        let req = TrackerRequest::Forget { node_id: node.net.node_id(), content };
        if let Err(e) = node.trackers.call_own(&req, "forgetting a pulled content").await {
            debug!(error = %format!("{e:#}"), "cannot tell the tracker");
        }
    }
}
