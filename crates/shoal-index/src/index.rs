//! The in-memory index: nodes, swarms and the rules that keep strangers from crashing,
//! filling or fooling it.
//!
//! - A role is granted, not claimed: storage only for node ids in [`Config::admitted_storage`].
//! - A node's addresses are vetted against the address the tracker observed.
//! - A swarm exists only with a verified manifest; its piece count comes from that manifest.
//! - Contents per node, manifest bytes and rate-limit maps are bounded; swarms nobody holds
//!   are collected with their manifests.
//! - Holders that downloaders report as never delivering are demoted, then dropped. Reports
//!   count by the reporters' observed addresses, not their ids: ids are free, addresses not.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use shoal_core::{Bitfield, ContentId, Manifest, NodeId, PieceIndex, Region};
use shoal_wire::tracker::{Load, Role, MAX_ADDRS};

use crate::limits::{source_key, Action, RateLimiter};
use crate::model::{Config, IndexError, NodeEntry, Persist, Registration, VerifiedManifest};
use crate::region::{RegionId, Regions, NO_REGION};
use crate::swarm::Swarm;
use crate::swarms::Swarms;

/// The tracker's index.
#[derive(Debug)]
pub struct Index {
    pub(crate) config: Config,
    pub(crate) nodes: HashMap<NodeId, NodeEntry>,
    pub(crate) swarms: Swarms,
    /// Contents each node holds, for expiry and the per-node cap.
    pub(crate) held: HashMap<NodeId, BTreeSet<ContentId>>,
    /// Contents each node looked up as a registered asker, oldest first (at most
    /// [`MAX_LOOKED_UP`]): what it was handed there (hints, offered holders) is forgotten when
    /// it expires or when it looks up too many others, announced or not.
    ///
    /// Behind a lock of its own: lookups, which share the index, note contents here.
    pub(crate) looked: Mutex<HashMap<NodeId, VecDeque<ContentId>>>,
    /// Contents in whose swarms each node has been reported (as a holder), for expiry.
    pub(crate) reported_in: HashMap<NodeId, BTreeSet<ContentId>>,
    /// Swarms without holders, by the time they became empty: collected after the TTL.
    idle: BTreeSet<(u64, ContentId)>,
    manifest_bytes: u64,
    /// Bytes of manifests nobody announced yet, per uploader source address.
    pub(crate) pending_manifests: HashMap<IpAddr, u64>,
    /// Behind a lock of its own: lookups, which share the index, are rate-checked.
    limiter: Mutex<RateLimiter>,
    /// The regions numbered so far (bounded), and live nodes per region number.
    pub(crate) regions: Regions,
    region_nodes: HashMap<RegionId, usize>,
    /// The latest time any call passed in (ms): what lookups, which take no time, count from.
    pub(crate) clock: u64,
    /// When each node last changed region (ms): at most once a minute (a change recounts
    /// everything it holds, under the index's lock).
    region_changed: HashMap<NodeId, u64>,
}

/// A lock of the index's own, even if a thread panicked while it held it (what it guards
/// stays usable: rate buckets and lists of contents looked up).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long after a region change another is refused (the node keeps its region).
const REGION_CHANGE_EVERY_MS: u64 = 60_000;

/// The most contents whose lookup state (hints, offered holders) is kept per node.
pub(crate) const MAX_LOOKED_UP: usize = 256;

/// Keeps the addresses whose IP is the one the tracker observed (an unspecified IP becomes
/// it), plus the observed address itself: a node dials the tracker from its listening socket.
/// Anything else could point downloaders at a third party.
pub fn vet_addrs(observed: SocketAddr, claimed: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = vec![observed];
    for &a in claimed {
        let a = if a.ip().is_unspecified() { SocketAddr::new(observed.ip(), a.port()) } else { a };
        if a.ip() == observed.ip() && a.port() != 0 && !out.contains(&a) && out.len() < MAX_ADDRS {
            out.push(a);
        }
    }
    out
}

