//! Scenarios: a testnet with scheduled faults, then invariants.
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
//!
//! [[events]]
//! target = "node2"       # nodeN, seed, tracker, storageN
//! at = 1.5               # seconds after the fetches start, or:
//! # at_progress = 100    # when the fastest downloader holds this % of the pieces
//! restart_after = 1.0    # omit and it stays down
//!
//! [expect]
//! storage_complete = false
//! ```
//!
//! Invariants checked at the end: every honest node that stayed holds a byte-identical file
//! (so no finished file contains a piece that failed verification); every corrupter was
//! banned by each node it sent data to; storage holds the whole file where expected.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use shoal_node::config::Rate;

use crate::launch::{self, Proc};

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
    events: Vec<Event>,
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

/// A fetch in progress on a downloader.
struct Get {
    node: usize,
    child: Option<Child>,
    report: Option<serde_json::Value>,
}

/// Where processes run: on loopback, or each in its own namespace (kept across restarts).
struct Place {
    net: Option<crate::netns::Net>,
    slots: std::collections::HashMap<String, crate::netns::Slot>,
    rate: Option<u64>,
}

impl Place {
    fn slot(&mut self, name: &str, shaped: bool) -> anyhow::Result<Option<crate::netns::Slot>> {
        let Some(net) = self.net.as_mut() else { return Ok(None) };
        if let Some(s) = self.slots.get(name) {
            return Ok(Some(s.clone()));
        }
        let s = net.add(name, if shaped { self.rate } else { None })?;
        self.slots.insert(name.to_string(), s.clone());
        Ok(Some(s))
    }

    fn daemon(&mut self, name: &str, dir: &Path, args: &[String]) -> anyhow::Result<Proc> {
        let slot = self.slot(name, true)?;
        launch::daemon_in(name, dir, args, slot.as_ref())
    }

