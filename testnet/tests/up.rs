//! `shoal-testnet up` with the real binaries, at a small size.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-testnet");

/// Reads `child`'s stdout until a line contains `needle` (within 60 s) and returns the lines
/// so far; a thread keeps draining it afterwards, so the child never writes to a closed pipe.
fn wait_for_line(child: &mut std::process::Child, needle: &'static str) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push(line.clone());
            if !sent && line.contains(needle) {
                sent = true;
                let _ = tx.send(std::mem::take(&mut seen));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no line with {needle:?} within 60 s"))
}

fn shoal() -> std::path::PathBuf {
    let p = Path::new(BIN).with_file_name("shoal");
    assert!(p.exists(), "build the workspace binaries first (cargo build --bins)");
    p
}

#[test]
fn a_small_testnet_runs_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = Command::new(BIN)
        .args([
            "up",
            "--nodes",
            "3",
            "--storage",
            "1",
            "--file-size",
            "2MiB",
            "--upload-limit",
            "4MiB/s",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["downloaders"], 2);
    assert_eq!(report["finish"].as_array().unwrap().len(), 2);
    assert!(report["bound_s"].as_f64().unwrap() > 0.0);
    assert!(report["ratio_to_bound"].as_f64().unwrap() >= 1.0, "nothing beats the bound: {report}");
    // Every byte the two downloaders fetched was uploaded by someone: the seed, storage
    // (which the seed pushed into) or the other downloader.
    let up = &report["uploaded"];
    let total: u64 = ["seed", "storage", "nodes"].iter().map(|k| up[k].as_u64().unwrap()).sum();
    assert!(total >= 2 * 2 * 1024 * 1024, "two copies were uploaded in all: {report}");
    assert!(up["seed"].as_u64().unwrap() > 0, "the seed served: {report}");
    assert_eq!(report["bad_pieces"], 0);
    // CPU is measured, not assumed: some was spent moving the copies.
    let cpu = &report["cpu"];
    assert!(cpu["seconds"].as_f64().unwrap() > 0.0, "CPU measured: {report}");
    assert!(
        cpu["seconds_per_gib"].as_f64().unwrap() > cpu["seconds"].as_f64().unwrap(),
        "two copies of a few MiB are well under a GiB: {report}"
    );
    // Every downloader holds a byte-identical copy.
    let original = std::fs::read(dir.join("file.bin")).unwrap();
    for n in ["node1", "node2"] {
        assert_eq!(std::fs::read(dir.join(n).join("file.bin")).unwrap(), original, "{n}");
    }
    assert!(std::fs::read_to_string(dir.join("report.svg")).unwrap().contains("<svg"));
    assert_eq!(&std::fs::read(dir.join("report.png")).unwrap()[..4], b"\x89PNG");
    assert!(stdout.contains("fluid lower bound"), "{stdout}");
}

/// Runs `shoal-testnet up ARGS --dir DIR` to success; its report.json, testnet.json and stdout.
fn up_ok(args: &[&str], dir: &Path) -> (serde_json::Value, serde_json::Value, String) {
    let out = Command::new(BIN).arg("up").args(args).arg("--dir").arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap()
    };
    (read("report.json"), read("testnet.json"), stdout)
}

/// The regions of a report: name, downloaders, last finish and bound (`None`: no limit).
fn regions_of(report: &serde_json::Value) -> Vec<(String, u64, f64, Option<f64>)> {
    report["regions"]
        .as_array()
        .unwrap_or_else(|| panic!("a regions list: {report}"))
        .iter()
        .map(|r| {
            assert!(r.get("bound_s").is_some(), "every region has a bound_s key: {r}");
            (
                r["name"].as_str().unwrap().to_string(),
                r["downloaders"].as_u64().unwrap(),
                r["last_finish_s"].as_f64().unwrap(),
                r["bound_s"].as_f64(),
            )
        })
        .collect()
}