impl Index {
    /// An empty index.
    pub fn new(config: Config) -> Self {
        let mut ix = Self {
            limiter: Mutex::new(RateLimiter::new(&config.limits)),
            config,
            nodes: HashMap::new(),
            swarms: Swarms::default(),
            held: HashMap::new(),
            reported_in: HashMap::new(),
            looked: Mutex::default(),
            idle: BTreeSet::new(),
            manifest_bytes: 0,
            pending_manifests: HashMap::new(),
            regions: Regions::default(),
            region_nodes: HashMap::new(),
            clock: 0,
            region_changed: HashMap::new(),
        };
        // The operator's regions are numbered first: stated names can never take their place.
        let names: Vec<Region> =
            ix.config.regions.ranges().iter().map(|(_, r)| r.clone()).collect();
        for r in &names {
            ix.regions.intern(Some(r));
        }
        ix
    }

    /// Moves the clock on to `now` (never back).
    fn tick(&mut self, now: u64) {
        self.clock = self.clock.max(now);
    }

    /// Rebuilds an index from persisted state. Manifests that do not verify, holdings of
    /// contents without a manifest, of unknown nodes or with the wrong piece count are dropped;
    /// storage roles are re-checked against the admitted set.
    pub fn restore(
        config: Config,
        now: u64,
        nodes: Vec<(NodeId, NodeEntry)>,
        holdings: Vec<(ContentId, NodeId, Bitfield)>,
        manifests: Vec<(ContentId, Vec<u8>)>,
    ) -> Self {
        let mut ix = Self::new(config);
        for (id, mut e) in nodes {
            e.storage = e.storage && ix.config.admitted_storage.contains(&id);
            // A shared backend (Redis) is written by other processes: the same bounds as a
            // node's own registration, and no heartbeat from the future.
            e.addrs.truncate(MAX_ADDRS);
            e.last_seen_ms = e.last_seen_ms.min(now);
            let r = ix.regions.intern(e.region.as_ref());
            *ix.region_nodes.entry(r).or_default() += 1;
            ix.nodes.insert(id, e);
        }
        for (id, bytes) in manifests {
            if let Ok(m) = Manifest::decode(&bytes) {
                if m.content_id() == id && !ix.swarms.contains_key(&id) {
                    ix.insert_swarm(now, id, m.piece_count(), bytes.into(), None);
                }
            }
        }
        for (content, node, bf) in holdings {
            let Some(entry) = ix.nodes.get(&node) else { continue };
            let storage = entry.storage;
            let Some(swarm) = ix.swarms.get_mut(&content) else { continue };
            if swarm.piece_count == bf.len() {
                if storage {
                    // After a restart, count stall time from now.
                    swarm.storage.insert(node, (bf.count(), now, false));
                }
                ix.hold(content, node, bf);
            }
        }
        ix
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of live nodes and of swarms with at least one holder.
    pub fn counts(&self) -> (usize, usize) {
        (self.nodes.len(), self.swarms.len() - self.idle.len())
    }

    /// Manifest bytes kept, and keys tracked by the rate limiter (for metrics).
    pub fn footprint(&self) -> (u64, usize) {
        (self.manifest_bytes, lock(&self.limiter).tracked())
    }

    /// Spends a rate-limit token of `ip` and `node` for `action`.
    pub fn check_rate(
        &self,
        now: u64,
        action: Action,
        ip: IpAddr,
        node: NodeId,
    ) -> Result<(), IndexError> {
        if lock(&self.limiter).take(now, action, ip, node) {
            Ok(())
        } else {
            Err(IndexError::RateLimited)
        }
    }

    /// Creates a swarm; `charge`: the uploader's source, charged until someone announces it.
    fn insert_swarm(
        &mut self,
        now: u64,
        content: ContentId,
        pieces: u32,
        manifest: Bytes,
        charge: Option<IpAddr>,
    ) {
        let len = manifest.len() as u64;
        self.manifest_bytes += len;
        let c = content.as_bytes();
        let seed =
            self.config.seed ^ u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let mut swarm = Swarm::new(pieces, manifest, now, seed);
        if let Some(src) = charge {
            *self.pending_manifests.entry(src).or_default() += len;
            swarm.charged = Some(src);
        }
        self.swarms.insert(content, swarm);
        self.idle.insert((now, content));
    }

    /// Lifts the charge of a swarm's manifest from its uploader's source.
    fn uncharge(pending: &mut HashMap<IpAddr, u64>, swarm: &mut Swarm) {
        let Some(src) = swarm.charged.take() else { return };
        if let Some(n) = pending.get_mut(&src) {
            *n = n.saturating_sub(swarm.manifest.len() as u64);
            if *n == 0 {
                pending.remove(&src);
            }
        }
    }

    /// Records `node`'s holding in an existing swarm, leaving the idle set if it was idle.
    fn hold(&mut self, content: ContentId, node: NodeId, bf: Bitfield) {
        let Some(swarm) = self.swarms.get_mut(&content) else { return };
        if let Some(t) = swarm.empty_since.take() {
            self.idle.remove(&(t, content));
        }
        // Announced: the manifest is the swarm's now, no longer its uploader's.
        Self::uncharge(&mut self.pending_manifests, swarm);
        let (load, addrs, region) = match self.nodes.get(&node) {
            Some(e) => (e.active_uploads, e.addrs.as_slice(), e.region.as_ref()),
            None => (0, &[][..], None),
        };
        let region = self.regions.intern(region);
        swarm.set_holding(node, bf, load, addrs, region);
        self.held.entry(node).or_default().insert(content);
    }

    /// Removes `node`'s holding; the swarm turns idle if it was the last holder.
    fn unhold(&mut self, now: u64, content: ContentId, node: NodeId) -> bool {
        let Some(s) = self.swarms.get_mut(&content) else { return false };
        let removed = s.remove_holding(node);
        s.forget_hints(node);
        // Its lookup state here is gone: so is the content from its list, which then names
        // exactly the swarms where it has state (see `note_lookup`).
        if let Some(list) =
            self.looked.get_mut().unwrap_or_else(PoisonError::into_inner).get_mut(&node)
        {
            list.retain(|c| *c != content);
        }
        s.assigned.retain(|_, (holder, _)| *holder != node);
        s.storage.remove(&node);
        if s.holders.is_empty() && s.empty_since.is_none() {
            s.empty_since = Some(now);
            self.idle.insert((now, content));
        }
        if let Some(set) = self.held.get_mut(&node) {
            set.remove(&content);
        }
        removed
    }

    /// The region a node registering from `observed` and stating `stated` is placed in: the
    /// stated one where the operator allows it, else the map's.
    pub fn place(&self, observed: IpAddr, stated: Option<&Region>) -> Option<Region> {
        match stated {
            Some(r) if self.config.allow_stated_region => Some(r.clone()),
            _ => self.config.regions.place(observed),
        }
    }

    /// A node joins (or joins again, keeping what it announced). `observed` is the address
    /// its connection comes from; `stated` the region it claims (see [`Index::place`]).
    pub fn register(
        &mut self,
        now: u64,
        node: NodeId,
        role: Role,
        observed: SocketAddr,
        addrs: &[SocketAddr],
        stated: Option<&Region>,
    ) -> Registration {
        self.tick(now);
        let storage = role == Role::Storage && self.config.admitted_storage.contains(&node);
        let addrs = vet_addrs(observed, addrs);
        let mut region = self.place(observed.ip(), stated);
        // A node changes region at most once a minute; until then it keeps the one it has.
        let current = self.nodes.get(&node).map(|e| e.region.clone());
        if let Some(old) = current {
            let recent = self
                .region_changed
                .get(&node)
                .is_some_and(|&t| now.saturating_sub(t) < REGION_CHANGE_EVERY_MS);
            if old != region {
                if recent {
                    region = old;
                } else {
                    self.region_changed.insert(node, now);
                }
            }
        }
        // A region past the numbering's bound counts as none, here and in every swarm.
        let id = self.regions.intern(region.as_ref());
        if id == NO_REGION {
            region = None;
        }
        let new = !self.nodes.contains_key(&node);
        let entry = self.nodes.entry(node).or_insert_with(|| NodeEntry {
            storage,
            addrs: Vec::new(),
            last_seen_ms: now,
            active_uploads: 0,
            upload_rate: 0,
            region: None,
        });
        let old = std::mem::replace(&mut entry.region, region.clone());
        entry.storage = storage;
        entry.addrs = addrs.clone();
        entry.last_seen_ms = now;
        let ops = vec![Persist::PutNode(node, entry.clone())];
        let old_id = if new { id } else { self.regions.intern(old.as_ref()) };
        if new {
            *self.region_nodes.entry(id).or_default() += 1;
        } else if old_id != id {
            self.uncount_region(old_id);
            *self.region_nodes.entry(id).or_default() += 1;
        }
        // Lookups answer with the swarms' own copies of the addresses (and regions).
        let held: Vec<ContentId> = self.held.get(&node).into_iter().flatten().copied().collect();
        for c in held {
            if old_id != id {
                // Its holdings move to the new region's counts; its hints were counted in the
                // old one and are dropped (the next lookup hands new ones).
                if let Some(bf) = self.swarms.lock(&c).and_then(|s| s.holders.get(&node)) {
                    self.hold(c, node, bf);
                }
            }
            if let Some(s) = self.swarms.get_mut(&c) {
                s.holders.set_addrs(&node, &addrs);
            }
        }
        if old_id != id {
            // All its lookup state goes, and the list of where it was with it.
            for c in self.looked_mut().remove(&node).unwrap_or_default() {
                if let Some(s) = self.swarms.get_mut(&c) {
                    s.forget_hints(node);
                }
            }
        }
        Registration { role: if storage { Role::Storage } else { Role::Node }, addrs, region, ops }
    }

    fn uncount_region(&mut self, id: RegionId) {
        if let Some(n) = self.region_nodes.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.region_nodes.remove(&id);
            }
        }
    }

    /// Live nodes per region (`None`: nodes without one), for metrics: counted as nodes come
    /// and go, never by a scan.
    pub fn region_counts(&self) -> Vec<(Option<Region>, usize)> {
        let mut out: Vec<(Option<Region>, usize)> =
            self.region_nodes.iter().map(|(&id, &n)| (self.regions.name(id).cloned(), n)).collect();
        out.sort();
        out
    }

    /// A node is alive.
    pub fn heartbeat(
        &mut self,
        now: u64,
        node: NodeId,
        load: Load,
    ) -> Result<Vec<Persist>, IndexError> {
        self.tick(now);
        let entry = self.nodes.get_mut(&node).ok_or(IndexError::NotRegistered)?;
        entry.last_seen_ms = now;
        entry.active_uploads = load.active_uploads;
        // Lookups rank holders by load from the swarm's own copy.
        for c in self.held.get(&node).into_iter().flatten() {
            if let Some(s) = self.swarms.get_mut(c) {
                s.holders.set_load(&node, load.active_uploads);
            }
        }
        entry.upload_rate = load.upload_rate;
        Ok(vec![Persist::PutNode(node, entry.clone())])
    }

    /// A heartbeat's load per address (multi-link nodes): lookups hand each asker the least
    /// loaded of the node's addresses. Addresses the node did not register are ignored; one
    /// it registered but did not report counts as idle.
    pub fn set_links(&mut self, node: NodeId, links: &[(SocketAddr, u32)]) {
        let Some(entry) = self.nodes.get(&node) else { return };
        let loads: Vec<u32> = entry
            .addrs
            .iter()
            .map(|a| links.iter().find(|(l, _)| l == a).map_or(0, |&(_, n)| n))
            .collect();
        for c in self.held.get(&node).into_iter().flatten() {
            if let Some(s) = self.swarms.get_mut(c) {
                s.holders.set_link_loads(&node, &loads);
            }
        }
    }

    /// Adds an address the tracker checked the node answers at with its key (a link on
    /// another IP than the one it registers from: see `vet_addrs`), up to
    /// [`shoal_wire::tracker::MAX_ADDRS`].
    pub fn add_verified_addr(&mut self, node: NodeId, addr: SocketAddr) -> Vec<Persist> {
        let Some(entry) = self.nodes.get_mut(&node) else { return Vec::new() };
        if entry.addrs.contains(&addr) || entry.addrs.len() >= MAX_ADDRS {
            return Vec::new();
        }
        entry.addrs.push(addr);
        let (addrs, ops) = (entry.addrs.clone(), vec![Persist::PutNode(node, entry.clone())]);
        for c in self.held.get(&node).into_iter().flatten() {
            if let Some(s) = self.swarms.get_mut(c) {
                s.holders.set_addrs(&node, &addrs);
            }
        }
        ops
    }

    /// The registered admitted storage nodes: those in the asker's region first (with region
    /// routing), then the least loaded.
    pub fn storage_nodes(&self, asker: Option<NodeId>) -> Vec<(NodeId, Vec<SocketAddr>)> {
        let region = self.routing_region(asker);
        // Least loaded first: an offline task's home and helpers are taken from the front.
        let mut nodes: Vec<(bool, u32, NodeId, Vec<SocketAddr>)> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.storage)
            .map(|(id, e)| {
                let elsewhere = region.is_some() && e.region.as_ref() != region;
                (elsewhere, e.active_uploads, *id, e.addrs.clone())
            })
            .collect();
        nodes.sort_by_key(|(elsewhere, load, id, _)| (*elsewhere, *load, *id));
        nodes.into_iter().map(|(_, _, id, addrs)| (id, addrs)).collect()
    }

    /// The asker's region if the index routes by region and the asker has one.
    pub(crate) fn routing_region(&self, asker: Option<NodeId>) -> Option<&Region> {
        if !self.config.region_routing {
            return None;
        }
        self.nodes.get(&asker?)?.region.as_ref()
    }

    /// The region a node is placed in.
    pub fn region_of(&self, node: NodeId) -> Option<&Region> {
        self.nodes.get(&node)?.region.as_ref()
    }

    /// Checks that `node` may add `content` to what it holds: registered, under its cap.
    fn may_hold(&mut self, now: u64, node: NodeId, content: ContentId) -> Result<bool, IndexError> {
        self.tick(now);
        let entry = self.nodes.get_mut(&node).ok_or(IndexError::NotRegistered)?;
        entry.last_seen_ms = now;
        let storage = entry.storage;
        let held = self.held.get(&node).map_or(0, BTreeSet::len);
        let already = self.held.get(&node).is_some_and(|s| s.contains(&content));
        if !already && held >= self.config.max_contents_per_node {
            return Err(IndexError::TooManyContents { max: self.config.max_contents_per_node });
        }
        Ok(storage)
    }

    /// A node holds `bitfield` of a content. Refused with [`IndexError::NeedManifest`] (and
    /// not recorded) until the tracker has the content's verified manifest.
    pub fn announce(
        &mut self,
        now: u64,
        node: NodeId,
        content: ContentId,
        bitfield: Bitfield,
    ) -> Result<Vec<Persist>, IndexError> {
        let storage = self.may_hold(now, node, content)?;
        let drop_after = self.config.drop_after;
        let swarm = self.swarms.get_mut(&content).ok_or(IndexError::NeedManifest(content))?;
        if swarm.piece_count != bitfield.len() {
            return Err(IndexError::PieceCount {
                got: bitfield.len(),
                expected: swarm.piece_count,
            });
        }
        if !storage && swarm.reported(&node) >= drop_after {
            // Dropped for never delivering: a re-announce does not bring it back.
            return Ok(Vec::new());
        }
        if storage {
            swarm.storage_progress(node, bitfield.count(), now);
            swarm.assigned.retain(|p, _| !bitfield.get(*p));
        }
        self.hold(content, node, bitfield.clone());
        Ok(vec![Persist::PutHolding(content, node, bitfield)])
    }

    /// A node holds none of a content any more (it deleted it, or a cache dropped it): its
    /// holding goes, and with it any re-seeding into it. Unknown contents are ignored.
    pub fn forget(
        &mut self,
        now: u64,
        node: NodeId,
        content: ContentId,
    ) -> Result<Vec<Persist>, IndexError> {
        self.tick(now);
        if !self.nodes.contains_key(&node) {
            return Err(IndexError::NotRegistered);
        }
        Ok(if self.unhold(now, content, node) {
            vec![Persist::RemoveHolding(content, node)]
        } else {
            Vec::new()
        })
    }

    /// A node gained pieces of a content.
    pub fn announce_delta(
        &mut self,
        now: u64,
        node: NodeId,
        content: ContentId,
        pieces: &[PieceIndex],
    ) -> Result<Vec<Persist>, IndexError> {
        let storage = self.may_hold(now, node, content)?;
        let drop_after = self.config.drop_after;
        let swarm = self.swarms.get_mut(&content).ok_or(IndexError::NeedManifest(content))?;
        if let Some(&bad) = pieces.iter().find(|p| p.0 >= swarm.piece_count) {
            return Err(IndexError::PieceOutOfRange(bad));
        }
        if !storage && swarm.reported(&node) >= drop_after {
            return Ok(Vec::new());
        }
        let mut bf = swarm.holders.get(&node).unwrap_or_else(|| Bitfield::new(swarm.piece_count));
        for &p in pieces {
            bf.set(p);
        }
        if storage {
            swarm.storage_progress(node, bf.count(), now);
            swarm.assigned.retain(|p, _| !bf.get(*p));
        }
        self.hold(content, node, bf.clone());
        Ok(vec![Persist::PutHolding(content, node, bf)])
    }

    /// Whether a manifest upload of `len` bytes from `node` should be read: `Ok(false)` if the
    /// tracker already has it, an error if the node is not registered or space is short, in
    /// total or in the share of its source address ([`Config::max_pending_manifest_bytes`]).
    /// Call before reading the body.
    pub fn admit_manifest(
        &self,
        node: NodeId,
        content: ContentId,
        len: u32,
    ) -> Result<bool, IndexError> {
        let source = self.source(&node).ok_or(IndexError::NotRegistered)?;
        if self.swarms.contains_key(&content) {
            return Ok(false);
        }
        let pending = self.pending_manifests.get(&source).copied().unwrap_or(0);
        if pending + u64::from(len) > self.config.max_pending_manifest_bytes {
            return Err(IndexError::ManifestQuota { max: self.config.max_pending_manifest_bytes });
        }
        if self.manifest_bytes + u64::from(len) > self.config.max_manifest_bytes {
            return Err(IndexError::ManifestSpace { max: self.config.max_manifest_bytes });
        }
        Ok(true)
    }

    /// Stores a manifest from a registered node after checking that it hashes to `content`;
    /// this creates the content's swarm, collected if nobody announces it within the TTL, and
    /// charged to the node's source address until someone announces it.
    pub fn put_manifest(
        &mut self,
        now: u64,
        node: NodeId,
        content: ContentId,
        bytes: impl Into<Bytes>,
    ) -> Result<Vec<Persist>, IndexError> {
        let bytes = bytes.into();
        if !self.admit_manifest(node, content, bytes.len() as u32)? {
            return Ok(Vec::new());
        }
        self.put_verified_manifest(now, node, VerifiedManifest::check(content, bytes)?)
    }

    /// [`Index::put_manifest`] of a manifest checked beforehand (outside any lock).
    pub fn put_verified_manifest(
        &mut self,
        now: u64,
        node: NodeId,
        m: VerifiedManifest,
    ) -> Result<Vec<Persist>, IndexError> {
        if !self.admit_manifest(node, m.content, m.bytes.len() as u32)? {
            return Ok(Vec::new());
        }
        let source = self.source(&node);
        self.insert_swarm(now, m.content, m.piece_count, m.bytes.clone(), source);
        Ok(vec![Persist::PutManifest(m.content, m.bytes)])
    }

    /// The manifest of a content, if known (shared, not copied).
    pub fn manifest(&self, content: ContentId) -> Option<Bytes> {
        self.swarms.lock(&content).map(|s| s.manifest.clone())
    }

    /// The source a node counts as: its observed address (first of its vetted addresses), an
    /// IPv6 one by its /64.
    fn source(&self, node: &NodeId) -> Option<IpAddr> {
        let e = self.nodes.get(node)?;
        e.addrs.first().map(|a| source_key(a.ip()))
    }

    /// Remembers that `asker` looked up `content`; returns the oldest content it looked up
    /// if it looked up more than [`MAX_LOOKED_UP`], whose lookup state the caller forgets
    /// (after letting go of any swarm it holds locked: one swarm locked at a time).
    pub(crate) fn note_lookup(&self, asker: NodeId, content: ContentId) -> Option<ContentId> {
        // Called for a content whose state the asker did not have, so absent from the list:
        // the paths that forget state take the content out of the list too (`unhold`, region
        // changes, expiry). One exception: a swarm collected while listed leaves its entries,
        // and a content re-created and looked up again is listed twice, the older entry then
        // forgetting the new state early; the list stays bounded. No scan of the list, which a
        // lookup's time could not afford.
        let mut looked = lock(&self.looked);
        let list = looked.entry(asker).or_default();
        list.push_back(content);
        if list.len() > MAX_LOOKED_UP {
            return list.pop_front();
        }
        None
    }

    /// The lists of contents looked up, for a caller that holds the index exclusively.
    fn looked_mut(&mut self) -> &mut HashMap<NodeId, VecDeque<ContentId>> {
        self.looked.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// `reporter` asked `peer` for pieces of `content` and got none. Counted once per distinct
    /// reporter source address (sybil ids behind one address count once), and only if a lookup
    /// of `content` by `reporter` offered `peer`; past
    /// [`Config::demote_after`] the holder ranks last, past [`Config::drop_after`] an ordinary
    /// holder is dropped from the swarm.
    pub fn report(
        &mut self,
        now: u64,
        reporter: NodeId,
        content: ContentId,
        peer: NodeId,
    ) -> Result<Vec<Persist>, IndexError> {
        let source = self.source(&reporter).ok_or(IndexError::NotRegistered)?;
        let storage = self.nodes.get(&peer).is_some_and(|e| e.storage);
        let (drop_after, demote_after) = (self.config.drop_after, self.config.demote_after);
        let nodes = &self.nodes;
        let Some(swarm) = self.swarms.get_mut(&content) else { return Ok(Vec::new()) };
        // Only about a holder a lookup of this content offered it: a report names a peer the
        // reporter was sent to, not any holder it would like to see gone.
        if reporter == peer
            || !swarm.holders.contains(&peer)
            || !swarm.was_offered(&reporter, &peer)
        {
            return Ok(Vec::new());
        }
        let n = swarm.report(peer, source, drop_after, demote_after, |h| nodes.contains_key(h));
        if n > 0 {
            self.reported_in.entry(peer).or_default().insert(content);
        }
        // Admitted storage is the operator's: demoted like anyone, never dropped by reports.
        if n >= drop_after && !storage && self.unhold(now, content, peer) {
            return Ok(vec![Persist::RemoveHolding(content, peer)]);
        }
        Ok(Vec::new())
    }

    /// Removes nodes not heard from within the TTL, with everything they held, then swarms
    /// nobody has held for the TTL, with their manifests; prunes idle rate-limit buckets.
    pub fn expire(&mut self, now: u64) -> Vec<Persist> {
        self.tick(now);
        let ttl = self.config.node_ttl_ms;
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.last_seen_ms.saturating_add(ttl) < now)
            .map(|(id, _)| *id)
            .collect();
        let mut ops = Vec::new();
        for id in dead {
            ops.extend(self.remove_node(now, id));
        }
        while let Some(&(since, content)) = self.idle.first() {
            if since.saturating_add(ttl) >= now {
                break;
            }
            self.idle.pop_first();
            if let Some(mut s) = self.swarms.remove(&content) {
                self.manifest_bytes -= s.manifest.len() as u64;
                Self::uncharge(&mut self.pending_manifests, &mut s);
                ops.push(Persist::RemoveManifest(content));
            }
        }
        self.limiter.get_mut().unwrap_or_else(PoisonError::into_inner).prune(now);
        ops
    }

    /// Forgets a node with everything it held, was handed and was reported for; the changes
    /// to persist (its holdings, then the node).
    fn remove_node(&mut self, now: u64, id: NodeId) -> Vec<Persist> {
        let mut ops = Vec::new();
        if let Some(e) = self.nodes.remove(&id) {
            let r = self.regions.intern(e.region.as_ref());
            self.uncount_region(r);
        }
        self.region_changed.remove(&id);
        // What its lookups were handed, where it holds nothing (holdings: below).
        for content in self.looked_mut().remove(&id).unwrap_or_default() {
            if let Some(s) = self.swarms.get_mut(&content) {
                s.forget_hints(id);
            }
        }
        // Reports about it go with it (a returning id starts afresh, holding nothing).
        for content in self.reported_in.remove(&id).unwrap_or_default() {
            if let Some(s) = self.swarms.get_mut(&content) {
                s.reports.remove(&id);
            }
        }
        for content in self.held.remove(&id).unwrap_or_default() {
            if self.unhold(now, content, id) {
                ops.push(Persist::RemoveHolding(content, id));
            }
        }
        ops.push(Persist::RemoveNode(id));
        ops
    }

    /// True if the node is registered and not expired.
    pub fn is_registered(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }
}

mod remote;
pub use remote::RemoteSkip;

#[cfg(test)]
mod tests;
