//! Pushing a content into storage: `shoal push`, and the tracker's re-seed directives.
//!
//! The pusher pushes the manifest, which claims the content for its user (the node key, or the
//! user key in the data dir, with a device certificate); storage charges the content's size
//! to the user's quota, or answers at once if the user owns it already. Then it asks which
//! pieces storage holds (`Holding`) and pushes only the missing ones, a few at a time, within
//! the node's upload limit. Storage checks each piece before it writes it. `Busy` and storage
//! errors are retried with backoff; any other refusal (no grant, over quota) ends the push
//! with storage's reason. An interrupted push resumes: storage keeps what it stored.
//!
//! The requests themselves, with their deadlines and retries, are in `push/calls.rs`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use quinn::Connection;
use shoal_core::{Bitfield, ContentId, DeviceCert, PeerAddr, PieceIndex};
use shoal_net::RateLimiter;
use shoal_wire::tracker::Directive;
use shoal_wire::Request;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, trace, warn};

use crate::contents::Contents;
use crate::net::Net;
use crate::reveal::Claim;
use crate::stats::Stats;
use crate::tracker::Trackers;
use calls::{holding, push_manifest, push_retrying};

/// What pushing uses of the node: its identity and endpoint, its store, its upload limit, the
/// tracker client (to find storage, and to note what storage holds) and its counters. Owns the
/// set of re-seeds under way. Cloning gives another handle on the same parts.
#[derive(Debug, Clone)]
pub struct Pusher {
    pub(crate) net: Arc<Net>,
    pub(crate) contents: Arc<Contents>,
    pub(crate) trackers: Arc<Trackers>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) upload: RateLimiter,
    pub(crate) data_dir: PathBuf,
    /// Contents with a re-seed push under way. Held only for set access.
    pub(crate) reseeding: Arc<Mutex<HashSet<ContentId>>>,
    /// What this node reveals as an origin: a piece pushed into storage is a copy out.
    pub(crate) reveals: Arc<crate::reveal::Reveals>,
    /// The connection to the storage node offline tasks and the space go to, kept between
    /// calls (see `offline::client`). Held only for access.
    pub(crate) storage: Arc<Mutex<Option<(PeerAddr, Connection, shoal_core::NodeId)>>>,
}

/// Pieces pushed at once.
const PUSH_STREAMS: usize = 4;
/// The longest a user's push holds back the pieces downloaders were sent, waiting for the
/// origin's first copy to be out (a reveal without progress ends after 10 s anyway).
const SECOND_PASS_WAIT: Duration = Duration::from_secs(60);
pub use shoal_control::PushReport;

/// What a push carries to prove its right: the device certificate of this node's user key,
/// if the data dir holds one, and a re-seed token for directive pushes.
#[derive(Debug, Clone, Default)]
struct Credentials {
    cert: Option<DeviceCert>,
    token: Option<Vec<u8>>,
}

/// The device certificate of the data dir's user key, or the one another device linked this
/// node with (`shoal user use`), if there is one; read on each push, so `shoal user new` and
/// `use` take effect without a restart.
pub(crate) fn device_cert(node: &Pusher) -> anyhow::Result<Option<DeviceCert>> {
    let user = shoal_net::Identity::load_user(&node.data_dir).context("reading the user key")?;
    Ok(match user {
        Some(u) => Some(u.device_cert(node.net.node_id())),
        // A device linked to a user whose key lives on another device.
        None => shoal_net::identity::load_device_cert(&node.data_dir, &node.net.node_id()),
    })
}

/// How long `shoal push` waits for a storage node to register when the tracker knows none
/// yet: a storage node started a moment before (or before its tracker) registers within its
/// reconnect backoff, at most 4 s. (Background callers, like a sync round, do not wait: they
/// come back anyway.)
const STORAGE_WAIT: Duration = Duration::from_secs(10);
/// How often the tracker is asked again meanwhile.
const STORAGE_POLL: Duration = Duration::from_millis(500);

/// The storage node the tracker names, waiting up to `wait` for one to register.
pub(crate) async fn find_storage(node: &Pusher, wait: Duration) -> anyhow::Result<PeerAddr> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        let nodes = node.trackers.storage_nodes("finding storage").await?;
        if let Some(n) = nodes.first() {
            return Ok(PeerAddr { node_id: Some(n.node_id), addr: n.addrs[0] });
        }
        if Instant::now() + STORAGE_POLL > deadline {
            let addr = node.trackers.default_addr().unwrap_or("HOST:PORT");
            let waited = if wait.is_zero() {
                String::new()
            } else {
                format!(" (waited {} s for one to register)", wait.as_secs())
            };
            bail!(
                "the tracker knows no storage node{waited}: start one with `shoal daemon --role storage --tracker {addr}`"
            );
        }
        if !told {
            info!("the tracker knows no storage node yet; waiting for one to register");
            told = true;
        }
        tokio::time::sleep(STORAGE_POLL).await;
    }
}

