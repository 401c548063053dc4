//! The tracker's Prometheus metrics, encoded by `prometheus-client` in the Prometheus text
//! format (0.0.4).
//!
//! Nothing a scrape reads grows with the registry: request counters are atomics bumped as
//! requests are served, node and swarm counts and nodes per region are kept by the index as
//! nodes come and go (read under its lock in O(regions)), the lookup histogram is filled as
//! lookups are answered, and what needs a pass over the registry (nodes by role and region,
//! their load, the bytes held by storage) is a [`Snapshot`] that housekeeping takes once a
//! second, whatever the scrape rate.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shoal_core::NodeId;
use shoal_index::Totals;

use crate::Shared;

/// A label set of static keys and values.
type Labels = [(&'static str, &'static str); 1];

/// Instruments the tracker fills as it works, and the once-a-second snapshot.
#[derive(Debug)]
pub(crate) struct Observed {
    /// Seconds from a lookup's arrival (decoded) to its answer (built): lock wait included.
    pub(crate) lookup_seconds: Histogram,
    /// Re-seed directives issued in heartbeat replies.
    pub(crate) directives: Counter,
    /// Pieces those directives named.
    pub(crate) directive_pieces: Counter,
    /// Offline-source resolutions, by `found` (`true`: the id named an operator's source).
    pub(crate) sources: Family<Labels, Counter>,
    /// Storage-node queries, by `found` (`some` or `none`).
    pub(crate) storage_queries: Family<Labels, Counter>,
    /// When the tracker started.
    pub(crate) started: Instant,
    /// The tracker's node id.
    pub(crate) node_id: NodeId,
    /// Its QUIC endpoint, for the open-connection count.
    pub(crate) endpoint: shoal_net::Endpoint,
    /// Refreshed once a second by housekeeping. Held only to read or replace.
    pub(crate) snapshot: Mutex<Arc<Snapshot>>,
    /// Admin views computed at once (see `admin`): a busy poller cannot keep the index lock
    /// from the nodes' requests more than this many views' worth.
    pub(crate) views: tokio::sync::Semaphore,
}

/// Admin views computed at once; further requests wait their turn.
pub(crate) const VIEWS_AT_ONCE: usize = 2;

/// What needs a pass over the registry, taken once a second.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Nodes and load per region.
    pub(crate) totals: Totals,
    /// Bytes of pieces held by admitted storage, summed over storage nodes.
    pub(crate) storage_bytes: u64,
    /// Wall-clock milliseconds when taken (0: not yet).
    pub(crate) taken_ms: u64,
}

impl Observed {
    pub(crate) fn new(node_id: NodeId, endpoint: shoal_net::Endpoint) -> Self {
        Self {
            // 50 µs to ~3.3 s: an index lookup takes microseconds; the tail is lock waits.
            lookup_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            directives: Counter::default(),
            directive_pieces: Counter::default(),
            sources: Family::default(),
            storage_queries: Family::default(),
            started: Instant::now(),
            node_id,
            endpoint,
            snapshot: Mutex::default(),
            views: tokio::sync::Semaphore::new(VIEWS_AT_ONCE),
        }
    }

    /// The latest snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A lookup took `d`.
    pub(crate) fn lookup_took(&self, d: Duration) {
        self.lookup_seconds.observe(d.as_secs_f64());
    }
}

/// Takes the snapshot: one pass over the nodes, then storage's holdings page by page (the
/// index lock is released between pages).
pub(crate) fn refresh(shared: &Shared, now_ms: u64) {
    let totals = shared.index_read().totals();
    let mut storage_bytes = 0u64;
    let mut after = None;
    loop {
        let page = shared.index_read().nodes_page(after, shoal_index::MAX_PAGE, true);
        storage_bytes += page.iter().filter_map(|r| r.stored_bytes).sum::<u64>();
        match page.last() {
            Some(last) if page.len() == shoal_index::MAX_PAGE => after = Some(last.node),
            _ => break,
        }
    }
    let snap = Arc::new(Snapshot { totals, storage_bytes, taken_ms: now_ms });
    *shared.obs.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = snap;
}

/// The registry a scrape encodes. (The encoder ends registered metrics' help with a period.)
pub(crate) fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    let o = &shared.obs;
    r.register(
        "shoal_tracker_lookup_seconds",
        "Lookup latency at the tracker, from the decoded request to the built answer",
        o.lookup_seconds.clone(),
    );
    r.register(
        "shoal_tracker_reseed_directives",
        "Re-seed directives issued in heartbeat replies",
        o.directives.clone(),
    );
    r.register(
        "shoal_tracker_reseed_pieces",
        "Pieces named by re-seed directives issued",
        o.directive_pieces.clone(),
    );
    r.register(
        "shoal_tracker_offline_sources",
        "Offline-source ids resolved, by whether the id named a source",
        o.sources.clone(),
    );
    r.register(
        "shoal_tracker_storage_queries",
        "Requests for the storage nodes (pushes, offline downloads), by whether one was named",
        o.storage_queries.clone(),
    );
    r.register_collector(Box::new(Gauges(shared)));
    r
}

