//! `shoal-tracker`: the index service of a Shoal swarm.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[path = "cli/ops.rs"]
mod ops;

/// The Shoal tracker: knows which node holds which pieces, answers lookups.
#[derive(Debug, Parser)]
#[command(name = "shoal-tracker", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve nodes over QUIC (and optionally /health and /metrics over HTTP).
    Serve {
        /// UDP address for nodes.
        #[arg(long, env = "SHOAL_TRACKER_LISTEN", default_value = "0.0.0.0:7400")]
        listen: SocketAddr,
        /// HTTP address for /health, /metrics, the dashboard (/) and its read-only admin API
        /// (/api/v1, see docs/admin-api.md); off unless given. Unauthenticated: bind it where
        /// only operators reach it, like 127.0.0.1:7480.
        #[arg(long, env = "SHOAL_TRACKER_HTTP")]
        http: Option<SocketAddr>,
        /// A host name the HTTP address answers to besides IP addresses and localhost, like
        /// the name a reverse proxy passes on (repeatable); pages from other names are refused
        /// (a hostile page rebinding its name to this address).
        #[arg(
            long = "http-host",
            value_name = "NAME",
            env = "SHOAL_TRACKER_HTTP_HOST",
            value_delimiter = ','
        )]
        http_host: Vec<String>,
        /// Key and state (survives restarts).
        #[arg(long, env = "SHOAL_TRACKER_DATA_DIR", default_value = "shoal-tracker-data")]
        data_dir: PathBuf,
        /// Seconds of silence after which a node expires.
        #[arg(long, env = "SHOAL_TRACKER_NODE_TTL", default_value_t = 10)]
        node_ttl: u64,
        /// Seconds between the heartbeats nodes are asked to send.
        #[arg(long, env = "SHOAL_TRACKER_HEARTBEAT", default_value_t = 2)]
        heartbeat: u64,
        /// Seconds without progress after which an upload into storage is re-seeded from the
        /// nodes that hold its missing pieces.
        #[arg(long, env = "SHOAL_TRACKER_RESEED_AFTER", default_value_t = 5)]
        reseed_after: u64,
        /// Admit this node id as storage (repeatable; the id is on the storage daemon's start
        /// line). Nodes not admitted are ordinary nodes whatever role they claim.
        #[arg(
            long = "admit-storage",
            value_name = "NODE_ID",
            env = "SHOAL_TRACKER_ADMIT_STORAGE",
            value_delimiter = ','
        )]
        admit_storage: Vec<String>,
        /// A resource offline tasks may name by id (`shoal offline add --id ID`): ID=URL
        /// (repeatable).
        #[arg(
            long = "offline-source",
            value_name = "ID=URL",
            env = "SHOAL_TRACKER_OFFLINE_SOURCE",
            value_delimiter = ','
        )]
        offline_source: Vec<String>,
        /// Place nodes whose address is in CIDR in region NAME: CIDR=NAME (repeatable; the
        /// longest range holding an address wins), like 10.1.0.0/16=eu-west.
        #[arg(
            long = "region",
            value_name = "CIDR=NAME",
            env = "SHOAL_TRACKER_REGION",
            value_delimiter = ','
        )]
        region: Vec<String>,
        /// A file of CIDR=NAME lines (blank lines and # comments allowed), read with --region.
        #[arg(long, value_name = "FILE", env = "SHOAL_TRACKER_REGION_FILE")]
        region_file: Option<PathBuf>,
        /// A MaxMind-format database (GeoIP2 or GeoLite2 Country or City .mmdb) placing
        /// addresses no --region range holds: in their country's region (--region-country),
        /// else in their continent's (eu, na, as, ...).
        #[arg(long, value_name = "FILE", env = "SHOAL_TRACKER_REGION_DB")]
        region_db: Option<PathBuf>,
        /// With --region-db: the region of a country, CC=NAME (repeatable), like DE=eu-central.
        #[arg(
            long,
            value_name = "CC=NAME",
            env = "SHOAL_TRACKER_REGION_COUNTRY",
            value_delimiter = ','
        )]
        region_country: Vec<String>,
        /// Take the region a node states (`shoal daemon --region NAME`) over the map's.
        #[arg(long, env = "SHOAL_TRACKER_ALLOW_STATED_REGION")]
        allow_stated_region: bool,
        /// Assign and report regions but route as if there were none (to measure what routing
        /// by region saves).
        #[arg(long, env = "SHOAL_TRACKER_IGNORE_REGIONS")]
        ignore_regions: bool,
        /// The most contents one node may announce.
        #[arg(long, env = "SHOAL_TRACKER_MAX_CONTENTS_PER_NODE", default_value_t = 4096)]
        max_contents_per_node: usize,
        /// The most manifest bytes the tracker keeps in total.
        #[arg(long, env = "SHOAL_TRACKER_MAX_MANIFEST_BYTES", default_value_t = 256 * 1024 * 1024)]
        max_manifest_bytes: u64,
        /// The most bytes of manifests nobody announced yet that one address (an IPv6 /64)
        /// may have uploaded.
        #[arg(long, env = "SHOAL_TRACKER_MAX_PENDING_MANIFEST_BYTES", default_value_t = 32 * 1024 * 1024)]
        max_pending_manifest_bytes: u64,
        /// Registrations allowed per source address per second (after the burst).
        #[arg(long, env = "SHOAL_TRACKER_REGISTER_RATE", default_value_t = 8)]
        register_rate: u32,
        /// Registrations one source address may make at once.
        #[arg(long, env = "SHOAL_TRACKER_REGISTER_BURST", default_value_t = 64)]
        register_burst: u32,
        /// Queries (lookups, heartbeats, manifest downloads) allowed per source address per
        /// second (after the burst).
        #[arg(long, env = "SHOAL_TRACKER_QUERY_RATE", default_value_t = 1024)]
        query_rate: u32,
        /// Queries one source address may make at once.
        #[arg(long, env = "SHOAL_TRACKER_QUERY_BURST", default_value_t = 8192)]
        query_burst: u32,
        /// Queries allowed per node id per second (after the burst).
        #[arg(long, env = "SHOAL_TRACKER_QUERY_RATE_PER_NODE", default_value_t = 64)]
        query_rate_per_node: u32,
        /// Queries one node id may make at once.
        #[arg(long, env = "SHOAL_TRACKER_QUERY_BURST_PER_NODE", default_value_t = 512)]
        query_burst_per_node: u32,
        /// Log format on stderr.
        #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: ops::LogFormat,
        /// Where state is kept: sled (under --data-dir, one tracker), or Redis shared by
        /// several tracker replicas: redis://HOST:PORT[/DB] or redis+unix:///PATH/TO/SOCKET.
        #[arg(long, value_name = "BACKEND", env = "SHOAL_TRACKER_BACKEND", default_value = "sled")]
        backend: String,
    },
}

