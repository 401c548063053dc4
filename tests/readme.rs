//! README snippets, run as pasted. A ```sh block that follows a `<!-- tested: NAME -->` line
//! in README.md is run by `bash -euo pipefail` from the repository root, with two changes a
//! reader would not notice: its `cargo build` lines are skipped (the suite built the binaries,
//! whose directory stands in for `$PWD/target/release`), and `/tmp/` becomes a fresh
//! directory of the test's, so runs never see each other's files. The snippets use fixed
//! ports, as people paste them: they run one at a time (the `readme` test group of
//! `.config/nextest.toml`). Whatever a snippet leaves running is ended with its process group.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::bin;

/// The body of the block marked `<!-- tested: NAME -->`.
fn snippet(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("reading README.md");
    let marker = format!("<!-- tested: {name} -->");
    let at = readme.find(&marker).unwrap_or_else(|| panic!("README.md has no {marker}"));
    let rest = &readme[at + marker.len()..];
    let start = rest.find("```sh\n").expect("a ```sh block after the marker") + "```sh\n".len();
    let len = rest[start..].find("\n```").expect("the block ends");
    rest[start..start + len].to_string()
}

/// A snippet's line as the suite runs it: `cargo build ..` was done by the suite (what follows
/// its `&&` still runs), and `cargo nextest run` is the suite itself.
fn as_run(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("cargo build") {
        t.split_once("&& ").map_or(": built by the suite", |(_, rest)| rest)
    } else if t.starts_with("cargo nextest run") {
        ": this is the suite"
    } else {
        line
    }
}

/// Runs the snippet NAME and returns what it printed (stdout and stderr). Panics with the
/// output if it fails or runs past `timeout`.
pub fn run_snippet(name: &str, timeout: Duration) -> String {
    let tmp = tempfile::tempdir().expect("temp dir");
    let bin_dir = Path::new(bin()).parent().expect("binary dir").display().to_string();
    let text = snippet(name);
    let body: Vec<&str> = text.lines().map(as_run).collect();
    let script = format!("export PATH=\"{bin_dir}:$PATH\"\n{}\n", body.join("\n"))
        .replace("$PWD/target/release", &bin_dir)
        .replace("target/release/", &format!("{bin_dir}/"))
        .replace("/tmp/", &format!("{}/", tmp.path().display()));
    let log = tmp.path().join("snippet.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_remove("SHOAL_DATA_DIR")
        .env("SHOAL_LOG", "warn")
        // `shoal-testnet up` keeps its run under the repository by default.
        .env("SHOAL_TESTNET_DIR", tmp.path().join("testnet-run"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("starting bash");
    let pgid = child.id();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for bash") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the snippet left running (a daemon it never killed, after a failure).
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
    let _ = child.wait();
    let mut printed = String::new();
    std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut printed)).expect("log");
    match status {
        Some(s) if s.success() => printed,
        Some(s) => panic!("README snippet {name} failed ({s}):\n{script}\n--- output:\n{printed}"),
        None => {
            panic!("README snippet {name} ran past {timeout:?}:\n{script}\n--- output:\n{printed}")
        }
    }
}

#[test]
fn quickstart_as_pasted() {
    let out = run_snippet("quickstart", Duration::from_secs(120));
    assert!(out.contains("identical"), "the copy differs:\n{out}");
}

#[test]
fn offline_download_as_pasted() {
    let out = run_snippet("offline", Duration::from_secs(120));
    assert!(out.contains("identical"), "the copy differs:\n{out}");
    assert!(out.contains("permanent"), "the space does not list the entry:\n{out}");
}

#[test]
fn swarm_in_four_commands_as_pasted() {
    let out = run_snippet("swarm", Duration::from_secs(180));
    assert!(out.contains("identical"), "a copy differs:\n{out}");
}

#[test]
fn operator_walkthrough_as_pasted() {
    let out = run_snippet("operator", Duration::from_secs(180));
    assert!(out.contains("admit-storage = ["), "--print-config shows no admitted storage:\n{out}");
    assert!(out.contains("identical"), "the copy differs:\n{out}");
    let nodes = out.lines().find_map(|l| l.strip_prefix("shoal_tracker_nodes "));
    assert_eq!(nodes.map(str::trim), Some("3"), "the tracker does not count 3 nodes:\n{out}");
    let swarms = out.lines().find_map(|l| l.strip_prefix("shoal_tracker_swarms "));
    assert_eq!(swarms.map(str::trim), Some("1"), "the tracker does not count 1 swarm:\n{out}");
    assert!(out.contains("nodes 3 swarms 1"), "the admin API disagrees:\n{out}");
    // Storage verified every pushed piece before keeping it.
    let verified = out.lines().find_map(|l| l.strip_prefix("shoal_pieces_verified_total "));
    let verified: u64 = verified.and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    assert!(verified > 0, "storage counts no verified piece:\n{out}");
}

#[test]
fn tracker_replicas_as_pasted() {
    if !crate::support::redis_installed() {
        return;
    }
    let out = run_snippet("replicas", Duration::from_secs(180));
    assert!(out.contains("identical"), "the copy differs:\n{out}");
}

#[test]
fn setup_runs_the_main_job_as_pasted() {
    let out = run_snippet("setup", Duration::from_secs(240));
    assert!(out.contains("last finish / T*"), "no testnet report:\n{out}");
    assert!(out.contains("bad pieces detected: 0"), "the report shows bad pieces:\n{out}");
}

#[test]
fn config_check_as_pasted() {
    let out = run_snippet("check-config", Duration::from_secs(60));
    assert!(out.contains("data-dir = \"/var/lib/shoal-tracker\""), "tracker config:\n{out}");
    assert!(out.contains("role = \"storage\""), "storage config:\n{out}");
}

#[test]
fn regions_as_pasted() {
    let out = run_snippet("regions", Duration::from_secs(60));
    assert!(out.contains("\"region\":\"lo\""), "the node is not placed in lo:\n{out}");
}

#[test]
fn metrics_and_admin_api_as_pasted() {
    let out = run_snippet("metrics", Duration::from_secs(60));
    assert!(out.contains("shoal_tracker_nodes 0"), "no node gauge:\n{out}");
    assert!(out.contains("\"swarms\":[]"), "no swarm page:\n{out}");
}
