//! The holders lookups of one content offered one asker: the only ones it may report, and,
//! for holders with several addresses, the address each was handed with (its later lookups
//! keep it: a fetch stays on the link it was given).
//!
//! Kept small and written in place: every lookup records its answer here, and across many
//! swarms and askers a map of ids and addresses per asker was a cache miss per answered peer
//! (a tenth of a loaded tracker's time). A holder is known by a 64-bit hash of its id under a
//! secret drawn at random per process: ids are public keys anyone may choose, and with the
//! ids' own first 8 bytes a stranger could grind a key matching one of a million holders in
//! about 2^44 tries, then report that holder by its double; against a secret hash nothing can
//! be ground offline.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::OnceLock;

use shoal_core::NodeId;

use super::MAX_OFFERED;

/// What one asker was offered in one swarm.
#[derive(Debug, Default)]
pub(crate) struct Offered {
    /// The last [`MAX_OFFERED`] distinct holders offered, by key (a ring: the oldest is
    /// overwritten first).
    ids: Vec<u64>,
    next: usize,
    /// For holders with several addresses, the address last handed out with each, oldest
    /// first, at most [`MAX_OFFERED`].
    links: Vec<(u64, SocketAddr)>,
}

/// A holder's key: its id hashed under the process's secret.
fn key(id: &NodeId) -> u64 {
    static SECRET: OnceLock<foldhash::fast::FixedState> = OnceLock::new();
    let state = SECRET.get_or_init(|| {
        // The standard library's randomly keyed hasher is the process's source of a secret.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x0ffe_7ed0_u64);
        foldhash::fast::FixedState::with_seed(seed)
    });
    state.hash_one(id)
}

impl Offered {
    /// Room for `n` more holders at once (a lookup's answer), not grown one at a time.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.ids.reserve(n.min(MAX_OFFERED - self.ids.len().min(MAX_OFFERED)));
    }

    /// Records that `holder` was offered; with `link`, the address it was handed with (for
    /// holders with several).
    pub(crate) fn note(&mut self, holder: &NodeId, link: Option<SocketAddr>) {
        let k = key(holder);
        if !self.ids.contains(&k) {
            if self.ids.len() < MAX_OFFERED {
                self.ids.push(k);
            } else if let Some(slot) = self.ids.get_mut(self.next) {
                *slot = k;
            }
            self.next = (self.next + 1) % MAX_OFFERED;
        }
        if let Some(addr) = link {
            // The newest last: a link in use is the last to be forgotten.
            if let Some(i) = self.links.iter().position(|(h, _)| *h == k) {
                self.links.remove(i);
            } else if self.links.len() >= MAX_OFFERED {
                self.links.remove(0);
            }
            self.links.push((k, addr));
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
        self.links.iter().rev().find(|(h, _)| *h == k).map(|&(_, a)| a)
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

    #[test]
    fn holders_offered_again_keep_their_place_and_older_ones_stay() {
        let ids: Vec<NodeId> = (0..=130).map(id).collect();
        let mut o = Offered::default();
        o.note(&ids[0], None);
        // One holder offered again and again: still one entry, the first one kept.
        for _ in 0..500 {
            o.note(&ids[1], None);
        }
        assert!(o.contains(&ids[0]) && o.contains(&ids[1]));
        assert_eq!(o.ids.len(), 2);
        // A link in use is refreshed: 127 others with links later, it is still known.
        let addr = |i: u16| SocketAddr::from(([10, 0, 0, 2], 7000 + i));
        o.note(&ids[2], Some(addr(2)));
        for (i, h) in ids.iter().enumerate().skip(3) {
            o.note(h, Some(addr(i as u16)));
            if i == 60 {
                o.note(&ids[2], Some(addr(2)));
            }
        }
        assert_eq!(o.link(&ids[2]), Some(addr(2)), "refreshed, not overwritten");
        assert_eq!(o.link(&ids[3]), None, "the oldest link went first");
    }
}
