//! Each node's serving side: does with its `Uploader` what the node's peer service does
//! (`node/src/serve.rs` with the `upload.rs` wrapper), and sends granted pieces one after
//! another on its uplink.

use shoal_core::PieceIndex;
use shoal_swarm::upload::{Admit, Event, PieceKey};
use shoal_swarm::PieceOutcome;

use crate::world::{Kind, Transfer, Us, World};

impl World {
    /// A client subscribes: its bitfield goes back, and its haves from now on.
    pub(crate) fn subscribe(&mut self, s: u32, c: u32) {
        let now = self.at(self.now);
        let n = &mut self.nodes[s as usize];
        if n.clients.contains(&c) {
            n.subscribers.insert(c);
            let view = n.reveal.as_mut().map(|r| r.subscribe(now, c));
            let b = Box::new(view.unwrap_or_else(|| n.have.clone()));
            self.after(self.latency, c, Kind::Bitfield(s, b));
            self.pump_reveal(s);
        }
    }

    /// A piece request arrives: checked against what this node holds, then a slot is asked.
    pub(crate) fn request(&mut self, s: u32, c: u32, piece: PieceIndex) {
        let now = self.at(self.now);
        let len = self.piece_len(piece);
        let pieces = self.pieces;
        let n = &mut self.nodes[s as usize];
        if !n.clients.contains(&c) {
            return;
        }
        if !n.have.get(piece) {
            self.after(self.latency, c, Kind::Piece(s, piece, PieceOutcome::NotHeld));
            return;
        }
        if let Some(r) = n.reveal.as_mut() {
            r.handle_requested(now, c, piece);
        }
        let key = PieceKey { content: 0u8, piece, pieces };
        match n.up.handle_request(now, c, Some(key), len) {
            Admit::Granted(ticket) => {
                n.uplink_q.push_back(Transfer { to: c, piece, ticket, bytes: len });
            }
            Admit::Queued(ticket) => {
                n.waiting.insert(ticket, (c, piece));
            }
            Admit::Busy => {
                // As the node's request guard does: refused unsent, the piece is hidden again.
                if let Some(r) = n.reveal.as_mut() {
                    r.handle_abandoned(now, c, piece);
                }
                self.stats.busy += 1;
                self.after(self.latency, c, Kind::Piece(s, piece, PieceOutcome::Busy));
            }
        }
        self.pump_up(s);
    }

    /// A client cancels a request: a waiter leaves the queue, a transfer not yet on the wire
    /// is dropped (abandoned: not counted as a copy); one on the wire finishes (its bytes are
    /// spent).
    pub(crate) fn cancel(&mut self, s: u32, c: u32, piece: PieceIndex) {
        let now = self.at(self.now);
        let n = &mut self.nodes[s as usize];
        let waiter = n.waiting.iter().find(|(_, &(cc, p))| cc == c && p == piece).map(|(t, _)| *t);
        if let Some(t) = waiter {
            n.waiting.remove(&t);
            n.up.handle_cancel(now, t);
            if let Some(r) = n.reveal.as_mut() {
                r.handle_abandoned(now, c, piece);
            }
        } else {
            let skip = usize::from(n.sending);
            let at = n.uplink_q.iter().skip(skip).position(|t| t.to == c && t.piece == piece);
            if let Some(k) = at {
                if let Some(t) = n.uplink_q.remove(k + skip) {
                    n.up.handle_abandoned(now, t.ticket);
                    if let Some(r) = n.reveal.as_mut() {
                        r.handle_abandoned(now, c, piece);
                    }
                }
            }
        }
        self.pump_up(s);
    }

    /// A client closed its connection: its waiters and queued transfers go.
    pub(crate) fn serve_closed(&mut self, s: u32, c: u32) {
        let now = self.at(self.now);
        let n = &mut self.nodes[s as usize];
        n.clients.remove(&c);
        n.subscribers.remove(&c);
        if let Some(r) = n.reveal.as_mut() {
            r.unsubscribe(now, c);
        }
        let gone: Vec<_> =
            n.waiting.iter().filter(|(_, &(cc, _))| cc == c).map(|(t, _)| *t).collect();
        for t in gone {
            n.waiting.remove(&t);
            n.up.handle_cancel(now, t);
        }
        let skip = usize::from(n.sending);
        let mut k = skip;
        while k < n.uplink_q.len() {
            if n.uplink_q[k].to == c {
                if let Some(t) = n.uplink_q.remove(k) {
                    n.up.handle_abandoned(now, t.ticket);
                }
            } else {
                k += 1;
            }
        }
        self.pump_up(s);
    }

