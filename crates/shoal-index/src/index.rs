//! The in-memory index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_core::{Bitfield, ContentId, Manifest, NodeId, PieceIndex};
use shoal_wire::tracker::{Load, PeerInfo, Role};

/// Tunables, with their defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// A node that has not been heard from for this long expires (default 10 s).
    pub node_ttl_ms: u64,
    /// The heartbeat interval nodes are told to keep (default 2 s).
    pub heartbeat_ms: u32,
    /// Pieces handed to each asker to fetch first (default 32).
    pub hints: usize,
    /// A storage copy that has not grown for this long is re-seeded from holders (default 5 s).
    pub reseed_after_ms: u64,
    /// How long a re-seed directive (and its token) stays valid (default 60 s).
    pub directive_ttl_ms: u64,
    /// The most pieces in one directive (default 256).
    pub directive_pieces: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_ttl_ms: 10_000,
            heartbeat_ms: 2_000,
            hints: 32,
            reseed_after_ms: 5_000,
            directive_ttl_ms: 60_000,
            directive_pieces: 256,
        }
    }
}

/// An order to push pieces into storage, before the tracker signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The content.
    pub content: ContentId,
    /// The storage node.
    pub storage: NodeId,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
    /// The pieces to push.
    pub pieces: Vec<PieceIndex>,
    /// When the order lapses.
    pub expires_ms: u64,
}

/// What a heartbeat gets back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// Contents the node holds that storage holds completely.
    pub stored: Vec<ContentId>,
    /// Pieces to push into storage.
    pub directives: Vec<Planned>,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Ordinary node or storage.
    pub storage: bool,
    /// Where peers reach it.
    pub addrs: Vec<SocketAddr>,
    /// Wall-clock milliseconds of its last register or heartbeat.
    pub last_seen_ms: u64,
    /// Uploads in progress at its last heartbeat.
    pub active_uploads: u32,
    /// Upload rate at its last heartbeat, bytes per second.
    pub upload_rate: u64,
}

/// A change the backend must make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Persist {
    /// Store (or replace) a node.
    PutNode(NodeId, NodeEntry),
    /// Forget a node (its holdings are removed by separate operations).
    RemoveNode(NodeId),
    /// Store (or replace) what a node holds of a content.
    PutHolding(ContentId, NodeId, Bitfield),
    /// Forget what a node holds of a content.
    RemoveHolding(ContentId, NodeId),
    /// Store a verified manifest.
    PutManifest(ContentId, Vec<u8>),
}

/// A request the index refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The node has not registered (or expired): it must register again.
    #[error("node is not registered (register again)")]
    NotRegistered,
    /// The bitfield's length is not the content's piece count.
    #[error("{got} pieces announced for a content of {expected}")]
    PieceCount {
        /// pieces announced
        got: u32,
        /// pieces in the content
        expected: u32,
    },
    /// A piece index past the end.
    #[error("piece {0} is past the end of the content")]
    PieceOutOfRange(PieceIndex),
    /// The manifest does not hash to the content id or does not decode.
    #[error("manifest does not match content {0}")]
    ManifestMismatch(ContentId),
}

/// The answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Pieces in the content.
    pub piece_count: u32,
    /// Peers holding wanted pieces, most useful first.
    pub peers: Vec<PeerInfo>,
    /// Pieces for the asker to fetch first.
    pub hints: Vec<PieceIndex>,
}

#[derive(Debug, Default)]
struct Swarm {
    piece_count: u32,
    manifest: Option<Vec<u8>>,
    holders: BTreeMap<NodeId, Bitfield>,
    /// Holders of each piece.
    availability: Vec<u32>,
    /// Pieces handed to each node as hints and not yet announced by it.
    handed: HashMap<NodeId, BTreeSet<PieceIndex>>,
    /// How many nodes each piece is handed to.
    handed_count: Vec<u32>,
    /// Per storage node holding part of this content: (pieces held, when that last grew,
    /// re-seeding under way).
    storage: HashMap<NodeId, (u32, u64, bool)>,
    /// Pieces assigned to holders for pushing into storage, with the assignment's expiry.
    assigned: HashMap<PieceIndex, (NodeId, u64)>,
}

