//! The real `shoal-tracker` binary, spoken to over QUIC with the library codecs: forged
//! requests are refused, malformed ones close only that connection, unknown contents answer
//! "unknown" at once, and state survives `kill -9`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quinn::Connection;
use shoal_core::{Bitfield, ContentId, Manifest, PeerAddr, PieceHash};
use shoal_net::{Endpoint, Identity};
use shoal_wire::tracker::{
    ErrorCode, Role, TrackerRequest, TrackerResponse, MAX_TRACKER_FRAME_LEN, TRACKER_ALPN,
    TRACKER_VERSION,
};
use shoal_wire::{encode, Decoder};

struct Tracker {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, listen: &str) -> Tracker {
    start_with(dir, listen, &[]).0
}

/// Starts the tracker; returns it and its first stdout line.
fn start_with(dir: &Path, listen: &str, extra: &[&str]) -> (Tracker, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-tracker"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "shoal-tracker: node ID listening on ADDR, http off"
    let addr = line.split_whitespace().nth(5).unwrap().trim_end_matches(',').parse().unwrap();
    (Tracker { child, addr }, line)
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn http_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, line) = start_with(dir.path(), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let http = line.trim().rsplit("http://").next().unwrap().to_string();
    assert!(http_get(&http, "/health").contains("200 OK"));
    let node = Identity::generate();
    let (_e, c) = connect(&node, tracker.addr).await;
    call(&c, &register(&node)).await.unwrap();
    call(
        &c,
        &TrackerRequest::Lookup {
            content: ContentId([1; 32]),
            max_peers: 1,
            have: None,
            compact: false,
            regions: false,
        },
    )
    .await
    .unwrap();
    let metrics = http_get(&http, "/metrics");
    for want in [
        "shoal_tracker_nodes 1",
        "shoal_tracker_lookups_total 1",
        "shoal_tracker_announces_per_second",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
}

async fn connect(id: &Identity, addr: SocketAddr) -> (Endpoint, Connection) {
    let ep = Endpoint::bind(id, "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
    let (conn, _) = ep.connect(&PeerAddr { node_id: None, addr }, TRACKER_ALPN).await.unwrap();
    (ep, conn)
}

async fn call(conn: &Connection, req: &TrackerRequest) -> anyhow::Result<TrackerResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode(req)).await?;
    send.finish()?;
    let bytes = recv.read_to_end(MAX_TRACKER_FRAME_LEN + 8).await?;
    let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    d.feed(&bytes);
    Ok(d.decode()?.expect("a whole frame"))
}

/// A manifest of `n` 16 KiB pieces; `seed` makes distinct contents.
fn manifest(n: u32, seed: u8) -> (ContentId, Vec<u8>) {
    let hashes = (0..n).map(|i| PieceHash::of(&[seed, i as u8])).collect();
    let m = Manifest::new("f", u64::from(n) * 16 * 1024, hashes).unwrap();
    (m.content_id(), m.encode())
}

/// A request frame followed by raw bytes.
async fn call_raw(
    conn: &Connection,
    req: &TrackerRequest,
    raw: &[u8],
) -> anyhow::Result<TrackerResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode(req)).await?;
    // The tracker may answer without reading the body (already known, refused).
    let _ = send.write_all(raw).await;
    let _ = send.finish();
    let bytes = recv.read_to_end(MAX_TRACKER_FRAME_LEN + 8).await?;
    let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    d.feed(&bytes);
    Ok(d.decode()?.expect("a whole frame"))
}

async fn put_manifest(conn: &Connection, id: &Identity, content: ContentId, bytes: &[u8]) {
    let req =
        TrackerRequest::PutManifest { node_id: id.node_id(), content, len: bytes.len() as u32 };
    assert_eq!(call_raw(conn, &req, bytes).await.unwrap(), TrackerResponse::Ok);
}

