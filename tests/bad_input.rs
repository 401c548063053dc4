//! Bad input: one clear line on stderr, a non-zero exit, nothing lost.

use crate::support::*;

fn sample_ticket(tmp: &std::path::Path) -> (Daemon, String) {
    let seed = Daemon::start(&tmp.join("seed"), &[]);
    let src = tmp.join("f.bin");
    write_file(&src, 100_000, 1);
    let t = seed.add(&src);
    (seed, t)
}

#[test]
fn missing_file_and_no_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let (seed, _) = sample_ticket(tmp.path());
    let mut c = seed.cmd();
    c.args(["add"]).arg(tmp.path().join("nope.bin"));
    assert!(fails(c).contains("cannot read"));
    let mut c = seed.cmd();
    c.args(["add"]).arg(tmp.path());
    assert!(fails(c).contains("not a regular file"));
    let src = tmp.path().join("f.bin");
    let mut c = shoal(&tmp.path().join("nodaemon"));
    c.arg("add").arg(&src);
    assert!(fails(c).contains("no shoal daemon is running"));
}

/// The ticket with one character of its body changed.
fn typo(ticket: &str) -> String {
    let mut b = ticket.as_bytes().to_vec();
    let i = ticket.len() / 2;
    b[i] = if b[i] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

#[test]
fn malformed_and_truncated_tickets() {
    let tmp = tempfile::tempdir().unwrap();
    let (_seed, ticket) = sample_ticket(tmp.path());
    let out = tmp.path().join("out");
    for (bad, want) in [
        ("hello".to_string(), "not a shoal ticket"),
        (ticket[..ticket.len() - 5].to_string(), "copied whole"),
        (typo(&ticket), "copied whole"),
    ] {
        let mut c = shoal(&tmp.path().join("f"));
        c.args(["get", &bad, "-o"]).arg(&out);
        let err = fails(c);
        assert!(err.contains("cannot read ticket") && err.contains(want), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn unreachable_peer_and_peer_without_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (seed, ticket) = sample_ticket(tmp.path());
    let parsed_ticket_for_other_node = {
        // A content nobody has, pointing at the running seed.
        let other = tmp.path().join("other.bin");
        write_file(&other, 10, 99);
        let other_daemon = Daemon::start(&tmp.path().join("other"), &[]);
        let t = other_daemon.add(&other);
        drop(other_daemon);
        t
    };
    let out = tmp.path().join("out");
    // The ticket's only peer is gone: nothing answers.
    let mut c = shoal(&tmp.path().join("f1"));
    c.args(["get", &parsed_ticket_for_other_node, "-o"]).arg(&out);
    let err = fails(c);
    assert!(err.contains("cannot reach any peer"), "{err}");
    // A reachable peer that does not have the content.
    let mut c = shoal(&tmp.path().join("f2"));
    c.args(["get", &parsed_ticket_for_other_node, "-o"])
        .arg(&out)
        .args(["--peer", &seed.addr.to_string()]);
    let err = fails(c);
    assert!(err.contains("no peer has content"), "{err}");
    assert!(!out.exists());
    // A malformed --peer.
    let mut c = shoal(&tmp.path().join("f3"));
    c.args(["get", &ticket, "-o"]).arg(&out).args(["--peer", "nonsense"]);
    let o = run(c);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("IP:PORT"));
}

#[test]
fn output_directory_missing_or_output_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let (_seed, ticket) = sample_ticket(tmp.path());
    let mut c = shoal(&tmp.path().join("f"));
    c.args(["get", &ticket, "-o"]).arg(tmp.path().join("no/such/dir/out"));
    assert!(fails(c).contains("does not exist"));
    let existing = tmp.path().join("exists");
    std::fs::write(&existing, b"keep me").unwrap();
    let mut c = shoal(&tmp.path().join("f"));
    c.args(["get", &ticket, "-o"]).arg(&existing);
    assert!(fails(c).contains("already exists"));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
}

#[test]
fn full_disk_leaves_nothing_at_the_output() {
    // Needs a small filesystem: a tmpfs mount, which needs root.
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    let seed = Daemon::start(&tmp.path().join("seed"), &[]);
    let src = tmp.path().join("f.bin");
    write_file(&src, 4 * 1024 * 1024, 2);
    let ticket = seed.add(&src);
    let out = small.join("out.bin");
    let mut c = shoal(&tmp.path().join("fetcher"));
    c.args(["get", &ticket, "-o"]).arg(&out);
    let err = fails(c);
    assert!(err.contains("no space left"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    assert!(left.is_empty(), "nothing left on the full disk: {left:?}");
}
