//! The systemd units in deploy/systemd, and the binaries' sd_notify: READY=1 once they answer,
//! STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{bin, lines, ok, shoal, tracker_bin, wait_line, DEADLINE};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// `systemd-analyze verify` of a unit directory, with the binaries' man pages on MANPATH
/// (verify checks the Documentation= pages); its stderr.
fn verify(dir: &Path, units: &[PathBuf]) -> (bool, String) {
    let mut c = Command::new("systemd-analyze");
    c.arg("verify");
    if on_path("man") {
        c.env("MANPATH", dir.join("man"));
    } else {
        c.arg("--man=no");
    }
    let o = c.args(units).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn systemd_units_verify() {
    if !on_path("systemd-analyze") {
        eprintln!("skipping: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man/man1");
    std::fs::create_dir_all(&man).unwrap();
    for program in [PathBuf::from(bin()), tracker_bin()] {
        let mut c = Command::new(program);
        c.arg("man").arg(&man);
        ok(c);
    }
    // verify checks that ExecStart's binary exists: point the units at the built ones.
    let built = Path::new(bin()).parent().unwrap();
    let mut units = Vec::new();
    for name in ["shoal-node.service", "shoal-storage.service", "shoal-tracker.service"] {
        let text = std::fs::read_to_string(units_dir().join(name)).unwrap();
        assert!(text.contains("\nType=notify\n"), "{name}");
        assert!(text.contains("ExecStart=/usr/local/bin/shoal"), "{name}");
        assert!(text.contains(" --config /etc/shoal/"), "{name}");
        let text = text.replace("/usr/local/bin/", &format!("{}/", built.display()));
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let (success, stderr) = verify(dir.path(), &units);
    assert!(success && stderr.is_empty(), "systemd-analyze verify: {stderr}");
    // A mistake in a unit does show: verify is not passing everything.
    let broken = dir.path().join("broken.service");
    let text = std::fs::read_to_string(&units[0]).unwrap().replace("Type=notify", "Tpye=notify");
    std::fs::write(&broken, text).unwrap();
    let (_, stderr) = verify(dir.path(), &[broken]);
    assert!(stderr.contains("Tpye"), "verify missed a misspelt key: {stderr:?}");
}

/// A notify socket as systemd binds it, read with the test's deadline.
fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    (sock, path)
}

fn next_message(sock: &UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no {what} message: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// A child process killed when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn daemon_notifies_ready_once_it_answers_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let (sock, path) = notify_socket(dir.path());
    let mut c = shoal(&data);
    c.args(["daemon", "--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = KillOnDrop(c.spawn().unwrap());
    let out = lines(child.0.stdout.take().unwrap());
    assert_eq!(next_message(&sock, "READY").trim(), "READY=1");
    // Ready means answering: the control API serves a status right away.
    let mut status = shoal(&data);
    status.args(["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&ok(status)).unwrap();
    assert!(status["node_id"].as_str().is_some_and(|id| !id.is_empty()), "{status}");
    wait_line(&out, "start line", |l| l.starts_with("shoal daemon: node "));
    sigterm(child.0.id());
    assert_eq!(next_message(&sock, "STOPPING").trim(), "STOPPING=1");
    let code = child.0.wait().unwrap();
    assert!(code.success(), "daemon exited with {code}");
}

#[test]
fn tracker_notifies_ready_once_it_answers_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, path) = notify_socket(dir.path());
    let mut c = Command::new(tracker_bin());
    c.args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("tracker"))
        .env("NOTIFY_SOCKET", &path)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = KillOnDrop(c.spawn().unwrap());
    let out = lines(child.0.stdout.take().unwrap());
    assert_eq!(next_message(&sock, "READY").trim(), "READY=1");
    // The start line is written before READY=1; the HTTP API answers at once.
    let line = wait_line(&out, "start line", |l| l.starts_with("shoal-tracker: node "));
    let http = line.split_once("http://").map(|(_, a)| a.trim().to_string()).unwrap();
    let health = http_get(&http, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    sigterm(child.0.id());
    assert_eq!(next_message(&sock, "STOPPING").trim(), "STOPPING=1");
    let code = child.0.wait().unwrap();
    assert!(code.success(), "tracker exited with {code}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
