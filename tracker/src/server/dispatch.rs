//! One request, checked and answered: authentication, rate limits, then the index.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use quinn::RecvStream;
use shoal_core::NodeId;
use shoal_index::{Action, IndexError, Lookup, VerifiedManifest};
use shoal_wire::tracker::{
    ErrorCode, PeerInfo, PeerSummary, Placement, StorageNode, TrackerRequest, TrackerResponse,
    MAX_LOOKUP_PEERS, MIN_TRACKER_VERSION, REGIONS_VERSION, TRACKER_VERSION,
};
use shoal_wire::Decoder;
use tracing::{debug, info};

use super::{now_ms, Shared, REQUEST_DEADLINE};

/// An answer, and raw bytes after it: a manifest, shared with the index, not copied.
type Reply = (TrackerResponse, Option<Bytes>);

fn refuse(code: ErrorCode, text: impl std::fmt::Display) -> Reply {
    (TrackerResponse::Error { code, text: text.to_string() }, None)
}

fn index_error(shared: &Shared, e: IndexError) -> Reply {
    match e {
        IndexError::NotRegistered => refuse(ErrorCode::NotRegistered, e),
        IndexError::NeedManifest(_) => (TrackerResponse::NeedManifest, None),
        IndexError::RateLimited => {
            shared.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            refuse(ErrorCode::RateLimited, e)
        }
        IndexError::TooManyContents { .. }
        | IndexError::ManifestSpace { .. }
        | IndexError::ManifestQuota { .. } => refuse(ErrorCode::OverLimit, e),
        e => refuse(ErrorCode::BadRequest, e),
    }
}

fn ok_or(shared: &Shared, r: Result<Vec<shoal_index::Persist>, IndexError>) -> Reply {
    match r {
        Ok(ops) => {
            shared.persist(&ops);
            (TrackerResponse::Ok, None)
        }
        Err(e) => index_error(shared, e),
    }
}

