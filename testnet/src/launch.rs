//! Starting and stopping the processes of a testnet.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shoal_core::NodeId;

/// A process of the testnet, killed when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) node_id: String,
    pub(crate) addr: String,
    /// The network namespace it runs in, if any.
    pub(crate) ns: Option<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sibling binary `name` (built with shoal-testnet), or the one on PATH.
pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating shoal-testnet")?;
    let sibling = me.with_file_name(name);
    if sibling.exists() {
        return Ok(sibling);
    }
    if let Some(found) = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.exists()))
    {
        return Ok(found);
    }
    bail!("cannot find {name}: build it with `cargo build --release --bins` (it must sit beside shoal-testnet or on PATH)")
}

/// A command running `bin`, inside namespace `ns` if given (`ip netns exec` keeps the PID).
pub(crate) fn command(bin: &Path, ns: Option<&str>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Waits for the first stdout line that starts with `prefix`, within `limit`.
pub(crate) fn first_line(
    child: &mut Child,
    prefix: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    let out = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return Ok(l),
            Ok(_) => {}
            Err(_) => bail!("process did not start within {}s", limit.as_secs()),
        }
    }
}

/// What the testnet trusts: the storage nodes it starts (the tracker admits them) and the
/// users of the honest nodes it starts (storage grants them space). A node's user id is its
/// node id (the testnet makes no separate user keys).
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    pub(crate) storage: Vec<NodeId>,
    pub(crate) users: Vec<NodeId>,
}

/// Which process trust flags are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Tracker,
    Storage,
}

/// The node id of the data dir `dir`, making its key first if there is none (the same key file
/// the daemon then loads), so flags can name a process before it starts.
pub(crate) fn node_id_in(dir: &Path) -> anyhow::Result<NodeId> {
    std::fs::create_dir_all(dir)?;
    Ok(shoal_net::Identity::load_or_create(dir)
        .with_context(|| format!("making the node key in {}", dir.display()))?
        .node_id())
}

/// The trust flags of a process of `role`: the tracker admits the storage nodes, storage grants
/// the honest nodes' users. Used by `up` and `run` alike.
pub(crate) fn trust_args(role: Role, trust: &Trust) -> Vec<String> {
    let (flag, ids) = match role {
        Role::Tracker => ("--admit-storage", &trust.storage),
        Role::Storage => ("--grant", &trust.users),
    };
    ids.iter().flat_map(|id| [flag.to_string(), id.to_string()]).collect()
}

/// Starts `shoal-tracker serve` in `dir` on a free port.
pub(crate) fn tracker(dir: &Path, extra: &[String]) -> anyhow::Result<Proc> {
    tracker_at(dir, "127.0.0.1:0", None, extra)
}

