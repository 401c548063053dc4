//! The offline protocol: a user's device asks a storage node to fetch a URL into the user's
//! space, watches the task, and reads the user's space. It runs on request streams of the peer
//! connection: an [`OfflineRequest`] opens the stream (types `0x30..=0x3f`) and
//! [`OfflineReply`] frames answer it (`0x40..=0x4f`, and `0x22`, the peer protocol's reject).
//!
//! | type | frame | body |
//! |---|---|---|
//! | `0x30` | [`OfflineRequest::Add`] | cert?, url str16 (≤ [`MAX_URL_LEN`]), name str16 (≤ 255, may be empty) |
//! | `0x31` | [`OfflineRequest::Watch`] | cert?, task 16 |
//! | `0x32` | [`OfflineRequest::List`] | cert? |
//! | `0x33` | [`OfflineRequest::Cancel`] | cert?, task 16 |
//! | `0x34` | [`OfflineRequest::Space`] | cert? |
//! | `0x35` | [`OfflineRequest::SpaceRemove`] | cert?, name str16 |
//! | `0x36` | [`OfflineRequest::Piece`] | cert?, task 16, piece u32, direct u8; answered by a peer [`crate::Response::Piece`] and its bytes, or [`OfflineReply::Elsewhere`] |
//! | `0x37` | [`OfflineRequest::Assist`] | cert? (unused: 0), task 16, size u64, url str16, etag? (flag u8, str16 ≤ 256), last-modified? (flag u8, str16 ≤ 256), segment count u32, bits |
//! | `0x40` | [`OfflineReply::Accepted`] | task 16, instant u8 |
//! | `0x41` | [`TaskEvent::Accepted`] | size u64 |
//! | `0x42` | [`TaskEvent::Segment`] | task 16, size u64, first u32, count u16 (1..=[`MAX_PROOF_HASHES`]), hashes, signature 64 |
//! | `0x43` | [`TaskEvent::Progress`] | bytes u64, size u64 |
//! | `0x44` | [`TaskEvent::Done`] | content id |
//! | `0x45` | [`TaskEvent::Failed`] | reason (the rest, ≤ 200) |
//! | `0x46` | [`TaskEvent::Restarted`] | reason (the rest, ≤ 200) |
//! | `0x47` | [`OfflineReply::Tasks`] | count u16 (≤ [`MAX_LISTED`]), then per task: task 16, state u8, bytes u64, size u64, content? (flag u8, id), url str16, name str16 |
//! | `0x48` | [`OfflineReply::Entries`] | count u16 (≤ [`MAX_LISTED`]), then per entry: state u8, size u64, time ms u64, content? (flag u8, id), name str16 |
//! | `0x49` | [`OfflineReply::Done`] | |
//! | `0x4a` | [`OfflineReply::Elsewhere`] | node key 32, address (as in tickets) |
//! | `0x22` | [`OfflineReply::Reject`] | reason u8, text |
//!
//! `cert?` is a flag byte (0 or 1) and, with 1, the [`DeviceCert`] of the user the sending node
//! acts for (absent: the node's own key is its user). `str16` is a u16 length and UTF-8 bytes.
//! A watch is answered by events until `Done` or `Failed`; a `Restarted` event says the resource
//! changed at the origin and every segment before it is void. Replies may be larger than a peer
//! frame: read them with [`MAX_REPLY_LEN`].

use shoal_core::offline::SegmentProof;
use shoal_core::user::DEVICE_CERT_LEN;
use shoal_core::{manifest, ContentId, DeviceCert, PieceHash, PieceIndex, TaskId};

use crate::codec::{DecodeError, Frame, Reader};
use crate::message::{put_text, read_text, RejectReason};

/// The longest URL a task may name, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// The most hashes one segment proof carries.
pub const MAX_PROOF_HASHES: usize = 256;
/// The most tasks or space entries one reply lists.
pub const MAX_LISTED: usize = 1024;
/// The largest reply frame (a full listing of long URLs); requests keep the peer frame limit.
pub const MAX_REPLY_LEN: usize = 4 * 1024 * 1024;

