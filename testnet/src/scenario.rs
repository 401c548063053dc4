//! Scenarios: a testnet with scheduled faults and adversaries, then invariants.
//!
//! A scenario file (TOML):
//!
//! ```toml
//! name = "churn"
//! nodes = 6              # node0 seeds, the others fetch
//! storage = 0            # storage nodes
//! push = false           # the seed pushes the file into storage while it seeds
//! corrupters = 0         # extra seeders that flip a byte in every piece they upload
//! liars = 0              # extra downloaders that advertise pieces they do not have
//! file_size = "16MiB"
//! upload_limit = "4MiB/s"
//! baseline = false       # first run the same scenario without its adversaries, then compare
//! memory_ceiling = "256MiB"  # no honest process may exceed this resident memory (default)
//! slowdown = 2.0         # with `baseline`: honest nodes finish within this × the baseline
//! regions = 1            # spread processes over r0, r1, ... round robin (see regions.rs)
//! inter_region_limit = "4MiB/s"  # each way between regions (needs --netns; default none)
//! ignore_regions = false # the tracker assigns regions but its lookups ignore them
//!
//! [[events]]
//! target = "node2"       # nodeN, seed, tracker, storageN
//! at = 1.5               # seconds after the fetches start, or:
//! # at_progress = 100    # when the fastest downloader holds this % of the pieces
//! restart_after = 1.0    # omit and it stays down
//!
//! [adversaries]          # hostile clients (see adversary.rs); every key defaults to none
//! sybils = 1000          # fresh ids registering and announcing at the tracker
//! fake_storage = 1       # `shoal daemon --role storage` the tracker does not admit
//! storage_claims = 2     # ids claiming to be storage through the tracker protocol
//! slow_readers = 1       # clients reading pieces at a trickle
//! silent_peers = 2       # ids announcing the content and never answering
//! push_squatter = true   # pushes the seed's manifest into storage first, then junk
//! flooders = 1           # request-stream floods at every honest node
//! seconds = 60           # each adversary stops after this (and when the fetches end)
//!
//! [expect]
//! storage_complete = false
//! ```
//!
//! Invariants checked at the end: every honest node that stayed holds a byte-identical file
//! (so no finished file contains a piece that failed verification); every corrupter was
//! banned by each node it sent data to; storage holds the whole file where expected; no honest
//! process (tracker, storage, honest nodes) exceeded the memory ceiling, sampled from
//! `/proc/PID/status`; storage holds only the scenario's content and unadmitted storage was
//! given nothing; no honest process accepted what it must refuse; with `baseline`, honest
//! nodes finished within `slowdown` × the baseline's last finish (taken as at least 4 s).
//! `report.json` in the run directory holds every pass, check, peak and adversary count.

mod pass;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shoal_control::{human_bytes, Rate};

use crate::adversary;
use crate::regions::Regions;

/// The memory ceiling of an honest process unless the scenario says otherwise.
const DEFAULT_CEILING: &str = "256MiB";
/// Under this baseline, its noise (process start, scheduling on a shared machine) dominates:
/// the slowdown is taken against at least this many seconds. (2 s was too little: a 2.97 s
/// baseline and a 5.96 s run under the full test suite on 2 cores failed by 0.01 s.)
const MIN_BASELINE_S: f64 = 4.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    nodes: usize,
    #[serde(default)]
    storage: usize,
    #[serde(default)]
    push: bool,
    #[serde(default)]
    corrupters: usize,
    /// Extra downloaders that advertise every piece they hold any of (lying bitfields).
    #[serde(default)]
    liars: usize,
    file_size: String,
    upload_limit: Option<String>,
    #[serde(default)]
    baseline: bool,
    memory_ceiling: Option<String>,
    slowdown: Option<f64>,
    /// Regions to spread over (1 when absent).
    regions: Option<usize>,
    inter_region_limit: Option<String>,
    #[serde(default)]
    ignore_regions: bool,
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    adversaries: adversary::Config,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    target: String,
    at: Option<f64>,
    at_progress: Option<f64>,
    restart_after: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    storage_complete: bool,
}

/// One invariant's outcome.
#[derive(Debug, Clone, Serialize)]
struct Check {
    what: String,
    ok: bool,
}

/// Prints and returns one check.
fn check(ok: bool, what: &str) -> Check {
    println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
    Check { what: what.to_string(), ok }
}

