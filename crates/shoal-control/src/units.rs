//! Byte rates and byte counts as people type and read them.

use std::fmt;
use std::str::FromStr;

pub use shoal_core::units::human_bytes;

/// A byte rate such as `20MiB/s`, `500KB/s` or `1000` (bytes per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

/// Error parsing a [`Rate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rate {0:?}: expected a number with an optional unit, like 500KB/s, 20MiB/s or 1G")]
pub struct ParseRateError(String);

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t);
        byte_count(t).map(Rate).ok_or_else(|| ParseRateError(s.to_string()))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", human_bytes(self.0 as f64))
    }
}

/// A size in bytes such as `4GiB`, `500MB` or `0` (nothing: a cache of size 0 is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Error parsing a [`Size`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad size {0:?}: expected 0 or a number with an optional unit, like 500MB or 4GiB")]
pub struct ParseSizeError(String);

impl FromStr for Size {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.strip_suffix('B').unwrap_or(t).trim() == "0" {
            return Ok(Size(0));
        }
        byte_count(t).map(Size).ok_or_else(|| ParseSizeError(s.to_string()))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", human_bytes(self.0 as f64))
    }
}

/// A byte count with an optional unit (`10GiB`, `500KB`, `1000`), from 1 byte to 1 PB; `None`
/// for anything else.
pub fn byte_count(t: &str) -> Option<u64> {
    let t = t.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "k" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = num * mult;
    (1.0..=1e15).contains(&v).then_some(v as u64)
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

    #[test]
    fn size_forms() {
        let table = [("0", 0), ("0B", 0), (" 0 ", 0), ("4GiB", 4 << 30), ("500MB", 500_000_000)];
        for (s, v) in table {
            assert_eq!(s.parse::<Size>().unwrap(), Size(v), "{s}");
        }
        for bad in ["", "none", "-1", "0.5", "4XB", "1e400", "00x"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_print_in_binary_units() {
        assert_eq!(Rate(2 * 1024 * 1024).to_string(), "2.0 MiB/s");
        assert_eq!(Rate(100).to_string(), "100 B/s");
    }
}