/// The first frame of an offline request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfflineRequest {
    /// Fetch `url` into the user's space under `name` (empty: a name from the URL).
    Add {
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
        /// what to fetch (http or https)
        url: String,
        /// the name in the user's space
        name: String,
    },
    /// Stream the task's events, from its start.
    Watch {
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
        /// the task
        task: TaskId,
    },
    /// List the user's tasks.
    List {
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
    },
    /// Cancel a task; its temporary data is removed.
    Cancel {
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
        /// the task
        task: TaskId,
    },
    /// List the user's space.
    Space {
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
    },
    /// Remove an entry from the user's space.
    SpaceRemove {
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
        /// the entry
        name: String,
    },
    /// From a storage node to another (a helper): fetch these segments of a task's resource
    /// from the origin and prove them; the requester then pulls their pieces with
    /// [`OfflineRequest::Piece`]. Answered by `Segment` events and the end of the stream (or
    /// `Failed`); the helper keeps the pieces until the requester finishes its side.
    Assist {
        /// the task (the requester's)
        task: TaskId,
        /// the resource's size
        size: u64,
        /// the resource's URL
        url: String,
        /// its ETag when the requester found it
        etag: Option<String>,
        /// its Last-Modified when the requester found it
        last_modified: Option<String>,
        /// which segments to fetch (one bit per segment of the resource)
        segments: shoal_core::Bitfield,
    },
    /// One piece of a task still being fetched (checked by the reader against a proof).
    Piece {
        /// the user the sending node acts for, unless it is its own user
        cert: Option<DeviceCert>,
        /// the task
        task: TaskId,
        /// the piece
        piece: PieceIndex,
        /// from storage itself: never [`OfflineReply::Elsewhere`] (a follower sent elsewhere
        /// that could not get it there asks again with this)
        direct: bool,
    },
}

/// The longest validator (ETag, Last-Modified) in an [`OfflineRequest::Assist`].
pub const MAX_VALIDATOR_LEN: usize = 256;

/// What a task has done, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskEvent {
    /// Storage found the resource: its size fixes the pieces.
    Accepted {
        /// bytes
        size: u64,
    },
    /// A segment is in storage: its pieces, signed.
    Segment(SegmentProof),
    /// Bytes fetched so far.
    Progress {
        /// bytes in storage
        bytes: u64,
        /// the resource's size
        size: u64,
    },
    /// Complete: the content is in the user's space.
    Done {
        /// the content id, whose manifest lists exactly the signed hashes
        content: ContentId,
    },
    /// Failed for good; the temporary data is gone.
    Failed {
        /// why
        reason: String,
    },
    /// The resource changed at the origin: every earlier segment is void, the task starts over.
    Restarted {
        /// why
        reason: String,
    },
}

/// A task's state in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// Being fetched (or waiting to be).
    Fetching,
    /// Complete.
    Done,
    /// Failed for good.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

/// One task in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// the task
    pub task: TaskId,
    /// its state
    pub state: TaskState,
    /// bytes fetched
    pub bytes: u64,
    /// the resource's size (0 until known)
    pub size: u64,
    /// the content, once done
    pub content: Option<ContentId>,
    /// what it fetches
    pub url: String,
    /// its name in the user's space
    pub name: String,
}

/// An entry's state in a user's space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryState {
    /// Being fetched: in storage's temporary area, not counted against the user.
    Temporary,
    /// Complete, in the user's permanent space.
    Permanent,
}

/// One entry of a user's space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceEntry {
    /// its name
    pub name: String,
    /// the content, once permanent
    pub content: Option<ContentId>,
    /// bytes
    pub size: u64,
    /// temporary or permanent
    pub state: EntryState,
    /// when it was made or last changed, ms since the Unix epoch
    pub time_ms: u64,
}

/// A frame answering an [`OfflineRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfflineReply {
    /// The task is taken; `instant`: storage had the resource already, so it is done.
    Accepted {
        /// the task
        task: TaskId,
        /// done at once
        instant: bool,
    },
    /// One event of a watched task.
    Event(TaskEvent),
    /// The user's tasks.
    Tasks(Vec<TaskInfo>),
    /// The user's space.
    Entries(Vec<SpaceEntry>),
    /// Done (a cancel or a removal).
    Done,
    /// Take this piece from another follower of the task, which has it.
    Elsewhere {
        /// the follower
        node: shoal_core::NodeId,
        /// where storage sees it
        addr: std::net::SocketAddr,
    },
    /// Refused.
    Reject {
        /// why
        reason: RejectReason,
        /// a short explanation
        text: String,
    },
}

fn put_cert(out: &mut Vec<u8>, cert: Option<&DeviceCert>) {
    out.push(u8::from(cert.is_some()));
    if let Some(c) = cert {
        out.extend_from_slice(&c.encode());
    }
}

