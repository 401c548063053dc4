//! The Shoal node: the seeding daemon, the download driver and the local control API behind
//! the `shoal` command.
//!
//! - [`node::Node`]: a running node (identity, QUIC endpoint, piece store, limits, counters);
//!   [`node::run`] serves peers and the control API until shutdown.
//! - [`serve`]: answers peers: control streams (hello, subscriptions, haves) and piece and
//!   manifest requests, every piece checked against its hash before it leaves.
//! - [`fetch`]: downloads a content from many peers at once, pumping the `shoal-swarm` picker.
//! - [`control`]: the HTTP/JSON API on 127.0.0.1 that `shoal add/get/ls` talk to;
//!   its types and client are in `shoal-control`.
//! - [`tracker`]: the tracker client: registration, announces, heartbeats, lookups.
//! - [`push`]: pushing contents into storage, and carrying out re-seed directives.
//! - [`config`]: validated settings and the `RATE` syntax.

#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod fetch;
mod io;
pub mod node;
pub mod push;
pub mod serve;
mod storage;
pub mod tracker;
mod upload;
