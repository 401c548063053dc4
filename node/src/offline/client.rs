//! The device side of offline download: a user's node asks its storage node (found through the
//! tracker) to fetch a URL, watches the task, lists tasks and the user's space, and follows a
//! task: it takes each segment as soon as storage proves it, checks every piece against the
//! storage-signed hash, and at the end checks that the content's manifest lists exactly the
//! hashes storage signed before it renames the file into place.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use quinn::Connection;
use shoal_core::{ContentId, Manifest, NodeId, PeerAddr, PieceHash, PieceIndex, TaskId};
use shoal_wire::offline::{OfflineReply, OfflineRequest, PieceReply, TaskEvent, MAX_REPLY_LEN};
use shoal_wire::{Decoder, Request, Response};
use tokio::task::JoinSet;
use tracing::debug;

use super::follows::{Followed, Follows};
use super::segments::Layout;
use crate::io::{read_body, read_frame, write_frame};
use crate::push::Pusher;

/// Pieces a follower fetches at once.
const FOLLOW_STREAMS: usize = 8;

/// A connection to the storage node that runs this user's tasks.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    conn: Connection,
    node: NodeId,
    pub(crate) addr: PeerAddr,
    cert: Option<shoal_core::DeviceCert>,
    net: Arc<crate::net::Net>,
    /// Connections to other followers of a task, by node (at most [`MAX_PEERS`]). Held only
    /// for map access.
    peers: Arc<std::sync::Mutex<HashMap<NodeId, Peer>>>,
}

/// Another follower, as this one knows it.
#[derive(Debug, Clone)]
enum Peer {
    Up(Connection),
    /// Unreachable when last tried.
    Failed(Instant),
}

/// How long an unreachable follower is left alone.
const PEER_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a piece from another follower may take before storage is asked instead.
const PEER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// Other followers a follower keeps connections to, at most.
const MAX_PEERS: usize = 16;

impl Storage {
    /// Connects to the storage node the tracker names (or `addr`).
    pub(crate) async fn connect(p: &Pusher, addr: Option<PeerAddr>) -> anyhow::Result<Self> {
        let cert = crate::push::device_cert(p)?;
        // The daemon keeps one connection to its storage node: a control call or a sync round
        // costs a request, not a tracker lookup and a handshake.
        let kept = p.storage.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let kept = kept.filter(|(a, c, _)| {
            c.close_reason().is_none() && addr.is_none_or(|want| want.addr == a.addr)
        });
        let (addr, conn, node) = match kept {
            Some(k) => k,
            None => {
                let addr = match addr {
                    Some(a) => a,
                    None => crate::push::find_storage(p, std::time::Duration::ZERO).await?,
                };
                let (conn, node) = p
                    .net
                    .endpoint
                    .connect(&addr, shoal_wire::ALPN)
                    .await
                    .with_context(|| format!("cannot reach storage at {}", addr.addr))?;
                let addr = PeerAddr { node_id: Some(node), addr: addr.addr };
                *p.storage.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((addr, conn.clone(), node));
                (addr, conn, node)
            }
        };
        Ok(Self { conn, node, addr, cert, net: p.net.clone(), peers: Arc::default() })
    }