/// Answers `req` from the node proven as `proven`, whose packets come from `remote`. Reads a
/// manifest body only after the sender, its rate and the space for it are checked.
pub(super) async fn dispatch(
    shared: &Arc<Shared>,
    remote: SocketAddr,
    proven: NodeId,
    req: TrackerRequest,
    dec: &mut Decoder,
    recv: &mut RecvStream,
) -> anyhow::Result<Reply> {
    let claimed = match &req {
        TrackerRequest::Register { node_id, .. }
        | TrackerRequest::Announce { node_id, .. }
        | TrackerRequest::AnnounceDelta { node_id, .. }
        | TrackerRequest::Forget { node_id, .. }
        | TrackerRequest::PutManifest { node_id, .. }
        | TrackerRequest::Heartbeat { node_id, .. } => Some(*node_id),
        _ => None,
    };
    let m = &shared.metrics;
    if let Some(claimed) = claimed.filter(|c| *c != proven) {
        m.forged.fetch_add(1, Ordering::Relaxed);
        // Counted; not a warning: it comes before any rate limit, and anyone can send many.
        debug!(%claimed, %proven, "refused a request for another node id");
        return Ok(refuse(
            ErrorCode::Forged,
            format!("this connection is authenticated as {proven}, not as the node it speaks for"),
        ));
    }
    let now = now_ms();
    let ip = remote.ip();
    let action = match &req {
        TrackerRequest::Register { .. } => Some(Action::Register),
        TrackerRequest::Announce { .. }
        | TrackerRequest::AnnounceDelta { .. }
        | TrackerRequest::Forget { .. }
        | TrackerRequest::PutManifest { .. }
        | TrackerRequest::Report { .. } => Some(Action::Announce),
        // A lookup's rate is checked under the lock its lookup takes (`lookups`).
        TrackerRequest::Lookup { .. } => None,
        TrackerRequest::Heartbeat { .. }
        | TrackerRequest::GetManifest { .. }
        | TrackerRequest::FindStorage
        | TrackerRequest::ResolveSource { .. } => Some(Action::Query),
        _ => None,
    };
    if let Some(action) = action {
        if let Err(e) = shared.index_read().check_rate(now, action, ip, proven) {
            debug!(%ip, node = %proven, ?action, "rate limited");
            return Ok(index_error(shared, e));
        }
    }
    let reply = match req {
        TrackerRequest::Register { version, role, addrs, region, .. } => {
            m.registers.fetch_add(1, Ordering::Relaxed);
            if !(MIN_TRACKER_VERSION..=TRACKER_VERSION).contains(&version) {
                return Ok(refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "tracker protocol version {version} is not supported (this tracker speaks \
                         {MIN_TRACKER_VERSION} to {TRACKER_VERSION}): upgrade shoal"
                    ),
                ));
            }
            let (r, heartbeat_ms, routing) = {
                let mut ix = shared.index();
                let r = ix.register(now, proven, role, remote, &addrs, region.as_ref());
                let c = ix.config();
                (r, c.heartbeat_ms, c.region_routing)
            };
            shared.persist(&r.ops);
            // Links on other IPs than the observed one join once the node proves its key there.
            super::links::check(shared, proven, remote, &addrs, &r.addrs);
            if r.role != role {
                m.unadmitted_storage.fetch_add(1, Ordering::Relaxed);
                info!(node = %proven, "storage claim from a node not admitted; treated as a node");
            }
            // Older nodes get the reply they know; version 4 learns where it was placed.
            let placement = (version >= REGIONS_VERSION)
                .then(|| Placement { routing: routing && r.region.is_some(), region: r.region });
            (TrackerResponse::Registered { heartbeat_ms, role: r.role, placement }, None)
        }
        TrackerRequest::Announce { content, bitfield, .. } => {
            m.announces.fetch_add(1, Ordering::Relaxed);
            let r = shared.index().announce(now, proven, content, bitfield);
            ok_or(shared, r)
        }
        TrackerRequest::Forget { content, .. } => {
            m.announces.fetch_add(1, Ordering::Relaxed);
            let r = shared.index().forget(now, proven, content);
            ok_or(shared, r)
        }
        TrackerRequest::AnnounceDelta { content, pieces, .. } => {
            m.announces.fetch_add(1, Ordering::Relaxed);
            let r = shared.index().announce_delta(now, proven, content, &pieces);
            ok_or(shared, r)
        }
        TrackerRequest::PutManifest { content, len, .. } => {
            put_manifest(shared, now, proven, content, len, dec, recv).await?
        }
        TrackerRequest::Heartbeat { load, links, .. } => {
            m.heartbeats.fetch_add(1, Ordering::Relaxed);
            let r = {
                let mut ix = shared.index();
                let r = ix.heartbeat_plan(now, proven, load);
                if r.is_ok() && !links.is_empty() {
                    ix.set_links(proven, &links);
                }
                r
            };
            match r {
                Ok((ops, plan)) => {
                    shared.persist(&ops);
                    if !plan.directives.is_empty() {
                        debug!(directives = plan.directives.len(), "re-seed orders issued");
                        let pieces: usize = plan.directives.iter().map(|d| d.pieces.len()).sum();
                        shared.obs.directives.inc_by(plan.directives.len() as u64);
                        shared.obs.directive_pieces.inc_by(pieces as u64);
                    }
                    let directives = shared.sign(proven, plan.directives);
                    (TrackerResponse::HeartbeatReply { stored: plan.stored, directives }, None)
                }
                Err(e) => index_error(shared, e),
            }
        }
        TrackerRequest::ResolveSource { id } => {
            let found = shared.sources.get(&id);
            let label = if found.is_some() { "true" } else { "false" };
            shared.obs.sources.get_or_create(&[("found", label)]).inc();
            match found {
                Some(url) => (TrackerResponse::Source { url: url.clone() }, None),
                None => (TrackerResponse::Unknown, None),
            }
        }
        TrackerRequest::FindStorage => {
            let nodes = shared
                .index_read()
                .storage_nodes(Some(proven))
                .into_iter()
                .map(|(node_id, addrs)| StorageNode { node_id, addrs })
                .collect::<Vec<_>>();
            let found = if nodes.is_empty() { "none" } else { "some" };
            shared.obs.storage_queries.get_or_create(&[("found", found)]).inc();
            (TrackerResponse::StorageNodes { nodes }, None)
        }
        // The stream's loop answers lookups in batches (`lookups`); one reaching here alone
        // is a batch of one.
        req @ TrackerRequest::Lookup { .. } => {
            let mut replies = lookups(shared, remote, proven, vec![req]);
            replies.pop().unwrap_or_else(|| refuse(ErrorCode::BadRequest, "no lookup"))
        }
        TrackerRequest::GetManifest { content } => match shared.index_read().manifest(content) {
            Some(bytes) => (TrackerResponse::Manifest { len: bytes.len() as u32 }, Some(bytes)),
            None => (TrackerResponse::Unknown, None),
        },
        TrackerRequest::Report { content, peer } => {
            m.reports.fetch_add(1, Ordering::Relaxed);
            let r = shared.index().report(now, proven, content, peer);
            ok_or(shared, r)
        }
        _ => refuse(ErrorCode::BadRequest, "unknown request (upgrade the tracker?)"),
    };
    Ok(reply)
}

