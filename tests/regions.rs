//! Regions end to end: the tracker places nodes (by its CIDR map, or by what nodes state where
//! allowed), `shoal status` and the tracker's metrics show it, downloads count the bytes that
//! crossed regions, and a region's second downloader takes the file from its own region.

use crate::support::*;

fn region_of(d: &Daemon) -> String {
    // The placement comes with the registration, which a daemon makes as it starts.
    wait_until("the tracker places the node", || {
        let r = d.status()["region"].as_str().unwrap_or_default().to_string();
        (!r.is_empty()).then_some(r)
    })
}

#[test]
fn stated_regions_route_a_second_downloader_to_its_own_region() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start_with(
        &tmp.path().join("tracker"),
        "127.0.0.1:0",
        &["--allow-stated-region", "--http", "127.0.0.1:0"],
    );
    let t = tracker.addr.to_string();
    let start = |name: &str, region: &str| {
        Daemon::start(&tmp.path().join(name), &["--tracker", &t, "--region", region])
    };
    // The seed's uplink stands for the border: slower than a neighbour in the same region (on
    // unshaped loopback a fetch from anywhere ends before a second connection is up).
    let seed = Daemon::start(
        &tmp.path().join("seed"),
        &["--tracker", &t, "--region", "r0", "--upload-limit", "4MiB/s"],
    );
    let first = start("first", "r1");
    let second = start("second", "r1");
    assert_eq!(region_of(&seed), "r0");
    assert_eq!(region_of(&first), "r1");
    assert_eq!(region_of(&second), "r1");
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 4 * 1024 * 1024, 3);
    let ticket = seed.add(&src);
    // Lookups name the peers' regions: wait until the tracker has the seed's announce.
    wait_until("the tracker knows the content", || {
        (tracker.metric("shoal_tracker_swarms") == 1).then_some(())
    });
    // The first of r1 can only cross: every byte it gets counts.
    let out1 = tmp.path().join("out1.bin");
    get_json(&first.dir, &ticket, &out1, &[]);
    assert_eq!(std::fs::read(&out1).unwrap(), data);
    let crossed1 = first.status()["cross_region_bytes"].as_u64().unwrap();
    assert_eq!(crossed1, data.len() as u64, "everything the first of r1 got came from r0");
    // The second of r1 finds its region holding everything: the seed (another region) is
    // asked only for what r1 lacks, which is nothing, once the first's bitfield is in.
    let out2 = tmp.path().join("out2.bin");
    get_json(&second.dir, &ticket, &out2, &[]);
    assert_eq!(std::fs::read(&out2).unwrap(), data);
    let crossed2 = second.status()["cross_region_bytes"].as_u64().unwrap();
    println!("second of r1: {crossed2} of {} bytes crossed", data.len());
    assert!(
        crossed2 <= data.len() as u64 / 4,
        "the second of r1 took {crossed2} of {} bytes across",
        data.len()
    );
    assert_eq!(tracker.metric("shoal_tracker_region_nodes{region=\"r1\"}"), 2);
    assert_eq!(tracker.metric("shoal_tracker_region_nodes{region=\"r0\"}"), 1);
}

#[test]
fn the_operators_map_places_nodes_and_a_stated_region_needs_the_operators_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start_with(
        &tmp.path().join("tracker"),
        "127.0.0.1:0",
        &["--region", "10.0.0.0/8=private", "--region", "127.0.0.0/8=loopback"],
    );
    let t = tracker.addr.to_string();
    // It states r9, but the operator did not allow stated regions: its address decides.
    let d = Daemon::start(&tmp.path().join("d"), &["--tracker", &t, "--region", "r9"]);
    assert_eq!(region_of(&d), "loopback");
}