/// A tracker on port 0 and a node registered with it over its own connection.
async fn registered(dir: &Path) -> (Tracker, Identity, Endpoint, Connection) {
    let tracker = start(dir, "127.0.0.1:0");
    let node = Identity::generate();
    let (e, c) = connect(&node, tracker.addr).await;
    call(&c, &register(&node)).await.unwrap();
    (tracker, node, e, c)
}

/// A compact lookup of content `[b; 32]` for four peers.
fn compact_lookup(b: u8) -> TrackerRequest {
    TrackerRequest::Lookup {
        content: ContentId([b; 32]),
        max_peers: 4,
        have: None,
        compact: true,
        regions: false,
    }
}

fn register(id: &Identity) -> TrackerRequest {
    TrackerRequest::Register {
        node_id: id.node_id(),
        version: TRACKER_VERSION,
        role: Role::Node,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
        region: None,
    }
}

#[tokio::test]
async fn forged_and_malformed_requests_are_refused_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = start(dir.path(), "127.0.0.1:0");
    let (honest, mallory) = (Identity::generate(), Identity::generate());
    let (_e1, h) = connect(&honest, tracker.addr).await;
    let (_e2, m) = connect(&mallory, tracker.addr).await;
    assert!(matches!(
        call(&h, &register(&honest)).await.unwrap(),
        TrackerResponse::Registered { .. }
    ));
    assert!(matches!(
        call(&m, &register(&mallory)).await.unwrap(),
        TrackerResponse::Registered { .. }
    ));

    // Mallory announces and heartbeats as the honest node: refused.
    let (content, manifest) = manifest(4, 7);
    let forged = TrackerRequest::Announce {
        node_id: honest.node_id(),
        content,
        bitfield: Bitfield::full(4),
    };
    match call(&m, &forged).await.unwrap() {
        TrackerResponse::Error { code: ErrorCode::Forged, .. } => {}
        other => panic!("forged announce accepted: {other:?}"),
    }
    // Nor may she make the tracker forget what the honest node holds.
    let forget = TrackerRequest::Forget { node_id: honest.node_id(), content };
    match call(&m, &forget).await.unwrap() {
        TrackerResponse::Error { code: ErrorCode::Forged, .. } => {}
        other => panic!("forged forget accepted: {other:?}"),
    }
    let lookup = TrackerRequest::Lookup {
        content,
        max_peers: 8,
        have: None,
        compact: false,
        regions: false,
    };
    assert_eq!(call(&h, &lookup).await.unwrap(), TrackerResponse::Unknown, "nothing was recorded");

    // An unknown content answers "unknown" quickly.
    let t = Instant::now();
    assert_eq!(call(&h, &lookup).await.unwrap(), TrackerResponse::Unknown);
    assert!(t.elapsed() < Duration::from_secs(2));

    // Garbage closes Mallory's connection only.
    let (mut send, mut recv) = m.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let _ = send.finish();
    let _ = recv.read_to_end(1024).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), m.closed()).await;
    assert!(closed.is_ok(), "malformed frame closes that connection");
    // The honest node is still served.
    let real = TrackerRequest::Announce {
        node_id: honest.node_id(),
        content,
        bitfield: Bitfield::full(4),
    };
    assert_eq!(call(&h, &real).await.unwrap(), TrackerResponse::NeedManifest);
    put_manifest(&h, &honest, content, &manifest).await;
    assert_eq!(call(&h, &real).await.unwrap(), TrackerResponse::Ok);
    // A third node finds it (an asker is never handed itself).
    let third = Identity::generate();
    let (_e3, t) = connect(&third, tracker.addr).await;
    match call(&t, &lookup).await.unwrap() {
        TrackerResponse::LookupReply { peers, .. } => {
            assert_eq!(peers[0].node_id, honest.node_id())
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn state_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = start(dir.path(), "127.0.0.1:0");
    let addr = tracker.addr;
    let node = Identity::generate();
    let (_e, c) = connect(&node, addr).await;
    call(&c, &register(&node)).await.unwrap();
    let (content, m) = manifest(1, 1);
    put_manifest(&c, &node, content, &m).await;
    let announce =
        TrackerRequest::Announce { node_id: node.node_id(), content, bitfield: Bitfield::full(1) };
    assert_eq!(call(&c, &announce).await.unwrap(), TrackerResponse::Ok);
    // The tracker flushes its state once a second; kill it after a flush has surely run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(tracker); // SIGKILL
    let tracker = start(dir.path(), &addr.to_string());
    let other = Identity::generate();
    let (_e2, c2) = connect(&other, tracker.addr).await;
    let t = Instant::now();
    match call(
        &c2,
        &TrackerRequest::Lookup {
            content,
            max_peers: 8,
            have: None,
            compact: false,
            regions: false,
        },
    )
    .await
    .unwrap()
    {
        TrackerResponse::LookupReply { peers, .. } => assert_eq!(peers[0].node_id, node.node_id()),
        other => panic!("state lost: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once");
}

#[tokio::test]
async fn storage_is_granted_only_to_admitted_node_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (admitted, claimant) = (Identity::generate(), Identity::generate());
    let id = admitted.node_id().to_string();
    let (tracker, _) = start_with(dir.path(), "127.0.0.1:0", &["--admit-storage", &id]);
    let storage_register = |id: &Identity| TrackerRequest::Register {
        node_id: id.node_id(),
        version: TRACKER_VERSION,
        role: Role::Storage,
        addrs: vec![],
        region: None,
    };
    let (_e1, a) = connect(&admitted, tracker.addr).await;
    let (_e2, c) = connect(&claimant, tracker.addr).await;
    match call(&a, &storage_register(&admitted)).await.unwrap() {
        TrackerResponse::Registered { role: Role::Storage, .. } => {}
        other => panic!("admitted storage refused: {other:?}"),
    }
    match call(&c, &storage_register(&claimant)).await.unwrap() {
        TrackerResponse::Registered { role: Role::Node, .. } => {}
        other => panic!("an unadmitted claim must register as a node: {other:?}"),
    }
    match call(&c, &TrackerRequest::FindStorage).await.unwrap() {
        TrackerResponse::StorageNodes { nodes } => {
            assert_eq!(
                nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
                vec![admitted.node_id()]
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_malformed_admitted_id_is_one_line_of_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-tracker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--admit-storage", "not-a-node-id"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: --admit-storage \"not-a-node-id\""), "{err}");
}

#[tokio::test]
async fn a_registration_burst_from_one_address_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, _) =
        start_with(dir.path(), "127.0.0.1:0", &["--register-burst", "4", "--register-rate", "1"]);
    let mut limited = 0;
    let mut granted = 0;
    let mut keep = Vec::new();
    for _ in 0..12 {
        let id = Identity::generate();
        let (e, c) = connect(&id, tracker.addr).await;
        match call(&c, &register(&id)).await.unwrap() {
            TrackerResponse::Registered { .. } => granted += 1,
            TrackerResponse::Error { code: ErrorCode::RateLimited, text } => {
                assert!(text.contains("slow down"), "{text}");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
        keep.push((e, c));
    }
    // 4 at once plus at most what refilled while the loop ran.
    assert!(limited >= 4, "only {limited} of 12 were limited ({granted} granted)");
}

#[tokio::test]
async fn addresses_are_the_observed_ones_and_manifests_need_a_registered_sender() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = start(dir.path(), "127.0.0.1:0");
    let (node, asker) = (Identity::generate(), Identity::generate());
    let (e, c) = connect(&node, tracker.addr).await;
    let observed = e.local_addr().unwrap();
    let (content, m) = manifest(2, 3);
    // Unregistered: refused before the body is read (the 1 MiB it claims never comes).
    let req = TrackerRequest::PutManifest { node_id: node.node_id(), content, len: 1024 * 1024 };
    match call_raw(&c, &req, &[]).await.unwrap() {
        TrackerResponse::Error { code: ErrorCode::NotRegistered, .. } => {}
        other => panic!("{other:?}"),
    }
    // A third party's address and an unspecified one: only the observed IP survives.
    let req = TrackerRequest::Register {
        node_id: node.node_id(),
        version: TRACKER_VERSION,
        role: Role::Node,
        addrs: vec!["198.51.100.1:80".parse().unwrap(), "0.0.0.0:7777".parse().unwrap()],
        region: None,
    };
    call(&c, &req).await.unwrap();
    put_manifest(&c, &node, content, &m).await;
    let announce =
        TrackerRequest::Announce { node_id: node.node_id(), content, bitfield: Bitfield::full(2) };
    assert_eq!(call(&c, &announce).await.unwrap(), TrackerResponse::Ok);
    let (_e2, a) = connect(&asker, tracker.addr).await;
    match call(
        &a,
        &TrackerRequest::Lookup {
            content,
            max_peers: 8,
            have: None,
            compact: false,
            regions: false,
        },
    )
    .await
    .unwrap()
    {
        TrackerResponse::LookupReply { peers, .. } => {
            let want: Vec<SocketAddr> = vec![observed, "127.0.0.1:7777".parse().unwrap()];
            assert_eq!(peers[0].addrs, want);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn silent_request_streams_are_dropped_at_the_deadline_and_others_then_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, _node, _e, c) = registered(dir.path()).await;
    // Fill every request slot of the connection with a stream that sends half a length prefix
    // and then nothing.
    let mut silent = Vec::new();
    for _ in 0..16 {
        let (mut send, recv) = c.open_bi().await.unwrap();
        send.write_all(&[0, 0]).await.unwrap();
        silent.push((send, recv));
    }
    // The next request waits for a slot, and gets one once the tracker gives up on the silent
    // streams (10 s without a whole request).
    let lookup = TrackerRequest::Lookup {
        content: ContentId([3; 32]),
        max_peers: 1,
        have: None,
        compact: false,
        regions: false,
    };
    assert_eq!(call(&c, &lookup).await.unwrap(), TrackerResponse::Unknown);
    for (send, _) in silent {
        // The tracker stopped reading each silent stream.
        assert!(send.stopped().await.is_ok());
    }
}

#[tokio::test]
async fn a_flood_of_queries_from_one_node_is_rate_limited_and_manifests_are_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = start(dir.path(), "127.0.0.1:0");
    let id = Identity::generate();
    let (_e, c) = connect(&id, tracker.addr).await;
    assert!(matches!(call(&c, &register(&id)).await.unwrap(), TrackerResponse::Registered { .. }));
    let (content, bytes) = manifest(40, 77);
    put_manifest(&c, &id, content, &bytes).await;
    // The manifest comes back byte for byte, after its frame.
    let (mut send, mut recv) = c.open_bi().await.unwrap();
    send.write_all(&encode(&TrackerRequest::GetManifest { content })).await.unwrap();
    send.finish().unwrap();
    let all = recv.read_to_end(MAX_TRACKER_FRAME_LEN + bytes.len()).await.unwrap();
    let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    d.feed(&all);
    let resp: TrackerResponse = d.decode().unwrap().unwrap();
    assert_eq!(resp, TrackerResponse::Manifest { len: bytes.len() as u32 });
    assert_eq!(d.take_rest(), &bytes[..]);
    // Lookups and manifest downloads share a per-node budget (default burst 512, 64/s).
    let (mut served, mut limited) = (0, 0);
    for i in 0..1_000 {
        let req = if i % 2 == 0 {
            TrackerRequest::Lookup {
                content,
                max_peers: 8,
                have: None,
                compact: false,
                regions: false,
            }
        } else {
            TrackerRequest::GetManifest { content }
        };
        match call(&c, &req).await {
            Ok(TrackerResponse::Error { code: ErrorCode::RateLimited, .. }) => limited += 1,
            _ => served += 1,
        }
    }
    assert!(limited > 0, "{served} queries served, none limited");
    assert!(served >= 512, "the burst is served: only {served}");
}

/// Writes `reqs` on one stream, without waiting for answers; `finish` ends the sending side.
async fn pipeline(
    conn: &Connection,
    reqs: &[TrackerRequest],
    finish: bool,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut bytes = Vec::new();
    for r in reqs {
        shoal_wire::encode_into(r, &mut bytes);
    }
    send.write_all(&bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    (send, recv)
}

/// Every answer on a stream until its end.
async fn answers(recv: &mut quinn::RecvStream) -> Vec<TrackerResponse> {
    let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    let mut all = Vec::new();
    while let Some(a) = shoal_net::framed::read_frame(recv, &mut dec).await.unwrap() {
        all.push(a);
    }
    all
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_in_full_or_compact_form() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = start(dir.path(), "127.0.0.1:0");
    let (holder, asker) = (Identity::generate(), Identity::generate());
    let (_e1, h) = connect(&holder, tracker.addr).await;
    call(&h, &register(&holder)).await.unwrap();
    let (content, m) = manifest(12, 41);
    put_manifest(&h, &holder, content, &m).await;
    let announce = TrackerRequest::Announce {
        node_id: holder.node_id(),
        content,
        bitfield: Bitfield::full(12),
    };
    assert_eq!(call(&h, &announce).await.unwrap(), TrackerResponse::Ok);
    // Register, full lookup, compact lookup, unknown content, storage, compact lookup: one
    // stream (the tracker answers lookups that arrive together as one batch).
    let (_e2, a) = connect(&asker, tracker.addr).await;
    let lookup = |compact| TrackerRequest::Lookup {
        content,
        max_peers: 8,
        have: None,
        compact,
        regions: false,
    };
    let unknown = TrackerRequest::Lookup {
        content: ContentId([9; 32]),
        max_peers: 8,
        have: None,
        compact: true,
        regions: false,
    };
    let reqs = [
        register(&asker),
        lookup(false),
        lookup(true),
        unknown,
        TrackerRequest::FindStorage,
        lookup(true),
    ];
    let (_send, mut recv) = pipeline(&a, &reqs, true).await;
    let got = answers(&mut recv).await;
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(matches!(got[0], TrackerResponse::Registered { .. }), "{:?}", got[0]);
    match &got[1] {
        TrackerResponse::LookupReply { piece_count: 12, peers, .. } => {
            assert_eq!(peers[0].node_id, holder.node_id());
            assert_eq!(peers[0].bitfield, Bitfield::full(12));
        }
        other => panic!("{other:?}"),
    }
    match &got[2] {
        TrackerResponse::CompactLookupReply { piece_count: 12, peers, .. } => {
            assert_eq!(peers[0].node_id, holder.node_id());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got[3], TrackerResponse::Unknown);
    assert!(matches!(got[4], TrackerResponse::StorageNodes { .. }), "{:?}", got[4]);
    assert!(matches!(got[5], TrackerResponse::CompactLookupReply { .. }), "{:?}", got[5]);
}

#[tokio::test]
async fn a_version_2_node_is_served_one_request_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = start(dir.path(), "127.0.0.1:0");
    let node = Identity::generate();
    let ep = Endpoint::bind(&node, "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
    let peer = PeerAddr { node_id: None, addr: tracker.addr };
    let (c, _) = ep.connect(&peer, shoal_wire::tracker::TRACKER_ALPN_V2).await.unwrap();
    let v2 = TrackerRequest::Register {
        node_id: node.node_id(),
        version: 2,
        role: Role::Node,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
        region: None,
    };
    assert!(matches!(call(&c, &v2).await.unwrap(), TrackerResponse::Registered { .. }));
    let lookup = TrackerRequest::Lookup {
        content: ContentId([2; 32]),
        max_peers: 4,
        have: None,
        compact: false,
        regions: false,
    };
    assert_eq!(call(&c, &lookup).await.unwrap(), TrackerResponse::Unknown);
    // Version 1 is refused with a reason, not served.
    let v1 = TrackerRequest::Register {
        node_id: node.node_id(),
        version: 1,
        role: Role::Node,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
        region: None,
    };
    match call(&c, &v1).await.unwrap() {
        TrackerResponse::Error { code: ErrorCode::BadRequest, text } => {
            assert!(text.contains("upgrade"), "{text}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stream_of_endless_requests_is_answered_up_to_the_limit_then_ended() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, _node, _e, c) = registered(dir.path()).await;
    // More than a stream may carry, and the stream left open as if more were coming.
    let lookup = compact_lookup(4);
    let over = shoal_wire::tracker::MAX_REQUESTS_PER_STREAM + 20;
    let (send, mut recv) = pipeline(&c, &vec![lookup.clone(); over], false).await;
    let got = answers(&mut recv).await;
    assert_eq!(got.len(), shoal_wire::tracker::MAX_REQUESTS_PER_STREAM);
    assert!(got.iter().all(|a| *a == TrackerResponse::Unknown));
    // The tracker stopped reading: the rest is refused, not queued.
    assert!(send.stopped().await.is_ok());
    // The connection still serves a new stream.
    assert_eq!(call(&c, &lookup).await.unwrap(), TrackerResponse::Unknown);
}

#[tokio::test]
async fn a_stream_dripping_requests_is_ended_at_the_stream_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, _node, _e, c) = registered(dir.path()).await;
    let lookup = compact_lookup(8);
    let (mut send, mut recv) = c.open_bi().await.unwrap();
    let started = std::time::Instant::now();
    let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    let mut answered = 0;
    // One request every 4 s, each within the request deadline: only the stream's own deadline
    // (30 s) ends it, well before the 256 a stream may carry.
    loop {
        if send.write_all(&encode(&lookup)).await.is_err() {
            break;
        }
        let read = shoal_net::framed::read_frame::<TrackerResponse>(&mut recv, &mut dec);
        match tokio::time::timeout(std::time::Duration::from_secs(60), read).await {
            Ok(Ok(Some(a))) => {
                assert_eq!(a, TrackerResponse::Unknown);
                answered += 1;
            }
            // The tracker finished the stream (or stopped reading it).
            Ok(_) => break,
            Err(_) => panic!("no answer and no end within 60 s"),
        }
        assert!(answered <= 12, "still answering after {answered} requests");
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    }
    let took = started.elapsed();
    assert!((2..=9).contains(&answered), "{answered} answered in {took:?}");
    // The connection still serves a new stream.
    assert_eq!(call(&c, &lookup).await.unwrap(), TrackerResponse::Unknown);
}

#[tokio::test]
async fn answered_requests_then_half_a_frame_get_their_answers_then_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, _node, _e, c) = registered(dir.path()).await;
    let lookup = TrackerRequest::Lookup {
        content: ContentId([5; 32]),
        max_peers: 4,
        have: None,
        compact: false,
        regions: false,
    };
    let (mut send, mut recv) = pipeline(&c, &[lookup.clone(), lookup.clone()], false).await;
    // Half of a third request's frame, then silence.
    send.write_all(&encode(&lookup)[..7]).await.unwrap();
    let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    for _ in 0..2 {
        let a = shoal_net::framed::read_frame::<TrackerResponse>(&mut recv, &mut dec).await;
        assert_eq!(a.unwrap(), Some(TrackerResponse::Unknown), "answered before the wait");
    }
    // The tracker gives up on the third at its deadline: it stops reading the stream.
    assert!(send.stopped().await.is_ok());
}

#[tokio::test]
async fn an_oversized_frame_after_good_requests_closes_that_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = start(dir.path(), "127.0.0.1:0");
    let (mallory, honest) = (Identity::generate(), Identity::generate());
    let (_e1, m) = connect(&mallory, tracker.addr).await;
    call(&m, &register(&mallory)).await.unwrap();
    let lookup = compact_lookup(6);
    let (mut send, _recv) = pipeline(&m, std::slice::from_ref(&lookup), false).await;
    // A length prefix one past the request limit: refused on the prefix alone.
    let huge = (shoal_wire::tracker::MAX_TRACKER_REQUEST_LEN as u32 + 1).to_be_bytes();
    send.write_all(&huge).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), m.closed()).await;
    assert!(closed.is_ok(), "an oversized frame closes that connection");
    let (_e2, h) = connect(&honest, tracker.addr).await;
    call(&h, &register(&honest)).await.unwrap();
    assert_eq!(call(&h, &lookup).await.unwrap(), TrackerResponse::Unknown);
}

