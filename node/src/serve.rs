//! The serving side: peers' control streams and requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_core::{ContentId, NodeId, PieceIndex};
use shoal_wire::{Decoder, Event, Message, Opening, RejectReason, Request, Response, Session};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::io::{read_frame, write_frame};
use crate::node::Node;
use crate::storage::ServeError;

/// Connections a node accepts at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Bytes written per rate-limiter grant.
const WRITE_CHUNK: usize = 256 * 1024;
/// Close code: the peer broke the protocol.
pub(crate) const CLOSE_PROTOCOL: u32 = 1;
/// Close code: the peer sent bad piece data and is banned.
pub(crate) const CLOSE_BANNED: u32 = 2;

/// What a control stream reports to a downloader.
#[derive(Debug)]
pub(crate) enum PeerEvent {
    Bitfield(NodeId, shoal_core::Bitfield),
    Have(NodeId, PieceIndex),
    Rejected(NodeId, RejectReason, String),
    Closed(NodeId, String),
}

/// Accepts peers until the endpoint closes. Cancel-safe.
pub(crate) async fn accept_loop(node: Arc<Node>) {
    let endpoint = node.endpoint.clone();
    endpoint
        .serve(MAX_CONNECTIONS, move |conn, peer| serve_connection(node.clone(), conn, peer))
        .await;
}

