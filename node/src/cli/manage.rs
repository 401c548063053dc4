//! Managing the daemon from the command line: finding it (waiting briefly for one that is
//! starting), `shoal get --detach`, `shoal jobs`, `shoal cancel`, `shoal rm`, and the checks
//! of `shoal daemon --advertise`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::bail;
use shoal_control::lock::{probe, Probe};
use shoal_control::wait::{wait_bound, Need};
use shoal_control::{human_bytes, Client, GetBody, JobStatus, Rate, RmBody};
use shoal_core::PeerAddr;

fn find(data_dir: &Path, need: Need) -> anyhow::Result<Option<Client>> {
    let bound = wait_bound()?;
    let on_wait = |_pid| {
        eprintln!("waiting for the shoal daemon to start (data dir {})...", data_dir.display())
    };
    Ok(Client::find_waiting(data_dir, need, bound, on_wait)?)
}

/// The daemon of `data_dir`, waiting for one that is starting; an error saying how to start
/// one if none runs.
pub(crate) fn daemon(data_dir: &Path) -> anyhow::Result<Client> {
    find(data_dir, Need::Daemon)?.ok_or_else(|| super::no_daemon(data_dir))
}

/// The daemon of `data_dir` if one runs or is starting (waited for); `None` if none does, for
/// commands that then work on the data dir themselves.
///
/// A daemon takes its lock first, then the store, and waits while a command holds the store.
/// So, with no daemon in sight, the store is opened and the lock looked at once more: held
/// means a daemon started meanwhile and waits for the store (let go of it and wait for the
/// daemon); free means a daemon started from now on waits for this command instead.
pub(crate) fn daemon_if_running(data_dir: &Path) -> anyhow::Result<Option<Client>> {
    if let Some(c) = find(data_dir, Need::Optional)? {
        return Ok(Some(c));
    }
    shoal_node::node::create_data_dir(data_dir)?;
    match shoal_store::Store::open(data_dir) {
        Ok(store) => {
            let lock = probe(data_dir)?;
            // Dropped before the fetch opens it again (which waits for sled to let go).
            drop(store);
            match lock {
                Probe::Held { .. } => find(data_dir, Need::Optional),
                Probe::Free => Ok(None),
            }
        }
        Err(e @ shoal_store::StoreError::InUse { .. }) => match find(data_dir, Need::Optional)? {
            Some(c) => Ok(Some(c)),
            None => Err(e.into()),
        },
        // The command's own open says what is wrong.
        Err(_) => Ok(None),
    }
}

/// True if `e` says another process holds the data dir's store.
pub(crate) fn in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<shoal_store::StoreError>(),
            Some(shoal_store::StoreError::InUse { .. })
        )
    })
}

/// After a command found the store held (`e`): the daemon that holds it (waited for while it
/// starts), or `e` if no daemon does (another standalone command holds it).
pub(crate) fn after_in_use(data_dir: &Path, e: anyhow::Error) -> anyhow::Result<Client> {
    daemon_if_running(data_dir)?.ok_or(e)
}

/// `shoal ls` without a daemon: the store read directly, or, if a daemon took the data dir
/// in the meantime, through it.
pub(crate) fn ls_standalone(data_dir: &Path) -> anyhow::Result<Vec<shoal_control::LsEntry>> {
    match shoal_store::Store::open(data_dir) {
        Ok(store) => shoal_node::contents::list(&store),
        Err(e @ shoal_store::StoreError::InUse { .. }) => match daemon_if_running(data_dir)? {
            Some(c) => Ok(c.ls()?),
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// `shoal get --detach`: hands the download to the daemon as a job and prints its id.
pub(crate) fn get_detached(
    data_dir: &Path,
    ticket: &str,
    output: &Path,
    peers: Vec<PeerAddr>,
    limit: Option<Rate>,
    tracker: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    super::transfer::parse_ticket(ticket)?;
    let output = super::transfer::checked_output(output)?;
    let client = daemon(data_dir)?;
    let body = GetBody {
        ticket: ticket.trim().to_string(),
        output: output.clone(),
        peers: peers.iter().map(|p| p.to_string()).collect(),
        limit: limit.map(|r| r.0),
        tracker,
    };
    let started = client.start_job(&body)?;
    if json {
        println!("{}", serde_json::to_string(&started)?);
    } else {
        println!("{}", started.job);
        eprintln!(
            "job {} fetches into {}: `shoal jobs` shows it, `shoal cancel {}` stops it",
            started.job,
            output.display(),
            started.job
        );
    }
    Ok(())
}

fn print_job(j: &JobStatus) {
    let pct = if j.size > 0 { 100.0 * j.bytes_done as f64 / j.size as f64 } else { 0.0 };
    let rate = if j.state == "running" {
        format!("{}/s, {} peers", human_bytes(j.rate), j.peers)
    } else {
        format!("{:.1}s", j.seconds)
    };
    println!(
        "{}  {:<9} {:>5.1}%  {:>10} / {:<10}  {}  {}",
        j.job,
        j.state,
        pct,
        human_bytes(j.bytes_done as f64),
        human_bytes(j.size as f64),
        rate,
        j.output
    );
    if let Some(e) = &j.error {
        println!("          error: {e}");
    }
}

/// `shoal jobs [--json]`.
pub(crate) fn jobs(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let jobs = daemon(data_dir)?.jobs()?;
    if json {
        println!("{}", serde_json::to_string(&jobs)?);
    } else if jobs.is_empty() {
        eprintln!("no jobs: `shoal get TICKET -o PATH --detach` starts one");
    } else {
        jobs.iter().for_each(print_job);
    }
    Ok(())
}

/// `shoal cancel JOB [--json]`.
pub(crate) fn cancel(data_dir: &Path, job: &str, json: bool) -> anyhow::Result<()> {
    let j = daemon(data_dir)?.cancel_job(job)?;
    if json {
        println!("{}", serde_json::to_string(&j)?);
    } else if j.state == "done" {
        println!(
            "job {} had finished before it could be cancelled: {} is complete",
            j.job, j.output
        );
    } else {
        println!(
            "cancelled job {}: its partial file is deleted, {} was not written",
            j.job, j.output
        );
    }
    Ok(())
}

/// `shoal rm CONTENT [--delete] [--json]`.
pub(crate) fn rm(data_dir: &Path, content: &str, delete: bool, json: bool) -> anyhow::Result<()> {
    let body = RmBody { content: content.to_string(), delete };
    let r = daemon(data_dir)?.rm(&body)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "removed {} ({}): no longer held or seeded{}",
        &r.content_id[..16.min(r.content_id.len())],
        shoal_core::manifest::escape_name(&r.name),
        if r.tracker_told { "; the tracker was told" } else { "" }
    );
    for d in &r.deleted {
        println!("deleted {d}");
    }
    for k in &r.kept {
        println!("kept {} ({})", k.path, k.why);
    }
    Ok(())
}

/// The `--advertise` addresses, checked: each an `IP:PORT` others can reach.
pub(crate) fn parse_advertise(items: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let max = shoal_wire::tracker::MAX_ADDRS;
    if items.len() > max {
        bail!("--advertise: at most {max} addresses");
    }
    items
        .iter()
        .map(|s| match s.trim().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Ok(a),
            _ => bail!(
                "--advertise {s:?}: write the IP:PORT others reach this node at (a port forward \
                 to its --listen port), like 203.0.113.7:7401"
            ),
        })
        .collect()
}
