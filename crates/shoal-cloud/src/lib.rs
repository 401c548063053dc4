//! Cloud storage for Shoal storage nodes: object-store backends and a piece store that only
//! ever holds verified pieces.
//!
//! - [`backend::open`]: an [`object_store::ObjectStore`] from a URL: `file:///path` (a local
//!   directory) or `s3://bucket[/prefix]` (endpoint, region and credentials from the usual AWS
//!   environment variables, or [`backend::S3Options`]).
//! - [`CloudStore`]: manifests and pieces as objects (`manifests/<content id>`,
//!   `pieces/<content id>/<index>`), and an index in sled: content id → name, size, stored
//!   pieces, complete or not.
//! - [`origin::Origin`]: the HTTP(S) fetcher of offline downloads (probe a URL, fetch ranges).
//! - Ownership per (user, content) and quotas ([`CloudStore::claim`]): a user owns the contents
//!   it claimed; their sizes, summed, are what it uses of its quota. Claiming a content storage
//!   holds already costs a record and no bytes, and a second user is never locked out.
//!
//! - Users' spaces ([`spaces`]): named entries per user, temporary while an offline task fetches
//!   them, permanent (and charged) once complete; offline task records for restarts.
//!
//! Invariants: a piece is checked against its manifest hash before anything is written, so a
//! bad piece never reaches the object store; objects appear whole or not at all (the local
//! backend writes a temporary file and renames it, S3 puts are atomic); and the index records
//! a piece only after its object exists, so after a crash the index never claims a piece that
//! is not stored (at worst a stored piece is pushed again).

#![warn(missing_docs)]

pub mod backend;
pub mod origin;
mod owners;
pub mod spaces;
mod store;

pub use owners::{charge, Claimed};
pub use store::{CloudContent, CloudError, CloudStore, PutPiece};
