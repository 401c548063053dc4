//! A swarm on loopback: one seed and N downloaders, every node's upload capped at the same U,
//! against the fluid lower bound of Kumar and Ross, T* = max(S/U, N·S/(U + N·U)); then the
//! same swarm without limits.
//!
//! `cargo bench -p shoal-node --bench swarm -- [SIZE_MIB] [U_MIB_PER_S] [N,N,..]`
//! (defaults 256, 16 and 8,16). Every node is a daemon (so its uploads obey the cap) registered
//! with one tracker; the downloaders' `shoal get` commands start together.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{daemon, shoal, write_file, Killed, BIN};

struct Outcome {
    finish: Vec<f64>,
    seed_upload: u64,
}

fn tracker(dir: &Path) -> (Killed, String) {
    use std::io::{BufRead, BufReader};
    let tracker_bin = Path::new(BIN).with_file_name("shoal-tracker");
    let mut child = Command::new(&tracker_bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it with cargo build --release -p shoal-tracker)",
                tracker_bin.display()
            )
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split_whitespace().nth(5).unwrap().trim_end_matches(',').to_string();
    (Killed(child), addr)
}

fn run(root: &Path, src: &Path, n: usize, limit: Option<&str>) -> Outcome {
    let dir = root.join(format!("n{n}-{}", limit.unwrap_or("unlimited").replace('/', "")));
    std::fs::create_dir_all(&dir).unwrap();
    let (_tracker, taddr) = tracker(&dir.join("tracker"));
    let mut args = vec!["--tracker", taddr.as_str()];
    if let Some(l) = limit {
        args.extend(["--upload-limit", l]);
    }
    let seed_dir = dir.join("seed");
    let (_seed, _) = daemon(&seed_dir, &args);
    let ticket = shoal(&seed_dir, &["add", src.to_str().unwrap()]).trim().to_string();
    let nodes: Vec<_> = (0..n).map(|i| daemon(&dir.join(format!("d{i}")), &args)).collect();
    // Let every daemon register and the seed announce before the clock starts.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t0 = Instant::now();
    let mut gets: Vec<_> = (0..n)
        .map(|i| {
            let out = dir.join(format!("out{i}.bin"));
            Command::new(BIN)
                .arg("--data-dir")
                .arg(dir.join(format!("d{i}")))
                .args(["get", &ticket, "-o"])
                .arg(&out)
                .arg("--json")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("err{i}.log"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut finish = vec![0.0; n];
    let mut left = n;
    while left > 0 {
        for (i, g) in gets.iter_mut().enumerate() {
            if finish[i] == 0.0 {
                if let Some(st) = g.try_wait().unwrap() {
                    if !st.success() {
                        let err = std::fs::read_to_string(dir.join(format!("err{i}.log")))
                            .unwrap_or_default();
                        let err: Vec<&str> =
                            err.lines().filter(|l| !l.starts_with("progress:")).collect();
                        panic!("downloader {i} failed: {err:?}");
                    }
                    finish[i] = t0.elapsed().as_secs_f64();
                    left -= 1;
                }
            }
        }
        assert!(t0.elapsed().as_secs() < 600, "swarm did not finish in 10 minutes");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status: serde_json::Value =
        serde_json::from_str(&shoal(&seed_dir, &["status", "--json"])).unwrap();
    for i in 0..n {
        let _ = std::fs::remove_file(dir.join(format!("out{i}.bin")));
    }
    drop(nodes);
    Outcome { finish, seed_upload: status["uploaded_bytes"].as_u64().unwrap() }
}

fn report(label: &str, n: usize, size: f64, u: Option<f64>, o: &Outcome) {
    let mut f = o.finish.clone();
    f.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let last = *f.last().unwrap();
    let mean = f.iter().sum::<f64>() / f.len() as f64;
    let p99 = f[((f.len() as f64 * 0.99).ceil() as usize).clamp(1, f.len()) - 1];
    let (bound, ratio) = match u {
        Some(u) => {
            let t = (size / u).max(n as f64 * size / (u + n as f64 * u));
            (format!("{t:.2} s"), format!("{:.2}", last / t))
        }
        None => ("-".into(), "-".into()),
    };
    println!(
        "| {label} | {n} | {last:.2} s | {bound} | {ratio} | {mean:.2} s | {p99:.2} s | {:.2} |",
        o.seed_upload as f64 / (size * 1024.0 * 1024.0)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mib: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(256);
    let u: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16.0);
    let ns: Vec<usize> = args
        .get(2)
        .map(|a| a.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![8, 16]);
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("file.bin");
    write_file(&src, mib);
    let limit = format!("{u}MiB/s");
    println!("swarm benchmark: S = {mib} MiB, U = {u} MiB/s per node, one seed");
    println!("| swarm | N | last finish | bound T* | ratio | mean | p99 | seed upload / S |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &ns {
        let o = run(root.path(), &src, n, Some(&limit));
        report("every upload capped at U", n, mib as f64, Some(u), &o);
        let o = run(root.path(), &src, n, None);
        report("no limits", n, mib as f64, None, &o);
    }
}
