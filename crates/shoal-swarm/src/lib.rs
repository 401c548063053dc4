//! The swarm's state machines: which piece to ask which peer for ([`Picker`], inside the
//! download's [`PeerSet`]), and in which order this node's upload slots are granted
//! ([`Uploader`], in [`upload`]). No I/O, no clocks: time is passed in, so the same code runs in
//! a node, in the simulation (`shoal-sim`) and in tests.
//!
//! [`Picker`] is a plain state machine without I/O or clocks. The download driver tells it
//! what each peer holds and what happened to each request, and asks it for the next piece to
//! request from a peer. The same code runs in a node and in the deterministic simulation in
//! this crate's tests.
//!
//! Policy:
//! - **rarest first**: among the pieces a peer has that we lack and nobody is fetching, pick
//!   the one fewest connected peers hold (ties broken by a per-picker shuffle, so different
//!   downloaders start at different places);
//! - **strikes and bans**: a piece that fails verification is released and never asked of
//!   that peer again; a peer that sends bad data twice is banned for the rest of the fetch;
//! - **endgame**: when a peer has nothing left that is not already in flight, it may fetch a
//!   piece another peer is still sending; the first copy wins and the others are cancelled.

#![warn(missing_docs)]

pub mod lookups;
mod peers;
mod picker;
pub mod reveal;
pub mod upload;

pub use lookups::Lookups;
pub use peers::{
    Action, Admit, Config, DropReason, ManifestReply, PeerSet, PieceOutcome, MAX_REMOTE,
};
pub use picker::{Picker, Request, Verdict, MAX_COPIES, MAX_STRIKES};
pub use reveal::Reveal;
pub use upload::Uploader;