    /// The transfer on the wire is sent: it reaches its client one latency later, and the slot
    /// goes to the next waiter.
    pub(crate) fn send_done(&mut self, s: u32) {
        let now = self.at(self.now);
        let n = &mut self.nodes[s as usize];
        n.sending = false;
        let Some(t) = n.uplink_q.pop_front() else { return };
        n.uploaded += t.bytes;
        if s == 0 {
            self.stats.seed_sent(t.piece, self.now);
        }
        n.up.handle_done(now, t.ticket);
        if let Some(r) = n.reveal.as_mut() {
            r.handle_sent(now, t.to, t.piece);
        }
        if n.clients.contains(&t.to) {
            self.after(self.latency, t.to, Kind::Piece(s, t.piece, PieceOutcome::Verified));
        }
        self.pump_up(s);
    }

    pub(crate) fn reveal_timer(&mut self, s: u32, t: Us) {
        let now = self.at(self.now);
        let n = &mut self.nodes[s as usize];
        if n.reveal_timer != Some(t) {
            return;
        }
        n.reveal_timer = None;
        if let Some(r) = n.reveal.as_mut() {
            r.handle_timeout(now);
        }
        self.pump_reveal(s);
    }

    /// Carries out the seed's reveal events (haves to one subscriber, or its whole bitfield
    /// to all once every piece left once), arms its timer.
    pub(crate) fn pump_reveal(&mut self, s: u32) {
        use shoal_swarm::reveal::Event as Reveal;
        let lat = self.latency;
        let n = &mut self.nodes[s as usize];
        let Some(r) = n.reveal.as_mut() else { return };
        let mut sends = Vec::new();
        while let Some(ev) = r.poll_event() {
            match ev {
                Reveal::Show { peer, piece } => sends.push((peer, Kind::Show(s, piece))),
                Reveal::ShowAll => {
                    for &c in &n.subscribers {
                        sends.push((c, Kind::Bitfield(s, Box::new(n.have.clone()))));
                    }
                }
                Reveal::Narrow { peer } => {
                    sends.push((peer, Kind::Bitfield(s, Box::new(r.view(peer)))));
                }
            }
        }
        let next = r.poll_timeout();
        if r.is_over() {
            n.reveal = None;
        }
        let old = n.reveal_timer;
        for (to, kind) in sends {
            self.after(lat, to, kind);
        }
        let arm = next.map(|t| self.us(t)).filter(|&t| old.is_none_or(|a| t < a));
        if let Some(t) = arm {
            self.nodes[s as usize].reveal_timer = Some(t);
            self.schedule_at(t.max(self.now), s, Kind::RevealTimer(t));
        }
    }

    pub(crate) fn up_timer(&mut self, s: u32, t: Us) {
        let now = self.at(self.now);
        let n = &mut self.nodes[s as usize];
        if n.up_timer != Some(t) {
            return;
        }
        n.up_timer = None;
        n.up.handle_timeout(now);
        self.pump_up(s);
    }

    /// Carries out the uploader's events, starts the next transfer, arms the timer, then the
    /// reveal's events (what the uploader did may have shown pieces).
    pub(crate) fn pump_up(&mut self, s: u32) {
        let now = self.at(self.now);
        let mut refused = Vec::new();
        let n = &mut self.nodes[s as usize];
        while let Some(ev) = n.up.poll_event() {
            match ev {
                Event::Granted(ticket) => {
                    if let Some((to, piece)) = n.waiting.remove(&ticket) {
                        let bytes = self
                            .piece_size
                            .min(self.file_size - u64::from(piece.0) * self.piece_size);
                        n.uplink_q.push_back(Transfer { to, piece, ticket, bytes });
                    }
                }
                Event::Refused(ticket) => {
                    if let Some((to, piece)) = n.waiting.remove(&ticket) {
                        if let Some(r) = n.reveal.as_mut() {
                            r.handle_abandoned(now, to, piece);
                        }
                        refused.push((to, piece));
                    }
                }
            }
        }
        let start = (!n.sending).then(|| n.uplink_q.front().map(|t| t.bytes)).flatten();
        if start.is_some() {
            n.sending = true;
        }
        let uplink = n.uplink;
        let next = n.up.poll_timeout();
        let old = n.up_timer;
        self.stats.busy += refused.len() as u64;
        for (to, piece) in refused {
            self.after(self.latency, to, Kind::Piece(s, piece, PieceOutcome::Busy));
        }
        if let Some(bytes) = start {
            let us = (bytes as f64 * 1e6 / uplink).ceil() as Us;
            self.after(us.max(1), s, Kind::SendDone);
        }
        let arm = next.map(|t| self.us(t)).filter(|&t| old.is_none_or(|a| t < a));
        if let Some(t) = arm {
            self.nodes[s as usize].up_timer = Some(t);
            self.schedule_at(t.max(self.now), s, Kind::UpTimer(t));
        }
        self.pump_reveal(s);
    }
}
