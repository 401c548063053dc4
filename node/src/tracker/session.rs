//! One tracker session: connect (pinned key), register, announce what the scope allows,
//! then deltas and heartbeats until the connection fails.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quinn::Connection;
use shoal_core::{ContentId, NodeId, PeerAddr, PieceIndex};
use shoal_wire::tracker::{
    ErrorCode, Load, Placement, Role, TrackerRequest, TrackerResponse, MAX_DELTA, TRACKER_ALPN,
    TRACKER_VERSION,
};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use super::{
    call, call_within, heartbeat_deadline, resolve, Parts, Scope, DELTA_EVERY, FIRST_PAUSE,
    MAX_PAUSE, RATE_LIMITED_ATTEMPTS,
};

/// Like [`call`], but a "slow down" answer is retried after a growing pause (a bounded number
/// of times). Only for registering, before the session heartbeats: a running session never
/// waits inline (see [`Backoff`]). Cancel-safe.
async fn call_patient(
    conn: &Connection,
    req: &TrackerRequest,
    raw: Option<&[u8]>,
) -> anyhow::Result<TrackerResponse> {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        let (resp, _) = call(conn, req, raw).await?;
        match resp {
            TrackerResponse::Error { code: ErrorCode::RateLimited, .. }
                if attempt < RATE_LIMITED_ATTEMPTS =>
            {
                debug!(?pause, "tracker asked to slow down");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                attempt += 1;
            }
            other => return Ok(other),
        }
    }
}

/// The tracker refused a request.
#[derive(Debug, thiserror::Error)]
#[error("tracker refused: {text}")]
pub(crate) struct TrackerRefused {
    pub(crate) code: ErrorCode,
    text: String,
}

/// How an announce went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Answered (accepted, or refused for a reason that is logged).
    Done,
    /// The tracker said "slow down": try again after a pause.
    SlowDown,
}

fn slow_down(resp: &TrackerResponse) -> bool {
    matches!(resp, TrackerResponse::Error { code: ErrorCode::RateLimited, .. })
}

/// Announces what the node holds of `content`; uploads the manifest if the tracker asks for it
/// and announces again. A refusal of this one content is logged, not fatal, unless the tracker
/// forgot the node. Never waits out a "slow down" inline (the session's heartbeats must go
/// on): it answers [`Sent::SlowDown`] and the caller retries later.
/// `deadline`: how long an announce may take (a manifest upload gets the whole call deadline).
async fn announce(
    node: &Parts,
    conn: &Connection,
    content: ContentId,
    deadline: Duration,
) -> anyhow::Result<Sent> {
    let Some(bitfield) = node.contents.announced(content)? else { return Ok(Sent::Done) };
    let node_id = node.net.node_id();
    let req = TrackerRequest::Announce { node_id, content, bitfield };
    let mut resp = call_within(conn, &req, None, deadline).await?.0;
    if resp == TrackerResponse::NeedManifest {
        let Some(bytes) = node.contents.manifest_bytes(content)? else { return Ok(Sent::Done) };
        let put = TrackerRequest::PutManifest { node_id, content, len: bytes.len() as u32 };
        resp = call(conn, &put, Some(&bytes)).await?.0;
        if resp == TrackerResponse::Ok {
            resp = call_within(conn, &req, None, deadline).await?.0;
        }
    }
    if slow_down(&resp) {
        return Ok(Sent::SlowDown);
    }
    accept(resp, content).map(|()| Sent::Done)
}

/// When the next flush of announces and deltas may go out, after "slow down" answers.
struct Backoff {
    pause: Duration,
    until: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self { pause: FIRST_PAUSE, until: None }
    }

    fn waiting(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }

    /// After a flush: pause (longer each time) if the tracker said "slow down", else reset.
    fn update(&mut self, limited: bool) {
        if limited {
            debug!(pause = ?self.pause, "tracker asked to slow down");
            self.until = Some(Instant::now() + self.pause);
            self.pause = (self.pause * 2).min(MAX_PAUSE);
        } else {
            *self = Self::new();
        }
    }
}

