//! `shoal`: run a node, share files and fetch them.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use shoal_control::{human_bytes, FetchReport, GetBody, LsEntry, Progress, Rate, Size};
use shoal_core::{PeerAddr, Ticket};
use shoal_node::config::{Grants, NodeConfig};
use shoal_node::fetch::FetchRequest;
use shoal_node::node::Node;

#[path = "cli/offline.rs"]
mod offline_cli;

#[path = "cli/manage.rs"]
mod manage_cli;

/// Peer-assisted file swarm: share a file, fetch it from many peers at once over QUIC, every
/// piece verified by its BLAKE3 hash.
#[derive(Debug, Parser)]
#[command(name = "shoal", version)]
struct Cli {
    /// The node's data dir: key, metadata and the running daemon's control address.
    #[arg(long, global = true, env = "SHOAL_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, env = "SHOAL_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Node,
    Storage,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        action: offline_cli::OfflineAction,
    },
    /// Your space on storage: what offline tasks put there.
    Space {
        #[command(subcommand)]
        action: offline_cli::SpaceAction,
    },
    /// Show the node's id, addresses and counters.
    Status {
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserAction {
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

fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("shoal")
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `shoal daemon --config FILE` (or `SHOAL_CONFIG`), `--print-config`, completions and man.
const CLI_SPEC: shoal_cli::Spec =
    shoal_cli::Spec { subcommand: "daemon", config_env: "SHOAL_CONFIG" };

fn main() -> ExitCode {
    let cli: Cli = shoal_cli::parse(&CLI_SPEC);
    let default_level = if matches!(cli.command, Command::Daemon { .. }) { "info" } else { "warn" };
    init_logging(cli.log_format, default_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = absolute(&cli.data_dir)?;
    match cli.command {
        Command::Daemon {
            listen,
            advertise,
            upload_limit,
            download_limit,
            tracker,
            testnet,
            role,
            store,
            grants,
            s3_endpoint,
            danger_s3_allow_http,
            offline_allow_private,
            sync_dir,
            region,
            pull_through_cache,
            danger_lie_bitfield,
            danger_corrupt_uploads,
            metrics,
        } => {
            let sync_dir = sync_dir.map(|d| absolute(&d)).transpose()?;
            let mut links =
                listen.iter().map(|l| parse_link(l)).collect::<anyhow::Result<Vec<_>>>()?;
            if links.len() > shoal_wire::tracker::MAX_ADDRS {
                bail!("--listen: at most {} addresses", shoal_wire::tracker::MAX_ADDRS);
            }
            let (listen, listen_name) = links.remove(0);
            let advertise = manage_cli::parse_advertise(&advertise)?;
            let region = region.map(|r| r.parse::<shoal_core::Region>()).transpose()?;
            if offline_allow_private && role != Role::Storage {
                bail!("--offline-allow-private is for storage nodes: add --role storage");
            }
            let grants = Grants::parse(&grants)?;
            if !grants.is_empty() && role != Role::Storage {
                bail!("--grant is for storage nodes: add --role storage");
            }
            let tracker = match testnet {
                Some(dir) => Some(testnet_tracker(&dir)?),
                None => tracker,
            };
            if let Some(t) = &tracker {
                shoal_core::ticket::parse_trackers(t)?;
            }
            if store.is_some() && role != Role::Storage {
                bail!("--store is for storage nodes: add --role storage");
            }
            let storage = (role == Role::Storage).then(|| {
                store.unwrap_or_else(|| format!("file://{}", data_dir.join("objects").display()))
            });
            let s3 = shoal_cloud::backend::S3Options {
                endpoint: s3_endpoint,
                allow_http: danger_s3_allow_http,
                ..Default::default()
            };
            let config = NodeConfig {
                listen,
                upload_limit,
                download_limit,
                danger_corrupt_uploads,
                danger_lie_bitfield,
                tracker,
                storage,
                s3,
                grants,
                offline_allow_private,
                sync_dir,
                region,
                pull_through_cache: pull_through_cache.0,
                listen_name,
                more_links: links,
                advertise,
                metrics,
                ..NodeConfig::new(data_dir)
            };
            if danger_corrupt_uploads > 0.0 {
                tracing::warn!(
                    p = danger_corrupt_uploads,
                    "corrupting uploads on purpose (--danger-corrupt-uploads)"
                );
            }
            runtime()?.block_on(shoal_node::daemon::run(config, shutdown_signal()))
        }
        Command::Add { path, qr } => add(&data_dir, &path, qr),
        Command::Get { ticket, output, peers, download_limit, tracker, json, detach } => {
            if let Some(t) = &tracker {
                shoal_core::ticket::parse_trackers(t)?;
            }
            if detach {
                let limit = download_limit;
                return manage_cli::get_detached(
                    &data_dir, &ticket, &output, peers, limit, tracker, json,
                );
            }
            get(&data_dir, &ticket, &output, peers, download_limit, tracker, json)
        }
        Command::Push { target, json } => push(&data_dir, &target, json),
        Command::Ls { json } => ls(&data_dir, json),
        Command::Status { json } => status(&data_dir, json),
        Command::User { json, action } => user(&data_dir, json, action),
        Command::Offline { action } => offline_cli::offline(&data_dir, action),
        Command::Space { action } => offline_cli::space(&data_dir, action),
        Command::Jobs { json } => manage_cli::jobs(&data_dir, json),
        Command::Cancel { job, json } => manage_cli::cancel(&data_dir, &job, json),
        Command::Rm { content, delete, json } => manage_cli::rm(&data_dir, &content, delete, json),
    }
}

/// `shoal user [new] [--json]`: the user id (and node id), making keys as the daemon would.
fn user(data_dir: &Path, json: bool, action: Option<UserAction>) -> anyhow::Result<()> {
    use shoal_net::Identity;
    shoal_node::node::create_data_dir(data_dir)?;
    let node = Identity::load_or_create(data_dir)?;
    let user = match action {
        Some(UserAction::New) => Identity::create_user(data_dir)?.user_id(),
        Some(UserAction::Link { node_id }) => {
            let other: shoal_core::NodeId = node_id
                .trim()
                .parse()
                .with_context(|| format!("cannot read node id {node_id:?}"))?;
            let user = Identity::load_user(data_dir)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "this data dir holds no user key: make one with `shoal user new` (or link \
                     from the device that holds it)"
                )
            })?;
            let cert = shoal_net::identity::print_device_cert(&user.device_cert(other));
            println!("{cert}");
            eprintln!("on that device, run: shoal user use {cert}");
            return Ok(());
        }
        Some(UserAction::Use { cert }) => {
            if Identity::load_user(data_dir)?.is_some() {
                bail!("this data dir holds its own user key: a device with a user key acts for it");
            }
            let cert = shoal_net::identity::parse_device_cert(&cert, &node.node_id())?;
            shoal_net::identity::store_device_cert(data_dir, &cert)?;
            cert.user
        }
        None => match Identity::load_user(data_dir)? {
            Some(u) => u.user_id(),
            None => match shoal_net::identity::load_device_cert(data_dir, &node.node_id()) {
                Some(c) => c.user,
                None => node.node_id().into(),
            },
        },
    };
    if json {
        #[derive(serde::Serialize)]
        struct Ids {
            user_id: String,
            node_id: String,
        }
        let ids = Ids { user_id: user.to_string(), node_id: node.node_id().to_string() };
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        println!("{user}");
    }
    Ok(())
}

