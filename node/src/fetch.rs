//! Downloading one content from many peers at once.
//!
//! The policy lives in `shoal_swarm::PeerSet` (which peers to dial and keep, deadlines, backoff,
//! bans) and its `Picker` (which piece to ask whom for); this driver only pumps them:
//! [`manifest`] asks peers for the manifest, [`pieces`] runs the requests (each on its own QUIC
//! stream, several in flight per peer) and the control streams that bring bitfields and haves,
//! [`links`] holds the connections. Piece bytes are hashed and written by the store only if
//! they match; the verified set becomes durable at checkpoints, once a second.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use shoal_core::{ContentId, Manifest, NodeId, PeerAddr, PieceIndex, Ticket};
use shoal_net::RateLimiter;
use shoal_store::{Download, StoreError};
use shoal_swarm::PeerSet;
use shoal_wire::tracker::PeerInfo;
use shoal_wire::RejectReason;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::node::Node;
use crate::tracker::{self, TrackerHandle};

mod links;
mod manifest;
mod pieces;
mod requests;

use links::Links;
use pieces::{Totals, LOOKUP_PEERS};

/// How long a fetch waits for a tracker connection at start; with several trackers, each
/// one before the last may also take a whole connect attempt
/// ([`shoal_net::endpoint::CONNECT_TIMEOUT`]) to be found dead.
const TRACKER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// Bytes in flight per peer that the pipeline aims for.
const PIPELINE_BYTES: u64 = 16 * 1024 * 1024;

/// Bytes in flight per peer under the tighter of two download limits: about a second of
/// transfer at the limit, at most [`PIPELINE_BYTES`]. A limited fetch reads at the limit while
/// the peers send at full speed, so whatever is in flight waits in QUIC's receive buffers;
/// a full pipeline per peer would hold 16 s of a 1 MiB/s fetch, per peer, in memory.
fn pipeline_bytes(a: &RateLimiter, b: &RateLimiter) -> u64 {
    let limit = match (a.rate(), b.rate()) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    limit.map_or(PIPELINE_BYTES, |r| r.min(PIPELINE_BYTES))
}

/// What to fetch and where to.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The ticket.
    pub ticket: Ticket,
    /// Peers given besides the ticket's.
    pub extra_peers: Vec<PeerAddr>,
    /// The output path.
    pub output: PathBuf,
    /// A cap for this fetch only (on top of the node's).
    pub limit: Option<u64>,
    /// A tracker to use besides the ticket's (which it overrides).
    pub tracker: Option<String>,
}

pub use shoal_control::fetch::{FetchReport, PeerReport, Progress};

enum Outcome {
    Verified,
    Bad,
    /// The peer refused, with its reason and its (untrusted) text.
    Rejected(RejectReason, String),
    Failed(RequestError),
    Fatal(StoreError),
}

