//! Property tests for the tracker protocol codecs.
use proptest::prelude::*;

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::codec::{Decoder, Frame};
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

fn region() -> impl Strategy<Value = Option<Region>> {
    proptest::option::of("[a-z0-9_-]{1,32}".prop_map(|s| s.parse::<Region>().unwrap()))
}

fn request() -> impl Strategy<Value = TrackerRequest> {
    let cid = any::<[u8; 32]>().prop_map(ContentId);
    prop_oneof![
        (any::<u16>(), any::<bool>(), proptest::collection::vec(addr(), 0..=MAX_ADDRS), region())
            .prop_map(|(version, storage, addrs, region)| TrackerRequest::Register {
                node_id: node_id(),
                version,
                role: if storage { Role::Storage } else { Role::Node },
                addrs,
                region,
            }),
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
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((addr(), any::<u32>()), 0..=MAX_ADDRS)
        )
            .prop_map(|(a, u, d, links)| TrackerRequest::Heartbeat {
                node_id: node_id(),
                load: Load { active_uploads: a, upload_rate: u, download_rate: d },
                links,
            }),
        (
            cid.clone(),
            any::<u8>(),
            proptest::option::of((0u32..300).prop_flat_map(bitfield)),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(content, max_peers, have, compact, regions)| {
                TrackerRequest::Lookup { content, max_peers, have, compact, regions }
            }),
        cid.clone().prop_map(|content| TrackerRequest::GetManifest { content }),
        Just(TrackerRequest::FindStorage),
        cid.clone().prop_map(|content| TrackerRequest::Report { content, peer: node_id() }),
        "\\PC{1,60}".prop_map(|id| TrackerRequest::ResolveSource { id }),
        cid.clone().prop_map(|content| TrackerRequest::Forget { node_id: node_id(), content }),
    ]
}

