//! The Redis backend: the index's state shared by several tracker replicas.
//!
//! Keys (under `shoal:tracker:`):
//! - `nodes`, `holdings`, `manifests`: hashes with the same keys and values as the sled
//!   backend's trees, the snapshot a starting replica loads ([`RedisState::load`]);
//! - `changes`: a stream, one entry per batch of changes a replica made (`r`: the replica's
//!   id, `x`: `1` for changes made by expiry, `o`: the changes), trimmed to about
//!   [`MAX_CHANGES`] entries; each replica tails it ([`RedisState::read`]) and applies the
//!   others' changes to its index ([`crate::Index::apply_remote`]);
//! - `key`: the tracker's node key, offered by the first replica ([`RedisState::offer_key`]);
//! - `epoch`: a random mark set by the first replica ([`RedisState::epoch`]): a replica that
//!   finds another mark (or none) knows Redis lost the state and writes its own back.
//!
//! A batch's hash writes and its stream entry go in one `MULTI`, so the snapshot and the
//! stream agree on the order of changes. A replica that starts notes the stream's end
//! ([`RedisState::tail`]) before it loads the snapshot, so it misses nothing written meanwhile
//! (it may see a change twice: changes are idempotent). A reader whose position was trimmed
//! away is told ([`Read::Gap`]) and loads the snapshot again.
//!
//! Everything read from Redis is bounded and checked: values past their kind's limit, keys of
//! the wrong length and batches that do not decode are skipped, never trusted.

use std::time::Duration;

use redis::Value;

use crate::{Loaded, Persist};

mod codec;

/// Stream entries kept (about: trimmed with `MAXLEN ~`): a replica more than this many
/// batches behind loads the snapshot again. With entries of at most about [`ENTRY_TARGET`]
/// bytes (a manifest can make one larger, once per swarm), the stream holds at most about
/// 1.25 GiB in Redis; entries of ordinary requests are a few hundred bytes.
pub const MAX_CHANGES: usize = 20_000;
/// The most entries loaded from each hash.
pub const MAX_LOADED: usize = 1 << 24;
/// Entries read from the stream at once (a few MiB as replicas write them).
const READ_COUNT: usize = 64;
/// A batch is split into stream entries of about this many bytes.
pub const ENTRY_TARGET: usize = 64 * 1024;
/// The longest tracker key accepted from Redis (an ed25519 key in protobuf form is 68 bytes).
const MAX_KEY: usize = 1024;
/// The longest replica id or stream entry id accepted.
const MAX_ID: usize = 64;

/// A Redis error, or a reply that is not what the command answers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStateError {
    /// The connection or a command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A reply of an unexpected shape.
    #[error("redis answered {0} with an unexpected reply")]
    Reply(&'static str),
    /// A hash holds more entries than a tracker loads.
    #[error("redis hash {what} holds more than {max} entries")]
    TooMany {
        /// the hash
        what: &'static str,
        /// the cap
        max: usize,
    },
}

/// A change and whether expiry made it (other replicas expire nodes on their own clocks and do
/// not apply these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The change.
    pub op: Persist,
    /// Made by [`crate::Index::expire`].
    pub expiry: bool,
}

/// A batch of changes another (or this) replica wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The replica that wrote it.
    pub replica: String,
    /// Made by expiry.
    pub expiry: bool,
    /// The changes, in order.
    pub ops: Vec<Persist>,
}

/// What a read of the stream found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Batches after the position (none if the wait ended first), the new position, and how
    /// many entries were skipped as malformed.
    Batches {
        /// the batches, in order
        batches: Vec<Batch>,
        /// the id of the last entry read (the old position if none)
        position: String,
        /// entries that did not decode
        skipped: usize,
    },
    /// The position is no longer in the stream (trimmed, or the stream was lost): load the
    /// snapshot again.
    Gap,
}

/// The start of a stream: before every entry.
pub const STREAM_START: &str = "0-0";
/// The most changes one stream entry may carry; an entry with more is skipped.
pub const MAX_CHANGES_PER_ENTRY: usize = codec::MAX_OPS_PER_ENTRY;

/// Decodes the changes of one stream entry (its `o` field, as [`encode_changes`] writes it):
/// `None` if any of it is malformed, longer than an entry may be, or holds more than
/// [`MAX_CHANGES_PER_ENTRY`] changes. Every replica reads these from the shared Redis, so they
/// are checked like bytes from the network (and fuzzed: `fuzz/fuzz_targets/change_stream.rs`).
pub fn decode_changes(bytes: &[u8]) -> Option<Vec<Persist>> {
    codec::decode_batch(bytes)
}

/// Encodes changes as one stream entry's `o` field (what [`decode_changes`] reads). A writer
/// splits its changes into entries below [`ENTRY_TARGET`] bytes and
/// [`MAX_CHANGES_PER_ENTRY`] changes; this encodes whatever it is given.
pub fn encode_changes(ops: &[Persist]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        codec::encode_op(&mut out, op);
    }
    out
}

/// A connection to the shared state.
pub struct RedisState {
    conn: redis::Connection,
    max_changes: usize,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState").field("max_changes", &self.max_changes).finish()
    }
}

