//! The tracker's HTTP address: `/health`, Prometheus `/metrics`, the dashboard at `/` and the
//! read-only admin API under `/api/v1` (see `docs/admin-api.md`). Nothing here changes the
//! tracker's state.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use crate::Shared;

/// Serves HTTP on `addr` in the background; returns the bound address.
pub(crate) async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(crate::metrics::registry(shared.clone()));
    let metrics = Router::new().route("/metrics", get(metrics)).with_state(registry);
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .merge(crate::dashboard::routes())
        .merge(crate::admin::routes())
        .with_state(shared)
        .merge(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "http server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let body = crate::metrics::encode(&registry);
    ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], body)
}