/// Why a piece request to one peer failed: the peer is noted, the piece asked of others.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// No stream could be opened (the connection is gone).
    #[error("cannot open a stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] crate::io::WriteError),
    /// The request stream was closed before it was finished.
    #[error("cannot finish the request: {0}")]
    Finish(#[from] quinn::ClosedStream),
    /// The answer's frame could not be read.
    #[error(transparent)]
    Answer(#[from] crate::io::ReadError),
    /// The stream ended without an answer.
    #[error("no answer")]
    NoAnswer,
    /// An answer that is no answer to a piece request.
    #[error("unexpected answer {0:?}")]
    Unexpected(Box<shoal_wire::Response>),
    /// The announced length is not the piece's.
    #[error("piece {piece} announced as {announced} bytes, expected {expected}")]
    WrongLength { piece: PieceIndex, announced: u64, expected: u64 },
    /// More bytes came than announced.
    #[error("piece longer than announced")]
    TooLong,
    /// The stream ended before the piece did.
    #[error("stream ended inside a piece")]
    Truncated,
    /// The piece's bytes could not be read.
    #[error("reading the piece: {0}")]
    Body(#[from] quinn::ReadError),
    /// The task writing the piece failed.
    #[error("writing the piece: {0}")]
    Write(#[from] tokio::task::JoinError),
}

/// What every request task of one fetch shares.
struct Ctx {
    node: Arc<Node>,
    content: ContentId,
    manifest: Arc<Manifest>,
    dl: Arc<Download>,
    limit: RateLimiter,
}

struct Done {
    peer: NodeId,
    piece: PieceIndex,
    bytes: u64,
    outcome: Outcome,
}

/// Fetches a content. Returns when the file is at its output path, or with an error that says
/// what happened; verified pieces are kept for a resume either way. Cancel-safe: dropping the
/// future keeps what was verified.
pub async fn fetch(
    node: Arc<Node>,
    req: FetchRequest,
    progress: watch::Sender<Progress>,
) -> anyhow::Result<FetchReport> {
    let started = Instant::now();
    let content = req.ticket.content;
    let limit = RateLimiter::new(req.limit);
    let mut candidates: Vec<PeerAddr> =
        req.ticket.peers.iter().chain(&req.extra_peers).copied().collect();
    let tracker = node.trackers.for_fetch(&req.ticket, req.tracker.as_deref());
    let mut warning = None;
    let mut hints = Vec::new();
    let mut tracker_conn = None;
    let mut found_first = Vec::new();
    if let Some(t) = &tracker {
        let others = t.targets().saturating_sub(1) as u32;
        let wait = TRACKER_WAIT + shoal_net::endpoint::CONNECT_TIMEOUT * others;
        match t.connection(wait).await {
            Ok(c) => tracker_conn = Some(c),
            Err(e) => {
                let w =
                    format!("tracker {} is unreachable ({e}); using the ticket's peers", t.addr);
                warn!("{w}");
                warning = Some(w);
            }
        }
    }
    if let Some(c) = &tracker_conn {
        match tracker::lookup(c, content, None, LOOKUP_PEERS).await {
            Ok(Some((found, h))) => {
                candidates.extend(holders(&found));
                hints = h;
                found_first = found;
            }
            Ok(None) => {
                debug!(content = %content.fmt_short(), "the tracker does not know this content")
            }
            Err(e) => warn!(error = %format!("{e:#}"), "tracker lookup failed"),
        }
    }
    let set = PeerSet::new(shoal_swarm::Config::default(), fastrand::u64(..));
    let mut links = Links::new(node.net.clone(), set);
    let placement = tracker.as_ref().map(|t| t.placement()).unwrap_or_default();
    let known = tracker.as_ref().filter(|t| t.is_own()).map(|_| node.trackers.known());
    links.learn_regions(&found_first, &placement, known);
    if links.offer(Instant::now(), candidates) == 0 {
        if tracker.is_some() {
            bail!(
                "no peers: the ticket names none and the tracker knows none for content {content}"
            );
        }
        bail!("the ticket names no peers and no --peer was given: add --peer IP:PORT of a node that has the file");
    }
    let result =
        run(&node, &mut links, &req, &tracker, tracker_conn, hints, limit, warning, &progress)
            .await;
    links.close_all();
    let known = node.trackers.known();
    let wasted = links.cross_region_waste(|peer| known.is_elsewhere(peer));
    node.stats.cross_region_wasted_bytes.fetch_add(wasted, Ordering::Relaxed);
    report_undelivered(tracker.as_ref(), content, &links.set.undelivered());
    let (manifest, path, totals, resumed) = result?;
    let report = FetchReport {
        content_id: content.to_string(),
        size: manifest.size(),
        downloaded_bytes: totals.downloaded,
        seconds: started.elapsed().as_secs_f64(),
        bad_pieces: totals.bad_pieces,
        peers: links.report(),
        resumed_pieces: resumed,
        path: path.display().to_string(),
    };
    info!(content = %content.fmt_short(), size = report.size, seconds = report.seconds, "fetch complete");
    Ok(report)
}

type Finished = (Arc<Manifest>, PathBuf, Totals, u32);

/// Every address of every holder a tracker lookup found: the one rule for the first lookup
/// and the later ones (the set dials one address per node id).
fn holders(found: &[PeerInfo]) -> impl Iterator<Item = PeerAddr> + '_ {
    found
        .iter()
        .flat_map(|p| p.addrs.iter().map(|&addr| PeerAddr { node_id: Some(p.node_id), addr }))
}

/// The manifest, then the pieces, then the file in place.
#[allow(clippy::too_many_arguments)]
async fn run(
    node: &Arc<Node>,
    links: &mut Links,
    req: &FetchRequest,
    tracker: &Option<TrackerHandle>,
    tracker_conn: Option<quinn::Connection>,
    hints: Vec<PieceIndex>,
    limit: RateLimiter,
    warning: Option<String>,
    progress: &watch::Sender<Progress>,
) -> anyhow::Result<Finished> {
    let started = Instant::now();
    let content = req.ticket.content;
    let mut totals = Totals::default();
    let manifest = match node.contents.store.manifest(content)? {
        Some(m) => m,
        None => {
            let (m, n) = manifest::find(links, content, tracker_conn.as_ref()).await?;
            totals.downloaded += n;
            node.stats.downloaded_bytes.fetch_add(n, Ordering::Relaxed);
            Arc::new(m)
        }
    };
    let store = node.contents.store.clone();
    let (m2, out) = (manifest.clone(), req.output.clone());
    let dl = Arc::new(tokio::task::spawn_blocking(move || store.begin_download(m2, &out)).await??);
    let resumed = dl.resumed_pieces();
    if resumed > 0 {
        info!(content = %content.fmt_short(), resumed, total = manifest.piece_count(), "resuming");
    }
    // Tell the tracker at once that we hold (part of) this content, so others find us.
    node.events.content_changed(content);
    let pipeline_bytes = pipeline_bytes(&limit, &node.download);
    let pipeline = (pipeline_bytes / manifest.piece_size()).clamp(2, 32) as usize;
    links.set.start(Instant::now(), dl.have(), pipeline);
    links.set.set_hints(&hints);
    let ctx = Arc::new(Ctx {
        node: node.clone(),
        content,
        manifest: manifest.clone(),
        dl: dl.clone(),
        limit,
    });
    let mut syncs = pieces::Checkpoints::new();
    let fetched =
        pieces::run(links, ctx, tracker.as_ref(), progress, warning, &mut totals, &mut syncs).await;
    pieces::finish_checkpoints(syncs, fetched).await?;
    // The final line shows the run's average rate (the smoothed one may have no sample yet).
    let average = totals.downloaded as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let _ = progress.send(snapshot(&manifest, links, totals.downloaded, average));
    // Aborted request tasks may still have a write running on a blocking thread; `finish`
    // makes any such late write a no-op.
    let path = tokio::task::spawn_blocking(move || dl.finish()).await??;
    // Complete now: status reads its row again.
    node.stats.content_changed();
    Ok((manifest, path, totals, resumed))
}

/// Where the tracker hears of holders that never delivered: the peers this fetch dropped
/// without a single verified piece from them, for a reason that says they do not deliver
/// (banned, silent for the manifest or the bitfield, stalled, never delivering). A busy holder
/// is never reported: it answers `Busy` before our deadlines (see `crate::serve::SLOT_WAIT`).
/// Called once per fetch, when it ends, whether it succeeded or not.
fn report_undelivered(tracker: Option<&TrackerHandle>, content: ContentId, peers: &[NodeId]) {
    if peers.is_empty() {
        return;
    }
    let Some(conn) = tracker.and_then(|t| t.current()) else {
        for peer in peers {
            info!(%peer, content = %content.fmt_short(), "holder never delivered (no tracker to tell)");
        }
        return;
    };
    // In the background, bounded in count (the set remembers at most a few thousand drops) and
    // in time: the fetch's outcome never waits on the tracker.
    let peers = peers.to_vec();
    tokio::spawn(async move {
        let send = async {
            for peer in peers {
                if let Err(e) = crate::tracker::report_undelivered(&conn, content, peer).await {
                    debug!(%peer, error = %format!("{e:#}"), "cannot report a holder");
                    return;
                }
                info!(%peer, content = %content.fmt_short(), "reported a holder that never delivered");
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), send).await;
    });
}

fn snapshot(m: &Manifest, links: &Links, downloaded: u64, rate: f64) -> Progress {
    let (pieces_done, bytes_done) = match links.set.picker() {
        Some(p) => (p.have().count(), p.have().iter_ones().map(|i| m.piece_len(i)).sum()),
        None => (0, 0),
    };
    Progress {
        name: m.name().to_string(),
        size: m.size(),
        pieces_done,
        pieces_total: m.piece_count(),
        bytes_done,
        downloaded_bytes: downloaded,
        peers: links.set.connected(),
        rate,
        warning: None,
    }
}

/// A receive rate smoothed over about two seconds.
struct RateMeter {
    last: Instant,
    acc: u64,
    rate: f64,
}

impl RateMeter {
    fn new() -> Self {
        Self { last: Instant::now(), acc: 0, rate: 0.0 }
    }

    fn add(&mut self, n: u64) {
        self.acc += n;
    }

    fn rate(&mut self) -> f64 {
        let dt = self.last.elapsed().as_secs_f64();
        if dt >= 0.2 {
            let inst = self.acc as f64 / dt;
            self.rate = if self.rate == 0.0 { inst } else { 0.7 * self.rate + 0.3 * inst };
            self.acc = 0;
            self.last = Instant::now();
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    /// A crowded seed answers `Busy` before a fetcher's deadlines pass, so it is backed off
    /// (and never reported to a tracker as never delivering) instead of dropped as silent or
    /// stalled.
    /// A limited fetch keeps about a second of transfer in flight per peer, never more than an
    /// unlimited one.
    #[test]
    fn a_limited_fetch_keeps_about_a_second_in_flight() {
        use shoal_net::RateLimiter;
        let (none, mib) = (RateLimiter::new(None), RateLimiter::new(Some(1 << 20)));
        assert_eq!(super::pipeline_bytes(&none, &none), super::PIPELINE_BYTES);
        assert_eq!(super::pipeline_bytes(&mib, &none), 1 << 20);
        assert_eq!(super::pipeline_bytes(&none, &mib), 1 << 20);
        let four = RateLimiter::new(Some(4 << 20));
        assert_eq!(super::pipeline_bytes(&four, &mib), 1 << 20, "the tighter limit counts");
        let fast = RateLimiter::new(Some(1 << 30));
        assert_eq!(super::pipeline_bytes(&fast, &none), super::PIPELINE_BYTES);
    }

    #[test]
    fn a_busy_seed_answers_before_the_fetchers_deadlines() {
        let c = shoal_swarm::Config::default();
        assert!(crate::serve::SLOT_WAIT < c.manifest_deadline.min(c.stall_deadline));
    }
}
