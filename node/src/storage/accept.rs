//! The storage side of pushes: who may write, what it may cost, and the write itself.
//!
//! Every push request is decided before a byte of its body is read:
//! 1. a node that is not storage refuses at once;
//! 2. the pusher's user is its node key, or the user named by a device certificate that
//!    verifies for the TLS-proven node;
//! 3. a manifest push needs a granted user; a piece push needs a granted user that owns the
//!    content here, or a re-seed token from this node's tracker covering that piece;
//! 4. the announced length must be what the manifest allows (manifest: at most the encoded
//!    limit, checked by the decoder; piece: exactly that piece's length);
//! 5. the body's bytes are taken from a node-wide budget (`push_gate::BODY_BUDGET`), of which
//!    one pusher may hold at most [`PEER_SHARE`] (or one body, if larger); over it, `Busy`.
//!
//! Only then is the body read, with a deadline on steady progress ([`STALL`],
//! [`MIN_PROGRESS`]). A refused push's receive side is stopped, so its sender's writes fail
//! fast and cost us nothing. A manifest push charges the content's full size plus its
//! manifest's to the user's quota before any piece arrives (see
//! `shoal_cloud::CloudStore::claim`), so granted users bound the disk too, empty files
//! included.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, VarInt};
use shoal_cloud::{CloudError, CloudStore, PutPiece};
use shoal_core::{ContentId, DeviceCert, Manifest, NodeId, PieceIndex, UserId};
use shoal_wire::{Decoder, RejectReason, Request, Response};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Storage;

/// A push body must deliver [`MIN_PROGRESS`] bytes (or the rest) within each window this long.
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// Bytes per [`STALL`] window below which a body counts as stalled (16 KiB/s): a body of
/// `len` bytes holds its share of the budget for at most about `len / 16 KiB` seconds.
const MIN_PROGRESS: usize = 160 * 1024;
/// Stream stop code for a push refused before its body was read.
const STOP_REFUSED: u32 = 0x10;

fn reject(reason: RejectReason, text: impl Into<String>) -> Response {
    Response::Reject { reason, text: text.into() }
}

fn busy() -> Response {
    reject(RejectReason::Busy, "storage is taking too many pushes at once; retry in a moment")
}

/// Decides and carries out one push request (`PushManifest` or `PushPiece`) on its stream;
/// the answer to send (the caller sends it with the serving side's write deadlines). Not
/// cancel-safe: a cancelled body read leaves the stream half read (the caller drops it).
pub(crate) async fn serve_push(
    node: &Storage,
    peer: NodeId,
    mut recv: RecvStream,
    mut dec: Decoder,
    req: Request,
) -> Response {
    let resp = match &node.contents.cloud {
        None => Err(reject(RejectReason::BadRequest, "this node is not a storage node")),
        Some(cloud) => match req {
            Request::PushManifest { content, len, cert } => {
                let push = ManifestPush { content, len, cert };
                push_manifest(node, cloud, peer, push, &mut recv, &mut dec).await
            }
            Request::PushPiece { content, piece, len, cert, token } => {
                let push = PiecePush { content, piece, len, cert, token };
                push_piece(node, cloud, peer, push, &mut recv, &mut dec).await
            }
            _ => Err(reject(RejectReason::BadRequest, "not a push")),
        },
    };
    resp.unwrap_or_else(|refusal| {
        // Refused before (or while) reading: tell the sender to stop sending the body.
        let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
        refusal
    })
}

/// The user a push acts for, with its quota (`None`: not granted): the certificate's user if
/// it is granted and the certificate verifies for `peer`, else `peer`'s own. A certificate
/// naming a user without a grant is not checked: it could not help (the signature check is
/// spent only on granted users).
fn user_of(
    node: &Storage,
    peer: NodeId,
    cert: Option<&DeviceCert>,
) -> Result<(UserId, Option<Option<u64>>), Response> {
    let user = cert.map_or(UserId::from(peer), |c| c.user);
    let quota = node.push_gate.grants.quota(&user);
    if let (Some(c), Some(_)) = (cert, quota) {
        c.verify(&peer).map_err(|e| refuse(node, peer, &e.to_string()))?;
    }
    Ok((user, quota))
}

/// An `Unauthorized` answer, counted and logged (at debug: strangers may send these at will).
fn refuse(node: &Storage, peer: NodeId, why: &str) -> Response {
    debug!(%peer, why, "push refused");
    node.stats.pushes_refused.fetch_add(1, Ordering::Relaxed);
    reject(RejectReason::Unauthorized, why)
}

fn ungranted(user: &UserId, token: bool) -> String {
    let lead = if token { "" } else { "no re-seed token and " };
    format!("{lead}user {user} has no space here: ask the storage operator for --grant {user}")
}

/// A manifest push's header.
struct ManifestPush {
    content: ContentId,
    len: u32,
    cert: Option<DeviceCert>,
}

