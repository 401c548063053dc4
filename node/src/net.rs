//! The node's place on the network: its identity and its QUIC endpoint (with the admission
//! caps `shoal-net` applies to incoming connections).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use shoal_core::NodeId;
use shoal_net::{Endpoint, Identity};

/// Identity and endpoint. Shared by every part that dials or serves.
#[derive(Debug)]
pub struct Net {
    pub(crate) identity: Identity,
    pub(crate) endpoint: Endpoint,
}

impl Net {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Addresses peers can reach this node at: the bound address, or, if bound to every
    /// interface, the address of the default route and loopback.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let Ok(bound) = self.endpoint.local_addr() else {
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

    /// Closes all connections, waiting briefly for them to close cleanly. Cancel-safe.
    pub async fn close(&self) {
        self.endpoint.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}

/// The local address of the default route, found without sending anything.
fn default_route_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // 192.0.2.1 is TEST-NET-1: connect() on UDP only picks a route; no packet leaves.
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}
