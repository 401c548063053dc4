//! The tracker's HTTP address: `/health`, Prometheus `/metrics`, the dashboard at `/` and the
//! read-only admin API under `/api/v1` (see `docs/admin-api.md`). Nothing here changes the
//! tracker's state.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use crate::Shared;

/// Serves HTTP on `addr` in the background; returns the bound address.
pub(crate) async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    hosts: Vec<String>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(crate::metrics::registry(shared.clone()));
    let metrics = Router::new().route("/metrics", get(metrics)).with_state(registry);
    // What names nodes and contents (the page and its API) answers only its own names; the
    // health check and the metrics (counts and region names) answer a scraper by any name.
    let operators = Router::new()
        .merge(crate::dashboard::routes())
        .merge(crate::admin::routes())
        .layer(axum::middleware::from_fn_with_state(Arc::new(hosts), check_host));
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .merge(operators)
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

/// Refuses a request whose `Host` is a name this tracker was not given (`--http-host`): a
/// hostile web page that rebinds its own name to 127.0.0.1 must not read the admin API from
/// an operator's browser. IP addresses and `localhost` are always answered; so is a request
/// without `Host` (no browser sends one).
async fn check_host(
    State(hosts): State<Arc<Vec<String>>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    match host {
        Some(h) if !host_allowed(h, &hosts) => {
            let shown: String = h.chars().take(64).filter(|c| !c.is_control()).collect();
            let body = format!(
                "host {shown:?} is not a name of this tracker: add --http-host NAME to answer to it\n"
            );
            (StatusCode::MISDIRECTED_REQUEST, body).into_response()
        }
        _ => next.run(req).await,
    }
}

/// Whether a `Host` header value (`NAME[:PORT]`, `IP[:PORT]`, `[IPV6][:PORT]`) is answered.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn hosts_answered() {
        let names = vec!["tracker.example.net".to_string()];
        let table = [
            ("127.0.0.1:7480", true),
            ("10.0.0.5", true),
            ("[::1]:7480", true),
            ("localhost:7480", true),
            ("LOCALHOST", true),
            ("tracker.example.net:443", true),
            ("Tracker.Example.Net", true),
            // A rebinding page's own name, and forms that are no address.
            ("evil.example.com:7480", false),
            ("127.0.0.1.evil.example.com", false),
            ("[::1", false),
            ("[evil]:80", false),
            ("", false),
        ];
        for (host, ok) in table {
            assert_eq!(host_allowed(host, &names), ok, "{host}");
        }
    }
}
