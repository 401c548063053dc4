//! Starting daemons and running commands, waiting on their output rather than on sleeps.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single command or event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// A command with the test's environment: no stray SHOAL_* settings from the caller.
pub fn shoal(data_dir: &Path) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SHOAL_") {
            c.env_remove(k);
        }
    }
    c.arg("--data-dir").arg(data_dir);
    c
}

/// Runs a command to completion (bounded by [`DEADLINE`]).
pub fn run(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn shoal");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).ok();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            child.kill().ok();
            panic!("command did not finish within {DEADLINE:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "failed: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command that must fail with exactly one line on stderr (besides plain progress
/// lines); returns that line.
pub fn fails(cmd: Command) -> String {
    let o = run(cmd);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success; stderr: {stderr}");
    let lines: Vec<&str> =
        stderr.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("progress: ")).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    lines[0].to_string()
}

/// Lines from a child's pipe, delivered as they are written.
pub fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line matching `pred`.
pub fn wait_line(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line for {what} within {DEADLINE:?}"),
        }
    }
}

/// A running `shoal daemon`, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub node_id: String,
    pub addr: SocketAddr,
    _stdout: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_env(dir, extra, &[])
    }

    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = shoal(dir);
        cmd.args(["daemon", "--listen", "127.0.0.1:0"]).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("SHOAL_LOG", "warn");
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn daemon");
        let rx = lines(child.stdout.take().unwrap());
        // "shoal daemon: node ID listening on ADDR, control http://.."
        let line = wait_line(&rx, "daemon start", |l| l.starts_with("shoal daemon: node "));
        let words: Vec<&str> = line.split_whitespace().collect();
        let node_id = words[3].to_string();
        let addr = words[6].trim_end_matches(',').parse().unwrap();
        Daemon { child, dir: dir.to_path_buf(), node_id, addr, _stdout: rx }
    }

    pub fn cmd(&self) -> Command {
        shoal(&self.dir)
    }

    /// `shoal add`, returning the ticket.
    pub fn add(&self, path: &Path) -> String {
        let mut c = self.cmd();
        c.arg("add").arg(path);
        ok(c).trim().to_string()
    }

    pub fn peer(&self) -> String {
        format!("{}@{}", self.node_id, self.addr)
    }

    /// Waits for a further line on its stdout (after the start line) matching `pred`.
    pub fn wait_stdout(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self._stdout, what, pred)
    }

    /// `shoal status --json` of this daemon.
    pub fn status(&self) -> serde_json::Value {
        let mut c = self.cmd();
        c.args(["status", "--json"]);
        serde_json::from_str(ok(c).trim()).unwrap()
    }

    pub fn ls(&self) -> serde_json::Value {
        let mut c = self.cmd();
        c.args(["ls", "--json"]);
        serde_json::from_str(&ok(c)).unwrap()
    }

    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let b = bytes(len, seed);
    std::fs::write(path, &b).unwrap();
    b
}

/// `shoal get TICKET -o OUT --json [args]` on `data_dir`, returning the report.
pub fn get_json(data_dir: &Path, ticket: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut c = shoal(data_dir);
    c.args(["get", ticket, "-o"]).arg(out).arg("--json").args(extra);
    let stdout = ok(c);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad json {stdout:?}: {e}"))
}

/// The `shoal-tracker` binary, built beside `shoal` by `cargo nextest run --workspace`.
pub fn tracker_bin() -> PathBuf {
    let p = Path::new(bin()).with_file_name("shoal-tracker");
    assert!(p.exists(), "{} is missing: build it with `cargo build -p shoal-tracker`", p.display());
    p
}

/// A running `shoal-tracker serve`, killed when dropped.
pub struct TrackerProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub node_id: String,
    /// The HTTP address (`HOST:PORT`) when started with `--http`.
    pub http: Option<String>,
    _stdout: mpsc::Receiver<String>,
}

