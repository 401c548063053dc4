//! Daemon management end to end: commands run while a daemon starts wait for it (and a dead
//! or failed one is never waited on); `get --detach`, `jobs` and `cancel`; `rm` with and
//! without `--delete`; the default port; `--advertise` behind a (simulated) port forward.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_core::{ContentId, NodeId, PeerAddr, Ticket};
use shoal_wire::tracker::{Role, TrackerRequest, TrackerResponse, TRACKER_VERSION};

use crate::support::*;

/// `shoal daemon` spawned in the background, its start line not waited for; killed on drop.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn spawn_daemon(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut c = shoal(dir);
    c.args(["daemon"]).args(extra).env("SHOAL_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    Spawned(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

const WAITING: &str = "waiting for the shoal daemon to start";

/// Waits until the daemon of `dir` holds its lock (it is starting: a command now must wait).
fn starting(dir: &Path) {
    use shoal_control::lock::{probe, Probe};
    wait_until("the daemon takes its lock", || {
        matches!(probe(dir), Ok(Probe::Held { .. })).then_some(())
    });
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn commands_wait_for_a_starting_daemon_and_never_for_a_dead_one() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 300_000, 1);
    // A seed that takes 1.5 s to start: `add` issued at once waits for it, with one message.
    let slow = [("SHOAL_DANGER_START_DELAY_MS", "1500")];
    let seed_dir = tmp.path().join("seed");
    let _seed = spawn_daemon(&seed_dir, &["--listen", "127.0.0.1:0"], &slow);
    starting(&seed_dir);
    let mut c = shoal(&seed_dir);
    c.arg("add").arg(&src);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(stderr_of(&o).matches(WAITING).count(), 1, "{}", stderr_of(&o));
    let ticket = String::from_utf8(o.stdout).unwrap().trim().to_string();
    // `get` on the data dir of a daemon that is starting goes through that daemon once it
    // answers (before, it failed on the store the daemon holds).
    let b_dir = tmp.path().join("b");
    let _b = spawn_daemon(&b_dir, &["--listen", "127.0.0.1:0"], &slow);
    starting(&b_dir);
    let out = tmp.path().join("copy.bin");
    let mut c = shoal(&b_dir);
    c.args(["get", &ticket, "-o"]).arg(&out);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains(WAITING), "{}", stderr_of(&o));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let mut c = shoal(&b_dir);
    c.args(["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(status["contents"].as_array().unwrap().len(), 1, "the daemon fetched it");

    // A daemon killed with SIGKILL leaves control.json and its lock file: nobody waits on them.
    let dead_dir = tmp.path().join("dead");
    let mut dead = Daemon::start(&dead_dir, &[]);
    dead.kill();
    assert!(dead_dir.join("control.json").exists() && dead_dir.join("daemon.lock").exists());
    let t = Instant::now();
    let mut c = shoal(&dead_dir);
    c.arg("status");
    assert!(fails(c).contains("no shoal daemon is running"));
    assert!(t.elapsed() < Duration::from_secs(10), "looked again briefly, did not wait");

    // A daemon that fails while starting (its port is taken) ends the wait with one line.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let fail_dir = tmp.path().join("fail");
    let mut failing = spawn_daemon(&fail_dir, &["--listen", &port], &slow);
    starting(&fail_dir);
    let mut c = shoal(&fail_dir);
    c.arg("status");
    let o = run(c);
    let err = stderr_of(&o);
    assert!(!o.status.success());
    assert!(err.contains(WAITING) && err.contains("stopped before it answered"), "{err}");
    assert!(!failing.0.wait().unwrap().success());

    // One that never answers within the bound is named, with the variable that raises it.
    let late_dir = tmp.path().join("late");
    let _late = spawn_daemon(
        &late_dir,
        &["--listen", "127.0.0.1:0"],
        &[("SHOAL_DANGER_START_DELAY_MS", "60000")],
    );
    starting(&late_dir);
    let mut c = shoal(&late_dir);
    c.arg("status").env("SHOAL_DAEMON_WAIT", "1");
    let o = run(c);
    let err = stderr_of(&o);
    assert!(!o.status.success());
    assert!(err.contains("did not start within 1s") && err.contains("SHOAL_DAEMON_WAIT"), "{err}");

    // A second daemon on a data dir that has one is refused in one line.
    let mut c = shoal(&seed_dir);
    c.args(["daemon", "--listen", "127.0.0.1:0"]);
    assert!(fails(c).contains("already has a running shoal daemon"));
}

#[test]
fn commands_right_after_spawning_the_daemon_succeed() {
    // No artificial delay: whichever runs first, the daemon or the command, both succeed.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    write_file(&src, 100_000, 2);
    for i in 0..3 {
        let dir = tmp.path().join(format!("d{i}"));
        let _d = spawn_daemon(&dir, &["--listen", "127.0.0.1:0"], &[]);
        let mut c = shoal(&dir);
        c.arg("add").arg(&src);
        assert!(ok(c).starts_with("shoal1"));
        let mut c = shoal(&dir);
        c.args(["ls", "--json"]);
        let ls: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
        assert_eq!(ls.as_array().unwrap().len(), 1);
    }
}

fn jobs(d: &Daemon) -> Vec<serde_json::Value> {
    let mut c = d.cmd();
    c.args(["jobs", "--json"]);
    serde_json::from_str::<serde_json::Value>(&ok(c)).unwrap().as_array().unwrap().clone()
}

fn job<'a>(jobs: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    jobs.iter().find(|j| j["job"] == id).unwrap_or_else(|| panic!("no job {id} in {jobs:?}"))
}

