//! A content's holders: their entries, bitfields in one arena and region lists, sampleable in
//! time proportional to the sample (see [`Holders`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use shoal_core::{Bitfield, NodeId};
use smallvec::SmallVec;

use super::{count_and_not, IdMap};
use crate::region::{RegionId, NO_REGION};

/// One holder of a content: its id, load and addresses (copies of its node entry's, kept here
/// so that answering a lookup reads no entry of the index-wide node map: each such read was a
/// cache miss in a large index). Its bitfield sits in [`Holders`]' arena at the same index.
#[derive(Debug)]
pub(crate) struct Holder {
    pub(crate) id: NodeId,
    /// Its uploads under way, from its last heartbeat.
    pub(crate) load: u32,
    /// Lookups that handed it out since that heartbeat: clients it is about to gain, which
    /// its load does not show yet.
    pub(crate) offered: u32,
    /// Where peers reach it, from its last registration: inline up to two (most nodes have
    /// one or two), so that reading them is no further cache miss.
    pub(crate) addrs: SmallVec<[SocketAddr; 2]>,
    /// Its region, from its last registration.
    pub(crate) region: RegionId,
    /// Its place in its region's list (see `Holders::by_region`); `usize::MAX` without a
    /// region.
    region_pos: usize,
    /// Per address (in the order of `addrs`): connections it serves there, from its last
    /// heartbeat, plus lookups that handed that address out since.
    pub(crate) link_loads: SmallVec<[u32; 2]>,
}

/// A holder as a lookup ranks it: id, load and the bytes of its bitfield, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HolderView<'a> {
    pub(crate) id: &'a NodeId,
    pub(crate) load: u32,
    pub(crate) addrs: &'a [SocketAddr],
    pub(crate) region: RegionId,
    /// Load per address (empty if it reported none).
    pub(crate) link_loads: &'a [u32],
    /// Its bitfield's bytes (the swarm's piece count of bits, MSB first).
    pub(crate) bits: &'a [u8],
    piece_count: u32,
    /// Its place in [`Holders`] (`usize::MAX` for a node that holds nothing yet): a lookup
    /// updates what it handed out by place, with no hashing of ids.
    pub(crate) slot: usize,
}

impl<'a> HolderView<'a> {
    /// A node holding nothing of the content yet (storage offered to pull it through):
    /// `zeros` is a bitfield's worth of zero bytes.
    pub(crate) fn empty(
        id: &'a NodeId,
        load: u32,
        addrs: &'a [SocketAddr],
        region: RegionId,
        piece_count: u32,
        zeros: &'a [u8],
    ) -> Self {
        let (link_loads, bits, slot) = (&[][..], zeros, usize::MAX);
        Self { id, load, addrs, region, link_loads, bits, piece_count, slot }
    }
}

impl HolderView<'_> {
    /// True if it holds every piece (no copy of its bitfield).
    pub(crate) fn is_complete(&self) -> bool {
        count_and_not(self.bits, None) == self.piece_count
    }

    /// An owned copy of its bitfield.
    pub(crate) fn bitfield(&self) -> Bitfield {
        bitfield_of(self.piece_count, self.bits)
    }
}

/// A bitfield from arena bytes, which were copied from a valid bitfield of this length.
fn bitfield_of(piece_count: u32, bits: &[u8]) -> Bitfield {
    // Cannot fail (the bytes came from a bitfield of `piece_count`); an empty one if it did.
    Bitfield::from_bytes(piece_count, bits).unwrap_or_else(|_| Bitfield::new(piece_count))
}