/// The tracker address of a testnet run directory.
fn testnet_tracker(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("testnet.json");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (is {} a run directory of `shoal-testnet up`?)",
            path.display(),
            dir.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))?;
    v["tracker"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{} names no tracker", path.display()))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

fn no_daemon(data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "no shoal daemon is running for data dir {}: start one with `shoal daemon --data-dir {}`",
        data_dir.display(),
        data_dir.display()
    )
}

fn add(data_dir: &Path, path: &Path, qr: bool) -> anyhow::Result<()> {
    let path =
        std::fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))?;
    let md = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if !md.is_file() {
        bail!("{} is not a regular file: shoal shares single files", path.display());
    }
    std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let client = manage_cli::daemon(data_dir)?;
    let reply = client.add(&path)?;
    println!("{}", reply.ticket);
    if qr {
        let code = qrcode::QrCode::new(reply.ticket.to_ascii_uppercase().as_bytes())
            .context("ticket too long for a QR code")?;
        let image = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build();
        eprintln!("{image}");
    }
    Ok(())
}

/// Renders progress: a bar on a terminal, a plain line a second otherwise.
struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    last: Option<Instant>,
    warned: Option<String>,
}

impl ProgressView {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{wide_bar}] {pos}/{len} pieces  {msg}  eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self { bar, last: None, warned: None }
    }

    fn update(&mut self, p: &Progress) {
        if p.warning.is_some() && p.warning != self.warned {
            self.warned = p.warning.clone();
            let line = format!("warning: {}", p.warning.as_deref().unwrap_or_default());
            match &self.bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_length(u64::from(p.pieces_total));
            bar.set_position(u64::from(p.pieces_done));
            bar.set_message(format!("{}/s, {} peers", human_bytes(p.rate), p.peers));
            return;
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || p.pieces_done == p.pieces_total {
            self.last = Some(Instant::now());
            let pct = if p.pieces_total == 0 {
                100.0
            } else {
                100.0 * f64::from(p.pieces_done) / f64::from(p.pieces_total)
            };
            let eta = if p.rate > 0.0 {
                format!("{:.0}s", (p.size - p.bytes_done) as f64 / p.rate)
            } else {
                "?".into()
            };
            eprintln!(
                "progress: {}/{} pieces ({pct:.1}%), {}/s, {} peers, eta {eta}",
                p.pieces_done,
                p.pieces_total,
                human_bytes(p.rate),
                p.peers
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// An output path made absolute, in an existing directory, and not there yet.
fn checked_output(output: &Path) -> anyhow::Result<PathBuf> {
    let output = absolute(output)?;
    if let Some(dir) = output.parent() {
        if !dir.is_dir() {
            bail!(
                "directory {} does not exist: create it or choose another output path",
                dir.display()
            );
        }
    }
    if output.symlink_metadata().is_ok() {
        bail!("{} already exists: remove it or choose another output path", output.display());
    }
    Ok(output)
}

fn get(
    data_dir: &Path,
    ticket: &str,
    output: &Path,
    peers: Vec<PeerAddr>,
    limit: Option<Rate>,
    tracker: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let shown: String = ticket.chars().take(12).collect();
    let parsed: Ticket =
        ticket.parse().map_err(|e| anyhow::anyhow!("cannot read ticket \"{shown}..\": {e}"))?;
    let output = checked_output(output)?;
    let mut view = ProgressView::new();
    let body = GetBody {
        ticket: ticket.trim().to_string(),
        output: output.clone(),
        peers: peers.iter().map(|p| p.to_string()).collect(),
        limit: limit.map(|r| r.0),
        tracker: tracker.clone(),
    };
    let report = match manage_cli::daemon_if_running(data_dir)? {
        Some(client) => client.get(&body, |p| view.update(p)).map_err(anyhow::Error::from),
        None => match get_standalone(data_dir, parsed, output, peers, limit, tracker, &mut view) {
            // A daemon took the data dir in the instant between looking and opening it.
            Err(e) if manage_cli::in_use(&e) => manage_cli::after_in_use(data_dir, e)
                .and_then(|c| Ok(c.get(&body, |p| view.update(p))?)),
            r => r,
        },
    };
    view.finish();
    let report = report?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn get_standalone(
    data_dir: &Path,
    ticket: Ticket,
    output: PathBuf,
    extra_peers: Vec<PeerAddr>,
    limit: Option<Rate>,
    tracker: Option<String>,
    view: &mut ProgressView,
) -> anyhow::Result<FetchReport> {
    runtime()?.block_on(async {
        let node = Node::open(&NodeConfig::new(data_dir.to_path_buf()))?;
        // Serve what we verify while we fetch.
        shoal_node::daemon::start(&node);
        let (ptx, mut prx) = tokio::sync::watch::channel(Progress::default());
        let req = FetchRequest { ticket, extra_peers, output, limit: limit.map(|r| r.0), tracker };
        let fut = shoal_node::fetch::fetch(node.clone(), req, ptx);
        tokio::pin!(fut);
        let result = loop {
            tokio::select! {
                r = &mut fut => break r,
                Ok(()) = prx.changed() => view.update(&prx.borrow_and_update().clone()),
            }
        };
        node.close().await;
        result
    })
}

fn print_report(r: &FetchReport) {
    let rate = r.downloaded_bytes as f64 / r.seconds.max(1e-9);
    let used = r.peers.iter().filter(|p| p.pieces > 0).count();
    println!(
        "fetched {} ({}) to {} in {:.1}s ({}/s from {used} peers, {} bad pieces{})",
        r.content_id.get(..12).unwrap_or(&r.content_id),
        human_bytes(r.size as f64),
        r.path,
        r.seconds,
        human_bytes(rate),
        r.bad_pieces,
        if r.resumed_pieces > 0 {
            format!(", {} pieces resumed", r.resumed_pieces)
        } else {
            String::new()
        }
    );
    for p in r.peers.iter().filter(|p| p.banned) {
        println!("banned {} at {} for sending bad data", p.node_id, p.addr);
    }
}

fn push(data_dir: &Path, target: &str, json: bool) -> anyhow::Result<()> {
    let target = if target.parse::<shoal_core::ContentId>().is_ok() {
        target.to_string()
    } else {
        let p = std::fs::canonicalize(target).with_context(|| format!("cannot read {target}"))?;
        p.display().to_string()
    };
    let client = manage_cli::daemon(data_dir)?;
    let r = client.push(&target)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else if r.already_stored {
        println!(
            "already stored: {} ({}), nothing sent",
            &r.content_id[..12],
            human_bytes(r.size as f64)
        );
    } else {
        println!(
            "pushed {} of {} ({}) in {:.1}s; {}",
            human_bytes(r.pushed_bytes as f64),
            &r.content_id[..12],
            human_bytes(r.size as f64),
            r.seconds,
            if r.stored { "stored" } else { "storage still lacks pieces this node does not hold" }
        );
    }
    Ok(())
}

fn ls(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let entries: Vec<LsEntry> = match manage_cli::daemon_if_running(data_dir)? {
        Some(c) => c.ls()?,
        None => manage_cli::ls_standalone(data_dir)?,
    };
    if json {
        println!("{}", serde_json::to_string(&entries)?);
        return Ok(());
    }
    for e in &entries {
        let state = match e.state.as_str() {
            "partial" if e.pieces_total > 0 => {
                format!(
                    "partial {:.1}%",
                    100.0 * f64::from(e.pieces_have) / f64::from(e.pieces_total)
                )
            }
            s => s.to_string(),
        };
        println!(
            "{}  {:<16} {:>10}  {}",
            e.content_id,
            state,
            human_bytes(e.size as f64),
            shoal_core::manifest::escape_name(&e.name)
        );
    }
    Ok(())
}

fn status(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let client = manage_cli::daemon(data_dir)?;
    let s = client.status()?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("{} {}", s.role, s.node_id);
        println!("addresses {}", s.addrs.join(", "));
        println!(
            "uploaded {} ({} pieces)",
            human_bytes(s.uploaded_bytes as f64),
            s.pieces_uploaded
        );
        println!(
            "downloaded {} ({} bad pieces)",
            human_bytes(s.downloaded_bytes as f64),
            s.bad_pieces
        );
        println!(
            "pushed {} into storage; {} pushes refused",
            human_bytes(s.pushed_bytes as f64),
            s.pushes_refused
        );
        for c in &s.contents {
            println!(
                "{}  {:<15}{:<7} {:>5}/{:<5} pieces  {:>3} peers  uploaded {:>10}  {}",
                &c.content_id[..16],
                c.state,
                if c.stored { " stored" } else { "" },
                c.pieces_have,
                c.pieces_total,
                c.peers,
                human_bytes(c.uploaded_bytes as f64),
                shoal_core::manifest::escape_name(&c.name)
            );
        }
    }
    Ok(())
}

/// One `--listen` value: `ADDR` or `ADDR=NAME`.
fn parse_link(s: &str) -> anyhow::Result<(SocketAddr, Option<String>)> {
    let (addr, name) = match s.rsplit_once('=') {
        Some((a, n)) => (a, Some(n)),
        None => (s, None),
    };
    let addr = addr.trim().parse::<SocketAddr>().map_err(|_| {
        anyhow::anyhow!("--listen {s:?}: write IP:PORT or IP:PORT=NAME, like 10.0.0.2:7401=fiber")
    })?;
    let name = match name.map(str::trim) {
        Some(n)
            if n.is_empty()
                || n.len() > 32
                || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            bail!("--listen {s:?}: a link name is 1 to 32 letters, digits, '-' or '_'")
        }
        n => n.map(str::to_string),
    };
    Ok((addr, name))
}
