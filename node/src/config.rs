//! Node settings, validated once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A byte rate such as `20MiB/s`, `500KB/s` or `1000000` (bytes per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

/// Error parsing a [`Rate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rate {0:?}: expected a number with an optional unit, like 500KB/s, 20MiB/s or 1G")]
pub struct ParseRateError(String);

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseRateError(s.to_string());
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t).trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| err())?;
        let mult: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "K" | "KB" | "k" | "kB" => 1e3,
            "M" | "MB" => 1e6,
            "G" | "GB" => 1e9,
            "Ki" | "KiB" => 1024.0,
            "Mi" | "MiB" => 1024.0 * 1024.0,
            "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(err()),
        };
        let v = num * mult;
        if !(1.0..=1e15).contains(&v) {
            return Err(err());
        }
        Ok(Rate(v as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", human_bytes(self.0 as f64))
    }
}

/// `12.3 MiB` style.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The data dir: key, metadata, control address.
    pub data_dir: PathBuf,
    /// The UDP address for peers.
    pub listen: SocketAddr,
    /// Total upload cap.
    pub upload_limit: Option<Rate>,
    /// Total download cap.
    pub download_limit: Option<Rate>,
    /// Testing only: probability of flipping a byte in each uploaded piece.
    pub danger_corrupt_uploads: f64,
    /// Testing only: claim every piece of any content held in part (a lying bitfield).
    pub danger_lie_bitfield: bool,
    /// The tracker to register with (`host:port`), put in the tickets of added files.
    pub tracker: Option<String>,
    /// For a storage node: the object store URL (`file:///path` or `s3://bucket`).
    pub storage: Option<String>,
    /// S3 settings beyond the AWS environment variables.
    pub s3: shoal_cloud::backend::S3Options,
}

impl NodeConfig {
    /// Defaults for a data dir: listen on every interface on a free port, no limits.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: "0.0.0.0:0".parse().expect("valid address"),
            upload_limit: None,
            download_limit: None,
            danger_corrupt_uploads: 0.0,
            danger_lie_bitfield: false,
            tracker: None,
            storage: None,
            s3: shoal_cloud::backend::S3Options::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_forms() {
        let table = [
            ("20MiB/s", 20 * 1024 * 1024),
            ("500KB/s", 500_000),
            ("1000", 1000),
            ("1.5M", 1_500_000),
            ("2 GiB/s", 2 * 1024 * 1024 * 1024),
            ("64KiB", 65536),
        ];
        for (s, v) in table {
            assert_eq!(s.parse::<Rate>().unwrap(), Rate(v), "{s}");
        }
        for bad in ["", "fast", "10XB/s", "-5", "0", "1e400"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
