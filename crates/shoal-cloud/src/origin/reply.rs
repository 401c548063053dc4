//! Reading a response's status and headers: byte ranges, lengths, validators, and whether a
//! failure is worth another attempt. No I/O, so each rule has a unit test.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED, RETRY_AFTER};
use reqwest::StatusCode;

use super::error::Failure;
use super::{retry, OriginError, Validators};

/// A `Content-Range: bytes first-last/total` or, on a 416, `bytes */total`. `total` is `None`
/// for `*`, a length the origin does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContentRange {
    /// First and last byte, inclusive; `None` in the unsatisfied form.
    pub(crate) span: Option<(u64, u64)>,
    pub(crate) total: Option<u64>,
}

/// Parses a Content-Range value (RFC 9110 §14.4); `None` if it is malformed.
pub(crate) fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let total = match total {
        "*" => None,
        n => Some(number(n)?),
    };
    let span = match span {
        "*" => None,
        s => {
            let (first, last) = s.split_once('-')?;
            let (first, last) = (number(first)?, number(last)?);
            // A range that ends before it starts, or past the total, is not a range.
            if last < first || total.is_some_and(|t| last >= t) {
                return None;
            }
            Some((first, last))
        }
    };
    if span.is_none() && total.is_none() {
        return None;
    }
    Some(ContentRange { span, total })
}

/// Digits only: `u64::from_str` also takes a leading `+`, which HTTP does not.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The Content-Range header, or a protocol error if it is missing or malformed.
pub(crate) fn content_range(headers: &HeaderMap) -> Result<ContentRange, OriginError> {
    let value = header(headers, CONTENT_RANGE)
        .ok_or_else(|| OriginError::Protocol("a 206 or 416 without Content-Range".into()))?;
    parse_content_range(value)
        .ok_or_else(|| OriginError::Protocol(format!("bad Content-Range {value:?}")))
}

/// The Content-Length header: `None` if absent (a chunked body), an error if malformed.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, OriginError> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(number)
            .map(Some)
            .ok_or_else(|| OriginError::Protocol(format!("bad Content-Length {v:?}"))),
    }
}

/// The validators a response carries.
pub(crate) fn validators(headers: &HeaderMap) -> Validators {
    Validators {
        etag: header(headers, ETAG).map(str::to_owned),
        last_modified: header(headers, LAST_MODIFIED).map(str::to_owned),
    }
}

fn is_weak(etag: &str) -> bool {
    etag.starts_with("W/")
}

/// The `If-Range` value for a resource: its strong ETag, else its Last-Modified (RFC 9110
/// §13.1.5 forbids a weak ETag there), else nothing.
pub(crate) fn if_range(v: &Validators) -> Option<&str> {
    match &v.etag {
        Some(tag) if !is_weak(tag) => Some(tag),
        _ => v.last_modified.as_deref(),
    }
}

/// Whether a response still serves the resource probed: an ETag must be equal, byte for
/// byte; when it is absent or weak (a weak tag may stay the same across changed bytes), the
/// Last-Modified must be equal too. `Err` says what changed.
pub(crate) fn same_resource(probed: &Validators, now: &Validators) -> Result<(), String> {
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    if let Some(tag) = &probed.etag {
        if now.etag.as_ref() != Some(tag) {
            return Err(format!("ETag {tag} is now {}", shown(&now.etag)));
        }
        if !is_weak(tag) {
            return Ok(());
        }
    }
    if let Some(date) = &probed.last_modified {
        if now.last_modified.as_ref() != Some(date) {
            return Err(format!("Last-Modified {date} is now {}", shown(&now.last_modified)));
        }
    }
    Ok(())
}

