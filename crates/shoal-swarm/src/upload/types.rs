//! The public types of [`super::Uploader`]: its limits, what a request is for, and what the
//! driver is told.

use std::time::Duration;

use shoal_core::PieceIndex;

/// Limits of an `Uploader`. `Default` gives the values a node uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// Uploads granted at once (default 32); each holds one piece (or manifest) in memory.
    pub max_active: usize,
    /// Bytes the granted uploads may hold together (default 64 MiB). One upload larger than
    /// this still runs, alone.
    pub max_bytes: u64,
    /// Requests that may wait for a slot (default 1024); more are refused at once.
    pub max_waiting: usize,
    /// How long a request waits for a slot before it is refused (default 5 s): below the
    /// downloaders' stall deadline, so a crowded seed says `Busy` before it is dropped.
    pub wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_active: 32,
            max_bytes: 64 * 1024 * 1024,
            max_waiting: 1024,
            wait: Duration::from_secs(5),
        }
    }
}

/// A piece of a held content, checked by the caller: `piece < pieces`, the manifest's count.
/// `C` identifies the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceKey<C> {
    /// The content.
    pub content: C,
    /// The piece.
    pub piece: PieceIndex,
    /// The content's piece count (from its manifest): sizes its send counts.
    pub pieces: u32,
}

/// One request for a slot, from its admission to its end (granted and done, or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What a new request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Granted now: upload, then report with `Uploader::handle_done`.
    Granted(Ticket),
    /// Waiting: an [`Event`] with this ticket will say whether it was granted or refused.
    Queued(Ticket),
    /// Refused at once: too many requests wait already, or this peer has its share of them.
    Busy,
}

/// What happened to a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A slot came free for it: upload, then report with `Uploader::handle_done`.
    Granted(Ticket),
    /// Its deadline passed without a slot: answer `Busy`.
    Refused(Ticket),
}
