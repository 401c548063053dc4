//! Pushing a content into storage: `shoal push`, and the tracker's re-seed directives.
//!
//! The pusher asks storage which pieces it holds (`Holding`), pushes the manifest if storage
//! does not know the content yet (which makes this node the upload's owner), then pushes only
//! the missing pieces, a few at a time, within the node's upload limit. Storage checks each
//! piece before it writes it. A storage error is retried with backoff; any other refusal ends
//! the push with its reason. An interrupted push resumes: storage keeps what it stored.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use quinn::Connection;
use serde::{Deserialize, Serialize};
use shoal_core::{Bitfield, ContentId, PeerAddr, PieceIndex};
use shoal_wire::tracker::{Directive, TrackerRequest, TrackerResponse};
use shoal_wire::{Decoder, RejectReason, Request, Response};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::io::{read_frame, write_frame};
use crate::node::Node;

/// Pieces pushed at once.
const PUSH_STREAMS: usize = 4;
/// Attempts per piece when storage cannot write.
const ATTEMPTS: u32 = 5;

/// The outcome of `shoal push`, as `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushReport {
    /// The content id.
    pub content_id: String,
    /// The file size.
    pub size: u64,
    /// Piece bytes sent in this run.
    pub pushed_bytes: u64,
    /// Storage held every piece already: nothing was sent.
    pub already_stored: bool,
    /// Storage now holds every piece.
    pub stored: bool,
    /// Wall time.
    pub seconds: f64,
}

/// One request on its own stream, with `raw` bytes after the frame; the response frame.
async fn call(conn: &Connection, req: &Request, raw: Option<&Bytes>) -> anyhow::Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, req).await?;
    if let Some(raw) = raw {
        send.write_chunk(raw.clone()).await?;
    }
    send.finish()?;
    read_frame::<Response>(&mut recv, &mut Decoder::new())
        .await?
        .context("storage closed the stream without answering")
}

