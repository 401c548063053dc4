//! The Redis backend against a real `redis-server`, started per test on a unix socket in a
//! temporary directory. Without one installed, each test says so and passes, unless
//! `SHOAL_REQUIRE_REDIS` is set (CI sets it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};

use super::*;
use crate::NodeEntry;

/// A `redis-server` of this test, killed on drop.
struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts one, or `None` (with a line saying so) if redis-server is not installed.
    fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("SHOAL_REQUIRE_REDIS").is_none(),
                "SHOAL_REQUIRE_REDIS is set but redis-server is not installed"
            );
            eprintln!("redis-server is not installed: skipping (apt-get install redis-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { child, socket, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.connect_once().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    fn connect_once(&self) -> Result<RedisState, RedisStateError> {
        RedisState::connect(&self.url(), Duration::from_secs(2))
    }

    fn connect(&self) -> RedisState {
        self.connect_once().unwrap()
    }

    /// A raw connection, to write what no tracker would.
    fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

fn id(seed: u8) -> NodeId {
    let mut key = [seed; 32];
    let secret = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut key).unwrap();
    let kp = libp2p_identity::ed25519::Keypair::from(secret);
    NodeId::from_public_key(&libp2p_identity::PublicKey::from(kp.public())).unwrap()
}

fn entry(seen: u64) -> NodeEntry {
    NodeEntry {
        storage: false,
        addrs: vec!["127.0.0.1:7000".parse().unwrap()],
        last_seen_ms: seen,
        active_uploads: 1,
        upload_rate: 2,
        region: Some("eu".parse().unwrap()),
    }
}

fn bits(n: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(n);
    ones.iter().for_each(|&p| {
        b.set(PieceIndex(p));
    });
    b
}

fn change(op: Persist) -> Change {
    Change { op, expiry: false }
}

fn batches(r: Read) -> (Vec<Batch>, String, usize) {
    match r {
        Read::Batches { batches, position, skipped } => (batches, position, skipped),
        Read::Gap => panic!("unexpected gap"),
    }
}

#[test]
fn the_snapshot_holds_what_was_written_and_not_what_was_removed() {
    let Some(server) = Server::start() else { return };
    let mut s = server.connect();
    let (c, gone) = (ContentId([7; 32]), ContentId([8; 32]));
    s.write(
        "a",
        &[
            change(Persist::PutNode(id(1), entry(10))),
            change(Persist::PutNode(id(2), entry(11))),
            change(Persist::PutManifest(c, b"manifest".to_vec().into())),
            change(Persist::PutManifest(gone, b"other".to_vec().into())),
            change(Persist::PutHolding(c, id(1), bits(8, &[0, 3]))),
            change(Persist::PutHolding(c, id(2), bits(8, &[1]))),
        ],
    )
    .unwrap();
    s.write(
        "b",
        &[
            change(Persist::PutNode(id(1), entry(20))),
            Change { op: Persist::RemoveHolding(c, id(2)), expiry: true },
            Change { op: Persist::RemoveNode(id(2)), expiry: true },
            Change { op: Persist::RemoveManifest(gone), expiry: true },
        ],
    )
    .unwrap();
    let (nodes, holdings, manifests) = server.connect().load().unwrap();
    assert_eq!(nodes, vec![(id(1), entry(20))]);
    assert_eq!(holdings, vec![(c, id(1), bits(8, &[0, 3]))]);
    assert_eq!(manifests, vec![(c, b"manifest".to_vec())]);
}

