//! Who may hold a connection: caps on connections in total, per source address and per node id.
//!
//! The serving loop asks [`Admission::admit_addr`] before the handshake (refusing costs one
//! packet) and [`Admission::admit_peer`] once the handshake proved the node id. Each grant is a
//! guard that gives its place back when dropped, so a cap can never leak. The maps hold only
//! addresses and ids with a live connection, so they are bounded by the total cap.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use shoal_core::NodeId;

use crate::Limits;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Every connection slot is taken.
    #[error("node is at its cap of {0} connections; try later")]
    Full(usize),
    /// The source address holds its cap of connections.
    #[error("address holds its cap of {0} connections; close some first")]
    Address(usize),
    /// The node id holds its cap of connections.
    #[error("node id holds its cap of {0} connections; reuse them")]
    Peer(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    by_peer: HashMap<NodeId, usize>,
}

/// What a per-address cap counts: an IPv4 address (IPv4-mapped IPv6 addresses included, as a
/// socket bound to `[::]` sees them), or an IPv6 address's /64 prefix (one host commonly holds a
/// whole /64, so counting single addresses would let it open 2^64 times the cap).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if !v6.is_loopback() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        other => other,
    }
}

fn take<K: Hash + Eq>(map: &mut HashMap<K, usize>, key: K, cap: usize) -> bool {
    if map.get(&key).copied().unwrap_or(0) >= cap {
        return false;
    }
    *map.entry(key).or_default() += 1;
    true
}

fn give<K: Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// Connection caps shared by one serving loop.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Limits,
    max: usize,
    // Held only for counter updates, never across an await.
    counts: Arc<Mutex<Counts>>,
}

/// A place for one connection from one address; dropping it frees the place.
#[derive(Debug)]
pub struct AddrGuard {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

/// A place for one connection from one node id; dropping it frees the place.
#[derive(Debug)]
pub struct PeerGuard {
    counts: Arc<Mutex<Counts>>,
    peer: NodeId,
}

impl Admission {
    /// Caps from `limits`, with at most `max` connections in total (and never more than
    /// `limits.max_connections`).
    pub fn new(limits: Limits, max: usize) -> Self {
        let max = max.min(limits.max_connections);
        Self { limits, max, counts: Arc::default() }
    }

    fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
        counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `ip`, before its handshake. Addresses are counted
    /// by [`address_key`]: an IPv6 host is counted by its /64, which it usually owns whole.
    pub fn admit_addr(&self, ip: IpAddr) -> Result<AddrGuard, Refusal> {
        let ip = address_key(ip);
        let mut c = Self::lock(&self.counts);
        if c.total >= self.max {
            return Err(Refusal::Full(self.max));
        }
        let cap = self.limits.per_ip_cap(ip);
        if !take(&mut c.by_ip, ip, cap) {
            return Err(Refusal::Address(cap));
        }
        c.total += 1;
        Ok(AddrGuard { counts: self.counts.clone(), ip })
    }

    /// Takes a place for a connection from the proven node id `peer`.
    pub fn admit_peer(&self, peer: NodeId) -> Result<PeerGuard, Refusal> {
        let mut c = Self::lock(&self.counts);
        if !take(&mut c.by_peer, peer, self.limits.per_peer) {
            return Err(Refusal::Peer(self.limits.per_peer));
        }
        Ok(PeerGuard { counts: self.counts.clone(), peer })
    }

    /// Connections admitted and not yet dropped.
    pub fn connections(&self) -> usize {
        Self::lock(&self.counts).total
    }
}

impl Drop for AddrGuard {
    fn drop(&mut self) {
        let mut c = Admission::lock(&self.counts);
        c.total -= 1;
        give(&mut c.by_ip, &self.ip);
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        give(&mut Admission::lock(&self.counts).by_peer, &self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_by_host() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), v4, "IPv4 seen through a [::] socket is the same host");
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b), "one /64, one host");
        assert_ne!(address_key(a), address_key(other));
        let loopback: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(address_key(loopback).is_loopback());
        // One /64 holds the per-address cap however many addresses it uses.
        let adm = Admission::new(Limits::node(), usize::MAX);
        let cap = Limits::node().per_ip;
        let held: Vec<_> = (0..cap)
            .map(|i| adm.admit_addr(format!("2001:db8:9:9::{i:x}").parse().unwrap()).unwrap())
            .collect();
        assert!(adm.admit_addr("2001:db8:9:9:1::1".parse().unwrap()).is_err());
        drop(held);
    }
    use crate::Identity;

    fn limits() -> Limits {
        Limits { per_ip: 2, per_loopback_ip: 3, per_peer: 1, max_connections: 4, ..Limits::node() }
    }

    #[test]
    fn address_caps_and_release() {
        let a = Admission::new(limits(), 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let g1 = a.admit_addr(ip).unwrap();
        let _g2 = a.admit_addr(ip).unwrap();
        assert_eq!(a.admit_addr(ip).unwrap_err(), Refusal::Address(2));
        drop(g1);
        let _g3 = a.admit_addr(ip).unwrap();
        // Loopback has its own, higher cap; the total still binds.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let _l1 = a.admit_addr(lo).unwrap();
        let _l2 = a.admit_addr(lo).unwrap();
        assert_eq!(a.admit_addr(lo).unwrap_err(), Refusal::Full(4));
        assert_eq!(a.connections(), 4);
    }

    #[test]
    fn peer_caps_and_maps_stay_bounded() {
        let a = Admission::new(limits(), 2);
        let id = Identity::generate().node_id();
        let p = a.admit_peer(id).unwrap();
        assert_eq!(a.admit_peer(id).unwrap_err(), Refusal::Peer(1));
        drop(p);
        let _p = a.admit_peer(id).unwrap();
        // Released places leave no entries behind.
        for i in 0..50u8 {
            drop(a.admit_addr(IpAddr::from([10, 0, 0, i])).unwrap());
        }
        let c = Admission::lock(&a.counts);
        assert!(c.by_ip.is_empty());
        assert_eq!(c.total, 0);
    }
}