/// The storage node the tracker names.
async fn find_storage(node: &Arc<Node>) -> anyhow::Result<PeerAddr> {
    let addr = node.default_tracker.clone().ok_or_else(|| {
        anyhow!("push needs a tracker to find storage: start the daemon with --tracker HOST:PORT")
    })?;
    let t = node.tracker(&addr);
    let conn = t
        .connection(Duration::from_secs(5))
        .await
        .map_err(|e| anyhow!("tracker {addr} is unreachable: {e}"))?;
    match crate::tracker::call(&conn, &TrackerRequest::FindStorage, None).await?.0 {
        TrackerResponse::StorageNodes { nodes } => {
            let n = nodes.into_iter().find(|n| !n.addrs.is_empty()).ok_or_else(|| {
                anyhow!("the tracker knows no storage node: start one with `shoal daemon --role storage --tracker {addr}`")
            })?;
            Ok(PeerAddr { node_id: Some(n.node_id), addr: n.addrs[0] })
        }
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

async fn holding(conn: &Connection, content: ContentId) -> anyhow::Result<Option<Bitfield>> {
    match call(conn, &Request::Holding { content }, None).await? {
        Response::Holding { bitfield } => Ok(bitfield),
        Response::Reject { text, .. } => bail!("storage refused: {text}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Pushes one piece, retrying with backoff while storage cannot write. Returns whether the
/// content is complete in storage after it.
async fn push_one(
    node: &Node,
    conn: &Connection,
    content: ContentId,
    piece: PieceIndex,
    token: Option<Vec<u8>>,
) -> anyhow::Result<(u64, bool)> {
    let store = node.store.clone();
    let data = Bytes::from(
        tokio::task::spawn_blocking(move || store.read_piece(content, piece))
            .await?
            .with_context(|| format!("reading piece {piece}"))?,
    );
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=ATTEMPTS {
        node.upload.acquire(data.len() as u64).await;
        let req =
            Request::PushPiece { content, piece, len: data.len() as u32, token: token.clone() };
        match call(conn, &req, Some(&data)).await? {
            Response::Pushed { already, complete } => {
                let sent = if already { 0 } else { data.len() as u64 };
                node.stats.pushed_bytes.fetch_add(sent, Ordering::Relaxed);
                return Ok((sent, complete));
            }
            Response::Reject { reason: RejectReason::StorageError, text } if attempt < ATTEMPTS => {
                warn!(%piece, %text, "storage cannot write; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Response::Reject { text, .. } => bail!("storage refused piece {piece}: {text}"),
            other => bail!("unexpected answer {other:?}"),
        }
    }
    unreachable!("the last attempt returns")
}

/// Pushes `pieces` of `content` over `conn`; returns the bytes sent and whether storage then
/// holds the whole content. Cancel-safe: what storage stored stays stored.
async fn push_pieces(
    node: &Arc<Node>,
    conn: &Connection,
    content: ContentId,
    pieces: Vec<PieceIndex>,
    token: Option<Vec<u8>>,
) -> anyhow::Result<(u64, bool)> {
    let mut queue = pieces.into_iter();
    let mut running = JoinSet::new();
    let (mut sent, mut complete) = (0, false);
    loop {
        while running.len() < PUSH_STREAMS {
            let Some(p) = queue.next() else { break };
            let (node, conn, token) = (node.clone(), conn.clone(), token.clone());
            running.spawn(async move { push_one(&node, &conn, content, p, token).await });
        }
        let Some(joined) = running.join_next().await else { break };
        let (n, c) = joined??;
        sent += n;
        complete |= c;
    }
    Ok((sent, complete))
}

/// Pushes a content this node holds into storage (found through the tracker unless given).
pub async fn push(
    node: Arc<Node>,
    content: ContentId,
    storage: Option<PeerAddr>,
) -> anyhow::Result<PushReport> {
    let started = Instant::now();
    let manifest = node.store.manifest(content)?.ok_or_else(|| {
        anyhow!("content {content} is not in this node's store: add the file first")
    })?;
    let have = node.store.bitfield(content)?.unwrap_or_default();
    let target = match storage {
        Some(s) => s,
        None => find_storage(&node).await?,
    };
    let (conn, _) = node.endpoint.connect(&target, shoal_wire::ALPN).await?;
    let stored = match holding(&conn, content).await? {
        Some(b) => b,
        None => {
            let bytes = Bytes::from(manifest.encode());
            match call(
                &conn,
                &Request::PushManifest { content, len: bytes.len() as u32 },
                Some(&bytes),
            )
            .await?
            {
                Response::Pushed { .. } => {}
                Response::Reject { text, .. } => bail!("storage refused the manifest: {text}"),
                other => bail!("unexpected answer {other:?}"),
            }
            Bitfield::new(manifest.piece_count())
        }
    };
    let missing: Vec<PieceIndex> = have.iter_ones().filter(|&p| !stored.get(p)).collect();
    let already = stored.is_complete();
    debug!(content = %content.fmt_short(), missing = missing.len(), "pushing");
    let (pushed, complete) = if missing.is_empty() {
        (0, already)
    } else {
        push_pieces(&node, &conn, content, missing, None).await?
    };
    let stored = complete || holding(&conn, content).await?.is_some_and(|b| b.is_complete());
    if stored {
        node.stored.lock().unwrap_or_else(|p| p.into_inner()).insert(content);
    }
    conn.close(0u32.into(), b"done");
    info!(content = %content.fmt_short(), pushed, stored, "push finished");
    Ok(PushReport {
        content_id: content.to_string(),
        size: manifest.size(),
        pushed_bytes: pushed,
        already_stored: already,
        stored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Carries out a re-seed directive in the background (one per content at a time).
pub(crate) fn run_directive(node: Arc<Node>, d: Directive) {
    let content = d.content;
    if !node.reseeding.lock().unwrap_or_else(|p| p.into_inner()).insert(content) {
        return;
    }
    tokio::spawn(async move {
        let result = async {
            let token = shoal_wire::tracker::ReseedToken::decode(&d.token)
                .map_err(|e| anyhow!("bad token: {e}"))?;
            let have = node.store.bitfield(content)?.unwrap_or_default();
            let pieces: Vec<PieceIndex> =
                token.pieces.iter().copied().filter(|&p| have.get(p)).collect();
            let addr = *d
                .storage
                .addrs
                .first()
                .ok_or_else(|| anyhow!("directive names no storage address"))?;
            let target = PeerAddr { node_id: Some(d.storage.node_id), addr };
            let (conn, _) = node.endpoint.connect(&target, shoal_wire::ALPN).await?;
            let r = push_pieces(&node, &conn, content, pieces, Some(d.token.clone())).await;
            conn.close(0u32.into(), b"done");
            r
        }
        .await;
        match result {
            Ok((sent, complete)) => {
                info!(content = %content.fmt_short(), sent, complete, "re-seeded pieces into storage")
            }
            Err(e) => {
                warn!(content = %content.fmt_short(), error = %format!("{e:#}"), "re-seed push failed")
            }
        }
        node.reseeding.lock().unwrap_or_else(|p| p.into_inner()).remove(&content);
    });
}
