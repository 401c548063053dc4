//! Regions of a testnet: which process sits in which region, the flags that tell the node and
//! the tracker, and the region-aware lower bound on each region's finish.
//!
//! Processes are spread round robin by the number in their name: `node<i>`, `storage<i>`,
//! `evil<i>`... sit in region `r<i mod R>`, so node0 (the seed) is in `r0` and `--storage 2
//! --regions 2` gives one storage node per region. The tracker sits in no region (on loopback
//! it shares 127.0.0.1 with everyone; with `--netns` it hangs off the router, see
//! [`crate::netns`]). With one region (the default) nothing of this reaches a process: no
//! `--region` flag, no tracker flag, as before regions existed.
//!
//! # The bound
//!
//! Kumar and Ross's fluid bound for `n` downloaders fed by a source uploading `s`, each
//! downloader uploading `u`, is `max(F/s, n·F/(s + n·u))`; the report's T* is this with the
//! seed as the source (`s = u`, the testnet's one upload limit). Per region (storage left out,
//! as in T*: with equal uploads the source terms dominate, so it would not change the figure):
//!
//! - the seed's region: T* over that region's downloaders, `max(F/u, n·F/(u + n·u))`;
//! - any other region: `max(F/u, (n−1)·F/(n·u), F/L)`. The first two are the region's own
//!   fluid bound with the file arriving once across the border: nothing leaves the seed faster
//!   than `u`, and the region's `n` downloaders make the other `n−1` copies among themselves
//!   with `n·u` of upload. `F/L` (only with an inter-region limit `L`) is that one copy
//!   crossing the shaped border.
//!
//! Without an upload limit no finite bound exists but `F/L`; without either, none.

use std::fmt;

use anyhow::bail;
use shoal_control::human_bytes;

/// The most regions a testnet spreads over (each is a /24 with `--netns`).
pub(crate) const MAX_REGIONS: usize = 64;

/// One region of the testnet, shown as `r<k>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Region(pub(crate) usize);

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl serde::Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a testnet spreads over regions: validated once from the flags or the scenario keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Regions {
    count: usize,
    /// Bytes per second each way between two regions (with `--netns` only).
    inter_limit: Option<u64>,
    /// The tracker assigns regions but its lookups and hints ignore them.
    ignore: bool,
}

impl Regions {
    /// One region: the testnet as before regions existed.
    pub(crate) fn single() -> Self {
        Self { count: 1, inter_limit: None, ignore: false }
    }

    /// `count` regions; `nodes` is how many nodes the testnet starts (each region needs one).
    pub(crate) fn new(
        count: usize,
        inter_limit: Option<u64>,
        ignore: bool,
        nodes: usize,
        netns: bool,
    ) -> anyhow::Result<Self> {
        if count == 0 || count > MAX_REGIONS {
            bail!("--regions must be between 1 and {MAX_REGIONS}, not {count}");
        }
        if count > nodes {
            bail!("--regions {count} is more than --nodes {nodes}: every region needs a node");
        }
        if count == 1 && (inter_limit.is_some() || ignore) {
            bail!("--inter-region-limit and --ignore-regions need --regions 2 or more");
        }
        if inter_limit.is_some() && !netns {
            bail!(
                "--inter-region-limit needs --netns: on loopback nothing shapes the border \
                 (run as root with --netns, or drop the limit)"
            );
        }
        if inter_limit == Some(0) {
            bail!("--inter-region-limit must be above 0 (or `none`)");
        }
        if count == 1 {
            return Ok(Self::single());
        }
        Ok(Self { count, inter_limit, ignore })
    }

    /// How many regions.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// True for the default single region, where no process hears of regions.
    pub(crate) fn is_single(&self) -> bool {
        self.count == 1
    }

    /// The inter-region limit in bytes per second, if any.
    pub(crate) fn inter_limit(&self) -> Option<u64> {
        self.inter_limit
    }

    /// Whether the tracker is told to ignore regions.
    pub(crate) fn ignored(&self) -> bool {
        self.ignore
    }

