//! Keeping a directory in step with the user's space (`shoal daemon --sync-dir DIR`): what an
//! offline task (from any of the user's devices) made permanent on storage appears in DIR,
//! fetched and verified like `shoal get`, without a command.
//!
//! Every [`SYNC_EVERY`] the daemon lists the space on its storage node and fetches, one at a
//! time, each permanent entry whose name is not in DIR yet (a fetch writes a partial file
//! beside the output and renames it into place once every piece is verified, so DIR never
//! holds half a file). A name already in DIR is left alone, whatever it holds, a name that is
//! not a plain file name is never synced, and an entry larger than the room left on DIR's
//! filesystem is not started. Failures are
//! logged and tried again at the next round. Removing an entry from the space does not
//! delete the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_core::{ContentId, Ticket};
use shoal_wire::offline::EntryState;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::fetch::{fetch, FetchRequest};
use crate::node::Node;
use crate::offline::client::Storage;

/// How often the space is listed.
pub const SYNC_EVERY: Duration = Duration::from_secs(5);

/// Syncs `dir` with the user's space until the process ends. Cancel-safe.
pub(crate) async fn run(node: Arc<Node>, dir: PathBuf) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = round(&node, &dir).await {
            debug!(error = %format!("{e:#}"), "space sync round failed; trying again");
        }
    }
}

/// One round: list the space, fetch what DIR lacks.
async fn round(node: &Arc<Node>, dir: &Path) -> anyhow::Result<()> {
    let storage = Storage::connect(&node.pusher, None).await?;
    let entries = storage.space().await;
    storage.close();
    let wanted: Vec<(String, ContentId, u64)> = entries?
        .into_iter()
        .filter(|e| e.state == EntryState::Permanent)
        .filter_map(|e| Some((e.name, e.content?, e.size)))
        // A name from storage becomes a path under DIR only if it is a plain file name (no
        // `/`, no `..`): a hostile storage node cannot write elsewhere.
        .filter(|(name, _, _)| {
            let plain = plain_name(name);
            if !plain {
                warn!(name = %shoal_core::manifest::escape_name(name), "space entry name is not a plain file name; not synced");
            }
            plain
        })
        .filter(|(name, _, _)| dir.join(name).symlink_metadata().is_err())
        .collect();
    for (name, content, size) in wanted {
        // What would not fit on DIR's filesystem is not started (and not allowed to fill it).
        if !room_for(dir, size) {
            warn!(name = %shoal_core::manifest::escape_name(&name), size, "no room for a space entry in the sync dir; skipped");
            continue;
        }
        let output = dir.join(&name);
        // The own trackers, unpinned as before: the storage peer is what this fetch needs.
        let trackers: Vec<_> = node
            .trackers
            .ticket(content)
            .trackers()
            .into_iter()
            .map(|t| shoal_core::ticket::TrackerAddr { node_id: None, ..t })
            .collect();
        let ticket =
            Ticket { peers: vec![storage.addr], ..Ticket::new(content) }.with_trackers(&trackers);
        let req =
            FetchRequest { ticket, extra_peers: Vec::new(), output, limit: None, tracker: None };
        let (progress, _) = watch::channel(Default::default());
        match fetch(node.clone(), req, progress).await {
            Ok(r) => {
                info!(name = %shoal_core::manifest::escape_name(&name), bytes = r.size, "synced from the space")
            }
            Err(e) => {
                warn!(name = %shoal_core::manifest::escape_name(&name), error = %format!("{e:#}"), "cannot sync an entry; trying again later")
            }
        }
    }
    Ok(())
}

/// True if DIR's filesystem has room for `size` more bytes (false if it cannot be told).
fn room_for(dir: &Path, size: u64) -> bool {
    rustix::fs::statvfs(dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize) >= size).unwrap_or(false)
}

/// True if `name` is a plain file name (a manifest's: no `/`, no NUL, not `.` or `..`).
fn plain_name(name: &str) -> bool {
    shoal_core::Manifest::new(name, 0, Vec::new()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::{plain_name, room_for};

    #[test]
    fn an_entry_larger_than_the_free_space_is_not_started() {
        let dir = tempfile::tempdir().unwrap();
        assert!(room_for(dir.path(), 1));
        assert!(!room_for(dir.path(), u64::MAX), "no filesystem has 16 EiB free");
        assert!(!room_for(&dir.path().join("missing"), 1), "unknown: not started");
    }

    #[test]
    fn only_plain_file_names_become_paths() {
        // Each row: a name from storage, and whether it may be written under the sync dir.
        for (name, ok) in [
            ("film.mkv", true),       // an ordinary name
            ("é ü 漢字.txt", true),   // any UTF-8
            ("../etc/passwd", false), // climbs out
            ("a/b", false),           // a path
            ("..", false),            // the parent
            (".", false),             // the dir itself
            ("", false),              // nothing
            ("nul\0byte", false),     // NUL
        ] {
            assert_eq!(plain_name(name), ok, "{name:?}");
        }
    }
}
