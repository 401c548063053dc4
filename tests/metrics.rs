//! Prometheus metrics end to end: a real tracker and two real nodes, a real transfer, and the
//! scrapes of all three read back with a strict exposition reader. The counters move by what
//! was transferred: bytes by direction, peer kind and region, pieces verified, the fetch
//! latency histogram on the downloader and the lookup histogram at the tracker.

use crate::exposition::*;
use crate::support::*;

/// The address `shoal daemon --metrics 127.0.0.1:0` bound, from its stdout.
fn metrics_addr(d: &Daemon) -> String {
    let line = d.wait_stdout("the metrics line", |l| l.starts_with("shoal daemon: metrics "));
    let url = line.rsplit(' ').next().unwrap();
    url.trim_start_matches("http://").trim_end_matches("/metrics").to_string()
}

#[test]
fn metrics_follow_a_real_transfer_and_read_back_as_prometheus_text() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start_with(
        &tmp.path().join("tracker"),
        "127.0.0.1:0",
        &["--allow-stated-region", "--http", "127.0.0.1:0"],
    );
    let t = tracker.addr.to_string();
    let http = tracker.http.clone().unwrap();
    let start = |name: &str, region: &str| {
        let args = ["--tracker", &t, "--region", region, "--metrics", "127.0.0.1:0"];
        Daemon::start(&tmp.path().join(name), &args)
    };
    let seed = start("seed", "r0");
    let leech = start("leech", "r1");
    let (seed_m, leech_m) = (metrics_addr(&seed), metrics_addr(&leech));
    // Bytes are labelled by region once a node knows its own: wait for both placements.
    for d in [&seed, &leech] {
        wait_until("the tracker to place the node", || {
            let st = d.status();
            st["region"].as_str().is_some_and(|r| !r.is_empty()).then_some(())
        });
    }
    // Nothing moved yet.
    let before = scrape(&leech_m);
    assert_eq!(before.sum("shoal_pieces_verified_total", &[]), 0.0);
    assert_eq!(before.sum("shoal_piece_fetch_seconds_count", &[]), 0.0);
    let lookups_before = scrape(&http).sum("shoal_tracker_lookup_seconds_count", &[]);

    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 3 * 1024 * 1024 + 7, 11);
    let size = data.len() as f64;
    let ticket = seed.add(&src);
    wait_until("the tracker knows the content", || {
        (tracker.metric("shoal_tracker_swarms") == 1).then_some(())
    });
    let out = tmp.path().join("out.bin");
    get_json(&leech.dir, &ticket, &out, &[]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let pieces = leech.ls()[0]["pieces_total"].as_u64().unwrap() as f64;
    assert!(pieces > 1.0);

    // The downloader: every piece verified and timed; the bytes came down from a node of
    // another region (the tracker named the seed's region in its lookup).
    let l = scrape(&leech_m);
    assert_eq!(l.sum("shoal_pieces_verified_total", &[]), pieces);
    assert_eq!(l.sum("shoal_piece_fetch_seconds_count", &[("peer", "node")]), pieces);
    assert!(l.sum("shoal_piece_fetch_seconds_sum", &[]) > 0.0);
    let down = [("direction", "down"), ("peer", "node"), ("region", "other")];
    assert_eq!(l.sum("shoal_peer_bytes_total", &down), size);
    assert_eq!(l.sum("shoal_peer_bytes_total", &[("direction", "up")]), 0.0);
    assert!(l.sum("shoal_downloaded_bytes_total", &[]) >= size);
    assert!(l.has("shoal_connections"));
    // What it holds follows, read off the scrape path after the change.
    wait_until("the held bytes gauge", || {
        (scrape(&leech_m).sum("shoal_held_bytes", &[]) == size).then_some(())
    });
    assert_eq!(scrape(&leech_m).sum("shoal_contents", &[("state", "complete")]), 1.0);

    // The seed: the same bytes went up.
    let s = scrape(&seed_m);
    assert_eq!(s.sum("shoal_peer_bytes_total", &[("direction", "up")]), size);
    assert_eq!(s.sum("shoal_uploaded_bytes_total", &[]), size);
    assert_eq!(s.sum("shoal_pieces_uploaded_total", &[]), pieces);

    // The tracker: the download's lookups are in the histogram, both nodes by role.
    let tr = scrape(&http);
    assert!(tr.sum("shoal_tracker_lookup_seconds_count", &[]) > lookups_before);
    assert_eq!(tr.sum("shoal_tracker_nodes", &[]), 2.0);
    assert!(tr.sum("shoal_tracker_connections", &[]) >= 2.0);
    for name in ["shoal_tracker_lookups_total", "shoal_tracker_heartbeats_total"] {
        assert!(tr.sum(name, &[]) >= 1.0, "{name}");
    }
    wait_until("the snapshot of nodes by role", || {
        let tr = scrape(&http);
        let r1 = [("role", "node"), ("region", "r1")];
        (tr.sum("shoal_tracker_nodes_by_role", &[("role", "node")]) == 2.0
            && tr.sum("shoal_tracker_nodes_by_role", &r1) == 1.0)
            .then_some(())
    });

    // The control API serves the same metrics on 127.0.0.1, and none names the content.
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(leech.dir.join("control.json")).unwrap()).unwrap();
    let control = info["addr"].as_str().unwrap().to_string();
    assert_eq!(scrape(&control).sum("shoal_pieces_verified_total", &[]), pieces);
    let (_, text) = http_get(&control, "/metrics");
    let content = ticket_content(&leech);
    assert!(!text.contains(&content[..16]) && !text.contains("f.bin"));
}

fn ticket_content(d: &Daemon) -> String {
    d.ls()[0]["content_id"].as_str().unwrap().to_string()
}

#[test]
fn a_metrics_address_in_use_is_one_line_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = shoal(&tmp.path().join("n"));
    c.args(["daemon", "--listen", "127.0.0.1:0", "--metrics", &addr]).env("SHOAL_LOG", "error");
    let line = fails(c);
    assert!(line.contains("--metrics") && line.contains(&addr), "{line}");
}
