//! The bytes of the replicated state: hash values (the same formats as the sled backend's)
//! and batches of changes in the stream. Every decoder has a hard size limit and answers
//! `None` on anything malformed: Redis is shared infrastructure, not a trusted peer.

use bytes::Bytes;
use shoal_core::{Bitfield, ContentId, NodeId};

use crate::{NodeEntry, Persist};

/// The longest node entry kept (JSON; a few addresses and a region take a few hundred bytes).
pub(crate) const MAX_NODE_VALUE: usize = 16 * 1024;
/// The longest holding value: a piece count and a bitfield of the most pieces a content has.
pub(crate) const MAX_HOLDING_VALUE: usize = 4 + (shoal_core::piece::MAX_PIECES as usize) / 8;
/// The longest manifest.
pub(crate) const MAX_MANIFEST_VALUE: usize = shoal_core::manifest::MAX_ENCODED_LEN;
/// The most bytes one stream entry carries: a batch is split once it reaches
/// [`super::ENTRY_TARGET`], so an entry is below it plus one change (a manifest at most).
pub(crate) const MAX_ENTRY: usize = super::ENTRY_TARGET + MAX_MANIFEST_VALUE + 64;
/// The most changes one stream entry carries.
pub(crate) const MAX_OPS_PER_ENTRY: usize = 4096;

const PUT_NODE: u8 = 1;
const REMOVE_NODE: u8 = 2;
const PUT_HOLDING: u8 = 3;
const REMOVE_HOLDING: u8 = 4;
const PUT_MANIFEST: u8 = 5;
const REMOVE_MANIFEST: u8 = 6;

pub(crate) fn encode_node(e: &NodeEntry) -> Vec<u8> {
    // Invariant: a struct of numbers, addresses and a checked region always serialises.
    serde_json::to_vec(e).expect("node entries serialise")
}

pub(crate) fn decode_node(v: &[u8]) -> Option<NodeEntry> {
    if v.len() > MAX_NODE_VALUE {
        return None;
    }
    serde_json::from_slice(v).ok()
}

pub(crate) fn encode_holding(bf: &Bitfield) -> Vec<u8> {
    let mut v = bf.len().to_be_bytes().to_vec();
    v.extend_from_slice(bf.as_bytes());
    v
}

pub(crate) fn decode_holding(v: &[u8]) -> Option<Bitfield> {
    if v.len() > MAX_HOLDING_VALUE || v.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(v[..4].try_into().ok()?);
    if u64::from(len) > shoal_core::piece::MAX_PIECES {
        return None;
    }
    Bitfield::from_bytes(len, &v[4..]).ok()
}

pub(crate) fn node_key(n: &NodeId) -> [u8; 32] {
    *n.public_key_bytes()
}

pub(crate) fn decode_node_key(k: &[u8]) -> Option<NodeId> {
    NodeId::from_public_key_bytes(k.try_into().ok()?).ok()
}

pub(crate) fn holding_key(c: &ContentId, n: &NodeId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(c.as_bytes());
    k[32..].copy_from_slice(n.public_key_bytes());
    k
}

pub(crate) fn decode_holding_key(k: &[u8]) -> Option<(ContentId, NodeId)> {
    if k.len() != 64 {
        return None;
    }
    Some((ContentId(k[..32].try_into().ok()?), decode_node_key(&k[32..])?))
}

pub(crate) fn decode_content_key(k: &[u8]) -> Option<ContentId> {
    Some(ContentId(k.try_into().ok()?))
}

/// Appends one change: a kind byte, its keys, and a length-prefixed value for puts.
pub(crate) fn encode_op(out: &mut Vec<u8>, op: &Persist) {
    let value = |out: &mut Vec<u8>, v: &[u8]| {
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    };
    match op {
        Persist::PutNode(n, e) => {
            out.push(PUT_NODE);
            out.extend_from_slice(&node_key(n));
            value(out, &encode_node(e));
        }
        Persist::RemoveNode(n) => {
            out.push(REMOVE_NODE);
            out.extend_from_slice(&node_key(n));
        }
        Persist::PutHolding(c, n, bf) => {
            out.push(PUT_HOLDING);
            out.extend_from_slice(&holding_key(c, n));
            value(out, &encode_holding(bf));
        }
        Persist::RemoveHolding(c, n) => {
            out.push(REMOVE_HOLDING);
            out.extend_from_slice(&holding_key(c, n));
        }
        Persist::PutManifest(c, m) => {
            out.push(PUT_MANIFEST);
            out.extend_from_slice(c.as_bytes());
            value(out, m);
        }
        Persist::RemoveManifest(c) => {
            out.push(REMOVE_MANIFEST);
            out.extend_from_slice(c.as_bytes());
        }
    }
}

/// Reads `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_value<'a>(rest: &mut &'a [u8], max: usize) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(take(rest, 4)?.try_into().ok()?) as usize;
    if len > max {
        return None;
    }
    take(rest, len)
}

