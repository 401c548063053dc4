//! One seeder to one fetcher over loopback: `shoal get` (QUIC) against HTTP over TCP (nginx if
//! installed, else `python3 -m http.server`) + curl, on the same file in the same run. Also
//! times `shoal add` of the file and samples the fetcher's peak RSS.
//!
//! `cargo bench -p shoal-node --bench transfer -- [SIZE_MIB] [ROUNDS]` (defaults 1024 and 3;
//! 4096 for the memory figure). Needs about 2 × SIZE of free space in the temp dir.
//!
//! With `SHOAL_BENCH_BASELINE=/path/to/an/older/shoal`, each round also fetches with that binary
//! (its own seed daemon, same file), so a change is measured against the code before it in one
//! run on a shared, noisy machine. `-- limits ...` measures the rate limits instead (see
//! `transfer/limits.rs`).
//!
//! Each timed transfer starts right after a scratch file of the transfer's size (and an
//! eighth) was written and deleted ([`warm`]). On a VM that reports free memory to its host
//! (virtio-balloon free page reporting, as on the machine of BENCHMARKS.md), memory freed more
//! than about two seconds earlier is handed back, and the first process to write into it pays
//! the host's faults: 2.4-3.8 system seconds per GiB more, whichever command it is. Without
//! the warm-up the order of the commands decided which one paid (curl ran just after the
//! fetch's output was deleted and reused its memory; the fetch came after a pause).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
#[path = "transfer/limits.rs"]
mod limits;
use common::{write_file, Killed, BIN};

/// CPU seconds of process `pid` so far, from /proc; zero if it is gone.
fn cpu_of(pid: u32) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_cpu(&stat, 11)
}

/// CPU seconds of this process's reaped children so far (cutime, cstime).
fn children_cpu() -> Cpu {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default(), 13)
}

/// The user and system clock-tick fields at `at` and `at + 1` after the command name of a
/// /proc stat line, in seconds (USER_HZ is 100 on Linux).
fn stat_cpu(stat: &str, at: usize) -> Cpu {
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return Cpu::default() };
    let f: Vec<u64> =
        rest.split_whitespace().skip(at).take(2).filter_map(|x| x.parse().ok()).collect();
    let secs = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / 100.0;
    Cpu { user: secs(0), system: secs(1) }
}

/// User and system CPU seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user: f64,
    system: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu { user: self.user - o.user, system: self.system - o.system }
    }
}

