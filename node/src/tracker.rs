//! The node's side of the tracker protocol.
//!
//! One client actor per tracker session keeps a connection, registers, announces what it may
//! (with manifests the tracker asks for), sends newly verified pieces as batched deltas and
//! heartbeats with the node's load. When the connection drops or the tracker has forgotten
//! the node, it reconnects with backoff and does it all again; a tracker that says "slow down"
//! is retried later. The current connection is published for lookups.
//!
//! Several trackers (`--tracker A,B`, or a ticket naming several) are replicas of one: the
//! session talks to one at a time and, when a call to it times out or its connection fails,
//! fails over to the next in order, registering and announcing everything there; lookups use
//! whichever connection is current. Each entry is pinned on its own.
//!
//! Trust: the tracker's key is pinned. A tracker given as `NODE_ID@HOST:PORT` must prove that
//! id in the TLS handshake; one given as `HOST:PORT` is trusted on first connect and pinned for
//! the life of the process. Only the node's own `--tracker` ([`Scope::Own`]) gets a full
//! session: everything the node holds is announced there, its re-seed directives and stored
//! notices are obeyed, and its key signs the re-seed tokens a storage node accepts. A tracker
//! named only in a ticket ([`Scope::Content`]) registers the node and sees the announces of
//! that one content, for as long as the fetch holds the handle; its directives are ignored.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use quinn::Connection;
use shoal_core::ticket::{parse_trackers, TrackerAddr};
use shoal_core::{ContentId, NodeId, Ticket};
use shoal_wire::tracker::{Directive, Placement, TrackerRequest, TrackerResponse};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::contents::Contents;
use crate::events::Events;
use crate::net::Net;
use crate::stats::Stats;
use crate::upload::Uploads;

mod calls;
mod session;
#[cfg(test)]
use calls::CALL_DEADLINE;
pub(crate) use calls::{
    call, call_within, heartbeat_deadline, lookup, manifest, report_undelivered, resolve,
};
use session::Session;

/// How often batched deltas go out.
const DELTA_EVERY: Duration = Duration::from_millis(250);
/// Attempts of one request the tracker answers "slow down", and the first pause between them
/// (doubling up to [`MAX_PAUSE`]).
const RATE_LIMITED_ATTEMPTS: u32 = 8;
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// What a tracker session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The node's own `--tracker`: every content announced, directives obeyed, tokens trusted.
    Own,
    /// A tracker from a ticket: lookups, and announces of this content only (none if `None`).
    Content(Option<ContentId>),
}

impl Scope {
    fn covers(self, content: ContentId) -> bool {
        match self {
            Self::Own => true,
            Self::Content(c) => c == Some(content),
        }
    }
}

/// Re-seed directives waiting for the node to carry them out; more are dropped (the tracker
/// repeats what is still missing at the next heartbeat).
const DIRECTIVES_BACKLOG: usize = 64;

/// What the node learned from its own tracker. Each set is held only for set access.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// The pinned node id of this node's own `--tracker` (never a ticket's tracker): re-seed
    /// tokens signed by it count.
    pub(crate) tracker_ids: Mutex<std::collections::HashSet<NodeId>>,
    /// Contents the tracker reported complete in storage.
    pub(crate) stored: Mutex<std::collections::HashSet<ContentId>>,
    /// The region the own tracker placed this node in (`None`: the tracker has no regions).
    pub(crate) region: Mutex<Option<shoal_core::Region>>,
    /// The region this node states to its trackers (`shoal daemon --region`).
    pub(crate) stated_region: Option<shoal_core::Region>,
    /// The regions of peers, as lookups named them or (for peers no lookup named) as they
    /// said in their hellos, at most [`MAX_PEER_REGIONS`]: which received bytes crossed
    /// regions.
    pub(crate) peer_regions: Mutex<HashMap<NodeId, shoal_core::Region>>,
    /// Peers a tracker named as admitted storage (its storage list, re-seed directives), at
    /// most [`MAX_PEER_REGIONS`]: the `storage` peer kind of the byte metrics.
    pub(crate) storage_peers: Mutex<std::collections::HashSet<NodeId>>,
}

/// The most peers whose region a node remembers; past it the table starts afresh.
pub(crate) const MAX_PEER_REGIONS: usize = 4096;