fn detach(d: &Daemon, ticket: &str, out: &Path, extra: &[&str]) -> String {
    let mut c = d.cmd();
    c.args(["get", ticket, "-o"]).arg(out).arg("--detach").args(extra);
    ok(c).trim().to_string()
}

/// Files in `dir` whose name contains `part` (partial downloads).
fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("shoal-part"))
        .collect()
}

#[test]
fn detached_jobs_are_listed_cancelled_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    let src = tmp.path().join("big.bin");
    let data = write_file(&src, 4_000_000, 3);
    let ticket = seed.add(&src);
    let content = ticket.parse::<Ticket>().unwrap().content.to_string();
    let node = Daemon::start(&tmp.path().join("node"), &[]);
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).unwrap();

    // A slow job: the command returns at once with its id, the job runs on in the daemon.
    let slow_out = outdir.join("slow.bin");
    let id = detach(&node, &ticket, &slow_out, &["--download-limit", "256KiB/s"]);
    let j = wait_until("the job makes progress", || {
        let all = jobs(&node);
        let j = job(&all, &id).clone();
        (j["bytes_done"].as_u64().unwrap() > 0).then_some(j)
    });
    assert_eq!(j["state"], "running");
    assert_eq!(j["content_id"], content.as_str());
    assert_eq!(j["size"], 4_000_000);
    assert_eq!(j["output"], slow_out.display().to_string());
    assert!(!partials(&outdir).is_empty(), "it writes beside its output");
    // A second job of the same content is refused, and so is removing it meanwhile.
    let mut c = node.cmd();
    c.args(["get", &ticket, "-o"]).arg(outdir.join("twice.bin")).arg("--detach");
    assert!(fails(c).contains(&format!("being fetched by job {id}")));
    let mut c = node.cmd();
    c.args(["rm", &content]);
    assert!(fails(c).contains(&format!("shoal cancel {id}")));

    // Cancelled: no partial file, no output, nothing held; the job is listed as cancelled.
    let mut c = node.cmd();
    c.args(["cancel", &id, "--json"]);
    let cancelled: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(partials(&outdir), Vec::<String>::new());
    assert!(!slow_out.exists());
    assert_eq!(node.ls(), serde_json::json!([]));
    assert_eq!(job(&jobs(&node), &id)["state"], "cancelled");
    let mut c = node.cmd();
    c.args(["cancel", &id]);
    assert!(fails(c).contains("already ended (cancelled)"));
    let mut c = node.cmd();
    c.args(["cancel", "nosuchjob"]);
    assert!(fails(c).contains("shoal jobs"));

    // A job that runs to the end: done, the file whole.
    let out = outdir.join("copy.bin");
    let id2 = detach(&node, &ticket, &out, &[]);
    wait_until("the job is done", || (job(&jobs(&node), &id2)["state"] == "done").then_some(()));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let mut c = node.cmd();
    c.arg("jobs");
    let text = ok(c);
    assert!(text.contains(&id) && text.contains(&id2) && text.contains("done"), "{text}");

    // At most 16 jobs run at once: the 17th is refused in one line. (Two seeds share the
    // contents, so that no seed is near its cap of connections from one node.)
    let seed2 = Daemon::start(&tmp.path().join("seed2"), &[]);
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    for i in 0..17 {
        let f = small.join(format!("s{i}.bin"));
        write_file(&f, 200_000, 100 + i);
        let t = if i % 2 == 0 { seed.add(&f) } else { seed2.add(&f) };
        let o = outdir.join(format!("s{i}.bin"));
        let mut c = node.cmd();
        c.args(["get", &t, "-o"]).arg(&o).args(["--detach", "--download-limit", "1KiB/s"]);
        if i < 16 {
            ok(c);
        } else {
            assert!(fails(c).contains("runs 16 jobs already"));
        }
    }
}

