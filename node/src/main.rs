//! `shoal`: run a node, share files and fetch them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use shoal_node::config::{Grants, NodeConfig};

#[path = "cli/offline.rs"]
mod offline_cli;

#[path = "cli/manage.rs"]
mod manage_cli;

#[path = "cli/args.rs"]
mod args;

#[path = "cli/transfer.rs"]
mod transfer;

use args::{Cli, Command, LogFormat, Role, UserAction};
use transfer::{add, get, ls, push, status};

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
            let rt = runtime()?;
            // Caught from here on, before the daemon tells systemd it is ready.
            let shutdown = {
                let _in = rt.enter();
                shoal_net::signal::shutdown()
            };
            rt.block_on(shoal_node::daemon::run(config, shutdown))
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