impl TrackerProc {
    pub fn start(dir: &Path, listen: &str) -> TrackerProc {
        Self::start_with(dir, listen, &[])
    }

    pub fn start_with(dir: &Path, listen: &str, extra: &[&str]) -> TrackerProc {
        let mut child = Command::new(tracker_bin())
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracker");
        let rx = lines(child.stdout.take().unwrap());
        // "shoal-tracker: node ID listening on ADDR, http http://ADDR" (or "http off")
        let line = wait_line(&rx, "tracker start", |l| l.starts_with("shoal-tracker: node "));
        let words: Vec<&str> = line.split_whitespace().collect();
        let node_id = words[2].to_string();
        let addr = words[5].trim_end_matches(',').parse().unwrap();
        let http = line.split_once("http://").map(|(_, a)| a.trim().to_string());
        TrackerProc { child, addr, node_id, http, _stdout: rx }
    }

    /// `NODE_ID@HOST:PORT`, the pinned form of its address.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.node_id, self.addr)
    }

    /// A gauge or counter from its `/metrics` (needs `--http`).
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_line(name).expect(name)
    }

    /// The value of the sample `name` (with its labels, as exposed), if the tracker shows it.
    pub fn metric_line(&self, name: &str) -> Option<u64> {
        use std::io::{Read, Write};
        let http = self.http.as_deref().expect("tracker started with --http");
        let mut s = std::net::TcpStream::connect(http).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let line = out.lines().find(|l| l.starts_with(&format!("{name} ")))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? as u64)
    }

    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for TrackerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `shoal get --json` started in the background, with its stderr lines.
pub struct Fetch {
    pub child: Child,
    pub stderr: mpsc::Receiver<String>,
    pub out: PathBuf,
}

impl Fetch {
    pub fn start(data_dir: &Path, ticket: &str, out: &Path, extra: &[&str]) -> Fetch {
        let mut c = shoal(data_dir);
        c.args(["get", ticket, "-o"]).arg(out).arg("--json").args(extra);
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = lines(child.stderr.take().unwrap());
        Fetch { child, stderr, out: out.to_path_buf() }
    }

    /// Waits for the fetch to succeed; returns its report.
    pub fn finish(mut self) -> serde_json::Value {
        let mut stdout = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        let status = self.child.wait().unwrap();
        let err: Vec<String> =
            self.stderr.try_iter().filter(|l| !l.starts_with("progress:")).collect();
        assert!(status.success(), "fetch failed: {err:?}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad json {stdout:?}: {e}"))
    }
}

/// moto's S3 server on loopback with one bucket, killed when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl S3Server {
    /// Starts moto, or returns `None` (with a message) if it is not installed and
    /// `SHOAL_REQUIRE_S3` is unset.
    pub fn start() -> Option<S3Server> {
        use std::io::Write;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                assert!(std::env::var("SHOAL_REQUIRE_S3").is_err(), "moto_server is required: {e}");
                eprintln!("skipping the S3 backend: moto_server not found ({e})");
                return None;
            }
        };
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: format!("shoal-{port}"),
        };
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let b = &server.bucket;
                write!(s, "PUT /{b} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 200") {
                    return Some(server);
                }
            }
            assert!(Instant::now() < end, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Daemon flags and environment for a storage node on this server.
    pub fn storage_args(&self) -> (Vec<String>, Vec<(&'static str, &'static str)>) {
        let args = vec![
            "--store".to_string(),
            format!("s3://{}/objects", self.bucket),
            "--s3-endpoint".to_string(),
            self.endpoint.clone(),
            "--danger-s3-allow-http".to_string(),
        ];
        let env = vec![
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ];
        (args, env)
    }
}