/// What `report.json` holds for a scenario run.
#[derive(Debug, Serialize)]
struct ScenarioReport<'a> {
    scenario: &'a str,
    memory_ceiling_bytes: u64,
    slowdown_max: Option<f64>,
    passes: &'a [pass::Pass],
    checks: &'a [Check],
    ok: bool,
}

/// Runs the scenario in `file`; `Ok(false)` if an invariant broke.
pub(crate) fn run(file: &Path, dir: Option<PathBuf>, netns: bool) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sc: Scenario = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid scenario", file.display()))?;
    if sc.nodes < 2 {
        bail!("a scenario needs at least 2 nodes");
    }
    sc.adversaries
        .validate()
        .with_context(|| format!("{} is not a valid scenario", file.display()))?;
    let ceiling = sc.memory_ceiling.as_deref().unwrap_or(DEFAULT_CEILING).parse::<Rate>()?.0;
    let slowdown = sc.slowdown.unwrap_or(2.0);
    if sc.baseline && (slowdown.is_nan() || slowdown < 1.0) {
        bail!("slowdown must be at least 1.0");
    }
    let regions =
        sc.regions(netns).with_context(|| format!("{} is not a valid scenario", file.display()))?;
    let dir = dir.unwrap_or_else(|| PathBuf::from("testnet-runs").join(&sc.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    println!("scenario {} in {}", sc.name, dir.display());
    println!("memory ceiling per honest process: {}", human_bytes(ceiling as f64));

    let mut passes = Vec::new();
    if sc.baseline && sc.adversaries.any() {
        println!("baseline: the same scenario without its adversaries");
        passes.push(pass::run(&sc, &regions, &dir.join("baseline"), netns, false)?);
        println!("with the adversaries");
    }
    passes.push(pass::run(&sc, &regions, &dir, netns, true)?);

    let mut checks: Vec<Check> = passes.iter().flat_map(|p| p.checks.clone()).collect();
    for p in &passes {
        checks.extend(memory_checks(p.kind, &p.peak_rss, ceiling));
    }
    let mut slowdown_max = None;
    if let [base, adv] = passes.as_slice() {
        slowdown_max = Some(slowdown);
        let what = match (base.last_finish_s, adv.last_finish_s) {
            (Some(b), Some(a)) => {
                let allowed = slowdown * b.max(MIN_BASELINE_S);
                (
                    a <= allowed,
                    format!(
                    "honest nodes finished in {a:.2} s with adversaries, within {slowdown} × the \
                     baseline's {b:.2} s (allowed {allowed:.2} s)"
                ),
                )
            }
            _ => (false, "honest nodes finished in both passes".to_string()),
        };
        checks.push(check(what.0, &what.1));
    }
    let ok = checks.iter().all(|c| c.ok);
    let report = ScenarioReport {
        scenario: &sc.name,
        memory_ceiling_bytes: ceiling,
        slowdown_max,
        passes: &passes,
        checks: &checks,
        ok,
    };
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)
        .context("writing report.json")?;
    println!(
        "scenario {}: {}",
        sc.name,
        if ok { "all invariants hold" } else { "INVARIANTS BROKEN" }
    );
    println!("report: {}", dir.join("report.json").display());
    Ok(ok)
}

impl Scenario {
    /// The scenario's regions, validated (`netns`: whether the run has namespaces to shape).
    fn regions(&self, netns: bool) -> anyhow::Result<Regions> {
        let limit = match self.inter_region_limit.as_deref() {
            None | Some("none") => None,
            Some(l) => Some(l.parse::<Rate>()?.0),
        };
        Regions::new(self.regions.unwrap_or(1), limit, self.ignore_regions, self.nodes, netns)
    }
}

/// One check per honest process: its peak resident memory stayed under `ceiling`.
fn memory_checks(kind: &str, peaks: &BTreeMap<String, u64>, ceiling: u64) -> Vec<Check> {
    peaks
        .iter()
        .map(|(name, &peak)| {
            check(
                peak <= ceiling,
                &format!(
                    "{kind}: {name} peaked at {} resident, under {}",
                    human_bytes(peak as f64),
                    human_bytes(ceiling as f64)
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let sc: Scenario = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            sc.adversaries.validate().unwrap();
        }
    }

    #[test]
    fn memory_over_the_ceiling_fails() {
        let peaks = BTreeMap::from([("node0".to_string(), 10), ("tracker".to_string(), 11)]);
        let checks = memory_checks("scenario", &peaks, 10);
        assert!(checks[0].ok && !checks[1].ok);
    }
}
