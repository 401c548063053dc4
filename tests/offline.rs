//! Offline download end to end: a real nginx origin, a tracker, a storage node and a user's
//! node, all real binaries.

use std::path::Path;

use crate::support::*;

/// A tracker and a storage node granting `users` (data dirs), with `storage_extra` flags.
fn cluster(root: &Path, users: &[&Path], storage_extra: &[&str]) -> (TrackerProc, Daemon) {
    cluster_with(root, users, storage_extra, &[])
}

/// [`cluster`] with flags for the tracker too.
fn cluster_with(
    root: &Path,
    users: &[&Path],
    storage_extra: &[&str],
    tracker_extra: &[&str],
) -> (TrackerProc, Daemon) {
    let tracker = TrackerProc::start_admitting(
        &root.join("tracker"),
        "127.0.0.1:0",
        &[&root.join("storage")],
        tracker_extra,
    );
    let mut args =
        vec!["--tracker".to_string(), tracker.addr.to_string(), "--role".into(), "storage".into()];
    args.extend(grant_args(users));
    args.extend(storage_extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let storage = Daemon::start(&root.join("storage"), &args);
    (tracker, storage)
}

/// The directory nginx serves, made.
fn www_dir(root: &Path) -> std::path::PathBuf {
    let www = root.join("www");
    std::fs::create_dir_all(&www).unwrap();
    www
}

/// Makes a user key on `laptop` and links `phone` to it (`user new`, `link`, `use`).
fn link_devices(laptop: &Path, phone: &Path) {
    std::fs::create_dir_all(laptop).unwrap();
    ok_in(laptop, &["user", "new"]);
    let phone_id = json_in(phone, &["user", "--json"])["node_id"].as_str().unwrap().to_string();
    let cert = ok_in(laptop, &["user", "link", &phone_id]).trim().to_string();
    ok_in(phone, &["user", "use", &cert]);
}

/// The JSON a command prints.
fn json_cmd(c: std::process::Command) -> serde_json::Value {
    serde_json::from_str(ok(c).trim()).unwrap()
}

/// `shoal ARGS` on a daemon's data dir: its JSON output (the command must succeed).
fn json_of(d: &Daemon, args: &[&str]) -> serde_json::Value {
    json_in(&d.dir, args)
}

/// `shoal ARGS` on a daemon's data dir: its output (the command must succeed).
fn ok_of(d: &Daemon, args: &[&str]) -> String {
    ok_in(&d.dir, args)
}

/// `shoal ARGS` on a daemon's data dir: its one error line (the command must fail).
fn fails_of(d: &Daemon, args: &[&str]) -> String {
    fails_in(&d.dir, args)
}

/// `shoal ARGS` on `dir`: its JSON output.
fn json_in(dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(ok_in(dir, args).trim()).unwrap()
}

/// `shoal ARGS` on `dir`: its output (must succeed).
fn ok_in(dir: &Path, args: &[&str]) -> String {
    let mut c = shoal(dir);
    c.args(args);
    ok(c)
}

/// `shoal ARGS` on `dir`: its error line (must fail).
fn fails_in(dir: &Path, args: &[&str]) -> String {
    let mut c = shoal(dir);
    c.args(args);
    fails(c)
}

fn space(node: &Daemon) -> serde_json::Value {
    json_of(node, &["space", "ls", "--json"])
}

/// The content id `shoal add` gives `data` named `name`.
fn content_id(name: &str, data: &[u8]) -> String {
    let piece = 1usize << shoal_core::piece::piece_log2_for(data.len() as u64);
    let hashes = data.chunks(piece).map(shoal_core::PieceHash::of).collect();
    shoal_core::Manifest::new(name, data.len() as u64, hashes).unwrap().content_id().to_string()
}

#[test]
fn a_followed_task_lands_verified_in_the_file_and_permanent_in_the_space() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    // 10 MiB: three segments, so the follower starts before the origin is done.
    let data = write_file(&www.join("big.bin"), 10 << 20, 7);
    let Some(nginx) = Nginx::start(&www) else { return };
    let user = root.path().join("user");
    let (tracker, storage) = cluster(root.path(), &[&user], &["--offline-allow-private"]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);

    let out = root.path().join("out.bin");
    let mut c = node.cmd();
    c.args(["offline", "add", &nginx.url("big.bin"), "--follow", "--json", "-o"]).arg(&out);
    let report = json_cmd(c);
    assert_eq!(std::fs::read(&out).unwrap(), data, "the followed file is the origin's bytes");
    let id = content_id("big.bin", &data);
    assert_eq!(report["content_id"], id);
    assert_eq!(report["size"], data.len() as u64);
    assert_eq!(report["instant"], false);
    let first = report["first_segment_s"].as_f64().unwrap();
    assert!(first <= report["origin_done_s"].as_f64().unwrap());
    assert!(report["origin_done_s"].as_f64().unwrap() <= report["done_s"].as_f64().unwrap());
    // No partial file is left beside the output.
    let left: Vec<_> =
        std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().ends_with(".shoal-part")), "{left:?}");

    // The space holds it, permanent, under the URL's name.
    let s = space(&node);
    assert_eq!(s.as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s[0]["name"], "big.bin");
    assert_eq!(s[0]["state"], "permanent");
    assert_eq!(s[0]["content_id"], id);
    assert_eq!(s[0]["size"], data.len() as u64);

    // The task is listed done.
    let tasks = json_of(&node, &["offline", "ls", "--json"]);
    assert_eq!(tasks[0]["state"], "done", "{tasks}");
    assert_eq!(tasks[0]["content_id"], id);

    // The same URL again is instant: storage has it and the origin reports the same resource.
    let again =
        json_of(&node, &["offline", "add", &nginx.url("big.bin"), "--name", "again.bin", "--json"]);
    assert_eq!(again["instant"], true, "{again}");
    let s = space(&node);
    assert_eq!(s.as_array().unwrap().len(), 2, "{s}");

    // `space get` fetches an entry like `get`.
    let copy = root.path().join("copy.bin");
    let mut c = node.cmd();
    c.args(["space", "get", "big.bin", "-o"]).arg(&copy);
    ok(c);
    assert_eq!(std::fs::read(&copy).unwrap(), data);

    // `space rm` removes an entry; a second time it names the problem.
    ok_of(&node, &["space", "rm", "again.bin"]);
    assert_eq!(space(&node).as_array().unwrap().len(), 1);
    let e = fails_of(&node, &["space", "rm", "again.bin"]);
    assert!(e.contains("no entry named"), "{e}");

    // Removing the last entry of a content nobody else owns deletes it from storage: the quota
    // bounds the disk, not only the listing.
    let held = |d: &Daemon| d.ls().to_string().contains(&id);
    assert!(held(&storage), "{}", storage.ls());
    ok_of(&node, &["space", "rm", "big.bin"]);
    assert_eq!(space(&node), serde_json::json!([]));
    assert!(!held(&storage), "{}", storage.ls());
}