/// Turns an announce answer into the session's next step.
fn accept(resp: TrackerResponse, content: ContentId) -> anyhow::Result<()> {
    match resp {
        TrackerResponse::Ok => Ok(()),
        TrackerResponse::Error { code: ErrorCode::NotRegistered, text } => {
            bail!(TrackerRefused { code: ErrorCode::NotRegistered, text })
        }
        TrackerResponse::Error { code, text } => {
            warn!(content = %content.fmt_short(), ?code, reason = %text, "tracker refused an announce");
            Ok(())
        }
        TrackerResponse::NeedManifest => {
            warn!(content = %content.fmt_short(), "tracker still lacks the manifest");
            Ok(())
        }
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

pub(super) struct Session<'a> {
    pub(super) node: &'a Parts,
    pub(super) addr: &'a str,
    pub(super) scope: Scope,
    pub(super) pinned: &'a Mutex<Option<NodeId>>,
    /// Where the tracker placed this node, for the fetches that use this session.
    pub(super) placement: &'a Mutex<Placement>,
    /// Whether the "not admitted as storage" warning was given.
    pub(super) warned: &'a AtomicBool,
    /// Whether there are other trackers to fail over to (heartbeats then wait less).
    pub(super) failover: bool,
}

impl Session<'_> {
    /// Connects, pins the tracker's key and registers; returns the connection and heartbeat
    /// interval.
    async fn open(&self) -> anyhow::Result<(Connection, u32)> {
        let (node, addr) = (self.node, self.addr);
        let sock = resolve(addr).await?;
        let expected = *self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        let (conn, tracker_id) = node
            .net
            .endpoint
            .connect(&PeerAddr { node_id: expected, addr: sock }, TRACKER_ALPN)
            .await
            .with_context(|| match expected {
                Some(id) => format!("cannot reach tracker {id}@{addr}"),
                None => format!("cannot reach tracker {addr}"),
            })?;
        // Trust on first connect: from now on this key, and only this key, is the tracker.
        *self.pinned.lock().unwrap_or_else(|p| p.into_inner()) = Some(tracker_id);
        if self.scope == Scope::Own {
            // Re-seed tokens signed by this key are valid here (for a storage node).
            node.known.tracker_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(tracker_id);
        }
        let role = if node.contents.is_storage() && self.scope == Scope::Own {
            Role::Storage
        } else {
            Role::Node
        };
        let register = TrackerRequest::Register {
            node_id: node.net.node_id(),
            version: TRACKER_VERSION,
            role,
            addrs: node.net.addrs(),
            region: node.known.stated_region.clone(),
        };
        let heartbeat_ms = match call_patient(&conn, &register, None).await? {
            TrackerResponse::Registered { heartbeat_ms, role: granted, placement } => {
                let placement = placement.unwrap_or_default();
                if self.scope == Scope::Own {
                    let mut region = node.known.region.lock().unwrap_or_else(|p| p.into_inner());
                    if *region != placement.region {
                        let name = placement.region.as_ref().map_or("", |r| r.as_str());
                        info!(tracker = %addr, region = name, routing = placement.routing, "placed in a region");
                        region.clone_from(&placement.region);
                    }
                }
                *self.placement.lock().unwrap_or_else(|p| p.into_inner()) = placement;
                if granted != role && !self.warned.swap(true, Ordering::Relaxed) {
                    warn!(
                        tracker = %addr,
                        "the tracker did not admit this node as storage: start it with `shoal-tracker serve --admit-storage {}`",
                        node.net.node_id()
                    );
                }
                heartbeat_ms.clamp(200, 60_000)
            }
            TrackerResponse::Error { text, .. } => bail!("tracker refused registration: {text}"),
            other => bail!("unexpected tracker answer {other:?}"),
        };
        Ok((conn, heartbeat_ms))
    }

    /// One session, until the connection fails or the node shuts down: it only ever ends with
    /// an error.
    pub(super) async fn run(
        &self,
        tx: &watch::Sender<Option<Connection>>,
    ) -> anyhow::Result<std::convert::Infallible> {
        let (node, addr, scope) = (self.node, self.addr, self.scope);
        let (conn, heartbeat_ms) = self.open().await?;
        // With trackers to fail over to, a call unanswered for two heartbeats ends the session.
        let deadline = heartbeat_deadline(heartbeat_ms, self.failover);
        let node_id = node.net.node_id();
        // Listen for changes before announcing, so nothing verified meanwhile is missed.
        let mut haves = node.events.haves.subscribe();
        let mut changed = node.events.contents_changed.subscribe();
        let mut announced = HashSet::new();
        let contents = match scope {
            Scope::Own => node.contents.content_ids()?,
            Scope::Content(c) => c.into_iter().collect(),
        };
        // Whatever the tracker asks to slow down for goes out with the first flushes.
        let mut full: HashSet<ContentId> = HashSet::new();
        let mut backoff = Backoff::new();
        let mut limited = false;
        for c in contents {
            if limited {
                full.insert(c);
            } else if announce(node, &conn, c, deadline).await? == Sent::SlowDown {
                limited = true;
                full.insert(c);
            } else {
                announced.insert(c);
            }
        }
        backoff.update(limited);
        info!(tracker = %addr, contents = announced.len(), ?scope, "registered with tracker");
        let _ = tx.send(Some(conn.clone()));
        let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(heartbeat_ms)));
        let mut flush = tokio::time::interval(DELTA_EVERY);
        let mut pending: HashMap<ContentId, Vec<PieceIndex>> = HashMap::new();
        let mut last = (
            Instant::now(),
            node.stats.uploaded_bytes.load(Ordering::Relaxed),
            node.stats.downloaded_bytes.load(Ordering::Relaxed),
        );
        loop {
            tokio::select! {
                biased;
                reason = conn.closed() => bail!("tracker connection closed: {reason}"),
                _ = heartbeat.tick() => {
                    let up = node.stats.uploaded_bytes.load(Ordering::Relaxed);
                    let down = node.stats.downloaded_bytes.load(Ordering::Relaxed);
                    let secs = last.0.elapsed().as_secs_f64().max(0.001);
                    let load = Load {
                        active_uploads: node.uploads.active() as u32,
                        upload_rate: (up.saturating_sub(last.1) as f64 / secs) as u64,
                        download_rate: (down.saturating_sub(last.2) as f64 / secs) as u64,
                    };
                    last = (Instant::now(), up, down);
                    let links = node.net.link_loads();
                    let hb = TrackerRequest::Heartbeat { node_id, load, links };
                    match call_within(&conn, &hb, None, deadline).await?.0 {
                        TrackerResponse::HeartbeatReply { stored, directives } if scope == Scope::Own => {
                            node.known.stored.lock().unwrap_or_else(|p| p.into_inner()).extend(stored);
                            for d in directives {
                                debug!(content = %d.content.fmt_short(), storage = %d.storage.node_id, "re-seed directive");
                                node.known.note_storage(d.storage.node_id);
                                node.stats.metrics.directive("received");
                                // Bounded: a full backlog drops this one; the tracker repeats it.
                                if node.directives.try_send(d).is_err() {
                                    debug!("re-seed directives backlog full");
                                }
                            }
                        }
                        TrackerResponse::HeartbeatReply { directives, .. } => {
                            if !directives.is_empty() {
                                debug!(tracker = %addr, "ignored directives from a ticket's tracker");
                            }
                        }
                        TrackerResponse::Ok => {}
                        TrackerResponse::Error { code: ErrorCode::NotRegistered, .. } => {
                            bail!("the tracker forgot this node; registering again")
                        }
                        TrackerResponse::Error { code: ErrorCode::RateLimited, .. } => {}
                        other => bail!("unexpected heartbeat answer {other:?}"),
                    }
                }
                have = haves.recv() => match have {
                    Ok((c, p)) if scope.covers(c) => pending.entry(c).or_default().push(p),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some: announce every content in full at the next flush.
                        announce_all_again(&mut full, &announced, scope);
                    }
                    Err(_) => bail!("node shutting down"),
                },
                c = changed.recv() => match c {
                    Ok(c) if scope.covers(c) => { full.insert(c); }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        announce_all_again(&mut full, &announced, scope);
                    }
                    Err(_) => bail!("node shutting down"),
                },
                _ = flush.tick() => {
                    if backoff.waiting() {
                        continue;
                    }
                    let queued = (&mut full, &mut pending, &mut announced);
                    let limited = flush_once(node, &conn, queued, deadline).await?;
                    backoff.update(limited);
                }
            }
        }
    }
}

