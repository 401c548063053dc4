//! Piece buffers used again rather than allocated per piece.
//!
//! A piece is read (or received) into one buffer of up to a few MiB, sent or hashed and written,
//! then dropped. The allocator hands buffers that large back to the kernel and maps fresh pages
//! for the next one, so at hundreds of MiB/s every piece paid a page fault per 4 KiB and the
//! kernel's zeroing of each page: several percent of a transfer's CPU. Buffers given back here
//! are kept, up to [`MAX_SPARE_BYTES`] in all, for the next piece of about the same size.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Bytes of spare buffers kept at most (per store); beyond it, given-back buffers are freed.
pub const MAX_SPARE_BYTES: usize = 32 * 1024 * 1024;
/// Spare buffers kept at most, so that finding one (a scan) stays cheap with small pieces.
const MAX_SPARE_BUFFERS: usize = 64;

/// Spare piece buffers. Cheap to clone; clones share the spares.
#[derive(Debug, Clone, Default)]
pub(crate) struct Buffers {
    // Held only to push or pop a buffer, never across I/O.
    spare: Arc<Mutex<Spare>>,
}

#[derive(Debug, Default)]
struct Spare {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl Buffers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer with room for `len` bytes: a spare one of about that size, or new.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut spare = self.lock();
        // A spare at most twice as large as asked: a much larger one would pin memory that a
        // small piece does not need.
        let fits = |b: &Vec<u8>| b.capacity() >= len && b.capacity() <= len.saturating_mul(2);
        if let Some(i) = spare.bufs.iter().position(fits) {
            let buf = spare.bufs.swap_remove(i);
            spare.bytes -= buf.capacity();
            return buf;
        }
        drop(spare);
        Vec::with_capacity(len)
    }

    /// Keeps `buf` for a later [`Buffers::take`] if the spares have room; else frees it.
    pub(crate) fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        let mut spare = self.lock();
        if spare.bytes + buf.capacity() <= MAX_SPARE_BYTES && spare.bufs.len() < MAX_SPARE_BUFFERS {
            spare.bytes += buf.capacity();
            spare.bufs.push(buf);
        }
    }

    /// `buf` as [`Bytes`] that gives the buffer back here once the last clone is dropped (when
    /// quinn has had the whole piece acknowledged, for an upload).
    pub(crate) fn lend(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, home: self.clone() })
    }
}

/// A buffer on loan as [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    home: Buffers,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_its_bytes_are_dropped_and_the_spares_stay_bounded() {
        let b = Buffers::default();
        let mut v = b.take(1000);
        v.extend_from_slice(&[7; 1000]);
        let ptr = v.as_ptr();
        let bytes = b.lend(v);
        let clone = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(clone[..], [7; 10], "a slice keeps the buffer alive");
        assert_eq!(b.lock().bufs.len(), 0);
        drop(clone);
        let again = b.take(900);
        assert_eq!(again.as_ptr(), ptr, "the same allocation is used again");
        assert!(again.is_empty());
        // Too large for a small piece: a new buffer instead.
        b.give_back(again);
        let small = b.take(100);
        assert_ne!(small.as_ptr(), ptr);
        // Over the caps, given-back buffers are freed.
        for _ in 0..3 {
            b.give_back(Vec::with_capacity(MAX_SPARE_BYTES / 2));
        }
        assert!(b.lock().bytes <= MAX_SPARE_BYTES);
        let b = Buffers::default();
        for _ in 0..2 * MAX_SPARE_BUFFERS {
            b.give_back(Vec::with_capacity(16));
        }
        assert_eq!(b.lock().bufs.len(), MAX_SPARE_BUFFERS);
    }
}