#[test]
fn watch_prints_accepted_segments_progress_and_done_as_json_lines() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    let data = write_file(&www.join("w.bin"), 9 << 20, 3);
    let Some(nginx) = Nginx::start(&www) else { return };
    let user = root.path().join("user");
    let (tracker, _storage) = cluster(root.path(), &[&user], &["--offline-allow-private"]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let task = json_of(&node, &["offline", "add", &nginx.url("w.bin"), "--json"])["task"]
        .as_str()
        .unwrap()
        .to_string();
    let mut c = node.cmd();
    c.args(["offline", "watch", &task, "--json"]);
    let events: Vec<serde_json::Value> =
        ok(c).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"accepted"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    // The segments cover the file exactly once.
    let mut covered: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["event"] == "segment")
        .map(|e| (e["offset"].as_u64().unwrap(), e["len"].as_u64().unwrap()))
        .collect();
    covered.sort();
    let mut at = 0;
    for (off, len) in covered {
        assert_eq!(off, at, "segments leave no gap and do not overlap");
        at += len;
    }
    assert_eq!(at, data.len() as u64);
    assert_eq!(events.last().unwrap()["content_id"], content_id("w.bin", &data));
}

#[test]
fn private_targets_are_refused_without_the_operators_leave_and_leave_nothing() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    write_file(&www.join("f.bin"), 100_000, 1);
    let Some(nginx) = Nginx::start(&www) else { return };
    let user = root.path().join("user");
    // No --offline-allow-private: loopback is off limits.
    let (tracker, _storage) = cluster(root.path(), &[&user], &[]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let out = root.path().join("out.bin");
    let mut c = node.cmd();
    c.args(["offline", "add", &nginx.url("f.bin"), "--follow", "-o"]).arg(&out);
    let e = fails(c);
    assert!(e.contains("--offline-allow-private"), "{e}");
    assert!(!out.exists());
    assert_eq!(space(&node), serde_json::json!([]), "the temporary entry is gone");
    assert_eq!(json_of(&node, &["offline", "ls", "--json"])[0]["state"], "failed");
}

