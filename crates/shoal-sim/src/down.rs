//! Each downloader's driver: does with its `PeerSet` what the node's fetch driver
//! (`node/src/fetch.rs`, `fetch/pieces.rs`, `fetch/links.rs`) does, over the simulated network.

use std::collections::BTreeSet;

use shoal_core::{Bitfield, PieceIndex};
use shoal_swarm::{Action, Admit, ManifestReply, PieceOutcome};

use crate::replay::Driven;
use crate::world::{Kind, Us, World, LOOKUP_EVERY, LOOKUP_PEERS};

/// One fetch in progress.
#[derive(Debug)]
pub(crate) struct Fetch {
    pub(crate) set: Driven,
    /// The manifest is known and `start` was called.
    started: bool,
    /// The tracker's hints from the first lookup, for `start`.
    hints: Vec<PieceIndex>,
    /// Manifest requests outstanding.
    asked: BTreeSet<u32>,
    /// Piece requests outstanding (not answered, not cancelled).
    outstanding: BTreeSet<(u32, PieceIndex)>,
    /// Peers connected for this fetch.
    pub(crate) servers: BTreeSet<u32>,
    timer: Option<Us>,
    /// The node's lookup schedule, from the first lookup on.
    lookups: Option<shoal_swarm::Lookups>,
}

impl World {
    /// A fetch starts (or resumes): the first lookup, then the manifest round.
    pub(crate) fn start_fetch(&mut self, i: u32) {
        let seed = self.random();
        let record = self.recording(i);
        let set = Driven::new(self.t0, i as usize, seed, record);
        self.nodes[i as usize].fetch = Some(Fetch {
            set,
            started: false,
            hints: Vec::new(),
            asked: BTreeSet::new(),
            outstanding: BTreeSet::new(),
            servers: BTreeSet::new(),
            timer: None,
            lookups: None,
        });
        self.lookup(i);
    }

    /// A tracker lookup (answered at once: the tracker is one latency away from everyone, so
    /// the answer is as fresh as a node's), then the next one on the node's schedule.
    pub(crate) fn lookup(&mut self, i: u32) {
        let now = self.at(self.now);
        let n = &mut self.nodes[i as usize];
        let Some(f) = n.fetch.as_mut() else { return };
        let have = f.started.then_some(&n.have);
        let Some(l) = self.index.lookup(Some(n.id), self.content, have, LOOKUP_PEERS) else {
            return;
        };
        if f.started {
            f.set.set_hints(&l.hints);
        } else {
            f.hints = l.hints;
        }
        for p in l.peers {
            // Ids are ours: the position of the node id (the tracker hands out only known ids).
            if let Some(j) = self.by_id.get(&p.node_id) {
                if *j != i {
                    f.set.add_candidate(now, *j, Some(*j));
                }
            }
        }
        // The node's schedule: soon after the first, then every 2 s.
        let now = self.at(self.now);
        let next = match self.nodes[i as usize].fetch.as_mut() {
            Some(f) => {
                let l = f.lookups.get_or_insert_with(|| shoal_swarm::Lookups::new(now));
                let next = l.poll_timeout();
                l.handle_lookup(next);
                next.saturating_duration_since(now).as_micros() as Us
            }
            None => LOOKUP_EVERY,
        };
        self.after(next, i, Kind::Lookup);
        self.pump(i);
    }

    pub(crate) fn dialed(&mut self, i: u32, p: u32) {
        let now = self.at(self.now);
        let online = self.nodes[p as usize].online;
        let Some(f) = self.nodes[i as usize].fetch.as_mut() else { return };
        if f.set.handle_dialed(now, p, online.then_some(p)) == Admit::Accepted {
            f.servers.insert(p);
            self.nodes[p as usize].clients.insert(i);
        }
        self.pump(i);
    }

    pub(crate) fn manifest(&mut self, i: u32, p: u32) {
        let now = self.at(self.now);
        let window = self.window;
        let n = &mut self.nodes[i as usize];
        let Some(f) = n.fetch.as_mut() else { return };
        if !f.asked.remove(&p) || !f.servers.contains(&p) {
            return;
        }
        f.set.handle_manifest(now, p, ManifestReply::Valid);
        let first = !f.started;
        if first {
            f.started = true;
            f.set.start(now, n.have.clone(), window);
            let hints = std::mem::take(&mut f.hints);
            f.set.set_hints(&hints);
        }
        if first {
            // The node tells the tracker at once that it holds (part of) the content.
            self.announce_full(i);
        }
        self.pump(i);
    }

    pub(crate) fn bitfield(&mut self, i: u32, p: u32, b: Bitfield) {
        let now = self.at(self.now);
        let Some(f) = self.nodes[i as usize].fetch.as_mut() else { return };
        if f.servers.contains(&p) {
            f.set.handle_bitfield(now, p, b);
            self.pump(i);
        }
    }

    /// A piece request to `p` ended.
    pub(crate) fn piece(&mut self, i: u32, p: u32, piece: PieceIndex, outcome: PieceOutcome) {
        let now = self.at(self.now);
        let len = self.piece_len(piece);
        let n = &mut self.nodes[i as usize];
        let Some(f) = n.fetch.as_mut() else { return };
        // Cancelled, or closed with its peer: the bytes are wasted, the set hears nothing.
        if !f.outstanding.remove(&(p, piece)) {
            return;
        }
        f.set.handle_piece(now, p, piece, outcome, len);
        let mut batch = false;
        if outcome == PieceOutcome::Verified && n.have.set(piece) {
            n.deltas.push(piece);
            if !n.subscribers.is_empty() {
                batch = n.haves_out.is_empty();
                n.haves_out.push(piece);
            }
        }
        if batch {
            self.after(self.latency, i, Kind::Haves);
        }
        self.pump(i);
    }