/// Starts `shoal-tracker serve` in `dir` listening on `listen` (a restart keeps its address),
/// with `extra` flags.
pub(crate) fn tracker_at(
    dir: &Path,
    listen: &str,
    ns: Option<&str>,
    extra: &[String],
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let mut child = command(&binary("shoal-tracker")?, ns)
        .args([
            "serve",
            "--listen",
            listen,
            "--heartbeat",
            "1",
            "--node-ttl",
            "5",
            "--reseed-after",
            "3",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("SHOAL_LOG", log_filter())
        .stdout(Stdio::piped())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log.txt"))?)
        .spawn()
        .context("starting shoal-tracker")?;
    // "shoal-tracker: node ID listening on ADDR, http off"
    let line = first_line(&mut child, "shoal-tracker: node ", Duration::from_secs(30))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    Ok(Proc {
        name: "tracker".into(),
        dir: dir.to_path_buf(),
        node_id: w[2].to_string(),
        addr: w[5].trim_end_matches(',').to_string(),
        ns: ns.map(str::to_string),
        child,
    })
}

/// Starts `shoal daemon` named `name` in `dir` with `extra` flags.
pub(crate) fn daemon(name: &str, dir: &Path, extra: &[String]) -> anyhow::Result<Proc> {
    daemon_in(name, dir, extra, None)
}

/// Starts `shoal daemon` inside namespace slot `net` (its address), or on loopback.
pub(crate) fn daemon_in(
    name: &str,
    dir: &Path,
    extra: &[String],
    net: Option<&crate::netns::Slot>,
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let listen = net.map_or_else(|| "127.0.0.1:0".to_string(), |n| format!("{}:0", n.addr));
    let mut child = command(&binary("shoal")?, net.map(|n| n.ns.as_str()))
        .arg("--data-dir")
        .arg(dir)
        .args(["daemon", "--listen", &listen])
        .args(extra)
        .env("SHOAL_LOG", log_filter())
        .stdout(Stdio::piped())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log.txt"))?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    // "shoal daemon: node ID listening on ADDR, control http://.."
    let line = first_line(&mut child, "shoal daemon: node ", Duration::from_secs(30))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    Ok(Proc {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        node_id: w[3].to_string(),
        addr: w[6].trim_end_matches(',').to_string(),
        ns: net.map(|n| n.ns.clone()),
        child,
    })
}

/// Runs `shoal --data-dir DIR ARGS..` to completion; its stdout.
pub(crate) fn shoal(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    shoal_in(dir, args, None)
}

/// Runs a `shoal` command against the daemon of `dir`, inside its namespace if any.
pub(crate) fn shoal_in(dir: &Path, args: &[&str], ns: Option<&str>) -> anyhow::Result<String> {
    let out = command(&binary("shoal")?, ns).arg("--data-dir").arg(dir).args(args).output()?;
    if !out.status.success() {
        bail!("shoal {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Writes `size` pseudo-random bytes to `path`.
pub(crate) fn generate(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut left = size;
    let mut block = vec![0u8; 1 << 20];
    while left > 0 {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// `shoal get TICKET -o DIR/file.bin --json` through the daemon of `node` (in its namespace);
/// stdout (the report) is piped.
pub(crate) fn spawn_get(node: &Proc, ticket: &str) -> anyhow::Result<Child> {
    Ok(command(&binary("shoal")?, node.ns.as_deref())
        .arg("--data-dir")
        .arg(&node.dir)
        .args(["get", ticket, "-o"])
        .arg(node.dir.join("file.bin"))
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

/// A `shoal get` that ended: the node's index, when (since the clock passed to
/// [`watch_gets`]), whether it succeeded, and its stdout (the JSON report).
pub(crate) struct GetEnded {
    pub(crate) node: usize,
    pub(crate) at: Duration,
    pub(crate) ok: bool,
    pub(crate) out: String,
}

/// Waits for each fetch on a thread of its own and reports its end, timed when its process
/// exits: not when a loop that also does slower work (status tables run `shoal status` in
/// each namespace) gets round to noticing it, which made every fetch of a region seem to end
/// in the same instant, seconds late.
pub(crate) fn watch_gets(gets: Vec<(usize, Child)>, t0: Instant) -> mpsc::Receiver<GetEnded> {
    let (tx, rx) = mpsc::channel();
    for (node, mut child) in gets {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
            }
            let ok = child.wait().is_ok_and(|s| s.success());
            let _ = tx.send(GetEnded { node, at: t0.elapsed(), ok, out });
        });
    }
    rx
}

/// `shoal push FILE` through the daemon of the node whose data dir is `dir` (in namespace
/// `ns`), into the storage its tracker names; output discarded.
pub(crate) fn spawn_push(dir: &Path, ns: Option<&str>, file: &Path) -> anyhow::Result<Child> {
    Ok(command(&binary("shoal")?, ns)
        .arg("--data-dir")
        .arg(dir)
        .arg("push")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// A node's status from its control API: over HTTP, or through the CLI inside its namespace
/// (the API listens on the namespace's own loopback).
pub(crate) fn status(p: &Proc) -> Option<shoal_control::Status> {
    match &p.ns {
        Some(ns) => {
            serde_json::from_str(&shoal_in(&p.dir, &["status", "--json"], Some(ns)).ok()?).ok()
        }
        None => shoal_control::Client::find(&p.dir).ok().flatten()?.status().ok(),
    }
}

/// The log filter of the tracker and the daemons (their `log.txt`): `SHOAL_TESTNET_LOG` if set
/// (say `warn,shoal_node::push=debug`), else warnings only.
fn log_filter() -> String {
    std::env::var("SHOAL_TESTNET_LOG").unwrap_or_else(|_| "warn".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_args_admit_storage_and_grant_users() {
        let tmp = tempfile::tempdir().unwrap();
        let s = node_id_in(&tmp.path().join("storage0")).unwrap();
        let u = node_id_in(&tmp.path().join("node0")).unwrap();
        // The key made first is the one kept.
        assert_eq!(node_id_in(&tmp.path().join("storage0")).unwrap(), s);
        let trust = Trust { storage: vec![s], users: vec![u] };
        let tracker = trust_args(Role::Tracker, &trust);
        let storage = trust_args(Role::Storage, &trust);
        assert_eq!(tracker, ["--admit-storage".to_string(), s.to_string()]);
        assert_eq!(storage, ["--grant".to_string(), u.to_string()]);
    }
}
