//! The tracker protocol (ALPN [`TRACKER_ALPN`]), without I/O.
//!
//! One request per bidirectional stream: the node sends a [`TrackerRequest`] frame (followed by
//! `len` raw manifest bytes for [`TrackerRequest::PutManifest`]) and the tracker answers with one
//! [`TrackerResponse`] frame (followed by raw bytes for [`TrackerResponse::Manifest`]). Frames
//! use the peer protocol's framing with a limit of [`MAX_TRACKER_FRAME_LEN`].
//!
//! Authentication: every request that speaks for a node carries that node's id, and the tracker
//! accepts it only if it is the id the connection proved in its TLS handshake, that is, a
//! message signed (through the handshake's CertificateVerify and the session keys) by that
//! node's key. A node cannot announce or heartbeat as another.
//!
//! | type | frame | body |
//! |---|---|---|
//! | `0x60` | Register | node key, version u16, role u8, address count u8, addresses |
//! | `0x61` | Announce | node key, content id, piece count u32, bits |
//! | `0x62` | AnnounceDelta | node key, content id, count u16, pieces u32 each |
//! | `0x63` | PutManifest | node key, content id, len u32; `len` raw bytes follow |
//! | `0x64` | Heartbeat | node key, active uploads u32, upload rate u64, download rate u64 |
//! | `0x65` | Lookup | content id, max peers u8, flag u8, then (flag 1) piece count u32 and bits |
//! | `0x66` | GetManifest | content id |
//! | `0x67` | FindStorage | |
//! | `0x70` | Registered | heartbeat interval ms u32 |
//! | `0x71` | Ok | |
//! | `0x72` | NeedManifest | |
//! | `0x73` | LookupReply | piece count u32, peer count u8, peers, hint count u16, hints u32 each |
//! | `0x74` | Manifest | len u32; `len` raw bytes follow |
//! | `0x75` | Unknown | |
//! | `0x76` | Error | code u8, text |
//! | `0x77` | StorageNodes | count u8, then per node: node key, address count u8, addresses |
//! | `0x78` | HeartbeatReply | stored count u16, content ids; directive count u8, directives |
//!
//! A directive: content id, storage node key, address count u8, addresses, token length u16,
//! token. A [`ReseedToken`] is signed by the tracker's node key over
//! `"shoal reseed token v1"` ‖ content id ‖ storage key ‖ holder key ‖ expiry ms u64 ‖ piece
//! count u16 ‖ pieces u32 each; its encoding is those fields (without the prefix) followed by
//! the 64-byte signature.
//!
//! A peer in a lookup reply: node key, load u32, address count u8, addresses, bits (of the
//! reply's piece count). An address is `0x04` + 4 bytes + port or `0x06` + 16 bytes + port.

use std::net::SocketAddr;

use shoal_core::piece::MAX_PIECES;
use shoal_core::{manifest, ticket, Bitfield, ContentId, NodeId, PieceIndex};

use crate::codec::{DecodeError, Frame, Reader};

mod token;
pub use token::{ReseedToken, MAX_TOKEN_PIECES};

/// The ALPN of the tracker protocol, version 1.
pub const TRACKER_ALPN: &[u8] = b"shoal/tracker/1";
/// The tracker protocol version carried in [`TrackerRequest::Register`].
pub const TRACKER_VERSION: u16 = 1;
/// The largest tracker frame: room for a lookup reply of [`MAX_LOOKUP_PEERS`] bitfields of
/// the largest manifest.
pub const MAX_TRACKER_FRAME_LEN: usize = 1024 * 1024;
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
    /// A code this version does not know.
    Other(u8),
}