/// What an error status means for the operation: retry (408, 429, 5xx but those that say
/// the request itself is wrong) honouring `Retry-After`, or stop with [`OriginError::Status`].
pub(crate) fn failed_status(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Failure {
    let code = status.as_u16();
    let transient =
        matches!(code, 408 | 429) || (status.is_server_error() && !matches!(code, 501 | 505 | 511));
    if !transient {
        return Failure::Fatal(OriginError::Status { status: code });
    }
    let retry_after: Option<Duration> =
        header(headers, RETRY_AFTER).and_then(|v| retry::retry_after(v, now));
    let why = match retry_after {
        Some(d) => format!("the origin answered {status}, retry after {} s", d.as_secs()),
        None => format!("the origin answered {status}"),
    };
    Failure::Transient { why, retry_after }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn parses_content_range() {
        let r = |span, total| Some(ContentRange { span, total });
        let table = [
            ("bytes 0-0/5242880", r(Some((0, 0)), Some(5_242_880))), // a probe's answer
            ("bytes 100-199/200", r(Some((100, 199)), Some(200))),   // the last bytes
            ("bytes 0-9/*", r(Some((0, 9)), None)),                  // unknown length
            ("bytes */0", r(None, Some(0))),                         // 416 on an empty file
            (" bytes  5-5/6 ", r(Some((5, 5)), Some(6))),            // extra spaces
            ("bytes */*", None),                                     // says nothing
            ("bytes 10-9/20", None),                                 // ends before it starts
            ("bytes 0-20/20", None),                                 // last byte past the end
            ("bytes +1-2/3", None),                                  // a sign
            ("bytes 0-1", None),                                     // no total
            ("items 0-1/2", None),                                   // another unit
            ("bytes 0-99999999999999999999/*", None),                // overflow
        ];
        for (value, want) in table {
            assert_eq!(parse_content_range(value), want, "{value:?}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.insert(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn reads_lengths() {
        assert_eq!(content_length(&headers(&[])).unwrap(), None);
        assert_eq!(content_length(&headers(&[("content-length", "42")])).unwrap(), Some(42));
        assert!(content_length(&headers(&[("content-length", "-1")])).is_err());
        assert!(content_range(&headers(&[])).is_err());
    }

    #[test]
    fn compares_validators() {
        let v = |etag: Option<&str>, lm: Option<&str>| Validators {
            etag: etag.map(Into::into),
            last_modified: lm.map(Into::into),
        };
        let (d1, d2) =
            (Some("Mon, 01 Jan 2024 00:00:00 GMT"), Some("Tue, 02 Jan 2024 00:00:00 GMT"));
        let strong = Some("\"abc\"");
        // A strong ETag decides alone: a new date with the same tag is the same bytes.
        assert!(same_resource(&v(strong, d1), &v(strong, d2)).is_ok());
        assert!(same_resource(&v(strong, d1), &v(Some("\"abd\""), d1)).is_err());
        assert!(same_resource(&v(strong, d1), &v(None, d1)).is_err());
        // A weak ETag needs the date as well.
        assert!(same_resource(&v(Some("W/\"abc\""), d1), &v(Some("W/\"abc\""), d2)).is_err());
        assert!(same_resource(&v(Some("W/\"abc\""), d1), &v(Some("W/\"abc\""), d1)).is_ok());
        // No ETag: the date.
        assert!(same_resource(&v(None, d1), &v(None, d1)).is_ok());
        assert!(same_resource(&v(None, d1), &v(None, d2)).is_err());
        // Nothing to compare: only lengths can tell.
        assert!(same_resource(&v(None, None), &v(strong, d1)).is_ok());
        // If-Range never carries a weak tag.
        assert_eq!(if_range(&v(strong, d1)), strong);
        assert_eq!(if_range(&v(Some("W/\"abc\""), d1)), d1);
        assert_eq!(if_range(&v(None, None)), None);
    }

    #[test]
    fn sorts_statuses() {
        let now = SystemTime::UNIX_EPOCH;
        let transient = |code: u16, h: &HeaderMap| match failed_status(
            StatusCode::from_u16(code).unwrap(),
            h,
            now,
        ) {
            Failure::Transient { retry_after, .. } => Some(retry_after),
            Failure::Fatal(OriginError::Status { status }) => {
                assert_eq!(status, code);
                None
            }
            Failure::Fatal(e) => panic!("{code}: {e}"),
        };
        let none = headers(&[]);
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(transient(code, &none), Some(None), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 451, 501, 505, 511] {
            assert_eq!(transient(code, &none), None, "{code}");
        }
        let later = headers(&[("retry-after", "7")]);
        assert_eq!(transient(429, &later), Some(Some(Duration::from_secs(7))));
        assert_eq!(transient(503, &later), Some(Some(Duration::from_secs(7))));
    }
}
