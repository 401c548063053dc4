//! Swarms with a tracker: downloaders that serve each other, a tracker that dies and comes
//! back, tickets that carry only a content id and a tracker, a tracker that is down, a tracker
//! that cannot prove the key a ticket pins.

use crate::support::*;

/// The progress percentage in a plain progress line.
fn percent(line: &str) -> Option<f64> {
    line.strip_prefix("progress: ")?.split('(').nth(1)?.split('%').next()?.parse().ok()
}

#[test]
fn six_downloaders_started_together_serve_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(&tmp.path().join("tracker"), "127.0.0.1:0");
    let t = tracker.addr.to_string();
    // The seed alone could send the file once in about 3 s.
    let seed =
        Daemon::start(&tmp.path().join("seed"), &["--tracker", &t, "--upload-limit", "3MiB/s"]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 8 * 1024 * 1024, 11);
    // 8 MiB: 256 pieces of 32 KiB.
    let piece = 1u64 << shoal_core::piece::piece_log2_for(data.len() as u64);
    let pieces = data.len() as u64 / piece;
    let ticket = seed.add(&src);
    let fetches: Vec<Fetch> = (0..6)
        .map(|i| {
            let out = tmp.path().join(format!("out{i}.bin"));
            Fetch::start(&tmp.path().join(format!("d{i}")), &ticket, &out, &[])
        })
        .collect();
    let mut from_peers = 0;
    let mut seed_pieces = 0;
    for f in fetches {
        let out = f.out.clone();
        let report = f.finish();
        assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
        let peers = report["peers"].as_array().unwrap();
        let others: u64 = peers
            .iter()
            .filter(|p| p["node_id"] != seed.node_id.as_str())
            .map(|p| p["pieces"].as_u64().unwrap())
            .sum();
        seed_pieces += peers
            .iter()
            .filter(|p| p["node_id"] == seed.node_id.as_str())
            .map(|p| p["pieces"].as_u64().unwrap())
            .sum::<u64>();
        if others > 0 {
            from_peers += 1;
        }
    }
    assert!(
        from_peers >= 4,
        "only {from_peers} of 6 downloaders got pieces from other downloaders"
    );
    // 6 copies of every piece were needed; the seed sent far fewer than all of them.
    assert!(seed_pieces < 6 * pieces / 2, "the seed sent {seed_pieces} of {pieces} pieces");
    // The seed's own counters agree with what the downloaders report.
    let status = seed.status();
    let content = &status["contents"][0];
    assert_eq!(content["state"], "complete");
    assert_eq!(content["uploaded_bytes"], status["uploaded_bytes"]);
    assert!(status["uploaded_bytes"].as_u64().unwrap() >= seed_pieces * piece, "{status}");
}

#[test]
fn tracker_killed_mid_swarm_and_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker_dir = tmp.path().join("tracker");
    let mut tracker = TrackerProc::start(&tracker_dir, "127.0.0.1:0");
    let addr = tracker.addr.to_string();
    let seed =
        Daemon::start(&tmp.path().join("seed"), &["--tracker", &addr, "--upload-limit", "2MiB/s"]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 6 * 1024 * 1024, 12);
    let ticket = seed.add(&src);
    let fetches: Vec<Fetch> = (0..3)
        .map(|i| {
            let out = tmp.path().join(format!("out{i}.bin"));
            Fetch::start(&tmp.path().join(format!("d{i}")), &ticket, &out, &[])
        })
        .collect();
    wait_line(&fetches[0].stderr, "20% progress", |l| percent(l).is_some_and(|p| p >= 20.0));
    tracker.kill(); // SIGKILL
    let _tracker = TrackerProc::start(&tracker_dir, &addr);
    for f in fetches {
        let out = f.out.clone();
        f.finish();
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }
}

#[test]
fn a_ticket_with_only_a_content_id_and_a_tracker_is_enough() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(&tmp.path().join("tracker"), "127.0.0.1:0");
    let t = tracker.addr.to_string();
    let seed = Daemon::start(&tmp.path().join("seed"), &["--tracker", &t]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 700_000, 13);
    let full: shoal_core::Ticket = seed.add(&src).parse().unwrap();
    assert_eq!(full.tracker.as_deref(), Some(t.as_str()), "tickets carry the daemon's tracker");
    let bare = shoal_core::Ticket { peers: vec![], ..full.clone() };
    // The seed announces within a moment of `add`; retry (bounded) until the tracker knows it.
    let out = tmp.path().join("out.bin");
    let mut attempts = 0;
    let report = loop {
        attempts += 1;
        assert!(attempts <= 20, "the tracker never learned of the content");
        let o = run({
            let mut c = shoal(&tmp.path().join("fetcher"));
            c.args(["get", &bare.to_string(), "-o"]).arg(&out).arg("--json");
            c
        });
        if o.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("the tracker knows none"), "{err}");
    };
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(report["peers"][0]["node_id"], seed.node_id.as_str());
}

#[test]
fn a_tracker_that_is_down_is_reported_and_the_tickets_peers_are_used() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens on this tracker address.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let seed = Daemon::start(&tmp.path().join("seed"), &["--tracker", &dead]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 200_000, 14);
    let ticket = seed.add(&src);
    let out = tmp.path().join("out.bin");
    let f = Fetch::start(&tmp.path().join("fetcher"), &ticket, &out, &[]);
    let warning = wait_line(&f.stderr, "tracker warning", |l| l.starts_with("warning: tracker"));
    assert!(warning.contains(&dead) && warning.contains("unreachable"), "{warning}");
    f.finish();
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn a_tracker_that_cannot_prove_the_tickets_tracker_id_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker_dir = tmp.path().join("tracker");
    let real_id = node_id_for(&tracker_dir);
    let tracker = TrackerProc::start(&tracker_dir, "127.0.0.1:0");
    let t = tracker.addr.to_string();
    let seed = Daemon::start(&tmp.path().join("seed"), &["--tracker", &t]);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 100_000, 15);
    // The seed pins its tracker on first connect; from then on its tickets carry that id.
    let full = wait_until("a ticket with the tracker's id", || {
        let t: shoal_core::Ticket = seed.add(&src).parse().unwrap();
        t.tracker_id.is_some().then_some(t)
    });
    assert_eq!(full.tracker_id.map(|i| i.to_string()), Some(real_id));
    // A ticket that pins another key for the same address: the tracker is refused at the TLS
    // handshake, so the fetch has no peers.
    let impostor = shoal_net::Identity::generate().node_id();
    let forged = shoal_core::Ticket { peers: vec![], tracker_id: Some(impostor), ..full.clone() };
    let out = tmp.path().join("out.bin");
    let o = run({
        let mut c = shoal(&tmp.path().join("f1"));
        c.args(["get", &forged.to_string(), "-o"]).arg(&out);
        c
    });
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "fetched through a tracker with the wrong key: {err}");
    assert!(err.contains("unreachable"), "{err}");
    // The same ticket with the right id works (retried until the seed's announce is in).
    let bare = shoal_core::Ticket { peers: vec![], ..full };
    let report = wait_until("a fetch through the pinned tracker", || {
        let mut c = shoal(&tmp.path().join("f2"));
        c.args(["get", &bare.to_string(), "-o"]).arg(&out).arg("--json");
        let o = run(c);
        o.status.success().then(|| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
    });
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(report["peers"][0]["node_id"], seed.node_id.as_str());
}
