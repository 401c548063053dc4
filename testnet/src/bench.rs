//! `shoal-testnet bench`: the benchmark suite of BENCHMARKS.md in one command, printing its
//! tables. Every comparison is measured in the same run, best of the rounds.
//!
//! - import: `shoal add` of a file through a daemon against BLAKE3 of the same file with all
//!   cores (`update_mmap_rayon`);
//! - transfer: a standalone `shoal get` from one seeder against `curl` from nginx (or
//!   `python3 -m http.server`), and curl plus an fsync of its file;
//! - swarm: one seed and N downloaders, every upload capped at U, against the fluid bound.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::launch::{self, Proc};

struct Sizes {
    file_mib: u64,
    swarm_mib: u64,
    rate_mib: u64,
    swarm_nodes: Vec<usize>,
    rounds: usize,
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / (1024.0 * 1024.0)
}

fn timed(mut cmd: Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the suite in a scratch directory under `root`.
pub(crate) fn run(quick: bool, root: &Path) -> anyhow::Result<()> {
    let sizes = if quick {
        Sizes { file_mib: 32, swarm_mib: 16, rate_mib: 8, swarm_nodes: vec![4], rounds: 1 }
    } else {
        Sizes { file_mib: 1024, swarm_mib: 256, rate_mib: 8, swarm_nodes: vec![8, 16], rounds: 3 }
    };
    std::fs::create_dir_all(root)?;
    let share = root.join("share");
    std::fs::create_dir_all(&share)?;
    let file = share.join("file.bin");
    let size = sizes.file_mib << 20;
    launch::generate(&file, size, 0xbe4c)?;
    println!("## shoal-testnet bench{}\n", if quick { " --quick" } else { "" });

    // Import.
    let seed = launch::daemon("seed", &root.join("seed"), &[])?;
    let file_s = file.to_str().context("path is not UTF-8")?;
    let mut add = Vec::new();
    let mut hash = Vec::new();
    for _ in 0..sizes.rounds {
        let t = Instant::now();
        let mut h = blake3::Hasher::new();
        h.update_mmap_rayon(&file)?;
        std::hint::black_box(h.finalize());
        hash.push(t.elapsed().as_secs_f64());
        let mut c = Command::new(launch::binary("shoal")?);
        c.arg("--data-dir").arg(&seed.dir).args(["add", file_s]);
        add.push(timed(c)?);
    }
    let ticket = launch::shoal(&seed.dir, &["add", file_s])?.trim().to_string();
    println!("### Import ({} MiB)\n", sizes.file_mib);
    println!("| variant | time | rate |\n|---|---|---|");
    println!(
        "| BLAKE3, all cores (mmap + rayon) | {:.3} s | {:.0} MiB/s |",
        best(&hash),
        mib_s(size, best(&hash))
    );
    println!(
        "| `shoal add` through the daemon | {:.3} s | {:.0} MiB/s |",
        best(&add),
        mib_s(size, best(&add))
    );
    println!("\nshoal / BLAKE3 = {:.2}\n", best(&hash) / best(&add));

    // Transfer.
    let (_http, port, http_name) = http_server(&share, root)?;
    let out = root.join("out.bin");
    let (mut quic, mut http, mut durable) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..sizes.rounds {
        let _ = std::fs::remove_file(&out);
        let mut c = Command::new(launch::binary("shoal")?);
        c.arg("--data-dir")
            .arg(root.join(format!("fetch{r}")))
            .args(["get", &ticket, "-o"])
            .arg(&out);
        quic.push(timed(c)?);
        let _ = std::fs::remove_file(&out);
        let mut c = Command::new("curl");
        c.args(["-sf", "-o"]).arg(&out).arg(format!("http://127.0.0.1:{port}/file.bin"));
        let t = timed(c)?;
        let mut s = Command::new("sync");
        s.arg(&out);
        let ts = timed(s)?;
        http.push(t);
        durable.push(t + ts);
        let _ = std::fs::remove_file(&out);
    }
    println!("### Transfer, one seeder to one fetcher over loopback ({} MiB)\n", sizes.file_mib);
    println!("| variant | time | rate |\n|---|---|---|");
    println!(
        "| `shoal get` (QUIC) | {:.2} s | {:.0} MiB/s |",
        best(&quic),
        mib_s(size, best(&quic))
    );
    println!(
        "| curl from {http_name} | {:.2} s | {:.0} MiB/s |",
        best(&http),
        mib_s(size, best(&http))
    );
    println!(
        "| curl + fsync of the file | {:.2} s | {:.0} MiB/s |",
        best(&durable),
        mib_s(size, best(&durable))
    );
    println!(
        "\nQUIC / HTTP = {:.2}; QUIC / (HTTP + fsync) = {:.2}\n",
        best(&http) / best(&quic),
        best(&durable) / best(&quic)
    );
    drop(seed);

    // Swarm.
    let swarm_file = share.join("swarm.bin");
    let s_bytes = sizes.swarm_mib << 20;
    launch::generate(&swarm_file, s_bytes, 0x5a4e)?;
    println!(
        "### Swarm: one seed, N downloaders, every upload capped at U = {} MiB/s ({} MiB)\n",
        sizes.rate_mib, sizes.swarm_mib
    );
    println!("| N | last finish | bound T* | ratio | mean | seed upload / S |\n|---|---|---|---|---|---|");
    for &n in &sizes.swarm_nodes {
        let (last, mean, seed_up) = swarm(root, &swarm_file, n, sizes.rate_mib << 20)?;
        let (s, u) = (s_bytes as f64, (sizes.rate_mib << 20) as f64);
        let bound = (s / u).max(n as f64 * s / (u + n as f64 * u));
        println!(
            "| {n} | {last:.2} s | {bound:.2} s | {:.2} | {mean:.2} s | {:.2} |",
            last / bound,
            seed_up as f64 / s
        );
    }
    Ok(())
}

fn swarm(root: &Path, file: &Path, n: usize, rate: u64) -> anyhow::Result<(f64, f64, u64)> {
    let dir = root.join(format!("swarm{n}"));
    let tracker = launch::tracker(&dir.join("tracker"), &[])?;
    let args = vec![
        "--tracker".to_string(),
        tracker.addr.clone(),
        "--upload-limit".into(),
        rate.to_string(),
    ];
    let seed = launch::daemon("seed", &dir.join("seed"), &args)?;
    let ticket = launch::shoal(&seed.dir, &["add", file.to_str().context("path is not UTF-8")?])?
        .trim()
        .to_string();
    let nodes: Vec<Proc> = (0..n)
        .map(|i| launch::daemon(&format!("d{i}"), &dir.join(format!("d{i}")), &args))
        .collect::<anyhow::Result<_>>()?;
    // Let every node register before the clock starts.
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    let shoal = launch::binary("shoal")?;
    let mut gets: Vec<_> = nodes
        .iter()
        .map(|p| {
            Command::new(&shoal)
                .arg("--data-dir")
                .arg(&p.dir)
                .args(["get", &ticket, "-o"])
                .arg(p.dir.join("out.bin"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut finish = vec![0.0; n];
    while finish.contains(&0.0) {
        for (i, g) in gets.iter_mut().enumerate() {
            if finish[i] == 0.0 {
                if let Some(st) = g.try_wait()? {
                    if !st.success() {
                        bail!(
                            "downloader {i} failed (log: {})",
                            nodes[i].dir.join("log.txt").display()
                        );
                    }
                    finish[i] = t0.elapsed().as_secs_f64();
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("the swarm did not finish in 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status: serde_json::Value =
        serde_json::from_str(&launch::shoal(&seed.dir, &["status", "--json"])?)?;
    let last = finish.iter().copied().fold(0.0, f64::max);
    let mean = finish.iter().sum::<f64>() / n as f64;
    Ok((last, mean, status["uploaded_bytes"].as_u64().unwrap_or(0)))
}

/// nginx with sendfile if installed, else Python's http.server, serving `dir`.
fn http_server(dir: &Path, scratch: &Path) -> anyhow::Result<(KillOnDrop, u16, &'static str)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists());
    let (child, name) = if let Some(nginx) = nginx {
        let conf = scratch.join("nginx.conf");
        let d = scratch.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx.err;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {d}; proxy_temp_path {d};\n\
                 fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
                dir.display()
            ),
        )?;
        (
            Command::new(nginx)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(scratch)
                .stderr(Stdio::null())
                .spawn()?,
            "nginx (sendfile)",
        )
    } else {
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server (install nginx or python3)")?;
        (child, "python3 -m http.server")
    };
    let guard = KillOnDrop(child);
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end {
            bail!("the HTTP server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((guard, port, name))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
