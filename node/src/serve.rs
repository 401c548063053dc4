//! The serving side: peers' connections, control streams and requests.
//!
//! What a stranger can make this side spend is bounded before it is spent:
//! - connections: per source address, per node id and in total ([`shoal_net::Limits`], applied
//!   by `Endpoint::serve`), one control stream each;
//! - streams: at most `Limits::max_streams` open per connection (QUIC flow control), each of
//!   which must deliver its opening frame within [`OPENING_DEADLINE`];
//! - requests: checked against the content's manifest (held? piece in range?) before they take
//!   an upload slot or any bookkeeping; a slot is waited for at most [`SLOT_WAIT`] (then `Busy`),
//!   and the waiting queue is capped (over it, `Busy` at once);
//! - writes: every chunk must be taken within [`WRITE_STALL`] and the end of a stream
//!   acknowledged within [`DRAIN_DEADLINE`], else the stream is reset and its slot freed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_core::{ContentId, NodeId, PieceIndex};
use shoal_net::framed::ReadError;
use shoal_wire::{Decoder, Opening, RejectReason, Request, Response, Session};
use tracing::{debug, trace, warn, Instrument};

use crate::contents::{ServeError, Shape};
use crate::io::{finish_within, read_frame_within, write_frame_within, write_within};
use crate::node::Node;
use crate::reveal::PieceRequest;
use crate::upload::PieceKey;

mod control;
pub(crate) use control::{drive_control, PeerEvent};

/// Connections a node accepts at once (the role's `Limits::max_connections` may be lower).
pub const MAX_CONNECTIONS: usize = 512;
/// How long a peer has, after opening a stream, to send its opening frame (a request, or the
/// hello of a control stream). An honest peer sends it with the stream; a silent stream only
/// pins a task, so this can be short.
pub const OPENING_DEADLINE: Duration = Duration::from_secs(10);
/// How long a control stream's remote hello may take, from the start of the stream.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);
pub use crate::io::{DRAIN_DEADLINE, SLOT_WAIT, WRITE_STALL};
/// Send priority of control streams, above piece streams (0): connections send streams of one
/// priority in order, not round-robin, so control messages must not queue behind pieces.
pub(crate) const CONTROL_PRIORITY: i32 = 1;
/// Bytes written per rate-limiter grant.
const WRITE_CHUNK: usize = 256 * 1024;
/// Close code: the peer broke the protocol.
pub(crate) const CLOSE_PROTOCOL: u32 = 1;
/// Close code: the peer sent bad piece data and is banned.
pub(crate) const CLOSE_BANNED: u32 = 2;

/// Accepts peers on link number `link` until its endpoint closes. Cancel-safe.
pub(crate) async fn accept_loop(node: Arc<Node>, link: usize) {
    let Some(endpoint) = node.net.links.get(link).map(|l| l.endpoint.clone()) else { return };
    endpoint
        .serve(MAX_CONNECTIONS, move |conn, peer| {
            let node = node.clone();
            async move {
                // Counted on its link while it lives: heartbeats report each link's load.
                let _on = crate::net::OnLink::new(&node.net.links[link]);
                serve_connection(node.clone(), conn, peer).await
            }
        })
        .await;
}

/// Answers every stream the peer opens on `conn` until it closes. Streams are bounded by
/// QUIC's stream limit (`Limits::max_streams` open at once), so the tasks spawned are too.
pub(crate) async fn serve_connection(node: Arc<Node>, conn: Connection, peer: NodeId) {
    debug!("peer connected");
    // One control stream per connection: the session's caps (subscriptions) are then caps
    // per connection, and a peer cannot reset them by opening another.
    let control_opened = Arc::new(AtomicBool::new(false));
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                let st = conn.stats();
                return debug!(
                    reason = %e,
                    mtu = st.path.current_mtu,
                    rtt_us = st.path.rtt.as_micros() as u64,
                    cwnd = st.path.cwnd,
                    lost = st.path.lost_packets,
                    udp_tx = st.udp_tx.datagrams,
                    "peer gone"
                );
            }
        };
        let (node, conn, control_opened) = (node.clone(), conn.clone(), control_opened.clone());
        tokio::spawn(
            async move {
                if let Err(e) = handle_stream(node, &conn, peer, &control_opened, send, recv).await
                {
                    debug!(error = %format!("{e:#}"), "stream failed");
                }
            }
            .in_current_span(),
        );
    }
}