#[test]
fn bad_region_flags_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = std::process::Command::new(tracker_bin());
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("t"))
        .args(["--region", "10.0.0.0/8"]);
    let err = fails(c);
    assert!(err.contains("CIDR=NAME"), "{err}");
    for (flags, says) in [
        (&["--region-db", "/nonexistent.mmdb"][..], "cannot read --region-db"),
        (&["--region-country", "DE=eu"][..], "needs --region-db"),
    ] {
        let mut c = std::process::Command::new(tracker_bin());
        c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(tmp.path().join("t"));
        c.args(flags);
        let err = fails(c);
        assert!(err.contains(says), "{err}");
    }
    let not_a_db = tmp.path().join("x.mmdb");
    std::fs::write(&not_a_db, b"not a database").unwrap();
    let mut c = std::process::Command::new(tracker_bin());
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(tmp.path().join("t"));
    c.arg("--region-db").arg(&not_a_db);
    let err = fails(c);
    assert!(err.contains("MaxMind-format"), "{err}");
    for (listen, says) in [("nonsense", "IP:PORT"), ("127.0.0.1:0=bad name", "link name")] {
        let mut c = shoal(&tmp.path().join("d"));
        c.args(["daemon", "--listen", listen]);
        let err = fails(c);
        assert!(err.contains(says), "{err}");
    }
    let mut c = std::process::Command::new(tracker_bin());
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(tmp.path().join("t"));
    c.args(["--region-file", "/nonexistent-regions.txt"]);
    let err = fails(c);
    assert!(err.contains("cannot read --region-file"), "{err}");
    let mut c = shoal(&tmp.path().join("d"));
    c.args(["daemon", "--listen", "127.0.0.1:0", "--region", "Bad Name"]);
    let err = fails(c);
    assert!(err.contains("bad region name") && err.contains("lowercase"), "{err}");
}

/// A tracker that admits storage `st` and allows stated regions; the seed in r0 adds a file of
/// `len` bytes; storage in r1 with a cache of `cache`.
fn two_regions_with_storage(
    tmp: &std::path::Path,
    cache: &str,
) -> (TrackerProc, Daemon, Daemon, String) {
    let st = tmp.join("storage");
    let tracker = TrackerProc::start_admitting(
        &tmp.join("tracker"),
        "127.0.0.1:0",
        &[&st],
        &["--allow-stated-region", "--http", "127.0.0.1:0"],
    );
    let t = tracker.addr.to_string();
    // The seed's uplink is the border: what crosses is what it sends to r1.
    let seed = Daemon::start(
        &tmp.join("seed"),
        &["--tracker", &t, "--region", "r0", "--upload-limit", "4MiB/s"],
    );
    let storage = Daemon::start(
        &st,
        &["--tracker", &t, "--region", "r1", "--role", "storage", "--pull-through-cache", cache],
    );
    assert_eq!(region_of(&storage), "r1");
    (tracker, seed, storage, t)
}

