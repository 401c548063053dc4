//! Helpers shared by this crate's property tests.

use proptest::prelude::*;
use shoal_core::NodeId;

use crate::codec::{encode, Decoder, Frame};

/// A fixed valid node id (the ed25519 base point).
pub(crate) fn node_id() -> NodeId {
    let mut k = [0u8; 32];
    k[0] = 0x58;
    k[1..].fill(0x66);
    NodeId::from_public_key_bytes(k).unwrap()
}

/// Encodes `f`, checks the frame fits `limit`, that every strict prefix decodes as
/// incomplete, and that the whole decodes back to `f`.
pub(crate) fn roundtrip<F: Frame + PartialEq + std::fmt::Debug>(
    f: &F,
    limit: usize,
) -> Result<(), TestCaseError> {
    let bytes = encode(f);
    prop_assert!(bytes.len() - 4 <= limit);
    let mut d = Decoder::with_limit(limit);
    for b in &bytes[..bytes.len() - 1] {
        d.feed(std::slice::from_ref(b));
        prop_assert_eq!(d.decode::<F>().unwrap(), None);
    }
    d.feed(&bytes[bytes.len() - 1..]);
    let decoded = d.decode::<F>().unwrap();
    prop_assert_eq!(decoded.as_ref(), Some(f));
    Ok(())
}
