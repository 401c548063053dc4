//! Sending one piece of a file to a peer, checked against its hash first: what storage sends of
//! a running task, a helper of its share, a follower of what it verified. One upload slot per
//! piece (the node's slots bound the memory), the upload limit where it applies, and every
//! write under the serving side's deadlines.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use quinn::SendStream;
use shoal_core::{NodeId, PieceHash};
use shoal_net::RateLimiter;
use shoal_wire::{RejectReason, Response};

use crate::io::{finish_within, write_frame_within, write_within};
use crate::io::{DRAIN_DEADLINE, SLOT_WAIT, WRITE_STALL};
use crate::upload::Uploads;

/// A piece in a file: where it lies and what it must hash to.
#[derive(Debug, Clone)]
pub(crate) struct FilePiece {
    pub(crate) path: PathBuf,
    pub(crate) range: Range<u64>,
    pub(crate) hash: PieceHash,
}

/// Refuses a piece request: the reject frame, then the end of the stream.
pub(crate) async fn refuse(
    send: &mut SendStream,
    reason: RejectReason,
    text: impl Into<String>,
) -> anyhow::Result<()> {
    let r = Response::Reject { reason, text: text.into() };
    write_frame_within(send, &r, WRITE_STALL).await?;
    finish_within(send, DRAIN_DEADLINE).await
}

/// Sends `piece` to `peer` within an upload slot (and `limit`): the header, the bytes, the end
/// of the stream, acknowledged. Busy slots are answered `Busy`; a file that is gone or whose
/// bytes no longer hash right, `NotFound` saying `gone`. Returns the bytes delivered (0 when
/// refused). Not cancel-safe (a cancelled send leaves the stream half written).
pub(crate) async fn send_checked(
    send: &mut SendStream,
    uploads: &Arc<Uploads>,
    limit: Option<&RateLimiter>,
    peer: NodeId,
    piece: FilePiece,
    gone: &str,
) -> anyhow::Result<u64> {
    let FilePiece { path, range, hash } = piece;
    let len = range.end - range.start;
    let Ok(mut slot) = uploads.acquire(peer, None, len, SLOT_WAIT).await else {
        refuse(send, RejectReason::Busy, "upload slots busy; try later").await?;
        return Ok(0);
    };
    let data = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, range.start)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await?;
    let data = match data {
        Ok(d) if PieceHash::of(&d) == hash => Bytes::from(d),
        _ => {
            refuse(send, RejectReason::NotFound, gone).await?;
            return Ok(0);
        }
    };
    write_frame_within(send, &Response::Piece { len: len as u32 }, WRITE_STALL).await?;
    if let Some(limit) = limit {
        limit.acquire(len).await;
    }
    write_within(send, data, WRITE_STALL).await?;
    slot.sent();
    finish_within(send, DRAIN_DEADLINE).await?;
    Ok(len)
}