    /// One request, one reply.
    async fn call(&self, req: &OfflineRequest) -> anyhow::Result<OfflineReply> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        write_frame(&mut send, req).await?;
        send.finish()?;
        let mut dec = Decoder::with_limit(MAX_REPLY_LEN);
        match read_frame::<OfflineReply>(&mut recv, &mut dec).await? {
            Some(OfflineReply::Reject { text, .. }) => {
                bail!("storage refused: {}", shoal_core::manifest::escape_name(&text))
            }
            Some(r) => Ok(r),
            None => bail!("storage closed the stream without answering"),
        }
    }

    /// Hands `url` to storage: `(task, instant)`.
    pub(crate) async fn add(&self, url: &str, name: &str) -> anyhow::Result<(TaskId, bool)> {
        // The codec would cut longer ones, and storage would fetch another URL.
        if url.len() > shoal_wire::offline::MAX_URL_LEN {
            bail!(
                "the URL is {} bytes, more than the {} a task may name",
                url.len(),
                shoal_wire::offline::MAX_URL_LEN
            );
        }
        if name.len() > shoal_core::manifest::MAX_NAME_LEN {
            bail!(
                "the name is {} bytes, more than the {} a file name may be",
                name.len(),
                shoal_core::manifest::MAX_NAME_LEN
            );
        }
        let req =
            OfflineRequest::Add { cert: self.cert.clone(), url: url.into(), name: name.into() };
        match self.call(&req).await? {
            OfflineReply::Accepted { task, instant } => Ok((task, instant)),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// The user's tasks.
    pub(crate) async fn list(&self) -> anyhow::Result<Vec<shoal_wire::offline::TaskInfo>> {
        match self.call(&OfflineRequest::List { cert: self.cert.clone() }).await? {
            OfflineReply::Tasks(t) => Ok(t),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Cancels a task.
    pub(crate) async fn cancel(&self, task: TaskId) -> anyhow::Result<()> {
        match self.call(&OfflineRequest::Cancel { cert: self.cert.clone(), task }).await? {
            OfflineReply::Done => Ok(()),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// The user's space.
    pub(crate) async fn space(&self) -> anyhow::Result<Vec<shoal_wire::offline::SpaceEntry>> {
        match self.call(&OfflineRequest::Space { cert: self.cert.clone() }).await? {
            OfflineReply::Entries(e) => Ok(e),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Removes an entry from the user's space.
    pub(crate) async fn remove(&self, name: &str) -> anyhow::Result<()> {
        let req = OfflineRequest::SpaceRemove { cert: self.cert.clone(), name: name.into() };
        match self.call(&req).await? {
            OfflineReply::Done => Ok(()),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Streams a task's events into `on_event` until it ends; the last event (done or failed).
    pub(crate) async fn watch(
        &self,
        task: TaskId,
        mut on_event: impl FnMut(&TaskEvent),
    ) -> anyhow::Result<TaskEvent> {
        let mut events = Events::open(self, task).await?;
        loop {
            let ev = events.next().await?;
            on_event(&ev);
            if matches!(ev, TaskEvent::Done { .. } | TaskEvent::Failed { .. }) {
                return Ok(ev);
            }
        }
    }

    /// One piece: of the running task (`content` none) or of the finished content. Storage may
    /// point to another follower that has it: that one is asked, and storage again (directly)
    /// if it fails. The caller checks the bytes.
    async fn piece(
        &self,
        task: TaskId,
        content: Option<ContentId>,
        piece: PieceIndex,
        len: u64,
    ) -> anyhow::Result<Vec<u8>> {
        let Some(content) = content else {
            return match self.task_piece(&self.conn, task, piece, len, false).await? {
                Ok(data) => Ok(data),
                Err(elsewhere) => {
                    match self.of_peer(elsewhere, task, piece, len).await {
                        Ok(data) => Ok(data),
                        Err(e) => {
                            debug!(%piece, error = %format!("{e:#}"), "another follower failed; asking storage");
                            self.task_piece(&self.conn, task, piece, len, true).await?.map_err(|_| {
                            anyhow!("storage pointed elsewhere for piece {piece} when asked directly")
                        })
                        }
                    }
                }
            };
        };
        let (mut send, mut recv) = self.conn.open_bi().await?;
        write_frame(&mut send, &Request::Piece { content, piece }).await?;
        send.finish()?;
        let mut dec = Decoder::new();
        read_raw(&mut recv, &mut dec, len).await.with_context(|| format!("piece {piece}"))
    }

    /// A task piece from `conn` (storage, or another follower): its bytes, or where storage
    /// points instead.
    async fn task_piece(
        &self,
        conn: &Connection,
        task: TaskId,
        piece: PieceIndex,
        len: u64,
        direct: bool,
    ) -> anyhow::Result<Result<Vec<u8>, (NodeId, std::net::SocketAddr)>> {
        let (mut send, mut recv) = conn.open_bi().await?;
        let req = OfflineRequest::Piece { cert: self.cert.clone(), task, piece, direct };
        write_frame(&mut send, &req).await?;
        send.finish()?;
        let mut dec = Decoder::new();
        let n = match read_frame::<PieceReply>(&mut recv, &mut dec).await? {
            Some(PieceReply::Response(Response::Piece { len })) => u64::from(len),
            Some(PieceReply::Elsewhere { node, addr }) => return Ok(Err((node, addr))),
            Some(PieceReply::Response(Response::Reject { text, .. })) => {
                bail!("refused piece {piece}: {}", shoal_core::manifest::escape_name(&text))
            }
            Some(other) => bail!("unexpected answer {other:?}"),
            None => bail!("the stream closed without an answer"),
        };
        if n != len {
            bail!("piece {piece} announced as {n} bytes, not {len}");
        }
        Ok(Ok(read_body(&mut recv, &mut dec, len, "piece").await?))
    }

    /// A task piece from the follower storage pointed to.
    async fn of_peer(
        &self,
        (node, addr): (NodeId, std::net::SocketAddr),
        task: TaskId,
        piece: PieceIndex,
        len: u64,
    ) -> anyhow::Result<Vec<u8>> {
        if node == self.net.node_id() {
            bail!("storage pointed to this node");
        }
        let conn = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            match peers.get(&node) {
                Some(Peer::Up(c)) if c.close_reason().is_none() => Some(c.clone()),
                // A node that could not be reached is not tried again for a while.
                Some(Peer::Failed(at)) if at.elapsed() < PEER_RETRY => {
                    bail!("the other follower was unreachable moments ago")
                }
                _ => None,
            }
        };
        let conn = match conn {
            Some(c) => c,
            None => {
                let peer = PeerAddr { node_id: Some(node), addr };
                let dial = tokio::time::timeout(
                    PEER_DEADLINE,
                    self.net.endpoint.connect(&peer, shoal_wire::ALPN),
                );
                let dialed = match dial.await {
                    Ok(Ok((c, _))) => Ok(c),
                    Ok(Err(e)) => Err(anyhow!("cannot reach the other follower: {e}")),
                    Err(_) => Err(anyhow!("the other follower did not answer in time")),
                };
                let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
                if peers.len() >= MAX_PEERS {
                    peers.clear();
                }
                match dialed {
                    Ok(c) => {
                        peers.insert(node, Peer::Up(c.clone()));
                        c
                    }
                    Err(e) => {
                        peers.insert(node, Peer::Failed(Instant::now()));
                        return Err(e);
                    }
                }
            }
        };
        let got =
            tokio::time::timeout(PEER_DEADLINE, self.task_piece(&conn, task, piece, len, true));
        match got.await.map_err(|_| anyhow!("the other follower took too long"))?? {
            Ok(data) => Ok(data),
            Err(_) => bail!("the other follower pointed elsewhere"),
        }
    }

    /// The manifest of a content, checked against its id.
    async fn manifest(&self, content: ContentId) -> anyhow::Result<Manifest> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        write_frame(&mut send, &Request::Manifest { content }).await?;
        send.finish()?;
        let mut dec = Decoder::new();
        let bytes =
            read_raw(&mut recv, &mut dec, shoal_core::manifest::MAX_ENCODED_LEN as u64).await?;
        if ContentId::from(blake3::hash(&bytes)) != content {
            bail!("storage sent a manifest that is not content {content}'s");
        }
        Ok(Manifest::decode(&bytes)?)
    }

    /// Closes the connections to other followers; the one to storage stays for the next call.
    pub(crate) fn close(&self) {
        for p in self.peers.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if let Peer::Up(c) = p {
                c.close(0u32.into(), b"done");
            }
        }
    }
}

/// The URL the tracker maps resource `id` to.
pub(crate) async fn resolve_source(p: &Pusher, id: &str) -> anyhow::Result<String> {
    use shoal_wire::tracker::{TrackerRequest, TrackerResponse, MAX_SOURCE_ID_LEN};
    if id.is_empty() || id.len() > MAX_SOURCE_ID_LEN {
        bail!("a resource id is 1 to {MAX_SOURCE_ID_LEN} bytes");
    }
    let req = TrackerRequest::ResolveSource { id: id.to_string() };
    match p.trackers.call_own(&req, "--id").await? {
        TrackerResponse::Source { url } => Ok(url),
        TrackerResponse::Unknown => bail!(
            "the tracker knows no resource {:?} (its operator names them with --offline-source ID=URL)",
            shoal_core::manifest::escape_name(id)
        ),
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

/// A task's events from storage, each segment's proof checked before it is handed on.
struct Events {
    recv: quinn::RecvStream,
    dec: Decoder,
    task: TaskId,
    storage: NodeId,
}

impl Events {
    async fn open(storage: &Storage, task: TaskId) -> anyhow::Result<Self> {
        let (mut send, recv) = storage.conn.open_bi().await?;
        write_frame(&mut send, &OfflineRequest::Watch { cert: storage.cert.clone(), task }).await?;
        send.finish()?;
        Ok(Self { recv, dec: Decoder::with_limit(MAX_REPLY_LEN), task, storage: storage.node })
    }

    /// The next event; a segment only if storage signed it for this task and its pieces lie
    /// within the resource. Cancel-safe (what was read stays in the decoder).
    async fn next(&mut self) -> anyhow::Result<TaskEvent> {
        match read_frame::<OfflineReply>(&mut self.recv, &mut self.dec).await? {
            Some(OfflineReply::Event(TaskEvent::Segment(proof))) => {
                if proof.task != self.task {
                    bail!("storage sent a proof for another task");
                }
                proof.verify(&self.storage).map_err(|e| anyhow!("{e}"))?;
                Ok(TaskEvent::Segment(proof))
            }
            Some(OfflineReply::Event(ev)) => Ok(ev),
            Some(OfflineReply::Reject { text, .. }) => {
                bail!("storage refused: {}", shoal_core::manifest::escape_name(&text))
            }
            Some(other) => bail!("unexpected answer {other:?}"),
            None => bail!("storage ended the watch before the task ended"),
        }
    }
}

/// Reads a piece or manifest answer: the header, then exactly its bytes (at most `max`).
pub(crate) async fn read_raw(
    recv: &mut quinn::RecvStream,
    dec: &mut Decoder,
    max: u64,
) -> anyhow::Result<Vec<u8>> {
    let len = match read_frame::<Response>(recv, dec).await? {
        Some(Response::Piece { len } | Response::Manifest { len }) => u64::from(len),
        Some(Response::Reject { text, .. }) => {
            bail!("storage refused: {}", shoal_core::manifest::escape_name(&text))
        }
        Some(other) => bail!("unexpected answer {other:?}"),
        None => bail!("storage closed the stream without answering"),
    };
    if len > max {
        bail!("storage announced {len} bytes where at most {max} fit");
    }
    read_body(recv, dec, len, "answer").await
}

pub(crate) use shoal_control::FollowReport;

/// The file a follow writes before renaming it into place: beside the output, hidden.
fn part_path(output: &Path, task: TaskId) -> PathBuf {
    let name = output.file_name().map_or("download".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.{}.shoal-part", task.fmt_short()))
}

/// What a follower knows of the pieces.
struct Pieces {
    layout: Layout,
    proven: Vec<Option<PieceHash>>,
    have: Vec<bool>,
    /// What the user's other followers may take from here.
    shared: Option<Arc<Followed>>,
}

impl Pieces {
    fn new(size: u64) -> Self {
        let layout = Layout::of(size);
        let n = layout.pieces as usize;
        Self { layout, proven: vec![None; n], have: vec![false; n], shared: None }
    }

    /// Marks piece `p` held if `hash` is the one proven for it now.
    fn mark(&mut self, p: u32, hash: PieceHash) {
        if self.proven.get(p as usize) == Some(&Some(hash)) {
            self.have[p as usize] = true;
            if let Some(f) = &self.shared {
                f.hold(p, hash);
            }
        }
    }

    fn range(&self, p: u32) -> std::ops::Range<u64> {
        self.layout.bytes(&(p..p + 1))
    }
}

/// Follows `task` on `storage` into `output`: see the module docs. On any error the partial
/// file is removed and nothing is left at `output`.
pub(crate) async fn follow(
    storage: &Storage,
    follows: &Follows,
    task: TaskId,
    instant: bool,
    started: Instant,
    output: &Path,
    mut on_event: impl FnMut(&TaskEvent),
) -> anyhow::Result<FollowReport> {
    let part = part_path(output, task);
    let user = storage.cert.as_ref().map_or(storage.net.node_id().into(), |c| c.user);
    let at = Following { follows, task, part: &part, user, last: std::sync::Mutex::default() };
    let result = follow_into(storage, &at, instant, started, output, &mut on_event).await;
    if let Some(f) = at.last.lock().unwrap_or_else(|p| p.into_inner()).take() {
        follows.stop(task, &f);
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Where a follow writes, and where it says what it holds (for the user's other followers).
struct Following<'a> {
    follows: &'a Follows,
    task: TaskId,
    part: &'a Path,
    /// The user this device acts for: only its devices may take pieces from here.
    user: shoal_core::UserId,
    /// What this follow registered last (a restart registers anew).
    last: std::sync::Mutex<Option<Arc<Followed>>>,
}

async fn follow_into(
    storage: &Storage,
    at: &Following<'_>,
    instant: bool,
    started: Instant,
    output: &Path,
    on_event: &mut impl FnMut(&TaskEvent),
) -> anyhow::Result<FollowReport> {
    let (task, part) = (at.task, at.part);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut pieces: Option<Pieces> = None;
    let mut fetching: JoinSet<anyhow::Result<(u32, PieceHash)>> = JoinSet::new();
    let mut queue: Vec<u32> = Vec::new();
    let mut first_segment_s = None;
    let mut events = Events::open(storage, task).await?;
    let content = loop {
        // Keep pieces of proven segments coming while the task runs.
        while fetching.len() < FOLLOW_STREAMS {
            let (Some(p), Some(ps)) = (queue.pop(), pieces.as_ref()) else { break };
            spawn_piece(&mut fetching, storage, task, None, p, ps, &file)?;
        }
        tokio::select! {
            ev = events.next() => {
                let ev = ev?;
                on_event(&ev);
                match ev {
                    TaskEvent::Accepted { size } => {
                        fetching.abort_all();
                        queue.clear();
                        file.set_len(size)?;
                        let shared = at.follows.start(task, at.user, part.to_path_buf(), size);
                        *at.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());
                        pieces = Some(Pieces { shared: Some(shared), ..Pieces::new(size) });
                    }
                    TaskEvent::Segment(proof) => {
                        let ps = pieces.as_mut().ok_or_else(|| anyhow!("storage proved a segment before the task's size"))?;
                        if proof.size != ps.layout.len {
                            bail!("storage proved a segment of a resource of another size");
                        }
                        first_segment_s.get_or_insert(started.elapsed().as_secs_f64());
                        for (i, h) in proof.hashes.iter().enumerate() {
                            let p = (proof.first.0 + i as u32) as usize;
                            match ps.proven[p] {
                                // Storage may prove a piece once: another hash for it is a lie.
                                Some(was) if was != *h => {
                                    bail!("storage proved piece {p} with two different hashes")
                                }
                                Some(_) => {}
                                None => {
                                    ps.proven[p] = Some(*h);
                                    queue.push(p as u32);
                                }
                            }
                        }
                        // Followers of one task take its pieces in different orders, so that
                        // storage can point each to another that has a piece already.
                        fastrand::shuffle(&mut queue);
                    }
                    TaskEvent::Restarted { .. } => {
                        // Every earlier segment is void: a new Accepted follows.
                        fetching.abort_all();
                        queue.clear();
                        pieces = None;
                    }
                    TaskEvent::Done { content } => break content,
                    TaskEvent::Failed { reason } => {
                        bail!("the offline task failed: {}", shoal_core::manifest::escape_name(&reason))
                    },
                    _ => {}
                }
            }
            Some(joined) = fetching.join_next(), if !fetching.is_empty() => {
                // A piece that storage no longer serves from its temporary area is fetched
                // again once the content exists; one of an earlier version is ignored.
                if let (Ok(Ok((p, h))), Some(ps)) = (joined, pieces.as_mut()) {
                    ps.mark(p, h);
                }
            }
        }
    };
    let origin_done_s = started.elapsed().as_secs_f64();
    while let Some(joined) = fetching.join_next().await {
        if let (Ok(Ok((p, h))), Some(ps)) = (joined, pieces.as_mut()) {
            ps.mark(p, h);
        }
    }
    // The content exists: its manifest must list exactly the hashes storage signed.
    let m = storage.manifest(content).await?;
    let mut ps = match pieces {
        Some(ps) if ps.layout.len == m.size() => ps,
        Some(ps) => {
            bail!("storage's manifest is of {} bytes, the task of {}", m.size(), ps.layout.len)
        }
        None => {
            file.set_len(m.size())?;
            Pieces::new(m.size())
        }
    };
    for (i, h) in m.pieces().iter().enumerate() {
        match ps.proven[i] {
            Some(p) if p != *h => {
                bail!("storage's manifest does not list the hash it signed for piece {i}")
            }
            Some(_) => {}
            None => ps.proven[i] = Some(*h),
        }
    }
    // Every piece not yet held, then the whole file checked against the manifest (a write of
    // an aborted fetch of an earlier version may have landed late): what differs is fetched
    // again, once.
    for round in 0..2 {
        let missing: Vec<u32> =
            (0..ps.have.len() as u32).filter(|&p| !ps.have[p as usize]).collect();
        let mut queue = missing.into_iter();
        loop {
            while fetching.len() < FOLLOW_STREAMS {
                let Some(p) = queue.next() else { break };
                spawn_piece(&mut fetching, storage, task, Some(content), p, &ps, &file)?;
            }
            let Some(joined) = fetching.join_next().await else { break };
            let (p, h) = joined??;
            ps.mark(p, h);
        }
        let bad = check_file(&file, &m).await?;
        if bad.is_empty() {
            break;
        }
        if round == 1 {
            bail!(
                "{} pieces of the file do not match the manifest after fetching them again",
                bad.len()
            );
        }
        for p in bad {
            ps.have[p as usize] = false;
        }
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(part, output)
        .with_context(|| format!("cannot move the file to {}", output.display()))?;
    Ok(FollowReport {
        task: task.to_string(),
        content_id: content.to_string(),
        size: m.size(),
        first_segment_s,
        origin_done_s,
        done_s: started.elapsed().as_secs_f64(),
        instant,
    })
}

/// The pieces of `file` that do not match `m`, read 1 MiB at a time.
async fn check_file(file: &File, m: &Manifest) -> anyhow::Result<Vec<u32>> {
    let (file, m) = (file.try_clone()?, m.clone());
    let bad = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u32>> {
        let mut buf = vec![0u8; 1024 * 1024];
        let mut bad = Vec::new();
        for p in 0..m.piece_count() {
            let got = super::segments::hash_range(&file, m.piece_range(PieceIndex(p)), &mut buf)?;
            if Some(got) != m.piece_hash(PieceIndex(p)) {
                bad.push(p);
            }
        }
        Ok(bad)
    })
    .await??;
    Ok(bad)
}

/// Fetches piece `p`, checks it against its proven hash and writes it at its offset.
fn spawn_piece(
    set: &mut JoinSet<anyhow::Result<(u32, PieceHash)>>,
    storage: &Storage,
    task: TaskId,
    content: Option<ContentId>,
    p: u32,
    ps: &Pieces,
    file: &File,
) -> anyhow::Result<()> {
    let hash = ps.proven[p as usize].ok_or_else(|| anyhow!("piece {p} has no proven hash"))?;
    let range = ps.range(p);
    let file = file.try_clone()?;
    let conn = storage.clone();
    set.spawn(async move {
        let data = conn.piece(task, content, PieceIndex(p), range.end - range.start).await?;
        if data.len() as u64 != range.end - range.start || PieceHash::of(&data) != hash {
            bail!("storage sent piece {p} not matching its signed hash");
        }
        tokio::task::spawn_blocking(move || file.write_all_at(&data, range.start)).await??;
        Ok((p, hash))
    });
    Ok(())
}