#[test]
fn a_replica_reads_the_changes_written_after_its_position() {
    let Some(server) = Server::start() else { return };
    let (mut a, mut b) = (server.connect(), server.connect());
    assert_eq!(b.tail().unwrap(), STREAM_START);
    a.write("a", &[change(Persist::PutNode(id(1), entry(1)))]).unwrap();
    let start = b.tail().unwrap();
    assert_ne!(start, STREAM_START);
    // Nothing new: the wait ends empty-handed at the same position.
    let (got, pos, _) = batches(b.read(&start, Duration::from_millis(50)).unwrap());
    assert!(got.is_empty());
    assert_eq!(pos, start);
    let c = ContentId([1; 32]);
    a.write(
        "a",
        &[
            change(Persist::PutHolding(c, id(1), bits(4, &[2]))),
            Change { op: Persist::RemoveNode(id(3)), expiry: true },
        ],
    )
    .unwrap();
    let (got, pos, skipped) = batches(b.read(&start, Duration::from_millis(50)).unwrap());
    assert_eq!(skipped, 0);
    assert_eq!(
        got,
        vec![
            Batch {
                replica: "a".into(),
                expiry: false,
                ops: vec![Persist::PutHolding(c, id(1), bits(4, &[2]))]
            },
            Batch { replica: "a".into(), expiry: true, ops: vec![Persist::RemoveNode(id(3))] },
        ],
        "expiry's changes are told apart"
    );
    let (got, _, _) = batches(b.read(&pos, Duration::from_millis(20)).unwrap());
    assert!(got.is_empty(), "read once");
}

#[test]
fn a_large_batch_is_split_into_bounded_entries() {
    let Some(server) = Server::start() else { return };
    let mut s = server.connect();
    // 5000 changes of 33 bytes: past the size one entry aims at, and past the most changes
    // one carries.
    let changes: Vec<Change> = (0..5000u32)
        .map(|i| {
            let mut c = [0u8; 32];
            c[..4].copy_from_slice(&i.to_be_bytes());
            change(Persist::RemoveManifest(ContentId(c)))
        })
        .collect();
    s.write("a", &changes).unwrap();
    let (got, _, _) = batches(s.read(STREAM_START, Duration::from_millis(50)).unwrap());
    assert!(got.len() >= 2);
    for b in &got {
        let bytes = b.ops.iter().fold(Vec::new(), |mut out, op| {
            codec::encode_op(&mut out, op);
            out
        });
        assert!(b.ops.len() <= codec::MAX_OPS_PER_ENTRY);
        assert!(bytes.len() < ENTRY_TARGET + 64, "{} bytes", bytes.len());
    }
    let all: Vec<Persist> = got.into_iter().flat_map(|b| b.ops).collect();
    assert_eq!(all, changes.into_iter().map(|c| c.op).collect::<Vec<_>>());
}

#[test]
fn a_reader_whose_position_was_trimmed_is_told_to_reload() {
    let Some(server) = Server::start() else { return };
    let mut s = server.connect().with_max_changes(10);
    s.write("a", &[change(Persist::RemoveNode(id(1)))]).unwrap();
    let old = s.tail().unwrap();
    // Exact trimming happens in whole radix-tree nodes with `~`: write well past it.
    for i in 0..500u32 {
        let mut c = [0u8; 32];
        c[..4].copy_from_slice(&i.to_be_bytes());
        s.write("a", &[change(Persist::RemoveManifest(ContentId(c)))]).unwrap();
    }
    assert_eq!(s.read(&old, Duration::from_millis(10)).unwrap(), Read::Gap);
    // A lost stream (Redis restarted empty) is a gap too.
    redis::cmd("DEL").arg(CHANGES).exec(&mut server.raw()).unwrap();
    let now = s.tail();
    assert_eq!(now.unwrap(), STREAM_START);
    assert_eq!(s.read(&old, Duration::from_millis(10)).unwrap(), Read::Gap);
}

#[test]
fn the_epoch_is_everyones_until_redis_loses_it() {
    let Some(server) = Server::start() else { return };
    let (mut a, mut b) = (server.connect(), server.connect());
    let e = a.epoch().unwrap();
    assert_eq!(b.epoch().unwrap(), e);
    redis::cmd("FLUSHALL").exec(&mut server.raw()).unwrap();
    let again = b.epoch().unwrap();
    assert_ne!(again, e, "a Redis that lost its data has a new epoch");
    assert_eq!(a.epoch().unwrap(), again);
}