impl Swarm {
    fn new(piece_count: u32) -> Self {
        Self {
            piece_count,
            availability: vec![0; piece_count as usize],
            handed_count: vec![0; piece_count as usize],
            ..Self::default()
        }
    }

    fn set_holding(&mut self, node: NodeId, bitfield: Bitfield) {
        self.remove_holding(node);
        for p in bitfield.iter_ones() {
            self.availability[p.0 as usize] += 1;
            self.unhand(node, p);
        }
        self.holders.insert(node, bitfield);
    }

    fn remove_holding(&mut self, node: NodeId) -> bool {
        let Some(old) = self.holders.remove(&node) else { return false };
        for p in old.iter_ones() {
            self.availability[p.0 as usize] -= 1;
        }
        true
    }

    fn unhand(&mut self, node: NodeId, p: PieceIndex) {
        if let Some(set) = self.handed.get_mut(&node) {
            if set.remove(&p) {
                self.handed_count[p.0 as usize] -= 1;
            }
        }
    }

    /// Records a storage node's holding and whether it grew.
    fn storage_progress(&mut self, node: NodeId, count: u32, now: u64) {
        let e = self.storage.entry(node).or_insert((0, now, false));
        if count > e.0 || e.0 == 0 {
            e.0 = count;
            e.1 = now;
        }
        if count == self.piece_count {
            e.2 = false;
        }
    }

    fn forget_hints(&mut self, node: NodeId) {
        for p in self.handed.remove(&node).unwrap_or_default() {
            self.handed_count[p.0 as usize] -= 1;
        }
    }
}

/// The tracker's index.
#[derive(Debug)]
pub struct Index {
    config: Config,
    nodes: HashMap<NodeId, NodeEntry>,
    swarms: HashMap<ContentId, Swarm>,
    /// Contents each node holds, for expiry.
    held: HashMap<NodeId, BTreeSet<ContentId>>,
}

type Rank = (bool, u32, u32, std::cmp::Reverse<u32>);

