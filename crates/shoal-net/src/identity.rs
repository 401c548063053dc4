//! The node key, and the optional separate user key, stored in the data dir.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p_identity::Keypair;
use shoal_core::{DeviceCert, NodeId, UserId};

/// The key file's name inside the data dir.
pub const KEY_FILE: &str = "node.key";
/// The separate user key's file name inside the data dir (absent: the node key is the user).
pub const USER_KEY_FILE: &str = "user.key";

/// The certificate of a linked device inside the data dir: another device's user key signed
/// that this node acts for it (`shoal user link` there, `shoal user use` here).
pub const DEVICE_CERT_FILE: &str = "device.cert";

/// The printed form of a device certificate starts with this.
pub const DEVICE_CERT_PREFIX: &str = "shoaldev1";

/// Error reading a printed device certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Not a printed certificate.
    #[error(
        "not a device certificate (it starts with {DEVICE_CERT_PREFIX}; was it copied whole?)"
    )]
    Malformed,
    /// It does not name this node, or its signature fails.
    #[error("{0}")]
    Invalid(#[from] shoal_core::user::CertError),
    /// Storing it failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// the cause
        source: io::Error,
    },
}

/// A device certificate as one line of text: the prefix and its bytes in lowercase base32.
pub fn print_device_cert(cert: &DeviceCert) -> String {
    let b32 = data_encoding::BASE32_NOPAD.encode(&cert.encode()).to_ascii_lowercase();
    format!("{DEVICE_CERT_PREFIX}{b32}")
}

/// Reads [`print_device_cert`]'s output and checks that it names `node` and verifies.
pub fn parse_device_cert(s: &str, node: &NodeId) -> Result<DeviceCert, LinkError> {
    let body = s.trim().strip_prefix(DEVICE_CERT_PREFIX).ok_or(LinkError::Malformed)?;
    let raw = data_encoding::BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| LinkError::Malformed)?;
    let cert = DeviceCert::decode(&raw).map_err(|_| LinkError::Malformed)?;
    cert.verify(node)?;
    Ok(cert)
}

/// The linked-device certificate stored in `dir`, if any (checked against `node`; a file that
/// does not verify is ignored with a warning).
pub fn load_device_cert(dir: &Path, node: &NodeId) -> Option<DeviceCert> {
    let text = fs::read_to_string(dir.join(DEVICE_CERT_FILE)).ok()?;
    match parse_device_cert(&text, node) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the stored device certificate");
            None
        }
    }
}

/// Stores a linked-device certificate in `dir` (mode 0600, atomically).
pub fn store_device_cert(dir: &Path, cert: &DeviceCert) -> Result<(), LinkError> {
    let path = dir.join(DEVICE_CERT_FILE);
    let io_err = |source| LinkError::Io { path: path.clone(), source };
    let (mut f, tmp) = create_private_beside(&path).map_err(io_err)?;
    f.write_all(print_device_cert(cert).as_bytes()).and_then(|()| f.sync_all()).map_err(io_err)?;
    fs::rename(&tmp, &path).map_err(io_err)
}