/// `ls --json` of a node: the first entry's (pieces held, pieces in total), or (0, 0).
pub fn first_holding(d: &Daemon) -> (u64, u64) {
    let ls = d.ls();
    match ls.as_array().and_then(|a| a.first()) {
        Some(e) => (e["pieces_have"].as_u64().unwrap(), e["pieces_total"].as_u64().unwrap()),
        None => (0, 0),
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most [`DEADLINE`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] for an async check, polled every 200 ms (each poll may cost the tracker a
/// registration: its rate limits allow a burst, not a busy loop).
pub async fn wait_until_async<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The user id of a data dir (`shoal user`), creating its node key as the daemon would.
pub fn user_id(data_dir: &Path) -> String {
    let mut c = shoal(data_dir);
    c.arg("user");
    ok(c).trim().to_string()
}

/// `--grant` flags granting unlimited space to the users of these data dirs.
pub fn grant_args(data_dirs: &[&Path]) -> Vec<String> {
    data_dirs.iter().flat_map(|d| ["--grant".to_string(), user_id(d)]).collect()
}

/// The node id a daemon or tracker started on `dir` will have: creates its key now, so that a
/// tracker can admit a storage node (`--admit-storage`) before either starts.
pub fn node_id_for(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    shoal_net::Identity::load_or_create(dir).unwrap().node_id().to_string()
}

impl TrackerProc {
    /// Starts a tracker that admits the storage nodes whose data dirs are `storage_dirs`.
    pub fn start_admitting(
        dir: &Path,
        listen: &str,
        storage_dirs: &[&Path],
        extra: &[&str],
    ) -> Self {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for d in storage_dirs {
            args.push("--admit-storage".into());
            args.push(node_id_for(d));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with(dir, listen, &args)
    }
}

/// Resident memory of a process in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A standalone `shoal get` at `limit` (a `--download-limit` rate), killed with SIGKILL once it
/// has verified `percent` % of the pieces: what it checkpointed stays in `data_dir`'s store.
pub fn get_killed_past(data_dir: &Path, ticket: &str, out: &Path, limit: &str, percent: f64) {
    let mut c = shoal(data_dir);
    c.args(["get", ticket, "-o"]).arg(out).args(["--download-limit", limit]);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let rx = lines(child.stderr.take().unwrap());
    wait_line(&rx, "progress", |l| {
        // "progress: 210/512 pieces (41.0%), ..."
        l.strip_prefix("progress: ")
            .and_then(|r| r.split('(').nth(1))
            .and_then(|r| r.split('%').next())
            .and_then(|p| p.parse::<f64>().ok())
            .is_some_and(|p| p >= percent)
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// One peer-protocol request on its own stream, with `body` raw bytes after the frame (a
/// pushed manifest or piece), as a hostile client sends it: the response frame.
pub async fn raw_request(
    conn: &quinn::Connection,
    req: &shoal_wire::Request,
    body: &[u8],
) -> shoal_wire::Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&shoal_wire::encode(req)).await.unwrap();
    let _ = send.write_chunk(bytes::Bytes::copy_from_slice(body)).await;
    let _ = send.finish();
    let bytes = recv.read_to_end(64 * 1024).await.unwrap();
    let mut d = shoal_wire::Decoder::new();
    d.feed(&bytes);
    d.decode::<shoal_wire::Response>().unwrap().unwrap()
}

/// A fetch report's rate in MiB/s: the bytes it received over the seconds it ran.
pub fn report_rate(report: &serde_json::Value) -> f64 {
    let bytes = report["downloaded_bytes"].as_u64().expect("downloaded_bytes") as f64;
    bytes / report["seconds"].as_f64().expect("seconds") / f64::from(1 << 20)
}

/// Panics unless `got` is within `tolerance` (a fraction) of `set`, with `what` in the message.
pub fn assert_rate_near(what: &str, got: f64, set: f64, tolerance: f64) {
    assert!(
        (got / set - 1.0).abs() <= tolerance,
        "{what}: {got:.2} MiB/s against a limit of {set} MiB/s (more than {:.0}% off)",
        tolerance * 100.0
    );
}

/// A real nginx serving `root` on a free loopback port, stopped when dropped. `None` when nginx
/// is not installed (unless `SHOAL_REQUIRE_NGINX` is set: then the test fails).
pub struct Nginx {
    child: Child,
    pub port: u16,
    _conf: tempfile::TempDir,
}

impl Nginx {
    pub fn start(root: &Path) -> Option<Nginx> {
        Self::start_with(root, "")
    }

    /// With `server` directives added (like `limit_rate 1m;`); requests are logged with the
    /// bytes sent (see [`Nginx::bytes_sent`]).
    pub fn start_with(root: &Path, server: &str) -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("SHOAL_REQUIRE_NGINX").is_none(),
                "SHOAL_REQUIRE_NGINX is set but nginx is not installed (apt-get install nginx-light)"
            );
            eprintln!("skipping: nginx is not installed (apt-get install nginx-light)");
            return None;
        };
        for _ in 0..5 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = tempfile::tempdir().unwrap();
            let d = conf.path().display();
            let text = format!(
                "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; \
                 error_log {d}/error.log; events {{ worker_connections 64; }}\n\
                 http {{ log_format sent '$status $bytes_sent $http_range'; \
                 access_log {d}/access.log sent; client_body_temp_path {d}; proxy_temp_path {d}; \
                 fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen 127.0.0.1:{port}; root {}; {server} }} }}\n",
                root.display()
            );
            std::fs::write(conf.path().join("nginx.conf"), text).unwrap();
            let mut child = Command::new(bin)
                .arg("-c")
                .arg(conf.path().join("nginx.conf"))
                .arg("-p")
                .arg(conf.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Nginx { child, port, _conf: conf });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().ok();
            child.wait().ok();
        }
        panic!("nginx did not start");
    }

    /// Bytes nginx sent so far, over all requests, and the request count (from its log).
    pub fn bytes_sent(&self) -> (u64, usize) {
        let log = std::fs::read_to_string(self._conf.path().join("access.log")).unwrap_or_default();
        let sent = log.lines().filter_map(|l| l.split(' ').nth(1)?.parse::<u64>().ok());
        sent.fold((0, 0), |(b, n), s| (b + s, n + 1))
    }

    /// nginx's access log: `STATUS BYTES_SENT RANGE` per request.
    pub fn log_path(&self) -> PathBuf {
        self._conf.path().join("access.log")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A raw client of a tracker: its own key and endpoint.
pub async fn tracker_client(
    addr: SocketAddr,
) -> (shoal_net::Identity, shoal_net::Endpoint, quinn::Connection) {
    let id = shoal_net::Identity::generate();
    let ep = shoal_net::Endpoint::bind(&id, "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
    let (conn, _) = ep
        .connect(&shoal_core::PeerAddr { node_id: None, addr }, shoal_wire::tracker::TRACKER_ALPN)
        .await
        .unwrap();
    (id, ep, conn)
}

/// One tracker request on its own stream; its answer.
pub async fn tracker_call(
    conn: &quinn::Connection,
    req: &shoal_wire::tracker::TrackerRequest,
) -> shoal_wire::tracker::TrackerResponse {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&shoal_wire::encode(req)).await.unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(shoal_wire::tracker::MAX_TRACKER_FRAME_LEN + 8).await.unwrap();
    let mut d = shoal_wire::Decoder::with_limit(shoal_wire::tracker::MAX_TRACKER_FRAME_LEN);
    d.feed(&bytes);
    d.decode().unwrap().expect("a whole frame")
}

/// Whether `redis-server` is installed; without it a test says so and passes, unless
/// `SHOAL_REQUIRE_REDIS` is set (CI sets it): then its absence fails the test.
pub fn redis_installed() -> bool {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("SHOAL_REQUIRE_REDIS").is_none(),
            "SHOAL_REQUIRE_REDIS is set but redis-server is not installed"
        );
        eprintln!("redis-server is not installed: skipping (apt-get install redis-server)");
    }
    installed
}
