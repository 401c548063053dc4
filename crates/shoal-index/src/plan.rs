//! Re-seed planning: what a heartbeat hears back. Only admitted storage counts: "stored"
//! notices and re-seed orders never name a node that merely claimed to be storage.

use shoal_core::{NodeId, PieceIndex};
use shoal_wire::tracker::Load;

use crate::{HeartbeatOutcome, Index, IndexError, Persist, Planned};

impl Index {
    /// Records a heartbeat and plans what the node should hear back: its contents that storage
    /// holds completely, and pieces to push into storage where an upload stalled.
    pub fn heartbeat_plan(
        &mut self,
        now: u64,
        node: NodeId,
        load: Load,
    ) -> Result<(Vec<Persist>, HeartbeatOutcome), IndexError> {
        let ops = self.heartbeat(now, node, load)?;
        let mut out = HeartbeatOutcome::default();
        if self.nodes.get(&node).is_some_and(|e| e.storage) {
            return Ok((ops, out));
        }
        let (ttl, after, batch) = (
            self.config.directive_ttl_ms,
            self.config.reseed_after_ms,
            self.config.directive_pieces,
        );
        for &content in self.held.get(&node).into_iter().flatten() {
            let Some(swarm) = self.swarms.get_mut(&content) else { continue };
            if !swarm.holders.contains(&node) {
                continue;
            }
            let storage_nodes: Vec<NodeId> = swarm.storage.keys().copied().collect();
            for s in storage_nodes {
                // Every heartbeat asks this of every content the node holds: no bitfield
                // copies until a re-seed is planned.
                let Some(view) = swarm.holders.entry(&s) else { continue };
                if view.is_complete() {
                    out.stored.push(content);
                    continue;
                }
                let held = view.bitfield();
                // Listed from this map just above, with no removal in between.
                let Some(e) = swarm.storage.get_mut(&s) else { continue };
                // Re-seed once the upload into storage has stalled; keep going until complete.
                if !e.2 && now.saturating_sub(e.1) < after {
                    continue;
                }
                e.2 = true;
                if out.directives.len() >= 4
                    || swarm.assigned.values().any(|&(h, exp)| h == node && exp > now)
                {
                    continue;
                }
                let Some(mine) = swarm.holders.get(&node) else { continue };
                let pieces: Vec<PieceIndex> = mine
                    .iter_ones()
                    .filter(|&p| !held.get(p))
                    .filter(|p| swarm.assigned.get(p).is_none_or(|&(_, exp)| exp <= now))
                    .take(batch)
                    .collect();
                if pieces.is_empty() {
                    continue;
                }
                let expires_ms = now + ttl;
                for &p in &pieces {
                    swarm.assigned.insert(p, (node, expires_ms));
                }
                let addrs = self.nodes.get(&s).map(|e| e.addrs.clone()).unwrap_or_default();
                out.directives.push(Planned { content, storage: s, addrs, pieces, expires_ms });
            }
        }
        out.stored.dedup();
        Ok((ops, out))
    }
}
