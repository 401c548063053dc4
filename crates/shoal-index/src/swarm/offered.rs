//! The holders lookups of one content offered one asker: the only ones it may report, and,
//! for holders with several addresses, the address each was handed with (its later lookups
//! keep it: a fetch stays on the link it was given).
//!
//! Kept small and written in place, as rings: every lookup records its answer here, and
//! across many swarms and askers a map of ids and addresses per asker was a cache miss per
//! answered peer (a tenth of a loaded tracker's time). A holder is known by the first 8 bytes
//! of its id, an ed25519 public key: no one can make a key to match another's 8 bytes, so a
//! report cannot name a holder its reporter was not offered.

use std::net::SocketAddr;

use shoal_core::NodeId;

use super::MAX_OFFERED;

/// What one asker was offered in one swarm.
#[derive(Debug, Default)]
pub(crate) struct Offered {
    /// The holders of the last [`MAX_OFFERED`] offers, by their ids' first 8 bytes (a ring:
    /// the oldest is overwritten first).
    ids: Vec<u64>,
    next: usize,
    /// For holders with several addresses, the address last handed out with each, at most
    /// [`MAX_OFFERED`] (a ring again).
    links: Vec<(u64, SocketAddr)>,
    next_link: usize,
}

/// The first 8 bytes of an id.
fn key(id: &NodeId) -> u64 {
    let k = id.public_key_bytes();
    u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
}

/// Puts `item` in `ring` (at most [`MAX_OFFERED`] long), over the oldest once full.
fn put<T>(ring: &mut Vec<T>, next: &mut usize, item: T) {
    if ring.len() < MAX_OFFERED {
        ring.push(item);
    } else if let Some(slot) = ring.get_mut(*next) {
        *slot = item;
    }
    *next = (*next + 1) % MAX_OFFERED;
}

impl Offered {
    /// Records that `holder` was offered; with `link`, the address it was handed with (for
    /// holders with several).
    pub(crate) fn note(&mut self, holder: &NodeId, link: Option<SocketAddr>) {
        let k = key(holder);
        put(&mut self.ids, &mut self.next, k);
        if let Some(addr) = link {
            match self.links.iter_mut().find(|(h, _)| *h == k) {
                Some(entry) => entry.1 = addr,
                None => put(&mut self.links, &mut self.next_link, (k, addr)),
            }
        }
    }

    /// Whether `holder` is among the holders offered lately.
    pub(crate) fn contains(&self, holder: &NodeId) -> bool {
        let k = key(holder);
        self.ids.contains(&k)
    }

    /// The address `holder` was last handed out with, if it has several.
    pub(crate) fn link(&self, holder: &NodeId) -> Option<SocketAddr> {
        let k = key(holder);
        self.links.iter().find(|(h, _)| *h == k).map(|&(_, a)| a)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        let mut seed = [7u8; 32];
        seed[0] = i;
        let kp = libp2p_identity::Keypair::ed25519_from_bytes(seed).expect("32 bytes");
        NodeId::from_public_key(&kp.public()).expect("an ed25519 key")
    }

    #[test]
    fn the_last_offers_are_kept_and_the_oldest_forgotten() {
        let ids: Vec<NodeId> = (0..=200).map(id).collect();
        let mut o = Offered::default();
        let addr = |i: u16| SocketAddr::from(([10, 0, 0, 1], 7000 + i));
        for (i, h) in ids.iter().enumerate() {
            // Every holder but one has several addresses.
            o.note(h, (i != 199).then(|| addr(i as u16)));
        }
        // Rings of MAX_OFFERED: the last 128 holders, and links of the last 128 with several.
        assert!(ids[201 - MAX_OFFERED..].iter().all(|h| o.contains(h)));
        assert!(ids[..201 - MAX_OFFERED].iter().all(|h| !o.contains(h)));
        assert_eq!(o.link(&ids[200]), Some(addr(200)));
        assert_eq!(o.link(&ids[199]), None, "one address: no link kept");
        assert_eq!(o.link(&ids[0]), None, "overwritten");
        // A holder handed out with another address since: the latest counts, once.
        o.note(&ids[200], Some(addr(999)));
        assert_eq!(o.link(&ids[200]), Some(addr(999)));
        assert_eq!(o.links.iter().filter(|(k, _)| *k == key(&ids[200])).count(), 1);
        assert!(o.ids.len() <= MAX_OFFERED && o.links.len() <= MAX_OFFERED);
    }
}