#[test]
fn a_missing_resource_fails_the_task_and_an_ungranted_user_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    let Some(nginx) = Nginx::start(&www) else { return };
    let user = root.path().join("user");
    let stranger = root.path().join("stranger");
    let (tracker, _storage) = cluster(root.path(), &[&user], &["--offline-allow-private"]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let task = json_of(&node, &["offline", "add", &nginx.url("nope.bin"), "--json"])["task"]
        .as_str()
        .unwrap()
        .to_string();
    let e = fails_of(&node, &["offline", "watch", &task]);
    assert!(e.contains("404"), "{e}");
    assert_eq!(space(&node), serde_json::json!([]));

    let other = Daemon::start(&stranger, &["--tracker", &tracker.addr.to_string()]);
    let e = fails_of(&other, &["offline", "add", &nginx.url("x.bin")]);
    assert!(e.contains("has no space here"), "{e}");
    // Nor can it see the user's task.
    let e = fails_of(&other, &["offline", "watch", &task]);
    assert!(e.contains("no space here") || e.contains("no offline task"), "{e}");
}

/// `shoal offline watch TASK --json` as a child streaming its lines.
fn watch_lines(
    node: &Daemon,
    task: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut c = node.cmd();
    c.args(["offline", "watch", task, "--json"]);
    let mut child =
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let rx = lines(child.stdout.take().unwrap());
    (child, rx)
}

fn segment_offset(line: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["event"] == "segment").then(|| v["offset"].as_u64()).flatten()
}

