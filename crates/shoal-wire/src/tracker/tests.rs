//! Property tests for the tracker protocol codecs.
use proptest::prelude::*;

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::codec::Decoder;
use crate::encode;
use crate::testutil::{node_id, roundtrip};
use shoal_core::manifest;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)),
    ]
}

fn bitfield(len: u32) -> impl Strategy<Value = Bitfield> {
    proptest::collection::vec(any::<bool>(), len as usize).prop_map(move |bits| {
        let mut b = Bitfield::new(len);
        for (i, on) in bits.into_iter().enumerate() {
            if on {
                b.set(PieceIndex(i as u32));
            }
        }
        b
    })
}

fn request() -> impl Strategy<Value = TrackerRequest> {
    let cid = any::<[u8; 32]>().prop_map(ContentId);
    prop_oneof![
        (any::<u16>(), any::<bool>(), proptest::collection::vec(addr(), 0..=MAX_ADDRS)).prop_map(
            |(version, storage, addrs)| TrackerRequest::Register {
                node_id: node_id(),
                version,
                role: if storage { Role::Storage } else { Role::Node },
                addrs
            }
        ),
        (cid.clone(), (0u32..300).prop_flat_map(bitfield)).prop_map(|(content, bitfield)| {
            TrackerRequest::Announce { node_id: node_id(), content, bitfield }
        }),
        (cid.clone(), proptest::collection::vec(any::<u32>(), 0..50)).prop_map(|(content, p)| {
            TrackerRequest::AnnounceDelta {
                node_id: node_id(),
                content,
                pieces: p.into_iter().map(PieceIndex).collect(),
            }
        }),
        (cid.clone(), 0..=manifest::MAX_ENCODED_LEN as u32).prop_map(|(content, len)| {
            TrackerRequest::PutManifest { node_id: node_id(), content, len }
        }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(a, u, d)| {
            TrackerRequest::Heartbeat {
                node_id: node_id(),
                load: Load { active_uploads: a, upload_rate: u, download_rate: d },
            }
        }),
        (cid.clone(), any::<u8>(), proptest::option::of((0u32..300).prop_flat_map(bitfield)))
            .prop_map(|(content, max_peers, have)| TrackerRequest::Lookup {
                content,
                max_peers,
                have
            }),
        cid.clone().prop_map(|content| TrackerRequest::GetManifest { content }),
        Just(TrackerRequest::FindStorage),
        cid.clone().prop_map(|content| TrackerRequest::Report { content, peer: node_id() }),
    ]
}

fn response() -> impl Strategy<Value = TrackerResponse> {
    let peer = |n: u32| {
        (any::<u32>(), proptest::collection::vec(addr(), 0..3), bitfield(n)).prop_map(
            |(load, addrs, bitfield)| PeerInfo { node_id: node_id(), load, addrs, bitfield },
        )
    };
    prop_oneof![
        (any::<u32>(), any::<bool>()).prop_map(|(heartbeat_ms, storage)| {
            TrackerResponse::Registered {
                heartbeat_ms,
                role: if storage { Role::Storage } else { Role::Node },
            }
        }),
        Just(TrackerResponse::Ok),
        Just(TrackerResponse::NeedManifest),
        (0u32..200)
            .prop_flat_map(move |n| (
                Just(n),
                proptest::collection::vec(peer(n), 0..5),
                proptest::collection::vec(any::<u32>(), 0..20)
            ))
            .prop_map(|(piece_count, peers, hints)| TrackerResponse::LookupReply {
                piece_count,
                peers,
                hints: hints.into_iter().map(PieceIndex).collect()
            }),
        (0..=manifest::MAX_ENCODED_LEN as u32).prop_map(|len| TrackerResponse::Manifest { len }),
        Just(TrackerResponse::Unknown),
        ((1u8..=255), "[ -~]{0,200}")
            .prop_map(|(c, text)| TrackerResponse::Error { code: ErrorCode::from_code(c), text }),
        proptest::collection::vec(proptest::collection::vec(addr(), 0..3), 0..4).prop_map(|a| {
            TrackerResponse::StorageNodes {
                nodes: a
                    .into_iter()
                    .map(|addrs| StorageNode { node_id: node_id(), addrs })
                    .collect(),
            }
        }),
        (
            proptest::collection::vec(any::<[u8; 32]>(), 0..5),
            proptest::collection::vec(
                (any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..200)),
                0..4
            )
        )
            .prop_map(|(stored, ds)| TrackerResponse::HeartbeatReply {
                stored: stored.into_iter().map(ContentId).collect(),
                directives: ds
                    .into_iter()
                    .map(|(c, token)| Directive {
                        content: ContentId(c),
                        storage: StorageNode { node_id: node_id(), addrs: vec![] },
                        token
                    })
                    .collect(),
            }),
    ]
}

