//! The node's Prometheus metrics, encoded by `prometheus-client` in the Prometheus text format
//! (0.0.4): served on the control API's `/metrics` (127.0.0.1) and, with
//! `shoal daemon --metrics ADDR`, on an address of the operator's choosing (`crate::scrape`).
//!
//! Counters and histograms are bumped where the work happens (bytes as they move, pieces as
//! they verify, a fetch's latency as its piece lands); gauges are kept as things change
//! (contents held, their bytes, swarms with peers) or read from counters others keep (open
//! connections: quinn's; offline tasks: the in-memory task table). No scrape reads the store.
//! No label names a content, a file or a peer: only kinds (`node`/`storage`), directions,
//! `same`/`other`/`unknown` region and states, so the output says nothing about what the
//! node holds.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels1 = [(&'static str, &'static str); 1];
type Labels3 = [(&'static str, &'static str); 3];

/// Which way bytes went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// Sent to a peer (served or pushed).
    Up,
    /// Received from a peer (fetched or pushed to this storage node).
    Down,
}

/// The node's instruments. Lives in [`crate::stats::Stats`], so every part that counts
/// already holds it.
#[derive(Debug)]
pub(crate) struct NodeMetrics {
    /// Piece bytes by `direction`, `peer` kind and `region` (same, other, unknown).
    bytes: Family<Labels3, Counter>,
    /// Pieces verified and kept (fetched, or pushed into this storage node).
    pub(crate) pieces_verified: Counter,
    /// Seconds from asking a peer for a piece to holding it verified, by `peer` kind.
    fetch_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    /// Re-seed directives by `outcome`: received, obeyed (pushed), failed.
    pub(crate) directives: Family<Labels1, Counter>,
    /// Contents with at least one peer session.
    pub(crate) swarms: Gauge,
    /// Contents held, by state, as of the last read of what the node holds.
    pub(crate) contents: Family<Labels1, Gauge>,
    /// Bytes of verified pieces held (partial contents pro rata to their pieces).
    pub(crate) held_bytes: Gauge,
}

fn fetch_histogram() -> Histogram {
    // 1 ms to ~65 s: a piece on loopback takes milliseconds, over a slow link seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            bytes: Family::default(),
            pieces_verified: Counter::default(),
            fetch_seconds: Family::new_with_constructor(fetch_histogram),
            directives: Family::default(),
            swarms: Gauge::default(),
            contents: Family::default(),
            held_bytes: Gauge::default(),
        }
    }
}

impl NodeMetrics {
    /// Counts `n` piece bytes moved in direction `dir` to or from a peer of `kind` (`node`,
    /// `storage`) and `region` (`same`, `other`, `unknown`): see `Known::peer_kind` and
    /// `Known::region_label`.
    pub(crate) fn bytes(&self, dir: Direction, kind: &'static str, region: &'static str, n: u64) {
        self.bytes_to(dir, kind, region).inc_by(n);
    }

    /// The counter [`Self::bytes`] adds to, for a loop that counts as it sends (looked up
    /// once, not per chunk).
    pub(crate) fn bytes_to(
        &self,
        dir: Direction,
        kind: &'static str,
        region: &'static str,
    ) -> Counter {
        let direction = match dir {
            Direction::Up => "up",
            Direction::Down => "down",
        };
        let labels = [("direction", direction), ("peer", kind), ("region", region)];
        self.bytes.get_or_create(&labels).clone()
    }

    /// A piece from a peer of `kind` was verified `took` after it was asked for.
    pub(crate) fn fetched(&self, kind: &'static str, took: Duration) {
        self.fetch_seconds.get_or_create(&[("peer", kind)]).observe(took.as_secs_f64());
    }

    /// Counts a re-seed directive's `outcome`.
    pub(crate) fn directive(&self, outcome: &'static str) {
        self.directives.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Registers the instruments in a scrape's registry.
    pub(crate) fn register(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "shoal_peer_bytes",
            "Piece bytes by direction, peer kind (storage: named as storage by the tracker, or a push into storage) and region (same, other, unknown)",
            m.bytes.clone(),
        );
        r.register(
            "shoal_pieces_verified",
            "Pieces verified against the manifest and kept",
            m.pieces_verified.clone(),
        );
        r.register(
            "shoal_piece_fetch_seconds",
            "Seconds from asking a peer for a piece to holding it verified, by peer kind",
            m.fetch_seconds.clone(),
        );
        r.register(
            "shoal_reseed_directives",
            "Re-seed directives from the own tracker, by outcome (received, obeyed, failed)",
            m.directives.clone(),
        );
        r.register("shoal_swarms", "Contents with at least one peer session", m.swarms.clone());
        r.register(
            "shoal_contents",
            "Contents held, by state, as of the last read of the store (after a change)",
            m.contents.clone(),
        );
        r.register(
            "shoal_held_bytes",
            "Bytes of verified pieces held (partial contents pro rata to their pieces)",
            m.held_bytes.clone(),
        );
    }
}
