//! Talking to one peer during a fetch: the manifest, piece requests and the control stream
//! that brings its bitfield and haves. Each runs in its own task; the driver aborts it when the
//! `PeerSet` says so, so none of these needs a deadline of its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use quinn::Connection;
use shoal_core::{ContentId, NodeId, PieceIndex};
use shoal_wire::{Decoder, RejectReason, Request, Response, Session};
use tokio::sync::mpsc;

use super::links::{Counters, Waiting};
use super::{Ctx, Done, Outcome, RequestError};
use crate::io::{read_body, read_frame, write_frame};
use crate::node::Node;
use crate::serve::{drive_control, PeerEvent, CONTROL_PRIORITY};

/// The most bytes one read of piece data asks quinn for.
const READ_CHUNK: usize = 256 * 1024;

/// Asks a peer for the manifest: its bytes (at most the wire's manifest limit) and the count
/// received. Unbounded in time: the `PeerSet` deadline aborts it.
pub(super) async fn request_manifest(
    conn: &Connection,
    content: ContentId,
) -> anyhow::Result<(Vec<u8>, u64)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &Request::Manifest { content }).await?;
    send.finish()?;
    let mut dec = Decoder::new();
    match read_frame::<Response>(&mut recv, &mut dec).await?.context("no answer")? {
        Response::Manifest { len } => {
            let buf = read_body(&mut recv, &mut dec, u64::from(len), "manifest").await?;
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
    // Ahead of piece data: QUIC sends streams in order (see `shoal_net`'s transport), and a
    // have or bitfield must not wait behind megabytes of queued pieces.
    let _ = send.set_priority(CONTROL_PRIORITY);
    let mut session = Session::in_region(node.node_id(), peer, node.trackers.known().region());
    session.subscribe(content, pieces);
    drive_control(node, &conn, peer, session, None, send, recv, Decoder::new(), Some(events)).await;
}

/// Requests one piece of `peer` and writes it if it verifies.
pub(super) async fn request_piece(
    ctx: Arc<Ctx>,
    conn: Connection,
    peer: NodeId,
    piece: PieceIndex,
    counters: Arc<Counters>,
) -> Done {
    let len = ctx.manifest.piece_len(piece);
    let started = std::time::Instant::now();
    let mut bytes = 0u64;
    let outcome = match receive_piece(&ctx, &conn, piece, len, &counters, &mut bytes).await {
        Ok(Ok(data)) => {
            let dl = ctx.dl.clone();
            let write = move || {
                let written = dl.write_piece(piece, &data);
                dl.give_back(data);
                written
            };
            match tokio::task::spawn_blocking(write).await {
                Ok(Ok(true)) => {
                    let known = ctx.node.trackers.known();
                    ctx.node.stats.metrics.fetched(known.peer_kind(&peer), started.elapsed());
                    Outcome::Verified
                }
                Ok(Ok(false)) => Outcome::Bad,
                Ok(Err(e)) => Outcome::Fatal(e),
                Err(e) => Outcome::Failed(e.into()),
            }
        }
        Ok(Err((reason, text))) => Outcome::Rejected(reason, text),
        Err(e) => Outcome::Failed(e),
    };
    Done { peer, piece, bytes, outcome }
}

type Rejection = (RejectReason, String);

async fn receive_piece(
    ctx: &Ctx,
    conn: &Connection,
    piece: PieceIndex,
    len: u64,
    counters: &Counters,
    bytes: &mut u64,
) -> Result<Result<Vec<u8>, Rejection>, RequestError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &Request::Piece { content: ctx.content, piece }).await?;
    send.finish()?;
    let mut dec = Decoder::new();
    let n =
        match read_frame::<Response>(&mut recv, &mut dec).await?.ok_or(RequestError::NoAnswer)? {
            Response::Piece { len: n } => u64::from(n),
            Response::Reject { reason, text } => return Ok(Err((reason, text))),
            other => return Err(RequestError::Unexpected(Box::new(other))),
        };
    if n != len {
        return Err(RequestError::WrongLength { piece, announced: n, expected: len });
    }
    // One contiguous buffer per piece: see `Download::write_piece` for why.
    let mut buf = ctx.dl.buffer(len as usize);
    let rest = dec.take_rest();
    if rest.len() as u64 > len {
        return Err(RequestError::TooLong);
    }
    buf.extend_from_slice(&rest);
    received(ctx, counters, bytes, rest.len()).await;
    while (buf.len() as u64) < len {
        let want = READ_CHUNK.min(len as usize - buf.len());
        let chunk = recv.read_chunk(want, true).await?.ok_or(RequestError::Truncated)?;
        buf.extend_from_slice(&chunk.bytes);
        received(ctx, counters, bytes, chunk.bytes.len()).await;
    }
    Ok(Ok(buf))
}

/// Counts `n` piece bytes just read and charges them to the node's and this fetch's download
/// limits, waiting out what they owe before the next read. Charged after the read, for the
/// bytes it returned: a read returns what one packet carried, whatever size was asked for.
async fn received(ctx: &Ctx, counters: &Counters, bytes: &mut u64, n: usize) {
    let n = n as u64;
    *bytes += n;
    counters.received.fetch_add(n, Ordering::Relaxed);
    // Both limits are charged at once and the longer wait is served (not one after the other,
    // which would make the slower limit slower still).
    let wait = ctx.node.download.take(n).max(ctx.limit.take(n));
    if !wait.is_zero() {
        // Time spent on our own limits is not the peer's stall.
        let _waiting = Waiting::new(counters);
        tokio::time::sleep(wait).await;
    }
}
