//! The node's event bus: newly verified pieces and changed contents, broadcast to the parts
//! that follow them (peers' control streams, tracker sessions).

use std::sync::Arc;

use shoal_core::{ContentId, PieceIndex};
use tokio::sync::broadcast;

use crate::stats::Stats;

/// Haves waiting per slow subscriber before it lags (and catches up from later haves).
const HAVES_BACKLOG: usize = 4096;
/// Changed contents waiting per slow subscriber.
const CHANGED_BACKLOG: usize = 256;

/// The broadcasts. Cloning gives another handle on the same channels.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    /// Newly verified pieces, for the control streams of peers subscribed to them and for
    /// tracker deltas.
    pub(crate) haves: broadcast::Sender<(ContentId, PieceIndex)>,
    /// Contents added or replaced in the store, for full tracker announces.
    pub(crate) contents_changed: broadcast::Sender<ContentId>,
    /// Counts what the events tell, so that status needs no store scan.
    stats: Arc<Stats>,
}

impl Events {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        Self {
            haves: broadcast::channel(HAVES_BACKLOG).0,
            contents_changed: broadcast::channel(CHANGED_BACKLOG).0,
            stats,
        }
    }

    /// Piece `p` of `c` was verified and is held now.
    pub(crate) fn piece_verified(&self, c: ContentId, p: PieceIndex) {
        self.stats.piece_verified(c);
        // No subscriber is no error: nobody follows this node's pieces yet.
        let _ = self.haves.send((c, p));
    }

    /// Content `c` was added, replaced or finished.
    pub(crate) fn content_changed(&self, c: ContentId) {
        self.stats.content_changed();
        let _ = self.contents_changed.send(c);
    }
}
