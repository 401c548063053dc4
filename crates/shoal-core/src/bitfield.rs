//! A fixed-length set of piece indices.

use crate::PieceIndex;

/// Which pieces of a content a node holds. Bit `i` is bit `7 - i % 8` of byte `i / 8`, as in
/// BitTorrent; bits past the end are always zero.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
    ones: u32,
}

/// Error building a bitfield from bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BitfieldError {
    /// The byte count does not match the piece count.
    #[error("bitfield of {got} bytes for {pieces} pieces (expected {expected})")]
    WrongLength {
        /// bytes received
        got: usize,
        /// bytes expected
        expected: usize,
        /// the piece count
        pieces: u32,
    },
    /// A bit past the last piece is set.
    #[error("bitfield has bits set past piece {pieces}")]
    TrailingBits {
        /// the piece count
        pieces: u32,
    },
}

impl Bitfield {
    /// An empty bitfield for `len` pieces.
    pub fn new(len: u32) -> Self {
        Self { bits: vec![0; (len as usize).div_ceil(8)], len, ones: 0 }
    }

    /// A bitfield with every piece set.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(PieceIndex(i));
        }
        b
    }

    /// Parses the wire form for `len` pieces.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitfieldError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength { got: bytes.len(), expected, pieces: len });
        }
        if len % 8 != 0 {
            let mask = 0xffu8 >> (len % 8);
            if bytes[expected - 1] & mask != 0 {
                return Err(BitfieldError::TrailingBits { pieces: len });
            }
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Self { bits: bytes.to_vec(), len, ones })
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// The number of pieces this bitfield covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True if it covers no pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of pieces set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// True if every piece is set.
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Whether piece `i` is set; false for indices out of range.
    pub fn get(&self, i: PieceIndex) -> bool {
        i.0 < self.len && self.bits[(i.0 / 8) as usize] & (0x80 >> (i.0 % 8)) != 0
    }

    /// Sets piece `i`; returns false if it was set already. Out-of-range indices are ignored
    /// and return false.
    pub fn set(&mut self, i: PieceIndex) -> bool {
        if i.0 >= self.len || self.get(i) {
            return false;
        }
        self.bits[(i.0 / 8) as usize] |= 0x80 >> (i.0 % 8);
        self.ones += 1;
        true
    }

    /// The set pieces, in order.
    pub fn iter_ones(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).map(PieceIndex).filter(|&i| self.get(i))
    }

    /// The pieces not set, in order.
    pub fn iter_zeros(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).map(PieceIndex).filter(|&i| !self.get(i))
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn set_get_count() {
        let mut b = Bitfield::new(10);
        assert!(b.set(PieceIndex(9)));
        assert!(!b.set(PieceIndex(9)));
        assert!(!b.set(PieceIndex(10)));
        assert!(b.get(PieceIndex(9)) && !b.get(PieceIndex(8)));
        assert_eq!(b.count(), 1);
        assert_eq!(b.as_bytes(), &[0, 0x40]);
        assert!(Bitfield::full(10).is_complete());
    }

    #[test]
    fn rejects_bad_wire_forms() {
        assert!(matches!(Bitfield::from_bytes(10, &[0]), Err(BitfieldError::WrongLength { .. })));
        assert!(matches!(
            Bitfield::from_bytes(10, &[0, 0x20]),
            Err(BitfieldError::TrailingBits { .. })
        ));
        assert!(Bitfield::from_bytes(0, &[]).unwrap().is_complete());
    }

    proptest! {
        #[test]
        fn roundtrip(len in 0u32..300, seed in any::<u64>()) {
            let mut b = Bitfield::new(len);
            let mut x = seed;
            for i in 0..len {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if x >> 63 == 1 { b.set(PieceIndex(i)); }
            }
            let back = Bitfield::from_bytes(len, b.as_bytes()).unwrap();
            prop_assert_eq!(back.count(), b.count());
            prop_assert_eq!(back, b);
        }
    }
}