#[test]
fn a_task_continues_after_storage_restarts_without_fetching_verified_segments_again() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    // 32 MiB, 8 segments, at 1 MiB/s per connection: storage is killed mid-way.
    let data = write_file(&www.join("slow.bin"), 32 << 20, 11);
    let Some(nginx) = Nginx::start_with(&www, "limit_rate 1m;") else { return };
    let user = root.path().join("user");
    let (tracker, mut storage) = cluster(root.path(), &[&user], &["--offline-allow-private"]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let task = json_of(&node, &["offline", "add", &nginx.url("slow.bin"), "--json"])["task"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut watcher, rx) = watch_lines(&node, &task);
    let first = segment_offset(&wait_line(&rx, "a first segment", |l| segment_offset(l).is_some()))
        .unwrap();
    storage.kill(); // SIGKILL mid-task
    watcher.kill().ok();
    watcher.wait().ok();
    let (_, requests_before) = nginx.bytes_sent();

    let mut args =
        vec!["--tracker".to_string(), tracker.addr.to_string(), "--role".into(), "storage".into()];
    args.extend(grant_args(&[&user]));
    args.push("--offline-allow-private".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _storage = Daemon::start(&root.path().join("storage"), &args);
    let last = wait_until("the task done after the restart", || {
        let mut c = node.cmd();
        c.args(["offline", "watch", &task, "--json"]);
        let o = run(c);
        o.status.success().then(|| String::from_utf8(o.stdout).unwrap())
    });
    assert!(last.lines().last().unwrap().contains("\"done\""), "{last}");
    // Requests after the restart never asked again for the segment verified before it.
    let log = std::fs::read_to_string(nginx.log_path()).unwrap();
    let again: Vec<&str> = log.lines().skip(requests_before).collect();
    assert!(!again.is_empty());
    // (The probe asks for bytes=0-0; a segment is 4 MiB.)
    let asked = format!("bytes={first}-{}", first + (4 << 20) - 1);
    assert!(
        !again.iter().any(|l| l.contains(&asked)),
        "segment at {first} fetched again: {again:?}"
    );
    let copy = root.path().join("copy.bin");
    let mut c = node.cmd();
    c.args(["space", "get", "slow.bin", "-o"]).arg(&copy);
    ok(c);
    assert_eq!(std::fs::read(&copy).unwrap(), data);
}

#[test]
fn a_resource_changing_mid_task_restarts_it_cleanly_with_the_new_version() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    // 64 MiB, 16 segments fetched 4 at a time at 2 MiB/s each: the swap below lands while
    // most segments are still to be asked for.
    write_file(&www.join("moving.bin"), 64 << 20, 1);
    let Some(nginx) = Nginx::start_with(&www, "limit_rate 2m;") else { return };
    let user = root.path().join("user");
    let (tracker, _storage) = cluster(root.path(), &[&user], &["--offline-allow-private"]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let out = root.path().join("out.bin");
    let mut c = node.cmd();
    c.args(["offline", "add", &nginx.url("moving.bin"), "--follow", "--json", "-o"]).arg(&out);
    let follow = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let task = wait_until("the task listed", || {
        let v = json_of(&node, &["offline", "ls", "--json"]);
        v[0]["task"].as_str().map(str::to_string)
    });
    let (mut watcher, rx) = watch_lines(&node, &task);
    wait_line(&rx, "a first segment", |l| segment_offset(l).is_some());
    // A new version, swapped in whole (a new mtime and size: a new ETag).
    let tmp = www.join(".moving.tmp");
    let new = write_file(&tmp, (64 << 20) + 12345, 2);
    std::fs::rename(&tmp, www.join("moving.bin")).unwrap();
    wait_line(&rx, "the restart", |l| l.contains("\"restarted\""));
    let done = wait_line(&rx, "done", |l| l.contains("\"done\"") || l.contains("\"failed\""));
    watcher.kill().ok();
    watcher.wait().ok();
    assert!(done.contains("\"done\""), "{done}");
    let o = follow.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["size"], new.len() as u64);
    // The followed file is the new version alone: no mixed pieces.
    assert_eq!(std::fs::read(&out).unwrap(), new);
    assert_eq!(report["content_id"], content_id("moving.bin", &new));
}

