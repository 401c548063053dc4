//! The manifest: what a content is, in a canonical, versioned binary encoding.
//!
//! Encoding, version 2 (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `SHM` followed by the version byte `0x02` |
//! | 8 | file size in bytes |
//! | 1 | log2 of the piece size, which must equal [`piece::piece_log2_for`] of the size |
//! | 2 | name length N, 1..=255 |
//! | N | name, UTF-8, a plain file name (no `/`, no NUL, not `.` or `..`) |
//! | 32 × count | BLAKE3 hash of each piece, count = ceil(size / piece size) |
//!
//! Nothing may follow. Every value has exactly one encoding, so the [`ContentId`], the
//! BLAKE3 hash of these bytes, names the content and lets anyone holding it verify the
//! manifest and, through it, every piece.
//!
//! Version 1 is the same but for its version byte `0x01` and its piece-size rule
//! ([`piece::piece_log2_v1`]: 64 KiB pieces for 4 to 32 MiB files, where version 2 has 32 KiB).
//! It is read and kept as it is (a decoded manifest encodes to the same bytes, so contents
//! added before keep their ids); new manifests are version 2.

use std::ops::Range;

use crate::piece::{self, MAX_FILE_SIZE, MAX_PIECES};
use crate::{ContentId, PieceHash, PieceIndex};

const MAGIC: [u8; 3] = *b"SHM";
/// The manifest encoding version this crate writes.
pub const VERSION: u8 = 2;
/// The oldest version it reads.
pub const MIN_VERSION: u8 = 1;
/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
const HEADER_LEN: usize = 4 + 8 + 1 + 2;
/// The largest encoded manifest.
pub const MAX_ENCODED_LEN: usize = HEADER_LEN + MAX_NAME_LEN + 32 * MAX_PIECES as usize;

/// Error decoding or building a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The bytes end before the manifest does, or go on after it.
    #[error("manifest is {got} bytes, expected {expected}")]
    Length {
        /// bytes present
        got: usize,
        /// bytes the header implies
        expected: usize,
    },
    /// Not a Shoal manifest.
    #[error("not a shoal manifest (bad magic)")]
    Magic,
    /// A manifest version this build does not read.
    #[error("manifest version {0} is not supported (this build reads versions {MIN_VERSION} to {VERSION}: update shoal)")]
    Version(u8),
    /// The piece size is not the one the rule gives for this size.
    #[error("piece size 2^{got} is not canonical for {size} bytes (expected 2^{expected})")]
    PieceSize {
        /// log2 in the manifest
        got: u8,
        /// log2 the rule gives
        expected: u8,
        /// file size
        size: u64,
    },
    /// The file is larger than Shoal handles.
    #[error("file of {0} bytes is larger than the 4 TiB shoal handles")]
    TooLarge(u64),
    /// The name is empty, too long, not UTF-8, or not a plain file name.
    #[error("bad file name {0:?}: must be 1 to 255 bytes of UTF-8 without '/' or NUL")]
    Name(String),
    /// The number of hashes does not match the size.
    #[error("{got} piece hashes for a file of {size} bytes (expected {expected})")]
    PieceCount {
        /// hashes given
        got: usize,
        /// hashes the size implies
        expected: u64,
        /// file size
        size: u64,
    },
}

/// log2 of the piece size manifests of `version` give a file of `size` bytes.
fn rule(version: u8, size: u64) -> u8 {
    if version == 1 {
        piece::piece_log2_v1(size)
    } else {
        piece::piece_log2_for(size)
    }
}

/// A content's name, size, piece size and piece hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The encoding's version: [`VERSION`] for a new manifest, that of the bytes decoded.
    version: u8,
    name: String,
    size: u64,
    piece_log2: u8,
    pieces: Vec<PieceHash>,
    id: ContentId,
}

impl Manifest {
    /// Builds a manifest from its parts. The piece size follows from `size`.
    pub fn new(name: &str, size: u64, pieces: Vec<PieceHash>) -> Result<Self, ManifestError> {
        check_name(name)?;
        if size > MAX_FILE_SIZE {
            return Err(ManifestError::TooLarge(size));
        }
        let piece_log2 = piece::piece_log2_for(size);
        let expected = piece::piece_count(size, piece_log2);
        if pieces.len() as u64 != expected {
            return Err(ManifestError::PieceCount { got: pieces.len(), expected, size });
        }
        let mut m = Self {
            version: VERSION,
            name: name.to_string(),
            size,
            piece_log2,
            pieces,
            id: ContentId([0; 32]),
        };
        m.id = ContentId::from(blake3::hash(&m.encode()));
        Ok(m)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.name.len() + 32 * self.pieces.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.push(self.piece_log2);
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        for p in &self.pieces {
            out.extend_from_slice(p.as_bytes());
        }
        out
    }

