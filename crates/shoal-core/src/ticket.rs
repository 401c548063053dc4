//! Tickets: the printable string people share to fetch a content.
//!
//! A ticket is `shoal1` followed by the base32 (RFC 4648, no padding, case-insensitive)
//! encoding of a payload and a 4-byte checksum, the first bytes of
//! `BLAKE3("shoal ticket" || payload)`, so a truncated or mistyped copy is detected.
//!
//! Payload, version 1: the version byte `0x01`, the 32-byte content id, then fields, each a
//! tag byte, a length byte and that many bytes. Readers skip tags they do not know, so fields
//! can be added without a new version:
//!
//! | tag | field |
//! |---|---|
//! | `0x01` | peer: 32-byte ed25519 node key, then an address |
//! | `0x02` | peer address without a node id (its key is learned at connect) |
//! | `0x03` | tracker address, as UTF-8 `host:port` |
//!
//! An address is `0x04` + 4 bytes + port, or `0x06` + 16 bytes + port (big-endian).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::{ContentId, NodeId};

const PREFIX: &str = "shoal1";
const VERSION: u8 = 0x01;
const CHECKSUM_LEN: usize = 4;
const TAG_PEER: u8 = 0x01;
const TAG_ADDR: u8 = 0x02;
const TAG_TRACKER: u8 = 0x03;
/// The most peers a ticket carries.
pub const MAX_PEERS: usize = 16;
/// The longest ticket string accepted.
pub const MAX_TICKET_LEN: usize = 4096;

/// A peer to contact: an address and, if known, the node id expected there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The node id the peer must prove; `None` accepts whatever key it presents.
    pub node_id: Option<NodeId>,
    /// The peer's UDP address.
    pub addr: SocketAddr,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_id {
            Some(id) => write!(f, "{id}@{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Error parsing a `--peer` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad peer {0:?}: expected IP:PORT or NODE_ID@IP:PORT")]
pub struct ParsePeerError(String);

impl FromStr for PeerAddr {
    type Err = ParsePeerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerError(s.to_string());
        let (node_id, addr) = match s.split_once('@') {
            Some((id, addr)) => (Some(id.parse().map_err(|_| err())?), addr),
            None => (None, s),
        };
        Ok(Self { node_id, addr: addr.parse().map_err(|_| err())? })
    }
}

/// What a ticket carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The content to fetch.
    pub content: ContentId,
    /// Peers known to hold it.
    pub peers: Vec<PeerAddr>,
    /// A tracker that knows the swarm.
    pub tracker: Option<String>,
}

/// Error reading a ticket. Each message says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// It does not start with `shoal1`.
    #[error("not a shoal ticket: it should start with \"shoal1\"")]
    Prefix,
    /// It is longer than any ticket.
    #[error("ticket is {0} characters, longer than any shoal ticket")]
    TooLong(usize),
    /// It contains characters outside base32.
    #[error("ticket has a character that cannot be in a ticket (was it copied whole?)")]
    Encoding,
    /// The checksum does not match: truncated or mistyped.
    #[error("bad checksum (was it copied whole?)")]
    Checksum,
    /// Too short to hold a content id.
    #[error("ticket is truncated (was it copied whole?)")]
    Truncated,
    /// Written by a newer Shoal.
    #[error("ticket version {0} is not supported: upgrade shoal")]
    Version(u8),
    /// A field is malformed.
    #[error("ticket field {tag:#04x} is malformed")]
    Field {
        /// the field's tag
        tag: u8,
    },
}

impl Ticket {
    /// A ticket for `content` with no hints.
    pub fn new(content: ContentId) -> Self {
        Self { content, peers: Vec::new(), tracker: None }
    }

    fn payload(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(self.content.as_bytes());
        for p in self.peers.iter().take(MAX_PEERS) {
            let mut v = Vec::new();
            let tag = match p.node_id {
                Some(id) => {
                    v.extend_from_slice(id.public_key_bytes());
                    TAG_PEER
                }
                None => TAG_ADDR,
            };
            encode_addr(&mut v, p.addr);
            out.push(tag);
            out.push(v.len() as u8);
            out.extend_from_slice(&v);
        }
        if let Some(t) = &self.tracker {
            let t = &t.as_bytes()[..t.len().min(255)];
            out.push(TAG_TRACKER);
            out.push(t.len() as u8);
            out.extend_from_slice(t);
        }
        out
    }

    fn decode_payload(p: &[u8]) -> Result<Self, TicketError> {
        if p.len() < 33 {
            return Err(TicketError::Truncated);
        }
        if p[0] != VERSION {
            return Err(TicketError::Version(p[0]));
        }
        let content = ContentId(p[1..33].try_into().expect("32 bytes"));
        let mut t = Ticket::new(content);
        let mut rest = &p[33..];
        while !rest.is_empty() {
            let (tag, len) = match rest {
                [tag, len, ..] => (*tag, *len as usize),
                _ => return Err(TicketError::Field { tag: rest[0] }),
            };
            let v = rest.get(2..2 + len).ok_or(TicketError::Field { tag })?;
            rest = &rest[2 + len..];
            let bad = TicketError::Field { tag };
            match tag {
                TAG_PEER => {
                    let key: [u8; 32] = v.get(..32).ok_or(bad.clone())?.try_into().expect("32");
                    let node_id = NodeId::from_public_key_bytes(key).map_err(|_| bad.clone())?;
                    let addr = decode_addr(&v[32..]).ok_or(bad)?;
                    t.peers.push(PeerAddr { node_id: Some(node_id), addr });
                }
                TAG_ADDR => {
                    t.peers.push(PeerAddr { node_id: None, addr: decode_addr(v).ok_or(bad)? })
                }
                TAG_TRACKER => {
                    t.tracker = Some(String::from_utf8(v.to_vec()).map_err(|_| bad)?);
                }
                _ => {} // a field from a newer shoal: skip it
            }
            if t.peers.len() > MAX_PEERS {
                return Err(TicketError::Field { tag });
            }
        }
        Ok(t)
    }
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(b"shoal ticket");
    h.update(payload);
    h.finalize().as_bytes()[..CHECKSUM_LEN].try_into().expect("4 bytes")
}

