//! The encoding of [`TrackerResponse`].

use shoal_core::{manifest, ContentId, PieceIndex};

use super::{
    put_addrs, put_region, put_text, read_addrs, read_bits, read_count, read_node, read_region,
    Directive, ErrorCode, PeerInfo, PeerSummary, Placement, Role, StorageNode, TrackerResponse,
    MAX_DIRECTIVES, MAX_ERROR_LEN, MAX_HINTS, MAX_LOOKUP_PEERS, MAX_STORED,
};
use crate::codec::{DecodeError, Frame, Reader};

fn put_hints(out: &mut Vec<u8>, hints: &[PieceIndex]) {
    let hints = &hints[..hints.len().min(MAX_HINTS)];
    out.extend_from_slice(&(hints.len() as u16).to_be_bytes());
    for h in hints {
        out.extend_from_slice(&h.0.to_be_bytes());
    }
}

/// The peers' regions after a lookup reply's hints: written only if some peer has one.
fn put_peer_regions<'a>(
    out: &mut Vec<u8>,
    regions: impl Iterator<Item = Option<&'a shoal_core::Region>> + Clone,
) {
    if regions.clone().any(|r| r.is_some()) {
        for r in regions {
            put_region(out, r);
        }
    }
}

/// Reads the peers' regions if the reply carries them (nothing left: none).
fn read_peer_regions(
    r: &mut Reader<'_>,
    mut set: impl FnMut(usize, Option<shoal_core::Region>),
    n: usize,
) -> Result<(), DecodeError> {
    if r.peek().is_none() {
        return Ok(());
    }
    for i in 0..n {
        set(i, read_region(r)?);
    }
    Ok(())
}

/// The flags byte of a [`Placement`].
const PLACED_ROUTING: u8 = 0x01;

fn read_hints(r: &mut Reader<'_>) -> Result<Vec<PieceIndex>, DecodeError> {
    let h = r.u16()? as usize;
    if h > MAX_HINTS {
        return Err(r.malformed("too many hints"));
    }
    (0..h).map(|_| r.u32().map(PieceIndex)).collect()
}

impl Frame for TrackerResponse {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Registered { heartbeat_ms, role, placement } => {
                out.push(0x70);
                out.extend_from_slice(&heartbeat_ms.to_be_bytes());
                out.push(role.code());
                if let Some(p) = placement {
                    put_region(out, p.region.as_ref());
                    out.push(if p.routing { PLACED_ROUTING } else { 0 });
                }
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
                for p in &peers {
                    out.extend_from_slice(p.node_id.public_key_bytes());
                    out.extend_from_slice(&p.load.to_be_bytes());
                    put_addrs(out, &p.addrs);
                    out.extend_from_slice(p.bitfield.as_bytes());
                }
                put_hints(out, hints);
                put_peer_regions(out, peers.iter().map(|p| p.region.as_ref()));
            }
            Self::CompactLookupReply { piece_count, peers, hints } => {
                out.push(0x79);
                out.extend_from_slice(&piece_count.to_be_bytes());
                let peers = &peers[..peers.len().min(MAX_LOOKUP_PEERS)];
                out.push(peers.len() as u8);
                for p in peers {
                    out.extend_from_slice(p.node_id.public_key_bytes());
                    out.extend_from_slice(&p.load.to_be_bytes());
                    put_addrs(out, &p.addrs);
                }
                put_hints(out, hints);
                put_peer_regions(out, peers.iter().map(|p| p.region.as_ref()));
            }
            Self::Manifest { len } => {
                out.push(0x74);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Self::Unknown => out.push(0x75),
            Self::Source { url } => {
                out.push(0x7a);
                put_text(out, url, super::MAX_SOURCE_URL_LEN);
            }
            Self::Error { code, text } => {
                out.push(0x76);
                out.push(code.code());
                put_text(out, text, MAX_ERROR_LEN);
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
            0x70 => {
                let (heartbeat_ms, role) = (r.u32()?, Role::read(&mut r)?);
                let placement = if r.peek().is_some() {
                    let region = read_region(&mut r)?;
                    let flags = r.u8()?;
                    if flags & !PLACED_ROUTING != 0 {
                        return Err(r.malformed("unknown placement flags"));
                    }
                    Some(Placement { region, routing: flags & PLACED_ROUTING != 0 })
                } else {
                    None
                };
                Self::Registered { heartbeat_ms, role, placement }
            }
            0x71 => Self::Ok,
            0x72 => Self::NeedManifest,
            0x73 => {
                let piece_count = read_count(&mut r)?;
                let mut peers = read_peers(&mut r, |r, head| {
                    let bitfield = read_bits(r, piece_count)?;
                    let PeerSummary { node_id, load, addrs, region } = head;
                    Ok(PeerInfo { node_id, load, addrs, bitfield, region })
                })?;
                let hints = read_hints(&mut r)?;
                let n = peers.len();
                read_peer_regions(&mut r, |i, g| peers[i].region = g, n)?;
                Self::LookupReply { piece_count, peers, hints }
            }
            0x79 => {
                let piece_count = read_count(&mut r)?;
                let mut peers = read_peers(&mut r, |_, head| Ok(head))?;
                let hints = read_hints(&mut r)?;
                let n = peers.len();
                read_peer_regions(&mut r, |i, g| peers[i].region = g, n)?;
                Self::CompactLookupReply { piece_count, peers, hints }
            }
            0x74 => {
                let len = r.u32()?;
                if len as usize > manifest::MAX_ENCODED_LEN {
                    return Err(r.malformed("manifest longer than the limit"));
                }
                Self::Manifest { len }
            }
            0x75 => Self::Unknown,
            0x7a => {
                let raw = r.rest();
                if raw.len() > super::MAX_SOURCE_URL_LEN {
                    return Err(r.malformed("source URL too long"));
                }
                let url =
                    String::from_utf8(raw.to_vec()).map_err(|_| r.malformed("url is not utf-8"))?;
                Self::Source { url }
            }
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

/// The peers of a lookup reply: a count (at most [`MAX_LOOKUP_PEERS`]), then per peer its key,
/// load and addresses, and whatever `rest` reads after them (the full form's bitfield).
fn read_peers<T>(
    r: &mut Reader<'_>,
    rest: impl Fn(&mut Reader<'_>, PeerSummary) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let n = r.u8()? as usize;
    if n > MAX_LOOKUP_PEERS {
        return Err(r.malformed("too many peers"));
    }
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        let node_id = read_node(r)?;
        let load = r.u32()?;
        let head = PeerSummary { node_id, load, addrs: read_addrs(r)?, region: None };
        peers.push(rest(r, head)?);
    }
    Ok(peers)
}
