//! Per-piece send counts, for super-seeding order, bounded by contents and manifests.

use std::collections::HashMap;
use std::hash::Hash;

use super::PieceKey;

/// Contents whose per-piece send counts are kept.
pub const MAX_TRACKED_CONTENTS: usize = 32;

/// Send counts of one content.
#[derive(Debug)]
struct Counts {
    per_piece: Vec<u16>,
    /// When this content was last served (a tick of [`Sent`]), for eviction.
    used: u64,
}

/// Send counts per content, at most [`MAX_TRACKED_CONTENTS`] of them (least recently served
/// forgotten first): at most 32 x 65,536 x 2 B = 4 MiB with the manifest's piece cap.
#[derive(Debug)]
pub(super) struct Sent<C> {
    contents: HashMap<C, Counts>,
    tick: u64,
}

impl<C> Default for Sent<C> {
    fn default() -> Self {
        Self { contents: HashMap::new(), tick: 0 }
    }
}

impl<C: Copy + Eq + Hash> Sent<C> {
    /// How often the piece was sent (0 for a forgotten content).
    pub(super) fn get(&self, key: &PieceKey<C>) -> u16 {
        let counts = self.contents.get(&key.content);
        counts.and_then(|c| c.per_piece.get(key.piece.0 as usize)).copied().unwrap_or(0)
    }

    /// Counts one more send of the piece, and returns the content forgotten to make room, if
    /// any. A piece past the content's count allocates nothing.
    pub(super) fn record(&mut self, key: &PieceKey<C>) -> Option<C> {
        if key.piece.0 >= key.pieces {
            return None;
        }
        self.tick += 1;
        let mut forgotten = None;
        if !self.contents.contains_key(&key.content) && self.contents.len() >= MAX_TRACKED_CONTENTS
        {
            let oldest = self.contents.iter().min_by_key(|(_, c)| c.used).map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.contents.remove(&id);
                forgotten = Some(id);
            }
        }
        let c = self
            .contents
            .entry(key.content)
            .or_insert_with(|| Counts { per_piece: vec![0; key.pieces as usize], used: 0 });
        c.used = self.tick;
        // A content's piece count never changes (the content id fixes the manifest); if a
        // caller disagrees, the count is ignored rather than the vector grown.
        if let Some(n) = c.per_piece.get_mut(key.piece.0 as usize) {
            *n = n.saturating_add(1);
        }
        forgotten
    }

    /// Takes back one send of the piece: its upload was abandoned before it was sent.
    pub(super) fn unrecord(&mut self, key: &PieceKey<C>) {
        let counts = self.contents.get_mut(&key.content);
        if let Some(n) = counts.and_then(|c| c.per_piece.get_mut(key.piece.0 as usize)) {
            *n = n.saturating_sub(1);
        }
    }

    /// Contents tracked now.
    pub(super) fn len(&self) -> usize {
        self.contents.len()
    }

    /// True if the content's counts are kept.
    pub(super) fn tracks(&self, content: &C) -> bool {
        self.contents.contains_key(content)
    }
}