/// Error loading or creating the node key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("cannot access key {path}: {source}")]
    Io {
        /// the key file
        path: PathBuf,
        /// the cause
        source: io::Error,
    },
    /// The key file does not hold an ed25519 libp2p key.
    #[error("key {0} is corrupt (move it away to make a new identity)")]
    Corrupt(PathBuf),
    /// A user key exists already; making another would orphan the user's grants.
    #[error("a user key exists already at {0} (move it away first to make another user)")]
    Exists(PathBuf),
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
        match Self::load(&path)? {
            Some(id) => Ok(id),
            // Two processes creating the key at once (a daemon starting while `shoal user`
            // runs) agree on one: the second finds the first's and loads it.
            None => match Self::create(dir, KEY_FILE) {
                Err(IdentityError::Exists(_)) => {
                    Self::load(&path)?.ok_or_else(|| IdentityError::Corrupt(path.clone()))
                }
                other => other,
            },
        }
    }

    /// The separate user key in `dir`, if there is one.
    pub fn load_user(dir: &Path) -> Result<Option<Self>, IdentityError> {
        Self::load(&dir.join(USER_KEY_FILE))
    }

    /// Creates a separate user key in `dir` (mode 0600); refuses if one exists.
    pub fn create_user(dir: &Path) -> Result<Self, IdentityError> {
        Self::create(dir, USER_KEY_FILE)
    }

    /// This key as a user.
    pub fn user_id(&self) -> UserId {
        UserId::from(self.node_id)
    }

    /// This (user) key's certificate that `node` acts for it.
    pub fn device_cert(&self, node: NodeId) -> DeviceCert {
        let user = self.user_id();
        let sig = self.sign(&DeviceCert::signed_bytes(&user, &node));
        // Invariant: ed25519 signatures are 64 bytes.
        let signature = sig.try_into().expect("ed25519 signature is 64 bytes");
        DeviceCert { user, node, signature }
    }

    /// Reads a key file; `None` if it does not exist.
    fn load(path: &Path) -> Result<Option<Self>, IdentityError> {
        let io_err = |source| IdentityError::Io { path: path.to_path_buf(), source };
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mode = fs::metadata(path).map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "key was readable by others; setting mode 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        }
        Keypair::from_protobuf_encoding(&bytes)
            .ok()
            .and_then(Self::from_keypair)
            .map(Some)
            .ok_or_else(|| IdentityError::Corrupt(path.to_path_buf()))
    }

    /// Writes a fresh key as `dir/name`, refusing to replace an existing file
    /// ([`IdentityError::Exists`]). Written to a private temporary file first, so a crash
    /// never leaves half a key.
    fn create(dir: &Path, name: &str) -> Result<Self, IdentityError> {
        let path = dir.join(name);
        let io_err = |source| IdentityError::Io { path: path.clone(), source };
        let id = Self::generate();
        let bytes = id.keypair.to_protobuf_encoding().expect("ed25519 encodes");
        let (mut f, tmp) = create_private_beside(&path).map_err(io_err)?;
        let written = f.write_all(&bytes).and_then(|()| f.sync_all());
        // A hard link fails if the name exists, where a rename would replace it.
        let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(IdentityError::Exists(path)),
            other => other.map(|()| id).map_err(io_err),
        }
    }

    /// The key in its stored form (libp2p protobuf encoding): for an operator's shared store
    /// of a key several processes present (tracker replicas). Secret: handle like the key file.
    pub fn key_bytes(&self) -> Vec<u8> {
        // Invariant: an ed25519 keypair always encodes.
        self.keypair.to_protobuf_encoding().expect("ed25519 encodes")
    }

    /// A key from [`Identity::key_bytes`]; `None` if the bytes are not an ed25519 key.
    pub fn from_key_bytes(bytes: &[u8]) -> Option<Self> {
        Keypair::from_protobuf_encoding(bytes).ok().and_then(Self::from_keypair)
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

/// Creates a new file beside `path` for writing, readable only by its owner (mode 0600), under
/// a name no other process uses (`NAME.PID.NANOS.tmp`), created exclusively: it never follows a
/// planted symlink nor shares a file with a concurrent writer. The caller renames or links it
/// into place, or removes it.
pub fn create_private_beside(path: &Path) -> io::Result<(fs::File, std::path::PathBuf)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_file_name(format!("{name}.{}.{nanos}.tmp", std::process::id()));
    let f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    Ok((f, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_device_cert_reads_back_for_its_node_only() {
        let user = Identity::generate();
        let (node, other) = (Identity::generate().node_id(), Identity::generate().node_id());
        let cert = user.device_cert(node);
        let text = print_device_cert(&cert);
        assert!(text.starts_with(DEVICE_CERT_PREFIX));
        assert_eq!(parse_device_cert(&text, &node).unwrap(), cert);
        // Whitespace around it is fine (a pasted line); upper case too.
        assert_eq!(parse_device_cert(&format!(" {} \n", text), &node).unwrap(), cert);
        assert!(matches!(parse_device_cert(&text, &other), Err(LinkError::Invalid(_))));
        assert!(matches!(parse_device_cert(&text[..40], &node), Err(LinkError::Malformed)));
        assert!(matches!(parse_device_cert("shoaldev1!!", &node), Err(LinkError::Malformed)));
        let dir = tempfile::tempdir().unwrap();
        assert!(load_device_cert(dir.path(), &node).is_none());
        store_device_cert(dir.path(), &cert).unwrap();
        assert_eq!(load_device_cert(dir.path(), &node), Some(cert));
        assert!(
            load_device_cert(dir.path(), &other).is_none(),
            "a cert for another node is ignored"
        );
    }

    #[test]
    fn processes_creating_the_key_at_once_agree_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<NodeId> = std::thread::scope(|scope| {
            let joins: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Identity::load_or_create(dir.path()).unwrap().node_id()))
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let on_disk = Identity::load_or_create(dir.path()).unwrap().node_id();
        assert!(ids.iter().all(|&id| id == on_disk), "every creator returned the key on disk");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left");
    }

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

    #[test]
    fn a_user_key_is_created_once_and_certifies_the_node() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load_user(dir.path()).unwrap().is_none());
        let node = Identity::load_or_create(dir.path()).unwrap();
        let user = Identity::create_user(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(USER_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(Identity::create_user(dir.path()), Err(IdentityError::Exists(_))));
        let again = Identity::load_user(dir.path()).unwrap().unwrap();
        assert_eq!(again.user_id(), user.user_id());
        assert_ne!(user.user_id(), UserId::from(node.node_id()));
        let cert = user.device_cert(node.node_id());
        assert_eq!(cert.verify(&node.node_id()), Ok(()));
        assert!(!dir.path().join(format!("{USER_KEY_FILE}.tmp")).exists());
    }
}
