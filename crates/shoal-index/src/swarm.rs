//! One content's swarm: holders and their bitfields, availability, hints handed out, storage
//! progress, re-seed assignments and reports of holders that never delivered.
//!
//! Layout: `holders` (the holders, their bitfield arena and region lists, drawn at random in
//! time proportional to the draw), `offered` (the holders each asker was offered); the swarm
//! itself and the word-wise bitfield counts here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use shoal_core::{Bitfield, NodeId, PieceIndex};

use crate::rarity::Rarity;
use crate::region::{RegionId, NO_REGION};

/// A map keyed by node id with a fast hash (foldhash, seeded at random per map): a lookup
/// probes and fills several per answer, where SipHash was a tenth of its time. Ids are
/// public keys, which a stranger can choose freely but cannot aim at buckets it cannot see.
pub(crate) type IdMap<V> = HashMap<NodeId, V, foldhash::fast::RandomState>;

/// The most holders a swarm keeps reports about. When full, entries of holders no longer
/// registered go first, then one whose reports do not yet demote it; only a swarm full of
/// demoted holders ignores reports about further ones.
pub(crate) const MAX_REPORTED: usize = 1024;
/// The most holders remembered as offered to one asker by lookups of one content (the most
/// recent lookups' peers): a node may only report a holder it was offered.
pub(crate) const MAX_OFFERED: usize = 128;

/// One content's state.
#[derive(Debug)]
pub(crate) struct Swarm {
    pub(crate) piece_count: u32,
    /// The verified manifest: a swarm exists only once it has one. Shared, not copied, with
    /// every answer that sends it.
    pub(crate) manifest: Bytes,
    pub(crate) holders: Holders,
    /// Holders of each piece.
    pub(crate) availability: Vec<u32>,
    /// What lookups of this content handed each registered asker: hints, its region and
    /// the holders offered. An entry exists only for an asker whose list of contents looked
    /// up holds this one (`Index::note_lookup`), so that it is forgotten in time.
    pub(crate) askers: IdMap<Asked>,
    /// How many nodes each piece is handed to.
    pub(crate) handed_count: Vec<u32>,
    /// Per region with holders or askers here: holders of each piece in the region, and how
    /// many of its nodes each piece is handed to. At most one entry per numbered region.
    pub(crate) regional: HashMap<RegionId, Regional>,
    /// Per admitted storage node holding part of this content: (pieces held, when that last
    /// grew, re-seeding under way).
    pub(crate) storage: HashMap<NodeId, (u32, u64, bool)>,
    /// Pieces assigned to holders for pushing into storage, with the assignment's expiry.
    pub(crate) assigned: HashMap<PieceIndex, (NodeId, u64)>,
    /// Per reported holder, the distinct sources (reporters' observed addresses, see
    /// [`crate::limits::source_key`]) that reported it as never delivering: sybil ids behind
    /// one address count once.
    pub(crate) reports: HashMap<NodeId, Vec<IpAddr>>,
    /// The source address its manifest upload is charged to, until someone announces it.
    pub(crate) charged: Option<IpAddr>,
    /// Since when the swarm has had no holder (it is collected after a while), if it has none.
    pub(crate) empty_since: Option<u64>,
    /// The rarest availability levels, rebuilt by the first lookup after availability changed.
    pub(crate) rarity: Option<Rarity>,
    /// What its lookups draw their samples with: one per swarm, so lookups of different
    /// swarms share nothing.
    pub(crate) rng: fastrand::Rng,
}

