//! Faults: a fetch killed midway, a corrupting seeder, a source file changed after `add`.

use crate::support::*;

#[test]
fn killed_fetch_resumes_fetching_only_what_was_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    let src = tmp.path().join("big.bin");
    let size = 8 * 1024 * 1024;
    let piece = 1u64 << shoal_core::piece::piece_log2_for(size as u64);
    let data = write_file(&src, size, 3);
    let ticket = seed.add(&src);
    let fetcher = tmp.path().join("fetcher");
    let out = tmp.path().join("out.bin");

    // A slow standalone fetch, killed with SIGKILL once it is past 40 %.
    get_killed_past(&fetcher, &ticket, &out, "2MiB/s", 40.0);
    assert!(!out.exists(), "nothing at the output path after a kill");

    let report = get_json(&fetcher, &ticket, &out, &[]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let resumed = report["resumed_pieces"].as_u64().unwrap();
    let total = size as u64 / piece; // 8 MiB in 32 KiB pieces: 256
                                     // Killed past 40 %, with checkpoints once a second at 2 MiB/s (a quarter of the file a
                                     // second): at least the last checkpoint's 15 % were durable.
    assert!(resumed >= total * 15 / 100, "at least the checkpointed pieces were kept: {report}");
    // Only the missing pieces crossed the network, and no manifest: the store had it.
    let downloaded = report["downloaded_bytes"].as_u64().unwrap();
    assert_eq!(downloaded, (total - resumed) * piece, "{report}");
}

#[test]
fn corrupting_seeder_is_banned_and_the_file_is_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 4 * 1024 * 1024, 9);
    let honest = Daemon::start(&tmp.path().join("honest"), &[]);
    let evil = Daemon::start(&tmp.path().join("evil"), &["--danger-corrupt-uploads", "1"]);
    let ticket = honest.add(&src);
    evil.add(&src);
    let out = tmp.path().join("out.bin");
    let report = get_json(&tmp.path().join("fetcher"), &ticket, &out, &["--peer", &evil.peer()]);
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical despite the corrupter");
    let peers = report["peers"].as_array().unwrap();
    let e = peers.iter().find(|p| p["node_id"] == evil.node_id.as_str()).unwrap();
    let h = peers.iter().find(|p| p["node_id"] == honest.node_id.as_str()).unwrap();
    assert_eq!(e["banned"], true, "{report}");
    assert_eq!(e["pieces"], 0);
    assert_eq!(h["banned"], false);
    assert_eq!(report["bad_pieces"], 2, "banned at the second bad piece: {report}");
}

#[test]
fn source_changed_after_add_is_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    let src = tmp.path().join("f.bin");
    let mut data = write_file(&src, 1024 * 1024, 5);
    let ticket = seed.add(&src);
    // Change one byte, keeping the size and the modification time: only hashing can tell.
    let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
    data[500_000] ^= 0x55;
    std::fs::write(&src, &data).unwrap();
    std::fs::File::options().write(true).open(&src).unwrap().set_modified(mtime).unwrap();

    let out = tmp.path().join("out.bin");
    let mut c = shoal(&tmp.path().join("fetcher"));
    c.args(["get", &ticket, "-o"]).arg(&out);
    let err = fails(c);
    assert!(err.contains("lost every peer") && err.contains("changed"), "{err}");
    assert!(!out.exists());
    let ls = seed.ls();
    assert_eq!(ls[0]["state"], "source changed", "{ls}");
}
