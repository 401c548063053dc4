//! The piece phase of a fetch: pumps the `PeerSet` (which owns the picker) until every piece
//! is verified. Every decision is the set's; this loop only carries out its actions, feeds it
//! what happened, and asks the tracker for new holders.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::manifest::escape_name;
use shoal_core::{NodeId, PieceIndex};
use shoal_swarm::{Action, DropReason, Picker, PieceOutcome};
use shoal_wire::RejectReason;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn};

use super::links::sleep_until;
use super::links::Links;
use super::requests::{open_control, request_piece};
use super::{holders, snapshot, Ctx, Done, Outcome, Progress, RateMeter};
use crate::metrics::Direction;
use crate::serve::PeerEvent;
use crate::tracker::{self, TrackerHandle};

/// Peers asked for per lookup.
pub(super) const LOOKUP_PEERS: u8 = 32;
/// With a tracker, how long a fetch waits without progress before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// Without a tracker, how long a fetch with nothing left to ask for waits for its peers' haves
/// before it gives up: an origin shows its pieces a few at a time (see `reveal`), hides again
/// (and shows others in turn) what a subscriber left unasked for 1 s or unsent for 8 s, and
/// shows everything after 10 s without progress.
const IDLE_GRACE: Duration = Duration::from_secs(12);
/// Events from control streams waiting for the driver.
const EVENT_QUEUE: usize = 1024;

type LookupResult = (Vec<shoal_wire::tracker::PeerInfo>, Vec<PieceIndex>);

/// Figures of a fetch that the report shows.
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub(super) downloaded: u64,
    pub(super) bad_pieces: u64,
}

/// Checkpoints (an fsync, then the pieces marked verified) run beside the fetch loop, one at a
/// time: see [`run`] and [`finish_checkpoints`].
pub(super) type Checkpoints = JoinSet<Result<(), shoal_store::StoreError>>;