    /// This node's haves batch reaches its subscribers. A subscriber's driver runs at once only
    /// if the have may unblock an idle peer (nothing in flight to this node); otherwise the
    /// new piece is seen at that subscriber's next event, at most a piece time later. This
    /// keeps the cost per have constant instead of a full pump per have per subscriber.
    pub(crate) fn haves(&mut self, h: u32) {
        let pieces = std::mem::take(&mut self.nodes[h as usize].haves_out);
        let subscribers: Vec<u32> = self.nodes[h as usize].subscribers.iter().copied().collect();
        for s in subscribers {
            let Some(f) = self.nodes[s as usize].fetch.as_mut() else { continue };
            if !f.servers.contains(&h) {
                continue;
            }
            for &piece in &pieces {
                f.set.handle_have(h, piece);
            }
            let idle = f.set.set.picker().is_some_and(|p| p.in_flight(h) == 0);
            if idle {
                self.pump(s);
            }
        }
    }

    /// A super-seeding seed shows this node one more piece.
    pub(crate) fn show(&mut self, i: u32, s: u32, piece: PieceIndex) {
        let Some(f) = self.nodes[i as usize].fetch.as_mut() else { return };
        if f.servers.contains(&s) {
            f.set.handle_have(s, piece);
            self.pump(i);
        }
    }

    /// A peer this node fetches from went away.
    pub(crate) fn conn_closed(&mut self, i: u32, p: u32) {
        let now = self.at(self.now);
        let Some(f) = self.nodes[i as usize].fetch.as_mut() else { return };
        if f.servers.remove(&p) {
            f.outstanding.retain(|&(q, _)| q != p);
            f.asked.remove(&p);
            f.set.handle_closed(now, p);
            self.pump(i);
        }
    }

    pub(crate) fn peer_timer(&mut self, i: u32, t: Us) {
        let now = self.at(self.now);
        let Some(f) = self.nodes[i as usize].fetch.as_mut() else { return };
        if f.timer != Some(t) {
            return;
        }
        f.timer = None;
        f.set.handle_timeout(now);
        self.pump(i);
    }

    /// Carries out the set's actions, then arms its timer; a finished fetch closes its
    /// connections (the node keeps serving).
    pub(crate) fn pump(&mut self, i: u32) {
        let now = self.at(self.now);
        let lat = self.latency;
        let Some(f) = self.nodes[i as usize].fetch.as_mut() else { return };
        let actions = f.set.poll_actions(now);
        let mut sends: Vec<(Us, u32, Kind)> = Vec::new();
        for a in actions {
            match a {
                // A dial takes a round trip (QUIC's handshake), as does a manifest.
                Action::Dial { addr, .. } => sends.push((2 * lat, i, Kind::Dialed(addr))),
                Action::AskManifest(p) => {
                    f.asked.insert(p);
                    sends.push((2 * lat, i, Kind::Manifest(p)));
                }
                Action::CancelManifest(p) => {
                    f.asked.remove(&p);
                }
                Action::Subscribe(p) => sends.push((lat, p, Kind::Subscribe(i))),
                Action::Request { peer, piece } => {
                    f.outstanding.insert((peer, piece));
                    sends.push((lat, peer, Kind::Request(i, piece)));
                }
                Action::Cancel { peer, piece } => {
                    f.outstanding.remove(&(peer, piece));
                    sends.push((lat, peer, Kind::Cancel(i, piece)));
                }
                Action::Close { peer, .. } => {
                    f.outstanding.retain(|&(q, _)| q != peer);
                    f.asked.remove(&peer);
                    if f.servers.remove(&peer) {
                        sends.push((lat, peer, Kind::ServeClosed(i)));
                    }
                }
            }
        }
        let done = f.set.set.is_done();
        let next = if done { None } else { f.set.set.poll_timeout() };
        let t0 = self.t0;
        let to_us =
            |t: std::time::Instant| t.saturating_duration_since(t0).as_nanos().div_ceil(1000) as Us;
        let arm = next.map(to_us).filter(|&t| f.timer.is_none_or(|a| t < a));
        if let Some(t) = arm {
            f.timer = Some(t);
        }
        for (delay, to, kind) in sends {
            self.after(delay, to, kind);
        }
        if let Some(t) = arm {
            self.schedule_at(t.max(self.now), i, Kind::PeerTimer(t));
        }
        if done {
            self.finish(i);
        }
    }

    /// Every piece verified: the fetch ends and closes its connections.
    fn finish(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        n.finished.get_or_insert(self.now);
        let Some(mut f) = n.fetch.take() else { return };
        if let Some(log) = f.set.take_log() {
            self.logs.push(log);
        }
        for s in f.servers {
            self.after(self.latency, s, Kind::ServeClosed(i));
        }
    }

    pub(crate) fn piece_len(&self, piece: PieceIndex) -> u64 {
        let start = u64::from(piece.0) * self.piece_size;
        self.piece_size.min(self.file_size.saturating_sub(start))
    }
}