async fn handle_stream(
    node: Arc<Node>,
    conn: &Connection,
    peer: NodeId,
    control_opened: &AtomicBool,
    send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let mut dec = Decoder::new();
    let opened = read_frame_within::<Opening>(&mut recv, &mut dec, OPENING_DEADLINE, "request");
    let opening = match opened.await {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(()),
        Err(e @ ReadError::Decode(_)) => {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
            return Err(e.into());
        }
        // Silent past the deadline: dropping the streams ends them, answering nothing.
        Err(e) => return Err(e.into()),
    };
    match opening {
        Opening::Request(req) => {
            // Only pushes read on; for the rest, drop whatever arrived past the request now
            // rather than hold it while the request waits for a slot.
            let push = matches!(req, Request::PushManifest { .. } | Request::PushPiece { .. });
            let dec = if push { dec } else { Decoder::new() };
            serve_request(&node, peer, send, recv, dec, req).await
        }
        Opening::Offline(req) => {
            let parts = crate::offline::serve::Parts {
                offline: node.offline.as_deref(),
                follows: &node.follows,
                uploads: &node.uploads,
                limit: &node.upload,
                remote: conn.remote_address(),
            };
            crate::offline::serve::serve_offline(parts, peer, send, recv, req).await
        }
        Opening::Control(first) => {
            if control_opened.swap(true, Ordering::Relaxed) {
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"second control stream");
                anyhow::bail!("peer opened a second control stream");
            }
            // Haves and bitfields go ahead of the piece data queued on this connection.
            let _ = send.set_priority(CONTROL_PRIORITY);
            let session = Session::in_region(node.node_id(), peer, node.trackers.known().region());
            drive_control(node, conn, peer, session, Some(first), send, recv, dec, None).await;
            Ok(())
        }
        _ => {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"unknown stream kind");
            anyhow::bail!("peer opened an unknown kind of stream")
        }
    }
}

async fn reject(send: SendStream, reason: RejectReason, text: &str) -> anyhow::Result<()> {
    respond(send, &Response::Reject { reason, text: text.to_string() }).await
}

async fn respond(mut send: SendStream, resp: &Response) -> anyhow::Result<()> {
    write_frame_within(&mut send, resp, WRITE_STALL).await?;
    finish_within(&mut send, DRAIN_DEADLINE).await
}

async fn serve_request(
    node: &Node,
    peer: NodeId,
    send: SendStream,
    mut recv: RecvStream,
    dec: Decoder,
    req: Request,
) -> anyhow::Result<()> {
    match req {
        Request::Manifest { content } => {
            // Nothing more is read from this stream: let quinn drop whatever else arrives.
            let _ = recv.stop(VarInt::from_u32(0));
            serve_manifest(node, peer, send, content).await
        }
        Request::Piece { content, piece } => {
            let _ = recv.stop(VarInt::from_u32(0));
            serve_piece(node, peer, send, content, piece).await
        }
        Request::Holding { content } => {
            let _ = recv.stop(VarInt::from_u32(0));
            // Cheap for complete contents (no scan); a partial one's is read from the index.
            // What is kept for good (a pusher decides from it what to send, and whether the
            // content is stored), not what the pull-through cache holds meanwhile.
            match node.contents.announced(content) {
                Ok(bitfield) => respond(send, &Response::Holding { bitfield }).await,
                Err(e) => {
                    warn!(content = %content.fmt_short(), error = %format!("{e:#}"), "cannot read bitfield");
                    reject(send, RejectReason::Internal, "cannot read the store").await
                }
            }
        }
        // Authorised, bounded and read on the storage side; refused there before any body byte.
        req @ (Request::PushManifest { .. } | Request::PushPiece { .. }) => {
            respond(send, &crate::storage::serve_push(&node.storage, peer, recv, dec, req).await)
                .await
        }
        _ => reject(send, RejectReason::BadRequest, "unknown request").await,
    }
}

/// The shape of `content` if this node holds it. A storage node pulls through what it lacks
/// (the asker is answered as soon as the pull has the manifest, then the pieces as they
/// arrive) and marks a cached pulled content as used. `Err`: the rejection to send.
async fn held_or_pulled(
    node: &Node,
    content: ContentId,
) -> anyhow::Result<Result<Shape, (RejectReason, &'static str)>> {
    let mut shape = node.contents.shape(content)?;
    if let Some(pulls) = &node.pulls {
        if shape.is_none() {
            if !pulls.request(content) {
                return Ok(Err((RejectReason::Busy, "pulls busy; try later")));
            }
            pulls.wait_manifest(&node.events, node.contents.store(), content).await;
            shape = node.contents.shape(content)?;
        }
        pulls.touch(content);
    }
    Ok(shape.ok_or((RejectReason::NotFound, "content not held here")))
}