/// `shoal-tracker serve --config FILE` (or `SHOAL_TRACKER_CONFIG`), `--print-config`,
/// completions and man.
const CLI_SPEC: shoal_cli::Spec =
    shoal_cli::Spec { subcommand: "serve", config_env: "SHOAL_TRACKER_CONFIG" };

fn main() -> ExitCode {
    let cli: Cli = shoal_cli::parse(&CLI_SPEC);
    let Command::Serve { log_format, .. } = &cli.command;
    ops::init_logging(*log_format);
    let Command::Serve {
        listen,
        http,
        http_host,
        data_dir,
        node_ttl,
        heartbeat,
        reseed_after,
        admit_storage,
        offline_source,
        region,
        region_file,
        region_db,
        region_country,
        allow_stated_region,
        ignore_regions,
        max_contents_per_node,
        max_manifest_bytes,
        max_pending_manifest_bytes,
        register_rate,
        register_burst,
        query_rate,
        query_burst,
        query_rate_per_node,
        query_burst_per_node,
        log_format: _,
        backend,
    } = cli.command;
    let mut admitted_storage = std::collections::HashSet::new();
    for id in admit_storage.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match id.parse::<shoal_core::NodeId>() {
            Ok(id) => {
                admitted_storage.insert(id);
            }
            Err(_) => {
                eprintln!("error: --admit-storage {id:?} is not a node id (copy it from the storage daemon's \"shoal daemon: node ID\" line)");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut offline_sources = std::collections::HashMap::new();
    for item in offline_source.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let parsed = item.split_once('=').filter(|(id, url)| {
            !id.is_empty()
                && id.len() <= shoal_wire::tracker::MAX_SOURCE_ID_LEN
                && url.len() <= shoal_wire::tracker::MAX_SOURCE_URL_LEN
                && (url.starts_with("http://") || url.starts_with("https://"))
        });
        match parsed {
            Some((id, url)) => {
                offline_sources.insert(id.to_string(), url.to_string());
            }
            None => {
                eprintln!("error: --offline-source {item:?} is not ID=URL (an id of 1 to 255 bytes, an http:// or https:// URL of at most 2048)");
                return ExitCode::FAILURE;
            }
        }
    }
    let file_lines = match &region_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: cannot read --region-file {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        },
        None => String::new(),
    };
    let mut regions = match shoal_index::RegionMap::parse(
        region.iter().map(String::as_str).chain(file_lines.lines()),
    ) {
        Ok(map) => map,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !region_country.is_empty() && region_db.is_none() {
        eprintln!("error: --region-country needs --region-db FILE (a MaxMind-format database)");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &region_db {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read --region-db {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        match shoal_index::GeoRegions::new(bytes, region_country.iter().map(String::as_str)) {
            Ok(geo) => regions = regions.with_geo(geo),
            Err(e) => {
                eprintln!("error: --region-db {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    for (flag, value) in [
        ("--register-burst", register_burst),
        ("--query-burst", query_burst),
        ("--query-burst-per-node", query_burst_per_node),
    ] {
        if value == 0 {
            eprintln!("error: {flag} must be at least 1");
            return ExitCode::FAILURE;
        }
    }
    if heartbeat == 0 || node_ttl <= heartbeat {
        eprintln!("error: --node-ttl ({node_ttl}s) must exceed --heartbeat ({heartbeat}s), which must be at least 1");
        return ExitCode::FAILURE;
    }
    let limits = shoal_tracker::Limits {
        register_per_ip: shoal_tracker::Rate { per_sec: register_rate, burst: register_burst },
        query_per_ip: shoal_tracker::Rate { per_sec: query_rate, burst: query_burst },
        query_per_node: shoal_tracker::Rate {
            per_sec: query_rate_per_node,
            burst: query_burst_per_node,
        },
        ..shoal_tracker::Limits::default()
    };
    let backend = match backend.parse::<shoal_tracker::Backend>() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = shoal_tracker::Config {
        http,
        http_hosts: http_host
            .into_iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
        node_ttl: Duration::from_secs(node_ttl),
        heartbeat: Duration::from_secs(heartbeat),
        reseed_after: Duration::from_secs(reseed_after),
        admitted_storage,
        max_contents_per_node,
        max_manifest_bytes,
        max_pending_manifest_bytes,
        limits,
        offline_sources,
        regions,
        allow_stated_region,
        region_routing: !ignore_regions,
        backend,
        ..shoal_tracker::Config::new(listen, data_dir)
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Caught from here on, before the tracker tells systemd it is ready.
    let stop = {
        let _in = rt.enter();
        shoal_net::signal::shutdown()
    };
    let result = rt.block_on(shoal_tracker::run(
        config,
        |r| {
            let http = r.http.map_or_else(|| "off".to_string(), |h| format!("http://{h}"));
            println!("shoal-tracker: node {} listening on {}, http {http}", r.node_id, r.addr);
            ops::notify(sd_notify::NotifyState::Ready);
        },
        async move {
            stop.await;
            ops::notify(sd_notify::NotifyState::Stopping);
        },
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
