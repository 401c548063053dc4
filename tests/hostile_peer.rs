//! A hostile peer against a real `shoal daemon`: a raw client built on `shoal-wire` and
//! `shoal-net` (not the node's fetch code) sends what an honest node never would. For each
//! probe: the refusal it gets, the daemon's resident memory afterwards (VmRSS, against a
//! generous ceiling), and an honest `shoal get` that still works.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use quinn::{Connection, ConnectionError, ReadError, RecvStream, SendStream, VarInt};
use shoal_core::{ContentId, PeerAddr, PieceIndex};
use shoal_net::{Endpoint, Identity, Limits};
use shoal_wire::{encode, Decoder, Message, RejectReason, Request, Response, PROTOCOL_VERSION};

use crate::support::*;

/// How much a probe may grow the daemon's resident memory. The bugs these probes found grew it
/// by 4.4 GiB (one request) and 38 MiB for good (subscriptions); the ceiling per connection is
/// ~1.5 MiB and per address ~48 MiB, 192 MiB from loopback (see `shoal_net::Limits`), and no
/// probe here comes near filling it.
const RSS_GROWTH_CEILING_KIB: u64 = 64 * 1024;
/// Close code for a protocol error (node/src/serve.rs).
const CLOSE_PROTOCOL: u32 = 1;
/// Stream reset code for a stalled stream (node/src/io.rs).
const RESET_STALLED: u32 = 1;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A seed daemon holding a 1.04 MB file (64 pieces of 16 KiB): its ticket and content id.
fn seed(tmp: &Path) -> (Daemon, String, ContentId, Vec<u8>) {
    let d = Daemon::start(&tmp.join("seed"), &[]);
    let src = tmp.join("f.bin");
    let data = write_file(&src, 1_040_000, 7);
    let ticket = d.add(&src);
    let content = d.ls()[0]["content_id"].as_str().unwrap().parse().unwrap();
    (d, ticket, content, data)
}

/// An honest `shoal get` from the daemon still works and brings the right bytes.
fn honest_get_works(tmp: &Path, ticket: &str, data: &[u8], name: &str) {
    let out = tmp.join(format!("{name}.out"));
    get_json(&tmp.join(name), ticket, &out, &[]);
    assert!(std::fs::read(&out).unwrap() == data, "honest fetch got the file intact");
}

fn assert_rss_bounded(d: &Daemon, before: u64, probe: &str) -> u64 {
    let after = rss_kib(d.child.id());
    eprintln!("{probe}: daemon VmRSS {before} KiB before, {after} KiB after");
    assert!(
        after <= before + RSS_GROWTH_CEILING_KIB,
        "{probe}: VmRSS grew from {before} KiB to {after} KiB (ceiling +{RSS_GROWTH_CEILING_KIB})"
    );
    after
}

/// A raw connection to the daemon with a fresh key and the given client windows.
async fn dial(addr: SocketAddr, limits: Limits) -> anyhow::Result<(Endpoint, Connection)> {
    let ep = Endpoint::bind_with(&Identity::generate(), "127.0.0.1:0".parse()?, &[], limits)?;
    let (conn, _) = ep.connect(&PeerAddr { node_id: None, addr }, shoal_wire::ALPN).await?;
    Ok((ep, conn))
}

async fn read_response(recv: &mut RecvStream, dec: &mut Decoder) -> anyhow::Result<Response> {
    loop {
        if let Some(r) = dec.decode::<Response>()? {
            return Ok(r);
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(c) => dec.feed(&c.bytes),
            None => bail!("stream ended without an answer"),
        }
    }
}

/// Sends one request and returns the answer's header.
async fn ask(conn: &Connection, req: &Request) -> anyhow::Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode(req)).await?;
    send.finish()?;
    read_response(&mut recv, &mut Decoder::new()).await
}

