//! Network namespaces for a testnet: one per process, uplinks shaped with `tc`, and with
//! regions, one switched segment per region behind a router whose links are shaped too.
//!
//! Names carry `<run>`, the PID of `shoal-testnet` (a crashed run is one whose PID is gone, so
//! concurrent runs never clean each other up); every namespace is `shoaltn-<run>-<what>`.
//!
//! # One region (the default, as before regions existed)
//!
//! A bridge `stbr<run>` in the root namespace at 10.199.<run % 250>.1/24; for each process a
//! namespace holding one end of a veth pair at 10.199.<run % 250>.<k>/24 with a default route
//! via the bridge, and a `tbf` queue on that end shaping the process's upload.
//!
//! # Regions ([`Net::regional`])
//!
//! ```text
//!   node ns ─┐                                   ┌─ node ns
//!   node ns ─┤ switch-r0 ══tbf══ router ══tbf══ switch-r1 ├─ node ns
//!            │   (bridge)  (ip_forward=1)  (bridge)       │
//!                              ║ (unshaped)
//!                          switch-core ─ tracker ns
//! ```
//!
//! Each segment (a region, or the core where the tracker sits) is a namespace
//! `shoaltn-<run>-switch-<seg>` holding a bridge, one port per process of the segment and an
//! uplink port `uplink`, whose veth peer `seg<k>` sits in `shoaltn-<run>-router` as the segment's
//! gateway. Region k is 10.198.k.0/24 (gateway .1, processes from .2), the core 10.198.255.0/24.
//! Traffic inside a region is switched and never reaches the router; traffic between regions
//! is routed, without NAT, so the tracker sees each node's own address and maps it to its
//! region by CIDR. The inter-region limit is a `tbf` on both ends of each region's uplink: on
//! `uplink` (leaving the region) and on the router's `seg<k>` (entering it). With two regions that
//! is one link of the limit each way between them; with more, a region's traffic to all others
//! shares its uplink, like a region's border router. The core's uplink is never shaped: the
//! tracker stands for a global service, not a region.
//!
//! Why namespaces for the switches and router rather than bridges in the root namespace: the
//! host's own routing, forwarding setting and firewall (`bridge-nf-call-iptables`) never see a
//! packet of the run, veth pairs are made directly inside their namespaces (no name can clash
//! with another run's), and deleting the namespaces removes every link with them.
//!
//! Everything is removed when the [`Net`] is dropped (normal exit, error, Ctrl-C or SIGTERM),
//! and [`Net::new`] / [`Net::regional`] first remove what a crashed run left.

use std::process::Command;

use anyhow::{bail, Context};

use crate::regions::{Region, Regions};

const PREFIX: &str = "shoaltn-";
/// The first two octets of every regional address.
const REGIONAL_NET: &str = "10.198";
/// The third octet of the core segment (regions use 0 to [`crate::regions::MAX_REGIONS`]).
const CORE: u32 = 255;

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

