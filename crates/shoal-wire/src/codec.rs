//! Length-prefixed framing with a hard size limit.

use bytes::{Buf, BytesMut};

/// The largest frame (type byte and body): room for the bitfield of the largest manifest.
pub const MAX_FRAME_LEN: usize = 16 * 1024;

/// Error decoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// the announced length
        len: usize,
        /// the limit
        max: usize,
    },
    /// A zero-length frame has no type byte.
    #[error("empty frame")]
    Empty,
    /// The type byte names no message of this kind.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The body is shorter or longer than its type requires, or holds a bad value.
    #[error("malformed frame of type {ty:#04x}: {what}")]
    Malformed {
        /// the frame type
        ty: u8,
        /// what is wrong
        what: &'static str,
    },
}

/// A message kind that can be framed.
pub trait Frame: Sized {
    /// The type byte and body.
    fn encode_body(&self, out: &mut Vec<u8>);
    /// Parses a type byte and body (the whole frame minus the length prefix).
    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError>;
}

/// Encodes one frame with its length prefix.
pub fn encode<F: Frame>(frame: &F) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(frame, &mut out);
    out
}

/// Appends one frame with its length prefix to `out`: a sender answering many frames reuses
/// one buffer instead of allocating one per frame.
pub fn encode_into<F: Frame>(frame: &F, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    frame.encode_body(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Accumulates bytes from a stream and yields whole frames.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for frames of at most [`MAX_FRAME_LEN`] bytes.
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder for frames of at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self { buf: BytesMut::new(), limit }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame: `Ok(None)` if more bytes are needed. After an error the stream
    /// is unusable and should be closed.
    pub fn decode<F: Frame>(&mut self) -> Result<Option<F>, DecodeError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > self.limit {
            return Err(DecodeError::FrameTooLarge { len, max: self.limit });
        }
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let frame = self.buf.split_to(len);
        F::decode_body(frame[0], &frame[1..]).map(Some)
    }

    /// Bytes received past the last decoded frame (for example the start of raw piece data).
    pub fn take_rest(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// At most `n` bytes received past the last decoded frame (raw bytes that follow a frame),
    /// leaving what comes after them (the next frame of a pipelined stream) in the decoder.
    pub fn take(&mut self, n: usize) -> BytesMut {
        self.buf.split_to(n.min(self.buf.len()))
    }
}

/// `text` cut to at most `max` bytes at a character boundary: what a frame carries of a text
/// field (a cut in the middle of a character would not decode as UTF-8).
pub(crate) fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A cursor over a frame body that turns short reads into [`DecodeError::Malformed`].
pub(crate) struct Reader<'a> {
    ty: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(ty: u8, buf: &'a [u8]) -> Self {
        Self { ty, buf }
    }

    pub(crate) fn malformed(&self, what: &'static str) -> DecodeError {
        DecodeError::Malformed { ty: self.ty, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.malformed("body too short"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    pub(crate) fn peek(&self) -> Option<&u8> {
        self.buf.first()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        // Each row: text, limit, what is kept.
        for (text, max, kept) in [
            ("abc", 5, "abc"), // shorter than the limit
            ("abc", 3, "abc"), // exactly the limit
            ("abc", 2, "ab"),  // one over
            ("aé", 2, "a"),    // `é` is 2 bytes: not split
            ("漢字", 4, "漢"), // 3-byte characters
            ("", 0, ""),       // nothing
        ] {
            assert_eq!(truncated(text, max), kept, "{text:?} at {max}");
        }
    }
}
