//! Regions: the operator's map from addresses to regions, and the index's small numbering of
//! the regions it has seen.
//!
//! A [`RegionMap`] is a list of CIDR ranges, each naming a region; an address takes the region
//! of the longest range holding it. Inside the index a region is a number ([`RegionId`], 0 for
//! none), so that a holder's region costs two bytes and comparing two is one instruction. The
//! numbering is bounded ([`MAX_REGIONS`]): regions come from the operator's map, or from what
//! nodes state where the operator allows it, and a stranger stating a new name each time would
//! otherwise grow it without end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use shoal_core::Region;

mod geo;
pub use geo::{GeoError, GeoRegions};

/// A region's number inside the index; [`NO_REGION`] for none.
pub(crate) type RegionId = u16;
/// No region: the tracker has no map, or no range holds the address.
pub(crate) const NO_REGION: RegionId = 0;
/// The most distinct regions the index numbers. Stated regions past it count as none.
pub const MAX_REGIONS: usize = 256;

/// The operator's CIDR ranges, each naming a region, and optionally a MaxMind-format database
/// for addresses no range holds.
#[derive(Debug, Clone, Default)]
pub struct RegionMap {
    /// (range, region), the longest prefixes first.
    ranges: Vec<(IpNet, Region)>,
    geo: Option<std::sync::Arc<GeoRegions>>,
}

/// A line of a region map that does not read as `CIDR=NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad region range {0:?}: write CIDR=NAME, like 10.1.0.0/16=eu-west or 2001:db8::/32=us")]
pub struct BadRange(pub String);

impl RegionMap {
    /// A map of `(range, region)` pairs.
    pub fn new(ranges: impl IntoIterator<Item = (IpNet, Region)>) -> Self {
        let mut ranges: Vec<(IpNet, Region)> =
            ranges.into_iter().map(|(net, r)| (net.trunc(), r)).collect();
        // Longest prefix first: the first range holding an address is the most specific.
        ranges.sort_by_key(|r| std::cmp::Reverse(r.0.prefix_len()));
        Self { ranges, geo: None }
    }

    /// The same map, asking `geo` for addresses no range holds.
    pub fn with_geo(mut self, geo: GeoRegions) -> Self {
        self.geo = Some(std::sync::Arc::new(geo));
        self
    }

    /// Reads `CIDR=NAME` lines (as `--region` flags or a file's lines give them).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Self, BadRange> {
        let mut ranges = Vec::new();
        for line in lines {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || BadRange(line.chars().take(80).collect());
            let (net, name) = line.split_once('=').ok_or_else(bad)?;
            let net = IpNet::from_str(net.trim()).map_err(|_| bad())?;
            let region = name.trim().parse::<Region>().map_err(|_| bad())?;
            ranges.push((net, region));
        }
        Ok(Self::new(ranges))
    }

    /// The region of `ip`, if a range holds it. An IPv4-mapped IPv6 address counts as IPv4.
    pub fn region_of(&self, ip: IpAddr) -> Option<&Region> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.ranges.iter().find(|(net, _)| net.contains(&ip)).map(|(_, r)| r)
    }

    /// The region of `ip`: the longest range holding it, else the database's answer.
    pub fn place(&self, ip: IpAddr) -> Option<Region> {
        if let Some(r) = self.region_of(ip) {
            return Some(r.clone());
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.geo.as_ref()?.region_of(ip)
    }

    /// True if it names no range and has no database.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.geo.is_none()
    }

    /// The ranges, the longest first.
    pub fn ranges(&self) -> &[(IpNet, Region)] {
        &self.ranges
    }
}

/// The regions the index has numbered, at most [`MAX_REGIONS`].
#[derive(Debug, Default)]
pub(crate) struct Regions {
    /// Index `i` is region number `i + 1`.
    names: Vec<Region>,
    ids: HashMap<Region, RegionId>,
}

impl Regions {
    /// The number of `region`, numbering it if it is new and there is room; [`NO_REGION`]
    /// for none or when full.
    pub(crate) fn intern(&mut self, region: Option<&Region>) -> RegionId {
        let Some(region) = region else { return NO_REGION };
        if let Some(&id) = self.ids.get(region) {
            return id;
        }
        if self.names.len() >= MAX_REGIONS {
            return NO_REGION;
        }
        self.names.push(region.clone());
        let id = self.names.len() as RegionId;
        self.ids.insert(region.clone(), id);
        id
    }

    /// The number of `region`, if numbered.
    pub(crate) fn id(&self, region: &Region) -> Option<RegionId> {
        self.ids.get(region).copied()
    }

    /// The region numbered `id`.
    pub(crate) fn name(&self, id: RegionId) -> Option<&Region> {
        (id as usize).checked_sub(1).and_then(|i| self.names.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_range_wins_and_bad_lines_name_themselves() {
        let map = RegionMap::parse([
            "10.0.0.0/8=wide",
            "# a comment",
            "",
            "10.1.2.0/24 = narrow",
            "2001:db8::/32=six",
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(map.region_of(ip("10.1.2.3")).unwrap().as_str(), "narrow");
        assert_eq!(map.region_of(ip("10.9.9.9")).unwrap().as_str(), "wide");
        assert_eq!(map.region_of(ip("::ffff:10.1.2.3")).unwrap().as_str(), "narrow");
        assert_eq!(map.region_of(ip("2001:db8::1")).unwrap().as_str(), "six");
        assert_eq!(map.region_of(ip("192.168.1.1")), None);
        for bad in ["10.0.0.0/8", "10.0.0.0/33=x", "nonsense=x", "10.0.0.0/8=Bad Name"] {
            let err = RegionMap::parse([bad]).unwrap_err();
            assert!(err.to_string().contains("CIDR=NAME"), "{err}");
        }
    }

    #[test]
    fn ranges_come_first_then_the_database() {
        let db = geo::tests::mmdb([10, 0, 0, 0], 8, "DE", "EU");
        let geo = GeoRegions::new(db, ["DE=eu-central"]).unwrap();
        let map = RegionMap::parse(["10.1.0.0/16=dc1"]).unwrap().with_geo(geo);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(map.place(ip("10.1.2.3")).unwrap().as_str(), "dc1", "the operator's range");
        assert_eq!(map.place(ip("10.2.0.1")).unwrap().as_str(), "eu-central", "the database");
        assert_eq!(map.place(ip("::ffff:10.2.0.1")).unwrap().as_str(), "eu-central");
        assert_eq!(map.place(ip("192.0.2.1")), None);
    }

    #[test]
    fn numbering_is_bounded() {
        let mut r = Regions::default();
        assert_eq!(r.intern(None), NO_REGION);
        let a: Region = "a".parse().unwrap();
        let id = r.intern(Some(&a));
        assert_eq!(r.intern(Some(&a)), id, "the same name keeps its number");
        assert_eq!(r.name(id), Some(&a));
        for i in 0..MAX_REGIONS * 2 {
            r.intern(Some(&format!("r{i}").parse().unwrap()));
        }
        assert_eq!(r.names.len(), MAX_REGIONS);
        assert_eq!(r.intern(Some(&"new".parse().unwrap())), NO_REGION, "full: none");
        assert_eq!(r.intern(Some(&a)), id, "known names still resolve");
    }
}
