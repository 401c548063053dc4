//! The `shoal` command line: its subcommands and flags (clap derive). `main.rs` runs them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use shoal_control::{Rate, Size};
use shoal_core::PeerAddr;

/// Peer-assisted file swarm: share a file, fetch it from many peers at once over QUIC, every
/// piece verified by its BLAKE3 hash.
#[derive(Debug, Parser)]
#[command(name = "shoal", version)]
pub(crate) struct Cli {
    /// The node's data dir: key, metadata and the running daemon's control address.
    #[arg(long, global = true, env = "SHOAL_DATA_DIR", default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, env = "SHOAL_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    Node,
    Storage,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a node: serve everything in its store to peers, and the local control API.
    Daemon {
        /// UDP address for peers, ADDR or ADDR=NAME (default port 7401; 0.0.0.0:0 takes any
        /// free port). Repeat it for a node with several links (uplinks): each address serves
        /// peers, the first also dials, and the tracker hands each downloader the least loaded
        /// one (checking first that the node answers there).
        #[arg(long, env = "SHOAL_LISTEN", default_value = "0.0.0.0:7401", value_delimiter = ',')]
        listen: Vec<String>,
        /// An address others reach this node at, IP:PORT, for a node behind a port forward:
        /// registered with the tracker and put in tickets before the listen addresses
        /// (repeatable). The tracker lists it only after the node proved its key there.
        #[arg(long, env = "SHOAL_ADVERTISE", value_delimiter = ',', value_name = "ADDR")]
        advertise: Vec<String>,
        /// Cap on total upload, like 20MiB/s.
        #[arg(long, env = "SHOAL_UPLOAD_LIMIT")]
        upload_limit: Option<Rate>,
        /// Cap on total download, like 20MiB/s.
        #[arg(long, env = "SHOAL_DOWNLOAD_LIMIT")]
        download_limit: Option<Rate>,
        /// Tracker to register with (HOST:PORT, or NODE_ID@HOST:PORT to pin its key); tickets
        /// of added files carry it and its node id. Several, comma-separated (A,B), are
        /// replicas of one tracker: the node uses one and fails over to the next.
        #[arg(long, env = "SHOAL_TRACKER", conflicts_with = "testnet")]
        tracker: Option<String>,
        /// Join the local testnet whose run directory this is (started by `shoal-testnet up`).
        #[arg(long, env = "SHOAL_TESTNET")]
        testnet: Option<PathBuf>,
        /// `node`, or `storage`: keep pieces in an object store for good and accept verified
        /// pushes.
        #[arg(long, env = "SHOAL_ROLE", value_enum, default_value = "node")]
        role: Role,
        /// For a storage node: `file:///path` (default: a directory in the data dir) or
        /// `s3://bucket[/prefix]` (credentials and region from the AWS environment variables).
        #[arg(long, env = "SHOAL_STORE")]
        store: Option<String>,
        /// For a storage node: accept pushes from this user (`shoal user` prints its id), up to
        /// QUOTA bytes in total (like 10GiB; absent: unlimited). Repeatable.
        #[arg(
            long = "grant",
            env = "SHOAL_GRANT",
            value_delimiter = ',',
            value_name = "USER_ID[=QUOTA]"
        )]
        grants: Vec<String>,
        /// S3 endpoint of an S3-compatible service (else AWS_ENDPOINT_URL or AWS itself).
        #[arg(long, env = "SHOAL_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        /// Allow a plain-HTTP S3 endpoint (unencrypted: for a store on loopback).
        #[arg(long, env = "SHOAL_DANGER_S3_ALLOW_HTTP")]
        danger_s3_allow_http: bool,
        /// For a storage node: let offline tasks fetch from loopback, private and link-local
        /// addresses (refused by default, so users cannot reach your network through storage).
        #[arg(long, env = "SHOAL_OFFLINE_ALLOW_PRIVATE")]
        offline_allow_private: bool,
        /// Keep DIR in step with your space on storage: what an offline task (from any of your
        /// devices) makes permanent is fetched into DIR, verified. Needs --tracker.
        #[arg(long, env = "SHOAL_SYNC_DIR", value_name = "DIR")]
        sync_dir: Option<PathBuf>,
        /// The region this node states to its tracker, like eu-west (lowercase letters,
        /// digits, - and _). The tracker takes it only if its operator allows stated regions
        /// (`shoal-tracker serve --allow-stated-region`); otherwise it places the node by its
        /// address. `shoal status` shows the region the tracker chose.
        #[arg(long, env = "SHOAL_REGION", value_name = "NAME")]
        region: Option<String>,
        /// For a storage node: the size of its pull-through cache, like 4GiB (0: off). Asked
        /// for a content it lacks, storage fetches it from the swarm (from other regions where
        /// its own has none) and serves it while it arrives; the least recently used pulled
        /// contents go when the cache is full. What storage keeps for good is not counted.
        #[arg(long, env = "SHOAL_PULL_THROUGH_CACHE", value_name = "SIZE", default_value = "4GiB")]
        pull_through_cache: Size,
        /// TESTING ONLY: advertise every piece of any content held in part (a lying bitfield).
        #[arg(long, env = "SHOAL_DANGER_LIE_BITFIELD")]
        danger_lie_bitfield: bool,
        /// TESTING ONLY: flip a byte in each uploaded piece with this probability.
        #[arg(long, env = "SHOAL_DANGER_CORRUPT_UPLOADS", default_value_t = 0.0, value_parser = probability)]
        danger_corrupt_uploads: f64,
        /// Also serve Prometheus /metrics on this address, like 127.0.0.1:9464 (off by default;
        /// the control API on 127.0.0.1 serves /metrics either way).
        #[arg(long, env = "SHOAL_METRICS", value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Share a file through the running daemon and print its ticket.
    Add {
        /// The file to share (it stays where it is).
        path: PathBuf,
        /// Also print the ticket as a QR code on stderr.
        #[arg(long, env = "SHOAL_QR")]
        qr: bool,
    },
    /// Fetch a file from its ticket (through the daemon if one runs, else standalone).
    Get {
        /// The ticket (shoal1...).
        ticket: String,
        /// Where to put the file.
        #[arg(short, long, env = "SHOAL_OUTPUT")]
        output: PathBuf,
        /// A peer to fetch from: IP:PORT or NODE_ID@IP:PORT (repeatable).
        #[arg(long = "peer", env = "SHOAL_PEER", value_delimiter = ',')]
        peers: Vec<PeerAddr>,
        /// Cap on download rate, like 20MiB/s.
        #[arg(long, env = "SHOAL_DOWNLOAD_LIMIT")]
        download_limit: Option<Rate>,
        /// Tracker to find peers with (HOST:PORT or NODE_ID@HOST:PORT; several comma-separated,
        /// tried in order), instead of the ticket's.
        #[arg(long, env = "SHOAL_TRACKER")]
        tracker: Option<String>,
        /// Print one JSON object with the outcome on stdout.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
        /// Hand the download to the daemon as a job and return at once, printing the job id
        /// (`shoal jobs` shows it, `shoal cancel JOB` stops it).
        #[arg(long, env = "SHOAL_DETACH")]
        detach: bool,
    },
    /// List the daemon's jobs (`shoal get --detach`), running and recently finished.
    Jobs {
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Stop a running job: its partial file is deleted, its output never written.
    Cancel {
        /// The job id (`shoal jobs`).
        job: String,
        /// Print the cancelled job as JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Stop holding and seeding a content (the tracker is told). Files stay where they are.
    Rm {
        /// The content id (`shoal ls`), or its first 8 characters or more.
        content: String,
        /// Also delete what this node wrote for it (a partial download, or a fetched file
        /// unchanged since); a file added in place is yours and is never deleted.
        #[arg(long, env = "SHOAL_DELETE")]
        delete: bool,
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Push a file (added first) or a content id into storage, through the daemon.
    Push {
        /// A file path or a content id.
        target: String,
        /// Print one JSON object with the outcome on stdout.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// List what the node holds.
    Ls {
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Print the user this node pushes into storage as (its node key, unless `shoal user new`
    /// made a separate user key): what a storage operator passes to `--grant`.
    User {
        /// Print `{"user_id": .., "node_id": ..}`.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
        #[command(subcommand)]
        action: Option<UserAction>,
    },
    /// Offline download: have storage fetch a URL into your space, and follow it.
    Offline {
        #[command(subcommand)]
        action: super::offline_cli::OfflineAction,
    },
    /// Your space on storage: what offline tasks put there.
    Space {
        #[command(subcommand)]
        action: super::offline_cli::SpaceAction,
    },
    /// Show the node's id, addresses and counters.
    Status {
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserAction {
    /// Make a separate user key (DATA_DIR/user.key) that this node then acts for, with a
    /// signed device certificate; refuses if one exists.
    New,
    /// Let another of your devices act for your user: prints a certificate for NODE_ID (its
    /// `shoal user --json` node_id) to pass to `shoal user use` there. Needs the user key here.
    Link {
        /// The other device's node id.
        node_id: String,
    },
    /// Act for the user that linked this device (the certificate `shoal user link` printed).
    Use {
        /// The certificate (shoaldev1...).
        cert: String,
    },
}

pub(crate) fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

pub(crate) fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("shoal")
}