fn response() -> impl Strategy<Value = TrackerResponse> {
    let peer = |n: u32| {
        (any::<u32>(), proptest::collection::vec(addr(), 0..3), bitfield(n), region()).prop_map(
            |(load, addrs, bitfield, region)| PeerInfo {
                node_id: node_id(),
                load,
                addrs,
                bitfield,
                region,
            },
        )
    };
    prop_oneof![
        (any::<u32>(), any::<bool>(), proptest::option::of((region(), any::<bool>()))).prop_map(
            |(heartbeat_ms, storage, placed)| TrackerResponse::Registered {
                heartbeat_ms,
                role: if storage { Role::Storage } else { Role::Node },
                placement: placed.map(|(region, routing)| Placement { region, routing }),
            }
        ),
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
        (
            0u32..200,
            proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec(addr(), 0..3), region()),
                0..=MAX_LOOKUP_PEERS
            ),
            proptest::collection::vec(any::<u32>(), 0..20)
        )
            .prop_map(|(piece_count, peers, hints)| TrackerResponse::CompactLookupReply {
                piece_count,
                peers: peers
                    .into_iter()
                    .map(|(load, addrs, region)| PeerSummary {
                        node_id: node_id(),
                        load,
                        addrs,
                        region
                    })
                    .collect(),
                hints: hints.into_iter().map(PieceIndex).collect()
            }),
        (0..=manifest::MAX_ENCODED_LEN as u32).prop_map(|len| TrackerResponse::Manifest { len }),
        Just(TrackerResponse::Unknown),
        "[ -~]{0,2048}".prop_map(|url| TrackerResponse::Source { url }),
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
    fn a_pipelined_stream_decodes_every_request_in_order(
        reqs in proptest::collection::vec(request(), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        // Requests back to back on one stream (compact lookups among them), arriving in two
        // reads split anywhere: each decodes whole, in order, and nothing is left over.
        let mut bytes = Vec::new();
        for r in &reqs {
            crate::encode_into(r, &mut bytes);
        }
        let at = cut.index(bytes.len() + 1);
        let mut d = Decoder::with_limit(MAX_TRACKER_REQUEST_LEN);
        let mut got = Vec::new();
        for part in [&bytes[..at], &bytes[at..]] {
            d.feed(part);
            while let Some(r) = d.decode::<TrackerRequest>().unwrap() {
                got.push(r);
            }
        }
        prop_assert_eq!(got, reqs);
        prop_assert!(d.take_rest().is_empty());
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
    assert_eq!(TRACKER_ALPN_V2, b"shoal/tracker/2");
}

#[test]
fn a_version_2_lookup_decodes_as_a_full_lookup() {
    // A version 2 node sends flag 0 or 1: the same bytes a version 3 full lookup encodes to.
    let content = ContentId([5; 32]);
    let mut have = Bitfield::new(9);
    have.set(PieceIndex(8));
    let v2_none = [&[0x65][..], &content.0, &[7, 0]].concat();
    let v2_have = [&[0x65][..], &content.0, &[7, 1], &9u32.to_be_bytes(), have.as_bytes()].concat();
    for (body, have) in [(v2_none, None), (v2_have, Some(have))] {
        let want =
            TrackerRequest::Lookup { content, max_peers: 7, have, compact: false, regions: false };
        assert_eq!(TrackerRequest::decode_body(body[0], &body[1..]).unwrap(), want);
        assert_eq!(&encode(&want)[4..], &body[..]);
    }
}

#[test]
fn unknown_lookup_flags_are_malformed() {
    // Bits 3 to 7 are not defined: a frame with any of them set is refused, not guessed at.
    for flags in [0x08u8, 0x80, 0xff, 0x0e] {
        let body = [&[0x65][..], &[0; 32], &[7, flags]].concat();
        let r = TrackerRequest::decode_body(body[0], &body[1..]);
        assert!(matches!(r, Err(DecodeError::Malformed { .. })), "flags {flags:#x}: {r:?}");
    }
}

#[test]
fn a_compact_reply_over_the_peer_limit_is_malformed() {
    // MAX_LOOKUP_PEERS + 1 announced peers: refused on the count, before any peer is read.
    let body = [&[0x79][..], &8u32.to_be_bytes(), &[MAX_LOOKUP_PEERS as u8 + 1]].concat();
    let r = TrackerResponse::decode_body(body[0], &body[1..]);
    assert!(matches!(r, Err(DecodeError::Malformed { .. })), "{r:?}");
}

#[test]
fn pipelined_frames_decode_in_order_and_raw_bytes_between_them_are_taken_exactly() {
    // A manifest upload with its 5-byte body, then two lookups, on one stream: the body is
    // taken to its length and the lookups after it decode whole, in order.
    let lookup = TrackerRequest::Lookup {
        content: ContentId([1; 32]),
        max_peers: 8,
        have: None,
        regions: false,
        compact: true,
    };
    let put =
        TrackerRequest::PutManifest { node_id: node_id(), content: ContentId([2; 32]), len: 5 };
    let mut all = Vec::new();
    crate::encode_into(&put, &mut all);
    all.extend_from_slice(b"abcde");
    crate::encode_into(&lookup, &mut all);
    crate::encode_into(&lookup, &mut all);
    let mut d = Decoder::with_limit(MAX_TRACKER_REQUEST_LEN);
    d.feed(&all);
    assert_eq!(d.decode::<TrackerRequest>().unwrap(), Some(put));
    assert_eq!(&d.take(5)[..], b"abcde");
    assert_eq!(d.decode::<TrackerRequest>().unwrap(), Some(lookup.clone()));
    assert_eq!(d.decode::<TrackerRequest>().unwrap(), Some(lookup));
    assert_eq!(d.decode::<TrackerRequest>().unwrap(), None);
    assert!(d.take(10).is_empty(), "nothing left over");
}

#[test]
fn registered_without_a_role_byte_or_an_unknown_role_is_malformed() {
    // 0x70 with only the heartbeat interval is a version 1 reply.
    let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    let mut v1 =
        encode(&TrackerResponse::Registered { heartbeat_ms: 7, role: Role::Node, placement: None });
    v1.pop();
    let len = (v1.len() - 4) as u32;
    v1[..4].copy_from_slice(&len.to_be_bytes());
    d.feed(&v1);
    assert!(d.decode::<TrackerResponse>().is_err());
    let mut bad =
        encode(&TrackerResponse::Registered { heartbeat_ms: 7, role: Role::Node, placement: None });
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
            compact: true,
            regions: true,
        },
    ];
    for r in big {
        assert!(encode(&r).len() <= MAX_TRACKER_REQUEST_LEN, "{} bytes", encode(&r).len());
    }
}

