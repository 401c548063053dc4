use proptest::prelude::*;
use shoal_core::offline::SegmentProof;
use shoal_core::{ContentId, DeviceCert, PieceHash, PieceIndex, TaskId};

use super::*;
use crate::codec::{encode, Decoder};
use crate::testutil::{node_id, roundtrip};
use crate::{Opening, MAX_FRAME_LEN};

fn cert() -> impl Strategy<Value = Option<DeviceCert>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 64).prop_map(|sig| DeviceCert {
        user: node_id().into(),
        node: node_id(),
        signature: sig.try_into().unwrap(),
    }))
}

fn task() -> impl Strategy<Value = TaskId> {
    any::<[u8; 16]>().prop_map(TaskId)
}

fn request() -> impl Strategy<Value = OfflineRequest> {
    prop_oneof![
        (cert(), "[ -~]{0,2048}", "[a-z.]{0,255}")
            .prop_map(|(cert, url, name)| OfflineRequest::Add { cert, url, name }),
        (cert(), task()).prop_map(|(cert, task)| OfflineRequest::Watch { cert, task }),
        cert().prop_map(|cert| OfflineRequest::List { cert }),
        (cert(), task()).prop_map(|(cert, task)| OfflineRequest::Cancel { cert, task }),
        cert().prop_map(|cert| OfflineRequest::Space { cert }),
        (cert(), "\\PC{0,60}").prop_map(|(cert, name)| OfflineRequest::SpaceRemove { cert, name }),
        (
            task(),
            any::<u64>(),
            "[ -~]{0,300}",
            proptest::option::of("[ -~]{0,256}"),
            proptest::option::of("[ -~]{0,64}"),
            0u32..3000,
            any::<u64>()
        )
            .prop_map(|(task, size, url, etag, last_modified, n, seed)| {
                let mut segments = shoal_core::Bitfield::new(n);
                for i in (0..n).filter(|i| (seed >> (i % 64)) & 1 == 1) {
                    segments.set(PieceIndex(i));
                }
                OfflineRequest::Assist { task, size, url, etag, last_modified, segments }
            }),
        (cert(), task(), any::<u32>(), any::<bool>()).prop_map(|(cert, task, p, direct)| {
            OfflineRequest::Piece { cert, task, piece: PieceIndex(p), direct }
        }),
    ]
}

fn event() -> impl Strategy<Value = TaskEvent> {
    prop_oneof![
        any::<u64>().prop_map(|size| TaskEvent::Accepted { size }),
        (task(), any::<u64>(), any::<u32>(), 1..=MAX_PROOF_HASHES, any::<u8>()).prop_map(
            |(task, size, first, n, b)| TaskEvent::Segment(SegmentProof {
                task,
                size,
                first: PieceIndex(first),
                hashes: (0..n).map(|i| PieceHash([b ^ i as u8; 32])).collect(),
                signature: [b; 64],
            })
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(bytes, size)| TaskEvent::Progress { bytes, size }),
        any::<[u8; 32]>().prop_map(|c| TaskEvent::Done { content: ContentId(c) }),
        "[ -~]{0,200}".prop_map(|reason| TaskEvent::Failed { reason }),
        "[ -~]{0,200}".prop_map(|reason| TaskEvent::Restarted { reason }),
    ]
}

fn task_info() -> impl Strategy<Value = TaskInfo> {
    (
        task(),
        0u8..4,
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<[u8; 32]>()),
        "[ -~]{0,300}",
        "\\PC{0,40}",
    )
        .prop_map(|(task, s, bytes, size, content, url, name)| TaskInfo {
            task,
            state: [TaskState::Fetching, TaskState::Done, TaskState::Failed, TaskState::Cancelled]
                [s as usize],
            bytes,
            size,
            content: content.map(ContentId),
            url,
            name,
        })
}

fn entry() -> impl Strategy<Value = SpaceEntry> {
    (
        "\\PC{0,40}",
        proptest::option::of(any::<[u8; 32]>()),
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(name, content, size, permanent, time_ms)| SpaceEntry {
            name,
            content: content.map(ContentId),
            size,
            state: if permanent { EntryState::Permanent } else { EntryState::Temporary },
            time_ms,
        })
}

fn reply() -> impl Strategy<Value = OfflineReply> {
    prop_oneof![
        (task(), any::<bool>())
            .prop_map(|(task, instant)| OfflineReply::Accepted { task, instant }),
        event().prop_map(OfflineReply::Event),
        proptest::collection::vec(task_info(), 0..40).prop_map(OfflineReply::Tasks),
        proptest::collection::vec(entry(), 0..40).prop_map(OfflineReply::Entries),
        Just(OfflineReply::Done),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| OfflineReply::Elsewhere {
            node: node_id(),
            addr: std::net::SocketAddr::from((ip, port)),
        }),
        ((1u8..=255).prop_map(RejectReason::from_code), "[ -~]{0,200}")
            .prop_map(|(reason, text)| OfflineReply::Reject { reason, text }),
    ]
}

