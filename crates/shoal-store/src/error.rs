//! Store errors.

use std::io;
use std::path::PathBuf;

use shoal_core::ContentId;

/// Error from a store operation. Messages name the problem and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// what was being done
        what: &'static str,
        /// the file
        path: PathBuf,
        /// the cause
        source: io::Error,
    },
    /// The disk is full.
    #[error("no space left on device for {} ({needed} bytes needed): free some space and run the same command again to resume", path.display())]
    NoSpace {
        /// the file being written
        path: PathBuf,
        /// bytes the file needs
        needed: u64,
    },
    /// Another process holds the data dir's metadata (a daemon, or a standalone command).
    #[error("data dir {} is in use by another shoal process ({detail})", dir.display())]
    InUse {
        /// The data dir.
        dir: PathBuf,
        /// What the database said.
        detail: String,
    },
    /// The metadata database failed.
    #[error("metadata store: {0}")]
    Meta(String),
    /// The path to import is not a regular file.
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// The output path's directory does not exist.
    #[error("directory {} does not exist: create it or choose another output path", .0.display())]
    NoOutputDir(PathBuf),
    /// Something is already at the output path.
    #[error("{} already exists: remove it or choose another output path", .0.display())]
    OutputExists(PathBuf),
    /// The content is not in the store.
    #[error("content {0} is not in this node's store")]
    NotFound(ContentId),
    /// The seeded file changed on disk since it was added.
    #[error("the file of content {0} changed on disk since it was added; it is no longer served (add it again to share the new version)")]
    SourceChanged(ContentId),
    /// The file is too large or its name unusable.
    #[error("cannot describe {}: {source}", path.display())]
    Manifest {
        /// the file
        path: PathBuf,
        /// why
        source: shoal_core::manifest::ManifestError,
    },
}

impl StoreError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| {
            if source.raw_os_error() == Some(28) {
                // ENOSPC: say it plainly.
                return Self::NoSpace { path, needed: 0 };
            }
            Self::Io { what, path, source }
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Meta(e.to_string())
    }
}