/// A manifest upload: registered sender, space and an in-flight budget first, then the body
/// within the request deadline, then verification against the content id (before taking the
/// index lock: decoding and hashing up to a frame's worth of manifest is the slow part).
async fn put_manifest(
    shared: &Shared,
    now: u64,
    proven: NodeId,
    content: shoal_core::ContentId,
    len: u32,
    dec: &mut Decoder,
    recv: &mut RecvStream,
) -> anyhow::Result<Reply> {
    match shared.index().admit_manifest(proven, content, len) {
        // Known already: the body is not read (the stream's receive side is stopped on drop).
        Ok(false) => return Ok((TrackerResponse::Ok, None)),
        Ok(true) => {}
        Err(e) => return Ok(index_error(shared, e)),
    }
    let Ok(_permit) = shared.manifest_bytes.clone().try_acquire_many_owned(len.max(1)) else {
        shared.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Ok(refuse(
            ErrorCode::RateLimited,
            "slow down: the tracker is reading many manifests; retry in a few seconds",
        ));
    };
    // The body's bytes already received; what follows them is the stream's next request.
    let mut bytes = dec.take(len as usize).to_vec();
    let have = bytes.len();
    bytes.resize(len as usize, 0);
    tokio::time::timeout(REQUEST_DEADLINE, recv.read_exact(&mut bytes[have..]))
        .await
        .context("manifest body too slow")?
        .context("reading manifest")?;
    let verified = match VerifiedManifest::check(content, bytes) {
        Ok(v) => v,
        Err(e) => return Ok(index_error(shared, e)),
    };
    let r = shared.index().put_verified_manifest(now, proven, verified);
    Ok(ok_or(shared, r))
}

/// Answers lookups that arrived together on one stream, in order, taking the index's lock
/// once for all of them, shared: lookups of other streams run beside them (each locks only
/// the swarm it ranks), and only changes to the index (registrations, announces, expiry)
/// wait for them. Each is still rate-checked and timed on its own. Every request must be a
/// `Lookup` (anything else is answered as a bad request).
pub(super) fn lookups(
    shared: &Arc<Shared>,
    remote: SocketAddr,
    proven: NodeId,
    reqs: Vec<TrackerRequest>,
) -> Vec<Reply> {
    let m = &shared.metrics;
    let now = now_ms();
    let ip = remote.ip();
    // Under the lock only the index's work; the answers are finished after it.
    let mut found = Vec::with_capacity(reqs.len());
    {
        let ix = shared.index_read();
        // One asker for the whole batch, and registration cannot change under the lock.
        let asker = ix.is_registered(proven).then_some(proven);
        for req in reqs {
            let TrackerRequest::Lookup { content, max_peers, have, compact, regions } = req else {
                found.push(Found::Bad);
                continue;
            };
            m.lookups.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            if let Err(e) = ix.check_rate(now, Action::Query, ip, proven) {
                debug!(%ip, node = %proven, "lookup rate limited");
                found.push(Found::Refused(e));
                continue;
            }
            let max = (max_peers as usize).min(MAX_LOOKUP_PEERS);
            let have = have.as_ref();
            found.push(if compact {
                Found::Compact(ix.lookup_compact(asker, content, have, max), regions)
            } else {
                Found::Full(ix.lookup(asker, content, have, max), regions)
            });
            shared.obs.lookup_took(started.elapsed());
        }
    }
    found
        .into_iter()
        .map(|f| match f {
            Found::Bad => refuse(ErrorCode::BadRequest, "not a lookup"),
            Found::Refused(e) => index_error(shared, e),
            // Only askers that asked for regions get them (older ones cannot read them).
            Found::Compact(l, regions) => (
                l.map_or(TrackerResponse::Unknown, |mut l| {
                    if !regions {
                        l.peers.iter_mut().for_each(|p| p.region = None);
                    }
                    TrackerResponse::CompactLookupReply {
                        piece_count: l.piece_count,
                        peers: l.peers,
                        hints: l.hints,
                    }
                }),
                None,
            ),
            Found::Full(l, regions) => (
                l.map_or(TrackerResponse::Unknown, |mut l| {
                    if !regions {
                        l.peers.iter_mut().for_each(|p| p.region = None);
                    }
                    TrackerResponse::LookupReply {
                        piece_count: l.piece_count,
                        peers: l.peers,
                        hints: l.hints,
                    }
                }),
                None,
            ),
        })
        .collect()
}

/// What the index said to one lookup of a batch (with whether the asker reads regions).
enum Found {
    Bad,
    Refused(IndexError),
    Compact(Option<Lookup<PeerSummary>>, bool),
    Full(Option<Lookup<PeerInfo>>, bool),
}
