//! The piece-size rule.
//!
//! The piece size is the smallest power of two, at least [`MIN_PIECE_SIZE`] (16 KiB), for
//! which the file has at most [`TARGET_PIECES`] (2048) pieces, capped at [`MAX_PIECE_SIZE`]
//! (64 MiB). So a 1 MiB file has 64 pieces of 16 KiB, a 1 GiB file 2048 pieces of 512 KiB,
//! and a manifest stays at 2048 pieces (64 KiB of hashes) up to files of 128 GiB. Larger
//! files keep 64 MiB pieces, up to [`MAX_PIECES`] of them (4 TiB).
//!
//! The rule is part of the manifest's canonical form: the same bytes under the same name
//! always give the same content id.

/// log2 of the smallest piece size.
pub const MIN_PIECE_LOG2: u8 = 14;
/// log2 of the largest piece size.
pub const MAX_PIECE_LOG2: u8 = 26;
/// The smallest piece size: 16 KiB.
pub const MIN_PIECE_SIZE: u64 = 1 << MIN_PIECE_LOG2;
/// The largest piece size: 64 MiB.
pub const MAX_PIECE_SIZE: u64 = 1 << MAX_PIECE_LOG2;
/// The piece count the rule aims to stay under.
pub const TARGET_PIECES: u64 = 2048;
/// The most pieces a manifest may hold (so the largest file is 4 TiB).
pub const MAX_PIECES: u64 = 1 << 16;
/// The largest file size Shoal handles.
pub const MAX_FILE_SIZE: u64 = MAX_PIECES * MAX_PIECE_SIZE;

/// log2 of the piece size for a file of `size` bytes.
pub fn piece_log2_for(size: u64) -> u8 {
    let mut log2 = MIN_PIECE_LOG2;
    while log2 < MAX_PIECE_LOG2 && piece_count(size, log2) > TARGET_PIECES {
        log2 += 1;
    }
    log2
}

/// The number of pieces of a file of `size` bytes cut into pieces of `1 << log2` bytes.
pub fn piece_count(size: u64, log2: u8) -> u64 {
    size.div_ceil(1u64 << log2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_table() {
        let table: &[(u64, u8, u64)] = &[
            // empty file: no pieces at all
            (0, 14, 0),
            // one byte: one short piece
            (1, 14, 1),
            // exactly the target count of minimum pieces
            (2048 * MIN_PIECE_SIZE, 14, 2048),
            // one byte more doubles the piece size
            (2048 * MIN_PIECE_SIZE + 1, 15, 1025),
            // 1 GiB: 512 KiB pieces
            (1 << 30, 19, 2048),
            // 4 GiB: 2 MiB pieces
            (4 << 30, 21, 2048),
            // beyond 128 GiB the piece size stays at 64 MiB and the count grows
            (256 << 30, 26, 4096),
        ];
        for &(size, log2, count) in table {
            assert_eq!(piece_log2_for(size), log2, "size {size}");
            assert_eq!(piece_count(size, log2), count, "size {size}");
        }
    }
}
