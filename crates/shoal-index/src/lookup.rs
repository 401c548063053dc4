//! Lookups: who to ask for the pieces an asker lacks, and which pieces to fetch first.
//!
//! A lookup ranks a bounded candidate set: the admitted storage nodes holding the content plus
//! at most [`crate::Config::lookup_sample`] ordinary holders drawn at random, each compared a
//! word at a time. Its cost is proportional to its answer (candidates × bitfield words, plus one
//! pass over the pieces), never to holders × pieces, however large the swarm.

use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};
use shoal_wire::tracker::{PeerInfo, PeerSummary};

use crate::rarity::Rarity;
use crate::region::{RegionId, NO_REGION};
use crate::swarm::{count_and_not, HolderView, Swarm};
use crate::{Index, Lookup};

/// A candidate's rank, as one key ordered like the tuple (reported as never delivering, in
/// another region than the asker (with region routing), not storage, load, availability of
/// its rarest wanted piece, more useful first); ties go to the lower node id. Load (its last
/// heartbeat's, plus the lookups that handed it out since) before rarity: in a flash crowd
/// every asker would otherwise be handed the same few early holders (they hold the rarest
/// pieces), crowding their uplinks while later holders' uplinks idle with no client. Other
/// regions' holders come after the asker's own, never instead of them: a region whose holders
/// are few or none still gets the rest of the answer from elsewhere.
///
/// Bits from the top: the three flags, load (21 bits), rarest availability (20 bits) and
/// wanted pieces held, counted down from 2^20 - 1 (20 bits; a content has at most 2^16
/// pieces). A load or availability past its field counts as the field's largest value:
/// holders with two million uploads, or pieces held by a million others, rank alike.
fn rank_key(
    demoted: bool,
    elsewhere: bool,
    ordinary: bool,
    load: u32,
    rarest: u32,
    useful: u32,
) -> u64 {
    const LOAD: u32 = (1 << 21) - 1;
    const FIELD: u32 = (1 << 20) - 1;
    (u64::from(demoted) << 63)
        | (u64::from(elsewhere) << 62)
        | (u64::from(ordinary) << 61)
        | (u64::from(load.min(LOAD)) << 40)
        | (u64::from(rarest.min(FIELD)) << 20)
        | u64::from(FIELD - useful.min(FIELD))
}

/// The first 8 bytes of an id as a big-endian number: ordered as the ids are.
fn id_prefix(id: &NodeId) -> u64 {
    let k = id.public_key_bytes();
    u64::from_be_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
}

/// A ranked candidate: its key, its id's prefix and its place among the swarm's holders.
#[derive(Debug, Clone, Copy)]
struct Ranked {
    key: u64,
    tie: u64,
    slot: usize,
}

/// The bitfield bytes of a holder of nothing, for the largest manifest: a storage node offered
/// to pull a content through is answered with a slice of it (no allocation per lookup).
static NO_PIECES: [u8; (shoal_core::piece::MAX_PIECES / 8) as usize] =
    [0; (shoal_core::piece::MAX_PIECES / 8) as usize];

