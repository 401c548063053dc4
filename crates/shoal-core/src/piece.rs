//! The piece-size rule.
//!
//! The piece size is the smallest power of two of at least [`SPREAD_PIECE_SIZE`] (32 KiB) for
//! which the file has at most [`TARGET_PIECES`] (1024) pieces, capped at [`MAX_PIECE_SIZE`]
//! (64 MiB); files under 2 MiB instead take the largest power of two, at least
//! [`MIN_PIECE_SIZE`] (16 KiB), that still gives them [`MIN_PIECES`] (64) pieces. So a 1 MiB
//! file has 64 pieces of 16 KiB, 2 to 32 MiB files have pieces of 32 KiB (a 32 MiB file 1024),
//! 32 to 64 MiB files pieces of 64 KiB, a 1 GiB file 1024 pieces of 1 MiB, and a manifest
//! stays at 1024 pieces (32 KiB of hashes) up to files of 64 GiB. Larger files keep 64 MiB
//! pieces, up to [`MAX_PIECES`] (4 TiB).
//!
//! Why: every piece costs a request, a stream, a have to each subscribed peer and an announce
//! delta, so the count stays near a thousand at most; but a swarm of dozens of nodes needs
//! enough pieces to spread different ones to each (the tracker's differential hints), and a
//! piece small enough that the last one (endgame) is short, so a small file still gets 64.
//! Up to 32 MiB the pieces stay at 32 KiB (the count grows to 1024) rather than 64 KiB: each
//! hop a piece takes through the swarm waits for the whole piece, and with 64 KiB pieces a
//! 1,000-node swarm finished at 1.16-1.20 times its fluid bound against 1.14 with 32 KiB,
//! while the 30-node testnet went from 1.17 to 1.08 at the same CPU per GiB (BENCHMARKS.md).
//!
//! The rule is part of the manifest's canonical form: the same bytes under the same name
//! always give the same content id. Version 1 manifests followed the rule with 64 KiB pieces
//! from 4 MiB ([`piece_log2_v1`]); they are still read, so contents added before keep their ids.

/// log2 of the smallest piece size.
pub const MIN_PIECE_LOG2: u8 = 14;
/// log2 of the piece size above which only the piece count decides.
pub const SPREAD_PIECE_LOG2: u8 = 15;
/// The same in the rule of version 1 manifests, which gave 4 to 32 MiB files 64 KiB pieces.
pub const SPREAD_PIECE_LOG2_V1: u8 = 16;
/// log2 of the largest piece size.
pub const MAX_PIECE_LOG2: u8 = 26;
/// The smallest piece size: 16 KiB.
pub const MIN_PIECE_SIZE: u64 = 1 << MIN_PIECE_LOG2;
/// The piece size of files from 2 to 32 MiB: 32 KiB.
pub const SPREAD_PIECE_SIZE: u64 = 1 << SPREAD_PIECE_LOG2;
/// The largest piece size: 64 MiB.
pub const MAX_PIECE_SIZE: u64 = 1 << MAX_PIECE_LOG2;
/// The pieces a file under 4 MiB keeps at least (if its size allows 16 KiB pieces).
pub const MIN_PIECES: u64 = 64;
/// The piece count the rule aims to stay under.
pub const TARGET_PIECES: u64 = 1024;
/// The most pieces a manifest may hold (so the largest file is 4 TiB).
pub const MAX_PIECES: u64 = 1 << 16;
/// The largest file size Shoal handles.
pub const MAX_FILE_SIZE: u64 = MAX_PIECES * MAX_PIECE_SIZE;

/// log2 of the piece size for a file of `size` bytes (the rule of the manifests this build
/// writes, version 2).
pub fn piece_log2_for(size: u64) -> u8 {
    piece_log2_spread(size, SPREAD_PIECE_LOG2)
}

/// log2 of the piece size version 1 manifests give a file of `size` bytes: read, never written.
pub fn piece_log2_v1(size: u64) -> u8 {
    piece_log2_spread(size, SPREAD_PIECE_LOG2_V1)
}

/// The rule with small files' pieces growing up to `2^spread`.
fn piece_log2_spread(size: u64, spread: u8) -> u8 {
    let mut log2 = MIN_PIECE_LOG2;
    // Small files: double the piece while at least MIN_PIECES pieces remain, up to 2^spread.
    while log2 < spread && MIN_PIECES << (log2 + 1) <= size {
        log2 += 1;
    }
    // From there on: double while there are too many pieces.
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

    const MIB: u64 = 1 << 20;

    #[test]
    fn rule_table() {
        let table: &[(u64, u8, u64)] = &[
            // empty file: no pieces at all
            (0, 14, 0),
            // one byte: one short piece
            (1, 14, 1),
            // one minimum piece, and one byte more: a second, short piece
            (MIN_PIECE_SIZE, 14, 1),
            (MIN_PIECE_SIZE + 1, 14, 2),
            // 1 MiB: exactly MIN_PIECES pieces of 16 KiB
            (MIB, 14, 64),
            // just under 2 MiB: 32 KiB pieces would give fewer than 64, so 128 of 16 KiB
            (2 * MIB - 1, 14, 128),
            // 2 MiB: 64 pieces of 32 KiB, where the small-file rule ends
            (2 * MIB, 15, 64),
            // 4 MiB: 128 pieces of 32 KiB
            (4 * MIB, 15, 128),
            // 32 MiB (the testnet's file): exactly the target count of 32 KiB pieces
            (32 * MIB, 15, 1024),
            // one byte more: 64 KiB pieces
            (32 * MIB + 1, 16, 513),
            // 64 MiB: exactly the target count of 64 KiB pieces
            (64 * MIB, 16, 1024),
            // one byte more doubles the piece size
            (64 * MIB + 1, 17, 513),
            // 1 GiB: 1 MiB pieces
            (1 << 30, 20, 1024),
            // 64 GiB: the largest piece, at the target count
            (64 << 30, 26, 1024),
            // beyond 64 GiB the piece size stays at 64 MiB and the count grows
            (256 << 30, 26, 4096),
            // the largest file: exactly MAX_PIECES pieces
            (MAX_FILE_SIZE, 26, MAX_PIECES),
        ];
        for &(size, log2, count) in table {
            assert_eq!(piece_log2_for(size), log2, "size {size}");
            assert_eq!(piece_count(size, log2), count, "size {size}");
        }
        // Version 1's rule: 64 KiB pieces from 4 MiB to 64 MiB, the same elsewhere.
        let v1: &[(u64, u8)] = &[
            (MIB, 14),
            (2 * MIB, 15),
            (4 * MIB - 1, 15),
            (4 * MIB, 16),
            (32 * MIB, 16),
            (64 * MIB, 16),
            (64 * MIB + 1, 17),
            (1 << 30, 20),
        ];
        for &(size, log2) in v1 {
            assert_eq!(piece_log2_v1(size), log2, "size {size}");
        }
    }

    #[test]
    fn piece_size_never_shrinks_as_files_grow() {
        let mut last = MIN_PIECE_LOG2;
        for size in (0..=70 * MIB).step_by(4099).chain([MIB - 1, 2 * MIB - 1, 2 * MIB + 1]) {
            let log2 = piece_log2_for(size);
            assert!((MIN_PIECE_LOG2..=MAX_PIECE_LOG2).contains(&log2));
            assert!(piece_count(size, log2) <= TARGET_PIECES, "size {size}");
            if size % 4099 == 0 {
                assert!(log2 >= last, "size {size}: {log2} after {last}");
                last = log2;
            }
        }
    }
}
