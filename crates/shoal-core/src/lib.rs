//! The Shoal content model: identifiers, piece sizing, manifests, bitfields, tickets and
//! parallel piece hashing.
//!
//! Everything here is pure logic without I/O: callers hand in bytes (or a positioned-read
//! function) and get typed values back. The same code runs in a node, in a simulation and
//! under a fuzzer.
//!
//! - [`piece`]: the piece-size rule, a power of two chosen from the file size.
//! - [`Manifest`]: name, size, piece size and per-piece BLAKE3 hashes in a canonical,
//!   versioned binary encoding; its BLAKE3 hash is the [`ContentId`].
//! - [`Bitfield`]: which pieces a node holds.
//! - [`Ticket`]: the printable string people share (content id plus peer hints), with a
//!   checksum so that a truncated or mistyped copy is detected.
//! - [`offline`]: offline task ids and the signed growing manifest of a task's pieces.
//! - [`Region`]: where a node is, as its tracker's operator names places.
//! - [`UserId`], [`DeviceCert`]: users (ed25519 keys) and the nodes that act for them.
//! - [`reopen`]: retrying an embedded database's lock that this process let go a moment ago
//!   (the one part that waits).
//! - [`hash::hash_pieces`]: hashes every piece of a file on all cores without holding the
//!   file in memory.

#![warn(missing_docs)]

pub mod bitfield;
pub mod hash;
pub mod id;
pub mod manifest;
pub mod offline;
pub mod piece;
pub mod region;
pub mod reopen;
pub mod ticket;
pub mod units;
pub mod user;

pub use bitfield::Bitfield;
pub use id::{ContentId, NodeId, PieceHash, PieceIndex};
pub use manifest::Manifest;
pub use offline::{SegmentProof, TaskId};
pub use region::Region;
pub use ticket::{PeerAddr, Ticket};
pub use user::{DeviceCert, UserId};
