//! The tracker's core: which node holds which pieces of which content.
//!
//! [`Index`] is a state machine without I/O or clocks: the caller passes the wall-clock time
//! in milliseconds (so that persisted heartbeat times stay meaningful across a restart) and
//! applies the [`Persist`] operations each mutation returns to a backend; [`SledState`] is
//! the default one. After a restart, [`Index::restore`] rebuilds the index from the backend,
//! lookups answer at once, and nodes that vanished meanwhile expire as usual.
//!
//! - registry (`index`): nodes with a granted role, vetted addresses, load and last heartbeat;
//!   expiry after a TTL; rate limits per source address and node id (`limits`);
//! - swarms (`swarm`): per content with a verified manifest, each holder's bitfield, piece
//!   availability, reports of holders that never delivered; collected when nobody holds them;
//! - lookup (`lookup`): a bounded sample of holders, admitted storage first, then holders of
//!   the rarest wanted pieces, lightly loaded before busy, reported holders last;
//! - differential distribution: with each lookup, pieces for the asker to fetch first, chosen
//!   among those nobody else has or has been handed, then the rarest, so that a seed serving
//!   many new downloaders sends each piece about once;
//! - re-seed planning (`plan`): holders push what stalled admitted storage lacks;
//! - regions (`region`): the operator's CIDR map places each node in a region; lookups rank
//!   the asker's region first and hints count what each region holds and was handed, so that
//!   each piece crosses into a region about once and the region's nodes complete each other;
//! - views (`view`): bounded, read-only pages of swarms and nodes for operators.

#![warn(missing_docs)]

mod index;
mod limits;
mod lookup;
mod model;
mod plan;
mod rarity;
mod region;
mod replicated;
mod state;
mod swarm;
mod swarms;
mod view;

pub use index::{vet_addrs, Index, RemoteSkip};
pub use limits::{source_key, Action, Limits, Rate};
pub use model::{
    Config, HeartbeatOutcome, IndexError, Lookup, NodeEntry, Persist, Planned, Registration,
    VerifiedManifest,
};
pub use region::{BadRange, GeoError, GeoRegions, RegionMap, MAX_REGIONS};
pub use replicated::{
    decode_changes, encode_changes, Batch, Change, Read, RedisState, RedisStateError, ENTRY_TARGET,
    MAX_CHANGES, MAX_CHANGES_PER_ENTRY, MAX_LOADED, STREAM_START,
};
pub use state::{Loaded, SledState};
pub use view::{
    Heatmap, HolderRow, NodeRow, RegionLoad, SwarmDetail, SwarmSummary, Totals, MAX_CELLS,
    MAX_PAGE, MAX_SWARM_PAGE,
};
