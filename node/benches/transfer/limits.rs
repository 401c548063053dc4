//! `cargo bench -p shoal-node --bench transfer -- limits [SECONDS] [RATES_MIB,..]`: the rate
//! each limit delivers against the rate set (defaults: 3 s of transfer per row, rates 1, 4, 16,
//! 64 and 256 MiB/s), on loopback with the release binaries:
//! - `shoal get --download-limit R` (standalone, one seed);
//! - a daemon started with `--download-limit R`, fetching through it;
//! - a seed daemon started with `--upload-limit R`, serving two fetchers at once.
//!
//! A row's rate is the bytes the fetch reports received over the seconds it reports (each
//! fetch's whole run: connect, manifest and every piece), summed over the concurrent fetchers
//! and divided by the longest of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::common::{daemon, shoal, write_file, BIN};

struct Row {
    mode: &'static str,
    set: u64,
    achieved: f64,
}

/// Starts `shoal get --json` (the output file removed first).
fn get(data_dir: &Path, ticket: &str, out: &Path, extra: &[&str]) -> std::process::Child {
    let _ = std::fs::remove_file(out);
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["get", ticket, "-o"])
        .arg(out)
        .arg("--json")
        .args(extra)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for a fetch; returns (downloaded bytes, seconds) from its report.
fn report(child: std::process::Child) -> (u64, f64) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "shoal get failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["downloaded_bytes"].as_u64().unwrap(), v["seconds"].as_f64().unwrap())
}

/// Aggregate rate of fetches started together.
fn rate(results: &[(u64, f64)]) -> f64 {
    let bytes: u64 = results.iter().map(|r| r.0).sum();
    let secs = results.iter().map(|r| r.1).fold(0.0, f64::max);
    bytes as f64 / secs
}

pub(crate) fn run(args: &[String]) {
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rates: Vec<u64> = args
        .get(1)
        .map(|a| a.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64, 256]);
    let tmp = tempfile::tempdir().unwrap();
    let (seed, _) = daemon(&tmp.path().join("seed"), &[]);
    let seed_dir = tmp.path().join("seed");
    let mut rows = Vec::new();
    for &r in &rates {
        // Enough bytes for `secs` at the set rate (at least 4 MiB).
        let mib = ((r as f64 * secs).ceil() as u64).max(4);
        let src: PathBuf = tmp.path().join(format!("file-{r}.bin"));
        write_file(&src, mib);
        let ticket = shoal(&seed_dir, &["add", src.to_str().unwrap()]).trim().to_string();
        let set = r << 20;
        let limit = format!("{r}MiB/s");
        let out = tmp.path().join("out.bin");
        let out2 = tmp.path().join("out2.bin");

        let f =
            get(&tmp.path().join(format!("f-{r}")), &ticket, &out, &["--download-limit", &limit]);
        rows.push(Row { mode: "shoal get --download-limit", set, achieved: rate(&[report(f)]) });

        let dl_dir = tmp.path().join(format!("d-{r}"));
        let (dl, _) = daemon(&dl_dir, &["--download-limit", &limit]);
        let f = get(&dl_dir, &ticket, &out, &[]);
        rows.push(Row { mode: "daemon --download-limit", set, achieved: rate(&[report(f)]) });
        drop(dl);

        let up_dir = tmp.path().join(format!("u-{r}"));
        let (up, _) = daemon(&up_dir, &["--upload-limit", &limit]);
        let up_ticket = shoal(&up_dir, &["add", src.to_str().unwrap()]).trim().to_string();
        let a = get(&tmp.path().join(format!("ua-{r}")), &up_ticket, &out, &[]);
        let b = get(&tmp.path().join(format!("ub-{r}")), &up_ticket, &out2, &[]);
        let both = [report(a), report(b)];
        rows.push(Row { mode: "daemon --upload-limit, 2 fetchers", set, achieved: rate(&both) });
        drop(up);
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&out2);
    }
    drop(seed);
    println!("rate limits on loopback: about {secs} s of transfer per row");
    println!("{:<36} {:>10} {:>12} {:>8}", "limit", "set MiB/s", "got MiB/s", "got/set");
    for r in rows {
        let mib = |b: f64| b / f64::from(1 << 20);
        println!(
            "{:<36} {:>10.0} {:>12.2} {:>8.3}",
            r.mode,
            mib(r.set as f64),
            mib(r.achieved),
            r.achieved / r.set as f64
        );
    }
}