    /// The tracker, on `listen` when restarting (to keep its address).
    fn tracker(&mut self, dir: &Path, listen: Option<&str>) -> anyhow::Result<Proc> {
        match self.slot("tracker", false)? {
            Some(s) => {
                let l = listen.map_or_else(|| format!("{}:0", s.addr), str::to_string);
                launch::tracker_at(dir, &l, Some(&s.ns))
            }
            None => launch::tracker_at(dir, listen.unwrap_or("127.0.0.1:0"), None),
        }
    }
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
    let size = sc.file_size.parse::<Rate>()?.0;
    let dir = dir.unwrap_or_else(|| PathBuf::from("testnet-runs").join(&sc.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    println!("scenario {} in {}", sc.name, dir.display());

    let rate = sc.upload_limit.as_deref().map(|l| l.parse::<Rate>()).transpose()?.map(|r| r.0);
    // Declared before every process, so dropped after them.
    let mut place = Place {
        net: if netns { Some(crate::netns::Net::new()?) } else { None },
        slots: std::collections::HashMap::new(),
        rate,
    };
    let mut tracker = place.tracker(&dir.join("tracker"), None)?;
    let taddr = tracker.addr.clone();
    let mut common = vec!["--tracker".to_string(), taddr.clone()];
    if let Some(l) = &sc.upload_limit {
        common.extend(["--upload-limit".to_string(), l.parse::<Rate>()?.0.to_string()]);
    }
    let storage_args = {
        let mut a = common.clone();
        a.extend(["--role".to_string(), "storage".to_string()]);
        a
    };
    let mut stores: Vec<Option<Proc>> = (0..sc.storage)
        .map(|i| {
            place
                .daemon(&format!("storage{i}"), &dir.join(format!("storage{i}")), &storage_args)
                .map(Some)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut nodes: Vec<Option<Proc>> = (0..sc.nodes)
        .map(|i| {
            place.daemon(&format!("node{i}"), &dir.join(format!("node{i}")), &common).map(Some)
        })
        .collect::<anyhow::Result<_>>()?;
    let file = dir.join("file.bin");
    launch::generate(&file, size, 0xbad5eed)?;
    let file_str = file.to_str().context("path is not UTF-8")?.to_string();
    let seed_dir = dir.join("node0");
    let seed_ns = nodes[0].as_ref().and_then(|p| p.ns.clone());
    let ticket =
        launch::shoal_in(&seed_dir, &["add", &file_str], seed_ns.as_deref())?.trim().to_string();
    let mut evil_args = common.clone();
    evil_args.extend(["--danger-corrupt-uploads".to_string(), "1".to_string()]);
    let mut corrupters = Vec::new();
    for i in 0..sc.corrupters {
        let p = place.daemon(&format!("evil{i}"), &dir.join(format!("evil{i}")), &evil_args)?;
        launch::shoal_in(&p.dir, &["add", &file_str], p.ns.as_deref())?;
        corrupters.push(p);
    }
    let mut liar_args = common.clone();
    liar_args.push("--danger-lie-bitfield".to_string());
    let first_liar = nodes.len();
    for i in 0..sc.liars {
        nodes.push(Some(place.daemon(
            &format!("node{}", first_liar + i),
            &dir.join(format!("node{}", first_liar + i)),
            &liar_args,
        )?));
    }
    let shoal = launch::binary("shoal")?;
    let mut push = if sc.push {
        Some(
            launch::command(&shoal, seed_ns.as_deref())
                .arg("--data-dir")
                .arg(&seed_dir)
                .args(["push", &file_str])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        )
    } else {
        None
    };
    let t0 = Instant::now();
    let mut gets: Vec<Get> = (1..nodes.len())
        .map(|i| {
            Ok(Get {
                node: i,
                child: Some(launch::spawn_get(nodes[i].as_ref().expect("up"), &ticket)?),
                report: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut pending: Vec<(usize, bool)> = (0..sc.events.len()).map(|i| (i, false)).collect();
    let mut restarts: Vec<(Instant, String)> = Vec::new();
    let mut left: Vec<usize> = Vec::new(); // downloaders that left for good
    let deadline = t0 + Duration::from_secs(300);

    loop {
        // Fire due events.
        // Progress is asked of every node over HTTP: only when an event waits for it.
        let wants_progress =
            pending.iter().any(|&(i, fired)| !fired && sc.events[i].at_progress.is_some());
        let best = if wants_progress { best_progress(&nodes) } else { 0.0 };
        for (i, fired) in pending.iter_mut() {
            let e = &sc.events[*i];
            let due = e.at.is_some_and(|a| t0.elapsed().as_secs_f64() >= a)
                || e.at_progress.is_some_and(|p| best >= p);
            if *fired || !due {
                continue;
            }
            *fired = true;
            println!("t = {:.1} s: kill -9 {}", t0.elapsed().as_secs_f64(), e.target);
            kill(&e.target, &mut tracker, &mut stores, &mut nodes)?;
            if e.target == "seed" || e.target == "node0" {
                push = None; // the uploader is gone; its push died with it
            }
            match e.restart_after {
                Some(r) => {
                    restarts.push((Instant::now() + Duration::from_secs_f64(r), e.target.clone()))
                }
                None => {
                    if let Some(n) = node_index(&e.target) {
                        left.push(n);
                    }
                }
            }
        }
        // Restart what is due.
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = restarts.into_iter().partition(|(t, _)| *t <= now);
        restarts = later;
        for (_, target) in due {
            println!("t = {:.1} s: restart {target}", t0.elapsed().as_secs_f64());
            if target == "tracker" {
                tracker = place.tracker(&dir.join("tracker"), Some(&taddr))?;
            } else if let Some(i) =
                target.strip_prefix("storage").and_then(|n| n.parse::<usize>().ok())
            {
                stores[i] = Some(place.daemon(&target, &dir.join(&target), &storage_args)?);
            } else if let Some(n) = node_index(&target) {
                nodes[n] = Some(place.daemon(
                    &format!("node{n}"),
                    &dir.join(format!("node{n}")),
                    &common,
                )?);
                if let Some(g) = gets.iter_mut().find(|g| g.node == n && g.report.is_none()) {
                    g.child =
                        Some(launch::spawn_get(nodes[n].as_ref().expect("restarted"), &ticket)?);
                }
            }
        }
        // Collect finished fetches; a fetch whose node was killed is restarted with the node.
        for g in gets.iter_mut() {
            let Some(child) = g.child.as_mut() else { continue };
            if let Some(status) = child.try_wait()? {
                let mut out = String::new();
                child.stdout.take().expect("piped").read_to_string(&mut out)?;
                g.child = None;
                if status.success() {
                    g.report = serde_json::from_str(out.trim()).ok();
                } else if nodes[g.node].is_some()
                    && !restarts.iter().any(|(_, t)| node_index(t) == Some(g.node))
                {
                    // Failed while its node runs (its daemon was restarted under it): again.
                    g.child =
                        Some(launch::spawn_get(nodes[g.node].as_ref().expect("up"), &ticket)?);
                }
            }
        }
        let waiting = gets.iter().any(|g| g.report.is_none() && !left.contains(&g.node));
        if !waiting && restarts.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            println!("FAIL: the scenario did not finish within 5 minutes");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(push);

    // Invariants.
    let mut ok = true;
    let original = std::fs::read(&file)?;
    for g in gets.iter().filter(|g| !left.contains(&g.node) && g.node < first_liar) {
        let name = format!("node{}", g.node);
        let copy = std::fs::read(dir.join(&name).join("file.bin")).unwrap_or_default();
        let same = g.report.is_some() && copy == original;
        ok &= check(same, &format!("{name} stayed and holds a byte-identical file"));
    }
    for (i, evil) in corrupters.iter().enumerate() {
        for g in &gets {
            let Some(r) = &g.report else { continue };
            let sent = r["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["node_id"] == evil.node_id.as_str());
            if let Some(p) = sent.filter(|p| p["bytes"].as_u64().unwrap_or(0) > 0) {
                ok &= check(
                    p["banned"] == true,
                    &format!("evil{i} was banned by node{} it sent data to", g.node),
                );
            }
        }
    }
    if sc.expect.storage_complete {
        let complete = wait_storage_complete(&stores, Duration::from_secs(90));
        ok &= check(complete, "storage holds the whole file");
    }
    drop(corrupters);
    println!(
        "scenario {}: {}",
        sc.name,
        if ok { "all invariants hold" } else { "INVARIANTS BROKEN" }
    );
    Ok(ok)
}

fn check(ok: bool, what: &str) -> bool {
    println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
    ok
}

fn node_index(target: &str) -> Option<usize> {
    if target == "seed" {
        return Some(0);
    }
    target.strip_prefix("node")?.parse().ok()
}

fn kill(
    target: &str,
    tracker: &mut Proc,
    stores: &mut [Option<Proc>],
    nodes: &mut [Option<Proc>],
) -> anyhow::Result<()> {
    if target == "tracker" {
        let _ = tracker.child.kill();
        let _ = tracker.child.wait();
        return Ok(());
    }
    if let Some(i) = target.strip_prefix("storage").and_then(|n| n.parse::<usize>().ok()) {
        return match stores.get_mut(i) {
            Some(s) => {
                *s = None; // dropping kills it
                Ok(())
            }
            None => bail!("no {target} in this scenario"),
        };
    }
    match node_index(target).and_then(|n| nodes.get_mut(n)) {
        Some(n) => {
            *n = None;
            Ok(())
        }
        None => bail!("unknown event target {target:?}: use nodeN, seed, tracker or storageN"),
    }
}

/// The highest share of pieces any downloader holds, in percent.
fn best_progress(nodes: &[Option<Proc>]) -> f64 {
    nodes
        .iter()
        .skip(1)
        .flatten()
        .filter_map(launch::status)
        .filter_map(|s| {
            s.contents
                .first()
                .map(|c| 100.0 * f64::from(c.pieces_have) / f64::from(c.pieces_total.max(1)))
        })
        .fold(0.0, f64::max)
}

fn wait_storage_complete(stores: &[Option<Proc>], limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let done = stores.iter().flatten().any(|s| {
            launch::status(s)
                .and_then(|st| {
                    st.contents
                        .first()
                        .map(|c| c.pieces_total > 0 && c.pieces_have == c.pieces_total)
                })
                .unwrap_or(false)
        });
        if done {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
