//! Deterministic draws: node ids, subsets, uniform numbers.

use std::collections::BTreeSet;

use shoal_core::NodeId;

use super::Us;

/// A stable, valid node id for node `i` of a run seeded `seed`.
pub(super) fn node_id(seed: u64, i: usize) -> NodeId {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
    secret[8..16].copy_from_slice(&seed.to_le_bytes());
    secret[16] = 0x51;
    // Invariant: any 32 bytes are a valid ed25519 secret key, and its public key converts.
    let kp = libp2p_identity::Keypair::ed25519_from_bytes(secret).expect("32 bytes");
    NodeId::from_public_key(&kp.public()).expect("an ed25519 key")
}

/// `round(fraction * n)` distinct indices below `n`, drawn with `rng`.
pub(super) fn pick(rng: &mut u64, n: usize, fraction: f64) -> BTreeSet<usize> {
    let want = ((n as f64) * fraction).round() as usize;
    let mut all: Vec<usize> = (0..n).collect();
    // A partial Fisher-Yates shuffle.
    for k in 0..want.min(n) {
        let j = k + (xorshift(rng) % (n - k) as u64) as usize;
        all.swap(k, j);
    }
    all.truncate(want);
    all.into_iter().collect()
}

pub(super) fn unit(rng: &mut u64) -> f64 {
    (xorshift(rng) >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) fn secs(s: f64) -> Us {
    (s * 1e6) as Us
}

pub(super) fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
