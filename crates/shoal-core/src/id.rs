//! Identifier newtypes: content ids, piece hashes, piece indices and node ids.

use std::fmt;
use std::str::FromStr;

use libp2p_identity::{PeerId, PublicKey};

/// Error parsing an identifier from its printed form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The text is not 64 hexadecimal digits.
    #[error("expected 64 hex digits, got {0:?}")]
    BadHex(String),
    /// The text is not a libp2p peer id.
    #[error("not a node id (a libp2p peer id like 12D3KooW...): {0:?}")]
    BadPeerId(String),
    /// The peer id is valid but not of an ed25519 key, the only kind Shoal uses.
    #[error("node id {0} is not an ed25519 key")]
    NotEd25519(String),
}

macro_rules! hash_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 8 hex digits, for logs.
            pub fn fmt_short(&self) -> String {
                hex(&self.0[..4])
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.fmt_short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bytes = data_encoding::HEXLOWER_PERMISSIVE
                    .decode(s.as_bytes())
                    .map_err(|_| ParseIdError::BadHex(s.to_string()))?;
                let arr: [u8; 32] =
                    bytes.try_into().map_err(|_| ParseIdError::BadHex(s.to_string()))?;
                Ok(Self(arr))
            }
        }
    };
}

/// Serialises an id as its printed form (hex), and parses it back: JSON records stay readable.
macro_rules! serde_as_text {
    ($name:ty) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_text;

hash_newtype!(
    /// The id of a piece of content: the BLAKE3 hash of its canonical manifest encoding.
    ContentId
);
serde_as_text!(ContentId);
hash_newtype!(
    /// The BLAKE3 hash of one piece's bytes.
    PieceHash
);
serde_as_text!(PieceHash);

impl PieceHash {
    /// Hashes one piece.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// The index of a piece within its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(pub u32);

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A node's identity: its ed25519 public key. Printed as the libp2p `PeerId` of that key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// A node id from the raw ed25519 public key bytes. Fails if the bytes are not a valid
    /// point on the curve.
    pub fn from_public_key_bytes(bytes: [u8; 32]) -> Result<Self, ParseIdError> {
        libp2p_identity::ed25519::PublicKey::try_from_bytes(&bytes)
            .map_err(|_| ParseIdError::NotEd25519(hex(&bytes)))?;
        Ok(Self(bytes))
    }

    /// The node id of a libp2p public key, if it is an ed25519 key.
    pub fn from_public_key(key: &PublicKey) -> Option<Self> {
        key.clone().try_into_ed25519().ok().map(|k| Self(k.to_bytes()))
    }

    /// The raw ed25519 public key.
    pub fn public_key_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The libp2p public key.
    pub fn public_key(&self) -> PublicKey {
        // Invariant: construction checked that the bytes are a valid ed25519 key.
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0)
            .expect("NodeId holds a valid ed25519 key");
        PublicKey::from(key)
    }

    /// The libp2p `PeerId` of this node.
    pub fn peer_id(&self) -> PeerId {
        self.public_key().to_peer_id()
    }

    /// The last 6 characters of the printed id, for logs.
    pub fn fmt_short(&self) -> String {
        let s = self.to_string();
        s[s.len().saturating_sub(6)..].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.peer_id().fmt(f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.fmt_short())
    }
}

impl FromStr for NodeId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let peer: PeerId = s.parse().map_err(|_| ParseIdError::BadPeerId(s.to_string()))?;
        // An ed25519 peer id is the identity multihash of the protobuf-encoded key.
        let mh = multihash_digest(&peer).ok_or_else(|| ParseIdError::NotEd25519(s.into()))?;
        let key =
            PublicKey::try_decode_protobuf(mh).map_err(|_| ParseIdError::NotEd25519(s.into()))?;
        Self::from_public_key(&key).ok_or_else(|| ParseIdError::NotEd25519(s.into()))
    }
}

fn multihash_digest(peer: &PeerId) -> Option<&[u8]> {
    // PeerId::as_ref gives the multihash; code 0x00 is the identity hash, which carries the
    // encoded key inline.
    let mh = peer.as_ref();
    (mh.code() == 0x00).then(|| mh.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_roundtrips_through_hex() {
        let id = ContentId::from(blake3::hash(b"x"));
        assert_eq!(id.to_string().parse::<ContentId>().unwrap(), id);
        assert!("abc".parse::<ContentId>().is_err());
    }

    #[test]
    fn node_id_prints_as_peer_id_and_parses_back() {
        let kp = libp2p_identity::Keypair::generate_ed25519();
        let id = NodeId::from_public_key(&kp.public()).unwrap();
        let printed = id.to_string();
        assert_eq!(printed, kp.public().to_peer_id().to_string());
        assert!(printed.starts_with("12D3KooW"));
        assert_eq!(printed.parse::<NodeId>().unwrap(), id);
        assert!("12D3KooWnope".parse::<NodeId>().is_err());
    }
}