fn read_cert(r: &mut Reader<'_>) -> Result<Option<DeviceCert>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => {
            let raw = r.bytes(DEVICE_CERT_LEN)?;
            Ok(Some(DeviceCert::decode(raw).map_err(|_| r.malformed("malformed device cert"))?))
        }
        _ => Err(r.malformed("bad certificate flag")),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let s = crate::codec::truncated(s, max);
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn read_str(r: &mut Reader<'_>, max: usize) -> Result<String, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > max {
        return Err(r.malformed("string too long"));
    }
    let raw = r.bytes(len)?;
    String::from_utf8(raw.to_vec()).map_err(|_| r.malformed("string is not utf-8"))
}

fn put_content(out: &mut Vec<u8>, c: Option<&ContentId>) {
    out.push(u8::from(c.is_some()));
    if let Some(c) = c {
        out.extend_from_slice(c.as_bytes());
    }
}

fn read_content(r: &mut Reader<'_>) -> Result<Option<ContentId>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(ContentId(r.array()?))),
        _ => Err(r.malformed("bad content flag")),
    }
}

fn read_count(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    let n = usize::from(r.u16()?);
    if n > MAX_LISTED {
        return Err(r.malformed("listing too long"));
    }
    Ok(n)
}

impl Frame for OfflineRequest {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Add { cert, url, name } => {
                out.push(0x30);
                put_cert(out, cert.as_ref());
                put_str(out, url, MAX_URL_LEN);
                put_str(out, name, manifest::MAX_NAME_LEN);
            }
            Self::Watch { cert, task } => {
                out.push(0x31);
                put_cert(out, cert.as_ref());
                out.extend_from_slice(&task.0);
            }
            Self::List { cert } => {
                out.push(0x32);
                put_cert(out, cert.as_ref());
            }
            Self::Cancel { cert, task } => {
                out.push(0x33);
                put_cert(out, cert.as_ref());
                out.extend_from_slice(&task.0);
            }
            Self::Space { cert } => {
                out.push(0x34);
                put_cert(out, cert.as_ref());
            }
            Self::SpaceRemove { cert, name } => {
                out.push(0x35);
                put_cert(out, cert.as_ref());
                put_str(out, name, manifest::MAX_NAME_LEN);
            }
            Self::Assist { task, size, url, etag, last_modified, segments } => {
                out.push(0x37);
                put_cert(out, None);
                out.extend_from_slice(&task.0);
                out.extend_from_slice(&size.to_be_bytes());
                put_str(out, url, MAX_URL_LEN);
                for v in [etag, last_modified] {
                    out.push(u8::from(v.is_some()));
                    if let Some(v) = v {
                        put_str(out, v, MAX_VALIDATOR_LEN);
                    }
                }
                out.extend_from_slice(&segments.len().to_be_bytes());
                out.extend_from_slice(segments.as_bytes());
            }
            Self::Piece { cert, task, piece, direct } => {
                out.push(0x36);
                put_cert(out, cert.as_ref());
                out.extend_from_slice(&task.0);
                out.extend_from_slice(&piece.0.to_be_bytes());
                out.push(u8::from(*direct));
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let cert = match ty {
            0x30..=0x37 => read_cert(&mut r)?,
            other => return Err(DecodeError::UnknownType(other)),
        };
        let req = match ty {
            0x30 => {
                let url = read_str(&mut r, MAX_URL_LEN)?;
                let name = read_str(&mut r, manifest::MAX_NAME_LEN)?;
                Self::Add { cert, url, name }
            }
            0x31 => Self::Watch { cert, task: TaskId(r.array()?) },
            0x32 => Self::List { cert },
            0x33 => Self::Cancel { cert, task: TaskId(r.array()?) },
            0x34 => Self::Space { cert },
            0x35 => Self::SpaceRemove { cert, name: read_str(&mut r, manifest::MAX_NAME_LEN)? },
            0x36 => {
                let task = TaskId(r.array()?);
                let piece = PieceIndex(r.u32()?);
                let direct = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("bad direct flag")),
                };
                Self::Piece { cert, task, piece, direct }
            }
            _ => {
                let task = TaskId(r.array()?);
                let size = r.u64()?;
                let url = read_str(&mut r, MAX_URL_LEN)?;
                let mut validator = || -> Result<Option<String>, DecodeError> {
                    match r.u8()? {
                        0 => Ok(None),
                        1 => read_str(&mut r, MAX_VALIDATOR_LEN).map(Some),
                        _ => Err(r.malformed("bad validator flag")),
                    }
                };
                let etag = validator()?;
                let last_modified = validator()?;
                let n = r.u32()?;
                if u64::from(n) > shoal_core::piece::MAX_PIECES {
                    return Err(r.malformed("more segments than the largest resource has"));
                }
                let segments = shoal_core::Bitfield::from_bytes(n, r.rest())
                    .map_err(|_| r.malformed("segment bits do not match their count"))?;
                Self::Assist { task, size, url, etag, last_modified, segments }
            }
        };
        r.finish()?;
        Ok(req)
    }
}