/// Sends what is queued: full announces, then deltas. Returns whether the tracker said "slow
/// down"; what it refused then, and everything after it, stays queued for the next flush.
/// `queued`: contents to announce in full, pieces to announce as deltas, contents announced.
async fn flush_once(
    node: &Parts,
    conn: &Connection,
    (full, pending, announced): (
        &mut HashSet<ContentId>,
        &mut HashMap<ContentId, Vec<PieceIndex>>,
        &mut HashSet<ContentId>,
    ),
    deadline: Duration,
) -> anyhow::Result<bool> {
    let node_id = node.net.node_id();
    let mut limited = false;
    for c in std::mem::take(full) {
        if limited {
            full.insert(c);
            continue;
        }
        match announce(node, conn, c, deadline).await? {
            Sent::Done => {
                pending.remove(&c);
                announced.insert(c);
            }
            Sent::SlowDown => {
                limited = true;
                full.insert(c);
            }
        }
    }
    for (c, pieces) in std::mem::take(pending) {
        if limited {
            pending.entry(c).or_default().extend(pieces);
            continue;
        }
        if !announced.contains(&c) {
            match announce(node, conn, c, deadline).await? {
                Sent::Done => {
                    announced.insert(c);
                }
                Sent::SlowDown => {
                    limited = true;
                    full.insert(c);
                }
            }
            continue;
        }
        let mut pieces = pieces;
        node.contents.retain_announced(c, &mut pieces)?;
        for (i, chunk) in pieces.chunks(MAX_DELTA).enumerate() {
            let req = TrackerRequest::AnnounceDelta { node_id, content: c, pieces: chunk.to_vec() };
            let resp = call_within(conn, &req, None, deadline).await?.0;
            if slow_down(&resp) {
                limited = true;
                pending.entry(c).or_default().extend(&pieces[i * MAX_DELTA..]);
                break;
            }
            if resp != TrackerResponse::Ok {
                debug!(content = %c.fmt_short(), "tracker refused a delta; announcing in full");
                if announce(node, conn, c, deadline).await? == Sent::SlowDown {
                    limited = true;
                    full.insert(c);
                }
                // The full announce covers the remaining chunks.
                break;
            }
        }
    }
    Ok(limited)
}

/// After missed notifications: every content announced so far (and a scoped session's one
/// content) is announced in full at the next flush.
fn announce_all_again(full: &mut HashSet<ContentId>, announced: &HashSet<ContentId>, scope: Scope) {
    full.extend(announced.iter().copied());
    if let Scope::Content(Some(c)) = scope {
        full.insert(c);
    }
}
