//! A scripted origin (axum on 127.0.0.1:0) that fails the ways real origins fail: errors,
//! throttling, cut and stalled bodies, ignored ranges, changed content, too many bytes.
//! Each test's script answers the n-th request; the server records every request, so tests
//! assert on what the fetcher asked for and when, not on timing bounds.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use tokio_stream::Stream;

use super::{config, fetch, origin, random_bytes};
use crate::origin::{Config, Origin, OriginError};

/// One request, as the server saw it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) at: Instant,
    pub(super) path: String,
    pub(super) range: Option<String>,
    pub(super) if_range: Option<String>,
}

type Script = dyn Fn(usize, &Seen) -> Response + Send + Sync;

/// The running server; stops when dropped.
pub(super) struct Hostile {
    pub(super) addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Serves every request with `script(n, request)`, n counting from 0.
    pub(super) async fn start(
        script: impl Fn(usize, &Seen) -> Response + Send + Sync + 'static,
    ) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let app = Router::new().fallback({
            let log = log.clone();
            move |req: Request| {
                let text = |name: header::HeaderName| {
                    req.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
                };
                let seen = Seen {
                    at: Instant::now(),
                    path: req.uri().path().to_owned(),
                    range: text(header::RANGE),
                    if_range: text(header::IF_RANGE),
                };
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(seen.clone());
                    log.len() - 1
                };
                let response = script(n, &seen);
                async move { response }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Hostile { addr, log, task }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

/// The range a request asks for, `[first, end)`, or the whole of `len` bytes.
fn asked(seen: &Seen, len: usize) -> (usize, usize) {
    let Some(range) = &seen.range else { return (0, len) };
    let (a, b) = range.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
    (a.parse().unwrap(), b.parse::<usize>().unwrap() + 1)
}

/// A correct origin: the range asked for, with `etag`; the whole resource if it has no
/// Range or an If-Range that does not match.
fn ranged(data: &[u8], seen: &Seen, etag: &str) -> Response {
    if seen.if_range.as_deref().is_some_and(|v| v != etag) {
        return whole(data, etag);
    }
    let (first, end) = asked(seen, data.len());
    partial(data, first, end, etag, Body::from(data[first..end].to_vec()))
}

/// A 206 announcing `[first, end)` of `data` with `body` as its body.
fn partial(data: &[u8], first: usize, end: usize, etag: &str, body: Body) -> Response {
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_RANGE, format!("bytes {first}-{}/{}", end - 1, data.len()))
        .header(header::CONTENT_LENGTH, end - first)
        .header(header::ETAG, etag)
        .body(body)
        .unwrap()
}

/// A 200 with all of `data`, Range or not.
fn whole(data: &[u8], etag: &str) -> Response {
    Response::builder().header(header::ETAG, etag).body(Body::from(data.to_vec())).unwrap()
}

fn status(code: u16, retry_after: Option<&str>) -> Response {
    let mut r = Response::builder().status(code);
    if let Some(v) = retry_after {
        r = r.header(header::RETRY_AFTER, v);
    }
    r.body(Body::empty()).unwrap()
}

/// A body that sends `first`, then `after`: an error (the server drops the connection) or
/// nothing ever again (a stall). It yields once in between, so hyper flushes `first` first.
struct Cut {
    first: Option<Bytes>,
    yielded: bool,
    stall: bool,
}

impl Stream for Cut {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.stall {
            return Poll::Pending;
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(io::Error::other("cut"))))
    }
}

fn cut_after(bytes: &[u8], stall: bool) -> Body {
    Body::from_stream(Cut { first: Some(Bytes::copy_from_slice(bytes)), yielded: false, stall })
}

const ETAG: &str = "\"v1\"";