fn task_state_code(s: TaskState) -> u8 {
    match s {
        TaskState::Fetching => 0,
        TaskState::Done => 1,
        TaskState::Failed => 2,
        TaskState::Cancelled => 3,
    }
}

fn task_state(r: &Reader<'_>, c: u8) -> Result<TaskState, DecodeError> {
    Ok(match c {
        0 => TaskState::Fetching,
        1 => TaskState::Done,
        2 => TaskState::Failed,
        3 => TaskState::Cancelled,
        _ => return Err(r.malformed("unknown task state")),
    })
}

impl Frame for OfflineReply {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Accepted { task, instant } => {
                out.push(0x40);
                out.extend_from_slice(&task.0);
                out.push(u8::from(*instant));
            }
            Self::Event(TaskEvent::Accepted { size }) => {
                out.push(0x41);
                out.extend_from_slice(&size.to_be_bytes());
            }
            Self::Event(TaskEvent::Segment(p)) => {
                out.push(0x42);
                out.extend_from_slice(&p.task.0);
                out.extend_from_slice(&p.size.to_be_bytes());
                out.extend_from_slice(&p.first.0.to_be_bytes());
                // Senders build proofs of at most MAX_PROOF_HASHES; more would not decode.
                out.extend_from_slice(&(p.hashes.len() as u16).to_be_bytes());
                for h in &p.hashes {
                    out.extend_from_slice(h.as_bytes());
                }
                out.extend_from_slice(&p.signature);
            }
            Self::Event(TaskEvent::Progress { bytes, size }) => {
                out.push(0x43);
                out.extend_from_slice(&bytes.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
            }
            Self::Event(TaskEvent::Done { content }) => {
                out.push(0x44);
                out.extend_from_slice(content.as_bytes());
            }
            Self::Event(TaskEvent::Failed { reason }) => {
                out.push(0x45);
                put_text(out, reason);
            }
            Self::Event(TaskEvent::Restarted { reason }) => {
                out.push(0x46);
                put_text(out, reason);
            }
            Self::Tasks(tasks) => {
                out.push(0x47);
                let tasks = &tasks[..tasks.len().min(MAX_LISTED)];
                out.extend_from_slice(&(tasks.len() as u16).to_be_bytes());
                for t in tasks {
                    out.extend_from_slice(&t.task.0);
                    out.push(task_state_code(t.state));
                    out.extend_from_slice(&t.bytes.to_be_bytes());
                    out.extend_from_slice(&t.size.to_be_bytes());
                    put_content(out, t.content.as_ref());
                    put_str(out, &t.url, MAX_URL_LEN);
                    put_str(out, &t.name, manifest::MAX_NAME_LEN);
                }
            }
            Self::Entries(entries) => {
                out.push(0x48);
                let entries = &entries[..entries.len().min(MAX_LISTED)];
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for e in entries {
                    out.push(u8::from(e.state == EntryState::Permanent));
                    out.extend_from_slice(&e.size.to_be_bytes());
                    out.extend_from_slice(&e.time_ms.to_be_bytes());
                    put_content(out, e.content.as_ref());
                    put_str(out, &e.name, manifest::MAX_NAME_LEN);
                }
            }
            Self::Done => out.push(0x49),
            Self::Elsewhere { node, addr } => {
                out.push(0x4a);
                out.extend_from_slice(node.public_key_bytes());
                shoal_core::ticket::encode_addr(out, *addr);
            }
            Self::Reject { reason, text } => {
                out.push(0x22);
                out.push(reason.code());
                put_text(out, text);
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(ty, body);
        let reply = match ty {
            0x40 => {
                let task = TaskId(r.array()?);
                let instant = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("bad instant flag")),
                };
                Self::Accepted { task, instant }
            }
            0x41 => Self::Event(TaskEvent::Accepted { size: r.u64()? }),
            0x42 => {
                let task = TaskId(r.array()?);
                let size = r.u64()?;
                let first = PieceIndex(r.u32()?);
                let count = usize::from(r.u16()?);
                if count == 0 || count > MAX_PROOF_HASHES {
                    return Err(r.malformed("segment proof hash count out of range"));
                }
                let hashes =
                    (0..count).map(|_| r.array().map(PieceHash)).collect::<Result<_, _>>()?;
                let signature = r.array()?;
                Self::Event(TaskEvent::Segment(SegmentProof {
                    task,
                    size,
                    first,
                    hashes,
                    signature,
                }))
            }
            0x43 => Self::Event(TaskEvent::Progress { bytes: r.u64()?, size: r.u64()? }),
            0x44 => Self::Event(TaskEvent::Done { content: ContentId(r.array()?) }),
            0x45 => Self::Event(TaskEvent::Failed { reason: read_text(&mut r)? }),
            0x46 => Self::Event(TaskEvent::Restarted { reason: read_text(&mut r)? }),
            0x47 => {
                let n = read_count(&mut r)?;
                let mut tasks = Vec::with_capacity(n);
                for _ in 0..n {
                    let task = TaskId(r.array()?);
                    let code = r.u8()?;
                    let state = task_state(&r, code)?;
                    let bytes = r.u64()?;
                    let size = r.u64()?;
                    let content = read_content(&mut r)?;
                    let url = read_str(&mut r, MAX_URL_LEN)?;
                    let name = read_str(&mut r, manifest::MAX_NAME_LEN)?;
                    tasks.push(TaskInfo { task, state, bytes, size, content, url, name });
                }
                Self::Tasks(tasks)
            }
            0x48 => {
                let n = read_count(&mut r)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let state = match r.u8()? {
                        0 => EntryState::Temporary,
                        1 => EntryState::Permanent,
                        _ => return Err(r.malformed("unknown entry state")),
                    };
                    let size = r.u64()?;
                    let time_ms = r.u64()?;
                    let content = read_content(&mut r)?;
                    let name = read_str(&mut r, manifest::MAX_NAME_LEN)?;
                    entries.push(SpaceEntry { name, content, size, state, time_ms });
                }
                Self::Entries(entries)
            }
            0x49 => Self::Done,
            0x4a => {
                let key = r.array()?;
                let node = shoal_core::NodeId::from_public_key_bytes(key)
                    .map_err(|_| r.malformed("node key is not an ed25519 key"))?;
                let raw = r.rest();
                let family = *raw.first().ok_or_else(|| r.malformed("no address"))?;
                let len = shoal_core::ticket::encoded_addr_len(family)
                    .ok_or_else(|| r.malformed("bad address family"))?;
                if raw.len() != len {
                    return Err(r.malformed("address of the wrong length"));
                }
                let addr = shoal_core::ticket::decode_addr(raw)
                    .ok_or_else(|| r.malformed("bad address"))?;
                Self::Elsewhere { node, addr }
            }
            0x22 => {
                let reason = RejectReason::from_code(r.u8()?);
                Self::Reject { reason, text: read_text(&mut r)? }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(reply)
    }
}

/// The answer to an [`OfflineRequest::Piece`]: the piece's header (its bytes follow), a
/// refusal, or where else to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceReply {
    /// A peer protocol answer: [`crate::Response::Piece`] (bytes follow) or a reject.
    Response(crate::Response),
    /// Take it from another follower.
    Elsewhere {
        /// the follower
        node: shoal_core::NodeId,
        /// where storage sees it
        addr: std::net::SocketAddr,
    },
}

impl Frame for PieceReply {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Response(r) => r.encode_body(out),
            Self::Elsewhere { node, addr } => {
                OfflineReply::Elsewhere { node: *node, addr: *addr }.encode_body(out)
            }
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        match ty {
            0x4a => match OfflineReply::decode_body(ty, body)? {
                OfflineReply::Elsewhere { node, addr } => Ok(Self::Elsewhere { node, addr }),
                _ => Err(DecodeError::UnknownType(ty)),
            },
            _ => crate::Response::decode_body(ty, body).map(Self::Response),
        }
    }
}

#[cfg(test)]
mod tests;