proptest! {
    #[test]
    fn request_roundtrip(r in request()) { roundtrip(&r, MAX_TRACKER_FRAME_LEN)?; }

    #[test]
    fn response_roundtrip(r in response()) { roundtrip(&r, MAX_TRACKER_FRAME_LEN)?; }

    #[test]
    fn token_roundtrip(c in any::<[u8; 32]>(), exp in any::<u64>(), pieces in proptest::collection::vec(any::<u32>(), 0..50), sig in any::<[u8; 32]>()) {
        let t = ReseedToken {
            content: ContentId(c),
            storage: node_id(),
            holder: node_id(),
            expires_ms: exp,
            pieces: pieces.into_iter().map(PieceIndex).collect(),
            signature: [sig, sig].concat(),
        };
        prop_assert_eq!(ReseedToken::decode(&t.encode()).unwrap(), t.clone());
        prop_assert!(ReseedToken::decode(&t.encode()[1..]).is_err());
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
        d.feed(&bytes);
        let _ = d.decode::<TrackerRequest>();
        let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
        d.feed(&bytes);
        let _ = d.decode::<TrackerResponse>();
    }
}

#[test]
fn new_error_codes_keep_their_numbers() {
    // Version 2 codes: older nodes see them as Other(5) / Other(6).
    for (code, n) in [(ErrorCode::RateLimited, 5), (ErrorCode::OverLimit, 6)] {
        assert_eq!(code.code(), n);
        assert_eq!(ErrorCode::from_code(n), code);
    }
    assert_eq!(TRACKER_ALPN, b"shoal/tracker/2");
}

#[test]
fn registered_without_a_role_byte_or_an_unknown_role_is_malformed() {
    // 0x70 with only the heartbeat interval is a version 1 reply.
    let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    let mut v1 = encode(&TrackerResponse::Registered { heartbeat_ms: 7, role: Role::Node });
    v1.pop();
    let len = (v1.len() - 4) as u32;
    v1[..4].copy_from_slice(&len.to_be_bytes());
    d.feed(&v1);
    assert!(d.decode::<TrackerResponse>().is_err());
    let mut bad = encode(&TrackerResponse::Registered { heartbeat_ms: 7, role: Role::Node });
    *bad.last_mut().unwrap() = 9;
    let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    d.feed(&bad);
    assert!(d.decode::<TrackerResponse>().is_err());
}

#[test]
fn the_largest_requests_fit_the_request_limit() {
    let pieces = shoal_core::piece::MAX_PIECES as u32;
    let big = [
        TrackerRequest::AnnounceDelta {
            node_id: node_id(),
            content: ContentId([0; 32]),
            pieces: (0..MAX_DELTA as u32).map(PieceIndex).collect(),
        },
        TrackerRequest::Announce {
            node_id: node_id(),
            content: ContentId([0; 32]),
            bitfield: Bitfield::full(pieces),
        },
        TrackerRequest::Lookup {
            content: ContentId([0; 32]),
            max_peers: 255,
            have: Some(Bitfield::full(pieces)),
        },
    ];
    for r in big {
        assert!(encode(&r).len() <= MAX_TRACKER_REQUEST_LEN, "{} bytes", encode(&r).len());
    }
}
