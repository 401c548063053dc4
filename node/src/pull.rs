//! Pull-through storage: a storage node asked for a content it does not hold fetches it from
//! the swarm (verified like any download, from other regions where its own has none) and
//! serves it while it arrives, keeping it in a cache of bounded size.
//!
//! - One pull per content: requests that arrive while it runs wait for the same pull.
//! - At most [`MAX_PULLS`] pulls at once; further requests are refused as busy.
//! - Pulled contents live in the node's piece store under `DATA_DIR/pull-through`, apart from
//!   the object store (what storage keeps for good). When the cache passes its size, the
//!   contents used least recently are dropped (never one being pulled) and the tracker is told
//!   the node holds none of them any more.
//!
//! What a pull costs a stranger's request: a lookup at the own tracker (an unknown content
//! ends there) and at most the cache's size in bytes, shared with every other request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_core::ContentId;
use shoal_store::{EntryState, Store};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::events::Events;

/// Pulls that may run at once.
pub(crate) const MAX_PULLS: usize = 4;
/// How long a request waits for a pull to find the content's manifest.
pub(crate) const MANIFEST_WAIT: Duration = Duration::from_secs(10);

/// Which pulled contents to drop first: least recently used, by bytes.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    /// Use order: (sequence, content), oldest first.
    order: BTreeMap<u64, ContentId>,
    /// Per content: its place in `order` and its size.
    entries: HashMap<ContentId, (u64, u64)>,
    next: u64,
    bytes: u64,
}

impl Lru {
    /// Records a use of `id` (or its arrival, with `size` bytes).
    pub(crate) fn touch(&mut self, id: ContentId, size: u64) {
        let seq = self.next;
        self.next += 1;
        match self.entries.get_mut(&id) {
            Some(e) => {
                self.order.remove(&e.0);
                e.0 = seq;
            }
            None => {
                self.entries.insert(id, (seq, size));
                self.bytes += size;
            }
        }
        self.order.insert(seq, id);
    }

    /// True if `id` is cached.
    pub(crate) fn contains(&self, id: &ContentId) -> bool {
        self.entries.contains_key(id)
    }

    /// Drops the least recently used contents, skipping `busy` ones, until at most `limit`
    /// bytes remain; returns what was dropped.
    pub(crate) fn evict(&mut self, limit: u64, busy: &HashSet<ContentId>) -> Vec<ContentId> {
        let mut out = Vec::new();
        let order: Vec<(u64, ContentId)> = self.order.iter().map(|(&s, &c)| (s, c)).collect();
        for (seq, id) in order {
            if self.bytes <= limit {
                break;
            }
            if busy.contains(&id) {
                continue;
            }
            self.order.remove(&seq);
            if let Some((_, size)) = self.entries.remove(&id) {
                self.bytes -= size;
            }
            out.push(id);
        }
        out
    }

    /// Bytes cached.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[derive(Debug, Default)]
struct State {
    /// Pulls under way; the flag turns true when one ends.
    active: HashMap<ContentId, watch::Receiver<bool>>,
    lru: Lru,
    /// Contents evicted and being removed: not pulled again until that is done.
    dropping: HashSet<ContentId>,
    /// Contents a pull failed for (unknown, too large, stalled), with when: not tried again
    /// for [`RETRY_AFTER`]. At most [`MAX_REFUSED`].
    refused: HashMap<ContentId, Instant>,
}

/// How long a content whose pull failed is refused.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Failed pulls remembered at most.
const MAX_REFUSED: usize = 1024;

/// A storage node's pull-through cache.
#[derive(Debug)]
pub(crate) struct Pulls {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// To the driver (`pulling`): contents to pull, each with the flag to raise when done.
    requests: mpsc::Sender<(ContentId, watch::Sender<bool>)>,
}

/// What the driver receives: a content to pull and the flag to raise when the pull ends.
pub(crate) type PullRequests = mpsc::Receiver<(ContentId, watch::Sender<bool>)>;

impl Pulls {
    /// A cache of `limit` bytes in `dir`, with what an earlier run left there: complete pulls
    /// are kept (oldest first by their order in the store), interrupted ones dropped.
    pub(crate) fn open(
        store: &Store,
        dir: PathBuf,
        limit: u64,
    ) -> anyhow::Result<(Arc<Self>, PullRequests)> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the pull-through cache {}", dir.display()))?;
        let (requests, rx) = mpsc::channel(MAX_PULLS);
        let pulls = Arc::new(Self { dir, limit, state: Mutex::default(), requests });
        for e in store.list()? {
            if !e.path.starts_with(&pulls.dir) {
                continue;
            }
            match e.state {
                EntryState::Complete => pulls.lock().lru.touch(e.content, e.size),
                _ => {
                    debug!(content = %e.content.fmt_short(), "dropping an interrupted pull");
                    store.remove(e.content)?;
                    let _ = std::fs::remove_file(&e.path);
                }
            }
        }
        Ok((pulls, rx))
    }

