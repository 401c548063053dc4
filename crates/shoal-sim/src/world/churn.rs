//! The tracker's clock (announces, heartbeats, expiry) and churn (nodes leaving and coming
//! back).

use shoal_swarm::upload::Config as UploadConfig;
use shoal_swarm::Uploader;
use shoal_wire::tracker::{Load, Role};

use super::{Kind, World, LOOKUP_EVERY, TICK};

impl World {
    /// The tracker's clock: deltas every tick, heartbeats every 2 s, expiry every second.
    pub(super) fn tick(&mut self) {
        let ms = self.now / 1000;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if !n.online {
                continue;
            }
            if !n.deltas.is_empty() {
                let deltas = std::mem::take(&mut n.deltas);
                // Refused only for an expired node (ignored, as the node's own driver
                // re-registers and announces in full at its next heartbeat).
                let _ = self.index.announce_delta(ms, n.id, self.content, &deltas);
            }
            if self.now % LOOKUP_EVERY == 0 {
                let load = Load { active_uploads: n.up.active() as u32, ..Load::default() };
                if self.index.heartbeat(ms, n.id, load).is_err() {
                    self.announce_full(i as u32);
                }
            }
        }
        if self.now % 1_000_000 == 0 {
            self.index.expire(ms);
        }
        self.after(TICK, 0, Kind::Tick);
    }

    /// Registers (again) and announces the whole bitfield.
    pub(crate) fn announce_full(&mut self, i: u32) {
        let ms = self.now / 1000;
        let n = &self.nodes[i as usize];
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        self.index.register(ms, n.id, Role::Node, addr, &[], None);
        let _ = self.index.announce(ms, n.id, self.content, n.have.clone());
    }

    /// The node goes away: its connections close, its fetch and upload state are lost; its
    /// verified pieces stay on its disk.
    pub(super) fn leave(&mut self, i: u32) {
        let now = self.now;
        let lat = self.latency;
        let (clients, servers) = {
            let n = &mut self.nodes[i as usize];
            n.online = false;
            n.inc += 1;
            let servers = n.fetch.take().map(|f| f.servers).unwrap_or_default();
            n.up = Uploader::new(UploadConfig::default());
            n.waiting.clear();
            n.uplink_q.clear();
            n.sending = false;
            n.up_timer = None;
            n.subscribers.clear();
            n.haves_out.clear();
            n.deltas.clear();
            (std::mem::take(&mut n.clients), servers)
        };
        for c in clients {
            self.schedule_at(now + lat, c, Kind::ConnClosed(i));
        }
        for s in servers {
            self.schedule_at(now + lat, s, Kind::ServeClosed(i));
        }
    }

    pub(super) fn rejoin(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        n.online = true;
        n.inc += 1;
        self.announce_full(i);
        if !self.nodes[i as usize].have.is_complete() {
            self.after(0, i, Kind::Start);
        }
    }
}
