//! The tracker protocol (ALPN [`TRACKER_ALPN`]), without I/O.
//!
//! Requests go on bidirectional streams: the node sends a [`TrackerRequest`] frame (followed by
//! `len` raw manifest bytes for [`TrackerRequest::PutManifest`]) and the tracker answers with one
//! [`TrackerResponse`] frame (followed by raw bytes for [`TrackerResponse::Manifest`]). Frames
//! use the peer protocol's framing with a limit of [`MAX_TRACKER_FRAME_LEN`] (answers) and
//! [`MAX_TRACKER_REQUEST_LEN`] (requests).
//!
//! Pipelining (version 3): a stream may carry up to [`MAX_REQUESTS_PER_STREAM`] requests one
//! after another, without waiting for answers; the tracker answers each, in order, on the same
//! stream. A node that sends one request and finishes its side (what version 2 nodes do) gets
//! one answer and the end of the stream, as before. The tracker finishes its side once the node
//! finished its own and every request was answered, or after the last request a stream may
//! carry: it then stops reading, and requests sent past it are not answered (open a new
//! stream). A [`TrackerRequest::PutManifest`] ends its stream the same way (the tracker may
//! answer without reading its body). Each request must arrive whole within the tracker's request deadline (counted
//! from when it starts waiting for it), each answer must be read within it, and every request
//! counts against the rate limits on its own.
//!
//! Versions: the tracker accepts [`TRACKER_ALPN`] (4), [`TRACKER_ALPN_V3`] and
//! [`TRACKER_ALPN_V2`]; version 3 adds pipelined streams and compact lookups, version 4 adds
//! regions; neither changes anything an older node sends or receives. A node dials
//! [`TRACKER_ALPN`] only, so it meets an older tracker with a failed handshake (no common
//! protocol) rather than with half-answered streams.
//!
//! Regions (version 4) are trailing fields, absent from older frames: a Register may end with
//! the region the node states (region text); a Registered answering a version 4 Register ends
//! with the region the tracker placed the node in (region text, empty for none) and a flags
//! byte (bit 0: the tracker routes by region, so the node should keep traffic in its region);
//! a Lookup with flag bit 2 asks for the peers' regions, and its reply then ends with one
//! region text per peer, in the order of the peers (empty for a peer without region), written
//! only if some peer has one. A region text is a length u8 (0 to [`Region::MAX_LEN`]) and that
//! many bytes of a valid region name.
//!
//! Authentication: every request that speaks for a node carries that node's id, and the tracker
//! accepts it only if it is the id the connection proved in its TLS handshake, that is, a
//! message signed (through the handshake's CertificateVerify and the session keys) by that
//! node's key. A node cannot announce or heartbeat as another.
//!
//! | type | frame | body |
//! |---|---|---|
//! | `0x60` | Register | node key, version u16, role u8, address count u8, addresses, (version 4, optional) stated region |
//! | `0x61` | Announce | node key, content id, piece count u32, bits |
//! | `0x62` | AnnounceDelta | node key, content id, count u16, pieces u32 each |
//! | `0x63` | PutManifest | node key, content id, len u32; `len` raw bytes follow |
//! | `0x64` | Heartbeat | node key, active uploads u32, upload rate u64, download rate u64, (version 4, optional) link count u8, then per link an address and its connections u32 |
//! | `0x65` | Lookup | content id, max peers u8, flags u8 (bit 0: piece count u32 and bits follow; bit 1: compact answer, version 3; bit 2: peers' regions, version 4), then (bit 0) piece count u32 and bits |
//! | `0x66` | GetManifest | content id |
//! | `0x67` | FindStorage | |
//! | `0x68` | Report | content id, node key of a holder that never delivered |
//! | `0x6a` | Forget | node key, content id (version 4: the sender holds none of it any more) |
//! | `0x69` | ResolveSource | id (the rest, 1 to [`MAX_SOURCE_ID_LEN`] bytes of UTF-8) |
//! | `0x70` | Registered | heartbeat interval ms u32, granted role u8, (version 4) region, flags u8 |
//! | `0x71` | Ok | |
//! | `0x72` | NeedManifest | |
//! | `0x73` | LookupReply | piece count u32, peer count u8, peers, hint count u16, hints u32 each, (version 4, optional) a region per peer |
//! | `0x74` | Manifest | len u32; `len` raw bytes follow |
//! | `0x75` | Unknown | |
//! | `0x76` | Error | code u8, text (codes: 1 forged, 2 not registered, 3 bad request, 4 internal, 5 rate limited, 6 over a limit) |
//! | `0x77` | StorageNodes | count u8, then per node: node key, address count u8, addresses |
//! | `0x78` | HeartbeatReply | stored count u16, content ids; directive count u8, directives |
//! | `0x7a` | Source | URL (the rest, at most [`MAX_SOURCE_URL_LEN`] bytes of UTF-8) |
//! | `0x79` | CompactLookupReply | piece count u32, peer count u8, peers without bits, hint count u16, hints u32 each (version 3), (version 4, optional) a region per peer |
//!
//! A directive: content id, storage node key, address count u8, addresses, token length u16,
//! token. A [`ReseedToken`] is signed by the tracker's node key over
//! `"shoal reseed token v1"` ‖ content id ‖ storage key ‖ holder key ‖ expiry ms u64 ‖ piece
//! count u16 ‖ pieces u32 each; its encoding is those fields (without the prefix) followed by
//! the 64-byte signature.
//!
//! Trust (version 2): a role is granted, not claimed: [`TrackerResponse::Registered`] says
//! which role the tracker gave (storage only to node ids its operator admitted). An announce of
//! a content the tracker has no manifest for is answered [`TrackerResponse::NeedManifest`] and
//! not recorded: the node uploads the manifest and announces again, so a swarm's piece count
//! always comes from a verified manifest. Registrations and announces past the tracker's rate
//! limits are answered [`ErrorCode::RateLimited`]: back off and retry.
//!
//! A peer in a lookup reply: node key, load u32, address count u8, addresses, bits (of the
//! reply's piece count). A peer in a compact lookup reply: the same without the bits, about a
//! sixth of the bytes for a 512-piece content: for an asker that only wants peers to dial (it
//! learns their pieces from them). An address is `0x04` + 4 bytes + port or `0x06` + 16 bytes
//! + port.

