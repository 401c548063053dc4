//! The fetcher against real servers on loopback: nginx ([`nginx`]), a scripted misbehaving
//! origin ([`hostile`]), and the guard in front of both ([`ssrf`]).

use std::time::Duration;

use super::{Config, Origin, OriginError, Resource};

mod hostile;
mod nginx;
mod ssrf;

/// Loopback allowed (every server here is on it), and retries fast enough for a test suite.
fn config() -> Config {
    Config {
        allow_private: true,
        stall: Duration::from_secs(5),
        max_attempts: 4,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..Config::default()
    }
}

fn origin() -> Origin {
    Origin::new(config()).unwrap()
}

/// What a fetch delivered: the bytes, as a sink writing at offsets would hold them, and the
/// offset of each chunk in the order the sink saw them.
#[derive(Debug, Default)]
struct Fetched {
    bytes: Vec<u8>,
    offsets: Vec<u64>,
    delivered: u64,
}

/// Fetches `[start, start + len)` of `res` into a [`Fetched`]. The sink checks that chunks
/// come in order: each at the end of the last, or back at `start` (a restarted whole fetch).
async fn fetch(
    origin: &Origin,
    res: &Resource,
    start: u64,
    len: u64,
) -> (Result<(), OriginError>, Fetched) {
    let mut got = Fetched::default();
    let result = origin
        .fetch_range(res, start, len, &mut |offset, chunk| {
            let at = usize::try_from(offset - start).unwrap();
            assert!(at == got.bytes.len() || at == 0, "chunk at {offset} leaves a gap");
            got.bytes.truncate(at);
            got.bytes.extend_from_slice(chunk);
            got.offsets.push(offset);
            got.delivered += chunk.len() as u64;
            Ok(())
        })
        .await;
    (result, got)
}

/// `n` pseudo-random bytes, the same for the same seed.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0; n];
    rng.fill(&mut data);
    data
}
