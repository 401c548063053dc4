//! Users and the devices that act for them.
//!
//! A user is an ed25519 key, like a node. A node's own key acts as its user unless its data dir
//! holds a separate user key; then the node carries a [`DeviceCert`]: the user key's signature
//! over a domain-separated statement naming the node. Storage grants space to users, so a user
//! with several devices shares one grant and one quota.

use std::fmt;
use std::str::FromStr;

use crate::id::{NodeId, ParseIdError};

/// A user: an ed25519 public key, printed like a node id (`12D3KooW...`).
///
/// A node acting as its own user has the same printed id as a user and as a node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(NodeId);

impl UserId {
    /// A user id from the raw ed25519 public key bytes; fails if they are not a curve point.
    pub fn from_public_key_bytes(bytes: [u8; 32]) -> Result<Self, ParseIdError> {
        NodeId::from_public_key_bytes(bytes).map(Self)
    }

    /// The raw ed25519 public key.
    pub fn public_key_bytes(&self) -> &[u8; 32] {
        self.0.public_key_bytes()
    }

    /// The last 6 characters of the printed id, for logs.
    pub fn fmt_short(&self) -> String {
        self.0.fmt_short()
    }

    /// The same key seen as a node (to check signatures with).
    fn key(&self) -> NodeId {
        self.0
    }
}

impl From<NodeId> for UserId {
    /// A node's own key acting as its user.
    fn from(node: NodeId) -> Self {
        Self(node)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.fmt_short())
    }
}

impl FromStr for UserId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<NodeId>().map(Self)
    }
}

crate::id::serde_as_text!(UserId);

/// The domain separator of a device certificate, versioned.
const DEVICE_DOMAIN: &[u8] = b"shoal user device v1";

/// A user's statement that a node acts for it: `sign(user key, DOMAIN || user || node)`.
///
/// It never expires: a user revokes a device by moving to a new user key. Storage checks it
/// with [`DeviceCert::verify`] and also that `node` is the node its TLS handshake proved.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// The user.
    pub user: UserId,
    /// The node acting for the user.
    pub node: NodeId,
    /// The user key's ed25519 signature over [`DeviceCert::signed_bytes`].
    pub signature: [u8; 64],
}

/// The encoded length of a [`DeviceCert`]: user key, node key, signature.
pub const DEVICE_CERT_LEN: usize = 32 + 32 + 64;

impl fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCert")
            .field("user", &self.user)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Why a device certificate does not prove anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not `DEVICE_CERT_LEN` long or hold an invalid key.
    #[error("malformed device certificate")]
    Malformed,
    /// The signature does not verify under the user key.
    #[error("device certificate not signed by its user key (forged?)")]
    BadSignature,
    /// The certificate names another node than the one that sent it.
    #[error("device certificate names node {named}, not this connection's node")]
    OtherNode {
        /// the node the certificate names
        named: NodeId,
    },
}

impl DeviceCert {
    /// What the user key signs: the domain, then the user and node keys.
    pub fn signed_bytes(user: &UserId, node: &NodeId) -> Vec<u8> {
        let mut out = Vec::with_capacity(DEVICE_DOMAIN.len() + 64);
        out.extend_from_slice(DEVICE_DOMAIN);
        out.extend_from_slice(user.public_key_bytes());
        out.extend_from_slice(node.public_key_bytes());
        out
    }

    /// Checks the signature, and that the certificate names `sender` (the TLS-proven node).
    pub fn verify(&self, sender: &NodeId) -> Result<(), CertError> {
        if &self.node != sender {
            return Err(CertError::OtherNode { named: self.node });
        }
        let signed = Self::signed_bytes(&self.user, &self.node);
        if !self.user.key().public_key().verify(&signed, &self.signature) {
            return Err(CertError::BadSignature);
        }
        Ok(())
    }

    /// The fixed-length encoding: user key, node key, signature.
    pub fn encode(&self) -> [u8; DEVICE_CERT_LEN] {
        let mut out = [0u8; DEVICE_CERT_LEN];
        out[..32].copy_from_slice(self.user.public_key_bytes());
        out[32..64].copy_from_slice(self.node.public_key_bytes());
        out[64..].copy_from_slice(&self.signature);
        out
    }

    /// Parses [`DeviceCert::encode`]'s output (does not verify the signature).
    pub fn decode(bytes: &[u8]) -> Result<Self, CertError> {
        if bytes.len() != DEVICE_CERT_LEN {
            return Err(CertError::Malformed);
        }
        let key = |r: std::ops::Range<usize>| -> Result<[u8; 32], CertError> {
            bytes[r].try_into().map_err(|_| CertError::Malformed)
        };
        let user = UserId::from_public_key_bytes(key(0..32)?).map_err(|_| CertError::Malformed)?;
        let node = NodeId::from_public_key_bytes(key(32..64)?).map_err(|_| CertError::Malformed)?;
        let signature = bytes[64..].try_into().map_err(|_| CertError::Malformed)?;
        Ok(Self { user, node, signature })
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;
    use proptest::prelude::*;

    use super::*;

    fn key() -> (Keypair, NodeId) {
        let kp = Keypair::generate_ed25519();
        let id = NodeId::from_public_key(&kp.public()).unwrap();
        (kp, id)
    }

    fn cert(user: &Keypair, user_id: NodeId, node: NodeId) -> DeviceCert {
        let user_id = UserId::from(user_id);
        let sig = user.sign(&DeviceCert::signed_bytes(&user_id, &node)).unwrap();
        DeviceCert { user: user_id, node, signature: sig.try_into().unwrap() }
    }

    #[test]
    fn user_id_prints_and_parses_like_a_node_id() {
        let (_, id) = key();
        let user = UserId::from(id);
        assert_eq!(user.to_string(), id.to_string());
        assert_eq!(user.to_string().parse::<UserId>().unwrap(), user);
        assert!("12D3KooWnope".parse::<UserId>().is_err());
    }

    #[test]
    fn a_signed_cert_verifies_for_its_node_only() {
        let (ukp, uid) = key();
        let (_, node) = key();
        let (_, other) = key();
        let c = cert(&ukp, uid, node);
        assert_eq!(c.verify(&node), Ok(()));
        assert_eq!(c.verify(&other), Err(CertError::OtherNode { named: node }));
        assert_eq!(DeviceCert::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn forged_certs_fail() {
        let (ukp, uid) = key();
        let (mallory, mid) = key();
        let (_, node) = key();
        // Signed by another key but claiming to be the user.
        let mut forged = cert(&mallory, mid, node);
        forged.user = UserId::from(uid);
        assert_eq!(forged.verify(&node), Err(CertError::BadSignature));
        // A real cert for another node, re-pointed at ours.
        let (_, victim_node) = key();
        let mut moved = cert(&ukp, uid, victim_node);
        moved.node = node;
        assert_eq!(moved.verify(&node), Err(CertError::BadSignature));
        // Flipped signature bit.
        let mut flipped = cert(&ukp, uid, node);
        flipped.signature[5] ^= 1;
        assert_eq!(flipped.verify(&node), Err(CertError::BadSignature));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DeviceCert::decode(&bytes);
        }
    }
}
