//! The HTTP(S) origin fetcher of offline downloads: a storage node fetches a URL on a user's
//! behalf, segment by segment, and this module does the HTTP part.
//!
//! - [`Origin::probe`] follows redirects and learns the resource's final URL, length,
//!   validators (ETag, Last-Modified) and whether the origin serves byte ranges: a
//!   [`Resource`], which the caller persists to plan and resume segments.
//! - [`Origin::fetch_range`] streams bytes `[start, start + len)` of a resource into a sink,
//!   retrying transient failures from the first byte not yet delivered, and fails with
//!   [`OriginError::Changed`] as soon as the origin serves other bytes than the ones probed.
//!
//! Goals: users cannot point a storage node at its own network (`guard`: every address
//! checked, redirects included, unless [`Config::allow_private`]); memory stays bounded
//! whatever the origin sends (bodies are streamed, never buffered, and never longer than asked
//! for); a flaky origin costs retries with backoff, not a failed download (`retry`).
//! Non-goals: resources of unknown length, compressed transfer encodings (the bytes fetched
//! are the bytes stored), authentication beyond what the URL carries.

use std::io;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT_ENCODING, IF_RANGE, LOCATION, RANGE};
use reqwest::{redirect, Client, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tracing::debug;
use url::Url;

mod error;
mod guard;
mod reply;
mod retry;
#[cfg(test)]
mod tests;

use error::Failure;
pub use error::OriginError;

/// The fetcher's limits and retry policy. Insecure choices are the operator's, never a user's.
#[derive(Debug, Clone)]
pub struct Config {
    /// Fetch from loopback, private, link-local and other local addresses. Default `false`:
    /// a user's URL must not reach the storage node's own network or metadata service.
    pub allow_private: bool,
    /// Redirects followed before [`OriginError::TooManyRedirects`]. Default 5.
    pub max_redirects: u32,
    /// The longest resource accepted, checked against its announced length before any body
    /// is read. Default 64 GiB.
    pub max_size: u64,
    /// Time to set up a connection (TCP and TLS). Default 10 s.
    pub connect_timeout: Duration,
    /// A response that delivers no byte (headers included) for this long is a transient
    /// failure, retried. Default 30 s.
    pub stall: Duration,
    /// Attempts per probe or per range, the first included. Default 8.
    pub max_attempts: u32,
    /// The first backoff ceiling; it doubles per failure up to `backoff_max`, and each wait
    /// is uniform below it (full jitter). Default 250 ms.
    pub backoff_base: Duration,
    /// The highest backoff ceiling. Default 30 s.
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this gives up at once ([`OriginError::GaveUp`]) rather
    /// than hold the download. Default 60 s.
    pub max_retry_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allow_private: false,
            max_redirects: 5,
            max_size: 64 << 30,
            connect_timeout: Duration::from_secs(10),
            stall: Duration::from_secs(30),
            max_attempts: 8,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What identifies one version of a resource: a fetch fails with [`OriginError::Changed`]
/// when the origin's validators differ from the probe's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The `ETag` header, verbatim (quotes and any `W/` included).
    pub etag: Option<String>,
    /// The `Last-Modified` header, verbatim.
    pub last_modified: Option<String>,
}

/// A probed resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// The final URL, after redirects: fetches go there directly.
    pub url: Url,
    /// Its length in bytes.
    pub len: u64,
    /// Its version when probed.
    pub validators: Validators,
    /// Whether the origin serves byte ranges; if not, only the whole resource can be fetched.
    pub ranges: bool,
}

/// The fetcher: one HTTP client (a connection pool) with the guard's resolver. Cheap to
/// clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct Origin {
    client: Client,
    config: Config,
}

/// What one probe request found.
enum Probed {
    Found(Resource),
    Redirect(Url),
}

