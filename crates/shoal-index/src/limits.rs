//! Rate limits: token buckets per source address and per node id, in bounded maps.
//!
//! Time is passed in (wall-clock milliseconds, like the rest of the index). A bucket that has
//! refilled to its burst is indistinguishable from a missing one, so such buckets are pruned
//! when a map is full, at most once per [`PRUNE_EVERY_MS`] (a prune is a pass over the whole
//! map, and a stream of new keys must not buy one each); if a map is still full after pruning
//! (more distinct busy keys than it may track), requests from new keys are refused until some
//! bucket refills and the next prune runs.
//!
//! Addresses are keyed by [`source_key`]: an IPv6 host usually owns a whole /64, so each of
//! its addresses must not count as a new source.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};

use shoal_core::NodeId;

/// One token is this many milli-tokens: integer arithmetic, no drift.
const MILLI: u64 = 1000;

/// A full bucket map is pruned at most this often.
pub(crate) const PRUNE_EVERY_MS: u64 = 1000;

/// The source an address counts as: an IPv4 address itself (an IPv4-mapped IPv6 address as
/// IPv4), an IPv6 address as its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A token-bucket rate: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: u32,
    /// The most tokens a bucket holds (and what a new key starts with).
    pub burst: u32,
}

/// What a request spends a token of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A registration.
    Register,
    /// An announce, delta, manifest upload or report.
    Announce,
    /// A lookup, heartbeat, manifest download or storage query.
    Query,
}

/// Rate-limit settings, with their defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Registrations per source IP (default 8/s, burst 64: a testnet of dozens of nodes on
    /// one loopback address still starts at once).
    pub register_per_ip: Rate,
    /// Registrations per node id (default 1/s, burst 8).
    pub register_per_node: Rate,
    /// Announces per source IP (default 1024/s, burst 8192).
    pub announce_per_ip: Rate,
    /// Announces per node id (default 128/s, burst 1024).
    pub announce_per_node: Rate,
    /// Queries (lookups, heartbeats, manifest downloads) per source IP (default 1024/s, burst
    /// 8192: dozens of nodes behind one address, each looking up and heartbeating every 2 s).
    pub query_per_ip: Rate,
    /// Queries per node id (default 64/s, burst 512: a node fetching many contents at once,
    /// each looking up every 2 s, never gets near it).
    pub query_per_node: Rate,
    /// The most keys each bucket map tracks (default 65536).
    pub max_tracked: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            register_per_ip: Rate { per_sec: 8, burst: 64 },
            register_per_node: Rate { per_sec: 1, burst: 8 },
            announce_per_ip: Rate { per_sec: 1024, burst: 8192 },
            announce_per_node: Rate { per_sec: 128, burst: 1024 },
            query_per_ip: Rate { per_sec: 1024, burst: 8192 },
            query_per_node: Rate { per_sec: 64, burst: 512 },
            max_tracked: 65_536,
        }
    }
}

#[derive(Debug)]
struct Buckets<K> {
    rate: Rate,
    max: usize,
    /// key -> (milli-tokens, last refill ms)
    map: HashMap<K, (u64, u64)>,
    /// When a full map was last pruned.
    pruned_at: Option<u64>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    fn new(rate: Rate, max: usize) -> Self {
        Self { rate, max, map: HashMap::new(), pruned_at: None }
    }

    fn cap(&self) -> u64 {
        u64::from(self.rate.burst) * MILLI
    }

    fn refilled(&self, (tokens, last): (u64, u64), now: u64) -> u64 {
        // per_sec tokens a second is per_sec milli-tokens a millisecond.
        let gained = now.saturating_sub(last).saturating_mul(u64::from(self.rate.per_sec));
        tokens.saturating_add(gained).min(self.cap())
    }

    /// Spends one token of `key`; false if it has none (or the map is full of busy keys).
    fn take(&mut self, now: u64, key: K) -> bool {
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            // One pass over the map per second at most, however many new keys knock.
            if self.pruned_at.is_some_and(|t| now < t.saturating_add(PRUNE_EVERY_MS)) {
                return false;
            }
            self.prune(now);
            if self.map.len() >= self.max {
                return false;
            }
        }
        let cap = self.cap();
        let current = self.map.get(&key).copied().unwrap_or((cap, now));
        let tokens = self.refilled(current, now);
        if tokens < MILLI {
            self.map.insert(key, (tokens, now.max(current.1)));
            return false;
        }
        self.map.insert(key, (tokens - MILLI, now.max(current.1)));
        true
    }

    /// Drops buckets that have refilled: they equal a fresh one.
    fn prune(&mut self, now: u64) {
        self.pruned_at = Some(now);
        let cap = self.cap();
        let rate = self.rate;
        self.map.retain(|_, &mut (tokens, last)| {
            let gained = now.saturating_sub(last).saturating_mul(u64::from(rate.per_sec));
            tokens.saturating_add(gained) < cap
        });
    }
}

/// Token buckets for every [`Action`], per source IP and per node id.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    register_ip: Buckets<IpAddr>,
    register_node: Buckets<NodeId>,
    announce_ip: Buckets<IpAddr>,
    announce_node: Buckets<NodeId>,
    query_ip: Buckets<IpAddr>,
    query_node: Buckets<NodeId>,
}

impl RateLimiter {
    pub(crate) fn new(l: &Limits) -> Self {
        Self {
            register_ip: Buckets::new(l.register_per_ip, l.max_tracked),
            register_node: Buckets::new(l.register_per_node, l.max_tracked),
            announce_ip: Buckets::new(l.announce_per_ip, l.max_tracked),
            announce_node: Buckets::new(l.announce_per_node, l.max_tracked),
            query_ip: Buckets::new(l.query_per_ip, l.max_tracked),
            query_node: Buckets::new(l.query_per_node, l.max_tracked),
        }
    }

