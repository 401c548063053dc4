//! Talking to one peer during a fetch: dialing, the manifest, piece requests and the control
//! stream that brings its bitfield and haves.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use quinn::{Connection, VarInt};
use shoal_core::{ContentId, Manifest, NodeId, PeerAddr, PieceIndex};
use shoal_net::RateLimiter;
use shoal_store::Download;
use shoal_wire::{Decoder, RejectReason, Request, Response, Session};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{Done, Outcome, PeerState};
use crate::io::{read_frame, write_frame};
use crate::node::Node;
use crate::serve::{drive_control, PeerEvent};

/// Bytes read per rate-limiter grant.
const READ_CHUNK: usize = 256 * 1024;

/// Dials every candidate at once; keeps one connection per node id.
pub(super) async fn connect_all(
    node: &Arc<Node>,
    candidates: &[PeerAddr],
) -> anyhow::Result<BTreeMap<NodeId, PeerState>> {
    let mut dials = JoinSet::new();
    for &p in candidates {
        let node = node.clone();
        dials.spawn(async move { (p, node.endpoint.connect(&p, shoal_wire::ALPN).await) });
    }
    let mut peers = BTreeMap::new();
    let mut errors = Vec::new();
    while let Some(joined) = dials.join_next().await {
        let Ok((p, result)) = joined else { continue };
        match result {
            Ok((conn, id)) if id == node.node_id() => conn.close(VarInt::from_u32(0), b"self"),
            Ok((conn, id)) => {
                if peers.contains_key(&id) {
                    conn.close(VarInt::from_u32(0), b"duplicate");
                    continue;
                }
                debug!(peer = %id, addr = %p.addr, "connected");
                peers.insert(id, PeerState::new(conn, p.addr));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if peers.is_empty() {
        bail!("cannot reach any peer: {}", errors.join("; "));
    }
    Ok(peers)
}

/// Asks each peer in turn for the manifest until one sends one that hashes to the content id.
pub(super) async fn fetch_manifest(
    peers: &BTreeMap<NodeId, PeerState>,
    content: ContentId,
) -> anyhow::Result<(Manifest, u64)> {
    let mut reasons = Vec::new();
    let mut received = 0;
    for (id, p) in peers {
        match request_manifest(&p.conn, content).await {
            Ok((bytes, n)) => {
                received += n;
                match Manifest::decode(&bytes) {
                    Ok(m) if m.content_id() == content => return Ok((m, received)),
                    Ok(_) => reasons.push(format!("{}: sent a manifest for other content", p.addr)),
                    Err(e) => reasons.push(format!("{}: sent a bad manifest ({e})", p.addr)),
                }
                warn!(peer = %id, "peer sent a manifest that does not match the content id");
            }
            Err(e) => reasons.push(format!("{}: {e:#}", p.addr)),
        }
    }
    bail!(
        "no peer has content {content} ({}): check that the ticket is for a file they still share",
        reasons.join("; ")
    )
}

async fn request_manifest(conn: &Connection, content: ContentId) -> anyhow::Result<(Vec<u8>, u64)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &Request::Manifest { content }).await?;
    send.finish()?;
    let mut dec = Decoder::new();
    match read_frame::<Response>(&mut recv, &mut dec).await?.context("no answer")? {
        Response::Manifest { len } => {
            let mut buf = dec.take_rest().to_vec();
            if buf.len() > len as usize {
                bail!("manifest longer than announced");
            }
            let have = buf.len();
            buf.resize(len as usize, 0);
            recv.read_exact(&mut buf[have..]).await?;
            Ok((buf, u64::from(len)))
        }
        Response::Reject { text, .. } => bail!("refused: {text}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

pub(super) async fn open_control(
    node: Arc<Node>,
    conn: Connection,
    peer: NodeId,
    content: ContentId,
    pieces: u32,
    events: mpsc::Sender<PeerEvent>,
) {
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(PeerEvent::Closed(peer, e.to_string())).await;
            return;
        }
    };
    let mut session = Session::new(node.node_id(), peer);
    session.subscribe(content, pieces);
    drive_control(node, &conn, peer, session, None, send, recv, Decoder::new(), Some(events)).await;
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn request_piece(
    conn: Connection,
    peer: NodeId,
    content: ContentId,
    piece: PieceIndex,
    len: u64,
    dl: Arc<Download>,
    node: Arc<Node>,
    limit: RateLimiter,
) -> Done {
    let mut bytes = 0u64;
    let outcome = match receive_piece(&conn, content, piece, len, &node, &limit, &mut bytes).await {
        Ok(Ok(data)) => {
            match tokio::task::spawn_blocking(move || dl.write_piece(piece, &data)).await {
                Ok(Ok(true)) => Outcome::Verified,
                Ok(Ok(false)) => Outcome::Bad,
                Ok(Err(e)) => Outcome::Fatal(e),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        Ok(Err((reason, text))) => Outcome::Rejected(reason, text),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    Done { peer, piece, bytes, outcome }
}

type Rejection = (RejectReason, String);

async fn receive_piece(
    conn: &Connection,
    content: ContentId,
    piece: PieceIndex,
    len: u64,
    node: &Node,
    limit: &RateLimiter,
    bytes: &mut u64,
) -> anyhow::Result<Result<Vec<u8>, Rejection>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &Request::Piece { content, piece }).await?;
    send.finish()?;
    let mut dec = Decoder::new();
    let n = match read_frame::<Response>(&mut recv, &mut dec).await?.context("no answer")? {
        Response::Piece { len: n } => u64::from(n),
        Response::Reject { reason, text } => return Ok(Err((reason, text))),
        other => bail!("unexpected answer {other:?}"),
    };
    if n != len {
        bail!("piece {piece} announced as {n} bytes, expected {len}");
    }
    // One contiguous buffer per piece: see `Download::write_piece` for why.
    let mut buf = Vec::with_capacity(len as usize);
    buf.extend_from_slice(&dec.take_rest());
    *bytes += buf.len() as u64;
    if buf.len() as u64 > len {
        bail!("piece longer than announced");
    }
    while (buf.len() as u64) < len {
        let want = READ_CHUNK.min(len as usize - buf.len());
        node.download.acquire(want as u64).await;
        limit.acquire(want as u64).await;
        let chunk = recv.read_chunk(want, true).await?.context("stream ended inside a piece")?;
        buf.extend_from_slice(&chunk.bytes);
        *bytes += chunk.bytes.len() as u64;
    }
    Ok(Ok(buf))
}