/// Appends the wire form of a socket address: `0x04` + 4 bytes + port, or `0x06` + 16 bytes
/// + port (big-endian). Tickets and the tracker protocol share it.
pub fn encode_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The encoded length of an address whose first byte is `family`, if it is a known family.
pub fn encoded_addr_len(family: u8) -> Option<usize> {
    match family {
        4 => Some(7),
        6 => Some(19),
        _ => None,
    }
}

/// Decodes exactly one address written by [`encode_addr`].
pub fn decode_addr(v: &[u8]) -> Option<SocketAddr> {
    let (ip, port): (IpAddr, &[u8]) = match v {
        [4, rest @ ..] if rest.len() == 6 => {
            (Ipv4Addr::from(<[u8; 4]>::try_from(&rest[..4]).ok()?).into(), &rest[4..])
        }
        [6, rest @ ..] if rest.len() == 18 => {
            (Ipv6Addr::from(<[u8; 16]>::try_from(&rest[..16]).ok()?).into(), &rest[16..])
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = self.payload();
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        let body = data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase();
        write!(f, "{PREFIX}{body}")
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong(s.len()));
        }
        let lower = s.to_ascii_lowercase();
        let body = lower.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let upper = body.to_ascii_uppercase();
        let bytes =
            data_encoding::BASE32_NOPAD.decode(upper.as_bytes()).map_err(|e| match e.kind {
                data_encoding::DecodeKind::Length | data_encoding::DecodeKind::Trailing => {
                    TicketError::Checksum
                }
                _ => TicketError::Encoding,
            })?;
        if bytes.len() < CHECKSUM_LEN + 33 {
            // Too short to carry a checksum over a content id: check what is there so that a
            // truncated copy says so.
            return Err(TicketError::Truncated);
        }
        let (payload, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(payload) != sum {
            return Err(TicketError::Checksum);
        }
        Self::decode_payload(payload)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Ticket {
        let kp = libp2p_identity::Keypair::generate_ed25519();
        let id = NodeId::from_public_key(&kp.public()).unwrap();
        Ticket {
            content: ContentId::from(blake3::hash(b"c")),
            peers: vec![
                PeerAddr { node_id: Some(id), addr: "127.0.0.1:4000".parse().unwrap() },
                PeerAddr { node_id: None, addr: "[::1]:5".parse().unwrap() },
            ],
            tracker: Some("tracker.example:7000".into()),
        }
    }

    #[test]
    fn roundtrip_and_case_insensitive() {
        let t = sample();
        let s = t.to_string();
        assert!(s.starts_with("shoal1"));
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        assert_eq!(s.to_ascii_uppercase().parse::<Ticket>().unwrap(), t);
    }

    #[test]
    fn detects_truncation_and_typos() {
        let s = sample().to_string();
        for cut in [1, 2, 5, 20, s.len() - 7] {
            assert!(s[..s.len() - cut].parse::<Ticket>().is_err(), "cut {cut}");
        }
        let mut typo = s.clone().into_bytes();
        let i = s.len() / 2;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(String::from_utf8(typo).unwrap().parse::<Ticket>(), Err(TicketError::Checksum));
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::Prefix));
        assert_eq!("shoal1!!!!".parse::<Ticket>(), Err(TicketError::Encoding));
    }

    #[test]
    fn peer_addr_forms() {
        let p: PeerAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(p.node_id, None);
        let t = sample();
        let with_id = t.peers[0].to_string();
        assert_eq!(with_id.parse::<PeerAddr>().unwrap(), t.peers[0]);
        assert!("nope@1.2.3.4:5".parse::<PeerAddr>().is_err());
        assert!("1.2.3.4".parse::<PeerAddr>().is_err());
    }

    proptest! {
        #[test]
        fn roundtrip_any(cid in any::<[u8; 32]>(), ports in proptest::collection::vec(any::<(u32, u16)>(), 0..8),
                         tracker in proptest::option::of("[a-z0-9.:]{1,40}")) {
            let t = Ticket {
                content: ContentId(cid),
                peers: ports.iter().map(|&(ip, port)| PeerAddr { node_id: None, addr: SocketAddr::new(Ipv4Addr::from(ip).into(), port) }).collect(),
                tracker,
            };
            prop_assert_eq!(t.to_string().parse::<Ticket>().unwrap(), t);
        }

        #[test]
        fn parse_never_panics(s in "shoal1[a-z2-7]{0,120}") {
            let _ = s.parse::<Ticket>();
        }
    }
}