/// Fetches the missing pieces. Returns once all are verified, or with an error that says why
/// no peer can finish the file. Cancel-safe: verified pieces stay in the store. A checkpoint
/// may still run in `syncs` when it returns: pass its outcome to [`finish_checkpoints`].
pub(super) async fn run(
    links: &mut Links,
    ctx: Arc<Ctx>,
    tracker: Option<&TrackerHandle>,
    progress: &watch::Sender<Progress>,
    warning: Option<String>,
    totals: &mut Totals,
    syncs: &mut Checkpoints,
) -> anyhow::Result<()> {
    let node = ctx.node.clone();
    let (content, pieces) = (ctx.content, ctx.manifest.piece_count());
    let (ev_tx, mut ev_rx) = mpsc::channel::<PeerEvent>(EVENT_QUEUE);
    let mut controls: JoinSet<()> = JoinSet::new();
    let mut control_of: HashMap<NodeId, AbortHandle> = HashMap::new();
    let mut requests: JoinSet<Done> = JoinSet::new();
    let mut aborts: HashMap<(NodeId, PieceIndex), AbortHandle> = HashMap::new();
    let mut lookups: JoinSet<anyhow::Result<Option<LookupResult>>> = JoinSet::new();
    // The first lookup was made before the manifest: the schedule counts from now.
    let mut lookup_at = shoal_swarm::Lookups::new(Instant::now());
    let mut last_progress = Instant::now();
    let mut checkpoint = tokio::time::interval(Duration::from_secs(1));
    // A checkpoint's fsync takes as long as the disk needs for what was written since the last
    // one: it runs in `syncs`, one at a time, and the loop keeps requesting pieces meanwhile
    // (awaited here, every request that completed during it waited for it).
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut rate = RateMeter::new();

    while !links.set.is_done() {
        let now = Instant::now();
        while let Some(action) = links.set.poll_action(now) {
            match action {
                Action::Dial { addr, id } => links.dial(addr, id),
                Action::Subscribe(id) => {
                    if let Some(conn) = links.conn(id) {
                        let c =
                            open_control(node.clone(), conn, id, content, pieces, ev_tx.clone());
                        control_of.insert(id, controls.spawn(c));
                    }
                }
                Action::Request { peer, piece } => match (links.conn(peer), links.links.get(&peer))
                {
                    (Some(conn), Some(l)) => {
                        let job = request_piece(ctx.clone(), conn, peer, piece, l.counters.clone());
                        aborts.insert((peer, piece), requests.spawn(job));
                    }
                    // The set and the links agree on who is connected; if not, release it.
                    _ => links.set.handle_piece(now, peer, piece, PieceOutcome::Failed, 0),
                },
                Action::Cancel { peer, piece } => {
                    if let Some(h) = aborts.remove(&(peer, piece)) {
                        h.abort();
                    }
                }
                Action::Close { peer, reason } => {
                    if reason == DropReason::Banned {
                        warn!(%peer, "peer sent bad data or refused pieces it claimed; banned");
                    }
                    aborts.retain(|&(p, _), h| {
                        if p == peer {
                            h.abort();
                        }
                        p != peer
                    });
                    if let Some(h) = control_of.remove(&peer) {
                        h.abort();
                    }
                    links.close(peer, reason);
                }
                Action::AskManifest(_) | Action::CancelManifest(_) => {}
            }
        }
        if links.set.is_done() {
            break;
        }
        // New holders (with a tracker) or haves (from an origin) may still turn up: wait for
        // them until the stall limit, or the idle grace without a tracker.
        // (Idle only while fetching pieces, so with a picker.)
        let patience = if tracker.is_none() { IDLE_GRACE } else { STALL_LIMIT };
        let giving_up = last_progress.elapsed() > patience;
        if let Some(picker) = links.set.picker().filter(|_| links.set.is_idle() && giving_up) {
            return Err(stuck(links, picker, tracker.is_some()));
        }
        let deadline = links.set.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            Some(joined) = requests.join_next() => {
                let Ok(done) = joined else { continue }; // cancelled
                aborts.remove(&(done.peer, done.piece));
                totals.downloaded += done.bytes;
                node.stats.downloaded_bytes.fetch_add(done.bytes, Ordering::Relaxed);
                let (kind, region) = node.trackers.known().labels(&done.peer);
                node.stats.metrics.bytes(Direction::Down, kind, region, done.bytes);
                if region == "other" {
                    node.stats.cross_region_bytes.fetch_add(done.bytes, Ordering::Relaxed);
                }
                rate.add(done.bytes);
                if let Some(l) = links.links.get_mut(&done.peer) {
                    l.bytes += done.bytes;
                }
                let outcome = match done.outcome {
                    Outcome::Verified => {
                        last_progress = Instant::now();
                        if let Some(l) = links.links.get_mut(&done.peer) {
                            l.pieces += 1;
                        }
                        node.events.piece_verified(content, done.piece);
                        PieceOutcome::Verified
                    }
                    Outcome::Bad => {
                        totals.bad_pieces += 1;
                        node.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %done.peer, piece = %done.piece, "piece failed verification");
                        PieceOutcome::Bad
                    }
                    Outcome::Rejected(RejectReason::NotFound, _) => {
                        debug!(peer = %done.peer, piece = %done.piece, "peer refused a piece it claimed");
                        PieceOutcome::NotHeld
                    }
                    Outcome::Rejected(RejectReason::Busy, _) => PieceOutcome::Busy,
                    Outcome::Rejected(reason, text) => {
                        let text = escape_name(&text);
                        debug!(peer = %done.peer, ?reason, %text, "peer refused a piece");
                        links.note(done.peer, format!("refused: {text}"));
                        PieceOutcome::Refused
                    }
                    Outcome::Failed(e) => {
                        let e = escape_name(&e.to_string());
                        debug!(peer = %done.peer, error = %e, "request failed");
                        links.note(done.peer, e);
                        PieceOutcome::Failed
                    }
                    Outcome::Fatal(e) => {
                        let dl = ctx.dl.clone();
                        let _ = tokio::task::spawn_blocking(move || dl.checkpoint()).await;
                        return Err(e.into());
                    }
                };
                let len = ctx.manifest.piece_len(done.piece);
                links.set.handle_piece(Instant::now(), done.peer, done.piece, outcome, len);
            }
            Some(ev) = ev_rx.recv() => handle_event(links, ev),
            Some(joined) = links.dials.join_next() => {
                if let Ok(dialed) = joined {
                    links.dialed(Instant::now(), dialed);
                }
            }
            Some(joined) = lookups.join_next() => match joined {
                Ok(Ok(Some((found, hints)))) => {
                    if let Some(t) = tracker {
                        let known = t.is_own().then(|| node.trackers.known());
                        links.learn_regions(&found, &t.placement(), known);
                    }
                    links.set.set_hints(&hints);
                    links.offer(Instant::now(), holders(&found));
                }
                Ok(Ok(None)) | Err(_) => {}
                Ok(Err(e)) => debug!(error = %format!("{e:#}"), "tracker lookup failed"),
            },
            () = tokio::time::sleep_until(lookup_at.poll_timeout().into()), if tracker.is_some() && lookups.is_empty() => {
                lookup_at.handle_lookup(Instant::now());
                let have = links.set.picker().map(|p| p.have().clone());
                if let (Some(t), Some(have)) = (tracker, have) {
                    if let Some(c) = t.current() {
                        let t = t.clone();
                        // A tracker that fails meanwhile: the next lookup goes to the next one.
                        lookups.spawn(async move {
                            tokio::select! {
                                r = tracker::lookup(&c, content, Some(have), LOOKUP_PEERS) => r,
                                () = t.replaced(&c) => anyhow::bail!("the tracker connection failed"),
                            }
                        });
                    }
                }
            }
            _ = checkpoint.tick(), if syncs.is_empty() => {
                let dl = ctx.dl.clone();
                syncs.spawn_blocking(move || dl.checkpoint());
            }
            Some(synced) = syncs.join_next() => synced??,
            _ = tick.tick() => {
                let now = Instant::now();
                links.feed_progress(now);
                links.set.handle_timeout(now);
                let mut snap = snapshot(&ctx.manifest, links, totals.downloaded, rate.rate());
                snap.warning = warning.clone();
                let _ = progress.send(snap);
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                let now = Instant::now();
                links.feed_progress(now);
                links.set.handle_timeout(now);
            }
        }
    }
    requests.abort_all();
    controls.abort_all();
    lookups.abort_all();
    Ok(())
}