/// Holders of one content, sampleable in O(1) per draw. A draw yields the holder's bitfield
/// and load with its id, so ranking a sample costs no map lookups.
///
/// Holders of at least one piece sit before those of none (`order[..holding]`): a node
/// announces its empty bitfield as soon as it has the manifest, and in a flash crowd those
/// are nearly all holders, so a lookup whose draw from all of them found nobody to offer
/// draws again among the holders of something ([`Holders::sample_holding`]).
///
/// The bitfields live in one arena, a fixed stride each, in the order of the holder vector:
/// ranking a swarm's holders reads one contiguous block of memory (which the CPU prefetches)
/// instead of one heap allocation per holder, each a cache miss in a large index. Measured
/// over QUIC with 100,000 nodes, those misses were a quarter of the tracker's CPU per lookup.
#[derive(Debug)]
pub(crate) struct Holders {
    order: Vec<Holder>,
    /// `order.len()` bitfields of `stride` bytes each.
    bits: Vec<u8>,
    piece_count: u32,
    map: IdMap<usize>,
    /// Holders holding at least one piece: the first `holding` of `order`.
    holding: usize,
    /// Per region (holders with one): their places in `order`, so a lookup can sample the
    /// asker's region apart from the whole swarm. A holder's place in its region's list is in
    /// `Holder::region_pos`. Lists are dropped when they empty.
    by_region: HashMap<RegionId, Vec<usize>>,
    /// Holders whose bitfield is full, kept as bitfields change (for the admin views).
    complete: usize,
}

impl Holders {
    /// No holders, of a content of `piece_count` pieces.
    pub(crate) fn new(piece_count: u32) -> Self {
        Self {
            order: Vec::new(),
            bits: Vec::new(),
            piece_count,
            map: IdMap::default(),
            holding: 0,
            by_region: HashMap::new(),
            complete: 0,
        }
    }