impl Known {
    /// This node's region, as its own tracker placed it.
    pub(crate) fn region(&self) -> Option<shoal_core::Region> {
        self.region.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers the region `peer` is in.
    pub(crate) fn note_peer_region(&self, peer: NodeId, region: Option<&shoal_core::Region>) {
        self.remember_region(peer, region, true);
    }

    /// Remembers the region `peer` stated in its hello, unless a lookup named one already
    /// (the tracker's word counts over the peer's).
    pub(crate) fn note_stated_region(&self, peer: NodeId, region: Option<&shoal_core::Region>) {
        self.remember_region(peer, region, false);
    }

    /// `note_peer_region` (`replace`) and `note_stated_region` (only where none is known), under
    /// one lock: a lookup's answer landing meanwhile is never overwritten by a peer's claim.
    fn remember_region(&self, peer: NodeId, region: Option<&shoal_core::Region>, replace: bool) {
        let Some(region) = region else { return };
        let mut map = self.peer_regions.lock().unwrap_or_else(|p| p.into_inner());
        if !replace && map.contains_key(&peer) {
            return;
        }
        if map.len() >= MAX_PEER_REGIONS && !map.contains_key(&peer) {
            map.clear();
        }
        map.insert(peer, region.clone());
    }

    /// Remembers that a tracker named `peer` as admitted storage.
    pub(crate) fn note_storage(&self, peer: NodeId) {
        let mut set = self.storage_peers.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_PEER_REGIONS && !set.contains(&peer) {
            set.clear();
        }
        set.insert(peer);
    }

    /// True if a tracker named `peer` as admitted storage.
    pub(crate) fn is_storage(&self, peer: &NodeId) -> bool {
        self.storage_peers.lock().unwrap_or_else(|p| p.into_inner()).contains(peer)
    }

    /// True if `peer` is in another region than this node's.
    pub(crate) fn is_elsewhere(&self, peer: &NodeId) -> bool {
        self.region_label(peer) == "other"
    }

    /// Both metrics labels of a peer, [`Self::peer_kind`] and [`Self::region_label`]: what a
    /// piece's bytes are counted under (once per piece, not per chunk).
    pub(crate) fn labels(&self, peer: &NodeId) -> (&'static str, &'static str) {
        (self.peer_kind(peer), self.region_label(peer))
    }

    /// A peer's kind as far as this node knows, a metrics label: `storage` if a tracker named
    /// it as storage, else `node`.
    pub(crate) fn peer_kind(&self, peer: &NodeId) -> &'static str {
        if self.is_storage(peer) {
            "storage"
        } else {
            "node"
        }
    }

    /// Whether a peer is in this node's region, a metrics label: `same`, `other`, or
    /// `unknown` unless both regions are known.
    pub(crate) fn region_label(&self, peer: &NodeId) -> &'static str {
        let mine = self.region.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mine) = mine.as_ref() else { return "unknown" };
        let map = self.peer_regions.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(peer) {
            Some(r) if r == mine => "same",
            Some(_) => "other",
            None => "unknown",
        }
    }
}

/// The parts of the node a tracker session reads (what it holds, its load) and reports to
/// (what the tracker told it).
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    pub(crate) net: Arc<Net>,
    pub(crate) contents: Arc<Contents>,
    pub(crate) events: Events,
    pub(crate) stats: Arc<Stats>,
    pub(crate) uploads: Arc<Uploads>,
    pub(crate) known: Arc<Known>,
    /// Re-seed directives of the own tracker, for whoever carries them out (`push`).
    pub(crate) directives: mpsc::Sender<Directive>,
}

/// The tracker client: the node's own tracker (started on first use) and the sessions of
/// tickets' trackers.
#[derive(Debug)]
pub struct Trackers {
    parts: Parts,
    /// The trackers named at start (`--tracker A,B`), parsed: each address and the node id it
    /// must prove, if given; empty without a tracker.
    own: Vec<TrackerAddr>,
    /// The client of the own tracker, started on first use. Held only to read or set.
    own_handle: Mutex<Option<TrackerHandle>>,
}

impl Trackers {
    /// A client for `own` (the `--tracker` list, if any); directives of the own tracker go to
    /// the returned receiver.
    pub(crate) fn new(
        parts_without_directives: impl FnOnce(mpsc::Sender<Directive>) -> Parts,
        own: Vec<TrackerAddr>,
    ) -> (Self, mpsc::Receiver<Directive>) {
        let (tx, rx) = mpsc::channel(DIRECTIVES_BACKLOG);
        let parts = parts_without_directives(tx);
        (Self { parts, own, own_handle: Mutex::new(None) }, rx)
    }