/// Runs `args` (a command and its arguments) inside namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Shapes what leaves `dev` in `ns` to `rate` bytes per second with `tbf`.
fn tbf(ns: &str, dev: &str, rate: u64) -> anyhow::Result<()> {
    // tbf: rate in bits per second, a burst of at least one MTU-sized batch.
    let bits = (rate * 8).to_string() + "bit";
    let burst = (rate / 10).max(64 * 1024).to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf"])
        .args(["rate", &bits, "burst", &burst, "latency", "100ms"])
        .output()
        .context("running tc")?;
    if !out.status.success() {
        bail!("tc tbf on {dev} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The namespaces (and, with one region, the bridge) of one run.
#[derive(Debug)]
pub(crate) struct Net {
    run: u32,
    layout: Layout,
    /// Every namespace made, in order; deleted in reverse.
    namespaces: Vec<String>,
    /// The next host number of the flat layout, or the next port number of the regional one.
    next: u32,
}

#[derive(Debug)]
enum Layout {
    /// One bridge in the root namespace.
    Flat { bridge: String },
    /// A router namespace and one switch namespace per region, plus the core's.
    Regional {
        /// The next host number in each region, then in the core (last).
        hosts: Vec<u32>,
    },
}

/// One process's place in the network.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) ns: String,
    pub(crate) addr: String,
}

impl Net {
    /// The layout `regions` needs: one bridge for a single region, else a router and a
    /// switch per region.
    pub(crate) fn for_regions(regions: &Regions) -> anyhow::Result<Self> {
        if regions.is_single() {
            Self::new()
        } else {
            Self::regional(regions.count(), regions.inter_limit())
        }
    }

    /// Removes leftovers of crashed runs, then makes the bridge of the single-region layout.
    pub(crate) fn new() -> anyhow::Result<Self> {
        cleanup_leftovers();
        let run = std::process::id();
        let bridge = format!("stbr{run}");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        // From here on, dropping `net` removes the bridge.
        let net = Self {
            run,
            layout: Layout::Flat { bridge: bridge.clone() },
            namespaces: Vec::new(),
            next: 2,
        };
        ip(&["addr", "add", &format!("{}.1/24", net.flat_subnet()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(net)
    }

    /// Removes leftovers of crashed runs, then makes the router and a switch per region and
    /// for the core, each region's uplink shaped to `inter_limit` bytes per second each way.
    pub(crate) fn regional(regions: usize, inter_limit: Option<u64>) -> anyhow::Result<Self> {
        cleanup_leftovers();
        let run = std::process::id();
        let router = format!("{PREFIX}{run}-router");
        let mut net = Self {
            run,
            layout: Layout::Regional { hosts: vec![2; regions + 1] },
            namespaces: Vec::new(),
            next: 0,
        };
        net.make_ns(&router)?;
        in_ns(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        in_ns(&router, &["ip", "link", "set", "dev", "lo", "up"])?;
        let regions = (0..regions as u32).map(|k| (k, format!("r{k}"), inter_limit));
        for (octet, seg, limit) in regions.chain([(CORE, "core".to_string(), None)]) {
            let switch = format!("{PREFIX}{run}-switch-{seg}");
            net.make_ns(&switch)?;
            in_ns(&switch, &["ip", "link", "add", "name", "bridge0", "type", "bridge"])?;
            in_ns(&switch, &["ip", "link", "set", "dev", "bridge0", "up"])?;
            let gw = format!("seg{octet}");
            // The uplink: `uplink` on the switch's bridge, `seg<k>` in the router as the gateway.
            ip(&[
                "link", "add", "name", &gw, "netns", &router, "type", "veth", "peer", "name",
                "uplink", "netns", &switch,
            ])?;
            in_ns(&switch, &["ip", "link", "set", "dev", "uplink", "master", "bridge0"])?;
            in_ns(&switch, &["ip", "link", "set", "dev", "uplink", "up"])?;
            let cidr = format!("{REGIONAL_NET}.{octet}.1/24");
            in_ns(&router, &["ip", "addr", "add", &cidr, "dev", &gw])?;
            in_ns(&router, &["ip", "link", "set", "dev", &gw, "up"])?;
            if let Some(l) = limit {
                tbf(&switch, "uplink", l)?; // leaving the region
                tbf(&router, &gw, l)?; // entering it
            }
        }
        Ok(net)
    }

    /// The subnet of each region in order (`10.198.k.0/24`), for the tracker's region map;
    /// `None` in the single-region layout.
    pub(crate) fn region_subnets(&self) -> Option<Vec<String>> {
        match &self.layout {
            Layout::Flat { .. } => None,
            Layout::Regional { hosts, .. } => {
                Some((0..hosts.len() - 1).map(|k| format!("{REGIONAL_NET}.{k}.0/24")).collect())
            }
        }
    }

    /// Bytes the router sent into each region so far (every packet entering a region, IP
    /// headers and tracker traffic included), read from its `seg<k>` counters; `None` in the
    /// single-region layout or if a counter cannot be read.
    pub(crate) fn bytes_into_regions(&self) -> Option<Vec<u64>> {
        let Layout::Regional { hosts } = &self.layout else { return None };
        let router = format!("{PREFIX}{}-router", self.run);
        (0..hosts.len() - 1)
            .map(|k| {
                let out = Command::new("ip")
                    .args(["-n", &router, "-j", "-s", "link", "show", "dev", &format!("seg{k}")])
                    .output()
                    .ok()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                v[0]["stats64"]["tx"]["bytes"].as_u64()
            })
            .collect()
    }

    fn flat_subnet(&self) -> String {
        format!("10.199.{}", self.run % 250)
    }

    /// Makes namespace `ns`, remembered for removal.
    fn make_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        Ok(())
    }

    /// A namespace for `name`, in `region` (ignored with one region; `None` is the core, for
    /// the tracker), its uplink shaped to `rate` bytes per second if given.
    pub(crate) fn add(
        &mut self,
        name: &str,
        region: Option<Region>,
        rate: Option<u64>,
    ) -> anyhow::Result<Slot> {
        let ns = format!("{PREFIX}{}-{name}", self.run);
        let (dev, addr, gateway) = match &mut self.layout {
            Layout::Flat { bridge } => {
                let k = self.next;
                self.next += 1;
                let bridge = bridge.clone();
                let (host, inner) = (format!("sv{}h{k}", self.run), format!("sv{}n{k}", self.run));
                self.make_ns(&ns)?;
                ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
                ip(&["link", "set", &host, "master", &bridge])?;
                ip(&["link", "set", &host, "up"])?;
                ip(&["link", "set", &inner, "netns", &ns])?;
                let subnet = self.flat_subnet();
                (inner, format!("{subnet}.{k}"), format!("{subnet}.1"))
            }
            Layout::Regional { hosts, .. } => {
                let (octet, seg, slot) = match region {
                    Some(r) if r.0 < hosts.len() - 1 => (r.0 as u32, r.to_string(), r.0),
                    Some(r) => bail!("no region {r} in this testnet"),
                    None => (CORE, "core".to_string(), hosts.len() - 1),
                };
                let k = hosts[slot];
                if k > 254 {
                    bail!("segment {seg} is full (253 processes)");
                }
                hosts[slot] += 1;
                let port = format!("p{}", self.next);
                self.next += 1;
                let switch = format!("{PREFIX}{}-switch-{seg}", self.run);
                self.make_ns(&ns)?;
                ip(&[
                    "link", "add", "name", &port, "netns", &switch, "type", "veth", "peer", "name",
                    "eth0", "netns", &ns,
                ])?;
                in_ns(&switch, &["ip", "link", "set", "dev", &port, "master", "bridge0"])?;
                in_ns(&switch, &["ip", "link", "set", "dev", &port, "up"])?;
                let subnet = format!("{REGIONAL_NET}.{octet}");
                ("eth0".to_string(), format!("{subnet}.{k}"), format!("{subnet}.1"))
            }
        };
        in_ns(&ns, &["ip", "addr", "add", &format!("{addr}/24"), "dev", &dev])?;
        in_ns(&ns, &["ip", "link", "set", "dev", &dev, "up"])?;
        in_ns(&ns, &["ip", "link", "set", "dev", "lo", "up"])?;
        in_ns(&ns, &["ip", "route", "add", "default", "via", &gateway])?;
        if let Some(r) = rate {
            tbf(&ns, &dev, r)?;
        }
        Ok(Slot { ns, addr })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Processes first, then the switches and the router they hung off.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if let Layout::Flat { bridge } = &self.layout {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Reads until EOF from one TCP connection on PORT, then prints bytes and seconds from the
    /// first byte; every wait bounded by 30 s.
    const SINK: &str = "import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(1); s.settimeout(30)
print('ready', flush=True)
c, _ = s.accept(); c.settimeout(30); n = 0; t0 = None
while True:
    d = c.recv(1 << 16)
    if not d: break
    t0 = t0 or time.monotonic(); n += len(d)
print(n, time.monotonic() - (t0 or time.monotonic()), flush=True)";
    /// Sends N bytes to HOST:PORT.
    const SOURCE: &str = "import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
left = int(sys.argv[3]); block = bytes(1 << 16)
while left > 0:
    c.sendall(block[:min(left, len(block))]); left -= min(left, len(block))
c.close()";

    fn available(cmd: &str, arg: &str) -> bool {
        Command::new(cmd).arg(arg).output().is_ok_and(|o| o.status.success())
    }

    /// A sink process, killed when dropped (ended by its PID only).
    struct Sink(Child, mpsc::Receiver<String>);

    impl Drop for Sink {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Sink {
        fn line(&self) -> String {
            self.1.recv_timeout(Duration::from_secs(40)).expect("the sink answers within 40 s")
        }
    }

    fn sink(ns: &str, port: u16) -> Sink {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", SINK, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let s = Sink(child, rx);
        assert_eq!(s.line(), "ready");
        s
    }

    /// Sends `bytes` from `from` to `to` over TCP; the rate the sink saw, bytes per second.
    fn transfer(from: &Slot, to: &Slot, bytes: u64) -> f64 {
        let s = sink(&to.ns, 5001);
        let sent = Command::new("ip")
            .args(["netns", "exec", &from.ns, "python3", "-c", SOURCE, &to.addr, "5001"])
            .arg(bytes.to_string())
            .output()
            .unwrap();
        assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
        let line = s.line();
        let mut w = line.split_whitespace().map(|x| x.parse::<f64>().unwrap());
        let (n, secs) = (w.next().unwrap(), w.next().unwrap());
        assert_eq!(n as u64, bytes, "every byte arrived from {} to {}", from.ns, to.ns);
        n / secs.max(1e-6)
    }

    /// Two regions behind a router, the border shaped: processes reach each other inside a
    /// region, across it and the tracker's core; the rates are printed, not asserted (timing
    /// on a shared machine is no test). Skipped without root, iproute2 or python3.
    #[test]
    fn regions_reach_each_other_across_a_shaped_border_and_leave_nothing() {
        if !available("ip", "-V") || !available("python3", "-V") || !is_root() {
            eprintln!("skipping: needs root, iproute2 and python3");
            return;
        }
        let limit = 4 << 20;
        let started = Instant::now();
        let (a, b, c, t, names) = {
            let mut net = Net::regional(2, Some(limit)).unwrap();
            let a = net.add("a0", Some(Region(0)), None).unwrap();
            let b = net.add("b1", Some(Region(1)), None).unwrap();
            let c = net.add("c2", Some(Region(0)), None).unwrap();
            let t = net.add("tracker", None, None).unwrap();
            assert!(net.add("x", Some(Region(2)), None).is_err(), "no region r2");
            assert_eq!(
                net.region_subnets().unwrap(),
                ["10.198.0.0/24".to_string(), "10.198.1.0/24".to_string()]
            );
            assert!(a.addr.starts_with("10.198.0.") && c.addr.starts_with("10.198.0."));
            assert!(b.addr.starts_with("10.198.1.") && t.addr.starts_with("10.198.255."));
            let across = transfer(&a, &b, 3 * limit);
            let into = net.bytes_into_regions().unwrap();
            assert!(into[1] >= 3 * limit, "the router counted what entered r1: {into:?}");
            let back = transfer(&b, &a, 3 * limit);
            let inside = transfer(&a, &c, 3 * limit);
            transfer(&b, &t, 1 << 20);
            let mib = |r: f64| r / f64::from(1u32 << 20);
            println!(
                "border limit {:.1} MiB/s: r0 -> r1 {:.2} MiB/s, r1 -> r0 {:.2} MiB/s, inside r0 \
                 {:.1} MiB/s ({:.1} s in all)",
                mib(limit as f64),
                mib(across),
                mib(back),
                mib(inside),
                started.elapsed().as_secs_f64()
            );
            (a, b, c, t, net.namespaces.clone())
        };
        // Dropped: every namespace of the run is gone, and the links with them.
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        for ns in names.iter().chain([&a.ns, &b.ns, &c.ns, &t.ns]) {
            assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(ns)), "{ns} left");
        }
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    }
}