/// A registered raw client of a tracker, asking who holds a content.
struct Asker {
    rt: tokio::runtime::Runtime,
    _ep: shoal_net::Endpoint,
    conn: quinn::Connection,
}

impl Asker {
    fn new(tracker: SocketAddr) -> Asker {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_ep, conn) = rt.block_on(async {
            let (id, ep, conn) = tracker_client(tracker).await;
            let reg = TrackerRequest::Register {
                node_id: id.node_id(),
                version: TRACKER_VERSION,
                role: Role::Node,
                addrs: vec![],
                region: None,
            };
            let r = tracker_call(&conn, &reg).await;
            assert!(matches!(r, TrackerResponse::Registered { .. }), "{r:?}");
            (ep, conn)
        });
        Asker { rt, _ep, conn }
    }

    /// The holders of `content` a lookup lists, with their addresses.
    fn holders(&self, content: ContentId) -> HashMap<NodeId, Vec<SocketAddr>> {
        let req = TrackerRequest::Lookup {
            content,
            max_peers: 16,
            have: None,
            compact: true,
            regions: false,
        };
        match self.rt.block_on(tracker_call(&self.conn, &req)) {
            TrackerResponse::CompactLookupReply { peers, .. } => {
                peers.into_iter().map(|p| (p.node_id, p.addrs)).collect()
            }
            TrackerResponse::Unknown => HashMap::new(),
            other => panic!("{other:?}"),
        }
    }
}

fn rm(d: &Daemon, content: &str, extra: &[&str]) -> serde_json::Value {
    let mut c = d.cmd();
    c.args(["rm", content, "--json"]).args(extra);
    serde_json::from_str(&ok(c)).unwrap()
}

#[test]
fn rm_stops_seeding_and_deletes_only_what_the_node_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(&tmp.path().join("t"), "127.0.0.1:0");
    let t = tracker.addr.to_string();
    let seed = Daemon::start(&tmp.path().join("seed"), &["--tracker", &t]);
    let src = tmp.path().join("mine.bin");
    write_file(&src, 500_000, 4);
    let ticket = seed.add(&src);
    let content: ContentId = ticket.parse::<Ticket>().unwrap().content;
    let node = Daemon::start(&tmp.path().join("node"), &["--tracker", &t]);
    let node_id: NodeId = node.node_id.parse().unwrap();
    let out = tmp.path().join("copy.bin");
    get_json(&node.dir, &ticket, &out, &[]);
    let asker = Asker::new(tracker.addr);
    wait_until("the tracker lists the node", || {
        asker.holders(content).contains_key(&node_id).then_some(())
    });

    // Without --delete: no longer held, the tracker told at once, the fetched file kept.
    let r = rm(&node, &content.to_string()[..12], &[]);
    assert_eq!(r["content_id"], content.to_string());
    assert_eq!(r["tracker_told"], true);
    assert_eq!(r["deleted"], serde_json::json!([]));
    assert_eq!(r["kept"][0]["path"], out.display().to_string());
    assert!(r["kept"][0]["why"].as_str().unwrap().contains("--delete"));
    assert!(out.exists());
    assert_eq!(node.ls(), serde_json::json!([]));
    assert!(!asker.holders(content).contains_key(&node_id));
    let mut c = node.cmd();
    c.args(["rm", &content.to_string()]);
    assert!(fails(c).contains("is not held by this node"));

    // With --delete: a fetched file unchanged since is deleted; one changed since is kept.
    let out2 = tmp.path().join("copy2.bin");
    get_json(&node.dir, &ticket, &out2, &[]);
    let r = rm(&node, &content.to_string(), &["--delete"]);
    assert_eq!(r["deleted"], serde_json::json!([out2.display().to_string()]));
    assert!(!out2.exists());
    let out3 = tmp.path().join("copy3.bin");
    get_json(&node.dir, &ticket, &out3, &[]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&out3).unwrap();
    std::io::Write::write_all(&mut f, b"my notes").unwrap();
    drop(f);
    let r = rm(&node, &content.to_string(), &["--delete"]);
    assert_eq!(r["deleted"], serde_json::json!([]));
    assert!(r["kept"][0]["why"].as_str().unwrap().contains("changed since"));
    assert!(out3.exists());

    // The file a seed added in place is the user's: never deleted, and the reply says so.
    let mut c = seed.cmd();
    c.args(["rm", &content.to_string(), "--delete"]);
    let text = ok(c);
    assert!(text.contains("kept") && text.contains("added in place"), "{text}");
    assert!(src.exists());
    assert_eq!(seed.ls(), serde_json::json!([]));
    wait_until("nobody holds it", || asker.holders(content).is_empty().then_some(()));
}

