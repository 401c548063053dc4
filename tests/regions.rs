//! Regions end to end: the tracker places nodes (by its CIDR map, or by what nodes state where
//! allowed), `shoal status` and the tracker's metrics show it, downloads count the bytes that
//! crossed regions, and a region's second downloader takes the file from its own region.

use crate::support::*;

fn status(d: &Daemon) -> serde_json::Value {
    let mut c = d.cmd();
    c.args(["status", "--json"]);
    serde_json::from_str(ok(c).trim()).unwrap()
}

fn region_of(d: &Daemon) -> String {
    // The placement comes with the registration, which a daemon makes as it starts.
    wait_until("the tracker places the node", || {
        let r = status(d)["region"].as_str().unwrap_or_default().to_string();
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
    let seed = start("seed", "r0");
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
    let crossed1 = status(&first)["cross_region_bytes"].as_u64().unwrap();
    assert_eq!(crossed1, data.len() as u64, "everything the first of r1 got came from r0");
    // The second of r1 finds its region holding everything: the seed (another region) is
    // asked only for what r1 lacks, which is nothing, once the first's bitfield is in.
    let out2 = tmp.path().join("out2.bin");
    get_json(&second.dir, &ticket, &out2, &[]);
    assert_eq!(std::fs::read(&out2).unwrap(), data);
    let crossed2 = status(&second)["cross_region_bytes"].as_u64().unwrap();
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
    let mut c = shoal(&tmp.path().join("d"));
    c.args(["daemon", "--listen", "127.0.0.1:0", "--region", "Bad Name"]);
    let err = fails(c);
    assert!(err.contains("bad region name") && err.contains("lowercase"), "{err}");
}
