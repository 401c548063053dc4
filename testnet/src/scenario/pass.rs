//! One pass of a scenario: start the testnet, fire events, run the adversaries, collect every
//! fetch, check the per-pass invariants.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use shoal_control::Rate;
use shoal_core::{ContentId, PeerAddr, Ticket};

use super::{check, Check, Scenario};
use crate::adversary::{self, Adversaries, Tally};
use crate::launch::{self, Proc, Role, Trust};
use crate::memory::Sampler;
use crate::regions::Regions;

/// What one pass measured.
#[derive(Debug, Serialize)]
pub(super) struct Pass {
    /// `baseline` (adversaries removed) or `scenario`.
    pub(super) kind: &'static str,
    /// Seconds from the start of the fetches to the last honest fetch's end (all honest
    /// fetches finished), if they did.
    pub(super) last_finish_s: Option<f64>,
    /// Peak resident memory of each honest process, in bytes.
    pub(super) peak_rss: BTreeMap<String, u64>,
    pub(super) adversaries: Vec<Tally>,
    pub(super) checks: Vec<Check>,
}

/// A fetch in progress on a downloader.
struct Get {
    node: usize,
    child: Option<Child>,
    report: Option<serde_json::Value>,
    finished_s: Option<f64>,
}

/// Where processes run: on loopback, or each in its own namespace (kept across restarts).
struct Place {
    net: Option<crate::netns::Net>,
    slots: HashMap<String, crate::netns::Slot>,
    rate: Option<u64>,
    regions: Regions,
}

impl Place {
    fn slot(&mut self, name: &str, shaped: bool) -> anyhow::Result<Option<crate::netns::Slot>> {
        let Some(net) = self.net.as_mut() else { return Ok(None) };
        if let Some(s) = self.slots.get(name) {
            return Ok(Some(s.clone()));
        }
        let s = net.add(name, self.regions.of(name), if shaped { self.rate } else { None })?;
        self.slots.insert(name.to_string(), s.clone());
        Ok(Some(s))
    }

    fn daemon(&mut self, name: &str, dir: &Path, args: &[String]) -> anyhow::Result<Proc> {
        let slot = self.slot(name, true)?;
        let mut args = args.to_vec();
        args.extend(self.regions.daemon_args(name));
        launch::daemon_in(name, dir, &args, slot.as_ref())
    }

    /// The tracker, on `listen` when restarting (to keep its address).
    fn tracker(
        &mut self,
        dir: &Path,
        listen: Option<&str>,
        extra: &[String],
    ) -> anyhow::Result<Proc> {
        let subnets = self.net.as_ref().and_then(crate::netns::Net::region_subnets);
        let mut extra = extra.to_vec();
        extra.extend(self.regions.tracker_args(subnets.as_deref()));
        let extra = &extra;
        match self.slot("tracker", false)? {
            Some(s) => {
                let l = listen.map_or_else(|| format!("{}:0", s.addr), str::to_string);
                launch::tracker_at(dir, &l, Some(&s.ns), extra)
            }
            None => launch::tracker_at(dir, listen.unwrap_or("127.0.0.1:0"), None, extra),
        }
    }
}

fn peer_of(p: &Proc) -> anyhow::Result<PeerAddr> {
    Ok(PeerAddr {
        node_id: Some(p.node_id.parse().with_context(|| format!("{}'s node id", p.name))?),
        addr: p.addr.parse().with_context(|| format!("{}'s address", p.name))?,
    })
}

