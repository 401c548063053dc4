//! The messages of the peer protocol and their encodings.
//!
//! | type | frame | body |
//! |---|---|---|
//! | `0x01` | [`Message::Hello`] | version u16, node key 32 bytes, (optional) region text: the region the sender's tracker placed it in (see the tracker protocol) |
//! | `0x02` | [`Message::Subscribe`] | content id |
//! | `0x03` | [`Message::Bitfield`] | content id, piece count u32, bits |
//! | `0x04` | [`Message::Have`] | content id, piece u32 |
//! | `0x05` | [`Message::Reject`] | content id, reason u8, text |
//! | `0x10` | [`Request::Manifest`] | content id |
//! | `0x11` | [`Request::Piece`] | content id, piece u32 |
//! | `0x12` | [`Request::Holding`] | content id |
//! | `0x13` | [`Request::PushManifest`] | content id, len u32, flags u8, [device cert 128]; then `len` raw bytes (≤ the encoded-manifest limit) |
//! | `0x14` | [`Request::PushPiece`] | content id, piece u32, len u32, flags u8, [device cert 128], [token, the rest, ≤ 8 KiB]; then `len` raw bytes |
//! | `0x20` | [`Response::Manifest`] | len u32, then `len` raw bytes follow the frame |
//! | `0x21` | [`Response::Piece`] | len u32, then `len` raw bytes follow the frame |
//! | `0x22` | [`Response::Reject`] | reason u8, text |
//! | `0x23` | [`Response::Holding`] | [piece count u32, bits] |
//! | `0x24` | [`Response::Pushed`] | flags u8: bit 0 already, bit 1 complete |
//!
//! Push flags: bit 0 a [`DeviceCert`] follows (the pusher's node acts for that user; absent,
//! the node's own key is its user), bit 1 a re-seed token follows (push pieces only). Other
//! bits are malformed.

use shoal_core::bitfield::Bitfield;
use shoal_core::piece::{MAX_PIECES, MAX_PIECE_SIZE};
use shoal_core::user::DEVICE_CERT_LEN;
use shoal_core::{manifest, ContentId, DeviceCert, NodeId, PieceIndex};

use crate::codec::{DecodeError, Frame, Reader};

/// The longest reject text, in bytes.
pub const MAX_REASON_LEN: usize = 200;

/// Why a request or subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The node does not hold this content or piece.
    NotFound,
    /// The node's copy changed on disk and is no longer served.
    SourceChanged,
    /// The node is at its upload capacity; try later or elsewhere.
    Busy,
    /// The request broke the protocol.
    BadRequest,
    /// The node failed to read its own data.
    Internal,
    /// A push without the right: not the uploader and no valid tracker token.
    Unauthorized,
    /// Storage cannot write now; retry later with backoff.
    StorageError,
    /// A pushed piece does not match its hash.
    BadPiece,
    /// The pushing user's quota on this storage node cannot hold the content.
    QuotaExceeded,
    /// A reason this version does not know.
    Other(u8),
}

impl RejectReason {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::NotFound => 1,
            Self::SourceChanged => 2,
            Self::Busy => 3,
            Self::BadRequest => 4,
            Self::Internal => 5,
            Self::Unauthorized => 6,
            Self::StorageError => 7,
            Self::BadPiece => 8,
            Self::QuotaExceeded => 9,
            Self::Other(c) => c,
        }
    }

    pub(crate) fn from_code(c: u8) -> Self {
        match c {
            1 => Self::NotFound,
            2 => Self::SourceChanged,
            3 => Self::Busy,
            4 => Self::BadRequest,
            5 => Self::Internal,
            6 => Self::Unauthorized,
            7 => Self::StorageError,
            8 => Self::BadPiece,
            9 => Self::QuotaExceeded,
            c => Self::Other(c),
        }
    }
}

/// A control-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// The first message each way: who I am and which protocol version I speak.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the sender
        version: u16,
        /// the sender's node id; must match the key it proved in the TLS handshake
        node_id: NodeId,
        /// the region the sender's tracker placed it in, as the sender says (used to count
        /// bytes that crossed regions, never to route)
        region: Option<shoal_core::Region>,
    },
    /// Asks for the remote's bitfield of a content and its haves from now on.
    Subscribe {
        /// the content
        content: ContentId,
    },
    /// Which pieces of a content the sender holds.
    Bitfield {
        /// the content
        content: ContentId,
        /// the pieces held
        bitfield: Bitfield,
    },
    /// The sender now holds one more piece.
    Have {
        /// the content
        content: ContentId,
        /// the piece
        piece: PieceIndex,
    },
    /// The sender refuses a subscription.
    Reject {
        /// the content
        content: ContentId,
        /// why
        reason: RejectReason,
        /// a short human-readable explanation
        text: String,
    },
}

