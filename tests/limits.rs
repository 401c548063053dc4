//! Rate limits deliver the rate set: per fetch (`shoal get --download-limit`), per daemon
//! (`--download-limit`, `--upload-limit`), from one peer and from several. Each moves enough
//! bytes for two to three seconds at the limit; the rate is what the fetch reports (bytes
//! received over its own running time), and a test fails outside ±25% (the bench's `limits`
//! mode prints the exact figures).

use crate::support::*;

const MIB: usize = 1 << 20;
const TOLERANCE: f64 = 0.25;

#[test]
fn a_fetch_limit_of_4_mib_s_holds_from_one_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    let src = tmp.path().join("a.bin");
    let data = write_file(&src, 10 * MIB, 1);
    let ticket = seed.add(&src);
    let out = tmp.path().join("out.bin");
    let report = get_json(&tmp.path().join("f"), &ticket, &out, &["--download-limit", "4MiB/s"]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_rate_near("--download-limit 4MiB/s", report_rate(&report), 4.0, TOLERANCE);
}

#[test]
fn a_fetch_limit_of_16_mib_s_holds_across_two_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("a.bin");
    let data = write_file(&src, 40 * MIB, 2);
    let seeds: Vec<Daemon> =
        (0..2).map(|i| Daemon::start(&tmp.path().join(format!("s{i}")), &[])).collect();
    let tickets: Vec<String> = seeds.iter().map(|s| s.add(&src)).collect();
    let out = tmp.path().join("out.bin");
    let args = ["--download-limit", "16MiB/s", "--peer", &seeds[1].peer()];
    let report = get_json(&tmp.path().join("f"), &tickets[0], &out, &args);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let peers = report["peers"].as_array().unwrap();
    assert!(peers.iter().all(|p| p["pieces"].as_u64().unwrap() > 0), "both served: {report}");
    assert_rate_near("--download-limit 16MiB/s, two peers", report_rate(&report), 16.0, TOLERANCE);
}

#[test]
fn a_daemon_download_limit_holds_for_its_fetches() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    let src = tmp.path().join("a.bin");
    let data = write_file(&src, 20 * MIB, 3);
    let ticket = seed.add(&src);
    let fetcher = Daemon::start(&tmp.path().join("d"), &["--download-limit", "8MiB/s"]);
    let out = tmp.path().join("out.bin");
    // Through the daemon: its data dir names it.
    let report = get_json(&fetcher.dir, &ticket, &out, &[]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_rate_near("daemon --download-limit 8MiB/s", report_rate(&report), 8.0, TOLERANCE);
}

#[test]
fn a_daemon_upload_limit_holds_across_two_fetchers() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = Daemon::start(&tmp.path().join("seed"), &["--upload-limit", "8MiB/s"]);
    let src = tmp.path().join("a.bin");
    let data = write_file(&src, 10 * MIB, 4);
    let ticket = seed.add(&src);
    let fetches: Vec<Fetch> = (0..2)
        .map(|i| {
            let dir = tmp.path().join(format!("f{i}"));
            Fetch::start(&dir, &ticket, &tmp.path().join(format!("out{i}.bin")), &[])
        })
        .collect();
    let mut bytes = 0;
    let mut longest = 0f64;
    for f in fetches {
        let out = f.out.clone();
        let report = f.finish();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        bytes += report["downloaded_bytes"].as_u64().unwrap();
        longest = longest.max(report["seconds"].as_f64().unwrap());
    }
    // Both fetches start together and share the seed's 8 MiB/s.
    let got = bytes as f64 / longest / MIB as f64;
    assert_rate_near("daemon --upload-limit 8MiB/s, two fetchers", got, 8.0, TOLERANCE);
}