#[test]
fn temporary_data_counts_against_the_quota_of_tasks_underway() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    write_file(&www.join("a.bin"), 10 << 20, 1);
    write_file(&www.join("b.bin"), 10 << 20, 2);
    let Some(nginx) = Nginx::start_with(&www, "limit_rate 4m;") else { return };
    let user = root.path().join("user");
    let grant = format!("{}=15MiB", user_id(&user));
    let (tracker, _storage) =
        cluster(root.path(), &[], &["--offline-allow-private", "--grant", &grant]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let tasks: Vec<String> = ["a.bin", "b.bin"]
        .iter()
        .map(|f| {
            json_of(&node, &["offline", "add", &nginx.url(f), "--json"])["task"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let outcomes: Vec<std::process::Output> = tasks
        .iter()
        .map(|t| {
            let mut c = node.cmd();
            c.args(["offline", "watch", t]);
            run(c)
        })
        .collect();
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert_eq!(failed.len(), 1, "one task fits the 15 MiB quota, not both: {failed:?}");
    assert!(failed[0].contains("over quota"), "{}", failed[0]);
    let s = space(&node);
    assert_eq!(s.as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s[0]["state"], "permanent");
}

#[test]
fn a_linked_device_acts_for_the_user_and_sees_the_same_space() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    let data = write_file(&www.join("shared.bin"), 300_000, 5);
    let Some(nginx) = Nginx::start(&www) else { return };
    let (laptop, phone) = (root.path().join("laptop"), root.path().join("phone"));
    std::fs::create_dir_all(&laptop).unwrap();
    let user = ok_in(&laptop, &["user", "new"]).trim().to_string();
    let (tracker, _storage) = cluster(root.path(), &[&laptop], &["--offline-allow-private"]);
    let t = tracker.addr.to_string();
    let phone_node = json_in(&phone, &["user", "--json"])["node_id"].as_str().unwrap().to_string();
    // A device without the user key cannot link anyone.
    assert!(fails_in(&phone, &["user", "link", &phone_node]).contains("no user key"));
    let cert = ok_in(&laptop, &["user", "link", &phone_node]).trim().to_string();
    // The certificate names the phone: another device cannot use it.
    let mut c = shoal(&root.path().join("thief"));
    c.args(["user", "use", &cert]);
    assert!(fails(c).contains("not this connection's node"));
    assert_eq!(ok_in(&phone, &["user", "use", &cert]).trim(), user);
    let mut c = shoal(&phone);
    c.arg("user");
    assert_eq!(ok(c).trim(), user, "the phone now acts for the laptop's user");

    let laptop_node = Daemon::start(&laptop, &["--tracker", &t]);
    let phone_node = Daemon::start(&phone, &["--tracker", &t]);
    let out = root.path().join("out.bin");
    let mut c = phone_node.cmd();
    c.args(["offline", "add", &nginx.url("shared.bin"), "--follow", "-o"]).arg(&out);
    ok(c);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // The laptop sees what the phone put in their user's space.
    let s = space(&laptop_node);
    assert_eq!(s[0]["name"], "shared.bin", "{s}");
    assert_eq!(s[0]["state"], "permanent");
}

#[test]
fn a_task_names_its_resource_by_an_id_the_tracker_maps_to_a_url() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    let data = write_file(&www.join("release.tar"), 700_000, 9);
    let Some(nginx) = Nginx::start(&www) else { return };
    let user = root.path().join("user");
    let source = format!("release-1.0={}", nginx.url("release.tar"));
    let (tracker, storage) = cluster_with(
        root.path(),
        &[&user],
        &["--offline-allow-private"],
        &["--offline-source", &source, "--http", "127.0.0.1:0"],
    );
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let out = root.path().join("out.tar");
    let mut c = node.cmd();
    c.args(["offline", "add", "--id", "release-1.0", "--follow", "--json", "-o"]).arg(&out);
    let report = json_cmd(c);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(report["content_id"], content_id("release.tar", &data));
    let e = fails_of(&node, &["offline", "add", "--id", "release-2.0"]);
    assert!(e.contains("knows no resource"), "{e}");
    // The tracker counted both resolutions, the storage node its finished task.
    let t = crate::exposition::scrape(tracker.http.as_deref().unwrap());
    assert_eq!(t.sum("shoal_tracker_offline_sources_total", &[("found", "true")]), 1.0);
    assert_eq!(t.sum("shoal_tracker_offline_sources_total", &[("found", "false")]), 1.0);
    let m = crate::exposition::control_scrape(&storage.dir);
    assert_eq!(m.sum("shoal_offline_tasks", &[("state", "done")]), 1.0);
    assert_eq!(m.sum("shoal_offline_tasks", &[("state", "fetching")]), 0.0);
}

/// A tracker admitting two storage nodes, both granting `user` and fetching from loopback,
/// both registered (a home finds its helper through the tracker).
fn two_storage(root: &Path, user: &Path) -> (TrackerProc, Daemon, Daemon) {
    let (a, b) = (root.join("storage-a"), root.join("storage-b"));
    let tracker = TrackerProc::start_admitting(
        &root.join("tracker"),
        "127.0.0.1:0",
        &[&a, &b],
        &["--http", "127.0.0.1:0"],
    );
    let mut args =
        vec!["--tracker".to_string(), tracker.addr.to_string(), "--role".into(), "storage".into()];
    args.extend(grant_args(&[user]));
    args.push("--offline-allow-private".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sa = Daemon::start(&a, &args);
    let sb = Daemon::start(&b, &args);
    wait_until("both storage nodes registered", || {
        (tracker.metric("shoal_tracker_nodes") >= 2).then_some(())
    });
    (tracker, sa, sb)
}

fn origin_bytes(d: &Daemon) -> u64 {
    json_of(d, &["status", "--json"])["offline_origin_bytes"].as_u64().unwrap()
}

#[test]
fn segments_are_split_between_storage_nodes_and_the_home_ends_with_all_of_them() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    // 24 MiB: 6 segments, shared between the two storage nodes.
    let data = write_file(&www.join("split.bin"), 24 << 20, 21);
    let Some(nginx) = Nginx::start_with(&www, "limit_rate 8m;") else { return };
    let user = root.path().join("user");
    let (tracker, sa, sb) = two_storage(root.path(), &user);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let out = root.path().join("out.bin");
    let mut c = node.cmd();
    c.args(["offline", "add", &nginx.url("split.bin"), "--follow", "--json", "-o"]).arg(&out);
    let report = json_cmd(c);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(report["content_id"], content_id("split.bin", &data));
    // Each fetched a share from the origin; together the file once.
    let (a, b) = (origin_bytes(&sa), origin_bytes(&sb));
    assert!(a > 0 && b > 0, "both fetched: {a} and {b}");
    assert_eq!(a + b, data.len() as u64, "{a} + {b}");
    // The home holds the whole content; the helper kept nothing.
    let holds = |d: &Daemon| d.ls().to_string().contains(report["content_id"].as_str().unwrap());
    assert!(holds(&sa) ^ holds(&sb), "exactly one storage node keeps it");
}

#[test]
fn a_helper_that_dies_mid_share_leaves_its_segments_to_the_home() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    // 32 MiB at 2 MiB/s per connection: the helper is killed while its share is underway.
    let data = write_file(&www.join("slow.bin"), 32 << 20, 22);
    let Some(nginx) = Nginx::start_with(&www, "limit_rate 2m;") else { return };
    let user = root.path().join("user");
    let (tracker, mut sa, mut sb) = two_storage(root.path(), &user);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let added = json_of(&node, &["offline", "add", &nginx.url("slow.bin"), "--json"]);
    let task = added["task"].as_str().unwrap().to_string();
    let home_is_a = added["storage"].as_str().unwrap().starts_with(&sa.node_id);
    let helper = if home_is_a { &sb } else { &sa };
    wait_until("the helper fetching its share", || (origin_bytes(helper) > 0).then_some(()));
    if home_is_a {
        sb.kill()
    } else {
        sa.kill()
    }
    ok_of(&node, &["offline", "watch", &task]);
    let out = root.path().join("out.bin");
    let mut c = node.cmd();
    c.args(["space", "get", "slow.bin", "-o"]).arg(&out);
    ok(c);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn a_cancelled_task_leaves_no_temporary_data_and_no_entry() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    write_file(&www.join("slow.bin"), 16 << 20, 4);
    let Some(nginx) = Nginx::start_with(&www, "limit_rate 1m;") else { return };
    let user = root.path().join("user");
    let (tracker, _storage) = cluster(root.path(), &[&user], &["--offline-allow-private"]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let task = json_of(&node, &["offline", "add", &nginx.url("slow.bin"), "--json"])["task"]
        .as_str()
        .unwrap()
        .to_string();
    let parts = || -> usize {
        std::fs::read_dir(root.path().join("storage/offline"))
            .map(|d| {
                d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".part")).count()
            })
            .unwrap_or(0)
    };
    wait_until("the temporary file", || (parts() == 1).then_some(()));
    // A temporary entry cannot be removed: the task is cancelled instead.
    assert!(fails_of(&node, &["space", "rm", "slow.bin"]).contains("still being fetched"));
    ok_of(&node, &["offline", "cancel", &task]);
    assert!(fails_of(&node, &["offline", "watch", &task]).contains("cancelled"));
    assert_eq!(parts(), 0, "the temporary file is gone");
    assert_eq!(space(&node), serde_json::json!([]));
    assert_eq!(json_of(&node, &["offline", "ls", "--json"])[0]["state"], "cancelled");
}