/// The first frame on a request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Asks for the manifest of a content.
    Manifest {
        /// the content
        content: ContentId,
    },
    /// Asks for one piece.
    Piece {
        /// the content
        content: ContentId,
        /// the piece
        piece: PieceIndex,
    },
    /// Asks which pieces of a content the node holds (storage answers for its store).
    Holding {
        /// the content
        content: ContentId,
    },
    /// Pushes a manifest into storage, claiming the content for the pushing user; `len` raw
    /// bytes follow.
    PushManifest {
        /// the content
        content: ContentId,
        /// byte count that follows
        len: u32,
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
    },
    /// Pushes a piece into storage; `len` raw bytes follow.
    PushPiece {
        /// the content
        content: ContentId,
        /// the piece
        piece: PieceIndex,
        /// byte count that follows
        len: u32,
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
        /// a tracker-signed re-seed token, unless the user owns the content in storage
        token: Option<Vec<u8>>,
    },
}

/// The header frame answering a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// The manifest follows as `len` raw bytes.
    Manifest {
        /// byte count that follows
        len: u32,
    },
    /// The piece follows as `len` raw bytes.
    Piece {
        /// byte count that follows
        len: u32,
    },
    /// The request is refused.
    Reject {
        /// why
        reason: RejectReason,
        /// a short human-readable explanation
        text: String,
    },
    /// The pieces held of a content, or `None` if the node does not know it.
    Holding {
        /// the pieces
        bitfield: Option<Bitfield>,
    },
    /// A push was accepted.
    Pushed {
        /// it was stored already; nothing was written
        already: bool,
        /// every piece of the content is now stored
        complete: bool,
    },
}

/// The longest re-seed token carried in a push.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

const FLAG_CERT: u8 = 1;
const FLAG_TOKEN: u8 = 2;

/// Writes the push flags and the certificate and token they announce. A token over
/// [`MAX_TOKEN_LEN`] is left out (the decoder would refuse it).
fn put_push_tail(out: &mut Vec<u8>, cert: Option<&DeviceCert>, token: Option<&[u8]>) {
    let token = token.filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN);
    let flags = (u8::from(cert.is_some()) * FLAG_CERT) | (u8::from(token.is_some()) * FLAG_TOKEN);
    out.push(flags);
    if let Some(c) = cert {
        out.extend_from_slice(&c.encode());
    }
    if let Some(t) = token {
        out.extend_from_slice(t);
    }
}

/// Reads what [`put_push_tail`] wrote; `tokens` says whether a token may follow.
fn read_push_tail(
    r: &mut Reader<'_>,
    tokens: bool,
) -> Result<(Option<DeviceCert>, Option<Vec<u8>>), DecodeError> {
    let flags = r.u8()?;
    let allowed = if tokens { FLAG_CERT | FLAG_TOKEN } else { FLAG_CERT };
    if flags & !allowed != 0 {
        return Err(r.malformed("unknown push flags"));
    }
    let cert = if flags & FLAG_CERT != 0 {
        let raw: [u8; DEVICE_CERT_LEN] = r.array()?;
        Some(DeviceCert::decode(&raw).map_err(|_| r.malformed("malformed device certificate"))?)
    } else {
        None
    };
    let token = if flags & FLAG_TOKEN != 0 {
        let rest = r.rest();
        if rest.is_empty() || rest.len() > MAX_TOKEN_LEN {
            return Err(r.malformed("token empty or too long"));
        }
        Some(rest.to_vec())
    } else {
        None
    };
    Ok((cert, token))
}

pub(crate) fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(crate::codec::truncated(text, MAX_REASON_LEN).as_bytes());
}

pub(crate) fn read_text(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let raw = r.rest();
    if raw.len() > MAX_REASON_LEN {
        return Err(r.malformed("reject text too long"));
    }
    String::from_utf8(raw.to_vec()).map_err(|_| r.malformed("reject text is not utf-8"))
}

