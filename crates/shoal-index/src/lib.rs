//! The tracker's core: which node holds which pieces of which content.
//!
//! [`Index`] is a state machine without I/O or clocks: the caller passes the wall-clock time
//! in milliseconds (so that persisted heartbeat times stay meaningful across a restart) and
//! applies the [`Persist`] operations each mutation returns to a backend; [`SledState`] is
//! the default one. After a restart, [`Index::restore`] rebuilds the index from the backend,
//! lookups answer at once, and nodes that vanished meanwhile expire as usual.
//!
//! - registry: nodes with role, addresses, load and last heartbeat; expiry after a TTL;
//! - swarms: per content, each holder's bitfield, piece availability and the manifest;
//! - lookup: peers holding wanted pieces, holders of the rarest wanted pieces first, lightly
//!   loaded before busy;
//! - differential distribution: with each lookup, pieces for the asker to fetch first, chosen
//!   among those nobody else has or has been handed, then the rarest, so that a seed serving
//!   many new downloaders sends each piece about once.

#![warn(missing_docs)]

mod index;
mod state;

pub use index::{Config, HeartbeatOutcome, Index, IndexError, Lookup, NodeEntry, Persist, Planned};
pub use state::{Loaded, SledState};
