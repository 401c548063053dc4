//! Offline tasks: their ids, and the growing manifest storage signs while it fetches one.
//!
//! An offline task has storage fetch a URL for a user. The content id exists only at the end,
//! yet a device must check each piece as soon as storage has it. So storage signs the piece
//! hashes of each finished segment with its node key: a [`SegmentProof`] binds the task, the
//! resource's size (which fixes the piece size, see [`crate::piece`]), the first piece and the
//! hashes. Anyone who trusts the storage node's key (the tracker vouches for admitted storage)
//! checks the pieces against it; at the end the final [`crate::Manifest`] must list exactly the
//! same hashes, which the follower checks before it trusts the content id.

use std::fmt;
use std::str::FromStr;

use crate::id::{serde_as_text, ParseIdError};
use crate::piece::{self, MAX_PIECES};
use crate::{NodeId, PieceHash, PieceIndex};

/// An offline task: 16 random bytes, printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub [u8; 16]);

impl TaskId {
    /// The first 8 hex digits, for logs.
    pub fn fmt_short(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0[..4])
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.fmt_short())
    }
}

impl FromStr for TaskId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.trim().as_bytes())
            .map_err(|_| ParseIdError::BadHex(s.to_string()))?;
        bytes.try_into().map(Self).map_err(|_| ParseIdError::BadHex(s.to_string()))
    }
}

serde_as_text!(TaskId);

/// The domain separator of a segment proof, versioned.
const SEGMENT_DOMAIN: &[u8] = b"shoal offline segment v1";

/// Storage's signed statement that pieces `first .. first + hashes.len()` of a task's resource
/// have these hashes: `sign(storage key, DOMAIN || task || size || first || count || hashes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SegmentProof {
    /// The task.
    pub task: TaskId,
    /// The resource's size in bytes (fixes the piece size and count).
    pub size: u64,
    /// The first piece the proof covers.
    pub first: PieceIndex,
    /// The hashes of pieces `first ..`, in order.
    pub hashes: Vec<PieceHash>,
    /// The storage key's ed25519 signature over [`SegmentProof::signed_bytes`].
    pub signature: [u8; 64],
}

impl fmt::Debug for SegmentProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentProof")
            .field("task", &self.task)
            .field("size", &self.size)
            .field("first", &self.first.0)
            .field("count", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

/// Why a segment proof proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The pieces run past the resource's last piece, or there are none.
    #[error("segment proof covers pieces {first}..{end} of a resource with {count} pieces")]
    OutOfRange {
        /// the first piece covered
        first: u32,
        /// one past the last piece covered
        end: u64,
        /// the resource's piece count
        count: u64,
    },
    /// The signature does not verify under the storage key.
    #[error("segment proof not signed by the storage node (forged?)")]
    BadSignature,
}

impl SegmentProof {
    /// What the storage key signs.
    pub fn signed_bytes(
        task: &TaskId,
        size: u64,
        first: PieceIndex,
        hashes: &[PieceHash],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEGMENT_DOMAIN.len() + 32 + 32 * hashes.len());
        out.extend_from_slice(SEGMENT_DOMAIN);
        out.extend_from_slice(&task.0);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&first.0.to_be_bytes());
        out.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
        for h in hashes {
            out.extend_from_slice(h.as_bytes());
        }
        out
    }

    /// Checks that the pieces lie within the resource and that `storage` signed them.
    pub fn verify(&self, storage: &NodeId) -> Result<(), ProofError> {
        let count = resource_pieces(self.size);
        let end = u64::from(self.first.0) + self.hashes.len() as u64;
        if self.hashes.is_empty() || end > count {
            return Err(ProofError::OutOfRange { first: self.first.0, end, count });
        }
        let signed = Self::signed_bytes(&self.task, self.size, self.first, &self.hashes);
        if !storage.public_key().verify(&signed, &self.signature) {
            return Err(ProofError::BadSignature);
        }
        Ok(())
    }
}

/// The piece count of a resource of `size` bytes under the piece-size rule (an empty resource
/// has none).
pub fn resource_pieces(size: u64) -> u64 {
    piece::piece_count(size, piece::piece_log2_for(size)).min(MAX_PIECES)
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;

    use super::*;

    fn proof(kp: &Keypair, size: u64, first: u32, n: usize) -> SegmentProof {
        let task = TaskId([7; 16]);
        let hashes: Vec<PieceHash> = (0..n).map(|i| PieceHash([i as u8; 32])).collect();
        let first = PieceIndex(first);
        let sig = kp.sign(&SegmentProof::signed_bytes(&task, size, first, &hashes)).unwrap();
        SegmentProof { task, size, first, hashes, signature: sig.try_into().unwrap() }
    }

    #[test]
    fn task_ids_print_and_parse() {
        let t = TaskId([0xab; 16]);
        assert_eq!(t.to_string().len(), 32);
        assert_eq!(t.to_string().parse::<TaskId>().unwrap(), t);
        assert!("abcd".parse::<TaskId>().is_err());
        assert!("zz".repeat(16).parse::<TaskId>().is_err());
    }

    #[test]
    fn a_proof_verifies_under_its_storage_key_only() {
        let kp = Keypair::generate_ed25519();
        let storage = NodeId::from_public_key(&kp.public()).unwrap();
        let other = NodeId::from_public_key(&Keypair::generate_ed25519().public()).unwrap();
        // 4 MiB: 128 pieces of 32 KiB.
        let p = proof(&kp, 4 << 20, 8, 8);
        assert_eq!(p.verify(&storage), Ok(()));
        assert_eq!(p.verify(&other), Err(ProofError::BadSignature));
        // Any changed field breaks the signature.
        let mut q = p.clone();
        q.hashes[3] = PieceHash([0xff; 32]);
        assert_eq!(q.verify(&storage), Err(ProofError::BadSignature));
        let mut q = p.clone();
        q.first = PieceIndex(9);
        assert_eq!(q.verify(&storage), Err(ProofError::BadSignature));
        let mut q = p;
        q.task = TaskId([8; 16]);
        assert_eq!(q.verify(&storage), Err(ProofError::BadSignature));
    }

    #[test]
    fn a_proof_past_the_last_piece_or_empty_is_refused() {
        let kp = Keypair::generate_ed25519();
        let storage = NodeId::from_public_key(&kp.public()).unwrap();
        // 2 MiB, 64 pieces: 60..64 is the end, 60..65 runs past it.
        assert_eq!(proof(&kp, 2 << 20, 60, 4).verify(&storage), Ok(()));
        assert!(matches!(
            proof(&kp, 2 << 20, 60, 5).verify(&storage),
            Err(ProofError::OutOfRange { end: 65, count: 64, .. })
        ));
        assert!(matches!(
            proof(&kp, 2 << 20, 0, 0).verify(&storage),
            Err(ProofError::OutOfRange { .. })
        ));
    }
}
