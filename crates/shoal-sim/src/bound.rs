//! The heterogeneous fluid lower bound on the last finish (Kumar & Ross, 2006).

/// `T* = max(F / u_s, F / d_min, N F / (u_s + sum u_i))` for a file of `file` bytes, a seed
/// uploading `seed` bytes/s, downloaders uploading `uplinks` bytes/s each and no download cap
/// (so the `F / d_min` term is zero): no schedule can finish every downloader sooner.
pub fn fluid_bound(file: u64, seed: f64, uplinks: &[f64]) -> f64 {
    let f = file as f64;
    let n = uplinks.len() as f64;
    let total = seed + uplinks.iter().sum::<f64>();
    (f / seed).max(n * f / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_or_the_swarm_limits() {
        // One downloader: the seed's uplink is the limit.
        assert_eq!(fluid_bound(100, 10.0, &[10.0]), 10.0);
        // Many equal downloaders: N F / (u_s + N u) tends to F / u.
        let ups = vec![10.0; 99];
        assert!((fluid_bound(100, 10.0, &ups) - 10.0).abs() < 1e-9);
        // Slow downloaders: the swarm's capacity is the limit.
        let ups = vec![2.5; 100];
        let want = 100.0 * 100.0 / (10.0 + 250.0);
        assert!((fluid_bound(100, 10.0, &ups) - want).abs() < 1e-9);
    }
}