use std::net::SocketAddr;

use shoal_core::piece::MAX_PIECES;
use shoal_core::{ticket, Bitfield, ContentId, NodeId, PieceIndex, Region};

use crate::codec::{DecodeError, Reader};

mod token;
pub use token::{ReseedToken, MAX_TOKEN_PIECES};

/// The ALPN of the tracker protocol, version 4.
pub const TRACKER_ALPN: &[u8] = b"shoal/tracker/4";
/// The ALPN of version 3 (no regions), still served.
pub const TRACKER_ALPN_V3: &[u8] = b"shoal/tracker/3";
/// The ALPN of version 2 (one request per stream, no compact lookups), still served.
pub const TRACKER_ALPN_V2: &[u8] = b"shoal/tracker/2";
/// The tracker protocol version carried in [`TrackerRequest::Register`].
pub const TRACKER_VERSION: u16 = 4;
/// The first version that carries regions.
pub const REGIONS_VERSION: u16 = 4;
/// The oldest version a tracker still registers.
pub const MIN_TRACKER_VERSION: u16 = 2;
/// The most requests one stream carries (version 3); the tracker answers no more on it.
pub const MAX_REQUESTS_PER_STREAM: usize = 256;
/// The largest tracker frame: room for a lookup reply of [`MAX_LOOKUP_PEERS`] bitfields of
/// the largest manifest.
pub const MAX_TRACKER_FRAME_LEN: usize = 1024 * 1024;
/// The largest tracker request frame: an announce delta of [`MAX_DELTA`] pieces, or a bitfield
/// of the largest manifest, with room to spare. The tracker reads requests with this limit, so
/// a request stream costs it at most this much.
pub const MAX_TRACKER_REQUEST_LEN: usize = 32 * 1024;
/// The most addresses a node registers.
pub const MAX_ADDRS: usize = 8;
/// The most pieces in one delta announce.
pub const MAX_DELTA: usize = 4096;
/// The most peers in one lookup reply.
pub const MAX_LOOKUP_PEERS: usize = 64;
/// The most piece hints in one lookup reply.
pub const MAX_HINTS: usize = 4096;
/// The longest error text, in bytes.
pub const MAX_ERROR_LEN: usize = 200;

