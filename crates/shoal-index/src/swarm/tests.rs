//! Reports and word-wise counts (the holders' own tests are in `holders/tests.rs`).

use super::*;

fn ids(n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|_| {
            let kp = libp2p_identity::Keypair::generate_ed25519();
            NodeId::from_public_key(&kp.public()).unwrap()
        })
        .collect()
}

#[test]
fn word_wise_counts_match_bit_by_bit() {
    // Boundary table of lengths in bytes: 0, 1, 7, 8, 9, 17.
    for len in [0usize, 1, 7, 8, 9, 17] {
        let a: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let b: Vec<u8> = (0..len).map(|i| (i * 91 + 3) as u8).collect();
        let slow: u32 = a.iter().zip(&b).map(|(x, y)| (x & !y).count_ones()).sum();
        assert_eq!(count_and_not(&a, Some(&b)), slow, "len {len}");
        let all: u32 = a.iter().map(|x| x.count_ones()).sum();
        assert_eq!(count_and_not(&a, None), all);
        // A shorter `b` (a mask of another length): its missing bytes mask nothing.
        let short = &b[..len / 2];
        let slow: u32 = a
            .iter()
            .enumerate()
            .map(|(i, x)| (x & !short.get(i).copied().unwrap_or(0)).count_ones())
            .sum();
        assert_eq!(count_and_not(&a, Some(short)), slow, "len {len} short");
    }
}

fn ip(i: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, i])
}

#[test]
fn reports_are_distinct_and_bounded() {
    let r = ids(1);
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    let yes = |_: &NodeId| true;
    assert_eq!(s.report(r[0], ip(1), 3, 2, yes), 1);
    assert_eq!(s.report(r[0], ip(1), 3, 2, yes), 1, "the same source counts once");
    assert_eq!(s.report(r[0], ip(2), 3, 2, yes), 2);
    assert_eq!(s.report(r[0], ip(3), 3, 2, yes), 3);
    assert_eq!(s.report(r[0], ip(4), 3, 2, yes), 3, "capped");
    assert_eq!(s.reported(&r[0]), 3);
}

#[test]
fn a_full_report_table_evicts_unregistered_then_undemoted_holders_before_refusing() {
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    let throwaway = ids(MAX_REPORTED);
    let yes = |_: &NodeId| true;
    for &h in &throwaway {
        assert_eq!(s.report(h, ip(1), 5, 2, yes), 1);
    }
    assert_eq!(s.reports.len(), MAX_REPORTED);
    // The throwaway ids are gone from the tracker: a real report evicts them.
    let real = ids(1)[0];
    let gone = |h: &NodeId| !throwaway.contains(h);
    assert_eq!(s.report(real, ip(2), 5, 2, gone), 1);
    assert_eq!(s.reports.len(), 1, "unregistered holders' entries evicted");
    // Still registered but reported once (not demoted): one is evicted to make room.
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    for &h in &throwaway {
        s.report(h, ip(1), 5, 2, yes);
    }
    assert_eq!(s.report(real, ip(2), 5, 2, yes), 1);
    assert_eq!(s.reports.len(), MAX_REPORTED);
    // A table full of demoted holders keeps them and ignores a new one.
    let mut s = Swarm::new(1, Bytes::new(), 0, 0);
    for &h in &throwaway {
        s.report(h, ip(1), 5, 2, yes);
        s.report(h, ip(2), 5, 2, yes);
    }
    assert_eq!(s.report(real, ip(3), 5, 2, yes), 0);
    assert!(!s.reports.contains_key(&real));
}
