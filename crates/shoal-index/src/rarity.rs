//! The rarest levels of a swarm's availability, as bit masks, so a lookup can rank a holder by
//! the rarest piece it offers with a few word operations instead of a pass over its pieces.
//!
//! [`Rarity`] keeps, for the [`LEVELS`] lowest distinct non-zero availabilities, a mask of the
//! pieces at exactly that availability, in the bitfields' own byte layout. It is rebuilt (one
//! pass over the pieces) by the first lookup after the swarm's availability changed, so a
//! content looked up many times between announces pays the pass once. A holder's rarest wanted
//! piece is then the first level whose mask meets `holder & !have`; only a holder that offers
//! none of those levels' pieces falls back to the exact scan.

/// Distinct availability levels kept as masks. With 4, many of a large swarm's holders
/// offered none of those levels' pieces and took the exact scan (10% of the tracker's CPU per
/// lookup in a profile of 100,000 nodes); 8 gave 10 to 25% more lookups per second.
pub(crate) const LEVELS: usize = 8;

/// Masks of the lowest availability levels of one swarm.
#[derive(Debug, Clone)]
pub(crate) struct Rarity {
    /// (availability, mask of the pieces at exactly it), lowest first.
    levels: Vec<(u32, Vec<u8>)>,
}

impl Rarity {
    /// Built from per-piece availability.
    pub(crate) fn new(availability: &[u32]) -> Self {
        let mut lowest: Vec<u32> = Vec::with_capacity(LEVELS + 1);
        for &a in availability.iter().filter(|&&a| a > 0) {
            if let Err(at) = lowest.binary_search(&a) {
                if at < LEVELS {
                    lowest.insert(at, a);
                    lowest.truncate(LEVELS);
                }
            }
        }
        let bytes = availability.len().div_ceil(8);
        let mut levels: Vec<(u32, Vec<u8>)> =
            lowest.iter().map(|&a| (a, vec![0u8; bytes])).collect();
        for (i, &a) in availability.iter().enumerate() {
            if let Ok(l) = lowest.binary_search(&a) {
                // Bitfields are MSB first within a byte.
                levels[l].1[i / 8] |= 0x80 >> (i % 8);
            }
        }
        Self { levels }
    }

    /// The lowest availability among the pieces `holder` has and `have` lacks, if it is one of
    /// the kept levels; `None` if it offers none of their pieces (the caller scans).
    pub(crate) fn rarest(&self, holder: &[u8], have: Option<&[u8]>) -> Option<u32> {
        self.levels.iter().find(|(_, mask)| meets(holder, have, mask)).map(|&(a, _)| a)
    }

    /// The lowest availability of a piece `have` lacks, if it is one of the kept levels.
    pub(crate) fn floor(&self, have: Option<&[u8]>) -> Option<u32> {
        self.levels.iter().find(|(_, mask)| meets(mask, have, mask)).map(|&(a, _)| a)
    }
}

/// Whether `a & !b & mask` has a bit set, eight bytes at a time (any byte order will do for a
/// zero test, as long as all three use the same). Bytes beyond the shortest input count as 0.
fn meets(a: &[u8], b: Option<&[u8]>, mask: &[u8]) -> bool {
    let n = a.len().min(mask.len());
    let (a, mask) = (&a[..n], &mask[..n]);
    let full = n - n % 8;
    let b_word = |i: usize| -> u64 {
        match b.and_then(|b| b.get(i..i + 8)) {
            Some(w) => u64::from_ne_bytes(w.try_into().unwrap_or([0; 8])),
            None => 0,
        }
    };
    let words = a[..full].chunks_exact(8).zip(mask[..full].chunks_exact(8)).enumerate();
    for (w, (x, m)) in words {
        let m = u64::from_ne_bytes(m.try_into().unwrap_or([0; 8]));
        if m != 0 && u64::from_ne_bytes(x.try_into().unwrap_or([0; 8])) & !b_word(w * 8) & m != 0 {
            return true;
        }
    }
    (full..n).any(|i| a[i] & !b.and_then(|b| b.get(i)).copied().unwrap_or(0) & mask[i] != 0)
}

#[cfg(test)]
mod tests {
    use shoal_core::{Bitfield, PieceIndex};

    use super::*;

    fn scan(bf: &Bitfield, have: Option<&Bitfield>, availability: &[u32]) -> Option<u32> {
        (0..bf.len())
            .map(PieceIndex)
            .filter(|&i| bf.get(i) && !have.is_some_and(|h| h.get(i)))
            .map(|i| availability[i.0 as usize])
            .filter(|&a| a > 0)
            .min()
    }

    #[test]
    fn levels_agree_with_a_scan() {
        // Piece counts around word and byte edges.
        for n in [1u32, 7, 8, 9, 63, 64, 65, 200, 1000] {
            let availability: Vec<u32> = (0..n).map(|i| (i * 7 + 3) % 13).collect();
            let rarity = Rarity::new(&availability);
            for seed in 0..20u32 {
                let mut bf = Bitfield::new(n);
                let mut have = Bitfield::new(n);
                for i in 0..n {
                    let x = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 7;
                    if x < 3 && availability[i as usize] > 0 {
                        bf.set(PieceIndex(i));
                    }
                    if x == 1 || x == 5 {
                        have.set(PieceIndex(i));
                    }
                }
                for h in [None, Some(&have)] {
                    let exact = scan(&bf, h, &availability);
                    match rarity.rarest(bf.as_bytes(), h.map(Bitfield::as_bytes)) {
                        Some(a) => assert_eq!(Some(a), exact, "n {n} seed {seed}"),
                        // Outside the kept levels: the exact answer is above them all.
                        None => assert!(exact.is_none_or(|e| e > rarity.levels[LEVELS - 1].0)),
                    }
                    let all = Bitfield::full(n);
                    if let Some(f) = rarity.floor(h.map(Bitfield::as_bytes)) {
                        assert_eq!(Some(f), scan(&all, h, &availability), "floor n {n}");
                    }
                }
            }
        }
    }
}
