//! Framed reads and writes on quinn streams, and the deadlines that keep silent or slow peers
//! from holding a stream (and what it pins) for ever.

use std::time::Duration;

use bytes::Bytes;
use quinn::{SendStream, VarInt};
use shoal_wire::{encode, Frame};

/// How long a peer may leave one write of ours (a chunk of at most `serve::WRITE_CHUNK`, or a frame)
/// untaken before the stream is reset: at least 12.8 KiB/s of steady progress.
pub const WRITE_STALL: Duration = Duration::from_secs(20);
/// After the last byte of a response is written, how long the peer has to acknowledge all of
/// it (at most a send window, `Limits::send_window`, is then in flight) before the stream is
/// reset. The upload slot is held until then, so slots bound what quinn buffers too.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// How long a request waits for an upload slot before it is answered `Busy`: below the
/// downloaders' 10 s deadlines (`shoal_swarm::Config::manifest_deadline` and `stall_deadline`),
/// so a crowded seed says `Busy` (and is backed off) before a fetcher would drop it as silent or
/// stalled and report it to its tracker as never delivering.
pub const SLOT_WAIT: Duration = Duration::from_secs(5);
/// Stream error code sent when a peer stops making progress and its stream is reset.
pub(crate) const RESET_STALLED: u32 = 1;

// The read loop is shared with the tracker and the testnet's probes.
pub(crate) use shoal_net::framed::{read_frame, read_frame_within, ReadError, Stalled};

/// The `len` raw bytes that follow an answer's header on `recv`: those the decoder read past
/// the header, then the rest from the stream. More than `len` already read means the sender
/// sent more than it announced (`what` names it in the error). The caller bounds `len` before.
/// Not cancel-safe.
pub(crate) async fn read_body(
    recv: &mut quinn::RecvStream,
    dec: &mut shoal_wire::Decoder,
    len: u64,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut buf = dec.take_rest().to_vec();
    if buf.len() as u64 > len {
        anyhow::bail!("{what} longer than announced");
    }
    let have = buf.len();
    buf.resize(len as usize, 0);
    recv.read_exact(&mut buf[have..]).await?;
    Ok(buf)
}

/// Why a write to a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The stream or its connection failed (the peer stopped reading it, or went away).
    #[error("writing to peer: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer took nothing for too long; the stream was reset.
    #[error(transparent)]
    Stalled(#[from] Stalled),
}

/// Writes one frame.
pub(crate) async fn write_frame<F: Frame>(
    send: &mut SendStream,
    frame: &F,
) -> Result<(), WriteError> {
    Ok(send.write_all(&encode(frame)).await?)
}

/// Hands `chunk` to quinn, which must accept it within `deadline` (it accepts once the peer's
/// flow-control window and our send window have room, so a peer that stops reading stops it).
/// On a stall the stream is reset, which drops what quinn buffered for it. Not cancel-safe:
/// part of the chunk may have been written.
pub(crate) async fn write_within(
    send: &mut SendStream,
    chunk: Bytes,
    deadline: Duration,
) -> Result<(), WriteError> {
    match tokio::time::timeout(deadline, send.write_chunk(chunk)).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(RESET_STALLED));
            Err(Stalled { what: "reading what we sent", after: deadline }.into())
        }
    }
}

/// [`write_frame`] under [`write_within`]'s deadline.
pub(crate) async fn write_frame_within<F: Frame>(
    send: &mut SendStream,
    frame: &F,
    deadline: Duration,
) -> Result<(), WriteError> {
    write_within(send, Bytes::from(encode(frame)), deadline).await
}

/// Finishes the stream and waits, at most `deadline`, until the peer has acknowledged all of
/// it, so whatever the caller holds for this stream (an upload slot) is held until quinn no
/// longer buffers its data. On a stall the stream is reset.
pub(crate) async fn finish_within(send: &mut SendStream, deadline: Duration) -> anyhow::Result<()> {
    send.finish()?;
    match tokio::time::timeout(deadline, send.stopped()).await {
        // Acknowledged, or the peer stopped reading (it has what it wants, or gave up).
        Ok(_) => Ok(()),
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(RESET_STALLED));
            Err(Stalled { what: "acknowledging the end of a stream", after: deadline }.into())
        }
    }
}