/// What a registering node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// An ordinary node.
    Node,
    /// A storage node: keeps what it holds for good.
    Storage,
}

/// A node's load, reported in heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Uploads in progress.
    pub active_uploads: u32,
    /// Upload rate, bytes per second.
    pub upload_rate: u64,
    /// Download rate, bytes per second.
    pub download_rate: u64,
}

/// A peer in a lookup reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node id.
    pub node_id: NodeId,
    /// Its active uploads at its last heartbeat.
    pub load: u32,
    /// Where to reach it.
    pub addrs: Vec<SocketAddr>,
    /// The pieces it holds.
    pub bitfield: Bitfield,
    /// Its region, if the tracker has regions and the asker asked for them (version 4).
    pub region: Option<Region>,
}

/// A peer in a compact lookup reply: where to reach it, without its pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    /// Its node id.
    pub node_id: NodeId,
    /// Its active uploads at its last heartbeat.
    pub load: u32,
    /// Where to reach it.
    pub addrs: Vec<SocketAddr>,
    /// Its region, if the tracker has regions and the asker asked for them (version 4).
    pub region: Option<Region>,
}

/// Why the tracker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request names a node id the connection did not prove.
    Forged,
    /// The node must register first.
    NotRegistered,
    /// The request is inconsistent (wrong piece count, manifest that does not hash to the id).
    BadRequest,
    /// The tracker failed internally.
    Internal,
    /// Too many requests from this node or address: slow down and retry later.
    RateLimited,
    /// A limit is reached (contents per node, manifest space): the request is refused for good.
    OverLimit,
    /// A code this version does not know.
    Other(u8),
}

impl ErrorCode {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Forged => 1,
            Self::NotRegistered => 2,
            Self::BadRequest => 3,
            Self::Internal => 4,
            Self::RateLimited => 5,
            Self::OverLimit => 6,
            Self::Other(c) => c,
        }
    }

    pub(crate) fn from_code(c: u8) -> Self {
        match c {
            1 => Self::Forged,
            2 => Self::NotRegistered,
            3 => Self::BadRequest,
            4 => Self::Internal,
            5 => Self::RateLimited,
            6 => Self::OverLimit,
            c => Self::Other(c),
        }
    }
}

