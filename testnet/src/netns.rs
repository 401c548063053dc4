//! Network namespaces for a testnet: one per process, on a bridge, uplinks shaped with `tc`.
//!
//! Layout, with `<run>` the PID of `shoal-testnet` (a crashed run is one whose PID is gone, so
//! concurrent runs never clean each other up): a bridge `stbr<run>` in the root namespace at
//! 10.199.<run % 250>.1/24; for each process a namespace `shoaltn-<run>-<name>` holding one
//! end of a veth pair at
//! 10.199.<run % 250>.<k>/24 with a default route via the bridge, and a `tbf` queue on that end
//! shaping the process's upload. Everything is removed when the [`Net`] is dropped (normal
//! exit, error, Ctrl-C or SIGTERM), and [`Net::new`] first removes what a crashed run left.

use std::process::Command;

use anyhow::{bail, Context};

const PREFIX: &str = "shoaltn-";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2 is needed for --netns)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {} (--netns needs root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces and bridge of one run.
#[derive(Debug)]
pub(crate) struct Net {
    run: u32,
    bridge: String,
    namespaces: Vec<String>,
    next: u32,
}

/// One process's place in the network.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) ns: String,
    pub(crate) addr: String,
}

impl Net {
    /// Removes leftovers of crashed runs, then makes the bridge.
    pub(crate) fn new() -> anyhow::Result<Self> {
        cleanup_leftovers();
        let run = std::process::id();
        let bridge = format!("stbr{run}");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let net = Self { run, bridge, namespaces: Vec::new(), next: 2 };
        ip(&["addr", "add", &format!("{}.1/24", net.subnet()), "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    fn subnet(&self) -> String {
        format!("10.199.{}", self.run % 250)
    }

    /// A namespace for `name`, its uplink shaped to `rate` bytes per second if given.
    pub(crate) fn add(&mut self, name: &str, rate: Option<u64>) -> anyhow::Result<Slot> {
        let k = self.next;
        self.next += 1;
        let ns = format!("{PREFIX}{}-{name}", self.run);
        let (host, inner) = (format!("sv{}h{k}", self.run), format!("sv{}n{k}", self.run));
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
        ip(&["link", "set", &host, "master", &self.bridge])?;
        ip(&["link", "set", &host, "up"])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        let addr = format!("{}.{k}", self.subnet());
        let exec = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        exec(&["addr", "add", &format!("{addr}/24"), "dev", &inner])?;
        exec(&["link", "set", &inner, "up"])?;
        exec(&["link", "set", "lo", "up"])?;
        exec(&["route", "add", "default", "via", &format!("{}.1", self.subnet())])?;
        if let Some(r) = rate {
            // tbf: rate in bits per second, a burst of at least one MTU-sized batch.
            let bits = (r * 8).to_string() + "bit";
            let burst = (r / 10).max(64 * 1024).to_string();
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &inner, "root", "tbf",
                    "rate", &bits,
                ])
                .args(["burst", &burst, "latency", "100ms"])
                .output()
                .context("running tc")?;
            if !out.status.success() {
                bail!("tc tbf on {inner}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        Ok(Slot { ns, addr })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// True if the run `pid` left it behind: that process no longer exists.
fn abandoned(pid: &str) -> bool {
    pid.parse::<u32>().is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
}

/// Deletes namespaces and bridges that crashed runs left behind (ours by their names).
fn cleanup_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            let pid = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next());
            if pid.is_some_and(abandoned) {
                // Processes a crashed run started still run inside: end them first.
                if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", p]).output();
                    }
                }
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show", "type", "bridge"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split(':').nth(1).map(str::trim) else { continue };
            if name.strip_prefix("stbr").is_some_and(abandoned) {
                let _ = Command::new("ip").args(["link", "del", name]).output();
            }
        }
    }
}