#[test]
fn storage_pulls_through_once_for_its_region_and_serves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (tracker, seed, storage, t) = two_regions_with_storage(tmp.path(), "64MiB");
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 6 * 1024 * 1024, 5);
    let ticket = seed.add(&src);
    wait_until("the tracker knows the content", || {
        (tracker.metric("shoal_tracker_swarms") == 1).then_some(())
    });
    // Two downloaders of r1 at once: their lookups offer r1's storage, which pulls the
    // content through once and serves it to both.
    let nodes: Vec<Daemon> = (0..2)
        .map(|i| {
            let d = Daemon::start(
                &tmp.path().join(format!("n{i}")),
                &["--tracker", &t, "--region", "r1"],
            );
            assert_eq!(region_of(&d), "r1");
            d
        })
        .collect();
    let fetches: Vec<Fetch> = nodes
        .iter()
        .enumerate()
        .map(|(i, d)| Fetch::start(&d.dir, &ticket, &tmp.path().join(format!("out{i}.bin")), &[]))
        .collect();
    for (i, f) in fetches.into_iter().enumerate() {
        f.finish();
        assert_eq!(std::fs::read(tmp.path().join(format!("out{i}.bin"))).unwrap(), data);
    }
    let pulled = wait_until("the pull completes", || {
        let n = storage.status()["pull_through_bytes"].as_u64().unwrap();
        (n > 0).then_some(n)
    });
    assert_eq!(pulled, data.len() as u64, "one pull, of the whole content");
    let crossed: Vec<u64> = std::iter::once(&storage)
        .chain(&nodes)
        .map(|d| d.status()["cross_region_bytes"].as_u64().unwrap())
        .collect();
    let total: u64 = crossed.iter().sum();
    println!(
        "crossed into r1 (storage, n0, n1): {crossed:?}, {total} for a file of {}",
        data.len()
    );
    assert!(
        total <= data.len() as u64 * 3 / 2,
        "r1 took {total} bytes across for a file of {} ({crossed:?})",
        data.len()
    );
    // Storage lists the pulled content and serves it on its own: with the seed gone, a third
    // node of r1 still gets it.
    drop(seed);
    let third = Daemon::start(&tmp.path().join("n2"), &["--tracker", &t, "--region", "r1"]);
    let out = tmp.path().join("out2.bin");
    get_json(&third.dir, &ticket, &out, &["--peer", &storage.peer()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn storage_serves_a_content_it_holds_partly_pushed_and_wholly_pulled_through() {
    // Storage of r1 pulls a content through into its cache; then the seed starts pushing the
    // same content into its object store. Meanwhile storage holds the content in both places:
    // each piece it advertises must be served, whichever place holds it (it used to refuse
    // the pieces not pushed yet, and was banned by every node that asked).
    let tmp = tempfile::tempdir().unwrap();
    let (st, seed_dir) = (tmp.path().join("storage"), tmp.path().join("seed"));
    let tracker = TrackerProc::start_admitting(
        &tmp.path().join("tracker"),
        "127.0.0.1:0",
        &[&st],
        &["--allow-stated-region"],
    );
    let t = tracker.addr.to_string();
    let seed =
        Daemon::start(&seed_dir, &["--tracker", &t, "--region", "r0", "--upload-limit", "1MiB/s"]);
    let mut args: Vec<String> = ["--tracker", &t, "--region", "r1", "--role", "storage"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(grant_args(&[&seed_dir]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let storage = Daemon::start(&st, &args);
    assert_eq!(region_of(&storage), "r1");
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 4 * 1024 * 1024, 9);
    let ticket = seed.add(&src);
    // A node of r1 fetches: storage pulls the whole content through.
    let n0 = Daemon::start(&tmp.path().join("n0"), &["--tracker", &t, "--region", "r1"]);
    get_json(&n0.dir, &ticket, &tmp.path().join("out0.bin"), &[]);
    wait_until("the pull completes", || {
        let n = storage.status()["pull_through_bytes"].as_u64().unwrap();
        (n == data.len() as u64).then_some(())
    });
    // A node of r1 starts fetching it slowly, from storage and the seed: storage shows it
    // every piece (its cache holds them all) ...
    drop(n0);
    let n1 = Daemon::start(&tmp.path().join("n1"), &["--tracker", &t, "--region", "r1"]);
    let out = tmp.path().join("out1.bin");
    let limit = ["--peer", &storage.peer(), "--download-limit", "512KiB/s"];
    let fetch = Fetch::start(&n1.dir, &ticket, &out, &limit);
    wait_until("the fetch under way", || {
        let ls = n1.ls();
        let have = ls.as_array()?.first()?["pieces_have"].as_u64()?;
        (have > 0).then_some(())
    });
    // ... and then the seed pushes the content (at 1 MiB/s: about 4 s): storage holds some
    // pieces in its object store and all in its cache, and is still asked for the others.
    let mut push = seed.cmd();
    push.args(["push"]).arg(&src).stdout(std::process::Stdio::null());
    let mut pushing = push.spawn().unwrap();
    let report = fetch.finish();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let peers = report["peers"].as_array().unwrap();
    let from_storage = peers.iter().find(|p| p["node_id"] == storage.node_id.as_str()).unwrap();
    assert_eq!(from_storage["banned"], false, "{report}");
    assert!(from_storage["pieces"].as_u64().unwrap() > 0, "{report}");
    assert!(pushing.wait().unwrap().success());
    // The push sent what the object store lacked, not what the cache held: it keeps it all.
    let ls = storage.ls();
    let kept = ls.as_array().unwrap().iter().find(|r| r["path"] == "(object store)").cloned();
    let kept = kept.unwrap_or_else(|| panic!("no object-store row: {ls}"));
    assert_eq!(kept["pieces_have"], kept["pieces_total"], "{ls}");
}

#[test]
fn a_full_pull_through_cache_drops_the_least_recently_used_content() {
    let tmp = tempfile::tempdir().unwrap();
    // 5 MiB: two 2 MiB contents fit, a third makes one go; a content over half the cache is
    // refused outright.
    let (tracker, seed, storage, t) = two_regions_with_storage(tmp.path(), "5MiB");
    let mut tickets = Vec::new();
    for (i, len) in [2, 2, 2, 3].into_iter().enumerate() {
        let src = tmp.path().join(format!("f{i}.bin"));
        write_file(&src, len * 1024 * 1024, 20 + i as u64);
        tickets.push(seed.add(&src));
    }
    wait_until("the tracker knows every content", || {
        (tracker.metric("shoal_tracker_swarms") == 4).then_some(())
    });
    let ids: Vec<String> = tickets
        .iter()
        .map(|t| t.parse::<shoal_core::Ticket>().unwrap().content.to_string())
        .collect();
    let listed = |d: &Daemon| -> Vec<String> {
        let ls = d.ls();
        ls.as_array().unwrap().iter().map(|e| e["content_id"].as_str().unwrap().into()).collect()
    };
    // Each fetch by a fresh node of r1, from storage only: a pull, or a use of a cached one.
    // A ticket with neither peers nor tracker: the fetch can only be served by storage (a
    // pull, or its cache), never by the seed behind storage's back.
    let bare = |i: usize| {
        let full: shoal_core::Ticket = tickets[i].parse().unwrap();
        shoal_core::Ticket { peers: vec![], tracker: None, tracker_id: None, ..full }.to_string()
    };
    let fetch_from_storage = |n: usize, i: usize| {
        let d =
            Daemon::start(&tmp.path().join(format!("a{n}")), &["--tracker", &t, "--region", "r1"]);
        let out = tmp.path().join(format!("out{n}.bin"));
        get_json(&d.dir, &bare(i), &out, &["--peer", &storage.peer()]);
    };
    let cached = |want: u64| {
        wait_until("the cache settles", || {
            let n = storage.status()["pull_through_bytes"].as_u64().unwrap();
            (n == want * 1024 * 1024).then_some(())
        })
    };
    fetch_from_storage(0, 0);
    cached(2);
    fetch_from_storage(1, 1);
    cached(4);
    // Content 0 is used again (served from the cache), so content 1 is now the least recent.
    fetch_from_storage(2, 0);
    fetch_from_storage(3, 2);
    cached(4);
    let held = listed(&storage);
    assert!(held.contains(&ids[0]) && held.contains(&ids[2]), "{held:?}");
    assert!(!held.contains(&ids[1]), "the least recently used went: {held:?}");
    assert!(!tmp.path().join("storage/pull-through").join(&ids[1]).exists(), "its file is gone");
    // 3 MiB is more than half the cache: not pulled, so a fetch from storage alone fails.
    let d = Daemon::start(&tmp.path().join("a4"), &["--tracker", &t, "--region", "r1"]);
    let mut c = d.cmd();
    c.args(["get", &bare(3), "-o"]).arg(tmp.path().join("big.bin"));
    c.args(["--peer", &storage.peer()]);
    let o = run(c);
    assert!(!o.status.success(), "a content over half the cache is not pulled");
    assert!(!listed(&storage).contains(&ids[3]));
}
