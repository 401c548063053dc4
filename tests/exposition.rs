//! A strict reader of the Prometheus text exposition format (0.0.4), for checking what the
//! binaries serve: every sample belongs to a family declared by a `# TYPE` line before it,
//! names and labels are well formed, values are numbers, counters end in `_total`, and each
//! histogram's buckets are cumulative up to `+Inf`, which equals its `_count`.

use std::collections::{BTreeMap, HashMap};

/// One sample: its name, labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name -> type.
    pub types: HashMap<String, String>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels and the rest.
fn labels(s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut out = BTreeMap::new();
    let mut rest = s.strip_prefix('{').expect("labels start with {");
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(r) = rest.strip_prefix('}') {
            return (out, r.to_string());
        }
        let (key, r) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
        assert!(is_name(key) && !key.contains(':'), "bad label name {key:?} in {line:?}");
        let mut v = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => v.push('\\'),
                    Some((_, '"')) => v.push('"'),
                    Some((_, 'n')) => v.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => v.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(out.insert(key.to_string(), v).is_none(), "label {key} twice in {line:?}");
        rest = &r[end + 1..];
    }
}

/// The family a sample name belongs to, given the declared types.
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram" || t == "summary") {
                return Some(base);
            }
        }
    }
    None
}

/// Parses a scrape, panicking with the offending line on anything malformed.
pub fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(is_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type in {line:?}"
                );
                if t == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} must end in _total");
                }
                assert!(
                    s.types.insert(name.to_string(), t.to_string()).is_none(),
                    "{name} typed twice"
                );
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment {line:?}");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(is_name(name), "bad sample name in {line:?}");
        assert!(family(name, &s.types).is_some(), "sample without a # TYPE before it: {line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            labels(&line[name_end..], line)
        } else {
            (BTreeMap::new(), line[name_end..].to_string())
        };
        let mut fields = rest.split_whitespace();
        let v = fields.next().and_then(value).unwrap_or_else(|| panic!("bad value in {line:?}"));
        // An optional timestamp, then nothing.
        if let Some(ts) = fields.next() {
            assert!(ts.parse::<i64>().is_ok(), "bad timestamp in {line:?}");
        }
        assert!(fields.next().is_none(), "trailing text in {line:?}");
        s.samples.push(Sample { name: name.to_string(), labels, value: v });
    }
    check_histograms(&s);
    s
}

/// Per label set (without `le`): its buckets (bound, count) in order, and its `_count`.
type Series = BTreeMap<Vec<(String, String)>, (Vec<(f64, f64)>, Option<f64>)>;

fn check_histograms(s: &Scrape) {
    for (fam, t) in &s.types {
        if t != "histogram" {
            continue;
        }
        let mut series = Series::new();
        for x in &s.samples {
            let mut key: Vec<(String, String)> = x
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            key.sort();
            if x.name == format!("{fam}_bucket") {
                let le = value(&x.labels["le"]).expect("le is a number");
                series.entry(key).or_default().0.push((le, x.value));
            } else if x.name == format!("{fam}_count") {
                series.entry(key).or_default().1 = Some(x.value);
            }
        }
        for (key, (buckets, count)) in series {
            assert!(
                buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{fam} {key:?}: buckets not cumulative"
            );
            let inf = buckets.last().filter(|b| b.0.is_infinite()).expect("a +Inf bucket");
            assert_eq!(Some(inf.1), count, "{fam} {key:?}: +Inf bucket is not the count");
        }
    }
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include every pair of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|x| {
                x.name == name
                    && with.iter().all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|x| x.value)
            .sum()
    }

    /// True if some sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|x| x.name == name)
    }
}

/// `GET http://{addr}{path}`: the status and body (errors as statuses, not panics).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://{addr}{path}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// Scrapes `http://{addr}/metrics` and parses it.
pub fn scrape(addr: &str) -> Scrape {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    parse(&body)
}

/// Scrapes the control API's `/metrics` of the daemon running on `data_dir`.
pub fn control_scrape(data_dir: &std::path::Path) -> Scrape {
    let info = std::fs::read(data_dir.join("control.json")).expect("a running daemon");
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    scrape(info["addr"].as_str().unwrap())
}

#[test]
fn the_reader_refuses_what_the_format_does_not_allow() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v\\\"x\"} 3\n\
              # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let s = parse(ok);
    assert_eq!(s.sum("a_total", &[("k", "v\"x")]), 3.0);
    for bad in [
        "a 1\n",                                                    // no # TYPE
        "# TYPE a gauge\na{k=\"v} 1\n",                             // unterminated label
        "# TYPE a gauge\na one\n",                                  // not a number
        "# TYPE a counter\na 1\n",                                  // counter without _total
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", // count is not +Inf
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "accepted {bad:?}");
    }
}
