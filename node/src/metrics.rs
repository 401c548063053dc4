//! The node's Prometheus metrics, encoded by `prometheus-client` in the Prometheus text format
//! (0.0.4): served on the control API's `/metrics` (127.0.0.1) and, with
//! `shoal daemon --metrics ADDR`, on an address of the operator's choosing.
//!
//! Counters and histograms are bumped where the work happens (bytes as they move, pieces as
//! they verify, a fetch's latency as its piece lands); gauges are kept as things change
//! (contents held, their bytes, swarms with peers) or read from counters others keep (open
//! connections: quinn's; offline tasks: the in-memory task table). No scrape reads the store.
//! No label names a content, a file or a peer: only kinds (`node`/`storage`), directions,
//! `same`/`other`/`unknown` region and states, so the output says nothing about what the
//! node holds.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shoal_core::NodeId;

use crate::node::Node;
use crate::tracker::Known;

type Labels1 = [(&'static str, &'static str); 1];
type Labels3 = [(&'static str, &'static str); 3];

/// Which way bytes went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// Sent to a peer (served or pushed).
    Up,
    /// Received from a peer (fetched or pushed to this storage node).
    Down,
}

/// The node's instruments. Lives in [`crate::stats::Stats`], so every part that counts
/// already holds it.
#[derive(Debug)]
pub(crate) struct NodeMetrics {
    /// Piece bytes by `direction`, `peer` kind and `region` (same, other, unknown).
    bytes: Family<Labels3, Counter>,
    /// Pieces verified and kept (fetched, or pushed into this storage node).
    pub(crate) pieces_verified: Counter,
    /// Seconds from asking a peer for a piece to holding it verified, by `peer` kind.
    fetch_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    /// Re-seed directives by `outcome`: received, obeyed (pushed), failed.
    pub(crate) directives: Family<Labels1, Counter>,
    /// Contents with at least one peer session.
    pub(crate) swarms: Gauge,
    /// Contents held, by state, as of the last read of what the node holds.
    pub(crate) contents: Family<Labels1, Gauge>,
    /// Bytes of verified pieces held (partial contents pro rata to their pieces).
    pub(crate) held_bytes: Gauge,
}

fn fetch_histogram() -> Histogram {
    // 1 ms to ~65 s: a piece on loopback takes milliseconds, over a slow link seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            bytes: Family::default(),
            pieces_verified: Counter::default(),
            fetch_seconds: Family::new_with_constructor(fetch_histogram),
            directives: Family::default(),
            swarms: Gauge::default(),
            contents: Family::default(),
            held_bytes: Gauge::default(),
        }
    }
}

/// A peer's kind as far as this node knows: `storage` if its tracker named it as storage.
pub(crate) fn peer_kind(known: &Known, peer: &NodeId) -> &'static str {
    if known.is_storage(peer) {
        "storage"
    } else {
        "node"
    }
}

/// Whether a peer is in this node's region: `unknown` unless both regions are known.
pub(crate) fn region_label(known: &Known, peer: &NodeId) -> &'static str {
    let mine = known.region.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mine) = mine.as_ref() else { return "unknown" };
    let map = known.peer_regions.lock().unwrap_or_else(|p| p.into_inner());
    match map.get(peer) {
        Some(r) if r == mine => "same",
        Some(_) => "other",
        None => "unknown",
    }
}

impl NodeMetrics {
    /// Counts `n` piece bytes moved to or from `peer`, of the kind given (or as known).
    pub(crate) fn bytes(
        &self,
        known: &Known,
        dir: Direction,
        peer: &NodeId,
        kind: Option<&'static str>,
        n: u64,
    ) {
        let direction = match dir {
            Direction::Up => "up",
            Direction::Down => "down",
        };
        let kind = kind.unwrap_or_else(|| peer_kind(known, peer));
        let labels =
            [("direction", direction), ("peer", kind), ("region", region_label(known, peer))];
        self.bytes.get_or_create(&labels).inc_by(n);
    }