    /// What the node learned from its own tracker.
    pub(crate) fn known(&self) -> &Known {
        &self.parts.known
    }

    /// The (first) tracker named at start (`--tracker`), if any.
    pub fn default_addr(&self) -> Option<&str> {
        self.own.first().map(|t| t.addr.as_str())
    }

    /// A ticket for `content` without peers, naming this node's own trackers in order, each
    /// pinned to the node id it was given with or proved.
    pub(crate) fn ticket(&self, content: ContentId) -> Ticket {
        // Started first, so that ids proved by now are in it.
        let _ = self.own();
        Ticket::new(content).with_trackers(&self.own_pinned())
    }

    /// This node's own trackers in order, each with the node id it was given with or proved.
    fn own_pinned(&self) -> Vec<TrackerAddr> {
        let ids = self
            .own_handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|h| h.node_ids())
            .unwrap_or_default();
        let pinned = |(i, t): (usize, &TrackerAddr)| TrackerAddr {
            node_id: ids.get(i).copied().flatten().or(t.node_id),
            addr: t.addr.clone(),
        };
        self.own.iter().enumerate().map(pinned).collect()
    }

    /// One request to this node's own tracker; without one, an error saying `need` (what the
    /// tracker is needed for) and how to name one. Cancel-safe.
    pub(crate) async fn call_own(
        &self,
        req: &TrackerRequest,
        need: &str,
    ) -> anyhow::Result<TrackerResponse> {
        let own = self.own().ok_or_else(|| {
            anyhow!("{need} needs a tracker: start the daemon with --tracker HOST:PORT")
        })?;
        let conn = own
            .connection(Duration::from_secs(5))
            .await
            .map_err(|e| anyhow!("tracker {} is unreachable: {e}", own.addr))?;
        Ok(call(&conn, req, None).await?.0)
    }

    /// The storage nodes the own tracker lists (least loaded first), each with an address.
    pub(crate) async fn storage_nodes(
        &self,
        need: &str,
    ) -> anyhow::Result<Vec<shoal_wire::tracker::StorageNode>> {
        match self.call_own(&TrackerRequest::FindStorage, need).await? {
            TrackerResponse::StorageNodes { nodes } => {
                nodes.iter().for_each(|n| self.known().note_storage(n.node_id));
                Ok(nodes.into_iter().filter(|n| !n.addrs.is_empty()).collect())
            }
            other => bail!("unexpected tracker answer {other:?}"),
        }
    }

    /// The client of this node's own `--tracker` (full session), started on first use.
    pub fn own(&self) -> Option<TrackerHandle> {
        if self.own.is_empty() {
            return None;
        }
        let target = self.own.clone();
        let mut own = self.own_handle.lock().unwrap_or_else(|p| p.into_inner());
        let h = own.get_or_insert_with(|| spawn(self.parts.clone(), target, Scope::Own));
        Some(h.clone())
    }

    /// True if `targets` name one of this node's own trackers: the same address, and no other
    /// id than the one it was given with or proved.
    fn is_own(&self, targets: &[TrackerAddr]) -> bool {
        self.own_pinned().iter().any(|own| {
            targets
                .iter()
                .any(|t| own.addr == t.addr && (t.node_id.is_none() || t.node_id == own.node_id))
        })
    }

    /// The client of the tracker(s) at `addr` (`HOST:PORT` or `NODE_ID@HOST:PORT`, or several
    /// comma-separated): the own tracker's full session if it names it, otherwise a new
    /// session scoped to lookups.
    pub fn for_addr(&self, addr: &str) -> TrackerHandle {
        self.session(targets_of(addr), Scope::Content(None))
    }

    fn session(&self, target: Vec<TrackerAddr>, scope: Scope) -> TrackerHandle {
        if self.is_own(&target) {
            if let Some(h) = self.own() {
                return h;
            }
        }
        spawn(self.parts.clone(), target, scope)
    }

    /// The tracker a fetch of `ticket` should use: `override_addr` (`get --tracker`, one or
    /// several) or the ticket's (in order, each pinned to the id the ticket gives). The own tracker's full session if it is
    /// the same tracker; otherwise a session scoped to this one content that ends when the
    /// returned handle's last clone is dropped. `None` without any tracker.
    pub fn for_fetch(
        &self,
        ticket: &shoal_core::Ticket,
        override_addr: Option<&str>,
    ) -> Option<TrackerHandle> {
        let target = match override_addr {
            Some(a) => targets_of(a),
            None => ticket.trackers(),
        };
        if target.is_empty() {
            return None;
        }
        Some(self.session(target, Scope::Content(Some(ticket.content))))
    }
}

