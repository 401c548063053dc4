//! The node key, stored in the data dir.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p_identity::Keypair;
use shoal_core::NodeId;

/// The key file's name inside the data dir.
pub const KEY_FILE: &str = "node.key";

/// Error loading or creating the node key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("cannot access node key {path}: {source}")]
    Io {
        /// the key file
        path: PathBuf,
        /// the cause
        source: io::Error,
    },
    /// The key file does not hold an ed25519 libp2p key.
    #[error("node key {0} is corrupt (move it away to make a new identity)")]
    Corrupt(PathBuf),
}

/// A node's keypair and id.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
    node_id: NodeId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh random identity (not stored).
    pub fn generate() -> Self {
        Self::from_keypair(Keypair::generate_ed25519()).expect("generated key is ed25519")
    }

    fn from_keypair(keypair: Keypair) -> Option<Self> {
        let node_id = NodeId::from_public_key(&keypair.public())?;
        Some(Self { keypair, node_id })
    }

    /// Loads the key from `dir`, or creates one there (mode 0600) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        let io_err = |source| IdentityError::Io { path: path.clone(), source };
        match fs::read(&path) {
            Ok(bytes) => {
                let mode = fs::metadata(&path).map_err(io_err)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "node key was readable by others; setting mode 0600");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                        .map_err(io_err)?;
                }
                Keypair::from_protobuf_encoding(&bytes)
                    .ok()
                    .and_then(Self::from_keypair)
                    .ok_or_else(|| IdentityError::Corrupt(path.clone()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = Self::generate();
                let bytes = id.keypair.to_protobuf_encoding().expect("ed25519 encodes");
                // Write under a temporary name and rename, so a crash never leaves half a key.
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io_err)?;
                f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io_err)?;
                fs::rename(&tmp, &path).map_err(io_err)?;
                Ok(id)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Signs `msg` with the node key (ed25519, 64 bytes). Anyone can check it against the
    /// node id: `node_id.public_key().verify(msg, sig)`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.keypair.sign(msg).expect("ed25519 signing does not fail")
    }

    /// The 32-byte ed25519 secret seed.
    pub(crate) fn secret_seed(&self) -> [u8; 32] {
        let ed = self.keypair.clone().try_into_ed25519().expect("identity is ed25519");
        let mut seed = [0u8; 32];
        seed.copy_from_slice(ed.secret().as_ref());
        seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        fs::write(dir.path().join(KEY_FILE), b"junk").unwrap();
        assert!(matches!(Identity::load_or_create(dir.path()), Err(IdentityError::Corrupt(_))));
    }
}
