//! Parallel piece hashing.
//!
//! Each worker thread claims the next piece index from a shared counter, reads that piece with
//! a positioned read into its own buffer and hashes it, so reading and hashing both run on all
//! cores and memory stays at one piece buffer per thread, whatever the file size.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::piece;
use crate::PieceHash;

/// Hashes every piece of a `size`-byte file with the piece size of the rule, using `threads`
/// workers (at least one). `read_at(offset, buf)` must fill `buf` with the bytes at
/// `offset`. `progress` is called with the byte count of each hashed piece.
pub fn hash_pieces<R, P>(
    size: u64,
    threads: usize,
    read_at: R,
    progress: P,
) -> io::Result<Vec<PieceHash>>
where
    R: Fn(u64, &mut [u8]) -> io::Result<()> + Sync,
    P: Fn(u64) + Sync,
{
    let log2 = piece::piece_log2_for(size);
    let count = piece::piece_count(size, log2);
    let piece_size = 1u64 << log2;
    let hashes = Mutex::new(vec![PieceHash([0; 32]); count as usize]);
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let threads = threads.clamp(1, count.max(1) as usize);

    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; piece_size.min(size) as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let start = i * piece_size;
                    let len = piece_size.min(size - start) as usize;
                    if let Err(e) = read_at(start, &mut buf[..len]) {
                        failed.store(true, Ordering::Relaxed);
                        // The lock is never held across a panic point.
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        return;
                    }
                    let h = PieceHash::of(&buf[..len]);
                    hashes.lock().unwrap_or_else(|p| p.into_inner())[i as usize] = h;
                    progress(len as u64);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(hashes.into_inner().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sequential_hashing() {
        let size = 3 * piece::MIN_PIECE_SIZE * 1000 + 7;
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let read = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        let got = hash_pieces(size, 4, read, |_| {}).unwrap();
        let ps = 1usize << piece::piece_log2_for(size);
        let want: Vec<_> = data.chunks(ps).map(PieceHash::of).collect();
        assert_eq!(got, want);
        assert!(hash_pieces(0, 4, read, |_| {}).unwrap().is_empty());
    }

    #[test]
    fn read_errors_surface() {
        let err = hash_pieces(1 << 20, 2, |_, _| Err(io::Error::other("boom")), |_| {});
        assert_eq!(err.unwrap_err().to_string(), "boom");
    }
}
