//! The connections of one fetch and what the report says of each peer. The policy (whom to
//! dial, when to drop) is `shoal_swarm::PeerSet`'s; this only carries it out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::{Connection, VarInt};
use shoal_core::manifest::escape_name;
use shoal_core::{NodeId, PeerAddr};
use shoal_swarm::{Admit, DropReason, PeerSet};
use shoal_wire::tracker::{PeerInfo, Placement};
use tokio::task::JoinSet;
use tracing::debug;

use super::PeerReport;
use crate::net::Net;
use crate::serve::CLOSE_BANNED;
use crate::tracker::Known;

/// Peers remembered for the report; beyond this, closed peers that delivered nothing are
/// forgotten first, so a fetch that meets thousands of useless peers stays bounded.
const MAX_LINKS: usize = 1024;
/// Dial errors kept for the message when nobody could be reached.
const MAX_DIAL_ERRORS: usize = 8;

/// Signs of life of a peer's requests, updated by the request tasks and read by the driver.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Piece bytes received from the peer.
    pub(super) received: AtomicU64,
    /// Requests to the peer waiting on our own rate limit right now.
    pub(super) waiting: AtomicU32,
}

/// Counts a request as waiting on our rate limit while alive (also when its task is aborted).
pub(super) struct Waiting<'a>(&'a Counters);