#[test]
fn older_frames_decode_without_regions_and_bad_region_texts_are_malformed() {
    // A version 3 Register (no trailing region) decodes with none.
    let v3 = TrackerRequest::Register {
        node_id: node_id(),
        version: 3,
        role: Role::Node,
        addrs: vec![],
        region: None,
    };
    let body = encode(&v3);
    assert_eq!(TrackerRequest::decode_body(body[4], &body[5..]).unwrap(), v3);
    // A Register whose region text is too long, not a region name, or cut short.
    let good = encode(&TrackerRequest::Register {
        node_id: node_id(),
        version: 4,
        role: Role::Node,
        addrs: vec![],
        region: Some("r0".parse().unwrap()),
    });
    let base = &good[5..good.len() - 3];
    for tail in [&[33u8][..], &[2, b'R', b'0'], &[2, b'r'], &[1, 0xff]] {
        let body = [base, tail].concat();
        let r = TrackerRequest::decode_body(0x60, &body);
        assert!(matches!(r, Err(DecodeError::Malformed { .. })), "{tail:?}: {r:?}");
    }
    // A lookup reply whose regions stop short of its peers is malformed.
    let reply = TrackerResponse::CompactLookupReply {
        piece_count: 8,
        peers: vec![
            PeerSummary { node_id: node_id(), load: 0, addrs: vec![], region: None },
            PeerSummary {
                node_id: node_id(),
                load: 0,
                addrs: vec![],
                region: Some("r1".parse().unwrap()),
            },
        ],
        hints: vec![],
    };
    let full = encode(&reply);
    assert_eq!(TrackerResponse::decode_body(full[4], &full[5..]).unwrap(), reply);
    let cut = &full[5..full.len() - 3];
    let r = TrackerResponse::decode_body(0x79, cut);
    assert!(matches!(r, Err(DecodeError::Malformed { .. })), "{r:?}");
    // Unknown placement flags are refused.
    let mut placed = encode(&TrackerResponse::Registered {
        heartbeat_ms: 1,
        role: Role::Node,
        placement: Some(Placement { region: None, routing: true }),
    });
    *placed.last_mut().unwrap() = 0x80;
    let r = TrackerResponse::decode_body(0x70, &placed[5..]);
    assert!(matches!(r, Err(DecodeError::Malformed { .. })), "{r:?}");
}

#[test]
fn a_heartbeat_with_too_many_links_or_a_cut_link_is_malformed() {
    let hb = |links: Vec<(SocketAddr, u32)>| {
        encode(&TrackerRequest::Heartbeat { node_id: node_id(), load: Load::default(), links })
    };
    let one = hb(vec![("10.0.0.1:7".parse().unwrap(), 3)]);
    let body = &one[5..];
    // Cut inside the link's load.
    let r = TrackerRequest::decode_body(0x64, &body[..body.len() - 2]);
    assert!(matches!(r, Err(DecodeError::Malformed { .. })), "{r:?}");
    // A count past MAX_ADDRS, refused before any link is read.
    let mut over = hb(vec![])[5..].to_vec();
    over.push(MAX_ADDRS as u8 + 1);
    let r = TrackerRequest::decode_body(0x64, &over);
    assert!(matches!(r, Err(DecodeError::Malformed { .. })), "{r:?}");
}