#[test]
fn two_regions_on_loopback_report_each_region() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let args = ["--nodes", "4", "--regions", "2", "--file-size", "2MiB", "--upload-limit", "none"];
    let (report, testnet, stdout) = up_ok(&args, &dir);
    // node0 (the seed) and node2 in r0, node1 and node3 in r1; storage0 in r0.
    let regions = regions_of(&report);
    assert_eq!(regions.len(), 2, "{report}");
    assert_eq!((regions[0].0.as_str(), regions[0].1), ("r0", 1), "{report}");
    assert_eq!((regions[1].0.as_str(), regions[1].1), ("r1", 2), "{report}");
    for (name, _, last, bound) in &regions {
        assert!(*last > 0.0, "{name} finished: {report}");
        // No upload limit and no border limit: nothing makes a bound finite.
        assert_eq!(*bound, None, "{name}: {report}");
    }
    assert!(report["cross_region_bytes"].is_u64(), "{report}");
    for f in report["finish"].as_array().unwrap() {
        let n: usize = f["name"].as_str().unwrap()["node".len()..].parse().unwrap();
        assert_eq!(f["region"], format!("r{}", n % 2), "{f}");
    }
    assert_eq!(testnet["storage"][0]["region"], "r0", "{testnet}");
    assert_eq!(testnet["nodes"][3]["region"], "r1", "{testnet}");
    let original = std::fs::read(dir.join("file.bin")).unwrap();
    for n in ["node1", "node2", "node3"] {
        assert_eq!(std::fs::read(dir.join(n).join("file.bin")).unwrap(), original, "{n}");
    }
    for want in ["per region", "  r0: 1 downloaders", "  r1: 2 downloaders", "bytes across"] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
    assert_eq!(&std::fs::read(dir.join("report.png")).unwrap()[..4], b"\x89PNG");

    // With an upload limit every region has a finite bound: F/U = 2 MiB / 8 MiB/s.
    let (report, _, _) =
        up_ok(&["--nodes", "3", "--regions", "2", "--file-size", "2MiB"], &tmp.path().join("b"));
    for (name, _, _, bound) in regions_of(&report) {
        assert_eq!(bound, Some(0.25), "{name}: {report}");
    }
}

#[test]
fn region_flags_that_cannot_hold_are_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--regions", "0"][..], "--regions"),
        (&["--nodes", "2", "--regions", "3"], "every region needs a node"),
        (&["--regions", "2", "--inter-region-limit", "4MiB/s"], "--netns"),
        (&["--ignore-regions"], "--regions 2 or more"),
    ] {
        let out = Command::new(BIN)
            .arg("up")
            .args(args)
            .arg("--dir")
            .arg(tmp.path().join("never"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
        assert!(!tmp.path().join("never").exists(), "{args:?} started nothing");
    }
}

#[test]
fn a_node_joins_a_kept_testnet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut up = Command::new(BIN)
        .args(["up", "--nodes", "2", "--storage", "0", "--file-size", "1MiB", "--keep", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stop = StopOnDrop(up.id());
    let lines = wait_for_line(&mut up, "press Ctrl-C");
    // The join instructions, pasted into a shell as printed (with our own paths): the daemon
    // in the background, a `get` at once (it waits for the daemon), and the daemon stopped.
    let me = tmp.path().join("me");
    let copy = tmp.path().join("copy.bin");
    let script: Vec<String> = lines
        .iter()
        .skip_while(|l| !l.contains("join it from another terminal"))
        .map(|l| l.trim())
        .filter(|l| l.starts_with("shoal ") || l.starts_with("kill "))
        .map(|l| {
            l.replace("/tmp/my-node", &me.display().to_string())
                .replace("/tmp/copy.bin", &copy.display().to_string())
        })
        .collect();
    assert_eq!(script.len(), 3, "daemon, get, kill: {lines:?}");
    assert!(script[0].ends_with(" &"), "the daemon goes to the background: {}", script[0]);
    let path = format!(
        "{}:{}",
        shoal().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let got = Command::new("bash")
        // The trap only makes sure no daemon outlives a failed run (it would hold the pipe).
        .args([
            "-e",
            "-c",
            &format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n{}", script.join("\n")),
        ])
        .env("PATH", path)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(dir.join("file.bin")).unwrap());
    // SIGTERM stops the testnet and everything it started.
    std::mem::forget(stop);
    Command::new("kill").args(["-TERM", &up.id().to_string()]).status().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while up.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the testnet did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to a testnet that a failed assertion left running (it stops what it started).
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.to_string()]).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Namespaces of the run of testnet process `pid` that still exist.
fn leftovers(pid: u32) -> usize {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("shoaltn-{pid}-");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(&prefix)).count()
}

