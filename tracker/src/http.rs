//! `/health` and Prometheus `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::Router;

use crate::Shared;

/// Serves HTTP on `addr` in the background; returns the bound address.
pub(crate) async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "http server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> String {
    let ((nodes, swarms), (manifest_bytes, rate_keys)) = {
        let ix = shared.index.lock().unwrap_or_else(|p| p.into_inner());
        (ix.counts(), ix.footprint())
    };
    let m = &shared.metrics;
    let (announce_rate, lookup_rate) = *m.rates.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    line("shoal_tracker_nodes", "gauge", "Registered nodes.", nodes.to_string());
    line("shoal_tracker_swarms", "gauge", "Contents with at least one holder.", swarms.to_string());
    line(
        "shoal_tracker_announces_total",
        "counter",
        "Announces and deltas.",
        m.announces.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_lookups_total",
        "counter",
        "Lookups.",
        m.lookups.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_registers_total",
        "counter",
        "Registrations.",
        m.registers.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_heartbeats_total",
        "counter",
        "Heartbeats.",
        m.heartbeats.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_forged_total",
        "counter",
        "Requests refused for speaking for another node.",
        m.forged.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_rate_limited_total",
        "counter",
        "Requests refused by a rate limit.",
        m.rate_limited.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_unadmitted_storage_total",
        "counter",
        "Registrations claiming storage from nodes not admitted.",
        m.unadmitted_storage.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_reports_total",
        "counter",
        "Reports of holders that never delivered.",
        m.reports.load(Ordering::Relaxed).to_string(),
    );
    line(
        "shoal_tracker_manifest_bytes",
        "gauge",
        "Manifest bytes kept.",
        manifest_bytes.to_string(),
    );
    line(
        "shoal_tracker_rate_limit_keys",
        "gauge",
        "Addresses and node ids tracked by the rate limiter.",
        rate_keys.to_string(),
    );
    line(
        "shoal_tracker_announces_per_second",
        "gauge",
        "Announces per second over the last 10 s.",
        format!("{announce_rate:.2}"),
    );
    line(
        "shoal_tracker_lookups_per_second",
        "gauge",
        "Lookups per second over the last 10 s.",
        format!("{lookup_rate:.2}"),
    );
    out
}