#[tokio::test]
async fn retries_5xx_then_succeeds() {
    let data = random_bytes(100_000, 1);
    let server = Hostile::start({
        let data = data.clone();
        move |n, seen| match n {
            1 | 2 => status(503, None),
            _ => ranged(&data, seen, ETAG),
        }
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    assert!(res.ranges);
    assert_eq!((res.len, res.validators.etag.as_deref()), (100_000, Some(ETAG)));
    let (result, got) = fetch(&origin, &res, 0, res.len).await;
    result.unwrap();
    assert_eq!(got.bytes, data);
    // The probe, then two 503s and the success.
    assert_eq!(server.seen().len(), 4);
}

#[tokio::test]
async fn waits_as_long_as_retry_after_says() {
    let data = random_bytes(1000, 2);
    let server = Hostile::start({
        let data = data.clone();
        move |n, seen| match n {
            1 => status(429, Some("1")),
            _ => ranged(&data, seen, ETAG),
        }
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let (result, got) = fetch(&origin, &res, 10, 500).await;
    result.unwrap();
    assert_eq!(got.bytes, &data[10..510]);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    // The backoff alone is at most 20 ms: the wait is the origin's second.
    let waited = seen[2].at - seen[1].at;
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}");
}

#[tokio::test]
async fn resumes_a_cut_body_where_it_stopped() {
    let data = random_bytes(256 * 1024, 3);
    let server = Hostile::start({
        let data = data.clone();
        move |n, seen| match n {
            1 => {
                let (first, end) = asked(seen, data.len());
                partial(&data, first, end, ETAG, cut_after(&data[first..first + 100_000], false))
            }
            _ => ranged(&data, seen, ETAG),
        }
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let (result, got) = fetch(&origin, &res, 1000, 200_000).await;
    result.unwrap();
    assert_eq!(got.bytes, &data[1000..201_000]);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=1000-200999"));
    assert_eq!(seen[2].range.as_deref(), Some("bytes=101000-200999"));
    assert_eq!(seen[2].if_range.as_deref(), Some(ETAG));
}

#[tokio::test]
async fn retries_a_stalled_body() {
    let data = random_bytes(10_000, 4);
    let server = Hostile::start({
        let data = data.clone();
        move |n, seen| match n {
            1 => {
                let (first, end) = asked(seen, data.len());
                partial(&data, first, end, ETAG, cut_after(&data[first..first + 10], true))
            }
            _ => ranged(&data, seen, ETAG),
        }
    })
    .await;
    let origin = Origin::new(Config { stall: Duration::from_millis(300), ..config() }).unwrap();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let (result, got) = fetch(&origin, &res, 0, res.len).await;
    result.unwrap();
    assert_eq!(got.bytes, data);
    assert_eq!(server.seen()[2].range.as_deref(), Some("bytes=10-9999"));
}

#[tokio::test]
async fn an_origin_without_ranges_serves_only_the_whole() {
    let data = random_bytes(50_000, 5);
    let server = Hostile::start({
        let data = data.clone();
        move |n, _| match n {
            // The second whole fetch is cut: the retry starts again from 0.
            2 => Response::builder()
                .header(header::ETAG, ETAG)
                .header(header::CONTENT_LENGTH, data.len())
                .body(cut_after(&data[..20_000], false))
                .unwrap(),
            _ => whole(&data, ETAG),
        }
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    assert!(!res.ranges);
    assert_eq!(res.len, 50_000);
    let (result, got) = fetch(&origin, &res, 0, res.len).await;
    result.unwrap();
    assert_eq!(got.bytes, data);
    // A part is refused without asking the origin.
    let (result, got) = fetch(&origin, &res, 1, 10).await;
    assert!(matches!(result, Err(OriginError::NoRanges)), "{result:?}");
    assert_eq!(got.delivered, 0);
    assert_eq!(server.seen().len(), 2);
    // Cut, then whole again: the sink sees offset 0 twice and ends with the right bytes.
    let (result, got) = fetch(&origin, &res, 0, res.len).await;
    result.unwrap();
    assert_eq!(got.bytes, data);
    assert_eq!(got.offsets.iter().filter(|&&o| o == 0).count(), 2);
    assert!(server
        .seen()
        .iter()
        .all(|s| s.range.is_none() || s.range.as_deref() == Some("bytes=0-0")));
}

#[tokio::test]
async fn a_changed_etag_ends_the_fetch() {
    let data = random_bytes(100_000, 6);
    // This origin ignores If-Range: after a cut, it serves a range of new content.
    let server = Hostile::start({
        let data = data.clone();
        move |n, seen| match n {
            0 => ranged(&data, seen, ETAG),
            1 => {
                let (first, end) = asked(seen, data.len());
                partial(&data, first, end, ETAG, cut_after(&data[first..first + 30_000], false))
            }
            _ => {
                let (first, end) = asked(seen, data.len());
                partial(&data, first, end, "\"v2\"", Body::from(data[first..end].to_vec()))
            }
        }
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let (result, got) = fetch(&origin, &res, 0, res.len).await;
    assert!(
        matches!(&result, Err(OriginError::Changed { what }) if what.contains("v2")),
        "{result:?}"
    );
    assert_eq!(got.delivered, 30_000);
    // Not retried: the probe, the cut fetch, the changed answer.
    assert_eq!(server.seen().len(), 3);

    // This one honours If-Range: the changed resource comes whole, with a 200.
    let server = Hostile::start({
        let data = data.clone();
        move |n, seen| ranged(&data, seen, if n == 0 { ETAG } else { "\"v2\"" })
    })
    .await;
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let (result, got) = fetch(&origin, &res, 5, 10).await;
    assert!(matches!(result, Err(OriginError::Changed { .. })), "{result:?}");
    assert_eq!(got.delivered, 0);
    assert_eq!(server.seen()[1].if_range.as_deref(), Some(ETAG));
}

#[tokio::test]
async fn never_delivers_more_than_asked() {
    let data = random_bytes(10_000, 7);
    let server = Hostile::start({
        let data = data.clone();
        move |n, seen| {
            let (first, end) = asked(seen, data.len());
            let announce = |body| {
                Response::builder()
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {first}-{}/10000", end - 1))
                    .header(header::ETAG, ETAG)
                    .body(body)
                    .unwrap()
            };
            match n {
                // Chunked: the range in two chunks, then 1000 bytes more.
                1 => {
                    let mid = (first + end) / 2;
                    let chunks: Vec<io::Result<Bytes>> = vec![
                        Ok(Bytes::copy_from_slice(&data[first..mid])),
                        Ok(Bytes::copy_from_slice(&data[mid..end])),
                        Ok(Bytes::from(vec![0; 1000])),
                    ];
                    announce(Body::from_stream(tokio_stream::iter(chunks)))
                }
                // A Content-Length longer than the range.
                2 => {
                    let mut r = announce(Body::from(vec![0; end - first + 10]));
                    r.headers_mut().insert(header::CONTENT_LENGTH, (end - first + 10).into());
                    r
                }
                _ => ranged(&data, seen, ETAG),
            }
        }
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let (result, got) = fetch(&origin, &res, 100, 4000).await;
    assert!(matches!(result, Err(OriginError::Protocol(_))), "{result:?}");
    assert!(got.delivered <= 4000, "{} bytes delivered", got.delivered);
    assert_eq!(got.bytes, &data[100..100 + got.delivered as usize]);
    let (result, got) = fetch(&origin, &res, 100, 4000).await;
    assert!(matches!(result, Err(OriginError::Protocol(_))), "{result:?}");
    assert_eq!(got.delivered, 0);
}

#[tokio::test]
async fn a_sink_error_stops_the_fetch() {
    let data = random_bytes(10_000, 8);
    let server = Hostile::start(move |_, seen| ranged(&data, seen, ETAG)).await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let result =
        origin.fetch_range(&res, 0, res.len, &mut |_, _| Err(io::Error::other("disk full"))).await;
    assert!(matches!(&result, Err(OriginError::Sink(e)) if e.to_string() == "disk full"));
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn refuses_a_resource_over_the_limit_before_reading_it() {
    // A claimed terabyte, generated as it is read: reading it would not end in time.
    let served = Arc::new(AtomicU64::new(0));
    let server = Hostile::start({
        let served = served.clone();
        move |_, _| {
            let served = served.clone();
            let body = tokio_stream::iter(std::iter::repeat_with(move || {
                served.fetch_add(64 * 1024, Ordering::Relaxed);
                Ok::<_, io::Error>(Bytes::from(vec![0; 64 * 1024]))
            }));
            Response::builder()
                .header(header::CONTENT_LENGTH, 1u64 << 40)
                .body(Body::from_stream(body))
                .unwrap()
        }
    })
    .await;
    let origin = Origin::new(Config { max_size: 1 << 20, ..config() }).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), origin.probe(&server.url("/big")))
        .await
        .expect("the probe read the body");
    let (claimed, limit) = (1 << 40, 1 << 20);
    assert!(
        matches!(result, Err(OriginError::TooLarge { len, max }) if (len, max) == (claimed, limit)),
        "{result:?}"
    );
    // Only what socket buffers took before the connection closed.
    assert!(served.load(Ordering::Relaxed) < 1 << 30);
}

#[tokio::test]
async fn follows_redirects_but_not_in_circles() {
    let data = random_bytes(1000, 9);
    let server = Hostile::start({
        let data = data.clone();
        move |_, seen| {
            let to = |code, location: &str| {
                Response::builder()
                    .status(code)
                    .header(header::LOCATION, location)
                    .body(Body::empty())
                    .unwrap()
            };
            match seen.path.as_str() {
                "/loop" => to(302, "/loop"),
                "/a/b" => to(301, "../c"), // relative to /a/b: /c
                "/c" => to(307, "/d?x=1"),
                "/d" => ranged(&data, seen, ETAG),
                _ => status(404, None),
            }
        }
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/a/b")).await.unwrap();
    assert_eq!(res.url.as_str(), server.url("/d?x=1"));
    assert_eq!(res.len, 1000);
    let result = origin.probe(&server.url("/loop")).await;
    assert!(matches!(result, Err(OriginError::TooManyRedirects { max: 5 })), "{result:?}");
    // Three for the chain; the first URL and five hops for the loop.
    assert_eq!(server.seen().len(), 3 + 6);
}

#[tokio::test]
async fn gives_up_at_once_on_a_long_retry_after() {
    let server = Hostile::start(|_, _| status(503, Some("3600"))).await;
    let started = Instant::now();
    let result = origin().probe(&server.url("/f")).await;
    assert!(
        matches!(&result, Err(OriginError::GaveUp { attempts: 1, last }) if last.contains("3600")),
        "{result:?}"
    );
    assert_eq!(server.seen().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let data = random_bytes(1000, 10);
    let server = Hostile::start(move |n, seen| match n {
        0 => ranged(&data, seen, ETAG),
        _ => status(500, None),
    })
    .await;
    let origin = origin();
    let res = origin.probe(&server.url("/f")).await.unwrap();
    let (result, got) = fetch(&origin, &res, 0, res.len).await;
    assert!(
        matches!(&result, Err(OriginError::GaveUp { attempts: 4, last }) if last.contains("500")),
        "{result:?}"
    );
    assert_eq!(got.delivered, 0);
    assert_eq!(server.seen().len(), 1 + 4);
}
