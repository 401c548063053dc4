//! Re-seed tokens: the tracker's signed permission to push pieces into a storage node.

use shoal_core::{ContentId, NodeId, PieceIndex};

use super::read_node;
use crate::codec::{DecodeError, Reader};

/// The most pieces one re-seed token names.
pub const MAX_TOKEN_PIECES: usize = 1024;
const TOKEN_DOMAIN: &[u8] = b"shoal reseed token v1";

/// The tracker's permission for `holder` to push `pieces` of `content` into `storage` until
/// `expires_ms` (wall-clock milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReseedToken {
    /// The content.
    pub content: ContentId,
    /// The storage node that must accept it.
    pub storage: NodeId,
    /// The node allowed to push.
    pub holder: NodeId,
    /// Expiry, wall-clock milliseconds since the epoch.
    pub expires_ms: u64,
    /// The pieces it covers.
    pub pieces: Vec<PieceIndex>,
    /// The tracker's ed25519 signature over [`ReseedToken::signed_bytes`].
    pub signature: Vec<u8>,
}

impl ReseedToken {
    fn fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.content.as_bytes());
        out.extend_from_slice(self.storage.public_key_bytes());
        out.extend_from_slice(self.holder.public_key_bytes());
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        let pieces = &self.pieces[..self.pieces.len().min(MAX_TOKEN_PIECES)];
        out.extend_from_slice(&(pieces.len() as u16).to_be_bytes());
        for p in pieces {
            out.extend_from_slice(&p.0.to_be_bytes());
        }
    }

    /// The bytes the tracker signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = TOKEN_DOMAIN.to_vec();
        self.fields(&mut out);
        out
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.fields(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the wire form (the signature is not checked here).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(0, bytes);
        let content = ContentId(r.array()?);
        let storage = read_node(&mut r)?;
        let holder = read_node(&mut r)?;
        let expires_ms = r.u64()?;
        let n = r.u16()? as usize;
        if n > MAX_TOKEN_PIECES {
            return Err(r.malformed("token names too many pieces"));
        }
        let pieces = (0..n).map(|_| r.u32().map(PieceIndex)).collect::<Result<_, _>>()?;
        let signature = r.bytes(64)?.to_vec();
        r.finish()?;
        Ok(Self { content, storage, holder, expires_ms, pieces, signature })
    }
}
