//! The Shoal node: the seeding daemon, the download driver and the local control API behind
//! the `shoal` command.
//!
//! - [`daemon::run`]: takes the data dir's daemon lock, then serves peers and the control API
//!   until shutdown.
//! - [`node::Node`]: a running node, a bundle of parts that each own their state: [`net`]
//!   (identity, endpoint), [`contents`] (what it holds), [`stats`] (counters that answer
//!   status without a store scan), the event bus (verified pieces, changed contents),
//!   [`tracker::Trackers`] (the tracker client), [`push::Pusher`], upload slots and the
//!   storage side of pushes. Parts talk through the event bus and bounded channels (the
//!   tracker's re-seed directives reach the pusher over one). Dependencies point one way:
//!   daemon -> control -> fetch -> serve -> node -> {storage, push} -> tracker -> parts.
//! - [`serve`]: answers peers: control streams (hello, subscriptions, haves) and piece and
//!   manifest requests, every piece checked against its hash before it leaves.
//! - [`fetch`]: downloads a content from many peers at once, pumping the `shoal-swarm` picker.
//! - [`control`]: the HTTP/JSON API on 127.0.0.1 that `shoal add/get/ls` talk to;
//!   its types and client are in `shoal-control`.
//! - [`tracker`]: the tracker client: registration, announces, heartbeats, lookups.
//! - [`push`]: pushing contents into storage, and carrying out re-seed directives.
//! - `pull`, `pulling`: a storage node's pull-through cache (what other regions hold, fetched
//!   on request and kept least recently used first), and the driver that fills it.
//! - `offline`: offline download: a storage node fetches URLs into users' spaces; a user's
//!   node adds, watches and follows those tasks.
//! - [`sync`]: keeps a directory in step with the user's space on storage.
//! - [`config`]: validated settings and the `RATE` syntax.
//! - `metrics`: Prometheus metrics (`/metrics` on the control API and `--metrics ADDR`).

#![warn(missing_docs)]

pub mod config;
pub mod contents;
pub mod control;
pub mod daemon;
mod events;
pub mod fetch;
mod io;
mod metrics;
pub mod net;
pub mod node;
mod offline;
mod pull;
mod pulling;
pub mod push;
mod push_gate;
mod reveal;
mod scrape;
pub mod serve;
pub mod stats;
mod storage;
pub mod sync;
pub mod tracker;
mod upload;