/// Encodes `registry` as Prometheus text.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug: serve what we have.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// The gauges and counters read at scrape time from atomics, the index's counts and the
/// snapshot.
#[derive(Debug)]
struct Gauges(Arc<Shared>);

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c: ConstCounter<u64> = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for Gauges {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.0;
        let ((nodes, swarms), (manifest_bytes, rate_keys), regions) = {
            let ix = shared.index_read();
            (ix.counts(), ix.footprint(), ix.region_counts())
        };
        let m = &shared.metrics;
        let (announce_rate, lookup_rate) = *m.rates.lock().unwrap_or_else(|p| p.into_inner());
        gauge(&mut e, "shoal_tracker_nodes", "Registered nodes.", nodes as u64)?;
        gauge(&mut e, "shoal_tracker_swarms", "Contents with at least one holder.", swarms as u64)?;
        let counters = [
            ("shoal_tracker_announces", "Announces and deltas.", &m.announces),
            ("shoal_tracker_lookups", "Lookups.", &m.lookups),
            ("shoal_tracker_registers", "Registrations.", &m.registers),
            ("shoal_tracker_heartbeats", "Heartbeats.", &m.heartbeats),
            ("shoal_tracker_forged", "Requests refused for speaking for another node.", &m.forged),
            ("shoal_tracker_rate_limited", "Requests refused by a rate limit.", &m.rate_limited),
            (
                "shoal_tracker_unadmitted_storage",
                "Registrations claiming storage from nodes not admitted.",
                &m.unadmitted_storage,
            ),
            ("shoal_tracker_reports", "Reports of holders that never delivered.", &m.reports),
        ];
        for (name, help, value) in counters {
            counter(&mut e, name, help, value.load(Ordering::Relaxed))?;
        }
        gauge(&mut e, "shoal_tracker_manifest_bytes", "Manifest bytes kept.", manifest_bytes)?;
        gauge(
            &mut e,
            "shoal_tracker_rate_limit_keys",
            "Addresses and node ids tracked by the rate limiter.",
            rate_keys as u64,
        )?;
        gauge(
            &mut e,
            "shoal_tracker_announces_per_second",
            "Announces per second over the last 10 s.",
            announce_rate,
        )?;
        gauge(
            &mut e,
            "shoal_tracker_lookups_per_second",
            "Lookups per second over the last 10 s.",
            lookup_rate,
        )?;
        gauge(
            &mut e,
            "shoal_tracker_connections",
            "QUIC connections open at the tracker.",
            shared.obs.endpoint.open_connections() as u64,
        )?;
        {
            let help = "Registered nodes per region (\"\" for none).";
            let mut family =
                e.encode_descriptor("shoal_tracker_region_nodes", help, None, MetricType::Gauge)?;
            for (region, n) in &regions {
                let labels = [("region", region.as_ref().map_or("", |r| r.as_str()))];
                ConstGauge::new(*n as u64).encode(family.encode_family(&labels)?)?;
            }
        }
        let snap = shared.obs.snapshot();
        {
            let help = "Registered nodes by role and region, as of the last snapshot (1 s).";
            let mut family =
                e.encode_descriptor("shoal_tracker_nodes_by_role", help, None, MetricType::Gauge)?;
            for r in &snap.totals.regions {
                let region = r.region.as_ref().map_or("", |r| r.as_str());
                let (storage, nodes) = (r.storage as u64, (r.nodes - r.storage) as u64);
                for (role, n) in [("node", nodes), ("storage", storage)] {
                    let labels = [("role", role), ("region", region)];
                    ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let (uploads, rate) = snap.totals.regions.iter().fold((0u64, 0u64), |(u, r), x| {
            (u + x.active_uploads, r.saturating_add(x.upload_rate))
        });
        gauge(
            &mut e,
            "shoal_tracker_active_uploads",
            "Uploads under way, summed over nodes' last heartbeats.",
            uploads,
        )?;
        gauge(
            &mut e,
            "shoal_tracker_upload_bytes_per_second",
            "Upload rate summed over nodes' last heartbeats, bytes per second.",
            rate,
        )?;
        gauge(
            &mut e,
            "shoal_tracker_storage_bytes",
            "Bytes of pieces held by admitted storage nodes, as of the last snapshot.",
            snap.storage_bytes,
        )?;
        Ok(())
    }
}
