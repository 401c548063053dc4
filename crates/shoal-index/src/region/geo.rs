//! Regions from a MaxMind-format database (GeoIP2 / GeoLite2 Country or City): an address's
//! country, named by the operator's table (`DE=eu-central`), else its continent code in
//! lowercase (`eu`, `na`, `as`, ...).
//!
//! The database is the operator's file, read once at start into memory by the `maxminddb`
//! crate; a lookup costs a walk of its search tree (at most 128 steps) and the decoding of two
//! short strings.

use std::collections::HashMap;
use std::net::IpAddr;

use maxminddb::{path, Reader};
use shoal_core::Region;

/// A MaxMind-format database and the operator's country table.
pub struct GeoRegions {
    reader: Reader<Vec<u8>>,
    countries: HashMap<String, Region>,
}

impl std::fmt::Debug for GeoRegions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoRegions")
            .field("database_type", &self.reader.metadata().database_type)
            .field("countries", &self.countries)
            .finish()
    }
}

/// A database that does not read as MaxMind's format, or a bad country line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// The database is not a MaxMind DB.
    #[error(
        "not a MaxMind-format database ({0}): give a GeoIP2 or GeoLite2 Country or City .mmdb file"
    )]
    Database(String),
    /// A country line is not `CC=NAME`.
    #[error("bad country line {0:?}: write CC=NAME, like DE=eu-central (a two-letter ISO code)")]
    Country(String),
}

impl GeoRegions {
    /// Reads a database from its bytes, with `CC=NAME` lines naming countries' regions.
    pub fn new<'a>(
        bytes: Vec<u8>,
        countries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, GeoError> {
        let reader = Reader::from_source(bytes).map_err(|e| GeoError::Database(e.to_string()))?;
        let mut table = HashMap::new();
        for line in countries {
            let bad = || GeoError::Country(line.chars().take(40).collect());
            let (cc, name) = line.split_once('=').ok_or_else(bad)?;
            let cc = cc.trim();
            if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(bad());
            }
            let region = name.trim().parse::<Region>().map_err(|_| bad())?;
            table.insert(cc.to_ascii_uppercase(), region);
        }
        Ok(Self { reader, countries: table })
    }

    /// The region of `ip`: its country's, as the table names it, else its continent code.
    /// `None` for an address the database does not know.
    pub fn region_of(&self, ip: IpAddr) -> Option<Region> {
        let found = self.reader.lookup(ip).ok()?;
        let country: Option<String> = found.decode_path(&path!["country", "iso_code"]).ok()?;
        if let Some(r) = country.and_then(|c| self.countries.get(&c.to_ascii_uppercase())) {
            return Some(r.clone());
        }
        let continent: Option<String> = found.decode_path(&path!["continent", "code"]).ok()?;
        continent?.to_ascii_lowercase().parse().ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4 MaxMind DB (format 2.0, 24-bit records) placing `net/len` in `country`
    /// of `continent`, everything else nowhere. Written here from the format's specification,
    /// so that tests need no downloaded database.
    pub(crate) fn mmdb(net: [u8; 4], len: u8, country: &str, continent: &str) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            assert!(s.len() < 29);
            out.push((2 << 5) | s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        fn map(out: &mut Vec<u8>, n: usize) {
            out.push((7 << 5) | n as u8);
        }
        fn uint16(out: &mut Vec<u8>, v: u16) {
            out.push((5 << 5) | 2);
            out.extend_from_slice(&v.to_be_bytes());
        }
        fn uint32(out: &mut Vec<u8>, v: u32) {
            out.push((6 << 5) | 4);
            out.extend_from_slice(&v.to_be_bytes());
        }
        let bits = u32::from_be_bytes(net);
        let nodes = u32::from(len);
        let mut data = Vec::new();
        map(&mut data, 2);
        string(&mut data, "country");
        map(&mut data, 1);
        string(&mut data, "iso_code");
        string(&mut data, country);
        string(&mut data, "continent");
        map(&mut data, 1);
        string(&mut data, "code");
        string(&mut data, continent);
        let mut out = Vec::new();
        for level in 0..nodes {
            let bit = (bits >> (31 - level)) & 1;
            // The matching side leads on (or, on the last level, to the data); the other
            // side holds no data (a record equal to the node count).
            let on = if level + 1 < nodes { level + 1 } else { nodes + 16 };
            let (left, right) = if bit == 0 { (on, nodes) } else { (nodes, on) };
            out.extend_from_slice(&left.to_be_bytes()[1..]);
            out.extend_from_slice(&right.to_be_bytes()[1..]);
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
        map(&mut out, 9);
        string(&mut out, "node_count");
        uint32(&mut out, nodes);
        string(&mut out, "record_size");
        uint16(&mut out, 24);
        string(&mut out, "ip_version");
        uint16(&mut out, 4);
        string(&mut out, "database_type");
        string(&mut out, "Shoal-Test-Country");
        string(&mut out, "languages");
        // An extended type: size in the control byte, then the type less 7 (array: 11).
        out.push(0);
        out.push(4);
        string(&mut out, "binary_format_major_version");
        uint16(&mut out, 2);
        string(&mut out, "binary_format_minor_version");
        uint16(&mut out, 0);
        string(&mut out, "build_epoch");
        // uint64 (9): 8 bytes.
        out.push(8);
        out.push(2);
        out.extend_from_slice(&1u64.to_be_bytes());
        string(&mut out, "description");
        map(&mut out, 0);
        out
    }

    #[test]
    fn countries_are_named_by_the_table_and_others_by_their_continent() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let db = mmdb([10, 0, 0, 0], 8, "DE", "EU");
        let geo = GeoRegions::new(db.clone(), ["DE=eu-central"]).unwrap();
        assert_eq!(geo.region_of(ip("10.1.2.3")).unwrap().as_str(), "eu-central");
        assert_eq!(geo.region_of(ip("11.0.0.1")), None, "outside every network");
        let geo = GeoRegions::new(db, []).unwrap();
        assert_eq!(geo.region_of(ip("10.9.9.9")).unwrap().as_str(), "eu", "its continent");
        // Not a database, and bad country lines, say what to give instead.
        let err = GeoRegions::new(b"not a database".to_vec(), []).unwrap_err();
        assert!(err.to_string().contains(".mmdb"), "{err}");
        let db = mmdb([10, 0, 0, 0], 8, "DE", "EU");
        for bad in ["DE", "DEU=x", "D1=x", "DE=Bad Name"] {
            let err = GeoRegions::new(db.clone(), [bad]).unwrap_err();
            assert!(err.to_string().contains("CC=NAME"), "{err}");
        }
    }
}