#[tokio::test]
async fn a_manifest_upload_ends_its_stream_and_what_follows_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, node, _e, c) = registered(dir.path()).await;
    let (content, m) = manifest(3, 51);
    put_manifest(&c, &node, content, &m).await;
    // Known already: the tracker answers without reading the body, so the bytes after the
    // frame (the body, then a lookup) are never taken for a request.
    let put = TrackerRequest::PutManifest { node_id: node.node_id(), content, len: m.len() as u32 };
    let lookup = TrackerRequest::Lookup {
        content,
        max_peers: 4,
        have: None,
        compact: false,
        regions: false,
    };
    let (mut send, mut recv) = c.open_bi().await.unwrap();
    let mut bytes = encode(&put);
    bytes.extend_from_slice(&m);
    shoal_wire::encode_into(&lookup, &mut bytes);
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    assert_eq!(answers(&mut recv).await, vec![TrackerResponse::Ok]);
    assert!(c.close_reason().is_none(), "the connection stays open");
}

#[tokio::test]
async fn rate_limits_count_every_request_of_a_pipelined_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, _node, _e, c) = registered(dir.path()).await;
    // Three full streams: more lookups than the per-node query burst (512) in all.
    let lookup = compact_lookup(8);
    let per = shoal_wire::tracker::MAX_REQUESTS_PER_STREAM;
    let (mut served, mut limited) = (0, 0);
    for _ in 0..3 {
        let (_send, mut recv) = pipeline(&c, &vec![lookup.clone(); per], true).await;
        for a in answers(&mut recv).await {
            match a {
                TrackerResponse::Error { code: ErrorCode::RateLimited, .. } => limited += 1,
                _ => served += 1,
            }
        }
    }
    assert_eq!(served + limited, 3 * per, "every request answered");
    assert!(limited > 0, "{served} served, none limited");
    assert!(served >= 512, "the burst is served: only {served}");
}

