//! The node's piece store.
//!
//! Piece data lives in ordinary files: a seeded file stays where the user keeps it (`add` never
//! copies), and a download is written into a preallocated partial file beside its output path.
//! Metadata (contents, manifests, which pieces of a partial file are verified) lives behind the
//! [`MetaStore`] trait, in sled by default.
//!
//! Invariants:
//! - a piece is recorded as verified only after its bytes matched its hash *and* the partial
//!   file was synced, so after a crash every recorded piece is really on disk and a resumed
//!   fetch trusts the record instead of rehashing the file;
//! - the output path only ever holds a complete, verified file (temp name, fsync, rename);
//! - every piece read for upload has been checked against its hash by this process while the
//!   file stayed untouched (same inode, length and times; once per piece, see `checked.rs`):
//!   a seeded file changed on disk is marked "source changed" and no longer served.
//!
//! Entry points: [`Store::open`], [`Store::import`], [`Store::begin_download`],
//! [`Store::read_piece`], [`Store::list`].

#![warn(missing_docs)]

mod buffers;
mod checked;
mod download;
mod error;
pub mod meta;
mod store;

pub use buffers::MAX_SPARE_BYTES;
pub use download::Download;
pub use error::StoreError;
pub use meta::{ContentRecord, MemMeta, MetaStore, SledMeta, Source};
pub use store::{Entry, EntryState, Removal, Store};