/// A stable per-(node, piece) tie-break, so equally good pieces are spread over askers.
fn mix(node: &NodeId, p: PieceIndex) -> u64 {
    let k = node.public_key_bytes();
    let mut x = u64::from_le_bytes(k[..8].try_into().expect("8 bytes")) ^ u64::from(p.0);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

impl Index {
    /// An empty index.
    pub fn new(config: Config) -> Self {
        Self { config, nodes: HashMap::new(), swarms: HashMap::new(), held: HashMap::new() }
    }

    /// Rebuilds an index from persisted state. Holdings whose bitfield does not match the
    /// content's manifest, or of unknown nodes, are dropped.
    pub fn restore(
        config: Config,
        now: u64,
        nodes: Vec<(NodeId, NodeEntry)>,
        holdings: Vec<(ContentId, NodeId, Bitfield)>,
        manifests: Vec<(ContentId, Vec<u8>)>,
    ) -> Self {
        let mut ix = Self::new(config);
        ix.nodes.extend(nodes);
        for (id, bytes) in manifests {
            if let Ok(m) = Manifest::decode(&bytes) {
                if m.content_id() == id {
                    ix.swarms.entry(id).or_insert_with(|| Swarm::new(m.piece_count())).manifest =
                        Some(bytes);
                }
            }
        }
        for (content, node, bf) in holdings {
            if !ix.nodes.contains_key(&node) {
                continue;
            }
            let swarm = ix.swarms.entry(content).or_insert_with(|| Swarm::new(bf.len()));
            if swarm.piece_count == bf.len() {
                if ix.nodes.get(&node).is_some_and(|e| e.storage) {
                    // After a restart, count stall time from now.
                    swarm.storage.insert(node, (bf.count(), now, false));
                }
                swarm.set_holding(node, bf);
                ix.held.entry(node).or_default().insert(content);
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
        (self.nodes.len(), self.swarms.values().filter(|s| !s.holders.is_empty()).count())
    }

    /// A node joins (or joins again, keeping what it announced).
    pub fn register(
        &mut self,
        now: u64,
        node: NodeId,
        role: Role,
        addrs: Vec<SocketAddr>,
    ) -> Vec<Persist> {
        let entry = self.nodes.entry(node).or_insert_with(|| NodeEntry {
            storage: false,
            addrs: Vec::new(),
            last_seen_ms: now,
            active_uploads: 0,
            upload_rate: 0,
        });
        entry.storage = role == Role::Storage;
        entry.addrs = addrs;
        entry.last_seen_ms = now;
        vec![Persist::PutNode(node, entry.clone())]
    }

    /// A node is alive.
    pub fn heartbeat(
        &mut self,
        now: u64,
        node: NodeId,
        load: Load,
    ) -> Result<Vec<Persist>, IndexError> {
        let entry = self.nodes.get_mut(&node).ok_or(IndexError::NotRegistered)?;
        entry.last_seen_ms = now;
        entry.active_uploads = load.active_uploads;
        entry.upload_rate = load.upload_rate;
        Ok(vec![Persist::PutNode(node, entry.clone())])
    }

    /// Records a heartbeat and plans what the node should hear back: its contents that storage
    /// holds completely, and pieces to push into storage where an upload stalled.
    pub fn heartbeat_plan(
        &mut self,
        now: u64,
        node: NodeId,
        load: Load,
    ) -> Result<(Vec<Persist>, HeartbeatOutcome), IndexError> {
        let ops = self.heartbeat(now, node, load)?;
        let mut out = HeartbeatOutcome::default();
        if self.nodes.get(&node).is_some_and(|e| e.storage) {
            return Ok((ops, out));
        }
        let (ttl, after, batch) = (
            self.config.directive_ttl_ms,
            self.config.reseed_after_ms,
            self.config.directive_pieces,
        );
        for &content in self.held.get(&node).into_iter().flatten() {
            let Some(swarm) = self.swarms.get_mut(&content) else { continue };
            let Some(mine) = swarm.holders.get(&node).cloned() else { continue };
            let storage_nodes: Vec<NodeId> = swarm.storage.keys().copied().collect();
            for s in storage_nodes {
                let Some(held) = swarm.holders.get(&s).cloned() else { continue };
                if held.is_complete() {
                    out.stored.push(content);
                    continue;
                }
                let e = swarm.storage.get_mut(&s).expect("listed");
                // Re-seed once the upload into storage has stalled; keep going until complete.
                if !e.2 && now.saturating_sub(e.1) < after {
                    continue;
                }
                e.2 = true;
                if out.directives.len() >= 4
                    || swarm.assigned.values().any(|&(h, exp)| h == node && exp > now)
                {
                    continue;
                }
                let pieces: Vec<PieceIndex> = mine
                    .iter_ones()
                    .filter(|&p| !held.get(p))
                    .filter(|p| swarm.assigned.get(p).is_none_or(|&(_, exp)| exp <= now))
                    .take(batch)
                    .collect();
                if pieces.is_empty() {
                    continue;
                }
                let expires_ms = now + ttl;
                for &p in &pieces {
                    swarm.assigned.insert(p, (node, expires_ms));
                }
                let addrs = self.nodes.get(&s).map(|e| e.addrs.clone()).unwrap_or_default();
                out.directives.push(Planned { content, storage: s, addrs, pieces, expires_ms });
            }
        }
        out.stored.dedup();
        Ok((ops, out))
    }

    /// The registered storage nodes.
    pub fn storage_nodes(&self) -> Vec<(NodeId, Vec<SocketAddr>)> {
        self.nodes.iter().filter(|(_, e)| e.storage).map(|(id, e)| (*id, e.addrs.clone())).collect()
    }

    /// A node holds `bitfield` of a content. Returns whether the index still needs the
    /// manifest.
    pub fn announce(
        &mut self,
        now: u64,
        node: NodeId,
        content: ContentId,
        bitfield: Bitfield,
    ) -> Result<(bool, Vec<Persist>), IndexError> {
        let entry = self.nodes.get_mut(&node).ok_or(IndexError::NotRegistered)?;
        entry.last_seen_ms = now;
        let swarm = self.swarms.entry(content).or_insert_with(|| Swarm::new(bitfield.len()));
        if swarm.piece_count != bitfield.len() {
            return Err(IndexError::PieceCount {
                got: bitfield.len(),
                expected: swarm.piece_count,
            });
        }
        let storage = entry.storage;
        if storage {
            swarm.storage_progress(node, bitfield.count(), now);
            swarm.assigned.retain(|p, _| !bitfield.get(*p));
        }
        swarm.set_holding(node, bitfield.clone());
        self.held.entry(node).or_default().insert(content);
        Ok((swarm.manifest.is_none(), vec![Persist::PutHolding(content, node, bitfield)]))
    }

    /// A node gained pieces of a content it announced before.
    pub fn announce_delta(
        &mut self,
        now: u64,
        node: NodeId,
        content: ContentId,
        pieces: &[PieceIndex],
    ) -> Result<Vec<Persist>, IndexError> {
        let entry = self.nodes.get_mut(&node).ok_or(IndexError::NotRegistered)?;
        entry.last_seen_ms = now;
        let entry = entry.clone();
        let swarm = self.swarms.get_mut(&content).ok_or(IndexError::NotRegistered)?;
        if let Some(&bad) = pieces.iter().find(|p| p.0 >= swarm.piece_count) {
            return Err(IndexError::PieceOutOfRange(bad));
        }
        let mut bf =
            swarm.holders.get(&node).cloned().unwrap_or_else(|| Bitfield::new(swarm.piece_count));
        for &p in pieces {
            if bf.set(p) {
                swarm.availability[p.0 as usize] += 1;
            }
            swarm.unhand(node, p);
        }
        if entry.storage {
            swarm.storage_progress(node, bf.count(), now);
            swarm.assigned.retain(|p, _| !bf.get(*p));
        }
        swarm.holders.insert(node, bf.clone());
        self.held.entry(node).or_default().insert(content);
        Ok(vec![Persist::PutHolding(content, node, bf)])
    }

    /// Stores a manifest after checking that it hashes to `content`.
    pub fn put_manifest(
        &mut self,
        content: ContentId,
        bytes: Vec<u8>,
    ) -> Result<Vec<Persist>, IndexError> {
        let m = Manifest::decode(&bytes).map_err(|_| IndexError::ManifestMismatch(content))?;
        if m.content_id() != content {
            return Err(IndexError::ManifestMismatch(content));
        }
        let swarm = self.swarms.entry(content).or_insert_with(|| Swarm::new(m.piece_count()));
        if swarm.piece_count != m.piece_count() {
            return Err(IndexError::PieceCount {
                got: m.piece_count(),
                expected: swarm.piece_count,
            });
        }
        if swarm.manifest.is_some() {
            return Ok(Vec::new());
        }
        swarm.manifest = Some(bytes.clone());
        Ok(vec![Persist::PutManifest(content, bytes)])
    }

    /// The manifest of a content, if known.
    pub fn manifest(&self, content: ContentId) -> Option<&[u8]> {
        self.swarms.get(&content)?.manifest.as_deref()
    }

    /// Peers holding pieces `asker` lacks (all pieces if `have` is `None`), most useful first,
    /// and the pieces the asker should fetch first. `None` for an unknown content.
    pub fn lookup(
        &mut self,
        asker: Option<NodeId>,
        content: ContentId,
        have: Option<&Bitfield>,
        max_peers: usize,
    ) -> Option<Lookup> {
        let swarm = self.swarms.get_mut(&content)?;
        let n = swarm.piece_count;
        let have = have.filter(|h| h.len() == n);
        let wanted = |p: PieceIndex| have.is_none_or(|h| !h.get(p));
        // (not storage, rarest wanted piece's availability, load, more useful first), then id.
        let mut ranked: Vec<(Rank, NodeId)> = Vec::new();
        for (id, bf) in &swarm.holders {
            if Some(*id) == asker {
                continue;
            }
            let Some(entry) = self.nodes.get(id) else { continue };
            let mut useful = 0;
            let mut rarest = u32::MAX;
            for p in bf.iter_ones().filter(|&p| wanted(p)) {
                useful += 1;
                rarest = rarest.min(swarm.availability[p.0 as usize]);
            }
            if useful > 0 {
                // Storage first where it has wanted pieces: a permanent, well-provisioned seed.
                ranked.push((
                    (!entry.storage, rarest, entry.active_uploads, std::cmp::Reverse(useful)),
                    *id,
                ));
            }
        }
        ranked.sort();
        let peers = ranked
            .into_iter()
            .take(max_peers)
            .map(|(_, id)| {
                let e = &self.nodes[&id];
                PeerInfo {
                    node_id: id,
                    load: e.active_uploads,
                    addrs: e.addrs.clone(),
                    bitfield: swarm.holders[&id].clone(),
                }
            })
            .collect();
        let hints = match asker {
            Some(a) => Self::hand_out(swarm, a, have, self.config.hints),
            None => Vec::new(),
        };
        Some(Lookup { piece_count: n, peers, hints })
    }

    /// Tops up the pieces handed to `asker` to `k`: among the pieces it lacks that someone
    /// holds, those the fewest others hold or were handed first.
    fn hand_out(
        swarm: &mut Swarm,
        asker: NodeId,
        have: Option<&Bitfield>,
        k: usize,
    ) -> Vec<PieceIndex> {
        let announced = swarm.holders.get(&asker).cloned();
        let held_by_asker = |p: PieceIndex| {
            have.is_some_and(|h| h.get(p)) || announced.as_ref().is_some_and(|b| b.get(p))
        };
        // Drop hints the asker has meanwhile.
        let stale: Vec<PieceIndex> = swarm
            .handed
            .get(&asker)
            .map(|s| s.iter().copied().filter(|&p| held_by_asker(p)).collect())
            .unwrap_or_default();
        for p in stale {
            swarm.unhand(asker, p);
        }
        let current = swarm.handed.get(&asker).map_or(0, |s| s.len());
        if current < k {
            let mut candidates: Vec<(u32, u64, PieceIndex)> = (0..swarm.piece_count)
                .map(PieceIndex)
                .filter(|&p| {
                    let i = p.0 as usize;
                    swarm.availability[i] > 0
                        && !held_by_asker(p)
                        && !swarm.handed.get(&asker).is_some_and(|s| s.contains(&p))
                })
                .map(|p| {
                    let i = p.0 as usize;
                    (swarm.availability[i] + swarm.handed_count[i], mix(&asker, p), p)
                })
                .collect();
            let take = (k - current).min(candidates.len());
            if take > 0 {
                candidates.select_nth_unstable(take - 1);
                let set = swarm.handed.entry(asker).or_default();
                for &(_, _, p) in &candidates[..take] {
                    if set.insert(p) {
                        swarm.handed_count[p.0 as usize] += 1;
                    }
                }
            }
        }
        let mut hints: Vec<PieceIndex> =
            swarm.handed.get(&asker).map(|s| s.iter().copied().collect()).unwrap_or_default();
        hints.sort_by_key(|p| {
            let i = p.0 as usize;
            (swarm.availability[i], mix(&asker, *p))
        });
        hints
    }

    /// Removes nodes not heard from within the TTL, with everything they held.
    pub fn expire(&mut self, now: u64) -> Vec<Persist> {
        let ttl = self.config.node_ttl_ms;
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.last_seen_ms.saturating_add(ttl) < now)
            .map(|(id, _)| *id)
            .collect();
        let mut ops = Vec::new();
        for id in dead {
            self.nodes.remove(&id);
            for content in self.held.remove(&id).unwrap_or_default() {
                if let Some(s) = self.swarms.get_mut(&content) {
                    if s.remove_holding(id) {
                        ops.push(Persist::RemoveHolding(content, id));
                    }
                    s.forget_hints(id);
                    s.assigned.retain(|_, (holder, _)| *holder != id);
                    s.storage.remove(&id);
                }
            }
            ops.push(Persist::RemoveNode(id));
        }
        ops
    }

    /// True if the node is registered and not expired.
    pub fn is_registered(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node ids for the test, the same id for the same `i` within one test run.
    fn node(i: u8) -> NodeId {
        thread_local! {
            static IDS: Vec<NodeId> = (0..8)
                .map(|_| {
                    let kp = libp2p_identity::Keypair::generate_ed25519();
                    NodeId::from_public_key(&kp.public()).unwrap()
                })
                .collect();
        }
        IDS.with(|ids| ids[i as usize])
    }

    fn bf(n: u32, ones: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        ones.iter().for_each(|&i| {
            b.set(PieceIndex(i));
        });
        b
    }

    fn addr() -> Vec<SocketAddr> {
        vec!["127.0.0.1:1".parse().unwrap()]
    }

    #[test]
    fn lookup_ranks_rarest_holders_first_then_light_load() {
        let mut ix = Index::new(Config::default());
        let c = ContentId([1; 32]);
        for i in 0..4 {
            ix.register(0, node(i), Role::Node, addr());
        }
        // node 0 holds everything; node 1 holds piece 3 only (rare: 2 holders); node 2 holds
        // pieces 0-2 like node 0 and node 3 the same but is busy.
        ix.announce(0, node(0), c, bf(4, &[0, 1, 2, 3])).unwrap();
        ix.announce(0, node(1), c, bf(4, &[3])).unwrap();
        ix.announce(0, node(2), c, bf(4, &[0, 1, 2])).unwrap();
        ix.announce(0, node(3), c, bf(4, &[0, 1, 2])).unwrap();
        ix.heartbeat(0, node(3), Load { active_uploads: 9, ..Load::default() }).unwrap();
        // Asker has nothing: availability of 3 is 2, of 0-2 is 3.
        let l = ix.lookup(None, c, None, 10).unwrap();
        let order: Vec<NodeId> = l.peers.iter().map(|p| p.node_id).collect();
        assert_eq!(order[..2].iter().collect::<BTreeSet<_>>(), [node(0), node(1)].iter().collect());
        assert_eq!(&order[2..], &[node(2), node(3)], "lightly loaded before busy");
        // An asker that only lacks piece 3 gets only its holders.
        let l = ix.lookup(None, c, Some(&bf(4, &[0, 1, 2])), 10).unwrap();
        assert_eq!(l.peers.len(), 2);
        assert!(ix.lookup(None, ContentId([9; 32]), None, 10).is_none(), "unknown content");
    }

    #[test]
    fn hints_differ_between_askers_and_shrink_as_pieces_arrive() {
        let mut ix = Index::new(Config { hints: 4, ..Config::default() });
        let c = ContentId([2; 32]);
        for i in 0..3 {
            ix.register(0, node(i), Role::Node, addr());
        }
        ix.announce(0, node(0), c, Bitfield::full(8)).unwrap();
        let a = ix.lookup(Some(node(1)), c, Some(&Bitfield::new(8)), 5).unwrap().hints;
        let b = ix.lookup(Some(node(2)), c, Some(&Bitfield::new(8)), 5).unwrap().hints;
        assert_eq!((a.len(), b.len()), (4, 4));
        assert!(a.iter().all(|p| !b.contains(p)), "distinct pieces: {a:?} {b:?}");
        // Node 1 gets one of its hints; the next lookup tops the set up with a new piece.
        ix.announce_delta(0, node(1), c, &[a[0]]).unwrap();
        let have = bf(8, &[a[0].0]);
        let again = ix.lookup(Some(node(1)), c, Some(&have), 5).unwrap().hints;
        assert_eq!(again.len(), 4);
        assert!(!again.contains(&a[0]));
    }

    #[test]
    fn rejects_inconsistent_announces_and_unregistered_nodes() {
        let mut ix = Index::new(Config::default());
        let c = ContentId([3; 32]);
        assert_eq!(ix.heartbeat(0, node(0), Load::default()), Err(IndexError::NotRegistered));
        assert!(ix.announce(0, node(0), c, Bitfield::new(4)).is_err());
        ix.register(0, node(0), Role::Node, addr());
        ix.announce(0, node(0), c, Bitfield::new(4)).unwrap();
        assert!(matches!(
            ix.announce(0, node(0), c, Bitfield::new(5)),
            Err(IndexError::PieceCount { .. })
        ));
        assert!(matches!(
            ix.announce_delta(0, node(0), c, &[PieceIndex(4)]),
            Err(IndexError::PieceOutOfRange(_))
        ));
        assert!(matches!(ix.put_manifest(c, vec![1, 2, 3]), Err(IndexError::ManifestMismatch(_))));
    }

    #[test]
    fn silent_nodes_expire_with_their_holdings() {
        let mut ix = Index::new(Config { node_ttl_ms: 100, ..Config::default() });
        let c = ContentId([4; 32]);
        ix.register(0, node(0), Role::Node, addr());
        ix.register(0, node(1), Role::Node, addr());
        ix.announce(0, node(0), c, Bitfield::full(2)).unwrap();
        ix.announce(0, node(1), c, Bitfield::full(2)).unwrap();
        ix.heartbeat(90, node(1), Load::default()).unwrap();
        let ops = ix.expire(150);
        assert!(ops.contains(&Persist::RemoveNode(node(0))));
        assert!(ops.contains(&Persist::RemoveHolding(c, node(0))));
        let l = ix.lookup(None, c, None, 10).unwrap();
        assert_eq!(l.peers.len(), 1);
        assert_eq!(l.peers[0].node_id, node(1));
    }

    #[test]
    fn stalled_uploads_into_storage_are_reseeded_from_holders() {
        let cfg = Config {
            reseed_after_ms: 100,
            directive_pieces: 3,
            node_ttl_ms: 1_000,
            ..Config::default()
        };
        let mut ix = Index::new(cfg);
        let c = ContentId([6; 32]);
        let (storage, a, b) = (node(0), node(1), node(2));
        ix.register(0, storage, Role::Storage, addr());
        ix.register(0, a, Role::Node, addr());
        ix.register(0, b, Role::Node, addr());
        ix.announce(0, a, c, Bitfield::full(8)).unwrap();
        ix.announce(0, b, c, Bitfield::full(8)).unwrap();
        ix.announce(0, storage, c, bf(8, &[0, 1])).unwrap();
        // Not stalled yet: no directives.
        assert!(ix.heartbeat_plan(50, a, Load::default()).unwrap().1.directives.is_empty());
        // Stalled: A and B get disjoint batches of what storage lacks.
        let da = ix.heartbeat_plan(150, a, Load::default()).unwrap().1.directives;
        let db = ix.heartbeat_plan(150, b, Load::default()).unwrap().1.directives;
        assert_eq!(da.len(), 1);
        assert_eq!(da[0].storage, storage);
        assert_eq!(da[0].pieces.len(), 3);
        assert!(da[0].pieces.iter().all(|p| p.0 >= 2), "only missing pieces");
        assert!(db[0].pieces.iter().all(|p| !da[0].pieces.contains(p)), "spread over holders");
        // A vanishes; B pushes its batch; B's next order includes what A had been given.
        ix.heartbeat(900, b, Load::default()).unwrap();
        ix.heartbeat(900, storage, Load::default()).unwrap();
        assert!(ix.expire(1_200).contains(&Persist::RemoveNode(a)));
        ix.announce_delta(1_200, storage, c, &db[0].pieces).unwrap();
        let d = ix.heartbeat_plan(1_200, b, Load::default()).unwrap().1.directives;
        assert!(d[0].pieces.iter().any(|p| da[0].pieces.contains(p)), "a's pieces reissued: {d:?}");
        // Complete in storage: holders hear "stored" and get no more directives.
        ix.announce(1_400, storage, c, Bitfield::full(8)).unwrap();
        let out = ix.heartbeat_plan(1_400, b, Load::default()).unwrap().1;
        assert_eq!(out.stored, vec![c]);
        assert!(out.directives.is_empty());
    }

    #[test]
    fn restores_from_sled() {
        let dir = tempfile::tempdir().unwrap();
        let c;
        {
            let state = crate::SledState::open(dir.path()).unwrap();
            let mut ix = Index::new(Config::default());
            state.apply(&ix.register(5, node(0), Role::Node, addr())).unwrap();
            let hashes = vec![shoal_core::PieceHash::of(b"x")];
            let m = Manifest::new("f", 1, hashes).unwrap();
            c = m.content_id();
            let (need, ops) = ix.announce(5, node(0), c, Bitfield::full(1)).unwrap();
            assert!(need);
            state.apply(&ops).unwrap();
            state.apply(&ix.put_manifest(c, m.encode()).unwrap()).unwrap();
            state.flush().unwrap();
        }
        let state = crate::SledState::open(dir.path()).unwrap();
        let (nodes, holdings, manifests) = state.load().unwrap();
        let mut ix = Index::restore(Config::default(), 5, nodes, holdings, manifests);
        let l = ix.lookup(None, c, None, 10).unwrap();
        assert_eq!(l.peers[0].node_id, node(0));
        assert!(ix.manifest(c).is_some());
        // Still subject to expiry from its persisted last heartbeat.
        assert!(!ix.expire(5 + 10_001).is_empty());
    }
}
