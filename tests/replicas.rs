//! Tracker replicas sharing their state through a real `redis-server`: nodes given both fail
//! over when one is killed, swarms finish, and re-seeding into storage goes on through the
//! replica left. Without redis-server installed the test says so and passes, unless
//! `SHOAL_REQUIRE_REDIS` is set (CI sets it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use shoal_wire::tracker::{TrackerRequest, TrackerResponse};

use crate::support::*;

/// A `redis-server` on a unix socket in `dir`, killed on drop.
struct Redis {
    child: Child,
    socket: PathBuf,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Redis {
    fn start(dir: &Path) -> Option<Redis> {
        if !redis_installed() {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis { child, socket };
        wait_until("redis-server to listen", || {
            std::os::unix::net::UnixStream::connect(&redis.socket).ok().map(|_| ())
        });
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

/// A replica with quick heartbeats, expiry and re-seeding, admitting `storage`.
fn replica(dir: &Path, redis: &Redis, storage: &Path) -> TrackerProc {
    let url = redis.url();
    let args = ["--backend", &url, "--heartbeat", "1", "--node-ttl", "3", "--reseed-after", "2"];
    TrackerProc::start_admitting(dir, "127.0.0.1:0", &[storage], &args)
}

/// The holders replica `tracker` names for `content`, asked as a stranger.
fn holders_at(tracker: &TrackerProc, content: shoal_core::ContentId) -> Vec<String> {
    lookup_holders(tracker.addr, content)
}

/// The holders the tracker at `addr` names for `content`, asked as a stranger.
fn lookup_holders(addr: std::net::SocketAddr, content: shoal_core::ContentId) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (_id, _ep, conn) = tracker_client(addr).await;
        let req = TrackerRequest::Lookup {
            content,
            max_peers: 32,
            have: None,
            compact: false,
            regions: false,
        };
        match tracker_call(&conn, &req).await {
            TrackerResponse::LookupReply { peers, .. } => {
                peers.iter().map(|p| p.node_id.to_string()).collect()
            }
            _ => Vec::new(),
        }
    })
}

#[test]
fn a_replica_killed_mid_swarm_leaves_the_other_serving_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let Some(redis) = Redis::start(&root.join("redis")) else { return };
    let storage_dir = root.join("storage");
    let mut a = replica(&root.join("a"), &redis, &storage_dir);
    let b = replica(&root.join("b"), &redis, &storage_dir);
    assert_eq!(a.node_id, b.node_id, "replicas present one tracker key");
    let both = format!("{},{}", a.pinned(), b.pinned());
    let mut args = vec!["--tracker".to_string(), both.clone(), "--role".into(), "storage".into()];
    args.extend(grant_args(&[&root.join("uploader")]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let storage = Daemon::start(&storage_dir, &args);
    // The uploader's upload is slow, so its push is far from done when it goes away.
    let mut uploader =
        Daemon::start(&root.join("uploader"), &["--tracker", &both, "--upload-limit", "1MiB/s"]);
    let src = root.join("f.bin");
    let data = write_file(&src, 6 * 1024 * 1024, 61);
    let ticket = uploader.add(&src);
    let parsed: shoal_core::Ticket = ticket.parse().unwrap();
    let named: Vec<String> = parsed.trackers().iter().map(|t| t.to_string()).collect();
    assert_eq!(named, vec![a.pinned(), b.pinned()], "the ticket carries both, pinned");
    // Registered and announced at a only: b knows the seed from the change stream.
    wait_until("b to learn the seed through Redis", || {
        holders_at(&b, parsed.content).contains(&uploader.node_id).then_some(())
    });
    let downloaders: Vec<Daemon> =
        (0..3).map(|i| Daemon::start(&root.join(format!("d{i}")), &["--tracker", &both])).collect();
    let fetches: Vec<Fetch> = downloaders
        .iter()
        .enumerate()
        .map(|(i, d)| Fetch::start(&d.dir, &ticket, &root.join(format!("out{i}.bin")), &[]))
        .collect();
    wait_until("a downloader to hold a piece", || {
        downloaders.iter().any(|d| first_holding(d).0 > 0).then_some(())
    });
    a.kill(); // SIGKILL, mid-swarm
    for (i, f) in fetches.into_iter().enumerate() {
        f.finish();
        let out = std::fs::read(root.join(format!("out{i}.bin"))).unwrap();
        assert!(out == data, "downloader {i} holds a byte-identical copy");
    }
    // The uploader pushes into storage through b (which names storage), then goes mid-push.
    let mut pushing = uploader.cmd();
    pushing.args(["push"]).arg(&src);
    let mut push = pushing.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("the push to start", || (first_holding(&storage).0 > 0).then_some(()));
    uploader.kill(); // SIGKILL, mid-push
    let _ = push.wait();
    let (have, total) = first_holding(&storage);
    assert!(
        have < total,
        "precondition: storage is incomplete when the uploader goes ({have}/{total})"
    );
    // b sees the push stall and directs the downloaders, now its nodes, to push the rest.
    wait_until("storage to complete through b", || {
        let (have, total) = first_holding(&storage);
        (have == total).then_some(())
    });
    let pushed: u64 = downloaders
        .iter()
        .map(|d| {
            let st = d.status();
            st["pushed_bytes"].as_u64().unwrap()
        })
        .sum();
    assert!(pushed > 0, "downloaders re-seeded storage");
    drop(downloaders);
    // A fresh node with the ticket alone (its first tracker dead) finds storage through b.
    let bare = shoal_core::Ticket { peers: vec![], ..parsed };
    let out = root.join("fresh.bin");
    get_json(&root.join("fresh"), &bare.to_string(), &out, &[]);
    assert!(std::fs::read(&out).unwrap() == data, "byte-identical from storage");
}

/// A replica whose warnings the test reads, killed on drop.
struct Watched {
    child: Child,
    addr: std::net::SocketAddr,
    node_id: String,
    stderr: mpsc::Receiver<String>,
    _stdout: mpsc::Receiver<String>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Watched {
    fn start(dir: &Path, redis: &Redis) -> Watched {
        let mut child = Command::new(tracker_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(["--backend", &redis.url(), "--heartbeat", "1", "--node-ttl", "30"])
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let line = wait_line(&stdout, "tracker start", |l| l.starts_with("shoal-tracker: node "));
        let words: Vec<&str> = line.split_whitespace().collect();
        let node_id = words[2].to_string();
        let addr = words[5].trim_end_matches(',').parse().unwrap();
        Watched { child, addr, node_id, stderr, _stdout: stdout }
    }
}

#[test]
fn a_replica_serves_through_a_redis_outage_and_writes_the_state_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let redis_dir = root.join("redis");
    let Some(redis) = Redis::start(&redis_dir) else { return };
    let a = Watched::start(&root.join("a"), &redis);
    let node =
        Daemon::start(&root.join("node"), &["--tracker", &format!("{}@{}", a.node_id, a.addr)]);
    let src = root.join("f.bin");
    write_file(&src, 200_000, 62);
    let content = node.add(&src).parse::<shoal_core::Ticket>().unwrap().content;
    wait_until("a to know the node", || {
        lookup_holders(a.addr, content).contains(&node.node_id).then_some(())
    });
    // Redis goes away: a says so, and keeps answering from memory.
    drop(redis);
    wait_line(&a.stderr, "the outage warning", |l| l.contains("Redis unreachable"));
    assert!(lookup_holders(a.addr, content).contains(&node.node_id));
    // Back, but empty: a writes its state (and key) back, and a new replica loads it.
    let redis = Redis::start(&redis_dir).unwrap();
    wait_line(&a.stderr, "the state written back", |l| l.contains("Redis lost the shared state"));
    let c = wait_until("a new replica to load the state written back", || {
        let c = replica(&root.join("c"), &redis, &root.join("no-storage"));
        let known = lookup_holders(c.addr, content).contains(&node.node_id);
        known.then_some(c)
    });
    assert_eq!(c.node_id, a.node_id, "the key written back is the one every replica uses");
}

#[test]
fn a_bad_backend_or_an_unreachable_redis_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = |backend: &str| {
        let mut c = Command::new(tracker_bin());
        c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(tmp.path().join("t"));
        c.args(["--backend", backend]).env("SHOAL_LOG", "warn");
        c
    };
    let e = fails(serve("mysql://h:1"));
    assert!(e.contains("redis://HOST:PORT") && e.contains("sled"), "{e}");
    // A unix socket nobody listens on: refused at once, naming what to check.
    let gone = format!("redis+unix://{}", tmp.path().join("none.sock").display());
    let e = fails(serve(&gone));
    assert!(e.contains("cannot reach Redis at") && e.contains("redis-server running"), "{e}");
    // A value that is not a tracker key where the key should be.
    let Some(redis) = Redis::start(&tmp.path().join("redis")) else { return };
    let mut raw = std::os::unix::net::UnixStream::connect(&redis.socket).unwrap();
    use std::io::{Read, Write};
    raw.write_all(b"*3\r\n$3\r\nSET\r\n$17\r\nshoal:tracker:key\r\n$4\r\njunk\r\n").unwrap();
    let mut ok = [0u8; 5];
    raw.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let e = fails(serve(&redis.url()));
    assert!(e.contains("is not a key") && e.contains("shoal:tracker:key"), "{e}");
}