/// Pushes one piece, retrying with backoff while storage cannot write. Returns whether the
/// content is complete in storage after it.
async fn push_one(
    node: &Pusher,
    conn: &Connection,
    claim: Claim,
    creds: Credentials,
) -> anyhow::Result<(u64, bool)> {
    let (content, piece) = (claim.content(), claim.piece());
    let store = node.contents.store.clone();
    let data = tokio::task::spawn_blocking(move || store.read_piece(content, piece))
        .await?
        .with_context(|| format!("reading piece {piece}"))?;
    let req = Request::PushPiece {
        content,
        piece,
        len: data.len() as u32,
        cert: creds.cert,
        token: creds.token,
    };
    let what = format!("piece {piece}");
    let limit = || node.upload.acquire(data.len() as u64);
    let (already, complete) = push_retrying(conn, &req, &data, &what, limit).await?;
    let sent = if already { 0 } else { data.len() as u64 };
    // Storage holds it now and serves it: a copy this node need not send a downloader.
    claim.copied();
    trace!(content = %content.fmt_short(), %piece, sent, "piece pushed");
    node.stats.pushed_bytes.fetch_add(sent, Ordering::Relaxed);
    if let Some(storage) = shoal_net::endpoint::remote_node_id(conn) {
        let (known, up) = (node.trackers.known(), crate::metrics::Direction::Up);
        node.stats.metrics.bytes(up, "storage", known.region_label(&storage), sent);
    }
    Ok((sent, complete))
}

/// Pushes `pieces` over `conn`, a few at a time; returns the bytes sent, whether storage then
/// holds the whole content, and the pieces skipped because `claim` gave no claim for them
/// when their turn came. Cancel-safe: what storage stored stays stored, and a claim dropped
/// unpushed is given back.
async fn push_pieces(
    node: &Pusher,
    conn: &Connection,
    pieces: Vec<PieceIndex>,
    creds: Credentials,
    claim: impl Fn(PieceIndex) -> Option<Claim>,
) -> anyhow::Result<(u64, bool, Vec<PieceIndex>)> {
    let mut queue = pieces.into_iter();
    let mut running = JoinSet::new();
    let (mut sent, mut complete, mut deferred) = (0, false, Vec::new());
    loop {
        while running.len() < PUSH_STREAMS {
            let Some(p) = queue.next() else { break };
            let Some(claim) = claim(p) else {
                deferred.push(p);
                continue;
            };
            let (node, conn, creds) = (node.clone(), conn.clone(), creds.clone());
            running.spawn(async move { push_one(&node, &conn, claim, creds).await });
        }
        let Some(joined) = running.join_next().await else { break };
        let (n, c) = joined??;
        sent += n;
        complete |= c;
    }
    Ok((sent, complete, deferred))
}

/// The user's push: the pieces storage lacks, in two passes. An origin still revealing the
/// content (`crate::reveal`) sends first the pieces nobody was sent or shown yet, claimed so
/// that no subscriber is shown them while they are pushed, and leaves the others to the end:
/// the origin's uplink is the swarm's narrowest part, and a piece sent to both a downloader
/// and storage is one copy more than the swarm needs (the downloader can push it in, told by
/// the tracker's re-seed directives). (Deferring only the pieces already sent, not those
/// shown, left such collisions: the seed of a 16-node testnet sent 2 to 4 MiB of its 64 MiB
/// twice more than without storage.) The second pass waits until every piece has left the
/// origin once (at most [`SECOND_PASS_WAIT`]), so it does not take the uplink from the first
/// copy, and downloaders' re-seeds push in meanwhile what they can. Then it asks storage again
/// and pushes what is still missing, so the push ends with everything stored. (Waiting also for the node's uploads to peers to end was
/// tried: any peer keeping one slow request open, of any content, then held every push for
/// the whole wait.)
async fn push_missing(
    node: &Pusher,
    conn: &Connection,
    content: ContentId,
    missing: Vec<PieceIndex>,
    creds: Credentials,
) -> anyhow::Result<(u64, bool)> {
    let claim = |p| node.reveals.claim(content, p);
    let (mut sent, mut complete, deferred) =
        push_pieces(node, conn, missing, creds.clone(), claim).await?;
    if !deferred.is_empty() && !complete {
        node.reveals.first_copy_out(content, SECOND_PASS_WAIT).await;
        let stored = holding(conn, content).await?;
        let rest: Vec<PieceIndex> =
            deferred.into_iter().filter(|&p| !stored.as_ref().is_some_and(|b| b.get(p))).collect();
        debug!(content = %content.fmt_short(), rest = rest.len(), "pushing the pieces downloaders hold");
        let claim = |p| Some(node.reveals.claim_anyway(content, p));
        let (n, c, _) = push_pieces(node, conn, rest, creds, claim).await?;
        sent += n;
        complete |= c;
    }
    Ok((sent, complete))
}