#[test]
fn network_namespaces_with_shaped_links_and_nothing_left_behind() {
    if !is_root() {
        eprintln!("skipping: --netns needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let child = Command::new(BIN)
        .args([
            "up",
            "--netns",
            "--nodes",
            "3",
            "--storage",
            "1",
            "--file-size",
            "2MiB",
            "--upload-limit",
            "2MiB/s",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tn: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    assert!(
        tn["tracker"].as_str().unwrap().starts_with("10.199."),
        "processes have namespace addresses: {tn}"
    );
    let original = std::fs::read(dir.join("file.bin")).unwrap();
    for n in ["node1", "node2"] {
        assert_eq!(std::fs::read(dir.join(n).join("file.bin")).unwrap(), original, "{n}");
    }
    assert_eq!(leftovers(pid), 0, "namespaces removed on exit");
}

#[test]
fn regions_in_namespaces_behind_a_shaped_border() {
    if !is_root() {
        eprintln!("skipping: --netns needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let child = Command::new(BIN)
        .args(["up", "--netns", "--nodes", "4", "--storage", "2", "--regions", "2"])
        .args(["--inter-region-limit", "8MiB/s", "--upload-limit", "8MiB/s"])
        .args(["--file-size", "2MiB", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let tn: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    // Each region its own subnet; the tracker on the core behind the router.
    let addr = |v: &serde_json::Value| v["addr"].as_str().unwrap().to_string();
    assert!(tn["tracker"].as_str().unwrap().starts_with("10.198.255."), "{tn}");
    assert!(addr(&tn["nodes"][0]).starts_with("10.198.0."), "{tn}");
    assert!(addr(&tn["nodes"][1]).starts_with("10.198.1."), "{tn}");
    assert!(addr(&tn["storage"][1]).starts_with("10.198.1."), "{tn}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let regions = regions_of(&report);
    // r1 gets the file across the 8 MiB/s border once: F/L = 0.25 s (= F/U here).
    assert_eq!(regions[1].3, Some(0.25), "{report}");
    assert_eq!(report["inter_region_limit"], 8 << 20, "{report}");
    let original = std::fs::read(dir.join("file.bin")).unwrap();
    for n in ["node1", "node2", "node3"] {
        assert_eq!(std::fs::read(dir.join(n).join("file.bin")).unwrap(), original, "{n}");
    }
    assert_eq!(leftovers(pid), 0, "namespaces, switches and router removed on exit");
}

#[test]
fn sigterm_mid_run_stops_and_cleans_up() {
    if !is_root() {
        eprintln!("skipping: --netns needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut up = Command::new(BIN)
        .args([
            "up",
            "--netns",
            "--nodes",
            "3",
            "--storage",
            "0",
            "--file-size",
            "64MiB",
            "--upload-limit",
            "1MiB/s",
        ])
        .arg("--dir")
        .arg(tmp.path().join("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The live table shows: the run is under way.
    wait_for_line(&mut up, "downloaders finished");
    Command::new("kill").args(["-TERM", &up.id().to_string()]).status().unwrap();
    let status = up.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(leftovers(up.id()), 0, "namespaces removed after SIGTERM");
}

#[test]
fn a_crashed_runs_namespaces_and_processes_are_cleaned_up_by_the_next() {
    if !is_root() {
        eprintln!("skipping: --netns needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut crashed = Command::new(BIN)
        .args([
            "up",
            "--netns",
            "--nodes",
            "2",
            "--storage",
            "0",
            "--file-size",
            "1MiB",
            "--regions",
            "2",
            "--keep",
            "--dir",
        ])
        .arg(tmp.path().join("crashed"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_line(&mut crashed, "press Ctrl-C");
    let pid = crashed.id();
    crashed.kill().unwrap(); // SIGKILL: no cleanup of its own
    crashed.wait().unwrap();
    // Two regions: the processes' namespaces, two switches, the core's and the router.
    assert!(leftovers(pid) >= 6, "a crash leaves namespaces behind");
    // The next run removes them, and ends the processes that were running inside.
    let out = Command::new(BIN)
        .args(["up", "--netns", "--nodes", "2", "--storage", "0", "--file-size", "1MiB", "--dir"])
        .arg(tmp.path().join("next"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(leftovers(pid), 0, "the crashed run's namespaces are gone");
    let data_dir = tmp.path().join("crashed").join("node0");
    let still =
        Command::new("pgrep").args(["-f", &data_dir.display().to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&still.stdout).trim().is_empty(), "its processes are gone");
}

#[test]
fn bench_quick_prints_every_table() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--quick", "--dir"])
        .arg(tmp.path().join("bench"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in
        ["### Import", "shoal / BLAKE3 =", "### Transfer", "QUIC / HTTP =", "### Swarm", "| 4 |"]
    {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    assert!(!tmp.path().join("bench").exists(), "scratch removed");
}

#[test]
fn bench_tracker_refuses_impossible_numbers_before_it_starts_anything() {
    for args in [
        ["--seconds=-1"],
        ["--seconds=nan"],
        ["--nodes=0"],
        ["--content-size=0"],
        // A stream carries 1 to 256 requests; at least one in flight.
        ["--per-stream=0"],
        ["--per-stream=257"],
        ["--depth=0"],
    ] {
        let out = Command::new(BIN).arg("bench-tracker").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let flag = args[0].split('=').next().unwrap();
        assert!(
            err.starts_with("error: ") && err.lines().next().unwrap().contains(flag),
            "one line naming the flag, for {args:?}: {err}"
        );
    }
}

#[test]
fn bench_tracker_pipelined_and_compact_answers_every_lookup() {
    // A small state, two connections of two pipelined streams, compact answers: every lookup
    // answered as a lookup reply (the generator counts anything else as failed).
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["bench-tracker", "--nodes", "200", "--contents", "4", "--connections", "2"])
        .args(["--streams", "2", "--per-stream", "32", "--depth", "4", "--compact"])
        .args(["--seconds", "1", "--dir"])
        .arg(tmp.path().join("bt"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("32 per stream, depth 4, compact answers"), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("| ") && !l.starts_with("| lookups")).unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(cells[1].parse::<f64>().unwrap() > 0.0, "some lookups answered: {row}");
    assert_eq!(cells[6], "0", "none failed: {row}");
}
