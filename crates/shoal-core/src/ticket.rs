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
//! | `0x04` | the tracker's 32-byte ed25519 node key: the tracker must prove it (pinned) |
//! | `0x05` | another tracker to fail over to, in order: a flags byte (`0x01`: a 32-byte node key follows, pinned), then UTF-8 `host:port` |
//!
//! Tickets written before `0x04` existed decode with no tracker id (the tracker is trusted on
//! first connect); older readers skip `0x04` and keep working. The same holds for `0x05`: a
//! reader that predates it uses the first tracker (`0x03`/`0x04`) alone. New fields are new
//! tags; the version byte changes only for a payload older readers could not skip through.
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
const TAG_TRACKER_ID: u8 = 0x04;
const TAG_MORE_TRACKER: u8 = 0x05;
/// The most trackers a ticket carries (the first and its fallbacks).
pub const MAX_TRACKERS: usize = 8;
/// The most peers a ticket carries.
pub const MAX_PEERS: usize = 16;
/// The longest ticket string accepted: room for the largest ticket this code writes (16
/// pinned IPv6 peers, 8 pinned trackers of the longest addresses: about 4,800 characters).
pub const MAX_TICKET_LEN: usize = 8192;
/// The longest tracker address (`host:port`): what a ticket field holds beside a pinned key.
pub const MAX_TRACKER_ADDR_LEN: usize = 255 - 33;

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

/// A tracker to use: `HOST:PORT`, optionally pinned to the node id it must prove
/// (`NODE_ID@HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackerAddr {
    /// The node id the tracker must prove; `None` trusts the key it presents first.
    pub node_id: Option<NodeId>,
    /// `host:port`, resolved at connect.
    pub addr: String,
}

impl fmt::Display for TrackerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_id {
            Some(id) => write!(f, "{id}@{}", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

/// Error parsing a `--tracker` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad tracker {0:?}: expected HOST:PORT or NODE_ID@HOST:PORT")]
pub struct ParseTrackerError(String);

impl FromStr for TrackerAddr {
    type Err = ParseTrackerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTrackerError(s.to_string());
        let (node_id, addr) = match s.split_once('@') {
            Some((id, addr)) => (Some(id.parse().map_err(|_| err())?), addr),
            None => (None, s),
        };
        // host:port with a numeric port; the host is resolved at connect.
        let (host, port) = addr.rsplit_once(':').ok_or_else(err)?;
        if host.is_empty() || port.parse::<u16>().is_err() || addr.len() > MAX_TRACKER_ADDR_LEN {
            return Err(err());
        }
        Ok(Self { node_id, addr: addr.to_string() })
    }
}

/// Parses a comma-separated list of trackers (`--tracker A,B`), in order, each `HOST:PORT` or
/// `NODE_ID@HOST:PORT`; empty items are ignored; at least one, at most [`MAX_TRACKERS`].
pub fn parse_trackers(s: &str) -> Result<Vec<TrackerAddr>, ParseTrackerError> {
    // One past the most, so that a longer list is refused without parsing all of it.
    let list = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .take(MAX_TRACKERS + 1)
        .map(str::parse)
        .collect::<Result<Vec<TrackerAddr>, _>>()?;
    if list.is_empty() {
        return Err(ParseTrackerError(s.to_string()));
    }
    if list.len() > MAX_TRACKERS {
        return Err(ParseTrackerError(format!("{s} (at most {MAX_TRACKERS} trackers)")));
    }
    Ok(list)
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
    /// The node id that tracker must prove, if the ticket's maker pinned it.
    pub tracker_id: Option<NodeId>,
    /// Further trackers of the same swarm (replicas), tried in order when the first fails; at
    /// most [`MAX_TRACKERS`] - 1.
    pub more_trackers: Vec<TrackerAddr>,
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
        Self {
            content,
            peers: Vec::new(),
            tracker: None,
            tracker_id: None,
            more_trackers: Vec::new(),
        }
    }

