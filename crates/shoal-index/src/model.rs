//! The index's configuration, records, persisted changes and errors.

use std::collections::HashSet;
use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex, Region};
use shoal_wire::tracker::{PeerInfo, Role};

use crate::limits::Limits;
use crate::region::RegionMap;

/// Tunables, with their defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// A node that has not been heard from for this long expires (default 10 s). A swarm
    /// nobody has held for this long is collected with its manifest.
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
    /// Node ids the operator admitted as storage (default none). Any other node is ordinary,
    /// whatever role it claims.
    pub admitted_storage: HashSet<NodeId>,
    /// The most contents one node may hold at the tracker (default 4096).
    pub max_contents_per_node: usize,
    /// The most manifest bytes the tracker keeps in total (default 256 MiB).
    pub max_manifest_bytes: u64,
    /// The most bytes of manifests nobody announces yet that uploaders at one source address
    /// (an IPv6 /64) may have stored (default 32 MiB): an upload is charged to its uploader's
    /// address until someone announces the content, so one address cannot fill the total.
    pub max_pending_manifest_bytes: u64,
    /// Ordinary holders ranked per lookup, drawn at random, besides admitted storage
    /// (default 64): a lookup costs in proportion to its answer, not to the swarm.
    pub lookup_sample: usize,
    /// Distinct reports after which a holder is ranked last (default 2).
    pub demote_after: usize,
    /// Distinct reports after which an ordinary holder is dropped from the swarm (default 5).
    pub drop_after: usize,
    /// Rate limits per source address and node id.
    pub limits: Limits,
    /// Seed of the sampling generator (the tracker passes a random one).
    pub seed: u64,
    /// The operator's address ranges, each naming a region (default none).
    pub regions: RegionMap,
    /// Take the region a node states for itself over the map's (default false): for
    /// deployments whose nodes know where they are better than their addresses say, and for
    /// testnets on one machine.
    pub allow_stated_region: bool,
    /// Route by region (default true): lookups rank the asker's region first and hints make
    /// each piece cross into a region about once. Off, regions are still assigned and
    /// reported (to measure what routing saves).
    pub region_routing: bool,
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
            admitted_storage: HashSet::new(),
            max_contents_per_node: 4096,
            max_manifest_bytes: 256 * 1024 * 1024,
            max_pending_manifest_bytes: 32 * 1024 * 1024,
            lookup_sample: 64,
            demote_after: 2,
            drop_after: 5,
            limits: Limits::default(),
            seed: 0x5eed,
            regions: RegionMap::default(),
            allow_stated_region: false,
            region_routing: true,
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
    /// Contents the node holds that admitted storage holds completely.
    pub stored: Vec<ContentId>,
    /// Pieces to push into storage.
    pub directives: Vec<Planned>,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Admitted storage (a claim alone never sets this).
    pub storage: bool,
    /// Where peers reach it (vetted against the observed address).
    pub addrs: Vec<SocketAddr>,
    /// Wall-clock milliseconds of its last register or heartbeat.
    pub last_seen_ms: u64,
    /// Uploads in progress at its last heartbeat.
    pub active_uploads: u32,
    /// Upload rate at its last heartbeat, bytes per second.
    pub upload_rate: u64,
    /// Its region, from its last registration.
    #[serde(default)]
    pub region: Option<Region>,
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
    PutManifest(ContentId, Bytes),
    /// Forget a manifest: nobody holds its content any more.
    RemoveManifest(ContentId),
}

/// A manifest checked against its content id: decoded, hashing to it. Checking is the
/// expensive part of an upload; it needs no index, so a server does it before taking its lock.
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    pub(crate) content: ContentId,
    pub(crate) piece_count: u32,
    pub(crate) bytes: Bytes,
}

impl VerifiedManifest {
    /// Checks that `bytes` decode as a manifest whose id is `content`.
    pub fn check(content: ContentId, bytes: impl Into<Bytes>) -> Result<Self, IndexError> {
        let bytes = bytes.into();
        let m = shoal_core::Manifest::decode(&bytes)
            .map_err(|_| IndexError::ManifestMismatch(content))?;
        if m.content_id() != content {
            return Err(IndexError::ManifestMismatch(content));
        }
        Ok(Self { content, piece_count: m.piece_count(), bytes })
    }

    /// The content it describes.
    pub fn content(&self) -> ContentId {
        self.content
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (a verified manifest never is).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
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
    /// The tracker has no manifest for the content: upload it, then announce again.
    #[error("no manifest for content {0} (upload it, then announce again)")]
    NeedManifest(ContentId),
    /// Too many requests from this address or node.
    #[error("slow down: too many requests from this address or node (retry in a few seconds)")]
    RateLimited,
    /// The node holds as many contents as the tracker accepts from one node.
    #[error("this node already announces {max} contents, the most this tracker accepts")]
    TooManyContents {
        /// the cap
        max: usize,
    },
    /// Manifests uploaded from this address that nobody announced yet fill its share.
    #[error(
        "manifests from this address that nobody announced yet fill its share ({max} bytes); \
         announce them, or retry once unannounced ones are collected"
    )]
    ManifestQuota {
        /// the cap
        max: u64,
    },
    /// The tracker's manifest space is full.
    #[error("the tracker's manifest space ({max} bytes) is full; retry later")]
    ManifestSpace {
        /// the cap
        max: u64,
    },
}

/// The answer to a lookup: peers with their bitfields ([`PeerInfo`], the default), or without
/// ([`shoal_wire::tracker::PeerSummary`], from [`crate::Index::lookup_compact`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup<P = PeerInfo> {
    /// Pieces in the content.
    pub piece_count: u32,
    /// Peers holding wanted pieces, most useful first.
    pub peers: Vec<P>,
    /// Pieces for the asker to fetch first.
    pub hints: Vec<PieceIndex>,
}

/// What a registration granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The role: [`Role::Storage`] only if claimed and admitted.
    pub role: Role,
    /// The addresses kept.
    pub addrs: Vec<SocketAddr>,
    /// The region the node is placed in.
    pub region: Option<Region>,
    /// Changes to persist.
    pub ops: Vec<Persist>,
}
