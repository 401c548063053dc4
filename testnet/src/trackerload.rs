//! `shoal-testnet bench-tracker`: one real `shoal-tracker` holding many registered nodes,
//! driven by a lookup load generator; prints lookups per second, latency percentiles and the
//! CPU each side spent.
//!
//! The tracker's state is written beforehand through the tracker's own index and backend
//! (`shoal_index::Index` + `SledState`, the code a tracker restores from): `nodes` registered
//! nodes with vetted addresses, each holding one of `contents` contents (a third of them
//! complete, the rest a random half of the pieces). Registering the same number over QUIC
//! would measure 100,000 TLS handshakes, not lookups. The tracker then starts on that state,
//! as after a restart, and the generator opens `connections` QUIC connections (each its own
//! node identity), each with `streams` request streams open at once, for a fixed time. A stream
//! carries `per_stream` lookups (1: one per stream, as nodes send them; more: pipelined,
//! tracker protocol version 3) with up to `depth` of them unanswered at a time, in full or
//! compact form.
//!
//! The generator is kept cheap per lookup so that its CPU, on the same cores, does not decide
//! the figures: its requests are encoded once beforehand and sent from those bytes, and an
//! answer is checked by its frame and type byte, not decoded into peers (a node decodes; that
//! cost is the asker's, not the tracker's).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shoal_core::{Bitfield, ContentId, Manifest, PeerAddr, PieceHash, PieceIndex};
use shoal_index::{Config as IndexConfig, Index, SledState};
use shoal_net::{Endpoint, Identity, Limits};
use shoal_wire::tracker::{
    Role, TrackerRequest, TrackerResponse, MAX_REQUESTS_PER_STREAM, MAX_TRACKER_FRAME_LEN,
    TRACKER_ALPN, TRACKER_VERSION,
};
use shoal_wire::{encode, encode_into, DecodeError, Decoder, Frame};

use crate::launch::{self, Proc};

/// The load's shape.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    /// Registered nodes in the tracker's state.
    pub(crate) nodes: usize,
    /// Contents they hold between them.
    pub(crate) contents: usize,
    /// Size of each content (sets its piece count by the piece-size rule).
    pub(crate) content_size: u64,
    /// QUIC connections of the generator.
    pub(crate) connections: usize,
    /// Request streams open at once per connection.
    pub(crate) streams: usize,
    /// Lookups sent on one stream before it is finished (pipelined when above 1).
    pub(crate) per_stream: usize,
    /// Lookups of one stream unanswered at a time.
    pub(crate) depth: usize,
    /// Ask for compact answers (peers without their bitfields).
    pub(crate) compact: bool,
    /// How long the load runs.
    pub(crate) seconds: f64,
    /// Peers asked for per lookup.
    pub(crate) max_peers: u8,
}

/// What one run measured.
#[derive(Debug)]
struct Measured {
    lookups: u64,
    failed: u64,
    seconds: f64,
    /// Latency of every successful lookup, microseconds, sorted.
    latencies: Vec<u32>,
    tracker_cpu: f64,
    generator_cpu: f64,
}