    /// Decodes a manifest, rejecting anything that is not the one canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < HEADER_LEN {
            return Err(ManifestError::Length { got: bytes.len(), expected: HEADER_LEN });
        }
        if bytes[..3] != MAGIC {
            return Err(ManifestError::Magic);
        }
        let version = bytes[3];
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(ManifestError::Version(version));
        }
        let size = u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
        if size > MAX_FILE_SIZE {
            return Err(ManifestError::TooLarge(size));
        }
        let piece_log2 = bytes[12];
        let expected_log2 = rule(version, size);
        if piece_log2 != expected_log2 {
            return Err(ManifestError::PieceSize {
                got: piece_log2,
                expected: expected_log2,
                size,
            });
        }
        let name_len = u16::from_be_bytes([bytes[13], bytes[14]]) as usize;
        let count = piece::piece_count(size, piece_log2) as usize;
        let expected = HEADER_LEN + name_len + 32 * count;
        if bytes.len() != expected {
            return Err(ManifestError::Length { got: bytes.len(), expected });
        }
        let name_bytes = &bytes[HEADER_LEN..HEADER_LEN + name_len];
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| ManifestError::Name(String::from_utf8_lossy(name_bytes).into_owned()))?;
        check_name(name)?;
        let pieces = bytes[HEADER_LEN + name_len..]
            .chunks_exact(32)
            .map(|c| PieceHash(c.try_into().expect("32-byte chunk")))
            .collect();
        Ok(Self {
            version,
            name: name.to_string(),
            size,
            piece_log2,
            pieces,
            id: ContentId::from(blake3::hash(bytes)),
        })
    }

    /// The content id: BLAKE3 of [`Manifest::encode`].
    pub fn content_id(&self) -> ContentId {
        self.id
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The piece size in bytes.
    pub fn piece_size(&self) -> u64 {
        1 << self.piece_log2
    }

    /// The number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// The piece hashes.
    pub fn pieces(&self) -> &[PieceHash] {
        &self.pieces
    }

    /// The hash of piece `i`, if it exists.
    pub fn piece_hash(&self, i: PieceIndex) -> Option<PieceHash> {
        self.pieces.get(i.0 as usize).copied()
    }

    /// The byte range of piece `i` in the file (the last piece may be short).
    pub fn piece_range(&self, i: PieceIndex) -> Range<u64> {
        let start = u64::from(i.0) << self.piece_log2;
        start..(start + self.piece_size()).min(self.size)
    }

    /// The length of piece `i`.
    pub fn piece_len(&self, i: PieceIndex) -> u64 {
        let r = self.piece_range(i);
        r.end - r.start
    }
}

/// A manifest's header fields, read without decoding its piece hashes or hashing it: for
/// callers that hold manifests already verified against their content id (the tracker's admin
/// views), where a full [`Manifest::decode`] per row would cost a hash of the whole manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The file name.
    pub name: &'a str,
    /// The file size in bytes.
    pub size: u64,
    /// The piece size in bytes.
    pub piece_size: u64,
}

impl<'a> Header<'a> {
    /// Reads the header of encoded manifest `bytes`: magic, version, size, piece size and a
    /// UTF-8 name inside the bytes. The pieces are not checked (see [`Manifest::decode`]).
    pub fn read(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        if bytes.len() < HEADER_LEN {
            return Err(ManifestError::Length { got: bytes.len(), expected: HEADER_LEN });
        }
        if bytes[..3] != MAGIC {
            return Err(ManifestError::Magic);
        }
        if !(MIN_VERSION..=VERSION).contains(&bytes[3]) {
            return Err(ManifestError::Version(bytes[3]));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[4..12]);
        let size = u64::from_be_bytes(size);
        let piece_log2 = bytes[12];
        if piece_log2 >= 64 {
            return Err(ManifestError::PieceSize {
                got: piece_log2,
                expected: rule(bytes[3], size),
                size,
            });
        }
        let name_len = u16::from_be_bytes([bytes[13], bytes[14]]) as usize;
        let name_bytes = bytes
            .get(HEADER_LEN..HEADER_LEN + name_len)
            .ok_or(ManifestError::Length { got: bytes.len(), expected: HEADER_LEN + name_len })?;
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| ManifestError::Name(String::from_utf8_lossy(name_bytes).into_owned()))?;
        Ok(Self { name, size, piece_size: 1 << piece_log2 })
    }
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("piece_size", &self.piece_size())
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