    // Held only for map updates, never across an await.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request for `content` arrived: marks a cached one used, or asks the driver to pull
    /// it (one pull per content, at most [`MAX_PULLS`]). Returns `false` if no pull can start
    /// now.
    pub(crate) fn request(&self, content: ContentId) -> bool {
        let mut s = self.lock();
        if s.lru.contains(&content) {
            s.lru.touch(content, 0);
            return true;
        }
        if s.active.contains_key(&content) {
            return true;
        }
        let refused = s.refused.get(&content).is_some_and(|t| t.elapsed() < RETRY_AFTER);
        if s.active.len() >= MAX_PULLS || s.dropping.contains(&content) || refused {
            return false;
        }
        let (tx, rx) = watch::channel(false);
        // The channel holds MAX_PULLS: with fewer pulls active there is room.
        if self.requests.try_send((content, tx)).is_err() {
            return false;
        }
        s.active.insert(content, rx);
        true
    }

    /// A pull ended (`size` if it completed): it joins the cache, and the contents to drop to
    /// stay within the cache's size are returned (never one being pulled).
    pub(crate) fn finished(&self, content: ContentId, size: Option<u64>) -> Vec<ContentId> {
        let mut s = self.lock();
        s.active.remove(&content);
        match size {
            Some(size) => s.lru.touch(content, size),
            None => {
                if s.refused.len() >= MAX_REFUSED {
                    s.refused.retain(|_, t| t.elapsed() < RETRY_AFTER);
                }
                if s.refused.len() < MAX_REFUSED {
                    s.refused.insert(content, Instant::now());
                }
            }
        }
        let busy: HashSet<ContentId> = s.active.keys().copied().collect();
        let evicted = s.lru.evict(self.limit, &busy);
        // Not pulled again (nor reported cached) until their removal is done: see `dropped`.
        s.dropping.extend(evicted.iter().copied());
        evicted
    }

    /// An evicted content's removal is done.
    pub(crate) fn dropped(&self, content: ContentId) {
        self.lock().dropping.remove(&content);
    }

    /// A cached content was served: it is used.
    pub(crate) fn touch(&self, content: ContentId) {
        let mut s = self.lock();
        if s.lru.contains(&content) {
            s.lru.touch(content, 0);
        }
    }

    /// The largest content a pull may fetch: half the cache, so one pull never empties it.
    pub(crate) fn max_content(&self) -> u64 {
        self.limit / 2
    }

    /// Where pulled contents are written.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Waits (cancel-safe) until the store has `content`'s manifest, the pull ends, or
    /// [`MANIFEST_WAIT`] passes.
    pub(crate) async fn wait_manifest(&self, events: &Events, store: &Store, content: ContentId) {
        let mut changed = events.contents_changed.subscribe();
        let done = self.lock().active.get(&content).cloned();
        let wait = async {
            let mut done = done;
            loop {
                if store.manifest(content).ok().flatten().is_some() {
                    return;
                }
                match &mut done {
                    Some(rx) if !*rx.borrow() => {
                        tokio::select! {
                            _ = changed.recv() => {}
                            // The pull ended (or its driver is gone): nothing more to wait for.
                            r = rx.changed() => if r.is_err() { return },
                        }
                    }
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(MANIFEST_WAIT, wait).await;
    }

    /// Bytes cached (complete pulls).
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().lru.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ContentId {
        ContentId([b; 32])
    }

    #[test]
    fn the_least_recently_used_go_first_and_busy_ones_stay() {
        let mut lru = Lru::default();
        lru.touch(id(1), 10);
        lru.touch(id(2), 10);
        lru.touch(id(3), 10);
        // 1 is used again: 2 is now the oldest.
        lru.touch(id(1), 0);
        assert_eq!(lru.bytes(), 30, "a second touch adds no bytes");
        assert_eq!(lru.evict(20, &HashSet::new()), vec![id(2)]);
        assert_eq!(lru.evict(20, &HashSet::new()), Vec::<ContentId>::new(), "within the limit");
        // 3 is busy: 1 goes, then nothing more can.
        let busy: HashSet<ContentId> = [id(3)].into();
        assert_eq!(lru.evict(0, &busy), vec![id(1)]);
        assert_eq!(lru.bytes(), 10);
        assert!(lru.contains(&id(3)) && !lru.contains(&id(1)));
        // Limit 0, nothing busy: everything goes.
        assert_eq!(lru.evict(0, &HashSet::new()), vec![id(3)]);
        assert_eq!(lru.bytes(), 0);
    }
}