/// Runs the load in a scratch directory under `root` and prints the figures.
pub(crate) fn run(load: &Load, root: &Path) -> anyhow::Result<()> {
    if [load.nodes, load.contents, load.connections, load.streams, load.depth].contains(&0) {
        bail!("--nodes, --contents, --connections, --streams and --depth must each be at least 1");
    }
    if !(1..=MAX_REQUESTS_PER_STREAM).contains(&load.per_stream) {
        bail!("--per-stream must be 1 to {MAX_REQUESTS_PER_STREAM} (a tracker answers no more on one stream)");
    }
    if !(load.seconds.is_finite() && load.seconds > 0.0 && load.seconds <= 3600.0) {
        bail!("--seconds must be a number of seconds above 0 and at most 3600, like 10");
    }
    if load.content_size == 0 {
        bail!("--content-size must be at least one byte, like 256MiB");
    }
    let dir = root.join("tracker");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let contents = populate(&dir.join("index"), load)?;
    println!(
        "state: {} nodes holding {} contents written in {:.1} s",
        load.nodes,
        contents.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let tracker = start_tracker(&dir)?;
    println!("tracker restored and listening in {:.1} s", t.elapsed().as_secs_f64());
    let addr: SocketAddr = tracker.addr.parse().context("tracker address")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let m = rt.block_on(drive(load, addr, Arc::new(contents), tracker.child.id()))?;
    drop(tracker);
    print(load, &m);
    Ok(())
}

/// Writes the tracker's state: registered nodes and their holdings. Returns the contents.
fn populate(path: &Path, load: &Load) -> anyhow::Result<Vec<ContentId>> {
    let state = SledState::open(path).context("opening the tracker state")?;
    // The owner uploads every manifest: lift the per-address cap on unannounced ones.
    let mut index = Index::new(IndexConfig {
        max_pending_manifest_bytes: u64::MAX,
        max_manifest_bytes: u64::MAX,
        ..IndexConfig::default()
    });
    let now = now_ms();
    let log2 = shoal_core::piece::piece_log2_for(load.content_size);
    let pieces = shoal_core::piece::piece_count(load.content_size, log2) as u32;
    let mut rng = fastrand::Rng::with_seed(0x7ac4);
    let mut contents = Vec::with_capacity(load.contents);
    let owner = Identity::generate().node_id();
    index.register(now, owner, Role::Node, addr_of(u32::MAX), &[addr_of(u32::MAX)], None);
    for c in 0..load.contents {
        let hashes = (0..pieces)
            .map(|i| {
                PieceHash::of(&[(c as u64).to_le_bytes(), u64::from(i).to_le_bytes()].concat())
            })
            .collect();
        let m = Manifest::new(&format!("load-{c}.bin"), load.content_size, hashes)?;
        let id = m.content_id();
        state.apply(&index.put_manifest(now, owner, id, m.encode())?)?;
        contents.push(id);
    }
    for n in 0..load.nodes {
        let node = Identity::generate().node_id();
        let addr = addr_of(n as u32);
        let reg = index.register(now, node, Role::Node, addr, &[addr], None);
        state.apply(&reg.ops)?;
        let content = contents[n % contents.len()];
        let mut bf = Bitfield::new(pieces);
        let complete = rng.u8(..3) == 0;
        for i in 0..pieces {
            if complete || rng.bool() {
                bf.set(PieceIndex(i));
            }
        }
        state.apply(&index.announce(now, node, content, bf)?)?;
    }
    state.flush()?;
    Ok(contents)
}

/// A distinct public-looking address for node `n` (10.0.0.0/8, port 7000).
fn addr_of(n: u32) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
    SocketAddr::new(IpAddr::V4(ip), 7000)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The tracker on the written state: nodes live for an hour (they send no heartbeats), and
/// the generator's one source address may query as fast as it can.
fn start_tracker(dir: &Path) -> anyhow::Result<Proc> {
    let mut child = launch::command(&launch::binary("shoal-tracker")?, None)
        .args(["serve", "--listen", "127.0.0.1:0", "--node-ttl", "3600", "--heartbeat", "60"])
        .args(["--query-rate", "10000000", "--query-burst", "10000000"])
        .args(["--query-rate-per-node", "10000000", "--query-burst-per-node", "10000000"])
        .arg("--data-dir")
        .arg(dir)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("log.txt"))?)
        .spawn()
        .context("starting shoal-tracker")?;
    // "shoal-tracker: node ID listening on ADDR, http off"
    let line = launch::first_line(&mut child, "shoal-tracker: node ", Duration::from_secs(300))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let (Some(id), Some(addr)) = (w.get(2), w.get(5)) else {
        bail!("unexpected tracker start line: {line}");
    };
    Ok(Proc {
        name: "tracker".into(),
        dir: dir.to_path_buf(),
        node_id: id.to_string(),
        addr: addr.trim_end_matches(',').to_string(),
        ns: None,
        child,
    })
}