/// Writes `bytes` (and an eighth more) of zeros into a scratch file next to `at` and deletes
/// it: the page cache a transfer of that size writes into is then freshly freed memory the VM
/// still backs, the same for every command timed.
fn warm(at: &Path, bytes: u64) {
    use std::io::Write;
    let scratch = at.with_file_name("scratch.bin");
    let mut f = std::fs::File::create(&scratch).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(bytes + bytes / 8).div_ceil(1 << 20) {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    std::fs::remove_file(&scratch).unwrap();
}

/// A seeding daemon of one binary, holding the benchmark file.
struct Seed {
    bin: PathBuf,
    daemon: Killed,
}

impl Seed {
    /// Starts `bin daemon` on `dir` and adds `src`: the seed, the time `add` took, the ticket.
    fn start(bin: &Path, dir: &Path, src: &Path) -> (Seed, f64, String) {
        let mut daemon = Command::new(bin)
            .arg("--data-dir")
            .arg(dir)
            .args(["daemon", "--listen", "127.0.0.1:0"])
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(daemon.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let daemon = Killed(daemon);
        let mut add = Command::new(bin);
        add.arg("--data-dir").arg(dir).arg("add").arg(src);
        let (add_s, _, ticket) = timed(add);
        (Seed { bin: bin.to_path_buf(), daemon }, add_s, ticket.trim().to_string())
    }

    /// A standalone `shoal get` of `ticket` from this seed (same binary): wall seconds, CPU of
    /// both sides, the fetcher's peak RSS. The output is removed afterwards.
    fn fetch(&self, ticket: &str, dir: &Path, out: &Path, size: u64) -> (f64, Sides, u64) {
        let _ = std::fs::remove_file(out);
        let mut get = Command::new(&self.bin);
        get.arg("--data-dir").arg(dir).args(["get", ticket, "-o"]).arg(out).arg("--json");
        let pid = self.daemon.0.id();
        let (seed0, child0) = (cpu_of(pid), children_cpu());
        let (secs, rss, report) = timed(get);
        let cpu = Sides { sender: cpu_of(pid) - seed0, receiver: children_cpu() - child0 };
        let v: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
        assert_eq!(v["size"], size);
        assert_eq!(std::fs::metadata(out).unwrap().len(), size);
        let _ = std::fs::remove_file(out);
        (secs, cpu, rss)
    }
}

/// CPU seconds spent by each side of one transfer.
#[derive(Debug, Clone, Copy)]
struct Sides {
    sender: Cpu,
    receiver: Cpu,
}

/// Runs a command to completion, sampling its peak RSS (VmHWM) from /proc.
fn timed(mut cmd: Command) -> (f64, u64, String) {
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = s.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                peak_kb = peak_kb.max(kb);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{cmd:?} failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (t.elapsed().as_secs_f64(), peak_kb * 1024, reader.join().unwrap())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_http(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "http server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_http(dir: &Path, conf_dir: &Path) -> (Killed, u16, &'static str) {
    let port = free_port();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists());
    if let Some(nginx) = nginx {
        let conf = conf_dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; pid {pid};\n\
                 error_log {err};\nevents {{ worker_connections 64; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on;\n\
                 client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n\
                 uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
                 server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
                pid = conf_dir.join("nginx.pid").display(),
                err = conf_dir.join("error.log").display(),
                tmp = conf_dir.display(),
                root = dir.display(),
            ),
        )
        .unwrap();
        let child =
            Command::new(nginx).arg("-c").arg(&conf).arg("-p").arg(conf_dir).spawn().unwrap();
        wait_http(port);
        return (Killed(child), port, "nginx (sendfile)");
    }
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_http(port);
    (Killed(child), port, "python3 -m http.server")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("limits") {
        return limits::run(&args[1..]);
    }
    let mib: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let src = share.join("file.bin");
    write_file(&src, mib);

    let (seed, add_s, ticket) = Seed::start(Path::new(BIN), &tmp.path().join("seed"), &src);
    let baseline = std::env::var_os("SHOAL_BENCH_BASELINE").map(|bin| {
        let (seed, _, ticket) = Seed::start(Path::new(&bin), &tmp.path().join("seed-base"), &src);
        (seed, ticket)
    });
    let mut base = Vec::new();

    let (http_proc, port, http_name) = start_http(&share, tmp.path());
    let http_pid = http_proc.0.id();
    let out: PathBuf = tmp.path().join("out.bin");
    let mut quic = Vec::new();
    let mut http = Vec::new();
    let mut http_durable = Vec::new();
    let mut peak = 0u64;
    for round in 0..rounds {
        let _ = std::fs::remove_file(&out);
        let fetch_dir = tmp.path().join(format!("fetch{round}"));
        warm(&out, size);
        let (secs, cpu, rss) = seed.fetch(&ticket, &fetch_dir, &out, size);
        quic.push((secs, cpu));
        peak = peak.max(rss);
        if let Some((seed, ticket)) = &baseline {
            let fetch_dir = tmp.path().join(format!("fetch-base{round}"));
            warm(&out, size);
            let (secs, cpu, _) = seed.fetch(ticket, &fetch_dir, &out, size);
            base.push((secs, cpu));
        }

        let mut curl = Command::new("curl");
        curl.args(["-s", "-o"]).arg(&out).arg(format!("http://127.0.0.1:{port}/file.bin"));
        warm(&out, size);
        let (http0, child0) = (cpu_of(http_pid), children_cpu());
        let (secs, _, _) = timed(curl);
        let cpu = Sides { sender: cpu_of(http_pid) - http0, receiver: children_cpu() - child0 };
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
        // shoal makes its output durable before renaming it into place; give curl's file the
        // same fsync for the like-for-like figure.
        let mut sync = Command::new("sync");
        sync.arg(&out);
        let (sync_secs, _, _) = timed(sync);
        http.push((secs, cpu));
        http_durable.push((secs + sync_secs, cpu));
        let _ = std::fs::remove_file(&out);
    }
    drop(seed);
    drop(baseline);
    let best = |v: &[(f64, Sides)]| {
        v.iter().copied().min_by(|a, b| a.0.total_cmp(&b.0)).expect("at least one round")
    };
    let (q, h, hd) = (best(&quic), best(&http), best(&http_durable));
    let gib = size as f64 / f64::from(1 << 30);
    let rate = |s: f64| size as f64 / s / (1024.0 * 1024.0);
    let line = |what: &str, (s, cpu): (f64, Sides)| {
        let (tx, rx) = (cpu.sender, cpu.receiver);
        println!(
            "{what:<30} {s:>6.2} s {:>5.0} MiB/s  CPU s/GiB: sender {:.2} ({:.2} user + {:.2} sys), \
             receiver {:.2} ({:.2} + {:.2})",
            rate(s),
            (tx.user + tx.system) / gib,
            tx.user / gib,
            tx.system / gib,
            (rx.user + rx.system) / gib,
            rx.user / gib,
            rx.system / gib,
        )
    };
    println!(
        "transfer benchmark: {mib} MiB over loopback, best of {rounds} (whole-command wall time; \
         CPU = user+system seconds of the serving process and of the fetching command)"
    );
    println!(
        "{:<34} {:>7.2} s {:>6.0} MiB/s",
        "shoal add (import through daemon)",
        add_s,
        rate(add_s)
    );
    line("shoal get (QUIC, standalone)", q);
    if !base.is_empty() {
        let b = best(&base);
        line("shoal get, baseline binary", b);
        println!("ratio this / baseline throughput: {:.2}", b.0 / q.0);
    }
    line(&format!("curl from {http_name}"), h);
    line("curl + fsync of the file", hd);
    println!("ratio QUIC / HTTP throughput: {:.2}", h.0 / q.0);
    println!("ratio QUIC / HTTP+fsync throughput: {:.2}", hd.0 / q.0);
    println!("fetcher peak RSS: {:.1} MiB", peak as f64 / (1024.0 * 1024.0));
}
