//! Serving the node's metrics ([`crate::metrics`]): the registry a scrape encodes (the
//! instruments, and counters the node keeps anyway, read at scrape time), the `/metrics` route
//! of the control API and the `shoal daemon --metrics ADDR` server.

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
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::node::Node;

/// The registry a scrape encodes: the instruments and the gauges read from the node.
fn registry(node: Arc<Node>) -> Registry {
    let mut r = Registry::default();
    node.stats.metrics.register(&mut r);
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