/// The trackers `addr` names. Both entry points (`shoal get --tracker` and the control API)
/// refuse a malformed list with its reason first; the fallback only keeps this total.
fn targets_of(addr: &str) -> Vec<TrackerAddr> {
    parse_trackers(addr)
        .ok()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| vec![TrackerAddr { node_id: None, addr: addr.to_string() }])
}

/// Why no tracker connection is at hand.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No session came up within the wait.
    #[error("no answer within {}s{}", .waited.as_secs(), .last.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Unanswered {
        /// How long it was waited for.
        waited: Duration,
        /// How the last attempt ended (resolving, dialing, registering), if one ended yet.
        last: Option<String>,
    },
    /// The session is over (the node is shutting down).
    #[error("the tracker session has ended")]
    Ended,
}

/// A handle on the client of one tracker session. For a [`Scope::Content`] session, dropping
/// the last clone ends the session and closes its connection.
#[derive(Debug, Clone)]
pub struct TrackerHandle {
    /// The tracker's address as given (`host:port`; several comma-separated).
    pub addr: String,
    conn: watch::Receiver<Option<Connection>>,
    // Held only to read or replace.
    error: Arc<Mutex<Option<String>>>,
    /// Each tracker's node id once pinned. Each held only to read or set.
    pinned: Arc<[Mutex<Option<NodeId>>]>,
    /// Where the tracker placed this node at the last registration. Held only to read or set.
    placement: Arc<Mutex<Placement>>,
    scope: Scope,
}

impl TrackerHandle {
    /// The current connection, waiting up to `wait` for one. On failure, the last error.
    /// Cancel-safe.
    pub async fn connection(&self, wait: Duration) -> Result<Connection, ConnectError> {
        let mut rx = self.conn.clone();
        let got = tokio::time::timeout(wait, rx.wait_for(|c| c.is_some())).await;
        match got {
            // `wait_for` returned a connection: it is `Some`.
            Ok(Ok(c)) => c.clone().ok_or(ConnectError::Ended),
            Ok(Err(_)) => Err(ConnectError::Ended),
            Err(_) => {
                let last = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Err(ConnectError::Unanswered { waited: wait, last })
            }
        }
    }

    /// The current connection, if there is one.
    pub fn current(&self) -> Option<Connection> {
        self.conn.borrow().clone()
    }

    /// The (first) tracker's node id: the one given, or the one it proved first.
    pub fn node_id(&self) -> Option<NodeId> {
        self.node_ids().into_iter().next().flatten()
    }

    /// Resolves once `conn` is no longer the session's connection: it failed, and the session
    /// moves on (to the next tracker, with several). A call on it then is abandoned rather
    /// than waited out. Cancel-safe.
    pub(crate) async fn replaced(&self, conn: &Connection) {
        let id = conn.stable_id();
        let mut rx = self.conn.clone();
        // An ended session (the sender gone) counts as replaced too.
        let _ = rx.wait_for(|c| c.as_ref().map(Connection::stable_id) != Some(id)).await;
    }

    /// How many trackers the session may use (replicas, in order).
    pub fn targets(&self) -> usize {
        self.pinned.len()
    }

    /// Each tracker's node id, in order: the one given, or the one it proved first.
    pub fn node_ids(&self) -> Vec<Option<NodeId>> {
        self.pinned.iter().map(|p| *p.lock().unwrap_or_else(|p| p.into_inner())).collect()
    }

    /// True for the node's own `--tracker` session: only its word about peers (their regions)
    /// is kept node-wide; a ticket's tracker informs one fetch.
    pub(crate) fn is_own(&self) -> bool {
        self.scope == Scope::Own
    }

