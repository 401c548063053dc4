//! Framed reads and writes on quinn streams.

use anyhow::{bail, Context};
use quinn::{RecvStream, SendStream};
use shoal_wire::{encode, Decoder, Frame};

/// Reads the next frame; `Ok(None)` at a clean end of stream. Cancel-safe only between
/// frames: on cancellation mid-frame the decoder keeps the partial bytes.
pub(crate) async fn read_frame<F: Frame>(
    recv: &mut RecvStream,
    dec: &mut Decoder,
) -> anyhow::Result<Option<F>> {
    loop {
        if let Some(f) = dec.decode::<F>()? {
            return Ok(Some(f));
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => dec.feed(&chunk.bytes),
            None => {
                if dec.take_rest().is_empty() {
                    return Ok(None);
                }
                bail!("stream ended inside a frame");
            }
        }
    }
}

/// Writes one frame.
pub(crate) async fn write_frame<F: Frame>(send: &mut SendStream, frame: &F) -> anyhow::Result<()> {
    send.write_all(&encode(frame)).await.context("writing frame")?;
    Ok(())
}
