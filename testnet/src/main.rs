//! `shoal-testnet`: start a local Shoal testnet, let every node fetch a file, measure it.

mod adversary;
mod bench;
mod launch;
mod memory;
mod netns;
mod regions;
mod report;
mod scenario;
mod sim;
mod trackerload;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use shoal_control::{human_bytes, Rate};

use crate::launch::Proc;
use crate::report::{Finish, Report, Uploaded};

/// A local Shoal testnet: a tracker, storage nodes and nodes on loopback, one file shared by
/// one of them and fetched by all the others, measured against the fluid lower bound.
#[derive(Debug, Parser)]
#[command(name = "shoal-testnet", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a testnet, seed a generated file from one node, let every node fetch it, report.
    Up {
        /// Nodes (one of them seeds).
        #[arg(long, env = "SHOAL_TESTNET_NODES", default_value_t = 6)]
        nodes: usize,
        /// Storage nodes (the seed pushes the file into storage while it seeds).
        #[arg(long, env = "SHOAL_TESTNET_STORAGE", default_value_t = 1)]
        storage: usize,
        /// Size of the generated file, like 64MiB.
        #[arg(long, env = "SHOAL_TESTNET_FILE_SIZE", default_value = "64MiB")]
        file_size: Rate,
        /// Every node's upload cap, like 8MiB/s (`none` for no cap).
        #[arg(long, env = "SHOAL_TESTNET_UPLOAD_LIMIT", default_value = "8MiB/s")]
        upload_limit: String,
        /// Run directory (data dirs, logs, report); default testnet-runs/<time>.
        #[arg(long, env = "SHOAL_TESTNET_DIR")]
        dir: Option<PathBuf>,
        /// Stay up after the report, for others to join, until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Put each process in its own network namespace on a bridge, its upload shaped with
        /// `tc tbf` to the upload limit (needs root and iproute2).
        #[arg(long)]
        netns: bool,
        /// Spread the nodes and storage over this many regions, r0, r1, ... round robin (the
        /// seed in r0); with --netns each region is its own subnet behind a router.
        #[arg(long, env = "SHOAL_TESTNET_REGIONS", default_value_t = 1)]
        regions: usize,
        /// The rate each way between regions, like 4MiB/s, shaped with `tc tbf` (needs
        /// --netns; default `none`).
        #[arg(long, env = "SHOAL_TESTNET_INTER_REGION_LIMIT", default_value = "none")]
        inter_region_limit: String,
        /// Tell the tracker to ignore regions in lookups and hints (it still assigns them):
        /// the region-blind run to compare with.
        #[arg(long)]
        ignore_regions: bool,
    },
    /// Run the benchmark suite of BENCHMARKS.md and print its tables (long; --quick is small).
    Bench {
        /// Small sizes, one round: a smoke run in seconds, not figures to quote.
        #[arg(long)]
        quick: bool,
        /// Scratch directory (needs about twice the file size free); removed afterwards.
        #[arg(long, env = "SHOAL_TESTNET_DIR")]
        dir: Option<PathBuf>,
    },
    /// Run a scenario file (faults, then invariants); exits non-zero if an invariant breaks.
    Run {
        /// The scenario (TOML), e.g. testnet/scenarios/churn.toml.
        file: PathBuf,
        /// Run directory; default testnet-runs/<scenario name>.
        #[arg(long, env = "SHOAL_TESTNET_DIR")]
        dir: Option<PathBuf>,
        /// Each process in its own network namespace, uploads shaped with `tc tbf` (root).
        #[arg(long)]
        netns: bool,
    },
    /// Load one tracker holding many registered nodes with lookups: lookups/s and latency.
    BenchTracker {
        /// Registered nodes in the tracker's state.
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        /// Contents they hold between them.
        #[arg(long, default_value_t = 1_000)]
        contents: usize,
        /// Size of each content, like 256MiB (sets its piece count).
        #[arg(long, default_value = "256MiB")]
        content_size: Rate,
        /// QUIC connections of the load generator.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Request streams open at once per connection.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// Lookups sent on one stream (pipelined when above 1; at most 256).
        #[arg(long, default_value_t = 1)]
        per_stream: usize,
        /// Lookups of one stream unanswered at a time (with --per-stream above 1).
        #[arg(long, default_value_t = 8)]
        depth: usize,
        /// Ask for compact answers: peers without their bitfields.
        #[arg(long)]
        compact: bool,
        /// How long the load runs, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Peers asked for per lookup.
        #[arg(long, default_value_t = 32)]
        max_peers: u8,
        /// Scratch directory for the tracker's state; removed afterwards.
        #[arg(long, env = "SHOAL_TESTNET_DIR")]
        dir: Option<PathBuf>,
    },
    /// Simulate a large swarm with the nodes' real state machines (no processes, no sockets).
    Sim(sim::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Up {
            nodes,
            storage,
            file_size,
            upload_limit,
            dir,
            keep,
            netns,
            regions,
            inter_region_limit,
            ignore_regions,
        } => optional_rate(&inter_region_limit)
            .and_then(|l| regions::Regions::new(regions, l, ignore_regions, nodes, netns))
            .and_then(|regions| {
                up(
                    &Up { nodes, storage, size: file_size.0, dir, keep, netns, regions },
                    &upload_limit,
                )
            })
            .map(|()| true),
        Cmd::Run { file, dir, netns } => scenario::run(&file, dir, netns),
        Cmd::Sim(args) => sim::run(&args).map(|()| true),
        Cmd::Bench { quick, dir } => {
            let root = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()))
            });
            let r = bench::run(quick, &root);
            let _ = std::fs::remove_dir_all(&root);
            r.map(|()| true)
        }
        Cmd::BenchTracker {
            nodes,
            contents,
            content_size,
            connections,
            streams,
            per_stream,
            depth,
            compact,
            seconds,
            max_peers,
            dir,
        } => {
            let root = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("shoal-bench-tracker-{}", std::process::id()))
            });
            let load = trackerload::Load {
                nodes,
                contents,
                content_size: content_size.0,
                connections,
                streams,
                per_stream,
                depth,
                compact,
                seconds,
                max_peers,
            };
            let r = trackerload::run(&load, &root);
            let _ = std::fs::remove_dir_all(&root);
            r.map(|()| true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Row {
    name: String,
    have: u32,
    total: u32,
    peers: usize,
    down: f64,
    up: f64,
}

/// A rate flag that may be `none` (or empty): bytes per second, or no limit.
fn optional_rate(flag: &str) -> anyhow::Result<Option<u64>> {
    Ok(match flag {
        "none" | "" => None,
        l => Some(l.parse::<Rate>()?.0),
    })
}

/// What `shoal-testnet up` starts.
#[derive(Debug)]
struct Up {
    nodes: usize,
    storage: usize,
    size: u64,
    dir: Option<PathBuf>,
    keep: bool,
    netns: bool,
    regions: regions::Regions,
}

fn up(opts: &Up, limit: &str) -> anyhow::Result<()> {
    let Up { nodes, storage, size, keep, netns: use_netns, regions, .. } = *opts;
    if nodes < 2 {
        bail!("--nodes must be at least 2 (one seed and one downloader)");
    }
    let limit = optional_rate(limit)?;
    let dir = match opts.dir.clone() {
        Some(d) => d,
        None => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            PathBuf::from("testnet-runs").join(t.to_string())
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    println!("testnet in {}", dir.display());

    // Declared first, dropped last: namespaces go after the processes in them.
    let mut net = if use_netns { Some(netns::Net::for_regions(&regions)?) } else { None };
    let subnets = net.as_ref().and_then(netns::Net::region_subnets);
    let mut slot = |name: &str, shaped: bool| -> anyhow::Result<Option<netns::Slot>> {
        match net.as_mut() {
            Some(n) => {
                Ok(Some(n.add(name, regions.of(name), if shaped { limit } else { None })?))
            }
            None => Ok(None),
        }
    };
    let interrupted = interrupt_flag();
    // Keys first, so the tracker can admit the storage nodes and storage grant the nodes.
    let trust = launch::Trust {
        storage: (0..storage)
            .map(|i| launch::node_id_in(&dir.join(format!("storage{i}"))))
            .collect::<anyhow::Result<_>>()?,
        users: (0..nodes)
            .map(|i| launch::node_id_in(&dir.join(format!("node{i}"))))
            .collect::<anyhow::Result<_>>()?,
    };
    let mut admit = launch::trust_args(launch::Role::Tracker, &trust);
    admit.extend(regions.tracker_args(subnets.as_deref()));
    let tracker = match slot("tracker", false)? {
        Some(s) => {
            launch::tracker_at(&dir.join("tracker"), &format!("{}:0", s.addr), Some(&s.ns), &admit)?
        }
        None => launch::tracker(&dir.join("tracker"), &admit)?,
    };
    let mut common = vec!["--tracker".to_string(), tracker.addr.clone()];
    if let Some(l) = limit {
        common.extend(["--upload-limit".to_string(), l.to_string()]);
    }
    let mut stores = Vec::new();
    for i in 0..storage {
        let mut args = common.clone();
        args.extend(["--role".to_string(), "storage".to_string()]);
        args.extend(launch::trust_args(launch::Role::Storage, &trust));
        let name = format!("storage{i}");
        args.extend(regions.daemon_args(&name));
        let sl = slot(&name, true)?;
        stores.push(launch::daemon_in(&name, &dir.join(&name), &args, sl.as_ref())?);
    }
    let mut peers = Vec::new();
    for i in 0..nodes {
        let name = format!("node{i}");
        let sl = slot(&name, true)?;
        let mut args = common.clone();
        args.extend(regions.daemon_args(&name));
        peers.push(launch::daemon_in(&name, &dir.join(&name), &args, sl.as_ref())?);
    }
    let seed = &peers[0];
    let file = dir.join("file.bin");
    launch::generate(&file, size, 0x5eed)?;
    let ticket = launch::shoal_in(
        &seed.dir,
        &["add", file.to_str().context("path is not UTF-8")?],
        seed.ns.as_deref(),
    )?
    .trim()
    .to_string();
    write_testnet_json(&dir, &tracker, &stores, &peers, &ticket, &regions)?;
    println!(
        "tracker {}, {} storage, {} nodes; {} seeded by node0",
        tracker.addr,
        storage,
        nodes,
        human_bytes(size as f64)
    );
    if !regions.is_single() {
        println!("{}", regions.describe());
    }

    let _push = if storage > 0 {
        Some(launch::spawn_push(&seed.dir, seed.ns.as_deref(), &file)?)
    } else {
        None
    };
    // CPU is counted from here: the tracker, storage and every node (the `shoal get` clients
    // only relay progress; the daemons do the work).
    let cpu_now = || -> f64 {
        std::iter::once(&tracker)
            .chain(&stores)
            .chain(&peers)
            .filter_map(|p| memory::cpu_seconds(Some(p.child.id())))
            .sum()
    };
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let gets: Vec<(usize, std::process::Child)> = (1..nodes)
        .map(|i| Ok((i, launch::spawn_get(&peers[i], &ticket)?)))
        .collect::<anyhow::Result<_>>()?;
    let ended = launch::watch_gets(gets, t0);
    let mut finish: Vec<Finish> = Vec::new();
    let mut last_counters: HashMap<String, (u64, u64, Instant)> = HashMap::new();
    let tty = std::io::stdout().is_terminal();
    let mut last_print = Instant::now() - Duration::from_secs(10);
    while finish.len() < nodes - 1 {
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted; the testnet was stopped and cleaned up");
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("the testnet did not finish within 30 minutes");
        }
        match ended.recv_timeout(Duration::from_millis(50)) {
            Ok(e) => {
                let n = e.node;
                if !e.ok {
                    bail!(
                        "node{n} failed to fetch (see {})",
                        peers[n].dir.join("log.txt").display()
                    );
                }
                let v: serde_json::Value =
                    serde_json::from_str(e.out.trim()).context("reading a fetch report")?;
                finish.push(Finish {
                    region: regions.of(&peers[n].name).filter(|_| !regions.is_single()),
                    name: peers[n].name.clone(),
                    node_id: peers[n].node_id.clone(),
                    seconds: e.at.as_secs_f64(),
                    bad_pieces: v["bad_pieces"].as_u64().unwrap_or(0),
                    uploaded_bytes: 0,
                });
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("lost track of the fetches");
            }
        }
        let every = if tty { Duration::from_millis(500) } else { Duration::from_secs(2) };
        if last_print.elapsed() >= every {
            last_print = Instant::now();
            let rows = table(stores.iter().chain(&peers), &mut last_counters);
            print_table(&rows, t0.elapsed(), finish.len(), nodes - 1, tty);
        }
    }

    let cpu = cpu_now() - cpu0;
    // Each node's own counters.
    let status = |p: &Proc| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&launch::shoal_in(
            &p.dir,
            &["status", "--json"],
            p.ns.as_deref(),
        )?)?)
    };
    // Piece bytes that crossed between regions: each receiver's own count, summed.
    let (mut cross_region_bytes, mut cross_region_wasted_bytes) = (0, 0);
    let mut counters = |p: &Proc| -> anyhow::Result<serde_json::Value> {
        let st = status(p)?;
        cross_region_bytes += st["cross_region_bytes"].as_u64().unwrap_or(0);
        cross_region_wasted_bytes += st["cross_region_wasted_bytes"].as_u64().unwrap_or(0);
        Ok(st)
    };
    let seed_status = counters(seed)?;
    let mut uploaded = Uploaded {
        seed: seed_status["uploaded_bytes"].as_u64().unwrap_or(0),
        seed_pushed: seed_status["pushed_bytes"].as_u64().unwrap_or(0),
        ..Uploaded::default()
    };
    for f in &mut finish {
        let p = peers.iter().find(|p| p.name == f.name).expect("known node");
        f.uploaded_bytes = counters(p)?["uploaded_bytes"].as_u64().unwrap_or(0);
        uploaded.nodes += f.uploaded_bytes;
    }
    let mut storage_pieces = None;
    for s in &stores {
        let st = counters(s)?;
        uploaded.storage += st["uploaded_bytes"].as_u64().unwrap_or(0);
        if let Some(c) = st["contents"].as_array().and_then(|a| a.first()) {
            storage_pieces = Some((
                c["pieces_have"].as_u64().unwrap_or(0),
                c["pieces_total"].as_u64().unwrap_or(0),
            ));
        }
    }
    let mut report = Report::new(size, limit, storage, finish, uploaded, storage_pieces);
    report.cpu = report::Cpu::new(cpu, nodes - 1, size);
    report.cross_region_bytes = cross_region_bytes;
    report.cross_region_wasted_bytes = cross_region_wasted_bytes;
    let into_regions = net.as_ref().and_then(netns::Net::bytes_into_regions);
    report.border_wire_bytes = into_regions.as_ref().map(|b| b.iter().sum());
    report.set_regions(&regions);
    for (figures, bytes) in report.regions.iter_mut().zip(into_regions.unwrap_or_default()) {
        figures.wire_bytes_in = Some(bytes);
    }
    let note = report.write(&dir)?;
    println!("\n{}", report.summary());
    println!("report: {}", dir.join("report.json").display());
    match note {
        Some(n) => println!("{n}"),
        None => println!("plot: {} and report.png", dir.join("report.svg").display()),
    }
    if keep {
        println!("\nthe testnet stays up; join it from another terminal:");
        // The daemon goes to the background; `get` waits for it to start, then fetches
        // through it. Any free port: several nodes may join from this machine.
        println!(
            "  shoal --data-dir /tmp/my-node daemon --testnet {} --listen 0.0.0.0:0 &",
            dir.display()
        );
        println!("  shoal --data-dir /tmp/my-node get {ticket} -o /tmp/copy.bin");
        println!("  kill $!");
        if use_netns && !regions.is_single() {
            println!(
                "  (regions in namespaces are closed to the host's own network: run these inside \
                 a namespace of the run, `ip netns exec shoaltn-{}-node0 ...`)",
                std::process::id()
            );
        }
        println!("press Ctrl-C to stop it");
        wait_for_signal()?;
    }
    drop(_push);
    Ok(())
}