proptest! {
    #[test]
    fn request_roundtrip(r in request()) {
        roundtrip(&r, MAX_FRAME_LEN)?;
        // And as the opening of a stream.
        roundtrip(&Opening::Offline(r), MAX_FRAME_LEN)?;
    }

    #[test]
    fn reply_roundtrip(r in reply()) { roundtrip(&r, MAX_REPLY_LEN)?; }

    #[test]
    fn piece_reply_roundtrip(len in any::<u32>(), ip in any::<[u8; 16]>(), port in any::<u16>(), which in 0u8..3) {
        let r = match which {
            0 => PieceReply::Response(crate::Response::Piece { len: len % (64 << 20) }),
            1 => PieceReply::Response(crate::Response::Reject { reason: RejectReason::NotFound, text: "x".into() }),
            _ => PieceReply::Elsewhere { node: node_id(), addr: std::net::SocketAddr::from((ip, port)) },
        };
        roundtrip(&r, MAX_FRAME_LEN)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut d = Decoder::with_limit(MAX_REPLY_LEN);
        d.feed(&bytes);
        let _ = d.decode::<OfflineReply>();
        let mut d = Decoder::new();
        d.feed(&bytes);
        let _ = d.decode::<OfflineRequest>();
    }
}

/// The worst a stranger can put in each bounded field is refused by the decoder.
#[test]
fn oversized_fields_are_malformed() {
    let decode_req = |body: Vec<u8>| {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut d = Decoder::new();
        d.feed(&frame);
        d.decode::<OfflineRequest>()
    };
    // A URL one byte over the limit.
    let mut body = vec![0x30, 0];
    body.extend_from_slice(&((MAX_URL_LEN + 1) as u16).to_be_bytes());
    body.extend(std::iter::repeat_n(b'a', MAX_URL_LEN + 1));
    body.extend_from_slice(&[0, 0]);
    assert!(matches!(decode_req(body), Err(DecodeError::Malformed { .. })));
    // A bad certificate flag.
    assert!(matches!(decode_req(vec![0x32, 7]), Err(DecodeError::Malformed { .. })));
    // A name that is not UTF-8.
    assert!(matches!(decode_req(vec![0x35, 0, 0, 1, 0xff]), Err(DecodeError::Malformed { .. })));
    // Trailing bytes.
    assert!(matches!(decode_req(vec![0x34, 0, 9]), Err(DecodeError::Malformed { .. })));

    let decode_reply = |body: Vec<u8>| {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut d = Decoder::with_limit(MAX_REPLY_LEN);
        d.feed(&frame);
        d.decode::<OfflineReply>()
    };
    // A listing that claims more entries than allowed, before any is read.
    let mut body = vec![0x48];
    body.extend_from_slice(&((MAX_LISTED + 1) as u16).to_be_bytes());
    assert!(matches!(decode_reply(body), Err(DecodeError::Malformed { .. })));
    // A listing that claims entries it does not carry.
    assert!(matches!(decode_reply(vec![0x47, 0, 5]), Err(DecodeError::Malformed { .. })));
    // A proof of zero hashes, and one over the cap.
    let proof = |n: u16| {
        let mut b = vec![0x42];
        b.extend_from_slice(&[0; 16 + 8 + 4]);
        b.extend_from_slice(&n.to_be_bytes());
        b
    };
    assert!(matches!(decode_reply(proof(0)), Err(DecodeError::Malformed { .. })));
    assert!(matches!(
        decode_reply(proof(MAX_PROOF_HASHES as u16 + 1)),
        Err(DecodeError::Malformed { .. })
    ));
}

/// A reply of the most entries allowed, each as long as allowed, fits the reply limit.
#[test]
fn the_largest_listing_fits_the_reply_limit() {
    let t = TaskInfo {
        task: TaskId([1; 16]),
        state: TaskState::Done,
        bytes: u64::MAX,
        size: u64::MAX,
        content: Some(ContentId([2; 32])),
        url: "u".repeat(MAX_URL_LEN),
        name: "n".repeat(255),
    };
    let bytes = encode(&OfflineReply::Tasks(vec![t; MAX_LISTED]));
    assert!(bytes.len() - 4 <= MAX_REPLY_LEN, "{} bytes", bytes.len());
    let mut d = Decoder::with_limit(MAX_REPLY_LEN);
    d.feed(&bytes);
    assert!(
        matches!(d.decode::<OfflineReply>(), Ok(Some(OfflineReply::Tasks(v))) if v.len() == MAX_LISTED)
    );
}
