//! Cloud storage: pushes that are already stored or half done, the re-seed story, tokens.

use std::process::Stdio;

use crate::support::*;

/// A tracker (re-seeding quickly) and a storage node on `backend` ("local" or "s3") that
/// grants space to the users of `pushers` (data dirs).
struct Cluster {
    _s3: Option<S3Server>,
    tracker: TrackerProc,
    storage: Daemon,
}

fn cluster(root: &std::path::Path, backend: &str, pushers: &[&str]) -> Option<Cluster> {
    let tracker = TrackerProc::start_admitting(
        &root.join("tracker"),
        "127.0.0.1:0",
        &[&root.join("storage")],
        &["--heartbeat", "1", "--node-ttl", "3", "--reseed-after", "2", "--http", "127.0.0.1:0"],
    );
    let t = tracker.addr.to_string();
    let mut args = vec!["--tracker".to_string(), t, "--role".into(), "storage".into()];
    let dirs: Vec<std::path::PathBuf> = pushers.iter().map(|p| root.join(p)).collect();
    args.extend(grant_args(&dirs.iter().map(|d| d.as_path()).collect::<Vec<_>>()));
    let (s3, env) = if backend == "s3" {
        let s3 = S3Server::start()?;
        let (a, env) = s3.storage_args();
        args.extend(a);
        (Some(s3), env)
    } else {
        (None, vec![])
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let storage = Daemon::start_env(&root.join("storage"), &args, &env);
    Some(Cluster { _s3: s3, tracker, storage })
}

fn push(node: &Daemon, target: &str) -> serde_json::Value {
    let mut c = node.cmd();
    c.args(["push", target, "--json"]);
    serde_json::from_str(ok(c).trim()).unwrap()
}

#[test]
fn pushing_twice_sends_nothing_the_second_time() {
    for backend in ["local", "s3"] {
        let tmp = tempfile::tempdir().unwrap();
        let Some(c) = cluster(tmp.path(), backend, &["node"]) else { continue };
        let t = c.tracker.addr.to_string();
        let node = Daemon::start(&tmp.path().join("node"), &["--tracker", &t]);
        let src = tmp.path().join("f.bin");
        write_file(&src, 1_000_000, 21);
        let first = push(&node, src.to_str().unwrap());
        assert_eq!(first["pushed_bytes"], 1_000_000, "{backend}: {first}");
        assert_eq!(first["stored"], true);
        assert_eq!(first["already_stored"], false);
        let second = push(&node, first["content_id"].as_str().unwrap());
        assert_eq!(second["pushed_bytes"], 0, "{backend}: no piece bytes the second time");
        assert_eq!(second["already_stored"], true);
        let (have, total) = first_holding(&c.storage);
        assert_eq!((have, total), (62, 62), "{backend}");
        let status = node.status();
        assert_eq!(status["contents"][0]["stored"], true, "{backend}: {status}");
    }
}

#[test]
fn a_push_started_before_any_storage_node_waits_for_one_to_register() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tracker = TrackerProc::start_admitting(
        &root.join("tracker"),
        "127.0.0.1:0",
        &[&root.join("storage")],
        &["--heartbeat", "1", "--http", "127.0.0.1:0"],
    );
    let t = tracker.addr.to_string();
    let node = Daemon::start(&root.join("node"), &["--tracker", &t]);
    let src = root.join("f.bin");
    write_file(&src, 500_000, 23);
    // The push asks the tracker while it knows no storage node at all...
    let mut c = node.cmd();
    c.args(["push", src.to_str().unwrap(), "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let pushing = c.spawn().unwrap();
    wait_until("the push to ask for storage in vain", || {
        let asked = tracker.metric_line("shoal_tracker_storage_queries_total{found=\"none\"}");
        asked.filter(|&n| n >= 1)
    });
    // ...and the storage node its operator starts a moment later takes it.
    let mut args = vec!["--tracker".to_string(), t, "--role".into(), "storage".into()];
    args.extend(grant_args(&[&root.join("node")]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let storage = Daemon::start(&root.join("storage"), &args);
    let out = pushing.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stored"], true, "{report}");
    assert_eq!(first_holding(&storage), (31, 31));
}

#[test]
fn an_origin_pushing_while_it_seeds_leaves_storage_complete() {
    // The seed's uplink (4 MiB/s) is shared by a downloader and a push into storage: the push
    // sends first the pieces no downloader was sent, and the ones the downloader has in a
    // second pass, so it ends with everything stored. (How much of the seed's uplink that
    // saves depends on timing: the testnet's report measures it, BENCHMARKS.md records it.)
    let tmp = tempfile::tempdir().unwrap();
    let Some(c) = cluster(tmp.path(), "local", &["seed"]) else { return };
    let t = c.tracker.addr.to_string();
    let seed =
        Daemon::start(&tmp.path().join("seed"), &["--tracker", &t, "--upload-limit", "4MiB/s"]);
    let src = tmp.path().join("f.bin");
    let len = 8 * 1024 * 1024;
    let data = write_file(&src, len, 27);
    let ticket = seed.add(&src);
    let down = Daemon::start(&tmp.path().join("down"), &["--tracker", &t]);
    let out = tmp.path().join("out.bin");
    let mut push = seed.cmd();
    push.args(["push", src.to_str().unwrap(), "--json"]).stdout(Stdio::piped());
    let pushing = push.spawn().unwrap();
    let fetch = Fetch::start(&down.dir, &ticket, &out, &[]);
    fetch.finish();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let st = seed.status();
    let sent = st["uploaded_bytes"].as_u64().unwrap() + st["pushed_bytes"].as_u64().unwrap();
    println!("by the end of the download the seed had sent {sent} bytes for a file of {len}");
    let pushed = pushing.wait_with_output().unwrap();
    assert!(pushed.status.success());
    let report: serde_json::Value = serde_json::from_slice(&pushed.stdout).unwrap();
    assert_eq!(report["stored"], true, "{report}");
    // 8 MiB: 256 pieces of 32 KiB.
    assert_eq!(first_holding(&c.storage), (256, 256));
}

#[test]
fn a_killed_push_resumes_with_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(tmp.path(), "local", &["node"]).unwrap();
    let t = c.tracker.addr.to_string();
    let node =
        Daemon::start(&tmp.path().join("node"), &["--tracker", &t, "--upload-limit", "1MiB/s"]);
    let src = tmp.path().join("f.bin");
    write_file(&src, 4 * 1024 * 1024, 22);
    // 4 MiB: 128 pieces of 32 KiB.
    let piece = 1u64 << shoal_core::piece::piece_log2_for(4 * 1024 * 1024);
    let total = 4 * 1024 * 1024 / piece;
    let mut cmd = node.cmd();
    cmd.args(["push"]).arg(&src).arg("--json");
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("some pieces in storage", || (first_holding(&c.storage).0 >= 20).then_some(()));
    child.kill().unwrap();
    child.wait().unwrap();
    // Once the cancelled push has settled, storage holds part of the file.
    let mut last = first_holding(&c.storage).0;
    let have = wait_until("storage to settle", || {
        let now = first_holding(&c.storage).0;
        let settled = now == last;
        last = now;
        settled.then_some(now)
    });
    assert!(have < total, "the push was cut short ({have}/{total})");
    let again = push(&node, src.to_str().unwrap());
    assert_eq!(again["stored"], true);
    assert_eq!(again["already_stored"], false);
    assert_eq!(again["pushed_bytes"], (total - have) * piece, "only the missing pieces: {again}");
}

#[test]
fn the_file_is_completed_in_storage_from_its_downloaders() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(tmp.path(), "local", &["uploader"]).unwrap();
    let t = c.tracker.addr.to_string();
    // The uploader's upload is slow, so its push is far from done when it goes away.
    let mut uploader =
        Daemon::start(&tmp.path().join("uploader"), &["--tracker", &t, "--upload-limit", "1MiB/s"]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 6 * 1024 * 1024, 23);
    let ticket = uploader.add(&src);
    let downloaders: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(&tmp.path().join(format!("d{i}")), &["--tracker", &t]))
        .collect();
    let fetches: Vec<Fetch> = downloaders
        .iter()
        .enumerate()
        .map(|(i, d)| Fetch::start(&d.dir, &ticket, &tmp.path().join(format!("out{i}.bin")), &[]))
        .collect();
    let mut pushing = uploader.cmd();
    pushing.args(["push"]).arg(&src);
    let mut push = pushing.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("the push to start", || (first_holding(&c.storage).1 > 0).then_some(()));
    for f in fetches {
        f.finish();
    }
    let (have, total) = first_holding(&c.storage);
    assert!(
        have < total,
        "precondition: storage is incomplete when the uploader goes ({have}/{total})"
    );
    uploader.kill(); // SIGKILL, mid-push
    let _ = push.wait();
    // The tracker sees the push stall and directs the downloaders to push the rest.
    wait_until("storage to complete", || {
        let (have, total) = first_holding(&c.storage);
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
    // Their metrics say the same: directives obeyed, bytes up to a storage peer.
    let obeyed = [("outcome", "obeyed")];
    wait_until("the directives counted as obeyed", || {
        let n: f64 = downloaders
            .iter()
            .map(|d| {
                crate::exposition::control_scrape(&d.dir)
                    .sum("shoal_reseed_directives_total", &obeyed)
            })
            .sum();
        (n >= 1.0).then_some(())
    });
    let to_storage: f64 = downloaders
        .iter()
        .map(|d| {
            let up = [("direction", "up"), ("peer", "storage")];
            crate::exposition::control_scrape(&d.dir).sum("shoal_peer_bytes_total", &up)
        })
        .sum();
    assert_eq!(to_storage, pushed as f64);
    assert!(c.tracker.metric("shoal_tracker_reseed_directives_total") >= 1);
    assert!(c.tracker.metric("shoal_tracker_reseed_pieces_total") >= 1);
    drop(downloaders);
    // A fresh node, knowing only the content id and the tracker, gets it from storage alone.
    let parsed: shoal_core::Ticket = ticket.parse().unwrap();
    let bare = shoal_core::Ticket { peers: vec![], ..parsed.clone() };
    let out = tmp.path().join("fresh.bin");
    let report = get_json(&tmp.path().join("fresh"), &bare.to_string(), &out, &[]);
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical from storage");
    let sources: Vec<&str> = report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pieces"].as_u64().unwrap() > 0)
        .map(|p| p["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec![c.storage.node_id.as_str()], "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_with_forged_or_expired_tokens_are_refused() {
    use shoal_core::{NodeId, PeerAddr, PieceIndex};
    use shoal_net::{Endpoint, Identity};
    use shoal_wire::tracker::ReseedToken;
    use shoal_wire::{Request, Response};

    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(tmp.path(), "local", &["node"]).unwrap();
    let t = c.tracker.addr.to_string();
    let node = Daemon::start(&tmp.path().join("node"), &["--tracker", &t]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 100_000, 24);
    let pushed = tokio::task::spawn_blocking({
        let (cmd_dir, src) = (node.dir.clone(), src.clone());
        move || {
            let mut c = shoal(&cmd_dir);
            c.args(["push"]).arg(&src).arg("--json");
            serde_json::from_str::<serde_json::Value>(ok(c).trim()).unwrap()
        }
    })
    .await
    .unwrap();
    let content: shoal_core::ContentId = pushed["content_id"].as_str().unwrap().parse().unwrap();
    let storage_id: NodeId = c.storage.node_id.parse().unwrap();
    let tracker_key = Identity::load_or_create(&tmp.path().join("tracker")).unwrap();

    let mallory = Identity::generate();
    let ep = Endpoint::bind(&mallory, "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
    let (conn, _) = ep
        .connect(&PeerAddr { node_id: Some(storage_id), addr: c.storage.addr }, shoal_wire::ALPN)
        .await
        .unwrap();
    let piece = &data[..16384];
    let attempt = |token: Option<Vec<u8>>| {
        let req = Request::PushPiece {
            content,
            piece: PieceIndex(0),
            len: piece.len() as u32,
            cert: None,
            token,
        };
        let conn = conn.clone();
        async move { raw_request(&conn, &req, piece).await }
    };
    let token = |signer: &Identity, holder: NodeId, expires_ms: u64| {
        let mut t = ReseedToken {
            content,
            storage: storage_id,
            holder,
            expires_ms,
            pieces: vec![PieceIndex(0)],
            signature: vec![],
        };
        t.signature = signer.sign(&t.signed_bytes());
        t.encode()
    };
    let later =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64
            + 60_000;
    let refused = |r: Response, want: &str| match r {
        Response::Reject { reason: shoal_wire::RejectReason::Unauthorized, text } => {
            assert!(text.contains(want), "{text:?} should say {want:?}")
        }
        other => panic!("expected a refusal saying {want:?}, got {other:?}"),
    };
    refused(attempt(None).await, "no re-seed token");
    refused(
        attempt(Some(token(&mallory, mallory.node_id(), later))).await,
        "not signed by this storage node's tracker",
    );
    refused(attempt(Some(token(&tracker_key, mallory.node_id(), 1))).await, "expired");
    refused(
        attempt(Some(token(&tracker_key, node.node_id.parse().unwrap(), later))).await,
        "issued to another node",
    );
    // A token the tracker really issued to this node is honoured.
    match attempt(Some(token(&tracker_key, mallory.node_id(), later))).await {
        Response::Pushed { already: true, complete: true } => {}
        other => panic!("valid token refused: {other:?}"),
    }
    let status = tokio::task::spawn_blocking(move || {
        let mut s = c.storage.cmd();
        s.args(["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&ok(s)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status["pushes_refused"], 4, "{status}");
}

#[test]
fn a_storage_node_killed_mid_write_comes_back_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cluster(tmp.path(), "local", &["node"]).unwrap();
    let t = c.tracker.addr.to_string();
    let node =
        Daemon::start(&tmp.path().join("node"), &["--tracker", &t, "--upload-limit", "2MiB/s"]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 4 * 1024 * 1024, 25);
    let mut cmd = node.cmd();
    cmd.args(["push"]).arg(&src);
    let mut push = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("pieces in storage", || (first_holding(&c.storage).0 >= 10).then_some(()));
    c.storage.kill(); // SIGKILL while pieces are being written
    push.kill().unwrap();
    push.wait().unwrap();
    let storage_dir = tmp.path().join("storage");
    let grant = user_id(&node.dir);
    c.storage =
        Daemon::start(&storage_dir, &["--tracker", &t, "--role", "storage", "--grant", &grant]);
    let (have, total) = first_holding(&c.storage);
    assert!(have < total, "{have}/{total}");
    // Pushing again completes it: the index only claimed pieces whose objects exist.
    let again = {
        wait_until("storage registered again", || {
            let o = run({
                let mut p = node.cmd();
                p.args(["push"]).arg(&src).arg("--json");
                p
            });
            o.status
                .success()
                .then(|| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
        })
    };
    assert_eq!(again["stored"], true, "{again}");
    let piece = 1u64 << shoal_core::piece::piece_log2_for(data.len() as u64);
    assert_eq!(again["pushed_bytes"], (total - have) * piece, "only the missing pieces: {again}");
    drop(node);
    // A ticket naming only the storage node: the content is fetched from storage alone.
    let ticket = shoal_core::Ticket {
        peers: vec![shoal_core::PeerAddr {
            node_id: Some(c.storage.node_id.parse().unwrap()),
            addr: c.storage.addr,
        }],
        ..shoal_core::Ticket::new(again["content_id"].as_str().unwrap().parse().unwrap())
    };
    let out = tmp.path().join("out.bin");
    get_json(&tmp.path().join("fresh"), &ticket.to_string(), &out, &[]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn storage_that_cannot_write_is_retried_then_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(tmp.path(), "local", &["node"]).unwrap();
    let t = c.tracker.addr.to_string();
    let node = Daemon::start(&tmp.path().join("node"), &["--tracker", &t]);
    let src = tmp.path().join("f.bin");
    write_file(&src, 50_000, 26);
    // The storage node's default store is DATA_DIR/objects; block its pieces directory.
    let blocker = c.storage.dir.join("objects").join("pieces");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap();
    let mut p = node.cmd();
    p.args(["push"]).arg(&src);
    let err = fails(p);
    assert!(err.contains("storage cannot write now") && err.contains("retry later"), "{err}");
    assert_eq!(first_holding(&c.storage).0, 0);
    // Once storage can write again, the same push completes.
    std::fs::remove_file(&blocker).unwrap();
    assert_eq!(push(&node, src.to_str().unwrap())["stored"], true);
}
