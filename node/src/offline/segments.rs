//! Fetching segments of a resource from its origin: the layout (segments of whole pieces),
//! the parallel range fetches, and hashing what arrived. Used by a task's home (`run`) and by
//! helpers (`assist`) alike.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shoal_cloud::origin::{Origin, OriginError, Resource};
use shoal_cloud::CloudError;
use shoal_core::offline::resource_pieces;
use shoal_core::piece::piece_log2_for;
use shoal_core::PieceHash;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Bytes per segment (whole pieces, at least one).
pub(crate) const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Segments fetched at once per task.
pub(crate) const PARALLEL: usize = 4;
// A segment's proof carries all its hashes in one frame.
const _: () = assert!(
    (SEGMENT_BYTES >> shoal_core::piece::MIN_PIECE_LOG2) as usize
        <= shoal_wire::offline::MAX_PROOF_HASHES
);
/// Bytes read at once when hashing a finished segment.
const HASH_CHUNK: u64 = 1024 * 1024;
/// The layout of a resource: piece size, piece count, pieces per segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) len: u64,
    pub(crate) piece: u64,
    pub(crate) pieces: u32,
    pub(crate) per_segment: u32,
}

impl Layout {
    pub(crate) fn of(len: u64) -> Self {
        let piece = 1u64 << piece_log2_for(len);
        let pieces = resource_pieces(len) as u32;
        let per_segment = (SEGMENT_BYTES / piece).max(1) as u32;
        Self { len, piece, pieces, per_segment }
    }

    pub(crate) fn segments(&self) -> u32 {
        self.pieces.div_ceil(self.per_segment)
    }

    /// Pieces of segment `s`.
    pub(crate) fn segment_pieces(&self, s: u32) -> std::ops::Range<u32> {
        let first = s * self.per_segment;
        first..(first + self.per_segment).min(self.pieces)
    }

    /// Byte range of pieces `r`.
    pub(crate) fn bytes(&self, r: &std::ops::Range<u32>) -> std::ops::Range<u64> {
        let start = u64::from(r.start) * self.piece;
        start..(u64::from(r.end) * self.piece).min(self.len)
    }
}

/// Why a task ended without its content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError {
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the resource changed at the origin {0} times while being fetched; try again later")]
    KeepsChanging(u32),
    #[error("{0}")]
    Refused(String),
}

/// Byte counters a fetch keeps: bytes of segments underway (for progress), and bytes fetched
/// from the origin in all (the node's total).
#[derive(Debug, Clone, Default)]
pub(crate) struct Meters {
    pub(crate) inflight: Arc<AtomicU64>,
    pub(crate) fetched: Arc<AtomicU64>,
}

/// A finished segment: its first piece and the hashes of its pieces.
pub(crate) type Hashed = (u32, Vec<PieceHash>);

/// Fetches `todo` (segments) of `res` from the origin into `part`, [`PARALLEL`] at a time (one
/// stream of the whole resource without ranges), and sends each segment's hashes to `done`
/// as it finishes. Counts bytes as they arrive in `inflight` and `fetched` (the node's total). Cancel-safe: dropping it stops
/// the fetches (what was sent on `done` stays sent).
pub(crate) async fn fetch_some(
    origin: &Origin,
    res: &Resource,
    layout: Layout,
    part: &File,
    todo: Vec<u32>,
    meters: &Meters,
    done: &mpsc::Sender<Hashed>,
) -> Result<(), TaskError> {
    let Meters { inflight, fetched } = meters;
    let mut jobs = JoinSet::new();
    let groups: Vec<Vec<u32>> =
        if res.ranges { todo.iter().map(|&s| vec![s]).collect() } else { vec![todo] };
    let mut queue = groups.into_iter();
    loop {
        while jobs.len() < PARALLEL {
            let Some(group) = queue.next() else { break };
            let (origin, res, part) = (origin.clone(), res.clone(), part.try_clone()?);
            let (inflight, fetched) = (inflight.clone(), fetched.clone());
            jobs.spawn(async move {
                // Without ranges the only fetch is the whole resource (every segment is to do:
                // `open_part` never continues such a task).
                let bytes = match (group.first(), group.last()) {
                    _ if !res.ranges => 0..layout.len,
                    (Some(&a), Some(&b)) => {
                        layout.bytes(&layout.segment_pieces(a)).start
                            ..layout.bytes(&layout.segment_pieces(b)).end
                    }
                    _ => 0..0,
                };
                let mut sink = |offset: u64, chunk: &[u8]| {
                    inflight.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    fetched.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    part.write_all_at(chunk, offset)
                };
                origin.fetch_range(&res, bytes.start, bytes.end - bytes.start, &mut sink).await?;
                let hashed = tokio::task::spawn_blocking(move || hash_group(&part, layout, &group))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??;
                Ok::<_, TaskError>(hashed)
            });
        }
        let Some(joined) = jobs.join_next().await else { return Ok(()) };
        let hashed = joined.map_err(|e| std::io::Error::other(e.to_string()))??;
        for h in hashed {
            let bytes = layout.bytes(&(h.0..h.0 + h.1.len() as u32));
            let _ = inflight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes.end - bytes.start))
            });
            if done.send(h).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The BLAKE3 hash of bytes `r` of `file`, read `buf.len()` at a time.
pub(crate) fn hash_range(
    file: &File,
    r: std::ops::Range<u64>,
    buf: &mut [u8],
) -> std::io::Result<PieceHash> {
    let mut hasher = blake3::Hasher::new();
    let mut at = r.start;
    while at < r.end {
        let n = (r.end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(PieceHash::from(hasher.finalize()))
}

/// Hashes the pieces of each segment in `group` from the temporary file, reading at most
/// [`HASH_CHUNK`] at a time (a piece may be 64 MiB).
fn hash_group(
    part: &File,
    layout: Layout,
    group: &[u32],
) -> std::io::Result<Vec<(u32, Vec<PieceHash>)>> {
    let mut out = Vec::with_capacity(group.len());
    let mut buf = vec![0u8; HASH_CHUNK.min(layout.piece) as usize];
    for &s in group {
        let r = layout.segment_pieces(s);
        let mut hashes = Vec::with_capacity(r.len());
        for p in r.clone() {
            hashes.push(hash_range(part, layout.bytes(&(p..p + 1)), &mut buf)?);
        }
        out.push((r.start, hashes));
    }
    Ok(out)
}