#[test]
fn the_default_port_is_7401_and_a_busy_one_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    // Hold the port (if something else on this machine holds it, it is busy all the same).
    let held = UdpSocket::bind("0.0.0.0:7401");
    let mut c = shoal(&tmp.path().join("a"));
    c.arg("daemon").env("SHOAL_LOG", "warn");
    let line = fails(c);
    assert!(line.contains("port 7401 is in use: pass --listen ADDR"), "{line}");
    let Ok(held) = held else {
        eprintln!("port 7401 is held by another process here: its default use is not tested");
        return;
    };
    drop(held);
    let mut c = shoal(&tmp.path().join("b"));
    c.arg("daemon").env("SHOAL_LOG", "warn");
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let rx = lines(child.stdout.take().unwrap());
    let line = wait_line(&rx, "daemon start", |l| l.starts_with("shoal daemon: node "));
    child.kill().ok();
    child.wait().ok();
    assert!(line.contains("listening on 0.0.0.0:7401,"), "{line}");
}

/// A UDP port forward (a NAT's, in miniature): datagrams to `addr` go to the target from a
/// socket per client, and the answers back. Stopped when dropped.
struct Forward {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl Forward {
    fn start(ip: &str) -> Forward {
        let front = UdpSocket::bind((ip, 0)).unwrap();
        front.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = front.local_addr().unwrap();
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (target.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ups: HashMap<SocketAddr, UdpSocket> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else { continue };
                // Until the target is known, datagrams are lost (QUIC sends them again).
                let Some(to) = *t.lock().unwrap() else { continue };
                let up = ups.entry(client).or_insert_with(|| {
                    let up = UdpSocket::bind("127.0.0.1:0").unwrap();
                    up.connect(to).unwrap();
                    up.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let (back, front, s) =
                        (up.try_clone().unwrap(), front.try_clone().unwrap(), s.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        while !s.load(Ordering::Relaxed) {
                            if let Ok(n) = back.recv(&mut buf) {
                                let _ = front.send_to(&buf[..n], client);
                            }
                        }
                    });
                    up
                });
                let _ = up.send(&buf[..n]);
            }
        });
        Forward { addr, target, stop }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn an_advertised_address_is_listed_only_where_the_node_proves_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(&tmp.path().join("t"), "127.0.0.1:0");
    let t = tracker.addr.to_string();
    // A port forward on 127.0.0.2 (another IP than the node registers from, so the tracker
    // dials it), and a bogus address: another node's, where another key answers.
    let fwd = Forward::start("127.0.0.2");
    let other = Daemon::start(&tmp.path().join("other"), &["--listen", "127.0.0.3:0"]);
    let status = other.status();
    let bogus = status["links"][1]["addr"].as_str().unwrap().to_string();
    let bogus_addr: SocketAddr = bogus.parse().unwrap();
    let good = fwd.addr.to_string();
    let node = Daemon::start(
        &tmp.path().join("node"),
        &["--tracker", &t, "--advertise", &good, "--advertise", &bogus],
    );
    *fwd.target.lock().unwrap() = Some(node.addr);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 300_000, 5);
    let ticket: Ticket = node.add(&src).parse().unwrap();
    // Advertised addresses come first in tickets and status.
    assert_eq!(ticket.peers[0].addr, fwd.addr);
    let node_id: NodeId = node.node_id.parse().unwrap();
    let asker = Asker::new(tracker.addr);
    let listed = wait_until("the forwarded address is checked and listed", || {
        let got = asker.holders(ticket.content).remove(&node_id)?;
        got.contains(&fwd.addr).then_some(got)
    });
    assert!(listed.contains(&node.addr), "{listed:?}");
    assert!(!listed.contains(&bogus_addr), "an address where another key answers: {listed:?}");
    // And it works: a fetch that knows only the forwarded address gets the file through it.
    let through = Ticket {
        content: ticket.content,
        peers: vec![PeerAddr { node_id: Some(node_id), addr: fwd.addr }],
        tracker: None,
        tracker_id: None,
        more_trackers: Vec::new(),
    };
    let out = tmp.path().join("copy.bin");
    let report = get_json(&tmp.path().join("d"), &through.to_string(), &out, &[]);
    assert_eq!(report["peers"][0]["addr"], good.as_str());
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Bad values are one line each.
    for bad in ["0.0.0.0:7401", "10.0.0.1:0", "somewhere"] {
        let mut c = shoal(&tmp.path().join("bad"));
        c.args(["daemon", "--listen", "127.0.0.1:0", "--advertise", bad]);
        assert!(fails(c).contains("--advertise"), "{bad}");
    }
}
