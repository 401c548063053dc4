//! Tracker replicas sharing their state through Redis (`--backend redis://..`).
//!
//! Each replica answers from its own in-memory index, as with sled; Redis is the shared source
//! of truth behind it. Two blocking threads per replica talk to Redis:
//! - the writer takes the changes requests made (coalesced per node, holding and manifest,
//!   latest first-come order kept, at most [`MAX_PENDING`]) and writes them, a chunk at a
//!   time, to the snapshot hashes and the change stream ([`shoal_index::RedisState::write`]);
//! - the reader tails the stream and applies the other replicas' changes to this index
//!   ([`shoal_index::Index::apply_remote`]); changes their expiry made are skipped, since
//!   every replica expires nodes on its own clock from the heartbeat times the stream carries.
//!
//! When Redis is unreachable, both retry with backoff (250 ms doubling to 8 s) and the replica
//! keeps serving from memory, saying so once per outage in a warning; the changes made
//! meanwhile are written when Redis is back. A reader that fell behind the stream's trimming
//! loads the snapshot again; if Redis lost everything (restarted empty: a new epoch mark),
//! each replica offers the tracker key again and writes its whole state back.
//!
//! Per-replica soft state, not shared: rate limits (a client spreading over N replicas gets N
//! times the rate), differential hints and offered holders, reports of holders that never
//! delivered (the drops they cause are shared), and re-seed assignments (two replicas may
//! both ask for a piece; storage takes the first and ignores the second).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use shoal_core::{ContentId, NodeId};
use shoal_index::{Change, Index, Persist, Read, RedisState};
use tracing::{debug, info, warn};

use crate::clock::now_ms;

/// Entities (nodes, holdings, manifests) with a change waiting for Redis; changes past it are
/// dropped (and counted) until Redis takes some.
pub(crate) const MAX_PENDING: usize = 1 << 20;
/// Changes written in one transaction.
const CHUNK: usize = 4096;
/// How long a Redis command may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read of the stream waits for new entries.
const READ_BLOCK: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What a change is about: later changes of the same entity replace earlier waiting ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Entity {
    Node(NodeId),
    Holding(ContentId, NodeId),
    Manifest(ContentId),
    /// A kind of change this build does not coalesce: each is its own.
    Other(u64),
}

fn entity(op: &Persist, seq: u64) -> Entity {
    match op {
        Persist::PutNode(n, _) | Persist::RemoveNode(n) => Entity::Node(*n),
        Persist::PutHolding(c, n, _) | Persist::RemoveHolding(c, n) => Entity::Holding(*c, *n),
        Persist::PutManifest(c, _) | Persist::RemoveManifest(c) => Entity::Manifest(*c),
        // `Persist` is non-exhaustive: a kind this build does not know is kept as it is.
        #[allow(unreachable_patterns)]
        _ => Entity::Other(seq),
    }
}

/// The order of changes within a batch: nodes and manifests before the holdings that name
/// them, removals of holdings before those of their manifests and nodes.
fn rank(op: &Persist) -> u8 {
    match op {
        Persist::PutNode(..) => 0,
        Persist::PutManifest(..) => 1,
        Persist::PutHolding(..) | Persist::RemoveHolding(..) => 2,
        Persist::RemoveManifest(..) => 3,
        Persist::RemoveNode(..) => 4,
        #[allow(unreachable_patterns)]
        _ => 5,
    }
}

/// Changes waiting for Redis: the latest per entity, in the order each entity first waited.
#[derive(Debug)]
struct Pending {
    /// The most entities waiting ([`MAX_PENDING`]).
    cap: usize,
    latest: HashMap<Entity, Change>,
    order: VecDeque<Entity>,
    dropped: u64,
    /// Changes taken by the writer and not written yet.
    inflight: usize,
    seq: u64,
    closed: bool,
}

impl Default for Pending {
    fn default() -> Self {
        Self::with_cap(MAX_PENDING)
    }
}