impl Frame for Message {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello { version, node_id, region } => {
                out.push(0x01);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(node_id.public_key_bytes());
                if region.is_some() {
                    crate::tracker::put_region(out, region.as_ref());
                }
            }
            Self::Subscribe { content } => {
                out.push(0x02);
                out.extend_from_slice(content.as_bytes());
            }
            Self::Bitfield { content, bitfield } => {
                out.push(0x03);
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(&bitfield.len().to_be_bytes());
                out.extend_from_slice(bitfield.as_bytes());
            }
            Self::Have { content, piece } => {
                out.push(0x04);
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(&piece.0.to_be_bytes());
            }
            Self::Reject { content, reason, text } => {
                out.push(0x05);
                out.extend_from_slice(content.as_bytes());
                out.push(reason.code());
                put_text(out, text);
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let msg = match ty {
            0x01 => {
                let version = r.u16()?;
                let key = r.array()?;
                let node_id = NodeId::from_public_key_bytes(key)
                    .map_err(|_| r.malformed("node key is not an ed25519 key"))?;
                let region =
                    if r.peek().is_some() { crate::tracker::read_region(&mut r)? } else { None };
                Self::Hello { version, node_id, region }
            }
            0x02 => Self::Subscribe { content: ContentId(r.array()?) },
            0x03 => {
                let content = ContentId(r.array()?);
                let len = r.u32()?;
                if u64::from(len) > MAX_PIECES {
                    return Err(r.malformed("bitfield longer than the largest manifest"));
                }
                let bitfield = Bitfield::from_bytes(len, r.rest())
                    .map_err(|_| r.malformed("bitfield bytes do not match piece count"))?;
                Self::Bitfield { content, bitfield }
            }
            0x04 => Self::Have { content: ContentId(r.array()?), piece: PieceIndex(r.u32()?) },
            0x05 => {
                let content = ContentId(r.array()?);
                let reason = RejectReason::from_code(r.u8()?);
                Self::Reject { content, reason, text: read_text(&mut r)? }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl Frame for Request {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Manifest { content } => {
                out.push(0x10);
                out.extend_from_slice(content.as_bytes());
            }
            Self::Piece { content, piece } => {
                out.push(0x11);
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(&piece.0.to_be_bytes());
            }
            Self::Holding { content } => {
                out.push(0x12);
                out.extend_from_slice(content.as_bytes());
            }
            Self::PushManifest { content, len, cert } => {
                out.push(0x13);
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                put_push_tail(out, cert.as_ref(), None);
            }
            Self::PushPiece { content, piece, len, cert, token } => {
                out.push(0x14);
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(&piece.0.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                put_push_tail(out, cert.as_ref(), token.as_deref());
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let req = match ty {
            0x10 => Self::Manifest { content: ContentId(r.array()?) },
            0x11 => Self::Piece { content: ContentId(r.array()?), piece: PieceIndex(r.u32()?) },
            0x12 => Self::Holding { content: ContentId(r.array()?) },
            0x13 => {
                let content = ContentId(r.array()?);
                let len = r.u32()?;
                if len as usize > manifest::MAX_ENCODED_LEN {
                    return Err(r.malformed("manifest longer than the limit"));
                }
                let (cert, _) = read_push_tail(&mut r, false)?;
                Self::PushManifest { content, len, cert }
            }
            0x14 => {
                let content = ContentId(r.array()?);
                let piece = PieceIndex(r.u32()?);
                let len = r.u32()?;
                if u64::from(len) > MAX_PIECE_SIZE {
                    return Err(r.malformed("piece longer than the largest piece size"));
                }
                let (cert, token) = read_push_tail(&mut r, true)?;
                Self::PushPiece { content, piece, len, cert, token }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Frame for Response {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Manifest { len } => {
                out.push(0x20);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Self::Piece { len } => {
                out.push(0x21);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Self::Reject { reason, text } => {
                out.push(0x22);
                out.push(reason.code());
                put_text(out, text);
            }
            Self::Holding { bitfield } => {
                out.push(0x23);
                if let Some(b) = bitfield {
                    out.extend_from_slice(&b.len().to_be_bytes());
                    out.extend_from_slice(b.as_bytes());
                }
            }
            Self::Pushed { already, complete } => {
                out.push(0x24);
                out.push(u8::from(*already) | (u8::from(*complete) << 1));
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let resp = match ty {
            0x20 => {
                let len = r.u32()?;
                if len as usize > manifest::MAX_ENCODED_LEN {
                    return Err(r.malformed("manifest longer than the limit"));
                }
                Self::Manifest { len }
            }
            0x21 => {
                let len = r.u32()?;
                if u64::from(len) > MAX_PIECE_SIZE {
                    return Err(r.malformed("piece longer than the largest piece size"));
                }
                Self::Piece { len }
            }
            0x22 => {
                let reason = RejectReason::from_code(r.u8()?);
                Self::Reject { reason, text: read_text(&mut r)? }
            }
            0x23 => {
                if r.peek().is_none() {
                    Self::Holding { bitfield: None }
                } else {
                    let len = r.u32()?;
                    if u64::from(len) > MAX_PIECES {
                        return Err(r.malformed("bitfield longer than the largest manifest"));
                    }
                    let bitfield = Bitfield::from_bytes(len, r.rest())
                        .map_err(|_| r.malformed("bitfield bytes do not match piece count"))?;
                    Self::Holding { bitfield: Some(bitfield) }
                }
            }
            0x24 => {
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(r.malformed("unknown push flags"));
                }
                Self::Pushed { already: flags & 1 == 1, complete: flags & 2 == 2 }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{encode, Decoder};
    use crate::testutil::{node_id, roundtrip};

    fn reason() -> impl Strategy<Value = RejectReason> {
        (1u8..=255).prop_map(RejectReason::from_code)
    }

    fn message() -> impl Strategy<Value = Message> {
        let cid = any::<[u8; 32]>().prop_map(ContentId);
        prop_oneof![
            (any::<u16>(), proptest::option::of("[a-z0-9_-]{1,32}")).prop_map(|(version, r)| {
                Message::Hello {
                    version,
                    node_id: node_id(),
                    region: r.map(|r| r.parse().unwrap()),
                }
            }),
            cid.clone().prop_map(|content| Message::Subscribe { content }),
            (cid.clone(), 0u32..5000, any::<u64>()).prop_map(|(content, len, seed)| {
                let mut bitfield = Bitfield::new(len);
                for i in 0..len {
                    if (seed.rotate_left(i % 64) ^ u64::from(i)) & 1 == 1 {
                        bitfield.set(PieceIndex(i));
                    }
                }
                Message::Bitfield { content, bitfield }
            }),
            (cid.clone(), any::<u32>())
                .prop_map(|(content, p)| Message::Have { content, piece: PieceIndex(p) }),
            (cid, reason(), "[ -~]{0,200}").prop_map(|(content, reason, text)| Message::Reject {
                content,
                reason,
                text
            }),
        ]
    }

    /// A certificate with valid keys; the signature is arbitrary (the codec does not check it).
    fn cert() -> impl Strategy<Value = DeviceCert> {
        proptest::collection::vec(any::<u8>(), 64).prop_map(|sig| DeviceCert {
            user: node_id().into(),
            node: node_id(),
            signature: sig.try_into().unwrap(),
        })
    }

    fn request() -> impl Strategy<Value = Request> {
        let cid = any::<[u8; 32]>().prop_map(ContentId);
        prop_oneof![
            cid.clone().prop_map(|content| Request::Manifest { content }),
            (cid.clone(), any::<u32>())
                .prop_map(|(content, p)| Request::Piece { content, piece: PieceIndex(p) }),
            cid.clone().prop_map(|content| Request::Holding { content }),
            (cid.clone(), 0..=manifest::MAX_ENCODED_LEN as u32, proptest::option::of(cert()))
                .prop_map(|(content, len, cert)| Request::PushManifest { content, len, cert }),
            (
                cid,
                any::<u32>(),
                0..=MAX_PIECE_SIZE as u32,
                proptest::option::of(cert()),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=MAX_TOKEN_LEN))
            )
                .prop_map(|(content, p, len, cert, token)| Request::PushPiece {
                    content,
                    piece: PieceIndex(p),
                    len,
                    cert,
                    token
                }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (0..=manifest::MAX_ENCODED_LEN as u32).prop_map(|len| Response::Manifest { len }),
            (0..=MAX_PIECE_SIZE as u32).prop_map(|len| Response::Piece { len }),
            (reason(), "[ -~]{0,200}").prop_map(|(reason, text)| Response::Reject { reason, text }),
            proptest::option::of(0u32..3000)
                .prop_map(|n| Response::Holding { bitfield: n.map(Bitfield::full) }),
            (any::<bool>(), any::<bool>())
                .prop_map(|(already, complete)| Response::Pushed { already, complete }),
        ]
    }

    proptest! {
        #[test]
        fn message_roundtrip(m in message()) { roundtrip(&m, crate::MAX_FRAME_LEN)?; }

        #[test]
        fn request_roundtrip(r in request()) { roundtrip(&r, crate::MAX_FRAME_LEN)?; }

        #[test]
        fn response_roundtrip(r in response()) { roundtrip(&r, crate::MAX_FRAME_LEN)?; }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Decoder::new();
            d.feed(&bytes);
            let _ = d.decode::<Message>();
            let mut d = Decoder::new();
            d.feed(&bytes);
            let _ = d.decode::<Response>();
        }
    }

    #[test]
    fn limits_are_enforced() {
        let mut d = Decoder::new();
        d.feed(&(crate::MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert!(matches!(d.decode::<Message>(), Err(DecodeError::FrameTooLarge { .. })));
        let big = Response::Piece { len: MAX_PIECE_SIZE as u32 + 1 };
        let mut d = Decoder::new();
        d.feed(&encode(&big));
        assert!(matches!(d.decode::<Response>(), Err(DecodeError::Malformed { .. })));
        let mut d = Decoder::new();
        d.feed(&[0, 0, 0, 2, 0x02, 0]);
        assert!(matches!(d.decode::<Message>(), Err(DecodeError::Malformed { .. })));
    }

    /// Decodes a push request body (type byte included), framing it first.
    fn decode_push(body: &[u8]) -> Result<Option<Request>, DecodeError> {
        let mut d = Decoder::new();
        d.feed(&(body.len() as u32).to_be_bytes());
        d.feed(body);
        d.decode::<Request>()
    }

    fn push_head(ty: u8, len: u32) -> Vec<u8> {
        let mut b = vec![ty];
        b.extend_from_slice(&[7; 32]);
        if ty == 0x14 {
            b.extend_from_slice(&0u32.to_be_bytes());
        }
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn push_limits_are_enforced() {
        let malformed =
            |body: &[u8]| matches!(decode_push(body), Err(DecodeError::Malformed { .. }));
        // A manifest body one byte over the encoded-manifest limit.
        let mut b = push_head(0x13, manifest::MAX_ENCODED_LEN as u32 + 1);
        b.push(0);
        assert!(malformed(&b));
        // A piece body one byte over the largest piece.
        let mut b = push_head(0x14, MAX_PIECE_SIZE as u32 + 1);
        b.push(0);
        assert!(malformed(&b));
        // A manifest push may not carry a token, nor unknown flags.
        for flags in [FLAG_TOKEN, 4, 0x80] {
            let mut b = push_head(0x13, 10);
            b.extend_from_slice(&[flags, 1, 2, 3]);
            assert!(malformed(&b), "flags {flags:#x}");
        }
        // A token flag with no token, or a token over the limit.
        let mut b = push_head(0x14, 10);
        b.push(FLAG_TOKEN);
        assert!(malformed(&b));
        b.extend(std::iter::repeat_n(1u8, MAX_TOKEN_LEN + 1));
        assert!(malformed(&b));
        // A certificate flag with a short or invalid certificate.
        let mut b = push_head(0x13, 10);
        b.push(FLAG_CERT);
        b.extend_from_slice(&[0; 20]);
        assert!(malformed(&b));
        let mut b = push_head(0x13, 10);
        b.push(FLAG_CERT);
        // A user key that is not a curve point (found by search: about half of all are not).
        let bad_key = (0u8..=255)
            .map(|i| [i; 32])
            .find(|k| NodeId::from_public_key_bytes(*k).is_err())
            .unwrap();
        b.extend_from_slice(&bad_key);
        b.extend_from_slice(&[0; DEVICE_CERT_LEN - 32]);
        assert!(malformed(&b));
        // No flags byte at all.
        assert!(malformed(&push_head(0x13, 10)));
    }
}
