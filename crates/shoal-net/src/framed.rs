//! Reading length-prefixed frames ([`shoal_wire::Decoder`]) from a quinn stream: the one read
//! loop that nodes, the tracker and the testnet's probes share.
//!
//! The decoder holds the size limit and partial frames; this loop only feeds it chunks and
//! tells a clean end of stream (`Ok(None)`) from one inside a frame ([`ReadError::Truncated`]).

use std::time::Duration;

use quinn::RecvStream;
use shoal_wire::{DecodeError, Decoder, Frame};

/// Bytes asked of quinn per read. The decoder's limit, not this, bounds what a frame may hold.
const READ_CHUNK: usize = 64 * 1024;

/// A peer let a deadline pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer sent or read nothing for {}s: {what}", .after.as_secs())]
pub struct Stalled {
    /// What was waited for.
    pub what: &'static str,
    /// How long.
    pub after: Duration,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes are not a frame of the expected kind, or announce one over the limit: the
    /// peer broke the protocol.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream ended with part of a frame received.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed (reset by the peer, connection lost).
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
    /// The frame did not arrive in time.
    #[error(transparent)]
    Stalled(#[from] Stalled),
}

/// Reads the next frame; `Ok(None)` at a clean end of stream. Cancel-safe only between
/// frames: on cancellation mid-frame the decoder keeps the partial bytes.
pub async fn read_frame<F: Frame>(
    recv: &mut RecvStream,
    dec: &mut Decoder,
) -> Result<Option<F>, ReadError> {
    loop {
        if let Some(f) = dec.decode::<F>()? {
            return Ok(Some(f));
        }
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => dec.feed(&chunk.bytes),
            None if dec.take_rest().is_empty() => return Ok(None),
            None => return Err(ReadError::Truncated),
        }
    }
}

/// [`read_frame`] that fails with [`ReadError::Stalled`] unless the whole frame arrives within
/// `deadline`; `what` names the frame in the error. Cancel-safe as [`read_frame`].
pub async fn read_frame_within<F: Frame>(
    recv: &mut RecvStream,
    dec: &mut Decoder,
    deadline: Duration,
    what: &'static str,
) -> Result<Option<F>, ReadError> {
    match tokio::time::timeout(deadline, read_frame(recv, dec)).await {
        Ok(r) => r,
        Err(_) => Err(Stalled { what, after: deadline }.into()),
    }
}

#[cfg(test)]
mod tests {
    use shoal_core::PeerAddr;
    use shoal_wire::{encode, Message, MAX_FRAME_LEN};

    use super::*;
    use crate::{Endpoint, Identity};

    const ALPN: &[u8] = b"shoal/test";

    /// What keeps the sending side of a test stream open.
    type Sender = (Endpoint, quinn::Connection, quinn::SendStream);

    /// Sends `bytes` (at least one) on a fresh stream, in pieces of `split` bytes, then its end
    /// unless `keep_open`; the receiving side, and the sender to hold while it is read.
    async fn stream_of(bytes: Vec<u8>, split: usize, keep_open: bool) -> (RecvStream, Sender) {
        let bind = || {
            Endpoint::bind(&Identity::generate(), "127.0.0.1:0".parse().unwrap(), &[ALPN]).unwrap()
        };
        let (a, b) = (bind(), bind());
        let addr = a.local_addr().unwrap();
        let server = tokio::spawn({
            let a = a.clone();
            async move {
                let conn = a.accept().await.unwrap().await.unwrap();
                (conn.accept_bi().await.unwrap().1, a)
            }
        });
        let (conn, _) = b.connect(&PeerAddr { node_id: None, addr }, ALPN).await.unwrap();
        let (mut send, _) = conn.open_bi().await.unwrap();
        for piece in bytes.chunks(split) {
            send.write_all(piece).await.unwrap();
        }
        if !keep_open {
            send.finish().unwrap();
        }
        let (recv, _a) = server.await.unwrap();
        (recv, (b, conn, send))
    }

    fn have(p: u32) -> Message {
        Message::Have { content: shoal_core::ContentId([7; 32]), piece: shoal_core::PieceIndex(p) }
    }

    #[tokio::test]
    async fn frames_split_across_writes_come_whole_then_a_clean_end() {
        let mut bytes = encode(&have(1));
        bytes.extend(encode(&have(2)));
        // Three bytes at a time: every frame arrives in pieces, prefixes split too.
        let (mut recv, _keep) = stream_of(bytes, 3, false).await;
        let mut dec = Decoder::new();
        assert_eq!(read_frame::<Message>(&mut recv, &mut dec).await.unwrap(), Some(have(1)));
        assert_eq!(read_frame::<Message>(&mut recv, &mut dec).await.unwrap(), Some(have(2)));
        assert_eq!(read_frame::<Message>(&mut recv, &mut dec).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_truncated() {
        let mut bytes = encode(&have(1));
        bytes.pop();
        let (mut recv, _keep) = stream_of(bytes, 64, false).await;
        let r = read_frame::<Message>(&mut recv, &mut Decoder::new()).await;
        assert!(matches!(r, Err(ReadError::Truncated)), "{r:?}");
    }

    #[tokio::test]
    async fn an_oversized_prefix_fails_before_its_body_is_read() {
        // Only the prefix is sent: the limit is checked on it alone.
        let bytes = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        let (mut recv, _keep) = stream_of(bytes, 64, true).await;
        let r = read_frame::<Message>(&mut recv, &mut Decoder::new()).await;
        assert!(matches!(r, Err(ReadError::Decode(DecodeError::FrameTooLarge { .. }))), "{r:?}");
    }

    #[tokio::test]
    async fn a_silent_stream_stalls_at_the_deadline() {
        // Half a length prefix, and then nothing.
        let (mut recv, _keep) = stream_of(vec![0, 0], 1, true).await;
        let wait = Duration::from_millis(50);
        let r = read_frame_within::<Message>(&mut recv, &mut Decoder::new(), wait, "hello").await;
        match r {
            Err(ReadError::Stalled(s)) => assert_eq!(s, Stalled { what: "hello", after: wait }),
            other => panic!("{other:?}"),
        }
    }
}