async fn push_manifest(
    node: &Storage,
    cloud: &CloudStore,
    peer: NodeId,
    p: ManifestPush,
    recv: &mut RecvStream,
    dec: &mut Decoder,
) -> Result<Response, Response> {
    let ManifestPush { content, len, cert } = p;
    let (user, quota) = user_of(node, peer, cert.as_ref())?;
    let Some(quota) = quota else {
        return Err(refuse(node, peer, &ungranted(&user, true)));
    };
    let known = cloud.manifest(content).map_err(internal)?;
    if let Some(m) = &known {
        if m.encode().len() != len as usize {
            return Err(reject(RejectReason::BadRequest, "manifest length does not match"));
        }
    }
    let _reserved = node.push_gate.reserve(peer, len).ok_or_else(busy)?;
    let bytes = read_body(recv, dec, len as usize).await?;
    let m = Manifest::decode(&bytes)
        .map_err(|e| reject(RejectReason::BadRequest, format!("bad manifest: {e}")))?;
    if m.content_id() != content {
        return Err(reject(RejectReason::BadRequest, "manifest does not hash to the content id"));
    }
    // The manifest's own bytes count too: an empty file is not free (else a granted user could
    // store manifests and index entries without end).
    let charge = m.size().saturating_add(bytes.len() as u64);
    let claimed = match cloud.claim(user, content, charge, quota).await {
        Ok(c) => c,
        Err(e @ CloudError::QuotaExceeded { .. }) => {
            debug!(user = %user.fmt_short(), content = %content.fmt_short(), "over quota");
            return Err(reject(RejectReason::QuotaExceeded, e.to_string()));
        }
        Err(e) => return Err(internal(e)),
    };
    if known.is_none() {
        if let Err(e) = cloud.put_manifest(&bytes).await {
            // Give the quota back: the content is not stored, so nothing is owned.
            if !claimed.already_owned {
                let _ = cloud.release(user, content).await;
            }
            return Err(storage_error(e));
        }
        node.events.content_changed(content);
    }
    let complete = cloud.content(content).ok().flatten().is_some_and(|c| c.is_complete());
    Ok(Response::Pushed { already: known.is_some(), complete })
}

/// A piece push's header.
struct PiecePush {
    content: ContentId,
    piece: PieceIndex,
    len: u32,
    cert: Option<DeviceCert>,
    token: Option<Vec<u8>>,
}

async fn push_piece(
    node: &Storage,
    cloud: &CloudStore,
    peer: NodeId,
    p: PiecePush,
    recv: &mut RecvStream,
    dec: &mut Decoder,
) -> Result<Response, Response> {
    let PiecePush { content, piece, len, cert, token } = p;
    let (user, quota) = user_of(node, peer, cert.as_ref())?;
    let granted = quota.is_some();
    let owner = granted && cloud.owns(user, content).map_err(internal)?;
    if !owner {
        match token.as_deref() {
            Some(t) => {
                node.check_token(peer, content, piece, t).map_err(|why| refuse(node, peer, why))?
            }
            None if granted => {
                let why = "this user does not own the content here: push its manifest first";
                return Err(refuse(node, peer, why));
            }
            None => return Err(refuse(node, peer, &ungranted(&user, false))),
        }
    }
    let m = match cloud.manifest(content).map_err(internal)? {
        Some(m) => m,
        None => {
            return Err(reject(
                RejectReason::NotFound,
                "storage does not know this content: push its manifest first",
            ))
        }
    };
    if piece.0 >= m.piece_count() || u64::from(len) != m.piece_len(piece) {
        return Err(reject(RejectReason::BadPiece, "no such piece, or the wrong length for it"));
    }
    let _reserved = node.push_gate.reserve(peer, len).ok_or_else(busy)?;
    let data = read_body(recv, dec, len as usize).await?;
    match cloud.put_piece(content, piece, data).await {
        Ok(PutPiece::Stored { complete }) => {
            node.events.piece_verified(content, piece);
            let down = crate::metrics::Direction::Down;
            let region = node.known.region_label(&peer);
            node.stats.metrics.bytes(down, node.known.peer_kind(&peer), region, u64::from(len));
            if node.known.is_elsewhere(&peer) {
                node.stats.cross_region_bytes.fetch_add(u64::from(len), Ordering::Relaxed);
            }
            Ok(Response::Pushed { already: false, complete })
        }
        Ok(PutPiece::AlreadyStored) => {
            let complete = cloud.content(content).ok().flatten().is_some_and(|c| c.is_complete());
            Ok(Response::Pushed { already: true, complete })
        }
        Err(CloudError::BadPiece(_)) => {
            node.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
            Err(reject(RejectReason::BadPiece, "piece does not match its hash; refused"))
        }
        Err(e) => Err(storage_error(e)),
    }
}

fn internal(e: CloudError) -> Response {
    warn!(error = %e, "storage index failed");
    reject(RejectReason::Internal, "storage cannot read its index")
}

fn storage_error(e: CloudError) -> Response {
    match e {
        CloudError::Backend(e) => reject(
            RejectReason::StorageError,
            format!("storage cannot write now; retry later ({e})"),
        ),
        e => reject(RejectReason::BadRequest, e.to_string()),
    }
}

/// Reads exactly `len` body bytes (some may sit in `dec` already), requiring steady progress.
/// The caller holds a budget reservation for `len`: that is what bounds the memory.
async fn read_body(
    recv: &mut RecvStream,
    dec: &mut Decoder,
    len: usize,
) -> Result<Bytes, Response> {
    let early = dec.take_rest();
    if early.len() > len {
        return Err(reject(RejectReason::BadRequest, "more bytes than announced"));
    }
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&early);
    let mut window_end = Instant::now() + STALL;
    let mut window_bytes = 0;
    while buf.len() < len {
        let want = len - buf.len();
        match tokio::time::timeout_at(window_end, recv.read_chunk(want, true)).await {
            Ok(Ok(Some(chunk))) => {
                buf.extend_from_slice(&chunk.bytes);
                window_bytes += chunk.bytes.len();
            }
            Ok(Ok(None)) => {
                return Err(reject(RejectReason::BadRequest, "push body ended early"));
            }
            Ok(Err(e)) => {
                debug!(error = %e, "push body failed");
                return Err(reject(RejectReason::BadRequest, "push body failed"));
            }
            Err(_) if window_bytes >= MIN_PROGRESS.min(want + window_bytes) => {
                window_end += STALL;
                window_bytes = 0;
            }
            Err(_) => {
                return Err(reject(RejectReason::BadRequest, "push body too slow; refused"));
            }
        }
    }
    Ok(Bytes::from(buf))
}
