//! The simulation end to end: small swarms complete near the bound, the same seed gives the
//! same outcome, churn completes, and a node's `PeerSet` replayed from the simulation's input
//! log makes the very same decisions.

use std::time::Duration;

use shoal_sim::replay::{replay, Output};
use shoal_sim::{run, Outcome, Scenario};
use shoal_swarm::Action;

fn small(nodes: usize, churn: f64, seed: u64) -> Scenario {
    Scenario {
        nodes,
        // 2 MiB in 128 pieces of 16 KiB at 512 KiB/s: seconds of simulated time, and a
        // debug build runs it in seconds. The piece size is explicit so the figures below do
        // not move with the node's piece-size rule.
        uplink: 512 * 1024,
        file_size: 2 * 1024 * 1024,
        piece_size: Some(16 * 1024),
        latency: Duration::from_millis(10),
        churn,
        seed,
        ..Scenario::default()
    }
}

/// Everything but the wall time.
fn decisions(o: &Outcome) -> Outcome {
    Outcome { wall_s: 0.0, ..o.clone() }
}

#[test]
fn fifty_nodes_with_mixed_uplinks_complete_near_the_bound() {
    let out = run(&small(50, 0.0, 3)).unwrap();
    println!(
        "ratio {:.3} (last {:.2} s, bound {:.2} s), seed copies {:.3}, overhead {:.3}",
        out.ratio, out.last_finish_s, out.bound_s, out.seed_copies, out.upload_overhead
    );
    assert_eq!((out.finish_s.len(), out.churned), (50, 0));
    assert!(out.finish_s.iter().all(|&f| f > 0.0 && f <= out.last_finish_s));
    assert!(out.ratio >= 1.0, "nothing beats the fluid bound: {}", out.ratio);
    // What this size reaches today (ratio about 1.8, 2.2 copies), with margin: a policy
    // change that makes it worse fails here.
    assert!(out.ratio <= 2.2, "ratio {}", out.ratio);
    assert!(out.seed_copies <= 2.5, "seed copies {}", out.seed_copies);
    assert!(out.upload_overhead <= 1.2, "wasted uploads: {}", out.upload_overhead);
}

#[test]
fn a_seed_bound_swarm_wastes_few_uploads_on_second_copies() {
    // 15 downloaders and a seed at one rate: the seed's copy is the bound, and the others can
    // just send what they need of each other in that time, so every wasted byte moves the
    // finish. 8 MiB in 128 pieces of 64 KiB at 1 MiB/s.
    for seed in 1..=4 {
        let scenario = Scenario {
            nodes: 15,
            uplink: 1024 * 1024,
            slow_fraction: 0.0,
            file_size: 8 * 1024 * 1024,
            piece_size: Some(64 * 1024),
            latency: Duration::from_millis(10),
            churn: 0.0,
            seed,
            ..Scenario::default()
        };
        let out = run(&scenario).unwrap();
        println!(
            "seed {seed}: ratio {:.3}, seed copies {:.3}, overhead {:.3}",
            out.ratio, out.seed_copies, out.upload_overhead
        );
        assert_eq!(out.finish_s.len(), 15);
        // With second copies asked of busy peers whenever nothing else was free, and the
        // origin's first viewers shown everything for good: ratio 1.27 to 1.33, overhead 1.13
        // to 1.19 at these seeds. Now 1.20 to 1.22 and 1.08 to 1.12.
        assert!(out.ratio <= 1.25, "seed {seed}: ratio {}", out.ratio);
        assert!(out.upload_overhead <= 1.13, "seed {seed}: wasted uploads {}", out.upload_overhead);
    }
}

#[test]
fn the_same_seed_gives_the_same_outcome_and_another_seed_another() {
    let a = run(&small(30, 0.1, 7)).unwrap();
    let b = run(&small(30, 0.1, 7)).unwrap();
    assert_eq!(decisions(&a), decisions(&b));
    let c = run(&small(30, 0.1, 8)).unwrap();
    assert_ne!(a.finish_s, c.finish_s, "the seed drives the random choices");
}