impl Swarm {
    /// A swarm without holders; `seed` seeds its sampling.
    pub(crate) fn new(piece_count: u32, manifest: Bytes, now: u64, seed: u64) -> Self {
        Self {
            piece_count,
            manifest,
            holders: Holders::new(piece_count),
            availability: vec![0; piece_count as usize],
            askers: IdMap::default(),
            handed_count: vec![0; piece_count as usize],
            regional: HashMap::new(),
            storage: HashMap::new(),
            assigned: HashMap::new(),
            reports: HashMap::new(),
            charged: None,
            empty_since: Some(now),
            rarity: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub(crate) fn set_holding(
        &mut self,
        node: NodeId,
        bitfield: Bitfield,
        load: u32,
        addrs: &[SocketAddr],
        region: RegionId,
    ) {
        let links = self.holders.entry(&node).map(|h| (h.addrs.to_vec(), h.link_loads.to_vec()));
        self.remove_holding(node);
        self.rarity = None;
        let n = self.piece_count;
        for p in bitfield.iter_ones() {
            self.availability[p.0 as usize] += 1;
        }
        self.unhand_held(node, Some(bitfield.as_bytes()));
        if region != NO_REGION && bitfield.count() > 0 {
            let r = self.regional.entry(region).or_insert_with(|| Regional::new(n));
            for p in bitfield.iter_ones() {
                r.availability[p.0 as usize] += 1;
            }
            r.total += u64::from(bitfield.count());
        }
        self.holders.insert(node, &bitfield);
        self.holders.set_load(&node, load);
        self.holders.set_addrs(&node, addrs);
        self.holders.set_region(&node, region);
        if let Some((old_addrs, loads)) = links {
            // The same addresses: what its last heartbeat said of them still holds.
            if old_addrs == addrs {
                self.holders.set_link_loads(&node, &loads);
            }
        }
    }

    /// Frees a region's view once nothing is counted in it.
    fn release(&mut self, region: RegionId) {
        if self.regional.get(&region).is_some_and(|r| r.total == 0) {
            self.regional.remove(&region);
        }
    }

    /// Forgets a holder (the index starts the idle clock if it was the last).
    pub(crate) fn remove_holding(&mut self, node: NodeId) -> bool {
        let region = self.holders.entry(&node).map_or(NO_REGION, |h| h.region);
        let Some(old) = self.holders.remove(&node) else { return false };
        self.rarity = None;
        for p in old.iter_ones() {
            self.availability[p.0 as usize] -= 1;
        }
        if let Some(r) = self.regional.get_mut(&region) {
            for p in old.iter_ones() {
                r.availability[p.0 as usize] -= 1;
            }
            r.total -= u64::from(old.count());
            self.release(region);
        }
        true
    }

    /// Records that `pieces` are handed to `node` (in `region`) at `now` (ms); those it was
    /// handed already count once.
    pub(crate) fn hand(&mut self, node: NodeId, region: RegionId, pieces: &[PieceIndex], now: u64) {
        let n = self.piece_count;
        let asked = self.askers.entry(node).or_default();
        let mut regional = (region != NO_REGION).then(|| {
            asked.region = region;
            self.regional.entry(region).or_insert_with(|| Regional::new(n))
        });
        asked.hints.reserve(pieces.len());
        for &p in pieces {
            if asked.hints.contains(&p) {
                continue;
            }
            asked.hints.push(p);
            self.handed_count[p.0 as usize] += 1;
            if let Some(r) = regional.as_mut() {
                r.handed[p.0 as usize] += 1;
                r.handed_at[p.0 as usize] = now;
                r.total += 1;
            }
        }
        if regional.is_some() {
            // A view entered for no piece is freed again.
            self.release(region);
        }
    }

    /// Starts the lookup state of `asker` here if it has none; true if it had.
    pub(crate) fn ask(&mut self, asker: NodeId) -> bool {
        let had = self.askers.contains_key(&asker);
        if !had {
            self.askers.insert(asker, Asked::default());
        }
        had
    }

    /// Takes back the hints of `node` it holds now: pieces set in `have` (bitfield bytes,
    /// what a lookup says it has) or in what it announced here.
    pub(crate) fn unhand_held(&mut self, node: NodeId, have: Option<&[u8]>) {
        let Some(asked) = self.askers.get_mut(&node) else { return };
        let announced = self.holders.bits_of(&node);
        let region = asked.region;
        let mut regional = self.regional.get_mut(&region);
        let counts = &mut self.handed_count;
        asked.hints.retain(|p| {
            let i = p.0 as usize;
            if !has(have, i) && !has(announced, i) {
                return true;
            }
            counts[i] -= 1;
            if let Some(r) = regional.as_mut() {
                r.handed[i] -= 1;
                r.total -= 1;
            }
            false
        });
        self.release(region);
    }

    /// Records a storage node's holding and whether it grew.
    pub(crate) fn storage_progress(&mut self, node: NodeId, count: u32, now: u64) {
        let e = self.storage.entry(node).or_insert((0, now, false));
        if count > e.0 || e.0 == 0 {
            e.0 = count;
            e.1 = now;
        }
        if count == self.piece_count {
            e.2 = false;
        }
    }

    /// Forgets what was handed to `node` as an asker: its hints and the holders it was offered.
    pub(crate) fn forget_hints(&mut self, node: NodeId) {
        let Some(asked) = self.askers.remove(&node) else { return };
        let mut regional = self.regional.get_mut(&asked.region);
        for p in asked.hints {
            self.handed_count[p.0 as usize] -= 1;
            if let Some(r) = regional.as_mut() {
                r.handed[p.0 as usize] -= 1;
                r.total -= 1;
            }
        }
        self.release(asked.region);
    }

    /// Remembers that a lookup offered `peers` to `asker`: each holder, and the address it
    /// was handed with if it has several.
    pub(crate) fn offer(&mut self, asker: NodeId, peers: &[(NodeId, Option<SocketAddr>)]) {
        if peers.is_empty() {
            return;
        }
        let offered = &mut self.askers.entry(asker).or_default().offered;
        offered.reserve(peers.len());
        for (p, link) in peers {
            offered.note(p, *link);
        }
    }

    /// Whether a lookup by `asker` offered `holder`.
    pub(crate) fn was_offered(&self, asker: &NodeId, holder: &NodeId) -> bool {
        self.askers.get(asker).is_some_and(|a| a.offered.contains(holder))
    }

    /// Distinct sources that reported `holder`.
    pub(crate) fn reported(&self, holder: &NodeId) -> usize {
        self.reports.get(holder).map_or(0, Vec::len)
    }

    /// Records that a reporter at `source` got nothing from `holder`; returns the distinct
    /// source count. Bounded: no more sources per holder than `cap`, and at most
    /// [`MAX_REPORTED`] holders; when full, entries of holders `registered` denies are evicted,
    /// then one with fewer than `demote_after` sources, before a report is ignored.
    pub(crate) fn report(
        &mut self,
        holder: NodeId,
        source: IpAddr,
        cap: usize,
        demote_after: usize,
        registered: impl Fn(&NodeId) -> bool,
    ) -> usize {
        if !self.reports.contains_key(&holder) && self.reports.len() >= MAX_REPORTED {
            self.reports.retain(|h, _| registered(h));
            if self.reports.len() >= MAX_REPORTED {
                let weakest = self
                    .reports
                    .iter()
                    .filter(|(_, l)| l.len() < demote_after)
                    .min_by_key(|(_, l)| l.len())
                    .map(|(h, _)| *h);
                match weakest {
                    Some(h) => {
                        self.reports.remove(&h);
                    }
                    None => return 0,
                }
            }
        }
        let list = self.reports.entry(holder).or_default();
        if list.len() < cap && !list.contains(&source) {
            list.push(source);
        }
        list.len()
    }
}

/// What lookups of one content handed one registered asker.
#[derive(Debug, Default)]
pub(crate) struct Asked {
    /// Pieces handed as hints and not yet announced by it, at most the configured number
    /// ([`crate::Config::hints`]): a lookup tops them up to it.
    pub(crate) hints: Vec<PieceIndex>,
    /// The region it was in when last handed hints in one (to count them back).
    pub(crate) region: RegionId,
    /// Holders offered to it lately: the only ones it may report.
    pub(crate) offered: Offered,
}

/// One region's view of a swarm: its holders of each piece, and how many of its nodes each
/// piece is handed to as a hint. Hints rank pieces the region neither holds nor was handed
/// first, so that each piece crosses into a region about once.
#[derive(Debug)]
pub(crate) struct Regional {
    pub(crate) availability: Vec<u32>,
    pub(crate) handed: Vec<u32>,
    /// When each piece was last handed to a node of the region (ms): a piece the region lacks
    /// is handed to one node at a time only for a while after (see `lookup::least_handed`), so
    /// askers that hoard hints and never fetch cannot keep it from the rest of the region.
    pub(crate) handed_at: Vec<u64>,
    /// The sum of both counts: at zero the view is freed.
    pub(crate) total: u64,
}

impl Regional {
    fn new(piece_count: u32) -> Self {
        let n = piece_count as usize;
        Self { availability: vec![0; n], handed: vec![0; n], handed_at: vec![0; n], total: 0 }
    }
}

/// Whether bitfield bytes `bits` (MSB first) have piece `i`; no bytes have nothing.
pub(crate) fn has(bits: Option<&[u8]>, i: usize) -> bool {
    bits.and_then(|b| b.get(i / 8)).is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// `a & !b` popcount, a word at a time; `b` absent counts all of `a` (bytes of `b` beyond its
/// end count as 0).
pub(crate) fn count_and_not(a: &[u8], b: Option<&[u8]>) -> u32 {
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    let Some(b) = b else {
        // Popcount of whole words, then the tail.
        let words = a.chunks_exact(8);
        let tail: u32 = words.remainder().iter().map(|x| x.count_ones()).sum();
        return words.map(|c| word(c).count_ones()).sum::<u32>() + tail;
    };
    let n = a.len().min(b.len());
    let (head, rest) = a.split_at(n);
    let pairs = head.chunks_exact(8).zip(b[..n].chunks_exact(8));
    let mut count: u32 = pairs.map(|(x, y)| (word(x) & !word(y)).count_ones()).sum();
    let full = n - n % 8;
    count += head[full..].iter().zip(&b[full..n]).map(|(x, y)| (x & !y).count_ones()).sum::<u32>();
    // Bytes of `a` past the end of `b`: nothing masks them.
    count + rest.iter().map(|x| x.count_ones()).sum::<u32>()
}

mod holders;
mod offered;
#[cfg(test)]
mod tests;

pub(crate) use holders::{HolderView, Holders};
pub(crate) use offered::Offered;