fn write_testnet_json(
    dir: &Path,
    tracker: &Proc,
    stores: &[Proc],
    nodes: &[Proc],
    ticket: &str,
    regions: &regions::Regions,
) -> anyhow::Result<()> {
    let entry = |p: &Proc| {
        let mut e = serde_json::json!({ "name": p.name, "node_id": p.node_id, "addr": p.addr, "data_dir": p.dir });
        if let Some(r) = regions.of(&p.name).filter(|_| !regions.is_single()) {
            e["region"] = r.to_string().into();
        }
        e
    };
    let v = serde_json::json!({
        "tracker": tracker.addr,
        "tracker_node_id": tracker.node_id,
        "storage": stores.iter().map(entry).collect::<Vec<_>>(),
        "nodes": nodes.iter().map(entry).collect::<Vec<_>>(),
        "ticket": ticket,
    });
    std::fs::write(dir.join("testnet.json"), serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

/// Set by Ctrl-C or SIGTERM, so a run stops and cleans up (processes, namespaces).
fn interrupt_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        if wait_for_signal().is_ok() {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    flag
}

fn row(
    name: &str,
    s: &shoal_control::Status,
    last: &mut HashMap<String, (u64, u64, Instant)>,
) -> Row {
    let content = s.contents.first();
    let now = Instant::now();
    let (down0, up0, t) =
        last.get(name).copied().unwrap_or((s.downloaded_bytes, s.uploaded_bytes, now));
    let secs = now.duration_since(t).as_secs_f64().max(1e-3);
    last.insert(name.to_string(), (s.downloaded_bytes, s.uploaded_bytes, now));
    Row {
        name: name.to_string(),
        have: content.map_or(0, |c| c.pieces_have),
        total: content.map_or(0, |c| c.pieces_total),
        peers: content.map_or(0, |c| c.peers),
        down: s.downloaded_bytes.saturating_sub(down0) as f64 / secs,
        up: s.uploaded_bytes.saturating_sub(up0) as f64 / secs,
    }
}

/// One row per process, from its own counters.
fn table<'a>(
    procs: impl Iterator<Item = &'a Proc>,
    last: &mut HashMap<String, (u64, u64, Instant)>,
) -> Vec<Row> {
    procs.filter_map(|p| Some(row(&p.name, &launch::status(p)?, last))).collect()
}

fn print_table(rows: &[Row], elapsed: Duration, done: usize, of: usize, tty: bool) {
    if tty {
        print!("\x1b[H\x1b[2J");
    }
    println!("t = {:.1} s, {done}/{of} downloaders finished", elapsed.as_secs_f64());
    println!(
        "{:<10} {:>9} {:>7} {:>12} {:>12} {:>6}",
        "node", "pieces", "done", "down", "up", "peers"
    );
    for r in rows {
        let pct = if r.total == 0 { 0.0 } else { 100.0 * f64::from(r.have) / f64::from(r.total) };
        println!(
            "{:<10} {:>9} {:>6.1}% {:>10}/s {:>10}/s {:>6}",
            r.name,
            format!("{}/{}", r.have, r.total),
            pct,
            human_bytes(r.down),
            human_bytes(r.up),
            r.peers
        );
    }
}

fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}
