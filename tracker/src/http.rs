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
    let ((nodes, swarms), (manifest_bytes, rate_keys), regions) = {
        let ix = shared.index.lock().unwrap_or_else(|p| p.into_inner());
        (ix.counts(), ix.footprint(), ix.region_counts())
    };
    let m = &shared.metrics;
    let (announce_rate, lookup_rate) = *m.rates.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    line("shoal_tracker_nodes", "gauge", "Registered nodes.", nodes.to_string());
    line("shoal_tracker_swarms", "gauge", "Contents with at least one holder.", swarms.to_string());
    let counters = [
        ("shoal_tracker_announces_total", "Announces and deltas.", &m.announces),
        ("shoal_tracker_lookups_total", "Lookups.", &m.lookups),
        ("shoal_tracker_registers_total", "Registrations.", &m.registers),
        ("shoal_tracker_heartbeats_total", "Heartbeats.", &m.heartbeats),
        (
            "shoal_tracker_forged_total",
            "Requests refused for speaking for another node.",
            &m.forged,
        ),
        ("shoal_tracker_rate_limited_total", "Requests refused by a rate limit.", &m.rate_limited),
        (
            "shoal_tracker_unadmitted_storage_total",
            "Registrations claiming storage from nodes not admitted.",
            &m.unadmitted_storage,
        ),
        ("shoal_tracker_reports_total", "Reports of holders that never delivered.", &m.reports),
    ];
    for (name, help, value) in counters {
        line(name, "counter", help, value.load(Ordering::Relaxed).to_string());
    }
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
    // Region names are checked ([a-z0-9_-]): safe inside a label without escaping.
    out.push_str(
        "# HELP shoal_tracker_region_nodes Registered nodes per region (\"\" for none).\n\
         # TYPE shoal_tracker_region_nodes gauge\n",
    );
    for (region, n) in regions {
        let name = region.as_ref().map_or("", |r| r.as_str());
        out.push_str(&format!("shoal_tracker_region_nodes{{region=\"{name}\"}} {n}\n"));
    }
    out
}