const KEY: &str = "shoal:tracker:key";
const EPOCH: &str = "shoal:tracker:epoch";
const NODES: &str = "shoal:tracker:nodes";
const HOLDINGS: &str = "shoal:tracker:holdings";
const MANIFESTS: &str = "shoal:tracker:manifests";
const CHANGES: &str = "shoal:tracker:changes";

/// A hash entry: key and value bytes.
type Pair = (Vec<u8>, Vec<u8>);

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bulk(v).filter(|b| b.len() <= MAX_ID).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// The items of an array reply (RESP2) or the flattened pairs of a map (RESP3).
fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Map(m) => Some(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

impl RedisState {
    /// Connects to `url` (`redis://HOST:PORT[/DB]` or `redis+unix:///PATH`); every command
    /// must be answered within `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, RedisStateError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        Ok(Self { conn, max_changes: MAX_CHANGES })
    }

    /// Keeps about `n` stream entries instead of [`MAX_CHANGES`] (for tests of trimming).
    pub fn with_max_changes(mut self, n: usize) -> Self {
        self.max_changes = n;
        self
    }

    /// Stores `candidate` as the tracker's key unless a replica stored one already; returns
    /// the key every replica uses. `None` if what Redis holds is longer than any key.
    pub fn offer_key(&mut self, candidate: &[u8]) -> Result<Option<Vec<u8>>, RedisStateError> {
        redis::cmd("SET").arg(KEY).arg(candidate).arg("NX").exec(&mut self.conn)?;
        let v: Value = redis::cmd("GET").arg(KEY).query(&mut self.conn)?;
        Ok(bulk(&v).filter(|k| k.len() <= MAX_KEY).map(<[u8]>::to_vec))
    }

    /// The mark of this generation of the shared state: set (to a random value) by the first
    /// replica to ask, the same for every replica until Redis loses its data.
    pub fn epoch(&mut self) -> Result<String, RedisStateError> {
        let fresh = format!("{:016x}", fastrand::u64(..));
        redis::cmd("SET").arg(EPOCH).arg(&fresh).arg("NX").exec(&mut self.conn)?;
        let v: Value = redis::cmd("GET").arg(EPOCH).query(&mut self.conn)?;
        text(&v).ok_or(RedisStateError::Reply("GET"))
    }

    /// The id of the stream's last entry ([`STREAM_START`] if it has none): read from here on,
    /// after loading the snapshot, to miss nothing.
    pub fn tail(&mut self) -> Result<String, RedisStateError> {
        let v: Value = redis::cmd("XREVRANGE")
            .arg(CHANGES)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut self.conn)?;
        let entries = items(v).ok_or(RedisStateError::Reply("XREVRANGE"))?;
        let Some(first) = entries.into_iter().next() else { return Ok(STREAM_START.into()) };
        let entry = items(first).ok_or(RedisStateError::Reply("XREVRANGE"))?;
        entry.first().and_then(text).ok_or(RedisStateError::Reply("XREVRANGE"))
    }

    /// Every entry of a hash, `COUNT` at a time, at most [`MAX_LOADED`].
    fn scan(&mut self, hash: &'static str) -> Result<Vec<Pair>, RedisStateError> {
        let mut out = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let v: Value = redis::cmd("HSCAN")
                .arg(hash)
                .arg(&cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut self.conn)?;
            let mut reply = items(v).ok_or(RedisStateError::Reply("HSCAN"))?.into_iter();
            let (Some(next), Some(pairs)) = (reply.next(), reply.next()) else {
                return Err(RedisStateError::Reply("HSCAN"));
            };
            cursor = text(&next).ok_or(RedisStateError::Reply("HSCAN"))?;
            let mut pairs = items(pairs).ok_or(RedisStateError::Reply("HSCAN"))?.into_iter();
            while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
                if let (Value::BulkString(k), Value::BulkString(v)) = (k, v) {
                    out.push((k, v));
                }
            }
            if out.len() > MAX_LOADED {
                return Err(RedisStateError::TooMany { what: hash, max: MAX_LOADED });
            }
            if cursor == "0" {
                return Ok(out);
            }
        }
    }

    /// The snapshot: nodes, holdings and manifests. Entries that do not decode are skipped.
    pub fn load(&mut self) -> Result<Loaded, RedisStateError> {
        let nodes = self
            .scan(NODES)?
            .into_iter()
            .filter_map(|(k, v)| Some((codec::decode_node_key(&k)?, codec::decode_node(&v)?)))
            .collect();
        let holdings = self
            .scan(HOLDINGS)?
            .into_iter()
            .filter_map(|(k, v)| {
                let (c, n) = codec::decode_holding_key(&k)?;
                Some((c, n, codec::decode_holding(&v)?))
            })
            .collect();
        let manifests = self
            .scan(MANIFESTS)?
            .into_iter()
            .filter(|(_, v)| v.len() <= codec::MAX_MANIFEST_VALUE)
            .filter_map(|(k, v)| Some((codec::decode_content_key(&k)?, v)))
            .collect();
        Ok((nodes, holdings, manifests))
    }

    /// Writes `changes` made by `replica`: the snapshot's hashes and the stream, in one
    /// transaction. Changes made by expiry and others go in separate stream entries.
    pub fn write(&mut self, replica: &str, changes: &[Change]) -> Result<(), RedisStateError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in changes {
            match &c.op {
                Persist::PutNode(n, e) => {
                    pipe.hset(NODES, &codec::node_key(n)[..], codec::encode_node(e)).ignore()
                }
                Persist::RemoveNode(n) => pipe.hdel(NODES, &codec::node_key(n)[..]).ignore(),
                Persist::PutHolding(cid, n, bf) => pipe
                    .hset(HOLDINGS, &codec::holding_key(cid, n)[..], codec::encode_holding(bf))
                    .ignore(),
                Persist::RemoveHolding(cid, n) => {
                    pipe.hdel(HOLDINGS, &codec::holding_key(cid, n)[..]).ignore()
                }
                Persist::PutManifest(cid, m) => {
                    pipe.hset(MANIFESTS, &cid.as_bytes()[..], m.as_ref()).ignore()
                }
                Persist::RemoveManifest(cid) => pipe.hdel(MANIFESTS, &cid.as_bytes()[..]).ignore(),
            };
        }
        let mut entry = Vec::new();
        let mut count = 0;
        let mut expiry = changes[0].expiry;
        for c in changes {
            if count > 0
                && (c.expiry != expiry
                    || entry.len() >= ENTRY_TARGET
                    || count >= codec::MAX_OPS_PER_ENTRY)
            {
                self.xadd(&mut pipe, replica, expiry, &entry);
                entry.clear();
                count = 0;
            }
            expiry = c.expiry;
            codec::encode_op(&mut entry, &c.op);
            count += 1;
        }
        self.xadd(&mut pipe, replica, expiry, &entry);
        pipe.exec(&mut self.conn)?;
        Ok(())
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, replica: &str, expiry: bool, entry: &[u8]) {
        pipe.cmd("XADD")
            .arg(CHANGES)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_changes)
            .arg("*")
            .arg("r")
            .arg(replica)
            .arg("x")
            .arg(if expiry { "1" } else { "0" })
            .arg("o")
            .arg(entry)
            .ignore();
    }

    /// Batches after `position`, waiting up to `block` for the first (it must be shorter than
    /// the connection's timeout). [`Read::Gap`] if `position` was trimmed away.
    pub fn read(&mut self, position: &str, block: Duration) -> Result<Read, RedisStateError> {
        if position != STREAM_START {
            // Trimming removes the oldest entries: if the last one read is still there, so is
            // everything after it.
            let v: Value = redis::cmd("XRANGE")
                .arg(CHANGES)
                .arg(position)
                .arg(position)
                .arg("COUNT")
                .arg(1)
                .query(&mut self.conn)?;
            if items(v).ok_or(RedisStateError::Reply("XRANGE"))?.is_empty() {
                return Ok(Read::Gap);
            }
        }
        let v: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(CHANGES)
            .arg(position)
            .query(&mut self.conn)?;
        let mut out = Read::Batches { batches: Vec::new(), position: position.into(), skipped: 0 };
        if v == Value::Nil {
            return Ok(out);
        }
        let Read::Batches { batches, position, skipped } = &mut out else { return Ok(out) };
        // [[key, [entry...]]] (a map of key → entries in RESP3).
        let streams = items(v).ok_or(RedisStateError::Reply("XREAD"))?;
        let entries = match streams.len() {
            // RESP2: one [key, entries] pair; RESP3: the map flattened to key, entries.
            1 => items(streams.into_iter().next().ok_or(RedisStateError::Reply("XREAD"))?)
                .and_then(|kv| kv.into_iter().nth(1)),
            2 => streams.into_iter().nth(1),
            _ => None,
        };
        let entries = entries.and_then(items).ok_or(RedisStateError::Reply("XREAD"))?;
        for e in entries.into_iter().take(READ_COUNT) {
            let mut e = items(e).ok_or(RedisStateError::Reply("XREAD"))?.into_iter();
            let id = e.next().as_ref().and_then(text).ok_or(RedisStateError::Reply("XREAD"))?;
            *position = id;
            match e.next().and_then(items).and_then(parse_entry) {
                Some(b) => batches.push(b),
                None => *skipped += 1,
            }
        }
        Ok(out)
    }
}

/// The fields of one stream entry; `None` if any is missing or malformed.
fn parse_entry(fields: Vec<Value>) -> Option<Batch> {
    let (mut replica, mut expiry, mut ops) = (None, None, None);
    let mut fields = fields.into_iter();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        match bulk(&k)? {
            b"r" => replica = text(&v),
            b"x" => expiry = bulk(&v).map(|x| x == b"1"),
            b"o" => ops = bulk(&v).and_then(codec::decode_batch),
            _ => {}
        }
    }
    Some(Batch { replica: replica?, expiry: expiry?, ops: ops? })
}

#[cfg(test)]
mod tests;
