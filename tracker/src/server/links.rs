//! Checking a node's other links: an address a node registers that is not on the IP its
//! connection comes from (a second uplink) is kept only once the tracker has dialed it and
//! the node proved its key there in the QUIC handshake. Otherwise a stranger could point
//! downloaders at a third party.
//!
//! Bounded: at most [`MAX_DIALS`] checks at once and [`DIALS_PER_SEC`] a second over all
//! nodes (so the tracker cannot be made to send handshakes at a victim faster than that),
//! answers remembered for [`REMEMBER`] in a table of at most [`MAX_REMEMBERED`] entries (a
//! node registering again costs no dial), and only addresses of the same kind as the observed
//! one (loopback, private or public), at most [`DIALS_PER_SOURCE`] at once for the nodes of
//! one source address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_core::{NodeId, PeerAddr};
use shoal_net::Endpoint;
use tokio::sync::Semaphore;
use tracing::debug;

use super::{now_ms, Shared};

/// Checks under way at once.
const MAX_DIALS: usize = 8;
/// Checks started per second, over all nodes.
const DIALS_PER_SEC: f64 = 16.0;
/// How long a verified link is remembered.
const REMEMBER: Duration = Duration::from_secs(600);
/// How long a failed check is remembered (the link may just not have been up yet).
const REMEMBER_FAILED: Duration = Duration::from_secs(60);
/// Checks under way at once for the nodes of one source address: one address cannot take
/// every slot.
const DIALS_PER_SOURCE: usize = 2;
/// Answers remembered at most.
const MAX_REMEMBERED: usize = 4096;
/// How long a check may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The state of link checks.
#[derive(Debug)]
pub(crate) struct Links {
    endpoint: Endpoint,
    permits: Arc<Semaphore>,
    /// (node, address) → (verified, when, ms). Held only for map access.
    seen: Mutex<HashMap<(NodeId, SocketAddr), (bool, u64)>>,
    /// Token bucket: (tokens, last refill ms). Held only for arithmetic.
    bucket: Mutex<(f64, u64)>,
    /// Checks under way per source address. Held only for map access.
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// The kind of an address, for "same kind as the observed one".
fn kind(ip: IpAddr) -> u8 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        ip if ip.is_loopback() => 0,
        IpAddr::V4(v4) if v4.is_private() || v4.is_link_local() => 1,
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => 1,
        _ => 2,
    }
}

impl Links {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            permits: Arc::new(Semaphore::new(MAX_DIALS)),
            seen: Mutex::new(HashMap::new()),
            bucket: Mutex::new((DIALS_PER_SEC, now_ms())),
            per_source: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one of `source`'s check slots; false if it has all of its share.
    fn take_source(&self, source: IpAddr) -> bool {
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(source).or_insert(0);
        if *n >= DIALS_PER_SOURCE {
            return false;
        }
        *n += 1;
        true
    }

    fn give_source(&self, source: IpAddr) {
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&source);
            }
        }
    }

    fn take_token(&self, now: u64) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = (now.saturating_sub(b.1) as f64 / 1000.0) * DIALS_PER_SEC;
        *b = ((b.0 + refill).min(DIALS_PER_SEC), now);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn remembered(&self, key: &(NodeId, SocketAddr), now: u64) -> Option<bool> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let &(ok, at) = seen.get(key)?;
        let ttl = if ok { REMEMBER } else { REMEMBER_FAILED };
        (now.saturating_sub(at) < ttl.as_millis() as u64).then_some(ok)
    }

    fn remember(&self, key: (NodeId, SocketAddr), ok: bool, now: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED && !seen.contains_key(&key) {
            let ttl = REMEMBER.as_millis() as u64;
            seen.retain(|_, (_, at)| now.saturating_sub(*at) < ttl);
            if seen.len() >= MAX_REMEMBERED {
                // Full of fresh answers: this one is not kept (it is dialed again next time).
                return;
            }
        }
        seen.insert(key, (ok, now));
    }
}

/// Checks the addresses `node` registered beyond those kept (`claimed` minus `kept`), adding
/// each it proves its key at. Returns at once; dials run in the background.
pub(crate) fn check(
    shared: &Arc<Shared>,
    node: NodeId,
    observed: SocketAddr,
    claimed: &[SocketAddr],
    kept: &[SocketAddr],
) {
    let now = now_ms();
    let links = &shared.links;
    for &addr in claimed {
        if kept.contains(&addr) || addr.port() == 0 || addr.ip().is_unspecified() {
            continue;
        }
        if kind(addr.ip()) != kind(observed.ip()) {
            debug!(%node, %addr, "link of another kind than the node's address: not checked");
            continue;
        }
        let key = (node, addr);
        match links.remembered(&key, now) {
            Some(true) => {
                let ops = shared.index().add_verified_addr(node, addr);
                shared.persist(&ops);
                continue;
            }
            Some(false) => continue,
            None => {}
        }
        let Ok(permit) = links.permits.clone().try_acquire_owned() else { continue };
        let source = crate::server::source_of(observed.ip());
        if !links.take_source(source) {
            continue;
        }
        if !links.take_token(now) {
            links.give_source(source);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = PeerAddr { node_id: Some(node), addr };
            let dial = shared.links.endpoint.connect(&peer, shoal_wire::ALPN);
            let ok = match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
                Ok(Ok((conn, proved))) => {
                    conn.close(0u32.into(), b"checked");
                    proved == node
                }
                _ => false,
            };
            shared.links.remember(key, ok, now_ms());
            shared.links.give_source(source);
            debug!(%node, %addr, ok, "link checked");
            if ok {
                let ops = shared.index().add_verified_addr(node, addr);
                shared.persist(&ops);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_loopback_private_and_public_apart() {
        let k = |s: &str| kind(s.parse().unwrap());
        assert_eq!(k("127.0.0.2"), k("127.0.0.1"));
        assert_eq!(k("::ffff:127.0.0.1"), k("127.0.0.1"));
        assert_eq!(k("10.1.2.3"), k("192.168.0.1"));
        assert_ne!(k("10.1.2.3"), k("127.0.0.1"));
        assert_ne!(k("8.8.8.8"), k("10.0.0.1"));
        assert_eq!(k("fd00::1"), k("10.0.0.1"));
    }
}