impl Pending {
    fn with_cap(cap: usize) -> Self {
        Self {
            cap,
            latest: HashMap::new(),
            order: VecDeque::new(),
            dropped: 0,
            inflight: 0,
            seq: 0,
            closed: false,
        }
    }

    fn push(&mut self, change: Change) {
        self.seq += 1;
        let e = entity(&change.op, self.seq);
        if let Some(slot) = self.latest.get_mut(&e) {
            *slot = change;
        } else if self.latest.len() < self.cap {
            self.latest.insert(e, change);
            self.order.push_back(e);
        } else {
            self.dropped += 1;
        }
    }

    fn take(&mut self, max: usize) -> Vec<Change> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(e) = self.order.pop_front() else { break };
            if let Some(c) = self.latest.remove(&e) {
                out.push(c);
            }
        }
        // Coalescing keeps an entity where it first waited, so a holding can come before the
        // node or manifest it needs (a node that expired and registered again): within a
        // batch, what others depend on goes first, and removals after what they remove.
        out.sort_by_key(|c| rank(&c.op));
        out
    }
}

/// The writer's queue: the tracker's request handlers push, the writer thread takes.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Whether the last write failed (Redis unreachable).
    down: AtomicBool,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues changes for Redis; never blocks on Redis.
    pub(crate) fn push(&self, ops: &[Persist], expiry: bool) {
        if ops.is_empty() {
            return;
        }
        let mut p = self.lock();
        for op in ops {
            p.push(Change { op: op.clone(), expiry });
        }
        drop(p);
        self.wake.notify_one();
    }

    /// Waits up to `wait` for everything queued to be written (at shutdown), then stops the
    /// writer.
    pub(crate) fn close(&self, wait: Duration) {
        let p = self.lock();
        let (mut p, _) = self
            .wake
            .wait_timeout_while(p, wait, |p| {
                (!p.latest.is_empty() || p.inflight > 0) && !self.down.load(Ordering::Relaxed)
            })
            .unwrap_or_else(|e| e.into_inner());
        p.closed = true;
        drop(p);
        self.wake.notify_all();
    }

    /// The next chunk to write; `None` once closed.
    fn next(&self) -> Option<Vec<Change>> {
        let mut p = self.lock();
        loop {
            if p.closed {
                return None;
            }
            let dropped = std::mem::take(&mut p.dropped);
            if dropped > 0 {
                warn!(dropped, "changes for Redis dropped: too many waiting (other replicas learn them when nodes announce again)");
            }
            let chunk = p.take(CHUNK);
            if !chunk.is_empty() {
                p.inflight = chunk.len();
                return Some(chunk);
            }
            // Woken by a push or by close; the timeout only re-checks.
            p = self
                .wake
                .wait_timeout(p, Duration::from_secs(1))
                .map_or_else(|e| e.into_inner().0, |r| r.0);
        }
    }

    fn written(&self) {
        self.lock().inflight = 0;
        self.wake.notify_all();
    }
}

/// A connection made on demand, retried with backoff, whose outages are logged once each.
struct Link {
    url: String,
    role: &'static str,
    conn: Option<RedisState>,
    backoff: Duration,
    down: bool,
}

impl Link {
    fn new(url: &str, role: &'static str) -> Self {
        Self { url: url.to_string(), role, conn: None, backoff: FIRST_BACKOFF, down: false }
    }

