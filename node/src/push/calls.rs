//! The requests a push makes of a storage node, one per stream: the manifest, a piece, what
//! storage holds. Each has deadlines, and a push body is retried with backoff while storage
//! cannot take it.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use quinn::Connection;
use shoal_core::{Bitfield, ContentId, DeviceCert};
use shoal_wire::{Decoder, RejectReason, Request, Response};
use tracing::warn;

use crate::io::{read_frame_within, write_frame_within, write_within, WriteError, WRITE_STALL};

/// Attempts per piece when storage cannot write.
const ATTEMPTS: u32 = 5;

/// How long storage may take to answer a push once its body is sent: it verifies the piece
/// and writes it to its object store first.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);
/// Bytes of a push body handed to quinn at once, each within [`WRITE_STALL`].
const BODY_CHUNK: usize = 256 * 1024;

/// One request on its own stream, with `raw` bytes after the frame; the response frame.
/// Storage must take each write within [`WRITE_STALL`] and answer within [`ANSWER_DEADLINE`]:
/// one that accepts the stream and goes silent does not hold the push (and the content's
/// re-seed slot) for ever.
///
/// Storage may refuse a push before reading its body and stop our sending side: the refusal
/// is still read and returned, and only without one does the failed write count.
async fn call(conn: &Connection, req: &Request, raw: Option<&Bytes>) -> anyhow::Result<Response> {
    call_within(conn, req, raw, ANSWER_DEADLINE).await
}

/// [`call`], with `answer` for the answer's deadline.
async fn call_within(
    conn: &Connection,
    req: &Request,
    raw: Option<&Bytes>,
    answer: Duration,
) -> anyhow::Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame_within(&mut send, req, WRITE_STALL).await?;
    let wrote = match raw {
        Some(raw) => write_body(&mut send, raw).await,
        None => Ok(()),
    };
    let _ = send.finish();
    let what = "storage's answer to a push";
    match read_frame_within::<Response>(&mut recv, &mut Decoder::new(), answer, what).await {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => {
            wrote.context("sending to storage")?;
            bail!("storage closed the stream without answering")
        }
        Err(e) => {
            wrote.context("sending to storage")?;
            Err(e.into())
        }
    }
}

/// Hands `raw` to quinn [`BODY_CHUNK`] bytes at a time (slices, no copy), each taken within
/// [`WRITE_STALL`]. Not cancel-safe.
async fn write_body(send: &mut quinn::SendStream, raw: &Bytes) -> Result<(), WriteError> {
    let mut at = 0;
    while at < raw.len() {
        let chunk = raw.slice(at..(at + BODY_CHUNK).min(raw.len()));
        at += chunk.len();
        write_within(send, chunk, WRITE_STALL).await?;
    }
    Ok(())
}

/// Sends one push request with its body, retrying with backoff while storage is busy or cannot
/// write; the accepting answer (`already`, `complete`). `before_each` runs before every
/// attempt (the upload limiter, for piece bodies). Any other refusal is an error that names
/// `what` and carries storage's reason.
pub(super) async fn push_retrying<F, Fut>(
    conn: &Connection,
    req: &Request,
    body: &Bytes,
    what: &str,
    mut before_each: F,
) -> anyhow::Result<(bool, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        before_each().await;
        match call(conn, req, Some(body)).await? {
            Response::Pushed { already, complete } => return Ok((already, complete)),
            Response::Reject { reason: RejectReason::StorageError | RejectReason::Busy, text }
                if attempt < ATTEMPTS =>
            {
                warn!(%text, what, "storage cannot take the push now; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Response::Reject { text, .. } => bail!("storage refused {what}: {text}"),
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

/// Pushes the manifest, claiming the content for this node's user. Returns whether storage
/// held every piece already.
pub(super) async fn push_manifest(
    conn: &Connection,
    content: ContentId,
    bytes: Bytes,
    cert: Option<DeviceCert>,
) -> anyhow::Result<bool> {
    let req = Request::PushManifest { content, len: bytes.len() as u32, cert };
    let (_, complete) = push_retrying(conn, &req, &bytes, "the push", || async {}).await?;
    Ok(complete)
}

pub(super) async fn holding(
    conn: &Connection,
    content: ContentId,
) -> anyhow::Result<Option<Bitfield>> {
    match call(conn, &Request::Holding { content }, None).await? {
        Response::Holding { bitfield } => Ok(bitfield),
        Response::Reject { text, .. } => bail!("storage refused: {text}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use shoal_core::{ContentId, PeerAddr, PieceIndex};

    use super::*;

    /// A storage node that takes a push's stream and its body and never answers: the push
    /// gives up at its deadline, naming what it waited for, instead of holding for ever.
    #[tokio::test]
    async fn a_storage_node_that_never_answers_a_push_is_given_up_at_the_deadline() {
        let bind = || {
            let id = shoal_net::Identity::generate();
            shoal_net::Endpoint::bind(&id, "127.0.0.1:0".parse().unwrap(), &[shoal_wire::ALPN])
                .unwrap()
        };
        let (storage, pusher) = (bind(), bind());
        let addr = storage.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let conn = storage.accept().await.unwrap().await.unwrap();
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            // Reads everything, answers nothing, keeps the stream open.
            while recv.read_chunk(64 * 1024, true).await.ok().flatten().is_some() {}
            std::future::pending::<()>().await;
        });
        let (conn, _) =
            pusher.connect(&PeerAddr { node_id: None, addr }, shoal_wire::ALPN).await.unwrap();
        let body = Bytes::from(vec![7u8; 300 * 1024]);
        let req = Request::PushPiece {
            content: ContentId([1; 32]),
            piece: PieceIndex(0),
            len: body.len() as u32,
            cert: None,
            token: None,
        };
        // Without its own deadline the call would wait for ever; the outer one only turns such
        // a hang into a failure.
        let call = call_within(&conn, &req, Some(&body), Duration::from_millis(200));
        let err = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the push gave up by itself")
            .unwrap_err();
        assert!(format!("{err:#}").contains("storage's answer to a push"), "{err:#}");
        silent.abort();
    }
}