#[test]
fn a_tenth_of_the_swarm_leaving_and_coming_back_still_completes() {
    let out = run(&small(50, 0.1, 5)).unwrap();
    println!(
        "ratio {:.3} (stayers' last {:.2} s, all {:.2} s, bound {:.2} s), seed copies {:.3}",
        out.ratio, out.last_finish_s, out.last_finish_all_s, out.bound_s, out.seed_copies
    );
    assert_eq!(out.churned, 5);
    assert!(out.finish_s.iter().all(|&f| f > 0.0), "every downloader finishes");
    assert!(out.last_finish_all_s >= out.last_finish_s);
    assert!(out.ratio <= 2.5, "ratio {}", out.ratio);
    assert!(out.seed_copies <= 3.0, "seed copies {}", out.seed_copies);
}

#[test]
fn a_seed_guarding_its_first_copy_sends_far_fewer_copies_for_a_little_more_time() {
    // A fifth of the swarm leaves and comes back: some of the seed's first copies leave with
    // it and must be sent again; the rest the swarm spreads without the seed.
    let guarded = run(&small(60, 0.2, 3)).unwrap();
    let open = run(&Scenario { guard: false, ..small(60, 0.2, 3) }).unwrap();
    println!(
        "guarded: ratio {:.3}, seed copies {:.3}; not: ratio {:.3}, seed copies {:.3}",
        guarded.ratio, guarded.seed_copies, open.ratio, open.seed_copies
    );
    assert!(guarded.finish_s.iter().all(|&f| f > 0.0), "every downloader finishes");
    assert!(guarded.seed_copies <= 1.3, "seed copies {}", guarded.seed_copies);
    assert!(
        guarded.seed_copies + 0.1 < open.seed_copies,
        "{} {}",
        guarded.seed_copies,
        open.seed_copies
    );
    // The price, in a small swarm whose tail is long (1.5 times the seed's first copy): the
    // seed's later copies helped the last downloaders, 1-5% of the finish over seeds 1-6.
    assert!(guarded.ratio <= open.ratio * 1.1, "{} against {}", guarded.ratio, open.ratio);
}

#[test]
fn a_node_and_the_simulation_make_the_same_decisions_from_the_same_inputs() {
    let scenario = Scenario { record: vec![1, 17, 30], ..small(30, 0.0, 11) };
    let out = run(&scenario).unwrap();
    assert_eq!(out.logs.len(), 3, "one log per recorded downloader");
    for log in &out.logs {
        let requests = log
            .outputs
            .iter()
            .filter(|o| matches!(o, Output::Action(Action::Request { .. })))
            .count();
        // At least one request per piece: the log covers the whole download.
        assert!(requests >= 128, "node {}: {requests} requests", log.node);
        assert!(replay(log) == log.outputs, "node {}: the replay diverged", log.node);
        // The decisions depend on the set's seed (its picker's shuffle): the comparison can
        // fail. (`PeerSet` ignores the seed's lowest bit.)
        let other = shoal_sim::replay::Log { seed: log.seed.wrapping_add(2), ..log.clone() };
        assert!(replay(&other) != log.outputs, "node {}: the seed changed nothing", log.node);
    }
}

/// The scenario: 1,000 downloaders, a quarter at a quarter of the uplink, a tenth
/// churning, 32 MiB at 2 MiB/s. Opt-in (`cargo test --release -p shoal-sim -- --ignored`):
/// minutes of CPU with 16 KiB pieces. Prints the figures; asserts only completion.
#[test]
#[ignore = "heavy: run in release, by hand"]
fn thousand_nodes_with_mixed_uplinks_and_churn() {
    let s = Scenario { nodes: 1000, churn: 0.1, ..Scenario::default() };
    let out = run(&s).unwrap();
    println!("{}", summary(&out));
}

/// 10,000 downloaders, otherwise as above. Opt-in; with 16 KiB pieces this is a long run.
#[test]
#[ignore = "heavy: run in release, by hand"]
fn ten_thousand_nodes_with_mixed_uplinks_and_churn() {
    let s = Scenario { nodes: 10_000, churn: 0.1, ..Scenario::default() };
    let out = run(&s).unwrap();
    println!("{}", summary(&out));
}

fn summary(o: &Outcome) -> String {
    format!(
        "{} nodes, {} pieces of {} KiB: last {:.2} s, bound {:.2} s, ratio {:.3}, seed copies {:.3}, seed sent all by {:.2} s, busy {}, events {}, wall {:.1} s",
        o.nodes,
        o.pieces,
        o.piece_size / 1024,
        o.last_finish_s,
        o.bound_s,
        o.ratio,
        o.seed_copies,
        o.seed_all_sent_s,
        o.busy,
        o.events,
        o.wall_s
    )
}
