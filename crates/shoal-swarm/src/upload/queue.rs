//! The waiting requests, indexed so the next grant is found in O(log n) rather than by a scan:
//! ordered by (times sent, ticket) in two sets, peers under their share and peers at it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

use super::{PieceKey, Ticket};

#[derive(Debug)]
pub(super) struct Waiter<P, C> {
    pub(super) peer: P,
    pub(super) key: Option<PieceKey<C>>,
    pub(super) bytes: u64,
    pub(super) deadline: Instant,
    /// Its place: times its piece was sent when last counted, and which set holds it.
    count: u16,
    under: bool,
}

#[derive(Debug)]
pub(super) struct Queue<P, C> {
    waiters: BTreeMap<Ticket, Waiter<P, C>>,
    /// Waiters of peers holding fewer slots than their share, by (times sent, ticket).
    under: BTreeSet<(u16, Ticket)>,
    /// Waiters of peers holding their share.
    over: BTreeSet<(u16, Ticket)>,
    by_piece: HashMap<(C, u32), Vec<Ticket>>,
    by_peer: BTreeMap<P, Vec<Ticket>>,
    deadlines: BTreeSet<(Instant, Ticket)>,
}

impl<P, C> Default for Queue<P, C> {
    fn default() -> Self {
        Self {
            waiters: BTreeMap::new(),
            under: BTreeSet::new(),
            over: BTreeSet::new(),
            by_piece: HashMap::new(),
            by_peer: BTreeMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

fn detach(list: &mut Vec<Ticket>, t: Ticket) {
    if let Some(i) = list.iter().position(|&x| x == t) {
        list.swap_remove(i);
    }
}

impl<P: Copy + Ord, C: Copy + Eq + Hash> Queue<P, C> {
    pub(super) fn len(&self) -> usize {
        self.waiters.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub(super) fn get(&self, t: Ticket) -> Option<&Waiter<P, C>> {
        self.waiters.get(&t)
    }

    /// Queues a request: `count`, times its piece was sent; `under`, its peer is under share.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        t: Ticket,
        peer: P,
        key: Option<PieceKey<C>>,
        bytes: u64,
        deadline: Instant,
        count: u16,
        under: bool,
    ) {
        self.set_of(under).insert((count, t));
        if let Some(k) = &key {
            self.by_piece.entry((k.content, k.piece.0)).or_default().push(t);
        }
        self.by_peer.entry(peer).or_default().push(t);
        self.deadlines.insert((deadline, t));
        self.waiters.insert(t, Waiter { peer, key, bytes, deadline, count, under });
    }

    pub(super) fn remove(&mut self, t: Ticket) -> Option<Waiter<P, C>> {
        let w = self.waiters.remove(&t)?;
        self.set_of(w.under).remove(&(w.count, t));
        if let Some(k) = &w.key {
            let key = (k.content, k.piece.0);
            if let Some(list) = self.by_piece.get_mut(&key) {
                detach(list, t);
                if list.is_empty() {
                    self.by_piece.remove(&key);
                }
            }
        }
        if let Some(list) = self.by_peer.get_mut(&w.peer) {
            detach(list, t);
            if list.is_empty() {
                self.by_peer.remove(&w.peer);
            }
        }
        self.deadlines.remove(&(w.deadline, t));
        Some(w)
    }

    /// The next to grant: the least sent, oldest first, among peers under their share if any
    /// waits, else among all.
    pub(super) fn best(&self) -> Option<Ticket> {
        self.under.first().or_else(|| self.over.first()).map(|&(_, t)| t)
    }

    /// The piece `key` has now been sent `count` times.
    pub(super) fn recount(&mut self, content: C, piece: u32, count: u16) {
        let Some(list) = self.by_piece.get(&(content, piece)) else { return };
        for &t in list {
            if let Some(w) = self.waiters.get_mut(&t) {
                let set = if w.under { &mut self.under } else { &mut self.over };
                set.remove(&(w.count, t));
                w.count = count;
                set.insert((count, t));
            }
        }
    }

    /// Every waiting piece of `content` counts as never sent (its counts were forgotten).
    pub(super) fn forget(&mut self, content: C) {
        let pieces: Vec<u32> =
            self.by_piece.keys().filter(|(c, _)| *c == content).map(|&(_, p)| p).collect();
        for p in pieces {
            self.recount(content, p, 0);
        }
    }

    /// `peer` is now under its share (`true`) or at it.
    pub(super) fn set_peer(&mut self, peer: P, under: bool) {
        let Some(list) = self.by_peer.get(&peer) else { return };
        for &t in list {
            if let Some(w) = self.waiters.get_mut(&t) {
                if w.under != under {
                    let (from, to) = if under {
                        (&mut self.over, &mut self.under)
                    } else {
                        (&mut self.under, &mut self.over)
                    };
                    from.remove(&(w.count, t));
                    to.insert((w.count, t));
                    w.under = under;
                }
            }
        }
    }

    /// The waiters whose deadline has passed by `now`, earliest first.
    pub(super) fn expired(&self, now: Instant) -> Vec<Ticket> {
        self.deadlines.iter().take_while(|(d, _)| *d <= now).map(|&(_, t)| t).collect()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(d, _)| d)
    }

    fn set_of(&mut self, under: bool) -> &mut BTreeSet<(u16, Ticket)> {
        if under {
            &mut self.under
        } else {
            &mut self.over
        }
    }
}