    /// Where the tracker placed this node (no region until it registered, or if the tracker
    /// has none).
    pub fn placement(&self) -> Placement {
        self.placement.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Starts a client of the trackers at `targets` (at least one; replicas, tried in order) for
/// `node`.
fn spawn(node: Parts, targets: Vec<TrackerAddr>, scope: Scope) -> TrackerHandle {
    let (tx, rx) = watch::channel(None);
    let error = Arc::new(Mutex::new(None));
    let pinned: Arc<[Mutex<Option<NodeId>>]> =
        targets.iter().map(|t| Mutex::new(t.node_id)).collect();
    let placement = Arc::new(Mutex::new(Placement::default()));
    let all = targets.iter().map(|t| t.addr.as_str()).collect::<Vec<_>>().join(",");
    let handle = TrackerHandle {
        addr: all,
        conn: rx,
        error: error.clone(),
        pinned: pinned.clone(),
        placement: placement.clone(),
        scope,
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let warned = AtomicBool::new(false);
        // The tracker in use; the next one after a failure, the first again after the last.
        let mut at = 0;
        loop {
            let target = &targets[at];
            let ctx = Session {
                node: &node,
                addr: &target.addr,
                scope,
                pinned: &pinned[at],
                placement: &placement,
                warned: &warned,
                failover: targets.len() > 1,
            };
            let started = Instant::now();
            let err = tokio::select! {
                biased;
                _ = tx.closed() => break,
                r = ctx.run(&tx) => match r {
                    Err(e) => e,
                    Ok(never) => match never {},
                },
            };
            let _ = tx.send(None);
            let msg = format!("{err:#}");
            debug!(tracker = %target.addr, error = %msg, "tracker session ended");
            *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(250);
            }
            if targets.len() > 1 {
                at = (at + 1) % targets.len();
                info!(from = %target.addr, to = %targets[at].addr, error = %msg, "failing over to the next tracker");
                // Straight to the next one; a pause only after trying them all.
                if at != 0 {
                    continue;
                }
            }
            tokio::select! {
                _ = tx.closed() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
        // Every handle is gone: the fetch that needed this tracker is over.
        if let Some(c) = tx.send_replace(None) {
            c.close(0u32.into(), b"done");
        }
        debug!(tracker = %targets.iter().map(|t| t.addr.as_str()).collect::<Vec<_>>().join(","), "tracker session closed");
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(error: Option<&str>) -> (TrackerHandle, watch::Sender<Option<Connection>>) {
        let (tx, rx) = watch::channel(None);
        let h = TrackerHandle {
            addr: "127.0.0.1:1".into(),
            conn: rx,
            error: Arc::new(Mutex::new(error.map(str::to_string))),
            pinned: Arc::from([Mutex::new(None)]),
            placement: Arc::new(Mutex::new(Placement::default())),
            scope: Scope::Content(None),
        };
        (h, tx)
    }

    #[tokio::test]
    async fn no_connection_in_time_says_how_the_last_attempt_ended() {
        let wait = Duration::from_millis(20);
        let (h, _tx) = handle(Some("cannot reach tracker 127.0.0.1:1"));
        let e = h.connection(wait).await.unwrap_err();
        assert!(
            matches!(&e, ConnectError::Unanswered { waited, last: Some(_) } if *waited == wait)
        );
        assert!(e.to_string().contains("cannot reach tracker"), "{e}");
        // Before any attempt ended there is nothing more to say.
        let (h, _tx) = handle(None);
        let e = h.connection(wait).await.unwrap_err();
        assert!(matches!(e, ConnectError::Unanswered { last: None, .. }), "{e:?}");
    }

    #[test]
    fn heartbeats_fail_over_sooner_than_other_calls_time_out() {
        assert_eq!(heartbeat_deadline(2_000, false), CALL_DEADLINE);
        // Boundary table: two intervals, at least 2 s, at most the call deadline.
        for (ms, secs) in [(200, 2), (1_000, 2), (2_000, 4), (4_500, 9), (60_000, 10)] {
            assert_eq!(heartbeat_deadline(ms, true), Duration::from_secs(secs), "{ms} ms");
        }
    }

    #[test]
    fn tracker_lists_name_every_tracker_in_order() {
        let l = targets_of("a:1,b:2");
        assert_eq!(l.iter().map(|t| t.addr.as_str()).collect::<Vec<_>>(), ["a:1", "b:2"]);
        // Unparsable: kept whole, so the session says why it cannot connect.
        assert_eq!(targets_of("nope")[0].addr, "nope");
    }

    #[tokio::test]
    async fn an_ended_session_is_told_apart_from_a_slow_one() {
        let (h, tx) = handle(Some("connection lost"));
        drop(tx);
        let e = h.connection(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ConnectError::Ended), "{e:?}");
    }
}