/// A name from a manifest (written by whoever made the content) made safe to print on a
/// terminal: control characters (escape sequences, newlines, carriage returns) and the Unicode
/// bidirectional overrides that make text read differently from what it is are shown escaped
/// (`\u{1b}`), everything else as is.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn check_name(name: &str) -> Result<(), ManifestError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.contains(['/', '\0'])
        || name == "."
        || name == "..";
    if bad {
        return Err(ManifestError::Name(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_are_escaped_for_terminals() {
        assert_eq!(escape_name("report.pdf"), "report.pdf");
        assert_eq!(escape_name("été.txt"), "été.txt");
        assert_eq!(escape_name("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape_name("x\ny\r"), "x\\ny\\r");
        assert_eq!(escape_name("evil\u{202e}fdp.exe"), "evil\\u{202e}fdp.exe");
    }

    fn manifest(size: u64, name: &str) -> Manifest {
        let n = piece::piece_count(size, piece::piece_log2_for(size));
        let pieces = (0..n).map(|i| PieceHash::of(&i.to_be_bytes())).collect();
        Manifest::new(name, size, pieces).unwrap()
    }

    #[test]
    fn headers_read_without_decoding_the_pieces() {
        let m = manifest(3 * piece::MIN_PIECE_SIZE + 5, "été.bin");
        let bytes = m.encode();
        let h = Header::read(&bytes).unwrap();
        assert_eq!((h.name, h.size, h.piece_size), ("été.bin", m.size(), m.piece_size()));
        // Cut inside the header, inside the name, or with a bad magic: errors, no panic.
        assert!(Header::read(&bytes[..10]).is_err());
        assert!(Header::read(&bytes[..HEADER_LEN + 2]).is_err());
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(Header::read(&bad), Err(ManifestError::Magic));
        let mut huge = bytes;
        huge[12] = 200;
        assert!(Header::read(&huge).is_err());
    }

    #[test]
    fn boundary_sizes() {
        let p = piece::MIN_PIECE_SIZE;
        // (size, pieces, last piece length)
        let table = [(0, 0, 0), (1, 1, 1), (p - 1, 1, p - 1), (p, 1, p), (p + 1, 2, 1)];
        for (size, count, last) in table {
            let m = manifest(size, "f");
            assert_eq!(m.piece_count(), count);
            if count > 0 {
                assert_eq!(m.piece_len(PieceIndex(count - 1)), last);
            }
            assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_non_canonical_forms() {
        let m = manifest(100_000, "a.bin");
        let bytes = m.encode();
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(Manifest::decode(&extra), Err(ManifestError::Length { .. })));
        assert!(matches!(
            Manifest::decode(&bytes[..bytes.len() - 1]),
            Err(ManifestError::Length { .. })
        ));
        for version in [0, 3, 0xff] {
            let mut v = bytes.clone();
            v[3] = version;
            assert_eq!(Manifest::decode(&v), Err(ManifestError::Version(version)));
        }
        let mut ps = bytes.clone();
        ps[12] += 1;
        assert!(matches!(Manifest::decode(&ps), Err(ManifestError::PieceSize { .. })));
        for bad in ["", ".", "..", "a/b", "nul\0"] {
            assert!(matches!(Manifest::new(bad, 0, vec![]), Err(ManifestError::Name(_))));
        }
    }

    #[test]
    fn version_1_manifests_are_read_with_their_own_rule_and_keep_their_bytes() {
        // 8 MiB: version 1 cut it into 128 pieces of 64 KiB, version 2 into 256 of 32 KiB.
        let size = 8u64 << 20;
        let hashes: Vec<PieceHash> = (0..128u32).map(|i| PieceHash::of(&i.to_le_bytes())).collect();
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"SHM\x01");
        v1.extend_from_slice(&size.to_be_bytes());
        v1.push(16);
        v1.extend_from_slice(&5u16.to_be_bytes());
        v1.extend_from_slice(b"a.bin");
        hashes.iter().for_each(|h| v1.extend_from_slice(h.as_bytes()));
        let m = Manifest::decode(&v1).unwrap();
        assert_eq!((m.piece_size(), m.piece_count()), (64 << 10, 128));
        assert_eq!(m.encode(), v1, "a decoded version 1 manifest encodes to the same bytes");
        assert_eq!(m.content_id(), ContentId::from(blake3::hash(&v1)));
        let h = Header::read(&v1).unwrap();
        assert_eq!((h.size, h.piece_size), (size, 64 << 10));
        // Version 2's piece size under version 1's byte is not canonical, nor the reverse.
        let mut wrong = v1.clone();
        wrong[12] = 15;
        assert!(matches!(Manifest::decode(&wrong), Err(ManifestError::PieceSize { .. })));
        let mut wrong = v1.clone();
        wrong[3] = 2;
        assert!(matches!(Manifest::decode(&wrong), Err(ManifestError::PieceSize { .. })));
        // New manifests are version 2, with 32 KiB pieces.
        let n = Manifest::new("a.bin", size, vec![PieceHash([0; 32]); 256]).unwrap();
        assert_eq!((n.encode()[3], n.piece_size()), (2, 32 << 10));
        assert_eq!(Manifest::decode(&n.encode()).unwrap(), n);
    }

    proptest! {
        #[test]
        fn roundtrip(size in 0u64..(1 << 26), name in "[a-zA-Z0-9._ -]{1,40}") {
            prop_assume!(name != "." && name != "..");
            let m = manifest(size, &name);
            let back = Manifest::decode(&m.encode()).unwrap();
            prop_assert_eq!(back.content_id(), m.content_id());
            prop_assert_eq!(back, m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}