    /// The connection, or `None` after a failed attempt (having waited out the backoff).
    fn get(&mut self) -> Option<&mut RedisState> {
        if self.conn.is_none() {
            match RedisState::connect(&self.url, COMMAND_TIMEOUT) {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.failed(&e);
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) {
        self.conn = None;
        if !self.down {
            warn!(error = %e, role = self.role, "Redis unreachable: serving from this replica's memory, retrying");
            self.down = true;
        } else {
            debug!(error = %e, role = self.role, "Redis still unreachable");
        }
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// A command succeeded; true if Redis was unreachable before.
    fn ok(&mut self) -> bool {
        let was_down = self.down;
        if was_down {
            info!(role = self.role, "Redis reachable again");
            self.down = false;
        }
        self.backoff = FIRST_BACKOFF;
        was_down
    }
}

/// Writes queued changes until the writer is closed.
pub(crate) fn write_loop(url: String, replica: String, writer: Arc<Writer>) {
    let mut link = Link::new(&url, "writer");
    while let Some(chunk) = writer.next() {
        // The same chunk until it is written: later changes of its entities come after it.
        loop {
            let Some(conn) = link.get() else {
                writer.down.store(true, Ordering::Relaxed);
                continue;
            };
            match conn.write(&replica, &chunk) {
                Ok(()) => {
                    link.ok();
                    writer.down.store(false, Ordering::Relaxed);
                    writer.written();
                    break;
                }
                Err(e) => {
                    writer.down.store(true, Ordering::Relaxed);
                    link.failed(&e);
                }
            }
            if writer.lock().closed {
                return;
            }
        }
    }
}

/// Where the reader is: the last stream entry read and the epoch of the state it read from.
#[derive(Debug)]
pub(crate) struct Position {
    /// The id of the last entry read (the stream's end when the snapshot was loaded).
    pub(crate) entry: String,
    /// [`RedisState::epoch`] when the snapshot was loaded.
    pub(crate) epoch: String,
    /// The tracker key (stored form), offered again if Redis lost it.
    pub(crate) key: Vec<u8>,
}

/// Applies the other replicas' changes to `index` until `stop` is set, from `at`.
pub(crate) fn read_loop(
    url: String,
    replica: String,
    at: Position,
    index: Arc<RwLock<Index>>,
    writer: Arc<Writer>,
    stop: Arc<AtomicBool>,
) {
    let Position { entry: mut position, mut epoch, key } = at;
    let mut link = Link::new(&url, "reader");
    while !stop.load(Ordering::Relaxed) {
        let Some(conn) = link.get() else { continue };
        let read = conn.read(&position, READ_BLOCK);
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                link.failed(&e);
                continue;
            }
        };
        // Back after an outage, or behind the stream: did Redis lose the state meanwhile?
        if link.ok() || read == Read::Gap {
            let Some(conn) = link.get() else { continue };
            let now = match conn.epoch() {
                Ok(e) => e,
                Err(e) => {
                    link.failed(&e);
                    continue;
                }
            };
            let lost = now != epoch;
            if lost {
                // The key first: a replica starting now must take this one, not its own.
                match conn.offer_key(&key) {
                    Ok(Some(k)) if k == key => {}
                    Ok(_) => warn!("another tracker key is in Redis now: replicas started since present another tracker id"),
                    Err(e) => {
                        link.failed(&e);
                        continue;
                    }
                }
            }
            if lost || read == Read::Gap {
                match resync(conn, &index, &writer, lost) {
                    Ok(p) => (position, epoch) = (p, now),
                    Err(e) => link.failed(&e),
                }
                continue;
            }
        }
        match read {
            Read::Batches { batches, position: next, skipped } => {
                if skipped > 0 {
                    warn!(
                        skipped,
                        "change stream entries in Redis that do not decode were skipped"
                    );
                }
                position = next;
                let mut ix = index.write().unwrap_or_else(|p| p.into_inner());
                for b in batches.into_iter().filter(|b| b.replica != replica && !b.expiry) {
                    apply(&mut ix, b.ops);
                }
            }
            // Handled above.
            Read::Gap => {}
        }
    }
}

/// Applies changes from Redis, skipping (with a debug line) those the index refuses.
fn apply(ix: &mut Index, ops: Vec<Persist>) {
    let now = now_ms();
    for op in ops {
        if let Err(e) = ix.apply_remote(now, op) {
            debug!(reason = %e, "change from another replica skipped");
        }
    }
}

/// After a gap in the stream: the snapshot again, applied over this index; if Redis `lost`
/// the state (a new epoch), this replica's state is written back. Returns the new position.
fn resync(
    conn: &mut RedisState,
    index: &RwLock<Index>,
    writer: &Writer,
    lost: bool,
) -> Result<String, shoal_index::RedisStateError> {
    let position = conn.tail()?;
    let (nodes, holdings, manifests) = conn.load()?;
    if lost {
        warn!("Redis lost the shared state: writing this replica's back");
    } else {
        warn!("behind the change stream in Redis: loading its snapshot again");
    }
    let mut ix = index.write().unwrap_or_else(|p| p.into_inner());
    let ops = nodes
        .into_iter()
        .map(|(n, e)| Persist::PutNode(n, e))
        .chain(manifests.into_iter().map(|(c, m)| Persist::PutManifest(c, m.into())))
        .chain(holdings.into_iter().map(|(c, n, bf)| Persist::PutHolding(c, n, bf)))
        .collect();
    apply(&mut ix, ops);
    if lost {
        writer.push(&ix.persisted(), false);
    }
    Ok(position)
}

/// A fresh id for this replica's stream entries.
pub(crate) fn replica_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use shoal_core::Bitfield;
    use shoal_index::NodeEntry;