/// Answers every stream the peer opens on `conn` until it closes.
pub(crate) async fn serve_connection(node: Arc<Node>, conn: Connection, peer: NodeId) {
    debug!("peer connected");
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
        let (node, conn) = (node.clone(), conn.clone());
        tokio::spawn(
            async move {
                if let Err(e) = handle_stream(node, &conn, peer, send, recv).await {
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
    send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let mut dec = Decoder::new();
    let opening = match read_frame::<Opening>(&mut recv, &mut dec).await {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(()),
        Err(e) => {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
            return Err(e);
        }
    };
    match opening {
        Opening::Request(req) => serve_request(&node, peer, send, recv, dec, req).await,
        Opening::Control(first) => {
            let session = Session::new(node.node_id(), peer);
            drive_control(node, conn, peer, session, Some(first), send, recv, dec, None).await;
            Ok(())
        }
    }
}

async fn reject(mut send: SendStream, reason: RejectReason, text: &str) -> anyhow::Result<()> {
    write_frame(&mut send, &Response::Reject { reason, text: text.to_string() }).await?;
    send.finish()?;
    Ok(())
}

async fn respond(mut send: SendStream, resp: &Response) -> anyhow::Result<()> {
    write_frame(&mut send, resp).await?;
    send.finish()?;
    Ok(())
}

async fn serve_request(
    node: &Node,
    peer: NodeId,
    mut send: SendStream,
    recv: RecvStream,
    dec: Decoder,
    req: Request,
) -> anyhow::Result<()> {
    match req {
        Request::Manifest { content } => match node.manifest_bytes(content)? {
            Some(bytes) => {
                write_frame(&mut send, &Response::Manifest { len: bytes.len() as u32 }).await?;
                send.write_all(&bytes).await?;
                send.finish()?;
                Ok(())
            }
            None => reject(send, RejectReason::NotFound, "content not held here").await,
        },
        Request::Piece { content, piece } => {
            let _slot = node.uploads.acquire(content, piece).await;
            let data = match node.piece(content, piece).await {
                Ok(d) => d,
                Err(ServeError::SourceChanged) => {
                    return reject(
                        send,
                        RejectReason::SourceChanged,
                        "file changed on disk; no longer served",
                    )
                    .await
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
            write_frame(&mut send, &Response::Piece { len: data.len() as u32 }).await?;
            // Hand quinn slices of the piece itself: no copy into its send buffer.
            let mut off = 0;
            while off < data.len() {
                let chunk = data.slice(off..(off + WRITE_CHUNK).min(data.len()));
                off += chunk.len();
                let n = chunk.len() as u64;
                node.upload.acquire(n).await;
                send.write_chunk(chunk).await.context("sending piece")?;
                node.stats.uploaded_bytes.fetch_add(n, Ordering::Relaxed);
                node.count_upload(content, n);
            }
            node.stats.pieces_uploaded.fetch_add(1, Ordering::Relaxed);
            send.finish()?;
            Ok(())
        }
        Request::Holding { content } => {
            respond(send, &Response::Holding { bitfield: node.holding(content)? }).await
        }
        // Authorised, bounded and read on the storage side; refused there before any body byte.
        req @ (Request::PushManifest { .. } | Request::PushPiece { .. }) => {
            crate::storage::serve_push(node, peer, send, recv, dec, req).await
        }
        _ => reject(send, RejectReason::BadRequest, "unknown request").await,
    }
}

/// Pumps one control stream: sends what the session queues, feeds it what arrives, answers the
/// peer's subscriptions from the store, announces our new pieces to subscribers, and forwards
/// bitfields, haves and rejects of our own subscriptions to `events`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive_control(
    node: Arc<Node>,
    conn: &Connection,
    peer: NodeId,
    mut session: Session,
    first: Option<Message>,
    mut send: SendStream,
    mut recv: RecvStream,
    mut dec: Decoder,
    events: Option<mpsc::Sender<PeerEvent>>,
) {
    let mut haves = node.haves.subscribe();
    // Contents this session is about (either side subscribed), for per-content peer counts.
    let mut about: std::collections::HashSet<ContentId> = std::collections::HashSet::new();
    let reason = async {
        if let Some(m) = first {
            session.handle_message(m)?;
        }
        loop {
            while let Some(ev) = session.poll_event() {
                match ev {
                    Event::Subscribed(content) => {
                        answer_subscription(&node, &mut session, content);
                        if about.insert(content) {
                            node.peer_session(content, peer, true);
                        }
                    }
                    Event::Bitfield(c, b) => {
                        if about.insert(c) {
                            node.peer_session(c, peer, true);
                        }
                        forward(&events, PeerEvent::Bitfield(peer, b), c).await
                    }
                    Event::Have(c, p) => forward(&events, PeerEvent::Have(peer, p), c).await,
                    Event::Rejected(c, r, t) => {
                        forward(&events, PeerEvent::Rejected(peer, r, t), c).await
                    }
                    _ => {}
                }
            }
            while let Some(m) = session.poll_transmit() {
                write_frame(&mut send, &m).await?;
            }
            tokio::select! {
                frame = read_frame::<Message>(&mut recv, &mut dec) => match frame {
                    Ok(Some(m)) => session.handle_message(m)?,
                    Ok(None) => anyhow::bail!("control stream closed"),
                    Err(e) => {
                        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
                        return Err(e);
                    }
                },
                have = haves.recv() => match have {
                    Ok((c, p)) => session.announce_have(c, p),
                    // Missed some: subscribers catch up from later haves.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => anyhow::bail!("node shutting down"),
                },
            }
        }
    }
    .await;
    for c in about {
        node.peer_session(c, peer, false);
    }
    let reason: anyhow::Result<()> = reason;
    let text = match reason {
        Err(e) => {
            if let Some(pe) = e.downcast_ref::<shoal_wire::ProtocolError>() {
                debug!(error = %pe, "peer broke the protocol");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol error");
            }
            format!("{e:#}")
        }
        Ok(()) => "closed".into(),
    };
    if let Some(tx) = &events {
        let _ = tx.send(PeerEvent::Closed(peer, text)).await;
    }
}

fn answer_subscription(node: &Node, session: &mut Session, content: ContentId) {
    match node.holding(content) {
        Ok(Some(b)) => session.accept_subscription(content, b),
        Ok(None) => {
            session.reject_subscription(content, RejectReason::NotFound, "content not held here")
        }
        Err(e) => {
            warn!(error = %e, "cannot read bitfield");
            session.reject_subscription(content, RejectReason::Internal, "cannot read store")
        }
    }
}

async fn forward(events: &Option<mpsc::Sender<PeerEvent>>, ev: PeerEvent, _content: ContentId) {
    if let Some(tx) = events {
        let _ = tx.send(ev).await;
    }
}