    /// A piece from `peer` was verified `took` after it was asked for.
    pub(crate) fn fetched(&self, known: &Known, peer: &NodeId, took: Duration) {
        let labels = [("peer", peer_kind(known, peer))];
        self.fetch_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts a re-seed directive's `outcome`.
    pub(crate) fn directive(&self, outcome: &'static str) {
        self.directives.get_or_create(&[("outcome", outcome)]).inc();
    }
}

/// The registry a scrape encodes: the instruments and the gauges read from the node.
fn registry(node: Arc<Node>) -> Registry {
    let mut r = Registry::default();
    let m = &node.stats.metrics;
    r.register(
        "shoal_peer_bytes",
        "Piece bytes by direction, peer kind (storage: named as storage by the tracker, or a push into storage) and region (same, other, unknown)",
        m.bytes.clone(),
    );
    r.register(
        "shoal_pieces_verified",
        "Pieces verified against the manifest and kept",
        m.pieces_verified.clone(),
    );
    r.register(
        "shoal_piece_fetch_seconds",
        "Seconds from asking a peer for a piece to holding it verified, by peer kind",
        m.fetch_seconds.clone(),
    );
    r.register(
        "shoal_reseed_directives",
        "Re-seed directives from the own tracker, by outcome (received, obeyed, failed)",
        m.directives.clone(),
    );
    r.register("shoal_swarms", "Contents with at least one peer session", m.swarms.clone());
    r.register(
        "shoal_contents",
        "Contents held, by state, as of the last read of the store (after a change)",
        m.contents.clone(),
    );
    r.register(
        "shoal_held_bytes",
        "Bytes of verified pieces held (partial contents pro rata to their pieces)",
        m.held_bytes.clone(),
    );
    r.register_collector(Box::new(Read(node)));
    r
}

/// What a scrape reads from counters the node keeps anyway.
#[derive(Debug)]
struct Read(Arc<Node>);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c: ConstCounter<u64> = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Read {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let node = &self.0;
        let s = &node.stats;
        let counters = [
            ("shoal_uploaded_bytes", "Piece bytes sent to peers.", &s.uploaded_bytes),
            (
                "shoal_downloaded_bytes",
                "Piece and manifest bytes received from peers.",
                &s.downloaded_bytes,
            ),
            ("shoal_pieces_uploaded", "Pieces sent to peers.", &s.pieces_uploaded),
            ("shoal_bad_pieces", "Received pieces that failed verification.", &s.bad_pieces),
            ("shoal_pushed_bytes", "Piece bytes pushed into storage.", &s.pushed_bytes),
            (
                "shoal_pushes_refused",
                "Pushes refused for want of a valid token.",
                &s.pushes_refused,
            ),
            (
                "shoal_cross_region_bytes",
                "Piece bytes received from peers in another region.",
                &s.cross_region_bytes,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut e, name, help, v.load(Ordering::Relaxed))?;
        }
        let links = &node.net.links;
        let open: usize = links.iter().map(|l| l.endpoint.open_connections()).sum();
        let served: u64 =
            links.iter().map(|l| u64::from(l.connections.load(Ordering::Relaxed))).sum();
        gauge(&mut e, "shoal_connections", "QUIC connections open, both ways.", open as u64)?;
        gauge(&mut e, "shoal_served_connections", "Peer connections being served.", served)?;
        if let Some(offline) = &node.offline {
            let help = "Offline tasks of this storage node, by state.";
            let mut family =
                e.encode_descriptor("shoal_offline_tasks", help, None, MetricType::Gauge)?;
            for (state, n) in offline.state_counts() {
                ConstGauge::new(n as u64).encode(family.encode_family(&[("state", state)])?)?;
            }
        }
        Ok(())
    }
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug: serve what we have.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let body = encode(&registry);
    ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], body)
}

/// `/metrics` for a router (the control API's, or the metrics address's own).
pub(crate) fn route<S>(node: Arc<Node>) -> Router<S> {
    let registry = Arc::new(registry(node));
    Router::new().route("/metrics", get(scrape)).with_state(registry)
}

/// Serves `/metrics` on `addr` in the background (`shoal daemon --metrics ADDR`); returns the
/// bound address. Also keeps the held-content gauges fresh: after a content changes, what the
/// node holds is read again every few seconds, off the scrape path.
pub(crate) async fn serve(node: Arc<Node>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics {addr} (is it in use?)"))?;
    let bound = listener.local_addr()?;
    let app: Router = route(node);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// Re-reads what the node holds after a change, every few seconds, so the held-content
/// gauges follow without a scrape ever reading the store. Runs until the process ends.
pub(crate) fn spawn_refresh(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if !node.stats.is_stale() {
                continue;
            }
            let n = node.clone();
            let _ = tokio::task::spawn_blocking(move || n.stats.held_rows(&n.contents)).await;
        }
    });
}