/// A request from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackerRequest {
    /// Joins the tracker (again).
    Register {
        /// the sender
        node_id: NodeId,
        /// its tracker protocol version
        version: u16,
        /// what it is
        role: Role,
        /// where peers reach it
        addrs: Vec<SocketAddr>,
        /// the region it states (version 4); the tracker takes it only where its operator
        /// allows, and otherwise places the node by its address
        region: Option<Region>,
    },
    /// Every piece the sender holds of a content.
    Announce {
        /// the sender
        node_id: NodeId,
        /// the content
        content: ContentId,
        /// the pieces held
        bitfield: Bitfield,
    },
    /// Pieces the sender gained since its last announce.
    AnnounceDelta {
        /// the sender
        node_id: NodeId,
        /// the content
        content: ContentId,
        /// the new pieces
        pieces: Vec<PieceIndex>,
    },
    /// A manifest, as `len` raw bytes after the frame.
    PutManifest {
        /// the sender
        node_id: NodeId,
        /// the content it claims to describe
        content: ContentId,
        /// byte count that follows
        len: u32,
    },
    /// The sender is alive; its load.
    Heartbeat {
        /// the sender
        node_id: NodeId,
        /// its load
        load: Load,
        /// per address it listens on (version 4, at most [`MAX_ADDRS`]), the connections it
        /// serves there: the tracker hands each asker the least loaded
        links: Vec<(SocketAddr, u32)>,
    },
    /// Who holds pieces of a content the asker needs.
    Lookup {
        /// the content
        content: ContentId,
        /// at most this many peers
        max_peers: u8,
        /// what the asker already has, if it knows the piece count
        have: Option<Bitfield>,
        /// answer with [`TrackerResponse::CompactLookupReply`] (peers without their bitfields);
        /// version 3
        compact: bool,
        /// name each peer's region in the answer (version 4)
        regions: bool,
    },
    /// Asks for the manifest of a content.
    GetManifest {
        /// the content
        content: ContentId,
    },
    /// Asks where storage nodes are.
    FindStorage,
    /// The sender (the connection's proven node) asked `peer` for pieces of `content` and got
    /// none: the tracker demotes holders many downloaders report.
    Report {
        /// the content
        content: ContentId,
        /// the holder that never delivered
        peer: NodeId,
    },
    /// The sender holds none of a content any more (version 4): the tracker drops its holding.
    Forget {
        /// the sender
        node_id: NodeId,
        /// the content
        content: ContentId,
    },
    /// Asks for the URL of a resource the tracker's operator named (offline download by id);
    /// answered [`TrackerResponse::Source`] or [`TrackerResponse::Unknown`].
    ResolveSource {
        /// the resource's id
        id: String,
    },
}

/// The longest resource id in [`TrackerRequest::ResolveSource`].
pub const MAX_SOURCE_ID_LEN: usize = 255;
/// The longest URL in [`TrackerResponse::Source`].
pub const MAX_SOURCE_URL_LEN: usize = 2048;

/// Where the tracker placed a node (version 4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// The node's region; `None` if the tracker has no region for it.
    pub region: Option<Region>,
    /// The tracker routes by region: lookups rank the asker's region first and hint pieces so
    /// that each crosses into a region about once; the node should fetch from other regions
    /// only what its own region's peers lack.
    pub routing: bool,
}

/// A storage node in a [`TrackerResponse::StorageNodes`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageNode {
    /// Its node id.
    pub node_id: NodeId,
    /// Where to reach it.
    pub addrs: Vec<SocketAddr>,
}

/// An order from the tracker: push these pieces (named in the token) to that storage node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The content.
    pub content: ContentId,
    /// The storage node.
    pub storage: StorageNode,
    /// The encoded [`ReseedToken`], to send with each push.
    pub token: Vec<u8>,
}

/// The tracker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackerResponse {
    /// Registered; heartbeat this often.
    Registered {
        /// heartbeat interval in milliseconds
        heartbeat_ms: u32,
        /// the role the tracker granted: [`Role::Node`] for a storage claim its operator did not
        /// admit
        role: Role,
        /// where the tracker placed the node (version 4; `None` to older nodes, and then
        /// nothing is written)
        placement: Option<Placement>,
    },
    /// Done.
    Ok,
    /// Announced; the tracker has no manifest for it yet: send one.
    NeedManifest,
    /// Peers for a lookup, most useful first, and the pieces to fetch first.
    LookupReply {
        /// pieces in the content
        piece_count: u32,
        /// the peers
        peers: Vec<PeerInfo>,
        /// pieces to fetch first (differential distribution)
        hints: Vec<PieceIndex>,
    },
    /// Peers for a compact lookup, most useful first, without their bitfields, and the pieces
    /// to fetch first.
    CompactLookupReply {
        /// pieces in the content
        piece_count: u32,
        /// the peers
        peers: Vec<PeerSummary>,
        /// pieces to fetch first (differential distribution)
        hints: Vec<PieceIndex>,
    },
    /// The manifest follows as `len` raw bytes.
    Manifest {
        /// byte count that follows
        len: u32,
    },
    /// The tracker knows nothing of this content.
    Unknown,
    /// Refused.
    Error {
        /// why
        code: ErrorCode,
        /// a short explanation
        text: String,
    },
    /// The storage nodes the tracker knows.
    StorageNodes {
        /// the nodes
        nodes: Vec<StorageNode>,
    },
    /// The URL of a resource id.
    Source {
        /// the URL
        url: String,
    },
    /// A heartbeat was recorded; contents of the node now complete in storage, and re-seed
    /// orders.
    HeartbeatReply {
        /// contents the node holds or fetches that storage holds completely
        stored: Vec<ContentId>,
        /// pieces to push into storage
        directives: Vec<Directive>,
    },
}