    use super::*;

    fn node() -> NodeId {
        let kp = libp2p_identity::Keypair::generate_ed25519();
        NodeId::from_public_key(&kp.public()).unwrap()
    }

    #[test]
    fn waiting_changes_keep_the_latest_per_entity_in_first_come_order() {
        let (a, b) = (node(), node());
        let c = ContentId([1; 32]);
        let mut p = Pending::default();
        p.push(Change { op: Persist::RemoveNode(a), expiry: true });
        p.push(Change { op: Persist::RemoveManifest(c), expiry: false });
        p.push(Change { op: Persist::RemoveNode(b), expiry: false });
        // a's later change replaces its earlier one, in its place.
        p.push(Change { op: Persist::RemoveHolding(c, a), expiry: false });
        p.push(Change { op: Persist::RemoveNode(a), expiry: false });
        let all = p.take(10);
        assert_eq!(
            all.iter().map(|c| (c.op.clone(), c.expiry)).collect::<Vec<_>>(),
            // Within a batch: removals of holdings, then of manifests, then of nodes (in the
            // order they first waited).
            vec![
                (Persist::RemoveHolding(c, a), false),
                (Persist::RemoveManifest(c), false),
                (Persist::RemoveNode(a), false),
                (Persist::RemoveNode(b), false),
            ]
        );
        assert!(p.take(10).is_empty());
    }

    #[test]
    fn a_holding_never_goes_before_its_node() {
        // While Redis was away: a holding was recorded, its node expired and registered again.
        // The node waits where it first waited (after the holding) but is written first.
        let a = node();
        let c = ContentId([2; 32]);
        let mut p = Pending::default();
        p.push(Change { op: Persist::PutHolding(c, a, Bitfield::new(8)), expiry: false });
        p.push(Change { op: Persist::RemoveNode(a), expiry: true });
        let entry = NodeEntry {
            storage: false,
            addrs: Vec::new(),
            last_seen_ms: 1,
            active_uploads: 0,
            upload_rate: 0,
            region: None,
        };
        p.push(Change { op: Persist::PutNode(a, entry), expiry: false });
        let kinds: Vec<u8> = p.take(10).iter().map(|c| rank(&c.op)).collect();
        assert_eq!(kinds, vec![0, 2]);
    }

    #[test]
    fn waiting_changes_are_bounded() {
        let mut p = Pending::with_cap(100);
        for i in 0..110u64 {
            let mut c = [0u8; 32];
            c[..8].copy_from_slice(&i.to_be_bytes());
            p.push(Change { op: Persist::RemoveManifest(ContentId(c)), expiry: false });
        }
        assert_eq!(p.latest.len(), 100);
        assert_eq!(p.dropped, 10);
        // A later change of a waiting entity still replaces it at the cap.
        p.push(Change { op: Persist::RemoveManifest(ContentId([0; 32])), expiry: true });
        assert_eq!(p.dropped, 10);
        assert_eq!(p.take(60).len(), 60);
        assert_eq!(p.take(60).len(), 40);
        assert_eq!(Pending::default().cap, MAX_PENDING);
    }
}