/// Opens the connections, runs the lookups until the time is up, gathers the latencies.
async fn drive(
    load: &Load,
    addr: SocketAddr,
    contents: Arc<Vec<ContentId>>,
    tracker_pid: u32,
) -> anyhow::Result<Measured> {
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        let id = Identity::generate();
        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let ep = Endpoint::bind_with(&id, bind, &[], Limits::node())?;
        let peer = PeerAddr { node_id: None, addr };
        let conn = tokio::time::timeout(Duration::from_secs(10), ep.connect(&peer, TRACKER_ALPN))
            .await
            .context("connecting to the tracker timed out")??
            .0;
        // Registered, as a node is: its lookups are handed hints and remembered.
        let register = TrackerRequest::Register {
            node_id: id.node_id(),
            version: TRACKER_VERSION,
            role: Role::Node,
            addrs: vec![ep.local_addr()?],
            region: None,
        };
        match call(&conn, &register).await? {
            TrackerResponse::Registered { .. } => {}
            other => bail!("the tracker refused a load connection's registration: {other:?}"),
        }
        conns.push((ep, conn));
    }
    // Warm up: one lookup per connection, not counted.
    for (_, conn) in &conns {
        lookup(conn, contents[0], load.max_peers, None, load.compact).await?;
    }
    let log2 = shoal_core::piece::piece_log2_for(load.content_size);
    let pieces = shoal_core::piece::piece_count(load.content_size, log2) as u32;
    // Every stream slot's requests, encoded before the clock starts.
    let slots: Vec<(usize, Vec<Vec<u8>>)> = (0..conns.len())
        .flat_map(|c| (0..load.streams).map(move |s| (c, s)))
        .map(|(c, s)| {
            let mut rng = fastrand::Rng::with_seed((c * 1000 + s) as u64);
            (c, requests(&mut rng, &contents, pieces, load))
        })
        .collect();
    let cpu0 = (cpu(Some(tracker_pid)), cpu(None));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(load.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, requests) in slots {
        let (conn, load) = (conns[c].1.clone(), load.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
            let mut next = 0;
            while Instant::now() < until {
                match stream(&conn, &requests, &mut next, &load, until, &mut dec).await {
                    Ok(t) => tally.add(t),
                    Err(_) => {
                        tally.failed += 1;
                        // A failed stream may leave part of a frame behind.
                        dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
                    }
                }
            }
            tally
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        let t = done.context("a load task failed")?;
        latencies.extend(t.latencies);
        failed += t.failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu1 = (cpu(Some(tracker_pid)), cpu(None));
    for (ep, conn) in conns {
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
    }
    latencies.sort_unstable();
    Ok(Measured {
        lookups: latencies.len() as u64,
        failed,
        seconds,
        latencies,
        tracker_cpu: cpu1.0 - cpu0.0,
        generator_cpu: cpu1.1 - cpu0.1,
    })
}

/// One lookup on its own stream, as a fetch sends it (with what it has after its first);
/// an answer other than a lookup reply is an error (the load hits known contents).
async fn lookup(
    conn: &quinn::Connection,
    content: ContentId,
    max_peers: u8,
    have: Option<Bitfield>,
    compact: bool,
) -> anyhow::Result<()> {
    match call(conn, &TrackerRequest::Lookup { content, max_peers, have, compact, regions: false })
        .await?
    {
        TrackerResponse::LookupReply { .. } | TrackerResponse::CompactLookupReply { .. } => Ok(()),
        other => bail!("unexpected answer to a lookup: {other:?}"),
    }
}

/// Encoded lookups for one stream slot to cycle through: random contents, half of them from
/// fetches under way, which send what they have (a random quarter of the pieces).
fn requests(
    rng: &mut fastrand::Rng,
    contents: &[ContentId],
    pieces: u32,
    load: &Load,
) -> Vec<Vec<u8>> {
    (0..64)
        .map(|_| {
            let have = rng.bool().then(|| {
                let mut bf = Bitfield::new(pieces);
                (0..pieces).filter(|_| rng.u8(..4) == 0).for_each(|i| {
                    bf.set(PieceIndex(i));
                });
                bf
            });
            let content = contents[rng.usize(..contents.len())];
            let req = TrackerRequest::Lookup {
                content,
                max_peers: load.max_peers,
                have,
                compact: load.compact,
                regions: false,
            };
            let mut bytes = Vec::new();
            encode_into(&req, &mut bytes);
            bytes
        })
        .collect()
}

/// What a stream slot measured.
#[derive(Debug, Default)]
struct Tally {
    /// Latency of each answered lookup, microseconds.
    latencies: Vec<u32>,
    failed: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.failed += other.failed;
    }
}