impl<'a> Waiting<'a> {
    pub(super) fn new(c: &'a Counters) -> Self {
        c.waiting.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One peer met by this fetch.
pub(super) struct Link {
    /// `None` once closed.
    pub(super) conn: Option<Connection>,
    pub(super) addr: SocketAddr,
    pub(super) pieces: u32,
    pub(super) bytes: u64,
    pub(super) counters: Arc<Counters>,
    /// Why it stopped serving us, in words, if it did (escaped: it may quote the peer).
    pub(super) done: Option<String>,
    pub(super) reason: Option<DropReason>,
}

type DialResult = (SocketAddr, Result<(Connection, NodeId), String>);

/// The set's policy plus the connections it governs.
pub(super) struct Links {
    /// This node on the network: dials, and never dials itself.
    pub(super) net: Arc<Net>,
    pub(super) set: PeerSet<NodeId, SocketAddr>,
    pub(super) links: BTreeMap<NodeId, Link>,
    pub(super) dials: JoinSet<DialResult>,
    pub(super) dial_errors: Vec<String>,
}

impl Links {
    pub(super) fn new(net: Arc<Net>, set: PeerSet<NodeId, SocketAddr>) -> Self {
        Self { net, set, links: BTreeMap::new(), dials: JoinSet::new(), dial_errors: Vec::new() }
    }

    /// Learns the regions of peers a lookup named: with the tracker routing by region, peers
    /// of other regions are asked only for what this node's region lacks (see
    /// [`shoal_swarm::Picker::set_remote`]). `known` (node-wide: whose bytes count as crossing
    /// regions, see `Known::is_elsewhere`) is told only what the node's own tracker says
    /// (`known` is `None` for a ticket's tracker, whose word must not outlive the fetch).
    pub(super) fn learn_regions(
        &mut self,
        found: &[PeerInfo],
        placement: &Placement,
        known: Option<&Known>,
    ) {
        for p in found {
            let Some(theirs) = &p.region else { continue };
            if let Some(known) = known {
                known.note_peer_region(p.node_id, Some(theirs));
            }
            if let (Some(mine), true) = (&placement.region, placement.routing) {
                self.set.set_remote(p.node_id, theirs != mine);
            }
        }
    }

    /// Offers candidates to the set, never this node itself (the one place it is filtered
    /// out): returns how many were not this node (the set may still ignore duplicates).
    pub(super) fn offer(
        &mut self,
        now: Instant,
        peers: impl IntoIterator<Item = PeerAddr>,
    ) -> usize {
        let mut offered = 0;
        for p in peers {
            if p.node_id != Some(self.net.node_id()) {
                self.set.add_candidate(now, p.addr, p.node_id);
                offered += 1;
            }
        }
        offered
    }

    /// Starts a dial (bounded in time by the endpoint's connect timeout).
    pub(super) fn dial(&mut self, addr: SocketAddr, node_id: Option<NodeId>) {
        let net = self.net.clone();
        let target = PeerAddr { node_id, addr };
        self.dials.spawn(async move {
            let r = net.endpoint.connect(&target, shoal_wire::ALPN).await;
            (addr, r.map_err(|e| e.to_string()))
        });
    }

    /// A dial finished: the set admits the peer or the new connection is closed.
    pub(super) fn dialed(&mut self, now: Instant, (addr, result): DialResult) {
        let (conn, id) = match result {
            Ok((conn, id)) if id == self.net.node_id() => {
                conn.close(VarInt::from_u32(0), b"self");
                self.set.handle_dialed(now, addr, None);
                return;
            }
            Ok(ok) => ok,
            Err(e) => {
                // A refused handshake may carry the peer's own close reason.
                let e = escape_name(&e);
                debug!(%addr, error = %e, "cannot reach a peer");
                if self.dial_errors.len() < MAX_DIAL_ERRORS {
                    self.dial_errors.push(e);
                }
                self.set.handle_dialed(now, addr, None);
                return;
            }
        };
        if self.set.handle_dialed(now, addr, Some(id)) == Admit::Refused {
            conn.close(VarInt::from_u32(0), b"duplicate");
            return;
        }
        debug!(peer = %id, %addr, "connected");
        if self.links.len() >= MAX_LINKS {
            let forget = self
                .links
                .iter()
                .find(|(_, l)| l.conn.is_none() && l.pieces == 0)
                .map(|(&id, _)| id);
            if let Some(f) = forget {
                self.links.remove(&f);
            }
        }
        // A peer met again (after its cool-down) keeps its figures for the report.
        let (pieces, bytes) = self.links.get(&id).map_or((0, 0), |l| (l.pieces, l.bytes));
        let counters = Arc::new(Counters::default());
        let link =
            Link { conn: Some(conn), addr, pieces, bytes, counters, done: None, reason: None };
        self.links.insert(id, link);
    }

    /// The open connection to a peer.
    pub(super) fn conn(&self, peer: NodeId) -> Option<Connection> {
        self.links.get(&peer).and_then(|l| l.conn.clone())
    }

    /// Notes why a peer stopped serving us (the first reason stays). `why` may quote the peer
    /// (a reject's text, a close reason): it is stored escaped, so no control character or
    /// bidi override it sent reaches a terminal through an error message.
    pub(super) fn note(&mut self, peer: NodeId, why: impl AsRef<str>) {
        if let Some(l) = self.links.get_mut(&peer) {
            l.done.get_or_insert_with(|| escape_name(why.as_ref()));
        }
    }

    /// Closes the connection the set dropped.
    pub(super) fn close(&mut self, peer: NodeId, reason: DropReason) {
        let Some(l) = self.links.get_mut(&peer) else { return };
        l.reason = Some(reason);
        l.done.get_or_insert_with(|| describe(reason).to_string());
        if let Some(conn) = l.conn.take() {
            debug!(%peer, addr = %l.addr, ?reason, "peer dropped");
            let code = if reason == DropReason::Banned { CLOSE_BANNED } else { 0 };
            conn.close(VarInt::from_u32(code), describe(reason).as_bytes());
        }
    }

    /// Feeds the request tasks' signs of life into the set.
    pub(super) fn feed_progress(&mut self, now: Instant) {
        for (&id, l) in &self.links {
            if l.conn.is_some() {
                let received = l.counters.received.load(Ordering::Relaxed);
                let waiting = l.counters.waiting.load(Ordering::Relaxed) > 0;
                self.set.handle_progress(now, id, received, waiting);
            }
        }
    }

    /// Closes every connection still open (the fetch is over).
    pub(super) fn close_all(&mut self) {
        for (id, l) in &mut self.links {
            if let Some(conn) = l.conn.take() {
                let st = conn.stats();
                debug!(
                    peer = %id,
                    mtu = st.path.current_mtu,
                    rtt_us = st.path.rtt.as_micros() as u64,
                    cwnd = st.path.cwnd,
                    lost = st.path.lost_packets,
                    "connection stats"
                );
                conn.close(VarInt::from_u32(0), b"done");
            }
        }
        self.dials.abort_all();
    }

    /// Piece bytes received from peers `elsewhere` says are in another region for requests
    /// that ended without their piece: each link's bytes received, less those of requests
    /// that ran to their end.
    pub(super) fn cross_region_waste(&self, elsewhere: impl Fn(&NodeId) -> bool) -> u64 {
        let links = self.links.iter().filter(|(id, _)| elsewhere(id));
        links
            .map(|(_, l)| l.counters.received.load(Ordering::Relaxed).saturating_sub(l.bytes))
            .sum()
    }

    /// Reasons peers stopped serving us, for an error message.
    pub(super) fn reasons(&self) -> Vec<String> {
        self.links
            .iter()
            .filter_map(|(id, l)| {
                l.done.as_ref().map(|d| format!("{} ({}): {d}", l.addr, id.fmt_short()))
            })
            .collect()
    }

    /// The per-peer part of the report.
    pub(super) fn report(&self) -> Vec<PeerReport> {
        self.links
            .iter()
            .map(|(id, l)| PeerReport {
                node_id: id.to_string(),
                addr: l.addr.to_string(),
                pieces: l.pieces,
                bytes: l.bytes,
                banned: l.reason == Some(DropReason::Banned),
                dropped: l.reason.map(|r| describe(r).to_string()),
            })
            .collect()
    }
}

/// A drop reason in words (the report, close frames, error messages).
pub(super) fn describe(r: DropReason) -> &'static str {
    match r {
        DropReason::Banned => "banned for bad data or false claims",
        DropReason::ManifestTimeout => "did not answer the manifest request in time",
        DropReason::NoBitfield => "sent no bitfield in time",
        DropReason::Stalled => "stalled: no data in time",
        DropReason::NeverDelivered => "never delivered; replaced",
        DropReason::Busy => "busy; replaced",
        DropReason::Slow => "slowest; replaced",
        DropReason::Refused => "refused",
        DropReason::Protocol => "broke the protocol",
        DropReason::Gone => "gone",
        _ => "dropped",
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