impl Origin {
    /// A fetcher with `config`.
    pub fn new(config: Config) -> Result<Self, OriginError> {
        let client = Client::builder()
            // Each hop is checked by hand (`guard::check_url`) before it is requested.
            .redirect(redirect::Policy::none())
            // A proxy would resolve and connect to names itself, past the guard.
            .no_proxy()
            // Offsets count the resource's own bytes, so no decoding even if another crate
            // turns reqwest's decompression features on.
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .connect_timeout(config.connect_timeout)
            .dns_resolver(std::sync::Arc::new(guard::Resolver {
                allow_private: config.allow_private,
            }))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OriginError::Client(e.to_string()))?;
        Ok(Origin { client, config })
    }

    fn policy(&self) -> retry::Policy {
        retry::Policy {
            max_attempts: self.config.max_attempts,
            base: self.config.backoff_base,
            max: self.config.backoff_max,
            max_retry_after: self.config.max_retry_after,
        }
    }

    /// Finds the resource at `url`: follows up to [`Config::max_redirects`] redirects, each
    /// hop checked by the guard, and asks for its first byte to learn its length, validators
    /// and whether byte ranges work. Transient failures are retried as in
    /// [`Origin::fetch_range`]. Cancel-safe: dropping the future abandons the request.
    pub async fn probe(&self, url: &str) -> Result<Resource, OriginError> {
        let mut url = Url::parse(url)
            .map_err(|e| OriginError::BadUrl { url: url.to_owned(), why: e.to_string() })?;
        let (mut hops, mut attempts) = (0, 0);
        loop {
            guard::check_url(&url, self.config.allow_private)?;
            attempts += 1;
            match self.probe_once(&url).await {
                Ok(Probed::Found(res)) => return Ok(res),
                Ok(Probed::Redirect(next)) => {
                    hops += 1;
                    if hops > self.config.max_redirects {
                        return Err(OriginError::TooManyRedirects {
                            max: self.config.max_redirects,
                        });
                    }
                    debug!(from = %url, to = %next, "origin redirects");
                    url = next;
                }
                Err(failure) => self.backoff(attempts, failure).await?,
            }
        }
    }

    async fn probe_once(&self, url: &Url) -> Result<Probed, Failure> {
        let resp = self.send(self.client.get(url.clone()).header(RANGE, "bytes=0-0")).await?;
        let status = resp.status();
        let headers = resp.headers();
        if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
            let location =
                headers.get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                    OriginError::Protocol(format!("a {status} redirect without a Location"))
                })?;
            // A relative Location is resolved against the URL that answered.
            let next = url.join(location).map_err(|e| OriginError::BadUrl {
                url: location.to_owned(),
                why: format!("a redirect to a bad URL: {e}"),
            })?;
            return Ok(Probed::Redirect(next));
        }
        let (len, ranges) = match status {
            StatusCode::PARTIAL_CONTENT => match reply::content_range(headers)?.total {
                Some(total) => (total, true),
                None => return Err(OriginError::NoLength.into()),
            },
            // The origin ignored the range: it serves the resource whole. The body is dropped
            // unread (the connection with it).
            StatusCode::OK => match reply::content_length(headers)? {
                Some(len) => (len, false),
                None => return Err(OriginError::NoLength.into()),
            },
            // Byte 0 does not exist: only an empty resource says so rightly.
            StatusCode::RANGE_NOT_SATISFIABLE => match reply::content_range(headers)?.total {
                Some(0) => (0, true),
                _ => {
                    return Err(OriginError::Protocol(
                        "416 for the first byte of a resource".into(),
                    )
                    .into())
                }
            },
            _ => return Err(reply::failed_status(status, headers, SystemTime::now())),
        };
        if len > self.config.max_size {
            return Err(OriginError::TooLarge { len, max: self.config.max_size }.into());
        }
        let validators = reply::validators(headers);
        Ok(Probed::Found(Resource { url: url.clone(), len, validators, ranges }))
    }

    /// Fetches bytes `[start, start + len)` of `res`, calling `sink(offset, chunk)` with each
    /// chunk in order, at absolute offsets; never more than `len` bytes in all.
    ///
    /// Transient failures (connection errors, timeouts, a stall of [`Config::stall`], 408,
    /// 429 and 5xx with their `Retry-After`, a body cut short) are retried with backoff, up
    /// to [`Config::max_attempts`], from the first byte not yet delivered. Every response
    /// must be a 206 for exactly the range asked, of a resource with `res`'s length and
    /// validators (sent as `If-Range`, so a changed resource answers 200): otherwise
    /// [`OriginError::Changed`], not retried, and the caller starts over with a new probe.
    ///
    /// If the origin does not serve ranges (`!res.ranges`), only the whole resource can be
    /// fetched ([`OriginError::NoRanges`] otherwise), and a retry starts again from offset 0:
    /// the sink then sees offsets from 0 again. A sink error ends the fetch at once
    /// ([`OriginError::Sink`]).
    ///
    /// Cancel-safe: dropping the future closes the connection and calls the sink no more;
    /// the bytes already delivered stay delivered.
    pub async fn fetch_range(
        &self,
        res: &Resource,
        start: u64,
        len: u64,
        sink: &mut (dyn FnMut(u64, &[u8]) -> io::Result<()> + Send),
    ) -> Result<(), OriginError> {
        let end = start
            .checked_add(len)
            .filter(|&end| end <= res.len)
            .ok_or(OriginError::BadRange { start, len, total: res.len })?;
        if len == 0 {
            return Ok(());
        }
        if !res.ranges && (start, len) != (0, res.len) {
            return Err(OriginError::NoRanges);
        }
        // The resource may come back from storage, written by an older, laxer build.
        guard::check_url(&res.url, self.config.allow_private)?;
        let mut next = start;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.fetch_once(res, &mut next, end, sink).await {
                Ok(()) => return Ok(()),
                Err(failure) => self.backoff(attempts, failure).await?,
            }
            if !res.ranges {
                next = 0;
            }
        }
    }

    /// One request for `[*next, end)`, advancing `*next` past each chunk delivered.
    async fn fetch_once(
        &self,
        res: &Resource,
        next: &mut u64,
        end: u64,
        sink: &mut (dyn FnMut(u64, &[u8]) -> io::Result<()> + Send),
    ) -> Result<(), Failure> {
        let mut request = self.client.get(res.url.clone());
        if res.ranges {
            request = request.header(RANGE, format!("bytes={}-{}", *next, end - 1));
            if let Some(v) = reply::if_range(&res.validators) {
                request = request.header(IF_RANGE, v);
            }
        }
        let mut resp = self.send(request).await?;
        check_fetched(&resp, res, *next, end)?;
        loop {
            let chunk = match tokio::time::timeout(self.config.stall, resp.chunk()).await {
                Err(_) => return Err(self.stalled()),
                Ok(chunk) => chunk?,
            };
            let Some(chunk) = chunk else { break };
            // Checked before the sink sees any of it: the sink never gets more than asked.
            if chunk.len() as u64 > end - *next {
                return Err(OriginError::Protocol(format!(
                    "the body goes on past byte {end}, the end of the range asked for"
                ))
                .into());
            }
            sink(*next, &chunk).map_err(OriginError::Sink)?;
            *next += chunk.len() as u64;
        }
        if *next < end {
            return Err(Failure::transient(format!(
                "the body ended at byte {}, before {end}",
                *next
            )));
        }
        Ok(())
    }

    /// Sends a request, waiting at most [`Config::stall`] for the response's headers.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, Failure> {
        // Byte offsets are offsets of the stored bytes: no content coding.
        let request = request.header(ACCEPT_ENCODING, "identity");
        match tokio::time::timeout(self.config.stall, request.send()).await {
            Err(_) => Err(self.stalled()),
            Ok(resp) => Ok(resp?),
        }
    }

    fn stalled(&self) -> Failure {
        Failure::transient(format!("the origin sent nothing for {:?}", self.config.stall))
    }

    /// After a failed attempt: waits before the next one, or returns the error that ends
    /// the operation.
    async fn backoff(&self, attempts: u32, failure: Failure) -> Result<(), OriginError> {
        let (why, retry_after) = match failure {
            Failure::Fatal(e) => return Err(e),
            Failure::Transient { why, retry_after } => (why, retry_after),
        };
        match self.policy().next(attempts, retry_after, fastrand::f64()) {
            Some(wait) => {
                debug!(attempts, ?wait, %why, "origin attempt failed, retrying");
                tokio::time::sleep(wait).await;
                Ok(())
            }
            None => Err(OriginError::GaveUp { attempts, last: why }),
        }
    }
}