#[test]
fn a_device_with_a_sync_dir_receives_what_another_device_fetched_into_the_space() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    let first = write_file(&www.join("first.bin"), 400_000, 31);
    let second = write_file(&www.join("second.bin"), 3 << 20, 32);
    let Some(nginx) = Nginx::start(&www) else { return };
    let (laptop, phone) = (root.path().join("laptop"), root.path().join("phone"));
    link_devices(&laptop, &phone);
    let (tracker, _storage) = cluster(root.path(), &[&laptop], &["--offline-allow-private"]);
    let t = tracker.addr.to_string();

    let laptop_node = Daemon::start(&laptop, &["--tracker", &t]);
    // In the space before the phone's daemon starts.
    let task = ok_of(&laptop_node, &["offline", "add", &nginx.url("first.bin")]).trim().to_string();
    ok_of(&laptop_node, &["offline", "watch", &task]);

    let synced = root.path().join("synced");
    std::fs::create_dir_all(&synced).unwrap();
    let sync = synced.to_str().unwrap().to_string();
    let _phone_node = Daemon::start(&phone, &["--tracker", &t, "--sync-dir", &sync]);
    let arrived = |name: &str, want: &[u8]| {
        wait_until(&format!("{name} synced"), || {
            std::fs::read(synced.join(name)).ok().filter(|d| d == want).map(|_| ())
        })
    };
    arrived("first.bin", &first);
    // And one added while it runs.
    ok_of(&laptop_node, &["offline", "add", &nginx.url("second.bin")]);
    arrived("second.bin", &second);
    // Nothing half-written was ever left in the directory.
    let names: Vec<String> = std::fs::read_dir(&synced)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn two_devices_following_one_task_take_pieces_from_each_other() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    // 32 MiB (512 pieces) at 4 MiB/s per connection: both devices follow for seconds.
    let data = write_file(&www.join("shared.bin"), 32 << 20, 41);
    let Some(nginx) = Nginx::start_with(&www, "limit_rate 4m;") else { return };
    let (laptop, phone) = (root.path().join("laptop"), root.path().join("phone"));
    link_devices(&laptop, &phone);
    let (tracker, _storage) = cluster(root.path(), &[&laptop], &["--offline-allow-private"]);
    let t = tracker.addr.to_string();
    let laptop_node = Daemon::start(&laptop, &["--tracker", &t]);
    let phone_node = Daemon::start(&phone, &["--tracker", &t]);
    let task = json_of(&laptop_node, &["offline", "add", &nginx.url("shared.bin"), "--json"])
        ["task"]
        .as_str()
        .unwrap()
        .to_string();
    let follow = |d: &Daemon, out: &Path| {
        let mut c = d.cmd();
        c.args(["offline", "follow", &task, "--json", "-o"]).arg(out);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (root.path().join("a.bin"), root.path().join("b.bin"));
    let (fa, fb) = (follow(&laptop_node, &a), follow(&phone_node, &b));
    // Once a device serves the other, it holds verified pieces: a stranger who learned the task
    // id still gets none of them.
    let peer_bytes =
        |d: &Daemon| json_of(d, &["status", "--json"])["offline_peer_bytes"].as_u64().unwrap();
    let server = wait_until("a device serving the other", || {
        [&laptop_node, &phone_node].into_iter().find(|d| peer_bytes(d) > 0)
    });
    let target =
        shoal_core::PeerAddr { node_id: Some(server.node_id.parse().unwrap()), addr: server.addr };
    let task_id: shoal_core::TaskId = task.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let id = shoal_net::Identity::generate();
        let ep = shoal_net::Endpoint::bind(&id, "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
        let conn = ep.connect(&target, shoal_wire::ALPN).await.unwrap().0;
        for p in 0..32 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let req = shoal_wire::offline::OfflineRequest::Piece {
                cert: None,
                task: task_id,
                piece: shoal_core::PieceIndex(p),
                direct: true,
            };
            send.write_all(&shoal_wire::encode(&req)).await.unwrap();
            let _ = send.finish();
            let bytes = recv.read_to_end(1 << 20).await.unwrap();
            let mut d = shoal_wire::Decoder::new();
            d.feed(&bytes);
            let reply = d.decode::<shoal_wire::offline::PieceReply>().unwrap();
            assert!(
                matches!(
                    reply,
                    Some(shoal_wire::offline::PieceReply::Response(
                        shoal_wire::Response::Reject { .. }
                    ))
                ),
                "a stranger got piece {p}: {reply:?}"
            );
        }
    });
    for f in [fa, fb] {
        let o = f.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), data);
    assert_eq!(std::fs::read(&b).unwrap(), data);
    let shared = peer_bytes(&laptop_node) + peer_bytes(&phone_node);
    assert!(shared > 0, "the devices served each other nothing");
    eprintln!("followers served each other {shared} of {} bytes", data.len());
}