/// Waits a little before another attempt (the daemon frees places as it sees closes).
async fn pause_before_retry(_last: &anyhow::Error) {
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

fn random_content() -> ContentId {
    let mut c = [0u8; 32];
    c.iter_mut().for_each(|b| *b = fastrand::u8(..));
    ContentId(c)
}

fn is_reject(r: &Response, want: RejectReason) -> bool {
    matches!(r, Response::Reject { reason, .. } if *reason == want)
}

#[test]
fn piece_index_past_the_end_costs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, ticket, held, data) = seed(tmp.path());
    let before = rss_kib(d.child.id());
    rt().block_on(async {
        let (_ep, conn) = dial(d.addr, Limits::node()).await.unwrap();
        let far = PieceIndex(u32::MAX);
        for _ in 0..200 {
            // Unknown content, any index: not found, nothing allocated for it.
            let r = ask(&conn, &Request::Piece { content: random_content(), piece: far }).await;
            assert!(is_reject(&r.unwrap(), RejectReason::NotFound));
            // Held content, index past its 64 pieces: a bad request, no slot taken.
            for piece in [far, PieceIndex(64), PieceIndex(1 << 31)] {
                let r = ask(&conn, &Request::Piece { content: held, piece }).await.unwrap();
                assert!(is_reject(&r, RejectReason::BadRequest), "{r:?}");
            }
            let r = ask(&conn, &Request::Manifest { content: random_content() }).await;
            assert!(is_reject(&r.unwrap(), RejectReason::NotFound));
            let r = ask(&conn, &Request::Holding { content: random_content() }).await;
            assert_eq!(r.unwrap(), Response::Holding { bitfield: None });
        }
        // The last piece in range is still served.
        let r = ask(&conn, &Request::Piece { content: held, piece: PieceIndex(63) }).await;
        assert_eq!(r.unwrap(), Response::Piece { len: 1_040_000 - 63 * 16 * 1024 });
    });
    assert_rss_bounded(&d, before, "piece index 4294967295");
    honest_get_works(tmp.path(), &ticket, &data, "after-far-index");
}

/// Sends a hello and `n` subscriptions for random contents on a fresh connection; returns how
/// many refusals came back before the connection ended, and how it ended.
async fn subscribe_flood(addr: SocketAddr, n: usize) -> anyhow::Result<(usize, ConnectionError)> {
    let id = Identity::generate();
    let ep = Endpoint::bind_with(&id, "127.0.0.1:0".parse()?, &[], Limits::node())?;
    let (conn, _) = ep.connect(&PeerAddr { node_id: None, addr }, shoal_wire::ALPN).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut out =
        encode(&Message::Hello { version: PROTOCOL_VERSION, node_id: id.node_id(), region: None });
    for _ in 0..n {
        out.extend_from_slice(&encode(&Message::Subscribe { content: random_content() }));
    }
    let writer = tokio::spawn(async move {
        // Fails once the daemon closes the connection; that is the point.
        let _ = send.write_all(&out).await;
        send
    });
    let mut dec = Decoder::new();
    let mut refused = 0;
    let end = loop {
        match dec.decode::<Message>()? {
            Some(Message::Reject { reason, .. }) => {
                assert_eq!(reason, RejectReason::NotFound);
                refused += 1;
                continue;
            }
            Some(Message::Hello { .. }) => continue,
            Some(other) => bail!("unexpected {other:?}"),
            None => {}
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => dec.feed(&c.bytes),
            Ok(None) => bail!("control stream finished instead of the connection closing"),
            Err(ReadError::ConnectionLost(e)) => break e,
            Err(e) => bail!("unexpected read error {e}"),
        }
    };
    drop(writer.await);
    Ok((refused, end))
}

#[test]
fn subscription_flood_for_random_contents_is_cut_off_and_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, ticket, _, data) = seed(tmp.path());
    let before = rss_kib(d.child.id());
    let cap = shoal_wire::MAX_SUBSCRIPTIONS;
    rt().block_on(async {
        // 100,000 subscriptions in all, each connection one more than the cap.
        let rounds = 100_000usize.div_ceil(cap + 1);
        for _ in 0..rounds {
            let (refused, end) = subscribe_flood(d.addr, cap + 1).await.unwrap();
            assert!(refused <= cap, "at most {cap} refusals, got {refused}");
            match end {
                ConnectionError::ApplicationClosed(c) => {
                    assert_eq!(c.error_code, VarInt::from_u32(CLOSE_PROTOCOL), "{c:?}")
                }
                // The daemon closed and forgot the connection, but its close packet was lost on
                // the busy loopback: our next packet drew a stateless reset, which only an
                // endpoint that dropped the connection sends.
                ConnectionError::Reset => {}
                other => {
                    panic!("expected a protocol-error close, got {other} after {refused} refusals")
                }
            }
        }
    });
    assert_rss_bounded(&d, before, "100,000 subscriptions");
    honest_get_works(tmp.path(), &ticket, &data, "after-subscriptions");
}

