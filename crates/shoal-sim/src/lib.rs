//! A deterministic, discrete-event simulation of a swarm that drives the node's real state
//! machines: for every node the real [`shoal_swarm::PeerSet`] (download: peers, windows,
//! stalls, rotation, the picker inside it) and the real [`shoal_swarm::Uploader`] (upload
//! slots: super-seeding order, fairness, bounds), and the real [`shoal_index::Index`] as the
//! tracker. Simulated time, no sockets, the same outcome for the same [`Scenario`].
//!
//! # Layout
//! - [`run`] builds a [`world::World`] from a [`Scenario`] and returns its [`Outcome`];
//! - `world`: the event queue, the tracker, churn; `down`: each node's download driver (does
//!   what the node's `fetch/pieces.rs` does with a `PeerSet`); `up`: each node's serving side
//!   (does what `serve.rs` + `upload.rs` do with an `Uploader`) and its uplink;
//! - [`replay`]: the input log of a node's `PeerSet`, and a replay through a fresh one.
//!
//! # Model
//! - One seed holding the file and `nodes` downloaders starting within the first second (a
//!   flash crowd). Uplinks: the seed and most downloaders at `uplink`; a `slow_fraction` of the
//!   downloaders at `uplink / 4`. No download caps.
//! - Every message takes `latency` one way; a dial takes a round trip, as does a manifest.
//! - A node's uplink sends the pieces it granted **one after another**, in grant order, each at
//!   the full uplink rate (not a fluid share per upload). A transfer cancelled (or whose
//!   requester went away) before its turn is taken out and reported with
//!   `Uploader::handle_abandoned`, so it does not count as a copy in the super-seeding order;
//!   one under way finishes (its bytes count as uploaded, and are wasted). The node's
//!   `serve.rs` reports every end of an upload as done today: it should report a failed send
//!   as abandoned too.
//! - Drivers do what the node does: a lookup (`Index::lookup` with the node's bitfield, 32
//!   peers, hints) when a fetch starts and every 2 s; deltas announced every 250 ms;
//!   heartbeats with the upload load every 2 s; the tracker expires silent nodes each second;
//!   a finished fetch closes its connections and keeps serving. `PeerSet` and `Uploader` run
//!   with the node's defaults (`Config::default()` of each, the node's pipeline rule).
//! - A node's new pieces reach its subscribers as haves one latency later (those verified
//!   meanwhile ride along). A subscriber's driver is pumped at once only if the have may
//!   unblock an idle peer (none of its requests in flight to the sender); otherwise the piece
//!   is seen at that subscriber's next event. Every other event pumps its node's driver, as
//!   the node's select loop does.
//! - Not modelled: the manifest's bytes (64 KiB at most, asked of peers, answered after one
//!   round trip), partial-piece progress (`handle_progress`: a piece is at most a few tenths of
//!   a second on the wire here), download caps, rate-limit jitter, loss.
//!
//! # Churn and the bound
//! A `churn` fraction of the downloaders leaves at a random time mid-download (between 0.2
//! and 0.6 of the bound), losing its connections, its upload queue and its fetch state but not
//! its verified pieces, and comes back 0.25 to 0.5 of the bound later to resume. The bound
//! compared against, `bound_s`, is the fluid bound [`fluid_bound`] over the seed and the
//! downloaders that **stay** (their uplinks, their count), and `ratio` is the stayers' last
//! finish over it. This is not a strict lower bound for the stayers (the churners upload while
//! present, and take capacity while they download), but it is the swarm without them; the
//! churners' own finish (bounded below by their return) is reported apart.
//!
//! `seed_all_sent_s`, when every piece had left the seed once (at best `file_size / uplink`),
//! separates the seed's first copy from the spread. After it the seed guards that copy
//! (`shoal_swarm::Reveal`): it shows only pieces whose recipients all left, so its later
//! copies (`seed_copies` - 1) are those churn took away, not a busy uplink's whole tail.

#![warn(missing_docs)]

use std::time::Duration;

mod bound;
mod down;
pub mod replay;
mod up;
mod world;

