//! The node's place on the network: its identity and its QUIC endpoints (with the admission
//! caps `shoal-net` applies to incoming connections).
//!
//! A node may listen on several addresses, its links (`shoal daemon --listen ADDR[=NAME]`,
//! repeated): one endpoint each, all serving peers; the first also dials. Each link counts the
//! connections it serves, which heartbeats report so the tracker hands each asker the least
//! loaded link.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use shoal_core::NodeId;
use shoal_net::{Endpoint, Identity};

/// One address the node listens on.
#[derive(Debug)]
pub struct Link {
    pub(crate) endpoint: Endpoint,
    /// The operator's name for it, if given.
    pub(crate) name: Option<String>,
    /// Peer connections it serves now.
    pub(crate) connections: AtomicU32,
}

/// Counts a connection on a link while it lives.
#[derive(Debug)]
pub(crate) struct OnLink<'a>(&'a Link);

impl<'a> OnLink<'a> {
    pub(crate) fn new(link: &'a Link) -> Self {
        link.connections.fetch_add(1, Ordering::Relaxed);
        Self(link)
    }
}

impl Drop for OnLink<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identity and endpoints. Shared by every part that dials or serves.
#[derive(Debug)]
pub struct Net {
    pub(crate) identity: Identity,
    /// The first link's endpoint: it dials.
    pub(crate) endpoint: Endpoint,
    /// Every link, the first one included.
    pub(crate) links: Vec<Link>,
    /// Addresses given with `--advertise` (a port forward to a link): listed first.
    advertised: Vec<SocketAddr>,
}

impl Net {
    /// The node on `links` (at least one; the first dials), also reached at `advertised`.
    pub(crate) fn new(
        identity: Identity,
        links: Vec<(Endpoint, Option<String>)>,
        advertised: Vec<SocketAddr>,
    ) -> Self {
        let links: Vec<Link> = links
            .into_iter()
            .map(|(endpoint, name)| Link { endpoint, name, connections: AtomicU32::new(0) })
            .collect();
        let endpoint = links[0].endpoint.clone();
        Self { identity, endpoint, links, advertised }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Addresses peers can reach this node at: the advertised ones first, then every link's
    /// (the bound address, or, if bound to every interface, the address of the default route
    /// and loopback); at most what a registration carries.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        let links = self.links.iter().flat_map(|l| link_addrs(&l.endpoint));
        for a in self.advertised.iter().copied().chain(links) {
            if !out.contains(&a) && out.len() < shoal_wire::tracker::MAX_ADDRS {
                out.push(a);
            }
        }
        out
    }

    /// Per address, the connections its link serves now (for the tracker), when the node has
    /// more than one link.
    pub fn link_loads(&self) -> Vec<(SocketAddr, u32)> {
        if self.links.len() < 2 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for link in &self.links {
            let n = link.connections.load(Ordering::Relaxed);
            out.extend(link_addrs(&link.endpoint).into_iter().map(|a| (a, n)));
        }
        out
    }

    /// Closes all connections, waiting briefly for them to close cleanly. Cancel-safe.
    pub async fn close(&self) {
        for link in &self.links {
            link.endpoint.close();
        }
        for link in &self.links {
            let idle = link.endpoint.wait_idle();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), idle).await;
        }
    }
}

/// The addresses one endpoint is reached at.
fn link_addrs(endpoint: &Endpoint) -> Vec<SocketAddr> {
    let Ok(bound) = endpoint.local_addr() else {
        return Vec::new();
    };
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut out = Vec::new();
    if let Some(ip) = default_route_ip() {
        out.push(SocketAddr::new(ip, bound.port()));
    }
    out.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port()));
    out
}

/// The local address of the default route, found without sending anything.
fn default_route_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // 192.0.2.1 is TEST-NET-1: connect() on UDP only picks a route; no packet leaves.
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}