/// The most stored notices in one heartbeat reply.
pub const MAX_STORED: usize = 1024;
/// The most directives in one heartbeat reply.
pub const MAX_DIRECTIVES: usize = 16;

impl Role {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Node => 0,
            Self::Storage => 1,
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(Self::Node),
            1 => Ok(Self::Storage),
            _ => Err(r.malformed("unknown role")),
        }
    }
}

pub(crate) fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let family = *r.peek().ok_or_else(|| r.malformed("body too short"))?;
    let len = ticket::encoded_addr_len(family).ok_or_else(|| r.malformed("bad address family"))?;
    let bytes = r.bytes(len)?;
    ticket::decode_addr(bytes).ok_or_else(|| r.malformed("bad address"))
}

pub(crate) fn put_addrs(out: &mut Vec<u8>, addrs: &[SocketAddr]) {
    let addrs = &addrs[..addrs.len().min(MAX_ADDRS)];
    out.push(addrs.len() as u8);
    for &a in addrs {
        ticket::encode_addr(out, a);
    }
}

pub(crate) fn read_addrs(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, DecodeError> {
    let n = r.u8()? as usize;
    if n > MAX_ADDRS {
        return Err(r.malformed("too many addresses"));
    }
    (0..n).map(|_| read_addr(r)).collect()
}

pub(crate) fn read_node(r: &mut Reader<'_>) -> Result<NodeId, DecodeError> {
    let key = r.array()?;
    NodeId::from_public_key_bytes(key).map_err(|_| r.malformed("node key is not an ed25519 key"))
}

pub(crate) fn read_count(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let n = r.u32()?;
    if u64::from(n) > MAX_PIECES {
        return Err(r.malformed("piece count beyond the largest manifest"));
    }
    Ok(n)
}

pub(crate) fn read_bits(r: &mut Reader<'_>, len: u32) -> Result<Bitfield, DecodeError> {
    let bytes = r.bytes((len as usize).div_ceil(8))?;
    Bitfield::from_bytes(len, bytes).map_err(|_| r.malformed("bitfield has bits past the end"))
}

/// A region text: length u8, then the name (0 for none).
pub(crate) fn put_region(out: &mut Vec<u8>, region: Option<&Region>) {
    let name = region.map_or("", Region::as_str);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

pub(crate) fn read_region(r: &mut Reader<'_>) -> Result<Option<Region>, DecodeError> {
    let n = r.u8()? as usize;
    if n > Region::MAX_LEN {
        return Err(r.malformed("region name too long"));
    }
    if n == 0 {
        return Ok(None);
    }
    let bytes = r.bytes(n)?;
    Region::try_from(bytes).map(Some).map_err(|_| r.malformed("bad region name"))
}

pub(crate) fn put_text(out: &mut Vec<u8>, text: &str, max: usize) {
    out.extend_from_slice(crate::codec::truncated(text, max).as_bytes());
}

mod request;
mod response;

#[cfg(test)]
mod tests;