/// Pushes a content this node holds into storage (found through the tracker unless given).
pub async fn push(
    node: Pusher,
    content: ContentId,
    storage: Option<PeerAddr>,
) -> anyhow::Result<PushReport> {
    let started = Instant::now();
    let manifest = node.contents.store.manifest(content)?.ok_or_else(|| {
        anyhow!("content {content} is not in this node's store: add the file first")
    })?;
    let have = node.contents.store.bitfield(content)?.unwrap_or_default();
    let target = match storage {
        Some(s) => s,
        None => find_storage(&node, STORAGE_WAIT).await?,
    };
    let cert = device_cert(&node)?;
    let (conn, _) = node.net.endpoint.connect(&target, shoal_wire::ALPN).await?;
    let already =
        push_manifest(&conn, content, Bytes::from(manifest.encode()), cert.clone()).await?;
    let stored =
        holding(&conn, content).await?.unwrap_or_else(|| Bitfield::new(manifest.piece_count()));
    let missing: Vec<PieceIndex> = have.iter_ones().filter(|&p| !stored.get(p)).collect();
    debug!(content = %content.fmt_short(), missing = missing.len(), "pushing");
    let (pushed, complete) = if missing.is_empty() {
        (0, already)
    } else {
        push_missing(&node, &conn, content, missing, Credentials { cert, token: None }).await?
    };
    let stored = complete || holding(&conn, content).await?.is_some_and(|b| b.is_complete());
    if stored {
        node.trackers.known().stored.lock().unwrap_or_else(|p| p.into_inner()).insert(content);
    }
    conn.close(0u32.into(), b"done");
    info!(content = %content.fmt_short(), pushed, stored, "push finished");
    Ok(PushReport {
        content_id: content.to_string(),
        size: manifest.size(),
        pushed_bytes: pushed,
        already_stored: already,
        stored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Carries out the own tracker's re-seed directives as they come, in the background, until
/// the process ends.
pub(crate) fn spawn_directives(node: Pusher, mut directives: mpsc::Receiver<Directive>) {
    tokio::spawn(async move {
        while let Some(d) = directives.recv().await {
            run_directive(node.clone(), d);
        }
    });
}

/// Carries out a re-seed directive in the background (one per content at a time).
fn run_directive(node: Pusher, d: Directive) {
    let content = d.content;
    if !node.reseeding.lock().unwrap_or_else(|p| p.into_inner()).insert(content) {
        return;
    }
    tokio::spawn(async move {
        let result = async {
            let token = shoal_wire::tracker::ReseedToken::decode(&d.token)
                .map_err(|e| anyhow!("bad token: {e}"))?;
            let have = node.contents.store.bitfield(content)?.unwrap_or_default();
            let pieces: Vec<PieceIndex> =
                token.pieces.iter().copied().filter(|&p| have.get(p)).collect();
            let addr = *d
                .storage
                .addrs
                .first()
                .ok_or_else(|| anyhow!("directive names no storage address"))?;
            let target = PeerAddr { node_id: Some(d.storage.node_id), addr };
            let (conn, _) = node.net.endpoint.connect(&target, shoal_wire::ALPN).await?;
            let creds = Credentials { cert: None, token: Some(d.token.clone()) };
            let claim = |p| Some(node.reveals.claim_anyway(content, p));
            let r = push_pieces(&node, &conn, pieces, creds, claim).await;
            conn.close(0u32.into(), b"done");
            r.map(|(sent, complete, _)| (sent, complete))
        }
        .await;
        match result {
            Ok((sent, complete)) => {
                node.stats.metrics.directive("obeyed");
                info!(content = %content.fmt_short(), sent, complete, "re-seeded pieces into storage")
            }
            Err(e) => {
                node.stats.metrics.directive("failed");
                warn!(content = %content.fmt_short(), error = %format!("{e:#}"), "re-seed push failed")
            }
        }
        node.reseeding.lock().unwrap_or_else(|p| p.into_inner()).remove(&content);
    });
}

mod calls;