pub use bound::fluid_bound;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Downloaders (the seed comes on top).
    pub nodes: usize,
    /// The seed's and the fast downloaders' uplink, bytes/s.
    pub uplink: u64,
    /// The fraction of downloaders whose uplink is `uplink / 4`.
    pub slow_fraction: f64,
    /// The file's size.
    pub file_size: u64,
    /// The piece size; `None` for the node's rule (`shoal_core::piece`). An explicit size must
    /// give at most 2048 pieces.
    pub piece_size: Option<u64>,
    /// One-way latency between any two nodes (and to the tracker).
    pub latency: Duration,
    /// The fraction of downloaders that leave mid-download and come back.
    pub churn: f64,
    /// Seeds every random choice: the same scenario gives the same outcome.
    pub seed: u64,
    /// Piece hints the tracker hands each asker (the tracker's default, 32; 0 turns the
    /// differential distribution off, to measure what it is worth).
    pub hints: usize,
    /// The seed reveals its pieces a few at a time ([`shoal_swarm::Reveal`], as a node does
    /// for content it added); false: it shows its whole bitfield at once.
    pub super_seed: bool,
    /// Once every piece left it, the revealing seed guards its first copy (shows only pieces
    /// whose recipients all left, `shoal_swarm::reveal::Config::guard`), as a node does;
    /// false: it shows everything at once then.
    pub guard: bool,
    /// Downloaders whose `PeerSet` inputs and actions are recorded (see [`replay`]).
    pub record: Vec<usize>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            nodes: 100,
            uplink: 2 * 1024 * 1024,
            slow_fraction: 0.25,
            file_size: 32 * 1024 * 1024,
            piece_size: None,
            latency: Duration::from_millis(10),
            churn: 0.0,
            seed: 1,
            hints: shoal_index::Config::default().hints,
            super_seed: true,
            guard: true,
            record: Vec::new(),
        }
    }
}

/// What came of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// Downloaders (the seed comes on top).
    pub nodes: usize,
    /// Pieces in the file and their size.
    pub pieces: u32,
    /// The piece size.
    pub piece_size: u64,
    /// The last finish of the downloaders that stayed, seconds from the start.
    pub last_finish_s: f64,
    /// The mean finish of those downloaders.
    pub mean_finish_s: f64,
    /// The last finish of every downloader, churners included.
    pub last_finish_all_s: f64,
    /// The fluid bound over the seed and the downloaders that stayed.
    pub bound_s: f64,
    /// `last_finish_s / bound_s`.
    pub ratio: f64,
    /// Bytes the seed uploaded over the file size.
    pub seed_copies: f64,
    /// Downloaders that left and came back.
    pub churned: usize,
    /// Each downloader's finish, seconds from the start (index 0 is downloader 1).
    pub finish_s: Vec<f64>,
    /// When the seed had sent every piece at least once, seconds from the start (at best
    /// `file_size / uplink`: the seed-limited term of the bound).
    pub seed_all_sent_s: f64,
    /// `Busy` answers to piece requests (at once, or a waiter's deadline).
    pub busy: u64,
    /// Bytes uploaded in all (wasted transfers included) over the bytes the downloaders needed.
    pub upload_overhead: f64,
    /// Events processed.
    pub events: u64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
    /// The recorded `PeerSet` logs of `Scenario::record`'s downloaders.
    #[serde(skip)]
    pub logs: Vec<replay::Log>,
}

/// Why a run could not finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario cannot be simulated.
    #[error("invalid scenario: {0} (fix the parameter and run again)")]
    Invalid(&'static str),
    /// Simulated time ran past the limit with downloaders unfinished: the policy stalls.
    #[error("stuck at {at_s:.1} s simulated with {unfinished} downloaders unfinished (a policy stall: rerun with fewer nodes and record one of them)")]
    Stuck {
        /// Simulated seconds when it gave up.
        at_s: f64,
        /// Downloaders without the whole file.
        unfinished: usize,
    },
}

/// Runs a scenario to the end: every downloader holding the whole file.
pub fn run(scenario: &Scenario) -> Result<Outcome, SimError> {
    let started = std::time::Instant::now();
    let mut world = world::World::new(scenario)?;
    world.run()?;
    let mut out = world.outcome();
    out.wall_s = started.elapsed().as_secs_f64();
    Ok(out)
}