    /// Spends a token of `ip` and of `node` for `action`; false if either is exhausted. The
    /// address is checked first so that a sybil's fresh ids do not each cost a node bucket.
    pub(crate) fn take(&mut self, now: u64, action: Action, ip: IpAddr, node: NodeId) -> bool {
        let ip = source_key(ip);
        match action {
            Action::Register => {
                self.register_ip.take(now, ip) && self.register_node.take(now, node)
            }
            Action::Announce => {
                self.announce_ip.take(now, ip) && self.announce_node.take(now, node)
            }
            Action::Query => self.query_ip.take(now, ip) && self.query_node.take(now, node),
        }
    }

    /// Drops refilled buckets everywhere (housekeeping).
    pub(crate) fn prune(&mut self, now: u64) {
        self.register_ip.prune(now);
        self.register_node.prune(now);
        self.announce_ip.prune(now);
        self.announce_node.prune(now);
        self.query_ip.prune(now);
        self.query_node.prune(now);
    }

    /// Keys tracked, over all maps.
    pub(crate) fn tracked(&self) -> usize {
        self.register_ip.map.len()
            + self.register_node.map.len()
            + self.announce_ip.map.len()
            + self.announce_node.map.len()
            + self.query_ip.map.len()
            + self.query_node.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_its_rate() {
        let mut b = Buckets::new(Rate { per_sec: 2, burst: 3 }, 10);
        assert!((0..3).all(|_| b.take(0, 1u8)), "the burst is available at once");
        assert!(!b.take(0, 1u8), "then none");
        assert!(!b.take(499, 1u8), "half a second gives less than one token at 2/s");
        assert!(b.take(500, 1u8), "one token after 500 ms");
        assert!(!b.take(500, 1u8));
        assert!(b.take(500, 2u8), "other keys are separate");
        // Time going backwards (a clock step) never mints tokens.
        assert!(!b.take(100, 1u8));
        // A long pause refills only up to the burst.
        assert!((0..3).all(|_| b.take(1_000_000, 1u8)));
        assert!(!b.take(1_000_000, 1u8));
    }

    #[test]
    fn full_maps_prune_refilled_buckets_and_refuse_new_keys_while_all_are_busy() {
        let mut b = Buckets::new(Rate { per_sec: 1, burst: 1 }, 4);
        for k in 0..4u32 {
            assert!(b.take(0, k));
        }
        assert!(!b.take(0, 99), "every tracked key is busy: a new key waits");
        assert_eq!(b.map.len(), 4, "bounded");
        // After a second every bucket has refilled; they are pruned to make room.
        assert!(b.take(1_000, 99));
        assert_eq!(b.map.len(), 1);
    }

    #[test]
    fn a_full_map_is_pruned_at_most_once_a_second() {
        let mut b = Buckets::new(Rate { per_sec: 1000, burst: 1 }, 4);
        for k in 0..4u32 {
            assert!(b.take(0, k));
        }
        assert!(!b.take(0, 99), "all busy: pruned, nothing freed");
        assert_eq!(b.pruned_at, Some(0));
        // By 5 ms some buckets have refilled, but the last prune was under a second ago: new
        // keys are refused without another pass over the map.
        for k in 100..200u32 {
            assert!(!b.take(5, k));
        }
        assert_eq!((b.pruned_at, b.map.len()), (Some(0), 4), "no pass per new key");
        // A second later the map is pruned again and a new key gets in.
        assert!(b.take(1_000, 99));
        assert_eq!(b.pruned_at, Some(1_000));
    }

    #[test]
    fn ipv6_sources_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb:cccc:dddd:eeee".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b), "one /64 is one source");
        assert_ne!(source_key(a), source_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        // Registrations from one /64 share a budget.
        let mut r = RateLimiter::new(&Limits {
            register_per_ip: Rate { per_sec: 1, burst: 2 },
            ..Limits::default()
        });
        let id = |_| {
            let kp = libp2p_identity::Keypair::generate_ed25519();
            NodeId::from_public_key(&kp.public()).unwrap()
        };
        let hosts: Vec<IpAddr> = (1..=10u16)
            .map(|h| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, h, h, h, h)))
            .collect();
        let granted = hosts.iter().filter(|&&ip| r.take(0, Action::Register, ip, id(ip))).count();
        assert_eq!(granted, 2);
    }

    #[test]
    fn sybil_ids_from_one_address_share_its_registration_budget() {
        let limits = Limits::default();
        let mut r = RateLimiter::new(&limits);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let ids: Vec<NodeId> = (0..200)
            .map(|_| {
                let kp = libp2p_identity::Keypair::generate_ed25519();
                NodeId::from_public_key(&kp.public()).unwrap()
            })
            .collect();
        let granted = ids.iter().filter(|&&id| r.take(0, Action::Register, ip, id)).count();
        assert_eq!(granted, limits.register_per_ip.burst as usize);
        // Another address is not affected.
        assert!(r.take(0, Action::Register, "10.0.0.2".parse().unwrap(), ids[199]));
        // The budget refills at its rate: 8 more after one second.
        let later = ids.iter().filter(|&&id| r.take(1_000, Action::Register, ip, id)).count();
        assert_eq!(later, limits.register_per_ip.per_sec as usize);
        r.prune(1_000_000);
        assert_eq!(r.tracked(), 0, "idle buckets are forgotten");
    }
}
