//! What can go wrong fetching from an origin, and which failures are worth another attempt.

use std::error::Error as _;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use super::guard::Refusal;

/// Why a probe or a fetch failed.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum OriginError {
    /// The URL cannot be fetched as written: it does not parse, has no host, or its scheme
    /// is not http or https (also when a redirect points there).
    #[error("cannot fetch {url:?}: {why} (give a full http:// or https:// URL)")]
    BadUrl {
        /// The URL as given or as redirected to.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The URL, or a redirect, leads to a loopback, private or link-local address.
    #[error(
        "refusing to fetch from {host} ({addr}): a private or local address (the storage \
         operator can allow it with --offline-allow-private)"
    )]
    Refused {
        /// The host as written in the URL.
        host: String,
        /// The refused address.
        addr: IpAddr,
    },
    /// The origin redirected more times than allowed.
    #[error("more than {max} redirects (does the URL redirect in a loop?)")]
    TooManyRedirects {
        /// The limit, [`super::Config::max_redirects`].
        max: u32,
    },
    /// The origin answered a status that another attempt would not change (404, 403, 410...).
    #[error("the origin answered {status}{}", reason(*status))]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The origin does not say how long the resource is.
    #[error("the origin does not tell the resource's length; such downloads are not supported")]
    NoLength,
    /// The resource is longer than [`super::Config::max_size`].
    #[error("the resource is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// The resource's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A part of the resource was asked for, but the origin only serves it whole.
    #[error("the origin does not serve byte ranges: fetch the whole resource in one go")]
    NoRanges,
    /// The range asked for is not inside the resource (a caller's mistake).
    #[error("bytes {start}..+{len} are not inside the resource's {total} bytes")]
    BadRange {
        /// The first byte asked for.
        start: u64,
        /// How many bytes were asked for.
        len: u64,
        /// The resource's length.
        total: u64,
    },
    /// The resource is not the one probed any more: other validators or another length.
    #[error("the resource changed at the origin ({what}): start the download again")]
    Changed {
        /// What differs.
        what: String,
    },
    /// Transient failures went on until the retry budget ran out, or the origin asked to
    /// wait longer than [`super::Config::max_retry_after`].
    #[error("gave up after {attempts} attempts; the last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The origin's answer breaks HTTP or contradicts what was asked (a wrong range, more
    /// bytes than asked for).
    #[error("the origin broke the protocol: {0}")]
    Protocol(String),
    /// The sink refused a chunk; the fetch stopped there.
    #[error("cannot store the fetched bytes: {0}")]
    Sink(#[source] io::Error),
    /// The HTTP client could not be built (no TLS roots on this system, for one).
    #[error("cannot set up the http client: {0}")]
    Client(String),
}

fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {}", r.to_lowercase()))
        .unwrap_or_default()
}

/// One failed attempt.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Another attempt may succeed, after `retry_after` if the origin asked for a wait.
    Transient { why: String, retry_after: Option<Duration> },
    /// Another attempt would fail the same way, or must not be made.
    Fatal(OriginError),
}

impl Failure {
    pub(crate) fn transient(why: impl Into<String>) -> Self {
        Failure::Transient { why: why.into(), retry_after: None }
    }
}

impl From<OriginError> for Failure {
    fn from(e: OriginError) -> Self {
        Failure::Fatal(e)
    }
}

impl From<reqwest::Error> for Failure {
    /// Connection, timeout and body errors are transient, except a refusal by the guard's
    /// resolver: reqwest reports it as a connect error, so it is found in the source chain
    /// (the only way it comes back out of the client).
    fn from(e: reqwest::Error) -> Self {
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Refusal>() {
                return Failure::Fatal(OriginError::Refused { host: r.host.clone(), addr: r.addr });
            }
            source = s.source();
        }
        if e.is_builder() {
            return Failure::Fatal(OriginError::Protocol(chain(&e)));
        }
        Failure::transient(chain(&e))
    }
}

/// An error and its causes on one line: reqwest's own message alone ("error sending request
/// for url") hides the reason.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