/// Checks a fetch's response before its body is read: the range and resource it serves.
fn check_fetched(resp: &Response, res: &Resource, from: u64, end: u64) -> Result<(), Failure> {
    let (status, headers) = (resp.status(), resp.headers());
    let changed = |what: String| Failure::Fatal(OriginError::Changed { what });
    let expected_status = if res.ranges { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    if status != expected_status {
        return Err(match status {
            StatusCode::OK => changed("the origin sent the whole resource, not a range".into()),
            StatusCode::RANGE_NOT_SATISFIABLE => changed("the range is past the end now".into()),
            s if s.is_redirection() => changed(format!("the origin now redirects ({s})")),
            s if s.is_success() => {
                OriginError::Protocol(format!("{s} to a request for bytes {from}..{end}")).into()
            }
            s => reply::failed_status(s, headers, SystemTime::now()),
        });
    }
    reply::same_resource(&res.validators, &reply::validators(headers)).map_err(changed)?;
    if res.ranges {
        let range = reply::content_range(headers)?;
        if range.total != Some(res.len) {
            let total = range.total.map_or("unknown".into(), |t| t.to_string());
            return Err(changed(format!("the length {} is now {total}", res.len)));
        }
        if range.span != Some((from, end - 1)) {
            return Err(OriginError::Protocol(format!(
                "asked for bytes {from}-{}, got {:?}",
                end - 1,
                range.span
            ))
            .into());
        }
    }
    match reply::content_length(headers)? {
        Some(n) if res.ranges && n != end - from => Err(OriginError::Protocol(format!(
            "a Content-Length of {n} for a range of {} bytes",
            end - from
        ))
        .into()),
        Some(n) if !res.ranges && n != res.len => {
            Err(changed(format!("the length {} is now {n}", res.len)))
        }
        _ => Ok(()),
    }
}