#[tokio::test]
async fn resource_ids_resolve_to_the_operators_urls_and_bad_ids_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, _) =
        start_with(dir.path(), "127.0.0.1:0", &["--offline-source", "iso=http://mirror/x.iso"]);
    let node = Identity::generate();
    let (_e, c) = connect(&node, tracker.addr).await;
    let resolve = |id: &str| TrackerRequest::ResolveSource { id: id.into() };
    assert_eq!(
        call(&c, &resolve("iso")).await.unwrap(),
        TrackerResponse::Source { url: "http://mirror/x.iso".into() }
    );
    assert_eq!(call(&c, &resolve("nope")).await.unwrap(), TrackerResponse::Unknown);
    // An empty id, and one a byte over the limit: malformed, so that connection is closed.
    for body in [vec![], vec![b'a'; shoal_wire::tracker::MAX_SOURCE_ID_LEN + 1]] {
        let (_e, bad) = connect(&Identity::generate(), tracker.addr).await;
        let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(0x69);
        frame.extend_from_slice(&body);
        let (mut send, _recv) = bad.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        let _ = send.finish();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), bad.closed()).await;
        assert!(closed.is_ok(), "a {}-byte id left the connection open", body.len());
    }
    // The tracker still serves the well-behaved connection.
    assert_eq!(
        call(&c, &resolve("iso")).await.unwrap(),
        TrackerResponse::Source { url: "http://mirror/x.iso".into() }
    );
}

#[test]
fn a_malformed_offline_source_is_one_line_of_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-tracker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--offline-source", "iso=ftp://mirror/x.iso"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--offline-source") && err.contains("ID=URL"), "{err}");
}