/// A tracker answer's frame, checked by its type byte only (see the module doc).
#[derive(Debug, PartialEq)]
struct AnswerType(u8);

impl Frame for AnswerType {
    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.0);
    }

    fn decode_body(ty: u8, _body: &[u8]) -> Result<Self, DecodeError> {
        Ok(Self(ty))
    }
}

/// A lookup reply's type byte, full (0x73) or compact (0x79).
const LOOKUP_REPLIES: [u8; 2] = [0x73, 0x79];

/// One stream: up to `per_stream` lookups from `requests` (from `next` on), at most `depth`
/// unanswered, none sent after `until`; each answer timed from when its request was queued.
async fn stream(
    conn: &quinn::Connection,
    requests: &[Vec<u8>],
    next: &mut usize,
    load: &Load,
    until: Instant,
    dec: &mut Decoder,
) -> anyhow::Result<Tally> {
    let (mut send, mut recv) = conn.open_bi().await?;
    // Send times of the unanswered lookups; its capacity is the depth.
    let (sent, mut pending) = tokio::sync::mpsc::channel::<Instant>(load.depth);
    let first = *next;
    *next += load.per_stream;
    let writer = async move {
        for i in 0..load.per_stream {
            if Instant::now() >= until {
                break;
            }
            if sent.send(Instant::now()).await.is_err() {
                break;
            }
            send.write_all(&requests[(first + i) % requests.len()]).await?;
        }
        send.finish()?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut tally = Tally { latencies: Vec::with_capacity(load.per_stream), failed: 0 };
        while let Some(AnswerType(ty)) = shoal_net::framed::read_frame(&mut recv, dec).await? {
            let t = pending.recv().await.context("an answer to no request")?;
            if LOOKUP_REPLIES.contains(&ty) {
                tally.latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            } else {
                tally.failed += 1;
            }
        }
        // Lookups sent and never answered.
        pending.close();
        while pending.recv().await.is_some() {
            tally.failed += 1;
        }
        anyhow::Ok(tally)
    };
    let (w, r) = tokio::join!(writer, reader);
    let mut tally = r?;
    if w.is_err() {
        tally.failed += 1;
    }
    Ok(tally)
}

/// One request on its own stream; the answer.
async fn call(conn: &quinn::Connection, req: &TrackerRequest) -> anyhow::Result<TrackerResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode(req)).await?;
    send.finish()?;
    let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    shoal_net::framed::read_frame(&mut recv, &mut dec)
        .await?
        .context("the stream ended without an answer")
}

fn cpu(pid: Option<u32>) -> f64 {
    crate::memory::cpu_seconds(pid).unwrap_or(f64::NAN)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn print(load: &Load, m: &Measured) {
    let rate = m.lookups as f64 / m.seconds;
    println!(
        "\n### Tracker lookups ({} nodes, {} contents, {} connections x {} streams, {} per stream, \
         depth {}, {} answers, {:.0} s)\n",
        load.nodes,
        load.contents,
        load.connections,
        load.streams,
        load.per_stream,
        load.depth.min(load.per_stream),
        if load.compact { "compact" } else { "full" },
        m.seconds
    );
    println!("| lookups/s | p50 | p99 | p99.9 | max | failed | tracker CPU | generator CPU |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {rate:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {:.2} s ({:.1} us/lookup) | {:.2} s ({:.1} us/lookup) |",
        percentile(&m.latencies, 0.5),
        percentile(&m.latencies, 0.99),
        percentile(&m.latencies, 0.999),
        percentile(&m.latencies, 1.0),
        m.failed,
        m.tracker_cpu,
        m.tracker_cpu * 1e6 / m.lookups.max(1) as f64,
        m.generator_cpu,
        m.generator_cpu * 1e6 / m.lookups.max(1) as f64,
    );
}
