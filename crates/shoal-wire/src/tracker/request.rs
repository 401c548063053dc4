//! The encoding of [`TrackerRequest`].

use shoal_core::{manifest, ContentId, PieceIndex};

use super::{
    put_addrs, put_region, read_addr, read_addrs, read_bits, read_count, read_node, read_region,
    Load, Role, TrackerRequest, MAX_ADDRS, MAX_DELTA,
};
use crate::codec::{DecodeError, Frame, Reader};

/// Lookup flag: the asker's piece count and bits follow.
const LOOKUP_HAVE: u8 = 0x01;
/// Lookup flag: answer without the holders' bitfields (version 3).
const LOOKUP_COMPACT: u8 = 0x02;
/// Lookup flag: name each peer's region (version 4).
const LOOKUP_REGIONS: u8 = 0x04;

impl Frame for TrackerRequest {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Register { node_id, version, role, addrs, region } => {
                out.push(0x60);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.push(role.code());
                put_addrs(out, addrs);
                if let Some(region) = region {
                    put_region(out, Some(region));
                }
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
            Self::Heartbeat { node_id, load, links } => {
                out.push(0x64);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(&load.active_uploads.to_be_bytes());
                out.extend_from_slice(&load.upload_rate.to_be_bytes());
                out.extend_from_slice(&load.download_rate.to_be_bytes());
                if !links.is_empty() {
                    let links = &links[..links.len().min(MAX_ADDRS)];
                    out.push(links.len() as u8);
                    for &(addr, n) in links {
                        shoal_core::ticket::encode_addr(out, addr);
                        out.extend_from_slice(&n.to_be_bytes());
                    }
                }
            }
            Self::Lookup { content, max_peers, have, compact, regions } => {
                out.push(0x65);
                out.extend_from_slice(content.as_bytes());
                out.push(*max_peers);
                let compact = if *compact { LOOKUP_COMPACT } else { 0 }
                    | if *regions { LOOKUP_REGIONS } else { 0 };
                match have {
                    Some(b) => {
                        out.push(LOOKUP_HAVE | compact);
                        out.extend_from_slice(&b.len().to_be_bytes());
                        out.extend_from_slice(b.as_bytes());
                    }
                    None => out.push(compact),
                }
            }
            Self::GetManifest { content } => {
                out.push(0x66);
                out.extend_from_slice(content.as_bytes());
            }
            Self::FindStorage => out.push(0x67),
            Self::Report { content, peer } => {
                out.push(0x68);
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(peer.public_key_bytes());
            }
            Self::Forget { node_id, content } => {
                out.push(0x6a);
                out.extend_from_slice(node_id.public_key_bytes());
                out.extend_from_slice(content.as_bytes());
            }
            Self::ResolveSource { id } => {
                out.push(0x69);
                super::put_text(out, id, super::MAX_SOURCE_ID_LEN);
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let req = match ty {
            0x60 => {
                let node_id = read_node(&mut r)?;
                let version = r.u16()?;
                let role = Role::read(&mut r)?;
                let addrs = read_addrs(&mut r)?;
                // Version 4 may state a region; older nodes end here.
                let region = if r.peek().is_some() { read_region(&mut r)? } else { None };
                Self::Register { node_id, version, role, addrs, region }
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
                let mut links = Vec::new();
                if r.peek().is_some() {
                    let n = r.u8()? as usize;
                    if n > MAX_ADDRS {
                        return Err(r.malformed("too many links"));
                    }
                    for _ in 0..n {
                        let addr = read_addr(&mut r)?;
                        links.push((addr, r.u32()?));
                    }
                }
                Self::Heartbeat { node_id, load, links }
            }
            0x65 => {
                let content = ContentId(r.array()?);
                let max_peers = r.u8()?;
                let flags = r.u8()?;
                if flags & !(LOOKUP_HAVE | LOOKUP_COMPACT | LOOKUP_REGIONS) != 0 {
                    return Err(r.malformed("unknown lookup flags"));
                }
                let have = if flags & LOOKUP_HAVE != 0 {
                    let len = read_count(&mut r)?;
                    Some(read_bits(&mut r, len)?)
                } else {
                    None
                };
                Self::Lookup {
                    content,
                    max_peers,
                    have,
                    compact: flags & LOOKUP_COMPACT != 0,
                    regions: flags & LOOKUP_REGIONS != 0,
                }
            }
            0x66 => Self::GetManifest { content: ContentId(r.array()?) },
            0x67 => Self::FindStorage,
            0x68 => Self::Report { content: ContentId(r.array()?), peer: read_node(&mut r)? },
            0x6a => {
                let node_id = read_node(&mut r)?;
                Self::Forget { node_id, content: ContentId(r.array()?) }
            }
            0x69 => {
                let raw = r.rest();
                if raw.is_empty() || raw.len() > super::MAX_SOURCE_ID_LEN {
                    return Err(r.malformed("source id empty or too long"));
                }
                let id = String::from_utf8(raw.to_vec())
                    .map_err(|_| r.malformed("source id is not utf-8"))?;
                Self::ResolveSource { id }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(req)
    }
}