#[test]
fn the_first_key_offered_is_everyones() {
    let Some(server) = Server::start() else { return };
    let (mut a, mut b) = (server.connect(), server.connect());
    assert_eq!(a.offer_key(b"first").unwrap(), Some(b"first".to_vec()));
    assert_eq!(b.offer_key(b"second").unwrap(), Some(b"first".to_vec()));
    // Something longer than any key is not taken.
    redis::cmd("SET").arg(KEY).arg(vec![0u8; MAX_KEY + 1]).exec(&mut server.raw()).unwrap();
    assert_eq!(b.offer_key(b"third").unwrap(), None);
}

#[test]
fn bad_data_in_redis_is_skipped_not_trusted() {
    let Some(server) = Server::start() else { return };
    let mut raw = server.raw();
    let c = ContentId([3; 32]);
    let mut s = server.connect();
    s.write(
        "a",
        &[
            change(Persist::PutNode(id(1), entry(5))),
            change(Persist::PutHolding(c, id(1), bits(8, &[1]))),
            change(Persist::PutManifest(c, b"m".to_vec().into())),
        ],
    )
    .unwrap();
    let hset = |raw: &mut redis::Connection, h: &str, k: &[u8], v: &[u8]| {
        redis::cmd("HSET").arg(h).arg(k).arg(v).exec(raw).unwrap();
    };
    // Keys of the wrong length, values that do not decode or are too long.
    hset(&mut raw, NODES, b"short", b"{}");
    hset(&mut raw, NODES, id(2).public_key_bytes(), b"not json");
    hset(&mut raw, NODES, id(3).public_key_bytes(), &vec![b' '; codec::MAX_NODE_VALUE + 1]);
    hset(&mut raw, HOLDINGS, &[1; 63], &codec::encode_holding(&bits(8, &[])));
    hset(&mut raw, HOLDINGS, &codec::holding_key(&c, &id(2)), &[0, 0, 0, 9, 1]);
    hset(&mut raw, MANIFESTS, b"short", b"m");
    hset(&mut raw, MANIFESTS, &[4; 32], &vec![0; codec::MAX_MANIFEST_VALUE + 1]);
    let (nodes, holdings, manifests) = s.load().unwrap();
    assert_eq!(nodes, vec![(id(1), entry(5))]);
    assert_eq!(holdings, vec![(c, id(1), bits(8, &[1]))]);
    assert_eq!(manifests, vec![(c, b"m".to_vec())]);
    // Stream entries without fields, with junk, or of another shape are skipped and counted.
    let start = STREAM_START;
    let xadd = |raw: &mut redis::Connection, fields: &[(&str, &[u8])]| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(CHANGES).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.exec(raw).unwrap();
    };
    xadd(&mut raw, &[("r", b"x"), ("x", b"0"), ("o", &[1, 2, 3])]);
    xadd(&mut raw, &[("r", b"x"), ("o", &[])]);
    xadd(&mut raw, &[("junk", b"1")]);
    xadd(&mut raw, &[("r", &[b'r'; 100]), ("x", b"0"), ("o", &[])]);
    let (got, _, skipped) = batches(s.read(start, Duration::from_millis(50)).unwrap());
    assert_eq!(got.len(), 1, "the tracker's own entry");
    assert_eq!(skipped, 4);
    // A key of another type where the stream should be: an error, not a panic.
    redis::cmd("DEL").arg(CHANGES).exec(&mut raw).unwrap();
    redis::cmd("SET").arg(CHANGES).arg("x").exec(&mut raw).unwrap();
    assert!(s.read(STREAM_START, Duration::from_millis(10)).is_err());
    assert!(s.tail().is_err());
}

#[test]
fn a_server_that_is_gone_is_an_error() {
    let Some(server) = Server::start() else { return };
    let mut s = server.connect();
    drop(server);
    assert!(s.write("a", &[change(Persist::RemoveNode(id(1)))]).is_err());
    assert!(s.read(STREAM_START, Duration::from_millis(10)).is_err());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis+unix://{}", dir.path().join("none.sock").display());
    assert!(RedisState::connect(&url, Duration::from_millis(200)).is_err());
    assert!(RedisState::connect("http://nope", Duration::from_millis(200)).is_err());
}