#[test]
fn request_stream_flood_is_answered_within_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, ticket, held, data) = seed(tmp.path());
    let before = rss_kib(d.child.id());
    rt().block_on(async {
        let (_ep, conn) = dial(d.addr, Limits::node()).await.unwrap();
        // 4,000 request streams, as many at once as the daemon lets a connection open.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..4_000u32 {
            let conn = conn.clone();
            tasks.spawn(async move {
                let req = match i % 3 {
                    0 => Request::Piece { content: random_content(), piece: PieceIndex(i) },
                    1 => Request::Piece { content: held, piece: PieceIndex(i % 64) },
                    _ => Request::Manifest { content: held },
                };
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&encode(&req)).await?;
                send.finish()?;
                let mut dec = Decoder::new();
                let r = read_response(&mut recv, &mut dec).await?;
                // Read what follows so the stream completes (an honest reader).
                let _ = recv.read_to_end(16 * 1024 * 1024).await;
                anyhow::Ok((i % 3, r))
            });
        }
        let mut answered = 0;
        while let Some(r) = tasks.join_next().await {
            let (kind, r) = r.unwrap().context("a flood stream got no answer").unwrap();
            let ok = match kind {
                0 => is_reject(&r, RejectReason::NotFound),
                1 => matches!(r, Response::Piece { .. }) || is_reject(&r, RejectReason::Busy),
                _ => matches!(r, Response::Manifest { .. }) || is_reject(&r, RejectReason::Busy),
            };
            assert!(ok, "kind {kind}: {r:?}");
            answered += 1;
        }
        assert_eq!(answered, 4_000);
    });
    assert_rss_bounded(&d, before, "4,000 request streams");
    honest_get_works(tmp.path(), &ticket, &data, "after-flood");
}

#[test]
fn silent_streams_are_dropped_after_the_opening_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, ticket, _, data) = seed(tmp.path());
    let before = rss_kib(d.child.id());
    rt().block_on(async {
        let (_ep, conn) = dial(d.addr, Limits::node()).await.unwrap();
        // Streams that start a frame (so the daemon sees them) and never finish it: the
        // daemon lets each one go after its opening deadline, answering nothing.
        let mut streams: Vec<(SendStream, RecvStream)> = Vec::new();
        for _ in 0..32 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&[0, 0]).await.unwrap();
            streams.push((send, recv));
        }
        for (_send, mut recv) in streams {
            let got = recv.read_to_end(1024).await;
            assert!(
                matches!(&got, Ok(b) if b.is_empty())
                    || matches!(got, Err(quinn::ReadToEndError::Read(ReadError::Reset(_)))),
                "a silent stream gets no answer and is ended: {got:?}"
            );
        }
        // The connection itself is still usable.
        let r = ask(&conn, &Request::Manifest { content: random_content() }).await.unwrap();
        assert!(is_reject(&r, RejectReason::NotFound));
    });
    assert_rss_bounded(&d, before, "silent streams");
    honest_get_works(tmp.path(), &ticket, &data, "after-silence");
}

#[test]
fn slow_readers_lose_their_upload_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, ticket, held, data) = seed(tmp.path());
    let before = rss_kib(d.child.id());
    rt().block_on(async {
        // A reader that takes 1 KiB per stream and never reads more: every 16 KiB piece stalls.
        let tiny = Limits {
            dial_stream_window: 1024,
            dial_connection_window: 64 * 1024,
            ..Limits::node()
        };
        let (_ep, conn) = dial(d.addr, tiny).await.unwrap();
        let mut streams = Vec::new();
        // As many as the daemon has upload slots: all of them are taken by this reader.
        for p in 0..32u32 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&encode(&Request::Piece { content: held, piece: PieceIndex(p) }))
                .await
                .unwrap();
            send.finish().unwrap();
            let mut dec = Decoder::new();
            let r = read_response(&mut recv, &mut dec).await.unwrap();
            assert!(matches!(r, Response::Piece { .. }), "{r:?}");
            streams.push((recv, dec));
        }
        // Still not reading. After the write deadline the daemon resets each stalled stream,
        // freeing its slot.
        for (mut recv, _) in streams {
            // Waits for the reset without reading (reading would hand out window credit).
            let end = recv.received_reset().await;
            assert!(
                matches!(end, Ok(Some(code)) if code == VarInt::from_u32(RESET_STALLED)),
                "a stalled upload is reset: {end:?}"
            );
        }
    });
    assert_rss_bounded(&d, before, "slow readers");
    honest_get_works(tmp.path(), &ticket, &data, "after-slow-readers");
}