    /// Every tracker the ticket names, in the order to try them, each once (a ticket naming
    /// one dead tracker eight times must not cost eight connect timeouts).
    pub fn trackers(&self) -> Vec<TrackerAddr> {
        let first = self.tracker.clone().map(|addr| TrackerAddr { node_id: self.tracker_id, addr });
        let mut list: Vec<TrackerAddr> = Vec::new();
        for t in first.into_iter().chain(self.more_trackers.iter().cloned()) {
            if !list.contains(&t) {
                list.push(t);
            }
        }
        list
    }

    /// Sets the trackers: the first in `tracker`/`tracker_id`, the others (up to
    /// [`MAX_TRACKERS`] in all) in `more_trackers`.
    pub fn with_trackers(mut self, trackers: &[TrackerAddr]) -> Self {
        let mut it = trackers.iter().take(MAX_TRACKERS);
        let first = it.next();
        self.tracker = first.map(|t| t.addr.clone());
        self.tracker_id = first.and_then(|t| t.node_id);
        self.more_trackers = it.cloned().collect();
        self
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
        if let Some(id) = &self.tracker_id {
            out.push(TAG_TRACKER_ID);
            out.push(32);
            out.extend_from_slice(id.public_key_bytes());
        }
        for t in self.more_trackers.iter().take(MAX_TRACKERS - 1) {
            let mut v = Vec::new();
            match t.node_id {
                Some(id) => {
                    v.push(0x01);
                    v.extend_from_slice(id.public_key_bytes());
                }
                None => v.push(0x00),
            }
            // An address the field cannot hold is left out, never cut (a cut one could name
            // another port); parsed ones always fit.
            if v.len() + t.addr.len() > 255 {
                continue;
            }
            v.extend_from_slice(t.addr.as_bytes());
            out.push(TAG_MORE_TRACKER);
            out.push(v.len() as u8);
            out.extend_from_slice(&v);
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
                TAG_TRACKER_ID => {
                    let key: [u8; 32] = v.try_into().map_err(|_| bad.clone())?;
                    t.tracker_id = Some(NodeId::from_public_key_bytes(key).map_err(|_| bad)?);
                }
                TAG_MORE_TRACKER => {
                    let (node_id, addr) = match v.split_first() {
                        Some((0x00, addr)) => (None, addr),
                        Some((0x01, rest)) if rest.len() >= 32 => {
                            let key: [u8; 32] = rest[..32].try_into().expect("32");
                            let id = NodeId::from_public_key_bytes(key).map_err(|_| bad.clone())?;
                            (Some(id), &rest[32..])
                        }
                        _ => return Err(bad),
                    };
                    let addr = std::str::from_utf8(addr).map_err(|_| bad.clone())?;
                    if addr.contains('@') {
                        return Err(bad);
                    }
                    let mut parsed: TrackerAddr = addr.parse().map_err(|_| bad.clone())?;
                    parsed.node_id = node_id;
                    t.more_trackers.push(parsed);
                    if t.more_trackers.len() >= MAX_TRACKERS {
                        return Err(bad);
                    }
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
            tracker_id: Some(id),
            more_trackers: vec![
                TrackerAddr { node_id: Some(id), addr: "replica.example:7000".into() },
                TrackerAddr { node_id: None, addr: "[::1]:7400".into() },
            ],
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

    /// Encodes a payload by hand, the way an older (or newer) shoal would.
    fn raw_ticket(payload: &[u8]) -> String {
        let mut bytes = payload.to_vec();
        bytes.extend_from_slice(&checksum(payload));
        format!("shoal1{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    #[test]
    fn tracker_id_field_is_backward_compatible() {
        let t = sample();
        let id = t.tracker_id.unwrap();
        // A ticket written before the tracker id existed: no 0x04 field.
        let old = Ticket { tracker_id: None, ..t.clone() };
        let parsed: Ticket = old.to_string().parse().unwrap();
        assert_eq!(parsed.tracker_id, None);
        assert_eq!(parsed.tracker, t.tracker);
        // Boundary table for the 0x04 field's length: only 32 bytes of a valid key decode.
        let base = Ticket::new(t.content).payload();
        for (len, ok) in [
            (0usize, false), // empty
            (31, false),     // one short
            (32, true),      // exact
            (33, false),     // one long
        ] {
            let mut p = base.clone();
            p.push(TAG_TRACKER_ID);
            p.push(len as u8);
            let key = id.public_key_bytes();
            p.extend((0..len).map(|i| key.get(i).copied().unwrap_or(0)));
            let r = raw_ticket(&p).parse::<Ticket>();
            assert_eq!(r.is_ok(), ok, "len {len}: {r:?}");
            if ok {
                assert_eq!(r.unwrap().tracker_id, Some(id));
            } else {
                assert_eq!(r, Err(TicketError::Field { tag: TAG_TRACKER_ID }));
            }
        }
        // Unknown tags from a newer shoal are skipped.
        let mut p = base.clone();
        p.extend_from_slice(&[0x7f, 2, 1, 2]);
        assert_eq!(raw_ticket(&p).parse::<Ticket>().unwrap(), Ticket::new(t.content));
    }

    #[test]
    fn tracker_addr_forms() {
        let plain: TrackerAddr = "tracker.example:7400".parse().unwrap();
        assert_eq!(plain, TrackerAddr { node_id: None, addr: "tracker.example:7400".into() });
        let id = sample().tracker_id.unwrap();
        let pinned: TrackerAddr = format!("{id}@127.0.0.1:7400").parse().unwrap();
        assert_eq!(pinned.node_id, Some(id));
        assert_eq!(pinned.to_string().parse::<TrackerAddr>().unwrap(), pinned);
        for bad in ["", "host", "host:", ":7400", "host:99999", "nope@1.2.3.4:5", "@1.2.3.4:5"] {
            assert!(bad.parse::<TrackerAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn more_trackers_are_backward_compatible() {
        let t = sample();
        let id = t.tracker_id.unwrap();
        // An older reader's view: skipping 0x05 leaves the first tracker.
        let s = t.to_string();
        let parsed: Ticket = s.parse().unwrap();
        assert_eq!(parsed.trackers().len(), 3);
        assert_eq!(
            parsed.trackers()[0],
            TrackerAddr { node_id: Some(id), addr: "tracker.example:7000".into() }
        );
        // A ticket from before 0x05 reads as one tracker.
        let old = Ticket { more_trackers: Vec::new(), ..t.clone() };
        assert_eq!(old.to_string().parse::<Ticket>().unwrap().trackers().len(), 1);
        // Boundary table for the 0x05 field.
        let base = Ticket::new(t.content).payload();
        let key = id.public_key_bytes();
        let with_key = |addr: &[u8]| [&[0x01][..], key, addr].concat();
        for (value, ok) in [
            (vec![], false),                                      // no flags byte
            ([&[0x00][..], b"h:1"].concat(), true),               // no key
            ([&[0x00][..], b"h"].concat(), false),                // no port
            ([&[0x02][..], b"h:1"].concat(), false),              // unknown flags
            (with_key(b"h:1"), true),                             // pinned
            (with_key(b""), false),                               // pinned, no address
            ([&[0x01][..], &key[..31]].concat(), false),          // key one short
            ([&[0x00][..], b"id@h:1"].concat(), false),           // an id inside the address
            ([&[0x00][..], &[0xff, b':', b'1']].concat(), false), // not UTF-8
        ] {
            let mut p = base.clone();
            p.push(TAG_MORE_TRACKER);
            p.push(value.len() as u8);
            p.extend_from_slice(&value);
            let r = raw_ticket(&p).parse::<Ticket>();
            assert_eq!(r.is_ok(), ok, "{value:?}: {r:?}");
            if !ok {
                assert_eq!(r, Err(TicketError::Field { tag: TAG_MORE_TRACKER }));
            }
        }
        // At most MAX_TRACKERS in all: the first and MAX_TRACKERS - 1 more.
        let many: Vec<TrackerAddr> =
            (0..MAX_TRACKERS + 2).map(|i| format!("t{i}:1").parse().unwrap()).collect();
        let t = Ticket::new(t.content).with_trackers(&many);
        assert_eq!(t.to_string().parse::<Ticket>().unwrap().trackers(), many[..MAX_TRACKERS]);
        let mut p = Ticket::new(t.content).payload();
        for _ in 0..MAX_TRACKERS {
            p.extend_from_slice(&[TAG_MORE_TRACKER, 4, 0x00, b'h', b':', b'1']);
        }
        assert_eq!(
            raw_ticket(&p).parse::<Ticket>(),
            Err(TicketError::Field { tag: TAG_MORE_TRACKER })
        );
    }

    #[test]
    fn the_largest_ticket_reads_back_and_no_address_is_cut() {
        let kp = libp2p_identity::Keypair::generate_ed25519();
        let id = NodeId::from_public_key(&kp.public()).unwrap();
        let host = |c: char| format!("{}:65535", c.to_string().repeat(MAX_TRACKER_ADDR_LEN - 6));
        let trackers: Vec<TrackerAddr> =
            "abcdefgh".chars().map(|c| TrackerAddr { node_id: Some(id), addr: host(c) }).collect();
        assert!(trackers.iter().all(|t| t.to_string().parse::<TrackerAddr>().is_ok()));
        let peer = PeerAddr {
            node_id: Some(id),
            addr: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().unwrap(),
        };
        let t = Ticket { peers: vec![peer; MAX_PEERS], ..Ticket::new(sample().content) }
            .with_trackers(&trackers);
        let text = t.to_string();
        assert!(text.len() <= MAX_TICKET_LEN, "{}", text.len());
        assert_eq!(text.parse::<Ticket>().unwrap(), t);
        // One character more does not parse as a tracker; one built by code is left out of the
        // ticket rather than cut (a cut address could name another port).
        assert!(format!("{id}@{}0", host('x')).parse::<TrackerAddr>().is_err());
        let long = TrackerAddr { node_id: Some(id), addr: format!("{}0", host('x')) };
        let t2 = Ticket::new(sample().content).with_trackers(&[trackers[0].clone(), long]);
        assert_eq!(t2.to_string().parse::<Ticket>().unwrap().trackers(), vec![trackers[0].clone()]);
    }

    #[test]
    fn a_tracker_named_twice_is_tried_once() {
        let a = TrackerAddr { node_id: None, addr: "a:1".into() };
        let b = TrackerAddr { node_id: None, addr: "b:2".into() };
        let t = Ticket::new(sample().content).with_trackers(&[
            a.clone(),
            a.clone(),
            b.clone(),
            a.clone(),
        ]);
        assert_eq!(t.to_string().parse::<Ticket>().unwrap().trackers(), vec![a, b]);
    }

    #[test]
    fn tracker_lists() {
        let id = sample().tracker_id.unwrap();
        let list = parse_trackers(&format!("a:1, {id}@b:2,,")).unwrap();
        assert_eq!(
            list,
            vec![
                TrackerAddr { node_id: None, addr: "a:1".into() },
                TrackerAddr { node_id: Some(id), addr: "b:2".into() },
            ]
        );
        assert!(parse_trackers("a:1,b").is_err());
        assert!(parse_trackers(&["a:1"; MAX_TRACKERS + 1].join(",")).is_err());
        assert!(parse_trackers("").is_err());
        assert!(parse_trackers(" , ").is_err());
    }

    proptest! {
        #[test]
        fn roundtrip_any(cid in any::<[u8; 32]>(), ports in proptest::collection::vec(any::<(u32, u16)>(), 0..8),
                         tracker in proptest::option::of("[a-z0-9.:]{1,40}"), pinned in any::<bool>(),
                         more in proptest::collection::vec(("[a-z0-9.-]{1,40}", any::<u16>(), any::<bool>()), 0..MAX_TRACKERS)) {
            let id = || {
                let kp = libp2p_identity::Keypair::generate_ed25519();
                NodeId::from_public_key(&kp.public()).unwrap()
            };
            let t = Ticket {
                content: ContentId(cid),
                peers: ports.iter().map(|&(ip, port)| PeerAddr { node_id: None, addr: SocketAddr::new(Ipv4Addr::from(ip).into(), port) }).collect(),
                tracker,
                tracker_id: pinned.then(id),
                more_trackers: more.iter().map(|(host, port, pin)| TrackerAddr {
                    node_id: pin.then(id),
                    addr: format!("{host}:{port}"),
                }).collect(),
            };
            prop_assert_eq!(t.to_string().parse::<Ticket>().unwrap(), t);
        }

        #[test]
        fn parse_never_panics(s in "shoal1[a-z2-7]{0,120}") {
            let _ = s.parse::<Ticket>();
        }
    }
}