    /// One line for people: how many regions, the border, whether the tracker ignores them.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} regions (r0..r{}), processes round robin, the seed in r0; between regions {}{}",
            self.count,
            self.count - 1,
            self.inter_limit.map_or("unshaped".to_string(), |l| format!(
                "{}/s each way",
                human_bytes(l as f64)
            )),
            if self.ignore { "; the tracker ignores regions" } else { "" }
        )
    }

    /// Every region, `r0` first.
    pub(crate) fn all(&self) -> impl Iterator<Item = Region> {
        (0..self.count).map(Region)
    }

    /// The region of the process named `name` (`node3`, `storage1`, `evil0`): its number
    /// modulo the region count; `None` for a name without a number (the tracker).
    pub(crate) fn of(&self, name: &str) -> Option<Region> {
        let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let index: usize = name[name.len() - digits..].parse().ok()?;
        Some(Region(index % self.count))
    }

    /// The flags that tell the daemon `name` its region; none with a single region.
    pub(crate) fn daemon_args(&self, name: &str) -> Vec<String> {
        match self.of(name) {
            Some(r) if !self.is_single() => vec!["--region".into(), r.to_string()],
            _ => Vec::new(),
        }
    }

    /// The tracker's region flags: the CIDR of each region with `--netns` (`subnets`, one per
    /// region in order), else the nodes' own `--region` allowed (everyone is 127.0.0.1).
    pub(crate) fn tracker_args(&self, subnets: Option<&[String]>) -> Vec<String> {
        if self.is_single() {
            return Vec::new();
        }
        let mut args = match subnets {
            Some(s) => s
                .iter()
                .zip(self.all())
                .flat_map(|(cidr, r)| ["--region".to_string(), format!("{cidr}={r}")])
                .collect(),
            None => vec!["--allow-stated-region".to_string()],
        };
        if self.ignore {
            args.push("--ignore-regions".into());
        }
        args
    }
}

/// Kumar and Ross's fluid bound: `n` downloaders of `file` bytes fed by a source uploading
/// `source`, each downloader uploading `upload` (bytes per second): `max(F/s, n·F/(s + n·u))`.
pub(crate) fn fluid_bound(file: u64, source: u64, upload: u64, n: usize) -> f64 {
    let (f, s, u, n) = (file as f64, source as f64, upload as f64, n as f64);
    (f / s).max(n * f / (s + n * u))
}