/// Waits for the checkpoint still running after [`run`] returned `fetched`, however it ended:
/// what it marks verified is durable before the outcome is told. Its error is the fetch's if
/// the fetch itself went well.
pub(super) async fn finish_checkpoints(
    mut syncs: Checkpoints,
    fetched: anyhow::Result<()>,
) -> anyhow::Result<()> {
    while let Some(synced) = syncs.join_next().await {
        if fetched.is_ok() {
            synced??;
        }
    }
    fetched
}

fn handle_event(links: &mut Links, ev: PeerEvent) {
    let now = Instant::now();
    match ev {
        PeerEvent::Bitfield(id, b) => links.set.handle_bitfield(now, id, b),
        PeerEvent::Have(id, piece) => links.set.handle_have(id, piece),
        PeerEvent::Rejected(id, reason, text) => {
            links.note(id, format!("refused the content ({reason:?}: {text})"));
            links.set.handle_refused(now, id);
        }
        PeerEvent::Closed(id, why) => {
            links.note(id, why);
            links.set.handle_closed(now, id);
        }
    }
}

/// Why a fetch cannot go on, with what was kept for a resume.
fn stuck(links: &Links, picker: &Picker<NodeId>, with_tracker: bool) -> anyhow::Error {
    let have = picker.have().count();
    let total = picker.have().len();
    if with_tracker {
        return anyhow::anyhow!(
            "no progress for {}s: no reachable peer has the {} missing pieces ({have}/{total} verified and kept: run the same command again to resume)",
            STALL_LIMIT.as_secs(),
            total - have
        );
    }
    if links.set.connected() == 0 {
        return anyhow::anyhow!(
            "lost every peer with {have}/{total} pieces verified (kept: run the same command again to resume): {}",
            links.reasons().join("; ")
        );
    }
    anyhow::anyhow!(
        "no connected peer has the {} missing pieces ({have}/{total} verified and kept for a resume)",
        total - have
    )
}
