//! The tasks a device follows, and the pieces of each it holds: served to the user's other
//! devices following the same task, so that storage sends each piece to one of them and the
//! others take it from there (storage points them with `Elsewhere`).
//!
//! A piece leaves only once it was checked against storage's signed hash, and is checked
//! again, read back from the file, before it is sent. Who may ask: the user's own devices
//! (the asker's node key, or a device certificate of the user that verifies for it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quinn::SendStream;
use shoal_core::{DeviceCert, NodeId, PieceHash, PieceIndex, TaskId, UserId};
use shoal_net::RateLimiter;
use shoal_wire::RejectReason;

use super::piece::{refuse, send_checked, FilePiece};
use super::segments::Layout;
use crate::upload::Uploads;

/// A followed task: its partial file and the pieces verified in it.
#[derive(Debug)]
pub(crate) struct Followed {
    /// The user the following device acts for.
    user: UserId,
    path: PathBuf,
    layout: Layout,
    /// The hash of each piece held. Held only for access.
    held: Mutex<Vec<Option<PieceHash>>>,
}

impl Followed {
    /// Records that piece `p`, of hash `hash`, is in the file.
    pub(crate) fn hold(&self, p: u32, hash: PieceHash) {
        if let Some(slot) = self.held.lock().unwrap_or_else(|e| e.into_inner()).get_mut(p as usize)
        {
            *slot = Some(hash);
        }
    }
}

/// The tasks this node follows (held only for map access), and the bytes it served to the
/// user's other followers.
#[derive(Debug, Default)]
pub(crate) struct Follows(Mutex<HashMap<TaskId, Arc<Followed>>>, pub(crate) AtomicU64);

impl Follows {
    /// Starts (or starts over) following `task` into `path`, of `size` bytes.
    pub(crate) fn start(
        &self,
        task: TaskId,
        user: UserId,
        path: PathBuf,
        size: u64,
    ) -> Arc<Followed> {
        let layout = Layout::of(size);
        let held = Mutex::new(vec![None; layout.pieces as usize]);
        let f = Arc::new(Followed { user, path, layout, held });
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(task, f.clone());
        f
    }

    /// Stops following `task`, if `f` is still what is followed (another follow of the same
    /// task may have started since).
    pub(crate) fn stop(&self, task: TaskId, f: &Arc<Followed>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&task).is_some_and(|g| Arc::ptr_eq(g, f)) {
            map.remove(&task);
        }
    }

    fn get(&self, task: TaskId) -> Option<Arc<Followed>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&task).cloned()
    }
}

/// Serves a piece of a followed task; `None` if this node follows no such task.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_piece(
    uploads: &Arc<Uploads>,
    limit: &RateLimiter,
    follows: &Follows,
    peer: NodeId,
    cert: Option<&DeviceCert>,
    task: TaskId,
    piece: PieceIndex,
    send: &mut SendStream,
) -> Option<anyhow::Result<()>> {
    let f = follows.get(task)?;
    // Only the user's own devices: the asker is the user, or a device it certified.
    let user = match cert {
        Some(c) if c.verify(&peer).is_ok() => c.user,
        Some(_) => return None,
        None => UserId::from(peer),
    };
    if user != f.user {
        return None;
    }
    let hash =
        f.held.lock().unwrap_or_else(|e| e.into_inner()).get(piece.0 as usize).copied().flatten();
    Some(
        async {
            let Some(hash) = hash else {
                return refuse(send, RejectReason::NotFound, "piece not held here yet").await;
            };
            let range = f.layout.bytes(&(piece.0..piece.0 + 1));
            let at = FilePiece { path: f.path.clone(), range, hash };
            let n =
                send_checked(send, uploads, Some(limit), peer, at, "piece changed here").await?;
            follows.1.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }
        .await,
    )
}