/// The region-aware bound on the last finish of a region's `n` downloaders (see the module
/// doc): T* over the region for the seed's region; for another, the fluid bound with the file
/// arriving once across the border, and `F/L` with an inter-region limit `L`. `None` when no
/// limit makes any bound finite, or the region has no downloader.
pub(crate) fn region_bound(
    file: u64,
    upload: Option<u64>,
    inter_limit: Option<u64>,
    n: usize,
    holds_seed: bool,
) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let f = file as f64;
    let own = upload.filter(|&u| u > 0).map(|u| {
        if holds_seed {
            fluid_bound(file, u, u, n)
        } else {
            let u = u as f64;
            (f / u).max((n as f64 - 1.0) * f / (n as f64 * u))
        }
    });
    let border = inter_limit.filter(|&l| l > 0 && !holds_seed).map(|l| f / l as f64);
    match (own, border) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn spread_round_robin_with_the_seed_in_r0() {
        let r = Regions::new(2, None, false, 16, false).unwrap();
        assert_eq!(r.of("node0"), Some(Region(0)), "the seed");
        assert_eq!(r.of("node1"), Some(Region(1)));
        assert_eq!(r.of("node15"), Some(Region(1)));
        // --storage 2 --regions 2: one storage node per region.
        assert_eq!(r.of("storage0"), Some(Region(0)));
        assert_eq!(r.of("storage1"), Some(Region(1)));
        assert_eq!(r.of("fake-storage3"), Some(Region(1)));
        assert_eq!(r.of("tracker"), None);
        let three = Regions::new(3, None, false, 7, false).unwrap();
        let spread: Vec<String> =
            (0..7).map(|i| three.of(&format!("node{i}")).unwrap().to_string()).collect();
        assert_eq!(spread, ["r0", "r1", "r2", "r0", "r1", "r2", "r0"]);
        assert_eq!(three.all().map(|r| r.to_string()).collect::<Vec<_>>(), ["r0", "r1", "r2"]);
    }

    #[test]
    fn one_region_tells_no_process() {
        let r = Regions::single();
        assert!(r.daemon_args("node3").is_empty());
        assert!(r.tracker_args(None).is_empty());
        assert!(r.tracker_args(Some(&["10.198.0.0/24".into()])).is_empty());
        assert_eq!(Regions::new(1, None, false, 2, false).unwrap(), r);
    }

    #[test]
    fn flags_for_daemons_and_the_tracker() {
        let r = Regions::new(2, None, false, 4, false).unwrap();
        assert_eq!(r.daemon_args("node3"), ["--region", "r1"]);
        assert!(r.daemon_args("tracker").is_empty());
        assert_eq!(r.tracker_args(None), ["--allow-stated-region"]);
        let nets = ["10.198.0.0/24".to_string(), "10.198.1.0/24".to_string()];
        let ns = Regions::new(2, Some(4 * MIB), true, 4, true).unwrap();
        assert_eq!(
            ns.tracker_args(Some(&nets)),
            ["--region", "10.198.0.0/24=r0", "--region", "10.198.1.0/24=r1", "--ignore-regions"]
        );
    }

    #[test]
    fn impossible_region_settings_are_refused() {
        for (count, limit, ignore, nodes, netns) in [
            (0, None, false, 4, false),                 // no region at all
            (MAX_REGIONS + 1, None, false, 100, false), // too many
            (3, None, false, 2, false),                 // a region without a node
            (1, Some(MIB), false, 4, true),             // a limit with no border
            (1, None, true, 4, false),                  // nothing to ignore
            (2, Some(MIB), false, 4, false),            // a limit nothing enforces on loopback
            (2, Some(0), false, 4, true),               // a border that carries nothing
        ] {
            assert!(
                Regions::new(count, limit, ignore, nodes, netns).is_err(),
                "{count} {limit:?} {ignore} {nodes} {netns}"
            );
        }
    }

    #[test]
    fn bound_per_region() {
        let (f, u, l) = (64 * MIB, 16 * MIB, 4 * MIB);
        // The seed's region: T* = max(F/u, n·F/(u + n·u)) = F/u = 4 s with equal uploads.
        assert_eq!(region_bound(f, Some(u), Some(l), 7, true), Some(4.0));
        assert_eq!(region_bound(f, Some(u), Some(l), 7, true), Some(fluid_bound(f, u, u, 7)));
        // Across a 4 MiB/s border: F/L = 16 s dominates F/u = 4 s and (n−1)·F/(n·u) = 3.5 s.
        assert_eq!(region_bound(f, Some(u), Some(l), 8, false), Some(16.0));
        // An unshaped border: the region's own bound, F/u.
        assert_eq!(region_bound(f, Some(u), None, 8, false), Some(4.0));
        // No upload limit: only the border bounds, and only outside the seed's region.
        assert_eq!(region_bound(f, None, Some(l), 8, false), Some(16.0));
        assert_eq!(region_bound(f, None, Some(l), 8, true), None);
        assert_eq!(region_bound(f, None, None, 8, false), None);
        // No downloader, no bound.
        assert_eq!(region_bound(f, Some(u), Some(l), 0, false), None);
    }

    #[test]
    fn fluid_bound_takes_the_larger_term() {
        // A slow source: F/s = 64 s dominates n·F/(s + n·u) = 4·64/(1 + 32) ≈ 7.8 s.
        assert_eq!(fluid_bound(64 * MIB, MIB, 8 * MIB, 4), 64.0);
        // A fast source and many downloaders: 100·64/(64 + 100) ≈ 39 s dominates F/s = 1 s.
        let b = fluid_bound(64 * MIB, 64 * MIB, MIB, 100);
        assert!((b - 100.0 * 64.0 / 164.0).abs() < 1e-9, "{b}");
    }
}