    /// Takes holder `i` out of its region's list, if it is in one.
    fn unlist(&mut self, i: usize) {
        let (region, pos) = (self.order[i].region, self.order[i].region_pos);
        self.order[i].region_pos = usize::MAX;
        if region == NO_REGION || pos == usize::MAX {
            return;
        }
        let Some(list) = self.by_region.get_mut(&region) else { return };
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            self.order[moved].region_pos = pos;
        }
        if list.is_empty() {
            self.by_region.remove(&region);
        }
    }

    /// Puts holder `i` in its region's list (it is in none: callers unlist first).
    fn list(&mut self, i: usize) {
        let region = self.order[i].region;
        if region == NO_REGION {
            return;
        }
        let list = self.by_region.entry(region).or_default();
        self.order[i].region_pos = list.len();
        list.push(i);
    }

    /// Points the region list entry of the holder now at place `i` (if it has one) at `i`.
    fn repoint(&mut self, i: usize) {
        let h = &self.order[i];
        if h.region == NO_REGION || h.region_pos == usize::MAX {
            return;
        }
        if let Some(slot) = self.by_region.get_mut(&h.region).and_then(|l| l.get_mut(h.region_pos))
        {
            *slot = i;
        }
    }

    /// Swaps the holders at places `a` and `b`: entries, bitfields, map and region lists.
    fn swap(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        self.order.swap(a, b);
        let s = self.stride();
        let (lo, hi) = (a.min(b), a.max(b));
        let (head, tail) = self.bits.split_at_mut(hi * s);
        head[lo * s..(lo + 1) * s].swap_with_slice(&mut tail[..s]);
        for i in [a, b] {
            if let Some(e) = self.map.get_mut(&self.order[i].id) {
                *e = i;
            }
            self.repoint(i);
        }
    }

    /// Moves the holder at `i` across the boundary between holders of some piece and of none
    /// if its bitfield now says it belongs on the other side.
    fn sort_in(&mut self, i: usize) {
        let s = self.stride();
        let holds = self.bits[i * s..(i + 1) * s].iter().any(|&b| b != 0);
        if holds && i >= self.holding {
            self.swap(i, self.holding);
            self.holding += 1;
        } else if !holds && i < self.holding {
            self.holding -= 1;
            self.swap(i, self.holding);
        }
    }

    fn stride(&self) -> usize {
        (self.piece_count as usize).div_ceil(8)
    }

    pub(crate) fn view(&self, i: usize) -> HolderView<'_> {
        let s = self.stride();
        let h = &self.order[i];
        HolderView {
            id: &h.id,
            load: h.load,
            addrs: &h.addrs,
            region: h.region,
            link_loads: &h.link_loads,
            bits: &self.bits[i * s..(i + 1) * s],
            piece_count: self.piece_count,
            slot: i,
        }
    }

    /// The holder at `slot` if it is `id` (places change when holders come or go, and when a
    /// holder's bitfield turns empty or stops being so).
    fn slot_of(&mut self, slot: usize, id: &NodeId) -> Option<&mut Holder> {
        self.order.get_mut(slot).filter(|h| h.id == *id)
    }

    /// A lookup handed out holder `id`, at place `slot`, with its address number `link`
    /// (counted as a new client of that link if `new`); its address there.
    pub(crate) fn note_handed_out(
        &mut self,
        slot: usize,
        id: &NodeId,
        link: Option<usize>,
        new: bool,
    ) -> Option<SocketAddr> {
        let h = self.slot_of(slot, id)?;
        h.offered = h.offered.saturating_add(1);
        let i = link?;
        if new {
            if let Some(l) = h.link_loads.get_mut(i) {
                *l = l.saturating_add(1);
            }
        }
        h.addrs.get(i).copied()
    }

    /// A copy of the bitfield of `id`.
    pub(crate) fn get(&self, id: &NodeId) -> Option<Bitfield> {
        self.map.get(id).map(|&i| self.view(i).bitfield())
    }

    /// The holder entry of `id`: its bitfield and load.
    pub(crate) fn entry(&self, id: &NodeId) -> Option<HolderView<'_>> {
        self.map.get(id).map(|&i| self.view(i))
    }

    pub(crate) fn contains(&self, id: &NodeId) -> bool {
        self.map.contains_key(id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Holders, and how many of them hold every piece.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.order.len(), self.complete)
    }

    /// The holder at place `i` (places run from 0 to the count; removals reorder them).
    pub(crate) fn at(&self, i: usize) -> Option<HolderView<'_>> {
        (i < self.order.len()).then(|| self.view(i))
    }

    /// Inserts or replaces (keeping the load); returns the old bitfield. A bitfield of another
    /// length than the swarm's (the index refuses those before) is cut or padded to it.
    pub(crate) fn insert(&mut self, id: NodeId, bf: &Bitfield) -> Option<Bitfield> {
        let s = self.stride();
        let src = &bf.as_bytes()[..bf.as_bytes().len().min(s)];
        if let Some(&i) = self.map.get(&id) {
            let old = self.view(i).bitfield();
            let was = self.view(i).is_complete();
            let dst = &mut self.bits[i * s..(i + 1) * s];
            dst.fill(0);
            dst[..src.len()].copy_from_slice(src);
            self.complete =
                self.complete - usize::from(was) + usize::from(self.view(i).is_complete());
            self.sort_in(i);
            return Some(old);
        }
        let i = self.order.len();
        self.map.insert(id, i);
        self.order.push(Holder {
            id,
            load: 0,
            offered: 0,
            addrs: SmallVec::new(),
            region: NO_REGION,
            region_pos: usize::MAX,
            link_loads: SmallVec::new(),
        });
        let start = self.bits.len();
        self.bits.resize(start + s, 0);
        self.bits[start..start + src.len()].copy_from_slice(src);
        self.complete += usize::from(self.view(i).is_complete());
        self.sort_in(i);
        None
    }

    /// Records a holder's load (a heartbeat).
    pub(crate) fn set_load(&mut self, id: &NodeId, load: u32) {
        if let Some(&i) = self.map.get(id) {
            self.order[i].load = load;
            self.order[i].offered = 0;
        }
    }

    /// Records a holder's addresses (a registration).
    pub(crate) fn set_addrs(&mut self, id: &NodeId, addrs: &[SocketAddr]) {
        if let Some(&i) = self.map.get(id) {
            self.order[i].addrs = SmallVec::from_slice(addrs);
            self.order[i].link_loads.clear();
        }
    }

    /// Records a holder's load per address (a heartbeat), in the order of its addresses.
    pub(crate) fn set_link_loads(&mut self, id: &NodeId, loads: &[u32]) {
        if let Some(&i) = self.map.get(id) {
            self.order[i].link_loads = SmallVec::from_slice(loads);
        }
    }

    /// Records a holder's region (a registration).
    pub(crate) fn set_region(&mut self, id: &NodeId, region: RegionId) {
        if let Some(&i) = self.map.get(id) {
            if self.order[i].region != region {
                self.unlist(i);
                self.order[i].region = region;
                self.list(i);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<Bitfield> {
        let mut i = *self.map.get(id)?;
        let old = self.view(i).bitfield();
        self.complete -= usize::from(self.view(i).is_complete());
        self.unlist(i);
        if i < self.holding {
            // First to the last place of the holders of some piece, so that the swap remove
            // below moves a holder of nothing (or no holder at all) into its place.
            self.holding -= 1;
            self.swap(i, self.holding);
            i = self.holding;
        }
        self.map.remove(id);
        self.order.swap_remove(i);
        // The holder moved into place `i` keeps its region list pointing at it.
        if i < self.order.len() {
            self.repoint(i);
        }
        // The same swap in the arena: the last block moves into the freed one.
        let s = self.stride();
        let last = self.bits.len() - s;
        self.bits.copy_within(last.., i * s);
        self.bits.truncate(last);
        if let Some(moved) = self.order.get(i) {
            if let Some(e) = self.map.get_mut(&moved.id) {
                *e = i;
            }
        }
        Some(old)
    }

    /// The places of up to `k` distinct holders of `region` drawn at random (all of them if
    /// there are at most `2k`), so that a small region's holders are found in a large swarm.
    pub(crate) fn sample_region(
        &self,
        rng: &mut fastrand::Rng,
        region: RegionId,
        k: usize,
    ) -> Vec<usize> {
        let Some(list) = self.by_region.get(&region) else { return Vec::new() };
        if list.len() <= 2 * k {
            return list.clone();
        }
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        while picked.len() < k {
            let i = list[rng.usize(..list.len())];
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked
    }

    /// The places of up to `k` distinct holders drawn uniformly at random (all of them if
    /// there are at most `2k`: then the scan is as cheap as the sample).
    ///
    /// Drawn among all holders, those of nothing included, although those have nothing to
    /// offer: in a flash crowd this hands each of the first holders to a share of the
    /// newcomers only. Drawing among holders of something alone handed every newcomer every
    /// early holder, hundreds of clients each, whose downloads then filled their peer sets
    /// with those crowded uplinks while the later holders' idled: the 1,000-node simulation
    /// went from 1.18 to 1.47 times its bound (see BENCHMARKS.md).
    ///
    /// Drawing exactly `k` from a swarm of up to `2k` would rank fewer candidates (each costs a
    /// read of its bitfield from memory, the bulk of a lookup in a large index); tried, it
    /// made the index's swarm simulation do better without hints than with them, so it waits
    /// for a look at how hints and sampling interact (see BENCHMARKS.md, tracker lookups).
    pub(crate) fn sample(&self, rng: &mut fastrand::Rng, k: usize) -> Vec<usize> {
        self.sample_among(rng, k, self.order.len())
    }

    /// As [`Holders::sample`], among the holders of at least one piece only.
    pub(crate) fn sample_holding(&self, rng: &mut fastrand::Rng, k: usize) -> Vec<usize> {
        self.sample_among(rng, k, self.holding)
    }

    /// Up to `k` distinct places below `n` drawn at random (all of them if `n <= 2k`).
    fn sample_among(&self, rng: &mut fastrand::Rng, k: usize, n: usize) -> Vec<usize> {
        if n <= 2 * k {
            return (0..n).collect();
        }
        // Rejection sampling: with over 2k holders each draw succeeds with probability over
        // 1/2, so this takes under 2k draws on average. The order of the draws does not
        // matter (a lookup orders candidates by rank, then id); k is a config of tens, so a
        // linear membership test beats a set and its allocations.
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        while picked.len() < k {
            let i = rng.usize(..n);
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked
    }

    /// The place of holder `id`.
    pub(crate) fn slot(&self, id: &NodeId) -> Option<usize> {
        self.map.get(id).copied()
    }

    /// The bitfield bytes holder `id` announced, if it holds the content.
    pub(crate) fn bits_of(&self, id: &NodeId) -> Option<&[u8]> {
        let s = self.stride();
        self.map.get(id).map(|&i| &self.bits[i * s..(i + 1) * s])
    }

    /// What a lookup ranks the holder at `slot` by, read without building its view: its id,
    /// its load plus the lookups that handed it out since, its region and its bitfield bytes.
    /// `slot` must be a place below the holder count.
    pub(crate) fn rank_inputs(&self, slot: usize) -> (&NodeId, u32, RegionId, &[u8]) {
        let s = self.stride();
        let h = &self.order[slot];
        (&h.id, h.load.saturating_add(h.offered), h.region, &self.bits[slot * s..(slot + 1) * s])
    }
}

#[cfg(test)]
mod tests;
