//! Transfers that work: boundary sizes, several seeders at once.

use crate::support::*;

const PIECE: usize = 16 * 1024;

#[test]
fn boundary_sizes_arrive_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    // 0, 1, piece-1, piece, piece+1 bytes, and a many-piece file (100 pieces and a short one;
    // files under 2 MiB keep 16 KiB pieces).
    for (k, size) in [0, 1, PIECE - 1, PIECE, PIECE + 1, 100 * PIECE + 5].into_iter().enumerate() {
        let src = tmp.path().join(format!("src-{size}"));
        let data = write_file(&src, size, k as u64);
        let ticket = seed.add(&src);
        let out = tmp.path().join(format!("out-{size}"));
        let report = get_json(&tmp.path().join(format!("fetcher-{k}")), &ticket, &out, &[]);
        assert_eq!(std::fs::read(&out).unwrap(), data, "size {size}");
        assert_eq!(report["size"], size as u64);
        assert_eq!(report["bad_pieces"], 0);
        assert!(report["downloaded_bytes"].as_u64().unwrap() >= size as u64);
    }
}

#[test]
fn one_fetch_uses_three_seeders() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("shared.bin");
    let data = write_file(&src, 6 * 1024 * 1024 + 123, 42);
    let seeders: Vec<Daemon> =
        (0..3).map(|i| Daemon::start(&tmp.path().join(format!("s{i}")), &[])).collect();
    let tickets: Vec<String> = seeders.iter().map(|s| s.add(&src)).collect();
    let out = tmp.path().join("out.bin");
    // The first seeder's ticket, the other two by --peer.
    let report = get_json(
        &tmp.path().join("fetcher"),
        &tickets[0],
        &out,
        &["--peer", &seeders[1].peer(), "--peer", &seeders[2].peer()],
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let peers = report["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{report}");
    for p in peers {
        assert!(p["pieces"].as_u64().unwrap() > 0, "every seeder contributed: {report}");
        assert_eq!(p["banned"], false);
    }
    let ids: Vec<&str> = peers.iter().map(|p| p["node_id"].as_str().unwrap()).collect();
    for s in &seeders {
        assert!(ids.contains(&s.node_id.as_str()));
    }
}

#[test]
fn fetched_file_is_then_seeded_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    let src = tmp.path().join("a.bin");
    let data = write_file(&src, 300_000, 7);
    let ticket = seed.add(&src);
    // Fetch through a second daemon; then a third node fetches from that daemon alone.
    let middle = Daemon::start(&tmp.path().join("middle"), &[]);
    let out1 = tmp.path().join("out1.bin");
    get_json(&middle.dir, &ticket, &out1, &[]);
    let ls = middle.ls();
    assert_eq!(ls[0]["state"], "complete", "{ls}");
    assert_eq!(ls[0]["path"], out1.display().to_string());
    let mut seed = seed;
    seed.kill();
    let out2 = tmp.path().join("out2.bin");
    let report = get_json(&tmp.path().join("last"), &ticket, &out2, &["--peer", &middle.peer()]);
    assert_eq!(std::fs::read(&out2).unwrap(), data);
    let served = report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == middle.node_id.as_str())
        .unwrap();
    assert!(served["pieces"].as_u64().unwrap() > 0);
    // The daemon's own counters agree.
    let status = middle.status();
    assert_eq!(status["uploaded_bytes"], 300_000);
}
