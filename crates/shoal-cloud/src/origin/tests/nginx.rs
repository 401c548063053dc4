//! The fetcher against a real nginx on loopback, serving files from a temporary directory.
//!
//! Without `/usr/sbin/nginx` these tests print a line and pass, unless `SHOAL_REQUIRE_NGINX`
//! is set (`.ci/run` sets it and installs nginx-light), which makes its absence a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{fetch, origin, random_bytes};
use crate::origin::OriginError;

const NGINX: &str = "/usr/sbin/nginx";
const FILE_LEN: usize = 5 << 20;

/// A running nginx serving `<dir>/www`; killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// nginx with `/file.bin` (5 MiB of random bytes), or `None` if nginx is not installed
    /// and not required.
    fn start() -> Option<Nginx> {
        if !Path::new(NGINX).exists() {
            assert!(
                std::env::var_os("SHOAL_REQUIRE_NGINX").is_none(),
                "{NGINX} is required (apt-get install nginx-light)"
            );
            eprintln!("skipping: {NGINX} not found (apt-get install nginx-light to run this)");
            return None;
        }
        let mut dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("www")).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("www/file.bin"), random_bytes(FILE_LEN, 42)).unwrap();
        // The port is free when read, but another process may take it before nginx binds:
        // then nginx exits and the next try picks another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, config(dir.path(), port)).unwrap();
            let child = Command::new(NGINX)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut nginx = Nginx { child, port, dir };
            if nginx.wait_ready() {
                return Some(nginx);
            }
            // Take the directory back from the guard, which reaps the exited nginx.
            dir = std::mem::replace(&mut nginx.dir, tempfile::tempdir().unwrap());
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
    }

    /// Polls until nginx accepts connections (true) or exits (false); at most 10 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nginx neither accepts connections nor exits");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("www/file.bin")
    }

    /// Requests nginx received so far for `path`, from its access log.
    fn requests(&self, path: &str) -> usize {
        // nginx's one process logs a request right after sending its response, so the last
        // request's line may still be missing when its response arrives; a request of our
        // own, sent now, is logged after all of them (if they had small answers, sent whole).
        static SENT: AtomicUsize = AtomicUsize::new(0);
        let marker = format!("/marker-{}", SENT.fetch_add(1, Ordering::Relaxed));
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "GET {marker} HTTP/1.0\r\n\r\n").unwrap();
        s.read_to_end(&mut Vec::new()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap();
            if log.contains(&format!("GET {marker} ")) {
                return log.lines().filter(|l| l.contains(&format!("GET {path} "))).count();
            }
            assert!(Instant::now() < deadline, "nginx did not log {marker}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    // The access log is on (in the directory) so tests can count requests. Temp paths go in
    // the directory too: the compiled-in ones may not exist or be writable.
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        # A relative Location, resolved by the fetcher.
        absolute_redirect off;
        location = /moved {{ return 302 /file.bin; }}
    }}
}}
"
    )
}

#[tokio::test]
async fn fetches_a_file_in_parallel_ranges() {
    let Some(nginx) = Nginx::start() else { return };
    let origin = origin();
    let res = origin.probe(&nginx.url("/file.bin")).await.unwrap();
    assert!(res.ranges);
    assert_eq!(res.len, FILE_LEN as u64);
    assert!(res.validators.etag.is_some(), "{:?}", res.validators);
    assert!(res.validators.last_modified.is_some());

    // Uneven parts, the last a single byte, fetched at once.
    let cuts = [0, 1_000_001, 2_500_000, FILE_LEN as u64 - 1, FILE_LEN as u64];
    let parts: Vec<_> = cuts.windows(2).map(|w| fetch(&origin, &res, w[0], w[1] - w[0])).collect();
    let (a, b, c, d) = {
        let mut parts = parts.into_iter();
        let mut next = || parts.next().unwrap();
        tokio::join!(next(), next(), next(), next())
    };
    let mut buffer = Vec::with_capacity(FILE_LEN);
    for (result, got) in [a, b, c, d] {
        result.unwrap();
        buffer.extend_from_slice(&got.bytes);
    }
    assert!(buffer == std::fs::read(nginx.file()).unwrap(), "the bytes differ");
}

#[tokio::test]
async fn follows_a_redirect() {
    let Some(nginx) = Nginx::start() else { return };
    let res = origin().probe(&nginx.url("/moved")).await.unwrap();
    assert_eq!(res.url.as_str(), nginx.url("/file.bin"));
    assert_eq!(res.len, FILE_LEN as u64);
    assert_eq!(nginx.requests("/moved"), 1);
}

#[tokio::test]
async fn a_missing_file_is_not_retried() {
    let Some(nginx) = Nginx::start() else { return };
    let result = origin().probe(&nginx.url("/missing")).await;
    assert!(matches!(result, Err(OriginError::Status { status: 404 })), "{result:?}");
    assert_eq!(nginx.requests("/missing"), 1);
}

#[tokio::test]
async fn a_file_changed_on_disk_is_changed() {
    let Some(nginx) = Nginx::start() else { return };
    let origin = origin();
    let res = origin.probe(&nginx.url("/file.bin")).await.unwrap();
    // Another size: nginx's ETag (mtime and size) changes even within the same second.
    std::fs::write(nginx.file(), random_bytes(FILE_LEN + 1, 43)).unwrap();
    let (result, got) = fetch(&origin, &res, 1000, 1000).await;
    // Changed, not GaveUp: it was not retried. (nginx logs this request only when it sees
    // the connection closed under its 5 MiB answer, so the log cannot tell in time.)
    assert!(matches!(result, Err(OriginError::Changed { .. })), "{result:?}");
    assert_eq!(got.delivered, 0);
}