impl ErrorCode {
    fn code(self) -> u8 {
        match self {
            Self::Forged => 1,
            Self::NotRegistered => 2,
            Self::BadRequest => 3,
            Self::Internal => 4,
            Self::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => Self::Forged,
            2 => Self::NotRegistered,
            3 => Self::BadRequest,
            4 => Self::Internal,
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
    },
    /// Who holds pieces of a content the asker needs.
    Lookup {
        /// the content
        content: ContentId,
        /// at most this many peers
        max_peers: u8,
        /// what the asker already has, if it knows the piece count
        have: Option<Bitfield>,
    },
    /// Asks for the manifest of a content.
    GetManifest {
        /// the content
        content: ContentId,
    },
    /// Asks where storage nodes are.
    FindStorage,
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

fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let family = *r.peek().ok_or_else(|| r.malformed("body too short"))?;
    let len = ticket::encoded_addr_len(family).ok_or_else(|| r.malformed("bad address family"))?;
    let bytes = r.bytes(len)?;
    ticket::decode_addr(bytes).ok_or_else(|| r.malformed("bad address"))
}

fn put_addrs(out: &mut Vec<u8>, addrs: &[SocketAddr]) {
    let addrs = &addrs[..addrs.len().min(MAX_ADDRS)];
    out.push(addrs.len() as u8);
    for &a in addrs {
        ticket::encode_addr(out, a);
    }
}

fn read_addrs(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, DecodeError> {
    let n = r.u8()? as usize;
    if n > MAX_ADDRS {
        return Err(r.malformed("too many addresses"));
    }
    (0..n).map(|_| read_addr(r)).collect()
}

fn read_node(r: &mut Reader<'_>) -> Result<NodeId, DecodeError> {
    let key = r.array()?;
    NodeId::from_public_key_bytes(key).map_err(|_| r.malformed("node key is not an ed25519 key"))
}

fn read_count(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let n = r.u32()?;
    if u64::from(n) > MAX_PIECES {
        return Err(r.malformed("piece count beyond the largest manifest"));
    }
    Ok(n)
}

fn read_bits(r: &mut Reader<'_>, len: u32) -> Result<Bitfield, DecodeError> {
    let bytes = r.bytes((len as usize).div_ceil(8))?;
    Bitfield::from_bytes(len, bytes).map_err(|_| r.malformed("bitfield has bits past the end"))
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_ERROR_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&text.as_bytes()[..end]);
}

impl Frame for TrackerRequest {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Register { node_id, version, role, addrs } => {
                out.push(0x60);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.push(match role {
                    Role::Node => 0,
                    Role::Storage => 1,
                });
                put_addrs(out, addrs);
            }
            Self::Announce { node_id, content, bitfield } => {
                out.push(0x61);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(&bitfield.len().to_be_bytes());
                out.extend_from_slice(bitfield.as_bytes());
            }
            Self::AnnounceDelta { node_id, content, pieces } => {
                out.push(0x62);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(content.as_bytes());
                let pieces = &pieces[..pieces.len().min(MAX_DELTA)];
                out.extend_from_slice(&(pieces.len() as u16).to_be_bytes());
                for p in pieces {
                    out.extend_from_slice(&p.0.to_be_bytes());
                }
            }
            Self::PutManifest { node_id, content, len } => {
                out.push(0x63);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Self::Heartbeat { node_id, load } => {
                out.push(0x64);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(&load.active_uploads.to_be_bytes());
                out.extend_from_slice(&load.upload_rate.to_be_bytes());
                out.extend_from_slice(&load.download_rate.to_be_bytes());
            }
            Self::Lookup { content, max_peers, have } => {
                out.push(0x65);
                out.extend_from_slice(content.as_bytes());
                out.push(*max_peers);
                match have {
                    Some(b) => {
                        out.push(1);
                        out.extend_from_slice(&b.len().to_be_bytes());
                        out.extend_from_slice(b.as_bytes());
                    }
                    None => out.push(0),
                }
            }
            Self::GetManifest { content } => {
                out.push(0x66);
                out.extend_from_slice(content.as_bytes());
            }
            Self::FindStorage => out.push(0x67),
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let req = match ty {
            0x60 => {
                let node_id = read_node(&mut r)?;
                let version = r.u16()?;
                let role = match r.u8()? {
                    0 => Role::Node,
                    1 => Role::Storage,
                    _ => return Err(r.malformed("unknown role")),
                };
                Self::Register { node_id, version, role, addrs: read_addrs(&mut r)? }
            }
            0x61 => {
                let node_id = read_node(&mut r)?;
                let content = ContentId(r.array()?);
                let len = read_count(&mut r)?;
                Self::Announce { node_id, content, bitfield: read_bits(&mut r, len)? }
            }
            0x62 => {
                let node_id = read_node(&mut r)?;
                let content = ContentId(r.array()?);
                let n = r.u16()? as usize;
                if n > MAX_DELTA {
                    return Err(r.malformed("delta too long"));
                }
                let pieces = (0..n).map(|_| r.u32().map(PieceIndex)).collect::<Result<_, _>>()?;
                Self::AnnounceDelta { node_id, content, pieces }
            }
            0x63 => {
                let node_id = read_node(&mut r)?;
                let content = ContentId(r.array()?);
                let len = r.u32()?;
                if len as usize > manifest::MAX_ENCODED_LEN {
                    return Err(r.malformed("manifest longer than the limit"));
                }
                Self::PutManifest { node_id, content, len }
            }
            0x64 => {
                let node_id = read_node(&mut r)?;
                let load = Load {
                    active_uploads: r.u32()?,
                    upload_rate: r.u64()?,
                    download_rate: r.u64()?,
                };
                Self::Heartbeat { node_id, load }
            }
            0x65 => {
                let content = ContentId(r.array()?);
                let max_peers = r.u8()?;
                let have = match r.u8()? {
                    0 => None,
                    1 => {
                        let len = read_count(&mut r)?;
                        Some(read_bits(&mut r, len)?)
                    }
                    _ => return Err(r.malformed("bad have flag")),
                };
                Self::Lookup { content, max_peers, have }
            }
            0x66 => Self::GetManifest { content: ContentId(r.array()?) },
            0x67 => Self::FindStorage,
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Frame for TrackerResponse {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Registered { heartbeat_ms } => {
                out.push(0x70);
                out.extend_from_slice(&heartbeat_ms.to_be_bytes());
            }
            Self::Ok => out.push(0x71),
            Self::NeedManifest => out.push(0x72),
            Self::LookupReply { piece_count, peers, hints } => {
                out.push(0x73);
                out.extend_from_slice(&piece_count.to_be_bytes());
                let peers: Vec<&PeerInfo> = peers
                    .iter()
                    .filter(|p| p.bitfield.len() == *piece_count)
                    .take(MAX_LOOKUP_PEERS)
                    .collect();
                out.push(peers.len() as u8);
                for p in peers {
                    out.extend_from_slice(p.node_id.public_key_bytes());
                    out.extend_from_slice(&p.load.to_be_bytes());
                    put_addrs(out, &p.addrs);
                    out.extend_from_slice(p.bitfield.as_bytes());
                }
                let hints = &hints[..hints.len().min(MAX_HINTS)];
                out.extend_from_slice(&(hints.len() as u16).to_be_bytes());
                for h in hints {
                    out.extend_from_slice(&h.0.to_be_bytes());
                }
            }
            Self::Manifest { len } => {
                out.push(0x74);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Self::Unknown => out.push(0x75),
            Self::Error { code, text } => {
                out.push(0x76);
                out.push(code.code());
                put_text(out, text);
            }
            Self::StorageNodes { nodes } => {
                out.push(0x77);
                let nodes = &nodes[..nodes.len().min(MAX_LOOKUP_PEERS)];
                out.push(nodes.len() as u8);
                for n in nodes {
                    out.extend_from_slice(n.node_id.public_key_bytes());
                    put_addrs(out, &n.addrs);
                }
            }
            Self::HeartbeatReply { stored, directives } => {
                out.push(0x78);
                let stored = &stored[..stored.len().min(MAX_STORED)];
                out.extend_from_slice(&(stored.len() as u16).to_be_bytes());
                for c in stored {
                    out.extend_from_slice(c.as_bytes());
                }
                let directives: Vec<&Directive> = directives
                    .iter()
                    .filter(|d| d.token.len() <= crate::MAX_TOKEN_LEN)
                    .take(MAX_DIRECTIVES)
                    .collect();
                out.push(directives.len() as u8);
                for d in directives {
                    out.extend_from_slice(d.content.as_bytes());
                    out.extend_from_slice(d.storage.node_id.public_key_bytes());
                    put_addrs(out, &d.storage.addrs);
                    out.extend_from_slice(&(d.token.len() as u16).to_be_bytes());
                    out.extend_from_slice(&d.token);
                }
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let resp = match ty {
            0x70 => Self::Registered { heartbeat_ms: r.u32()? },
            0x71 => Self::Ok,
            0x72 => Self::NeedManifest,
            0x73 => {
                let piece_count = read_count(&mut r)?;
                let n = r.u8()? as usize;
                if n > MAX_LOOKUP_PEERS {
                    return Err(r.malformed("too many peers"));
                }
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    let node_id = read_node(&mut r)?;
                    let load = r.u32()?;
                    let addrs = read_addrs(&mut r)?;
                    let bitfield = read_bits(&mut r, piece_count)?;
                    peers.push(PeerInfo { node_id, load, addrs, bitfield });
                }
                let h = r.u16()? as usize;
                if h > MAX_HINTS {
                    return Err(r.malformed("too many hints"));
                }
                let hints = (0..h).map(|_| r.u32().map(PieceIndex)).collect::<Result<_, _>>()?;
                Self::LookupReply { piece_count, peers, hints }
            }
            0x74 => {
                let len = r.u32()?;
                if len as usize > manifest::MAX_ENCODED_LEN {
                    return Err(r.malformed("manifest longer than the limit"));
                }
                Self::Manifest { len }
            }
            0x75 => Self::Unknown,
            0x76 => {
                let code = ErrorCode::from_code(r.u8()?);
                let raw = r.rest();
                if raw.len() > MAX_ERROR_LEN {
                    return Err(r.malformed("error text too long"));
                }
                let text = String::from_utf8(raw.to_vec())
                    .map_err(|_| r.malformed("text is not utf-8"))?;
                Self::Error { code, text }
            }
            0x77 => {
                let n = r.u8()? as usize;
                if n > MAX_LOOKUP_PEERS {
                    return Err(r.malformed("too many storage nodes"));
                }
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    let node_id = read_node(&mut r)?;
                    nodes.push(StorageNode { node_id, addrs: read_addrs(&mut r)? });
                }
                Self::StorageNodes { nodes }
            }
            0x78 => {
                let n = r.u16()? as usize;
                if n > MAX_STORED {
                    return Err(r.malformed("too many stored notices"));
                }
                let stored = (0..n).map(|_| r.array().map(ContentId)).collect::<Result<_, _>>()?;
                let d = r.u8()? as usize;
                if d > MAX_DIRECTIVES {
                    return Err(r.malformed("too many directives"));
                }
                let mut directives = Vec::with_capacity(d);
                for _ in 0..d {
                    let content = ContentId(r.array()?);
                    let node_id = read_node(&mut r)?;
                    let addrs = read_addrs(&mut r)?;
                    let len = r.u16()? as usize;
                    if len > crate::MAX_TOKEN_LEN {
                        return Err(r.malformed("token too long"));
                    }
                    let token = r.bytes(len)?.to_vec();
                    directives.push(Directive {
                        content,
                        storage: StorageNode { node_id, addrs },
                        token,
                    });
                }
                Self::HeartbeatReply { stored, directives }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests;