#[test]
fn assists_from_a_stranger_are_refused_and_cost_nothing() {
    let root = tempfile::tempdir().unwrap();
    let www = www_dir(root.path());
    let data = write_file(&www.join("f.bin"), 9 << 20, 51);
    let Some(nginx) = Nginx::start(&www) else { return };
    let user = root.path().join("user");
    let (tracker, storage) = cluster(root.path(), &[&user], &["--offline-allow-private"]);
    let target = shoal_core::PeerAddr {
        node_id: Some(storage.node_id.parse().unwrap()),
        addr: storage.addr,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let id = shoal_net::Identity::generate();
        let ep = shoal_net::Endpoint::bind(&id, "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
        let conn = ep.connect(&target, shoal_wire::ALPN).await.unwrap().0;
        // 200 assists, each naming the whole of the largest resource storage would take.
        for i in 0..200u32 {
            let size = 64u64 << 30;
            let layout_segments = shoal_core::offline::resource_pieces(size) as u32;
            let req = shoal_wire::offline::OfflineRequest::Assist {
                task: shoal_core::TaskId([i as u8; 16]),
                size,
                url: nginx.url("f.bin"),
                etag: None,
                last_modified: None,
                segments: shoal_core::Bitfield::full(layout_segments),
            };
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&shoal_wire::encode(&req)).await.unwrap();
            let _ = send.finish();
            let bytes = recv.read_to_end(1 << 20).await.unwrap();
            let mut d = shoal_wire::Decoder::with_limit(shoal_wire::offline::MAX_REPLY_LEN);
            d.feed(&bytes);
            match d.decode::<shoal_wire::offline::OfflineReply>().unwrap() {
                Some(shoal_wire::offline::OfflineReply::Reject { reason, .. }) => {
                    assert_eq!(reason, shoal_wire::RejectReason::Unauthorized, "assist {i}")
                }
                other => panic!("assist {i} from a stranger answered {other:?}"),
            }
        }
    });
    // Nothing was fetched for the stranger, and storage still serves its own user.
    let origin = json_of(&storage, &["status", "--json"])["offline_origin_bytes"].as_u64();
    assert_eq!(origin, Some(0));
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    let out = root.path().join("out.bin");
    let mut c = node.cmd();
    c.args(["offline", "add", &nginx.url("f.bin"), "--follow", "-o"]).arg(&out);
    ok(c);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn bad_offline_input_is_one_line_naming_the_problem() {
    let root = tempfile::tempdir().unwrap();
    let user = root.path().join("user");
    let (tracker, _storage) = cluster(root.path(), &[&user], &[]);
    let node = Daemon::start(&user, &["--tracker", &tracker.addr.to_string()]);
    // Each row: the command's arguments, and words its error must carry.
    let rows: [(&[&str], &str); 7] = [
        (&["offline", "add", "not-a-url"], "full http:// or https:// URL"),
        (&["offline", "add", "ftp://host/file"], "only http and https"),
        (&["offline", "add", "http://host/f", "--name", "a/b"], "bad file name"),
        (&["offline", "watch", "nothex"], "is not a task id"),
        (&["offline", "cancel", &"ab".repeat(16)], "no offline task"),
        (&["space", "get", "missing", "-o", "/tmp/shoal-never-written"], "no entry named"),
        (&["user", "use", "shoaldev1garbage"], "not a device certificate"),
    ];
    for (args, says) in rows {
        let e = fails_of(&node, args);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert!(!Path::new("/tmp/shoal-never-written").exists());
}