async fn serve_manifest(
    node: &Node,
    peer: NodeId,
    mut send: SendStream,
    content: ContentId,
) -> anyhow::Result<()> {
    let shape = match held_or_pulled(node, content).await? {
        Ok(shape) => shape,
        Err((reason, text)) => return reject(send, reason, text).await,
    };
    let Ok(mut slot) = node.uploads.acquire(peer, None, shape.manifest_bound(), SLOT_WAIT).await
    else {
        return reject(send, RejectReason::Busy, "upload slots busy; try later").await;
    };
    let Some(bytes) = node.contents.manifest_bytes(content)? else {
        return reject(send, RejectReason::NotFound, "content not held here").await;
    };
    let header = Response::Manifest { len: bytes.len() as u32 };
    write_frame_within(&mut send, &header, WRITE_STALL).await?;
    write_within(&mut send, Bytes::from(bytes), WRITE_STALL).await?;
    slot.sent();
    finish_within(&mut send, DRAIN_DEADLINE).await
}

async fn serve_piece(
    node: &Node,
    peer: NodeId,
    mut send: SendStream,
    content: ContentId,
    piece: PieceIndex,
) -> anyhow::Result<()> {
    // Checked against the manifest before a slot or any bookkeeping is spent on it.
    let shape = match held_or_pulled(node, content).await? {
        Ok(shape) => shape,
        Err((reason, text)) => return reject(send, reason, text).await,
    };
    let Some(len) = shape.piece_len(piece) else {
        let text = format!("no piece {piece}: the content has {} pieces", shape.pieces);
        return reject(send, RejectReason::BadRequest, &text).await;
    };
    let request = PieceRequest::new(&node.reveals, content, peer, piece);
    let key = PieceKey { content, piece, pieces: shape.pieces };
    let Ok(mut slot) = node.uploads.acquire(peer, Some(key), len, SLOT_WAIT).await else {
        return reject(send, RejectReason::Busy, "upload slots busy; try later").await;
    };
    let data = match node.contents.piece(content, piece).await {
        Ok(d) => d,
        Err(ServeError::SourceChanged) => {
            let text = "file changed on disk; no longer served";
            return reject(send, RejectReason::SourceChanged, text).await;
        }
        Err(ServeError::NotFound) => {
            return reject(send, RejectReason::NotFound, "piece not held here").await
        }
        Err(ServeError::Internal(e)) => {
            warn!(content = %content.fmt_short(), %piece, error = %e, "cannot read piece");
            return reject(send, RejectReason::Internal, "cannot read piece").await;
        }
    };
    let data = if node.corrupt > 0.0 && !data.is_empty() && fastrand::f64() < node.corrupt {
        let mut v = data.to_vec();
        let i = fastrand::usize(..v.len());
        v[i] ^= 0xff;
        Bytes::from(v)
    } else {
        data
    };
    write_frame_within(&mut send, &Response::Piece { len: data.len() as u32 }, WRITE_STALL).await?;
    let (kind, region) = node.trackers.known().labels(&peer);
    let sent_to = node.stats.metrics.bytes_to(crate::metrics::Direction::Up, kind, region);
    // Hand quinn slices of the piece itself: no copy into its send buffer.
    let mut off = 0;
    while off < data.len() {
        let chunk = data.slice(off..(off + WRITE_CHUNK).min(data.len()));
        off += chunk.len();
        let n = chunk.len() as u64;
        node.upload.acquire(n).await;
        write_within(&mut send, chunk, WRITE_STALL).await.context("sending piece")?;
        node.stats.uploaded_bytes.fetch_add(n, Ordering::Relaxed);
        sent_to.inc_by(n);
        node.stats.count_upload(content, n);
    }
    node.stats.pieces_uploaded.fetch_add(1, Ordering::Relaxed);
    trace!(content = %content.fmt_short(), %piece, "piece uploaded");
    // Every byte is with the transport: a copy sent, whatever becomes of the acknowledgement.
    slot.sent();
    request.sent();
    finish_within(&mut send, DRAIN_DEADLINE).await
}
