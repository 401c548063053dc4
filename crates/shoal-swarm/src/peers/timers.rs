//! The clocks of [`PeerSet`]: deadlines that drop peers, and rotation of the slowest peer
//! for a waiting candidate.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use super::{Ask, Config, DropReason, PeerSet, Phase};

impl<P: Copy + Ord + Debug, A: Copy + Ord + Debug> PeerSet<P, A> {
    /// Applies every deadline that has passed by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut late = Vec::new();
        for (&id, p) in &self.peers {
            if matches!(p.manifest, Ask::Asked(due) if due <= now) {
                late.push((id, DropReason::ManifestTimeout));
                continue;
            }
            let Phase::Pieces(picker) = &self.phase else { continue };
            match (p.subscribed, p.active_since) {
                (Some(at), None) if at + self.config.bitfield_deadline <= now => {
                    late.push((id, DropReason::NoBitfield));
                }
                _ if picker.in_flight(id) > 0
                    && p.last_progress + self.stall_deadline(p.pieces) <= now =>
                {
                    late.push((id, DropReason::Stalled));
                }
                _ => {}
            }
        }
        for (id, reason) in late {
            self.drop_peer(now, id, reason);
        }
        if self.rotation_due(now) {
            self.next_rotation = Some(now + self.config.rotate_every);
            if let Some((id, reason)) = self.worst(now) {
                self.drop_peer(now, id, reason);
            }
        }
    }

    /// When [`PeerSet::handle_timeout`] (and then [`PeerSet::poll_action`]) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = &self.config;
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for (&id, p) in &self.peers {
            if let Ask::Asked(due) = p.manifest {
                at(due);
            }
            if let Some(t) = p.busy_until {
                at(t);
            }
            let Phase::Pieces(picker) = &self.phase else { continue };
            match (p.subscribed, p.active_since) {
                (Some(s), None) => at(s + c.bitfield_deadline),
                _ if picker.in_flight(id) > 0 => {
                    at(p.last_progress + self.stall_deadline(p.pieces))
                }
                _ => {}
            }
        }
        if self.wants_rotation() {
            if let Some(t) = self.next_rotation {
                at(t);
            } else if let Some(t) = self.peers.values().map(|p| p.connected_at).min() {
                at(t + c.rotate_grace);
            }
        }
        next
    }

    /// How long a peer with requests in flight may send nothing.
    fn stall_deadline(&self, pieces: u32) -> Duration {
        if pieces == 0 {
            self.config.stall_deadline
        } else {
            self.config.proven_stall_deadline
        }
    }

    /// True for a dropped peer still in its cool-down, or banned (by the set, or by the picker
    /// for bad data whatever the set recorded).
    pub(super) fn is_blocked(&self, now: Instant, id: P) -> bool {
        self.picker().is_some_and(|p| p.is_banned(id))
            || self.dropped.get(&id).is_some_and(|d| {
                d.reason == DropReason::Banned || now < d.at + self.config.retry_after
            })
    }

    /// True if candidates wait for a slot while fetching pieces, and no dial is under way:
    /// a candidate that does not answer (a sybil the tracker still lists, say) holds its dial
    /// until the handshake deadline, and meanwhile no further working peer is given up for
    /// another unknown one.
    fn wants_rotation(&self) -> bool {
        matches!(self.phase, Phase::Pieces(_))
            && !self.is_done()
            && !self.candidates.is_empty()
            && self.dialing.is_empty()
            && self.peers.len() >= self.config.max_connected
    }

    fn rotation_due(&self, now: Instant) -> bool {
        self.wants_rotation() && self.next_rotation.is_none_or(|t| t <= now)
    }

    /// The peer to rotate out: among those kept past the grace period and without a piece
    /// delivered within it, one in a run of `Busy`
    /// answers or never delivering first, then the lowest rate. A peer whose last answers were
    /// `Busy` is dropped as `Busy` even between two backoffs (asking again): it is crowded, and
    /// must not be reported as never delivering. Nor is one that has delivered nothing yet but
    /// was connected for less than `stall_deadline` (the grace period is shorter): its requests
    /// may still wait in a crowded queue, so it goes as `Slow`, ranked with the never
    /// delivering.
    fn worst(&self, now: Instant) -> Option<(P, DropReason)> {
        let c = &self.config;
        self.peers
            .iter()
            .filter(|(_, p)| p.connected_at + c.rotate_grace <= now)
            // A peer that delivered within the grace is working: it is never given up for an
            // unknown candidate (one that may not answer, as sybils a tracker lists do not).
            .filter(|(_, p)| p.last_piece.is_none_or(|t| t + c.rotate_grace <= now))
            .map(|(&id, p)| {
                let since = p.active_since.unwrap_or(p.connected_at);
                let secs = now.saturating_duration_since(since).as_secs_f64().max(1.0);
                let rate = p.verified_bytes as f64 / secs;
                let first = p.busy > 0 || p.pieces == 0;
                let reason = if p.busy > 0 {
                    DropReason::Busy
                } else if p.pieces == 0 && p.connected_at + c.stall_deadline <= now {
                    DropReason::NeverDelivered
                } else {
                    DropReason::Slow
                };
                (id, reason, first, rate)
            })
            .min_by(|a, b| b.2.cmp(&a.2).then(a.3.total_cmp(&b.3)))
            .map(|(id, reason, _, _)| (id, reason))
    }
}

/// The backoff after the `n`th `Busy` in a row: doubling from `busy_backoff`, capped at
/// `busy_backoff_max`, scaled by a jitter in [0.75, 1.25) drawn from `random` so busy peers'
/// clients spread out.
pub(super) fn backoff(c: &Config, n: u32, random: u64) -> Duration {
    let base = c.busy_backoff.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let capped = base.min(c.busy_backoff_max);
    let jitter = 0.75 + (random >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
    capped.mul_f64(jitter)
}