/// Runs the scenario once in `dir`, with its adversaries if `adversarial`.
pub(super) fn run(
    sc: &Scenario,
    regions: &Regions,
    dir: &Path,
    netns: bool,
    adversarial: bool,
) -> anyhow::Result<Pass> {
    let kind = if adversarial { "scenario" } else { "baseline" };
    std::fs::create_dir_all(dir)?;
    let size = sc.file_size.parse::<Rate>()?.0;
    let rate = sc.upload_limit.as_deref().map(|l| l.parse::<Rate>()).transpose()?.map(|r| r.0);
    let adv = if adversarial { sc.adversaries.clone() } else { adversary::Config::default() };
    let sampler = Sampler::start();
    // Declared before every process, so dropped after them.
    let net = if netns { Some(crate::netns::Net::for_regions(regions)?) } else { None };
    let mut place = Place { net, slots: HashMap::new(), rate, regions: *regions };
    let trust = Trust {
        storage: (0..sc.storage)
            .map(|i| launch::node_id_in(&dir.join(format!("storage{i}"))))
            .collect::<anyhow::Result<_>>()?,
        users: (0..sc.nodes)
            .map(|i| launch::node_id_in(&dir.join(format!("node{i}"))))
            .collect::<anyhow::Result<_>>()?,
    };
    let admit = launch::trust_args(Role::Tracker, &trust);
    let mut tracker = place.tracker(&dir.join("tracker"), None, &admit)?;
    // Whether the tracker is down after a scheduled kill (and not restarted yet).
    let mut tracker_down = false;
    sampler.watch("tracker", tracker.child.id());
    let taddr = tracker.addr.clone();
    let mut common = vec!["--tracker".to_string(), taddr.clone()];
    if let Some(r) = rate {
        common.extend(["--upload-limit".to_string(), r.to_string()]);
    }
    let storage_args = {
        let mut a = common.clone();
        a.extend(["--role".to_string(), "storage".to_string()]);
        a.extend(launch::trust_args(Role::Storage, &trust));
        a
    };
    let mut stores: Vec<Option<Proc>> = Vec::new();
    for i in 0..sc.storage {
        let name = format!("storage{i}");
        let p = place.daemon(&name, &dir.join(&name), &storage_args)?;
        sampler.watch(&name, p.child.id());
        stores.push(Some(p));
    }
    let mut nodes: Vec<Option<Proc>> = Vec::new();
    for i in 0..sc.nodes {
        let name = format!("node{i}");
        let p = place.daemon(&name, &dir.join(&name), &common)?;
        sampler.watch(&name, p.child.id());
        nodes.push(Some(p));
    }
    // Storage the tracker was not told to admit, granting the same users as real storage: it
    // would take the seed's push, so only the tracker's admission keeps pushes away from it.
    let fakes: Vec<Proc> = (0..adv.fake_storage)
        .map(|i| {
            let name = format!("fake-storage{i}");
            place.daemon(&name, &dir.join(&name), &storage_args)
        })
        .collect::<anyhow::Result<_>>()?;
    let file = dir.join("file.bin");
    launch::generate(&file, size, 0xbad5eed)?;
    let file_str = file.to_str().context("path is not UTF-8")?.to_string();
    let seed_dir = dir.join("node0");
    let seed_ns = nodes[0].as_ref().and_then(|p| p.ns.clone());
    let ticket =
        launch::shoal_in(&seed_dir, &["add", &file_str], seed_ns.as_deref())?.trim().to_string();
    let content: ContentId = ticket.parse::<Ticket>().context("reading the seed's ticket")?.content;
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
    let mut tallies = Vec::new();
    let mut adversaries = None;
    if has_in_process(&adv) {
        let target = adversary::Target {
            tracker: taddr.parse().context("the tracker's address")?,
            honest: nodes[..sc.nodes]
                .iter()
                .flatten()
                .map(peer_of)
                .collect::<anyhow::Result<_>>()?,
            storage: stores.iter().flatten().map(peer_of).collect::<anyhow::Result<_>>()?,
            content,
        };
        let mut a = Adversaries::prepare(target)?;
        if adv.push_squatter {
            // Before the seed's push: the squatter races the uploader for the manifest.
            tallies.push(a.squat_manifest());
        }
        a.start(&adv);
        adversaries = Some(a);
    }
    let mut push = if sc.push {
        Some(launch::spawn_push(&seed_dir, seed_ns.as_deref(), &file)?)
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
                finished_s: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut pending: Vec<(usize, bool)> = (0..sc.events.len()).map(|i| (i, false)).collect();
    let mut restarts: Vec<(Instant, String)> = Vec::new();
    let mut left: Vec<usize> = Vec::new(); // downloaders that left for good
    let deadline = t0 + Duration::from_secs(300);
    let mut checks = Vec::new();
    let mut timed_out = false;

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
            tracker_down |= e.target == "tracker";
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
                tracker = place.tracker(&dir.join("tracker"), Some(&taddr), &admit)?;
                tracker_down = false;
                sampler.watch("tracker", tracker.child.id());
            } else if let Some(i) =
                target.strip_prefix("storage").and_then(|n| n.parse::<usize>().ok())
            {
                let p = place.daemon(&target, &dir.join(&target), &storage_args)?;
                sampler.watch(&target, p.child.id());
                stores[i] = Some(p);
            } else if let Some(n) = node_index(&target) {
                let name = format!("node{n}");
                let args = if n < first_liar { &common } else { &liar_args };
                let p = place.daemon(&name, &dir.join(&name), args)?;
                if n < first_liar {
                    sampler.watch(&name, p.child.id());
                }
                nodes[n] = Some(p);
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
                    g.finished_s = Some(t0.elapsed().as_secs_f64());
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
            checks.push(check(false, "the scenario finished within 5 minutes"));
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The honest fetches are over: the adversaries stop.
    if let Some(a) = adversaries {
        tallies.extend(a.finish());
        adversary::print(&tallies);
    }
    // Every honest process no scheduled event killed still runs.
    let tracker_up = (!tracker_down).then_some(&mut tracker);
    checks.extend(alive_checks(tracker_up, &mut stores, &mut nodes[..sc.nodes]));
    drop(push);

    // Invariants of this pass.
    let original = std::fs::read(&file)?;
    let honest: Vec<&Get> =
        gets.iter().filter(|g| !left.contains(&g.node) && g.node < first_liar).collect();
    for g in &honest {
        let name = format!("node{}", g.node);
        let copy = std::fs::read(dir.join(&name).join("file.bin")).unwrap_or_default();
        let same = g.report.is_some() && copy == original;
        checks.push(check(same, &format!("{name} stayed and holds a byte-identical file")));
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
                checks.push(check(
                    p["banned"] == true,
                    &format!("evil{i} was banned by node{} it sent data to", g.node),
                ));
            }
        }
    }
    if sc.expect.storage_complete && !timed_out {
        let complete = wait_storage_complete(&stores, content, Duration::from_secs(90));
        checks.push(check(complete, "storage holds the whole file"));
    }
    if !stores.is_empty() || !fakes.is_empty() {
        checks.extend(storage_checks(&stores, &fakes, content));
    }
    for t in &tallies {
        if t.aborted {
            checks.push(check(false, &format!("{} did not stop by itself", t.name)));
        }
        for b in &t.breaches {
            checks.push(check(false, &format!("{}: {b}", t.name)));
        }
    }
    let last_finish_s = (!timed_out && honest.iter().all(|g| g.finished_s.is_some()))
        .then(|| honest.iter().filter_map(|g| g.finished_s).fold(0.0, f64::max));
    drop(corrupters);
    drop(fakes);
    let peak_rss = sampler.finish();
    Ok(Pass { kind, last_finish_s, peak_rss, adversaries: tallies, checks })
}