#[test]
fn connections_are_capped_per_node_id_and_per_address() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, ticket, _, data) = seed(tmp.path());
    let before = rss_kib(d.child.id());
    let limits = Limits::node();
    rt().block_on(async {
        // One key, one endpoint: the fifth connection at once is closed after its handshake.
        let ep = Endpoint::bind_with(
            &Identity::generate(),
            "127.0.0.1:0".parse().unwrap(),
            &[],
            Limits::node(),
        )
        .unwrap();
        let peer = PeerAddr { node_id: None, addr: d.addr };
        let mut same_key = Vec::new();
        for _ in 0..limits.per_peer {
            let (c, _) = ep.connect(&peer, shoal_wire::ALPN).await.unwrap();
            // Each is served: a request gets its answer.
            let r = ask(&c, &Request::Manifest { content: random_content() }).await.unwrap();
            assert!(is_reject(&r, RejectReason::NotFound));
            same_key.push(c);
        }
        let (extra, _) = ep.connect(&peer, shoal_wire::ALPN).await.unwrap();
        match extra.closed().await {
            ConnectionError::ApplicationClosed(c) => assert_eq!(
                c.error_code,
                VarInt::from_u32(shoal_net::endpoint::CLOSE_OVER_CAP),
                "{c:?}"
            ),
            other => panic!("expected the over-cap close, got {other}"),
        }
        drop(same_key);

        // Fresh keys from one address (loopback's cap): the next one is refused before the
        // handshake.
        let cap = limits.per_loopback_ip;
        let mut dials = tokio::task::JoinSet::new();
        for _ in 0..cap {
            dials.spawn(dial(d.addr, Limits::node()));
        }
        let mut held = Vec::new();
        while let Some(r) = dials.join_next().await {
            held.push(r.unwrap().expect("connections up to the per-address cap are served"));
        }
        // With every place of this address taken, the daemon is still within its ceiling.
        assert_rss_bounded(&d, before, "128 connections held from one address");
        let refused = dial(d.addr, Limits::node()).await;
        let err = refused.expect_err("one connection over the per-address cap is refused");
        assert!(err.to_string().contains("refused"), "{err:#}");
        // Closing them frees the places (once the daemon has seen the closes).
        let mut closing = tokio::task::JoinSet::new();
        for (ep, c) in held.drain(..) {
            c.close(VarInt::from_u32(0), b"done");
            closing.spawn(async move { ep.wait_idle().await });
        }
        while closing.join_next().await.is_some() {}
        let mut attempts = 0;
        let (_ep, c) = loop {
            match dial(d.addr, Limits::node()).await {
                Ok(x) => break x,
                Err(e) if attempts < 200 => {
                    attempts += 1;
                    pause_before_retry(&e).await;
                }
                Err(e) => panic!("places were not freed: {e:#}"),
            }
        };
        let r = ask(&c, &Request::Holding { content: random_content() }).await.unwrap();
        assert_eq!(r, Response::Holding { bitfield: None });
    });
    assert_rss_bounded(&d, before, "connection caps");
    honest_get_works(tmp.path(), &ticket, &data, "after-connections");
}

#[test]
fn requests_for_unknown_contents_cost_a_pull_through_storage_nothing_lasting() {
    // A storage node with pull-through on: 200 manifest and piece requests
    // for contents its tracker does not know are refused; nothing is pulled, cached or kept.
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("storage");
    let tracker = TrackerProc::start_admitting(&tmp.path().join("t"), "127.0.0.1:0", &[&st], &[]);
    let t = tracker.addr.to_string();
    let d = Daemon::start(
        &st,
        &["--tracker", &t, "--role", "storage", "--pull-through-cache", "64MiB"],
    );
    let before = rss_kib(d.child.id());
    rt().block_on(async {
        let (_ep, conn) = dial(d.addr, Limits::node()).await.unwrap();
        for i in 0..200 {
            let req = if i % 2 == 0 {
                Request::Manifest { content: random_content() }
            } else {
                Request::Piece { content: random_content(), piece: PieceIndex(0) }
            };
            let r = ask(&conn, &req).await.unwrap();
            assert!(
                is_reject(&r, RejectReason::NotFound) || is_reject(&r, RejectReason::Busy),
                "{r:?}"
            );
        }
    });
    assert_rss_bounded(&d, before, "unknown contents at a pull-through storage node");
    let status = d.status();
    assert_eq!(status["pull_through_bytes"], 0);
    assert!(d.ls().as_array().unwrap().is_empty(), "nothing kept: {}", d.ls());
}