/// Decodes a batch written by [`encode_op`]s; `None` if any of it is malformed, too long, or
/// holds more than [`MAX_OPS_PER_ENTRY`] changes.
pub(crate) fn decode_batch(mut rest: &[u8]) -> Option<Vec<Persist>> {
    if rest.len() > MAX_ENTRY {
        return None;
    }
    let mut ops = Vec::new();
    while !rest.is_empty() {
        if ops.len() >= MAX_OPS_PER_ENTRY {
            return None;
        }
        let kind = take(&mut rest, 1)?[0];
        let op = match kind {
            PUT_NODE => {
                let n = decode_node_key(take(&mut rest, 32)?)?;
                Persist::PutNode(n, decode_node(take_value(&mut rest, MAX_NODE_VALUE)?)?)
            }
            REMOVE_NODE => Persist::RemoveNode(decode_node_key(take(&mut rest, 32)?)?),
            PUT_HOLDING => {
                let (c, n) = decode_holding_key(take(&mut rest, 64)?)?;
                Persist::PutHolding(
                    c,
                    n,
                    decode_holding(take_value(&mut rest, MAX_HOLDING_VALUE)?)?,
                )
            }
            REMOVE_HOLDING => {
                let (c, n) = decode_holding_key(take(&mut rest, 64)?)?;
                Persist::RemoveHolding(c, n)
            }
            PUT_MANIFEST => {
                let c = decode_content_key(take(&mut rest, 32)?)?;
                let m = take_value(&mut rest, MAX_MANIFEST_VALUE)?;
                Persist::PutManifest(c, Bytes::copy_from_slice(m))
            }
            REMOVE_MANIFEST => Persist::RemoveManifest(decode_content_key(take(&mut rest, 32)?)?),
            _ => return None,
        };
        ops.push(op);
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use shoal_core::PieceIndex;

    use super::*;

    fn node(seed: u8) -> NodeId {
        let mut key = [seed; 32];
        key[0] = 1;
        let secret = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut key).unwrap();
        let kp = libp2p_identity::ed25519::Keypair::from(secret);
        NodeId::from_public_key(&libp2p_identity::PublicKey::from(kp.public())).unwrap()
    }

    fn op_strategy() -> impl Strategy<Value = Persist> {
        let entry = (any::<bool>(), any::<u64>(), any::<u32>(), any::<u64>(), 0usize..4).prop_map(
            |(storage, seen, uploads, rate, addrs)| NodeEntry {
                storage,
                addrs: (0..addrs).map(|i| ([10, 0, 0, i as u8], 7000).into()).collect(),
                last_seen_ms: seen,
                active_uploads: uploads,
                upload_rate: rate,
                region: None,
            },
        );
        let bits =
            (1u32..2000, proptest::collection::vec(any::<u32>(), 0..20)).prop_map(|(n, ones)| {
                let mut b = Bitfield::new(n);
                ones.iter().for_each(|&p| {
                    b.set(PieceIndex(p % n));
                });
                b
            });
        prop_oneof![
            (any::<u8>(), entry).prop_map(|(s, e)| Persist::PutNode(node(s), e)),
            any::<u8>().prop_map(|s| Persist::RemoveNode(node(s))),
            (any::<[u8; 32]>(), any::<u8>(), bits).prop_map(|(c, s, b)| Persist::PutHolding(
                ContentId(c),
                node(s),
                b
            )),
            (any::<[u8; 32]>(), any::<u8>())
                .prop_map(|(c, s)| Persist::RemoveHolding(ContentId(c), node(s))),
            (any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(c, m)| Persist::PutManifest(ContentId(c), m.into())),
            any::<[u8; 32]>().prop_map(|c| Persist::RemoveManifest(ContentId(c))),
        ]
    }

    proptest! {
        #[test]
        fn batches_roundtrip(ops in proptest::collection::vec(op_strategy(), 0..16)) {
            let mut out = Vec::new();
            ops.iter().for_each(|op| encode_op(&mut out, op));
            prop_assert_eq!(decode_batch(&out), Some(ops));
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
        }

        #[test]
        fn a_truncated_batch_is_never_read_whole(ops in proptest::collection::vec(op_strategy(), 1..4), cut in 1usize..64) {
            let mut out = Vec::new();
            ops.iter().for_each(|op| encode_op(&mut out, op));
            let cut = cut.min(out.len());
            // Cut inside a change: refused; cut between changes: the changes before the cut.
            let got = decode_batch(&out[..out.len() - cut]);
            prop_assert!(got.is_none_or(|d| d.len() < ops.len() && ops.starts_with(&d)));
        }
    }

    #[test]
    fn value_limits() {
        // Boundary table for holdings: piece count, then the bits.
        let ok = encode_holding(&Bitfield::new(8));
        assert!(decode_holding(&ok).is_some());
        assert!(decode_holding(&ok[..3]).is_none(), "shorter than a piece count");
        let most = encode_holding(&Bitfield::new(shoal_core::piece::MAX_PIECES as u32));
        assert_eq!(most.len(), MAX_HOLDING_VALUE, "the largest holding fits exactly");
        assert!(decode_holding(&most).is_some());
        let mut over = (shoal_core::piece::MAX_PIECES as u32 + 1).to_be_bytes().to_vec();
        over.extend(std::iter::repeat_n(0, 8193));
        assert!(decode_holding(&over).is_none(), "one piece past the most");
        assert!(decode_node(&vec![b' '; MAX_NODE_VALUE + 1]).is_none());
        assert!(decode_node(b"{}").is_none());
        // A value length past its kind's limit is refused before anything is read.
        let mut out = vec![PUT_MANIFEST];
        out.extend_from_slice(&[0; 32]);
        out.extend_from_slice(&(MAX_MANIFEST_VALUE as u32 + 1).to_be_bytes());
        assert_eq!(decode_batch(&out), None);
        // An unknown kind.
        assert_eq!(decode_batch(&[9]), None);
        assert_eq!(decode_batch(&[]), Some(Vec::new()));
    }
}