/// Whether the adversaries include in-process tasks (not only launched fake storage).
fn has_in_process(adv: &adversary::Config) -> bool {
    let mut only_fakes = adv.clone();
    only_fakes.fake_storage = 0;
    only_fakes.any()
}

/// Storage holds only what granted users and valid tokens wrote: the scenario's content and
/// nothing else; unadmitted storage was given nothing. A status that cannot be read (the
/// process crashed or does not answer) fails the check.
fn storage_checks(stores: &[Option<Proc>], fakes: &[Proc], content: ContentId) -> Vec<Check> {
    let mut out = Vec::new();
    for s in stores.iter().flatten() {
        let Some(st) = launch::status(s) else {
            out.push(check(
                false,
                &format!("{} holds only the scenario's content (status could not be read)", s.name),
            ));
            continue;
        };
        let foreign = st.contents.iter().filter(|c| c.content_id != content.to_string()).count();
        out.push(check(
            foreign == 0,
            &format!(
                "{} holds only the scenario's content ({foreign} other{})",
                s.name,
                if foreign == 1 { "" } else { "s" }
            ),
        ));
    }
    for f in fakes {
        let what = format!("{} (not admitted) was given nothing", f.name);
        out.push(match launch::status(f) {
            Some(st) => {
                let held = st.contents.len();
                check(held == 0, &format!("{what} ({held} contents)"))
            }
            None => check(false, &format!("{what} (status could not be read)")),
        });
    }
    out
}

/// Whether each process given (those no scheduled event killed) still runs: one failed check
/// per process that exited, or one passing check if none did.
fn alive_checks(
    tracker: Option<&mut Proc>,
    stores: &mut [Option<Proc>],
    nodes: &mut [Option<Proc>],
) -> Vec<Check> {
    let procs =
        tracker.into_iter().chain(stores.iter_mut().flatten()).chain(nodes.iter_mut().flatten());
    let out: Vec<Check> = procs
        .filter_map(|p| match p.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                Some(check(false, &format!("{} exited during the run ({status})", p.name)))
            }
            Err(e) => {
                Some(check(false, &format!("{} could not be checked as running ({e})", p.name)))
            }
        })
        .collect();
    if out.is_empty() {
        return vec![check(true, "the tracker, storage and honest nodes still run")];
    }
    out
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

fn wait_storage_complete(stores: &[Option<Proc>], content: ContentId, limit: Duration) -> bool {
    let content = content.to_string();
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let done = stores.iter().flatten().any(|s| {
            launch::status(s)
                .and_then(|st| {
                    st.contents
                        .iter()
                        .find(|c| c.content_id == content)
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