thread_local! {
    /// The hint pass's keyed pieces, kept between lookups on a thread: its allocation (up to
    /// a piece count of entries, 1 MiB at most) is made once, not per lookup.
    static KEYED: std::cell::RefCell<Vec<(u64, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How long a piece a region lacks is handed to one of its nodes only (ms).
const EXCLUSIVE_HINT_MS: u64 = 10_000;

/// The address with the fewest connections (as last reported, plus lookups that handed it out
/// since); the first on ties. `None` without addresses; the first without reported loads.
fn least_loaded(addrs: &[std::net::SocketAddr], loads: &[u32]) -> Option<usize> {
    if addrs.is_empty() {
        return None;
    }
    if loads.len() != addrs.len() {
        return Some(0);
    }
    (0..addrs.len()).min_by_key(|&i| (loads[i], i))
}

/// A stable per-(node, piece) tie-break, so equally good pieces are spread over askers.
fn mix(node: &NodeId, p: PieceIndex) -> u64 {
    let k = node.public_key_bytes();
    let mut w = [0u8; 8];
    w.copy_from_slice(&k[..8]);
    let mut x = u64::from_le_bytes(w) ^ u64::from(p.0);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// The lowest availability among the pieces `bf` holds and the asker lacks, a word at a time,
/// stopping as soon as it reaches `floor` (the lowest availability of any wanted piece).
fn rarest_useful(bf: &[u8], have: Option<&[u8]>, availability: &[u32], floor: u32) -> u32 {
    let mut min = u32::MAX;
    for (w, chunk) in bf.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let mut mask = [0u8; 8];
        if let Some(h) = have.and_then(|h| h.get(w * 8..(w * 8 + chunk.len()).min(h.len()))) {
            mask[..h.len()].copy_from_slice(h);
        }
        // Bit i of byte j is piece 8j + (7 - i): bitfields are MSB first.
        let mut bits = u64::from_be_bytes(word) & !u64::from_be_bytes(mask);
        while bits != 0 {
            let lead = bits.leading_zeros() as usize;
            bits &= !(1u64 << (63 - lead));
            if let Some(&a) = availability.get(w * 64 + lead) {
                min = min.min(a);
                if min <= floor {
                    return min;
                }
            }
        }
    }
    min
}

impl Index {
    /// Peers holding pieces `asker` lacks (all pieces if `have` is `None`), most useful first,
    /// with their bitfields, and the pieces the asker should fetch first. `None` for an unknown
    /// content. An `asker` must be registered: what it is handed (hints, the holders offered,
    /// which it may then report) is kept until it expires.
    pub fn lookup(
        &self,
        asker: Option<NodeId>,
        content: ContentId,
        have: Option<&Bitfield>,
        max_peers: usize,
    ) -> Option<Lookup> {
        self.lookup_with(asker, content, have, max_peers, |h, region, addrs| PeerInfo {
            node_id: *h.id,
            load: h.load,
            addrs,
            bitfield: h.bitfield(),
            region,
        })
    }

    /// [`Index::lookup`] without the peers' bitfields (a compact answer): the same peers and
    /// hints, and no bitfield copied.
    pub fn lookup_compact(
        &self,
        asker: Option<NodeId>,
        content: ContentId,
        have: Option<&Bitfield>,
        max_peers: usize,
    ) -> Option<Lookup<PeerSummary>> {
        self.lookup_with(asker, content, have, max_peers, |h, region, addrs| PeerSummary {
            node_id: *h.id,
            load: h.load,
            addrs,
            region,
        })
    }

    /// The lookup itself; `peer` makes an answer's peer from its holder entry and region name
    /// (a swarm's holders are registered nodes: holdings go with their node).
    fn lookup_with<P>(
        &self,
        asker: Option<NodeId>,
        content: ContentId,
        have: Option<&Bitfield>,
        max_peers: usize,
        peer: impl Fn(&HolderView<'_>, Option<shoal_core::Region>, Vec<std::net::SocketAddr>) -> P,
    ) -> Option<Lookup<P>> {
        // Registration numbered every node's region.
        let region =
            self.routing_region(asker).and_then(|r| self.regions.id(r)).unwrap_or(NO_REGION);
        // The swarm's lock is held to the end of the answer; no other is taken meanwhile.
        let mut guard = self.swarms.lock(&content)?;
        let swarm: &mut Swarm = &mut guard;
        let n = swarm.piece_count;
        let have = have.filter(|h| h.len() == n);
        let have_bytes = have.map(Bitfield::as_bytes);
        if swarm.rarity.is_none() {
            swarm.rarity = Some(Rarity::new(&swarm.availability));
        }
        // A registered asker has lookup state here from its first lookup on, and this swarm
        // in its list of contents looked up (`note_lookup` below) for as long as it has the
        // state (what forgets the state takes the list entry too; see `note_lookup`): no scan
        // of that list for the lookups after the first.
        let listed = asker.is_some_and(|a| swarm.ask(a));
        let mut rng = swarm.rng.clone();
        let swarm = &*swarm;
        let rarity = swarm.rarity.as_ref();
        let floor = rarity.and_then(|r| r.floor(have_bytes)).unwrap_or_else(|| {
            (0..n)
                .filter(|&i| have.is_none_or(|h| !h.get(PieceIndex(i))))
                .map(|i| swarm.availability[i as usize])
                .filter(|&a| a > 0)
                .min()
                .unwrap_or(0)
        });
        // Candidates by their place among the holders: the admitted storage nodes holding
        // this content, then a sample of the rest.
        let holders = &swarm.holders;
        let mut candidates: Vec<usize> =
            swarm.storage.keys().filter_map(|id| holders.slot(id)).collect();
        let storage_count = candidates.len();
        let is_storage = |slot: usize| {
            !swarm.storage.is_empty() && swarm.storage.contains_key(holders.rank_inputs(slot).0)
        };
        let sample = self.config.lookup_sample.max(max_peers);
        let drawn = holders.sample(&mut rng, sample);
        candidates.extend(drawn.into_iter().filter(|&slot| !is_storage(slot)));
        if region != NO_REGION {
            // The asker's region sampled apart: in a swarm far larger than the sample its few
            // holders would otherwise rarely be drawn.
            let drawn: std::collections::HashSet<usize> = candidates.iter().copied().collect();
            let extra = holders.sample_region(&mut rng, region, sample);
            candidates.extend(
                extra.into_iter().filter(|slot| !drawn.contains(slot) && !is_storage(*slot)),
            );
        }
        // Each candidate ranked by one packed key (see `rank_key`), then the first 8 bytes of
        // its id (ids order by their bytes), then the whole id on the rare equal prefix: small
        // elements to select and sort, and no holder's view built until it is answered.
        // `None` for the asker itself and for holders of nothing it lacks.
        let rank = |slot: usize, ordinary: bool| -> Option<Ranked> {
            let (id, load, holder_region, bf) = holders.rank_inputs(slot);
            if asker.as_ref() == Some(id) {
                return None;
            }
            let useful = count_and_not(bf, have_bytes);
            if useful == 0 {
                return None;
            }
            let rarest = rarity
                .and_then(|r| r.rarest(bf, have_bytes))
                .unwrap_or_else(|| rarest_useful(bf, have_bytes, &swarm.availability, floor));
            let key = rank_key(
                !swarm.reports.is_empty() && swarm.reported(id) >= self.config.demote_after,
                region != NO_REGION && holder_region != region,
                // Admitted storage first where it has wanted pieces: a permanent seed.
                ordinary,
                load,
                rarest,
                useful,
            );
            Some(Ranked { key, tie: id_prefix(id), slot })
        };
        let mut ranked: Vec<Ranked> = Vec::with_capacity(candidates.len());
        for (i, slot) in candidates.into_iter().enumerate() {
            ranked.extend(rank(slot, i >= storage_count));
        }
        let fill = ranked.is_empty() && max_peers > 0;
        if fill {
            // Nobody drawn has a piece the asker lacks, in a swarm mostly of newcomers that
            // hold nothing yet (see `Holders::sample`): the best of a draw among holders of
            // something, one peer, so that a newcomer has a source for the manifest and its
            // first pieces. (A node's first lookup answered with nobody ends its fetch.)
            let drawn = holders.sample_holding(&mut rng, sample);
            ranked.extend(drawn.into_iter().filter_map(|slot| rank(slot, !is_storage(slot))));
        }
        // Only the best `max_peers` need an order.
        let order = |a: &Ranked, b: &Ranked| {
            (a.key, a.tie)
                .cmp(&(b.key, b.tie))
                .then_with(|| holders.rank_inputs(a.slot).0.cmp(holders.rank_inputs(b.slot).0))
        };
        // A filled answer is the one best holder of something.
        let keep = if fill { 1 } else { max_peers };
        if ranked.len() > keep && keep > 0 {
            ranked.select_nth_unstable_by(keep - 1, order);
            ranked.truncate(keep);
        }
        ranked.sort_unstable_by(order);
        // Never more than asked for (`max_peers` 0 included: the selection above skips it).
        ranked.truncate(max_peers);
        let mut ranked: Vec<(u64, HolderView<'_>)> =
            ranked.into_iter().map(|r| (r.key, holders.view(r.slot))).collect();
        // Then the asker's region's admitted storage that lacks the content: asked for it, it
        // pulls the content through from other regions once, for the whole region.
        let zeros = &NO_PIECES[..(n as usize).div_ceil(8)];
        // One per region and content, the same for every asker (so they all meet at one pull),
        // and never to storage itself (whose own pull would otherwise start its neighbours').
        let asker_is_storage = asker.is_some_and(|a| self.nodes.get(&a).is_some_and(|e| e.storage));
        if region != NO_REGION && !asker_is_storage && max_peers > 0 {
            let pick = self
                .config
                .admitted_storage
                .iter()
                .filter_map(|id| Some((id, self.nodes.get(id)?)))
                .filter(|(id, e)| {
                    e.storage
                        && !swarm.holders.contains(id)
                        && e.region.as_ref().is_some_and(|r| self.regions.id(r) == Some(region))
                })
                .min_by_key(|(id, _)| {
                    let c = content.as_bytes();
                    mix(id, PieceIndex(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                });
            if let Some((id, e)) = pick {
                // Before the first demoted holder or holder of another region.
                let at = ranked.iter().take_while(|(key, _)| key >> 62 == 0).count();
                let h = HolderView::empty(id, e.active_uploads, &e.addrs, region, n, zeros);
                ranked.insert(at, (rank_key(false, false, false, e.active_uploads, 0, 0), h));
                ranked.truncate(max_peers);
            }
        }
        // Each peer's address: the one this asker was handed before (a fetch keeps its link),
        // else the least loaded; it goes first in the answer.
        let regions = &self.regions;
        let before = asker.and_then(|a| swarm.askers.get(&a)).map(|a| &a.offered);
        // (holder, place, address number, a new client of that address, several addresses)
        let mut links: Vec<(NodeId, usize, Option<usize>, bool, bool)> =
            Vec::with_capacity(ranked.len());
        let peers = ranked
            .iter()
            .map(|(_, h)| {
                // Only a holder with several addresses has a link to choose and clients per
                // link to count: for the others (most) the asker's earlier offers are not read,
                // a probe of a large map (a cache miss each, 12% of a loaded tracker's time).
                let choice = h.addrs.len() > 1;
                let kept = before
                    .filter(|_| choice)
                    .and_then(|b| b.link(h.id))
                    .and_then(|was| h.addrs.iter().position(|x| *x == was));
                let link = kept.or_else(|| least_loaded(h.addrs, h.link_loads));
                links.push((*h.id, h.slot, link, choice && kept.is_none(), choice));
                let mut addrs = h.addrs.to_vec();
                if let Some(i) = link {
                    addrs[..=i].rotate_right(1);
                }
                peer(h, regions.name(h.region).cloned(), addrs)
            })
            .collect();
        let swarm: &mut Swarm = &mut guard;
        swarm.rng = rng;
        let mut offered = Vec::with_capacity(links.len());
        for &(id, slot, link, new, choice) in &links {
            // A new client of that link; an asker that keeps its link was counted already.
            if let Some(addr) = swarm.holders.note_handed_out(slot, &id, link, new) {
                offered.push((id, choice.then_some(addr)));
            }
        }
        let hints = match asker {
            Some(a) => {
                swarm.offer(a, &offered);
                Self::hand_out(swarm, a, region, have, self.config.hints, self.clock)
            }
            None => Vec::new(),
        };
        drop(guard);
        if let Some(a) = asker.filter(|_| !listed) {
            if let Some(old) = self.note_lookup(a, content) {
                if let Some(mut s) = self.swarms.lock(&old) {
                    s.forget_hints(a);
                }
            }
        }
        Some(Lookup { piece_count: n, peers, hints })
    }

    /// The `take` pieces the asker lacks (neither in `have` nor announced) and was not yet
    /// handed, that someone holds, which the fewest others hold or were handed; ties broken by
    /// a per-asker mix. One pass over the pieces, then a selection.
    ///
    /// With a region, pieces are keyed first by how many of the region's nodes hold them or
    /// were handed them, then as above, and a piece the region lacks is handed to one of its
    /// nodes at a time: a region's askers are handed what the region lacks, each piece to one
    /// of them, so each piece crosses into the region about once.
    /// `keyed` is a buffer of the thread's (`KEYED`), kept between lookups.
    fn least_handed(
        swarm: &Swarm,
        asker: &NodeId,
        region: RegionId,
        have: Option<&[u8]>,
        take: usize,
        now: u64,
        keyed: &mut Vec<(u64, u32)>,
    ) -> Vec<PieceIndex> {
        if take == 0 {
            return Vec::new();
        }
        let n = swarm.piece_count as usize;
        // Bit set: the asker holds it, announced it or was handed it already.
        let mut skip = vec![0u8; n.div_ceil(8)];
        let announced = swarm.holders.bits_of(asker);
        for src in [have, announced].into_iter().flatten() {
            skip.iter_mut().zip(src).for_each(|(d, s)| *d |= s);
        }
        for p in swarm.askers.get(asker).into_iter().flat_map(|a| &a.hints) {
            if let Some(b) = skip.get_mut(p.0 as usize / 8) {
                *b |= 0x80 >> (p.0 % 8);
            }
        }
        let regional = swarm.regional.get(&region).filter(|_| region != NO_REGION);
        keyed.clear();
        for (i, (&a, &h)) in swarm.availability.iter().zip(&swarm.handed_count).enumerate() {
            if a == 0 || skip[i / 8] & (0x80 >> (i % 8)) != 0 {
                continue;
            }
            let (held, handed, at) =
                regional.map_or((0, 0, 0), |r| (r.availability[i], r.handed[i], r.handed_at[i]));
            if held == 0 && handed > 0 && now.saturating_sub(at) < EXCLUSIVE_HINT_MS {
                // Nobody in the region holds it and one of its nodes is fetching it across:
                // one crossing is enough, the region shares it once it is in. For a while: an
                // asker that hoards hints and never fetches cannot keep the piece from the rest
                // of its region.
                continue;
            }
            keyed.push(((u64::from(held + handed) << 32) | u64::from(a + h), i as u32));
        }
        let take = take.min(keyed.len());
        if take == 0 {
            return Vec::new();
        }
        // Everything keyed below the take-th smallest key, then the ties at it by mix.
        keyed.select_nth_unstable_by_key(take - 1, |&(key, _)| key);
        let cut = keyed[take - 1].0;
        let mut picked: Vec<PieceIndex> =
            keyed.iter().filter(|&&(key, _)| key < cut).map(|&(_, p)| PieceIndex(p)).collect();
        let mut ties: Vec<(u64, u32)> = keyed
            .iter()
            .filter(|&&(key, _)| key == cut)
            .map(|&(_, p)| (mix(asker, PieceIndex(p)), p))
            .collect();
        let rest = take - picked.len();
        if rest < ties.len() {
            ties.select_nth_unstable(rest);
        }
        picked.extend(ties[..rest].iter().map(|&(_, p)| PieceIndex(p)));
        picked
    }

    /// Tops up the pieces handed to `asker` to `k`: among the pieces it lacks that someone
    /// holds, those the fewest others hold or were handed first.
    fn hand_out(
        swarm: &mut Swarm,
        asker: NodeId,
        region: RegionId,
        have: Option<&Bitfield>,
        k: usize,
        now: u64,
    ) -> Vec<PieceIndex> {
        let have = have.map(Bitfield::as_bytes);
        // Drop hints the asker has meanwhile.
        swarm.unhand_held(asker, have);
        let current = swarm.askers.get(&asker).map_or(0, |a| a.hints.len());
        if current < k {
            let picked = KEYED.with_borrow_mut(|keyed| {
                Self::least_handed(swarm, &asker, region, have, k - current, now, keyed)
            });
            swarm.hand(asker, region, &picked, now);
        }
        // Rarest first, ties by the asker's mix: keys made once each, not per comparison.
        let mut keyed: Vec<(u32, u64, PieceIndex)> = swarm
            .askers
            .get(&asker)
            .into_iter()
            .flat_map(|a| &a.hints)
            .map(|&p| (swarm.availability[p.0 as usize], mix(&asker, p), p))
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, _, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarest_useful_matches_a_bit_by_bit_scan() {
        // Boundary table of piece counts: 1, 7, 8, 9, 63, 64, 65, 200.
        for n in [1u32, 7, 8, 9, 63, 64, 65, 200] {
            let availability: Vec<u32> = (0..n).map(|i| (i * 7 + 3) % 11 + 1).collect();
            let mut bf = Bitfield::new(n);
            let mut have = Bitfield::new(n);
            for i in 0..n {
                if i % 3 != 1 {
                    bf.set(PieceIndex(i));
                }
                if i % 4 == 0 {
                    have.set(PieceIndex(i));
                }
            }
            let slow = (0..n)
                .filter(|&i| bf.get(PieceIndex(i)) && !have.get(PieceIndex(i)))
                .map(|i| availability[i as usize])
                .min()
                .unwrap_or(u32::MAX);
            let fast = rarest_useful(bf.as_bytes(), Some(have.as_bytes()), &availability, 0);
            assert_eq!(fast, slow, "n {n}");
            let all = (0..n).filter(|&i| bf.get(PieceIndex(i))).map(|i| availability[i as usize]);
            assert_eq!(
                rarest_useful(bf.as_bytes(), None, &availability, 0),
                all.min().unwrap_or(u32::MAX)
            );
        }
    }
}
