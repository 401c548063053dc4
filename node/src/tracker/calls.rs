//! One request to a tracker on its own stream, with a deadline, and the requests a fetch makes
//! (lookups, manifests, reports).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use quinn::Connection;
use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};
use shoal_wire::tracker::{TrackerRequest, TrackerResponse, MAX_TRACKER_FRAME_LEN};
use shoal_wire::{encode, Decoder};
use tracing::debug;

use crate::io::read_frame;

/// The longest one request to a tracker may take, answer included: a ticket's tracker is
/// untrusted, and one that accepts a stream and never answers must not hang a fetch.
pub(crate) const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// With trackers to fail over to, a heartbeat not answered within this many intervals (and
/// at least [`MIN_FAILOVER_DEADLINE`]) counts as the tracker gone.
const FAILOVER_HEARTBEATS: u32 = 2;
const MIN_FAILOVER_DEADLINE: Duration = Duration::from_secs(2);

/// The socket address of a tracker's `HOST:PORT`.
pub(crate) async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve tracker address {addr:?} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow!("tracker address {addr:?} resolves to nothing"))
}

/// One request on its own stream; `raw` bytes follow the frame. The whole exchange must end
/// within [`CALL_DEADLINE`]. Cancel-safe.
pub(crate) async fn call(
    conn: &Connection,
    req: &TrackerRequest,
    raw: Option<&[u8]>,
) -> anyhow::Result<(TrackerResponse, Vec<u8>)> {
    call_within(conn, req, raw, CALL_DEADLINE).await
}

/// [`call`] with another deadline. Cancel-safe.
pub(crate) async fn call_within(
    conn: &Connection,
    req: &TrackerRequest,
    raw: Option<&[u8]>,
    deadline: Duration,
) -> anyhow::Result<(TrackerResponse, Vec<u8>)> {
    tokio::time::timeout(deadline, exchange(conn, req, raw))
        .await
        .map_err(|_| anyhow!("the tracker did not answer within {deadline:?}"))?
}

/// How long a heartbeat may take: with trackers to fail over to, [`FAILOVER_HEARTBEATS`]
/// intervals (at least [`MIN_FAILOVER_DEADLINE`]); otherwise [`CALL_DEADLINE`].
pub(crate) fn heartbeat_deadline(heartbeat_ms: u32, failover: bool) -> Duration {
    if !failover {
        return CALL_DEADLINE;
    }
    let intervals = Duration::from_millis(u64::from(heartbeat_ms)) * FAILOVER_HEARTBEATS;
    intervals.clamp(MIN_FAILOVER_DEADLINE, CALL_DEADLINE)
}

async fn exchange(
    conn: &Connection,
    req: &TrackerRequest,
    raw: Option<&[u8]>,
) -> anyhow::Result<(TrackerResponse, Vec<u8>)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode(req)).await?;
    if let Some(raw) = raw {
        // The tracker may answer without reading the body (it has the manifest already, or
        // refuses): its answer says which, so a stopped stream is not an error here.
        if let Err(e) = send.write_all(raw).await {
            debug!(error = %e, "tracker did not read the body");
        }
    }
    let _ = send.finish();
    let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    let Some(resp) = read_frame::<TrackerResponse>(&mut recv, &mut dec).await? else {
        bail!("tracker closed the stream without answering");
    };
    let mut extra = Vec::new();
    if let TrackerResponse::Manifest { len } = resp {
        // The length is the tracker's word: no bigger than any manifest can be.
        if len as usize > shoal_core::manifest::MAX_ENCODED_LEN {
            bail!("the tracker announced a {len}-byte manifest, longer than any manifest");
        }
        extra = crate::io::read_body(&mut recv, &mut dec, u64::from(len), "manifest").await?;
    }
    Ok((resp, extra))
}

/// Tells the tracker that `peer` was asked for pieces of `content` and delivered none: the
/// tracker demotes holders that several downloaders report. Cancel-safe.
// Called by the fetch driver when a fetch ends, for the holders it dropped undelivered.
pub(crate) async fn report_undelivered(
    conn: &Connection,
    content: ContentId,
    peer: NodeId,
) -> anyhow::Result<()> {
    match call(conn, &TrackerRequest::Report { content, peer }, None).await?.0 {
        TrackerResponse::Ok => Ok(()),
        TrackerResponse::Error { text, .. } => bail!("tracker refused the report: {text}"),
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

/// Looks up `content` at the tracker: peers and hints, or `None` if it is unknown there.
pub(crate) async fn lookup(
    conn: &Connection,
    content: ContentId,
    have: Option<Bitfield>,
    max_peers: u8,
) -> anyhow::Result<Option<(Vec<shoal_wire::tracker::PeerInfo>, Vec<PieceIndex>)>> {
    match call(
        conn,
        &TrackerRequest::Lookup { content, max_peers, have, compact: false, regions: true },
        None,
    )
    .await?
    .0
    {
        TrackerResponse::LookupReply { peers, hints, .. } => Ok(Some((peers, hints))),
        TrackerResponse::Unknown => Ok(None),
        TrackerResponse::Error { text, .. } => bail!("tracker refused the lookup: {text}"),
        other => bail!("unexpected tracker answer {other:?}"),
    }
}

/// The manifest of `content` from the tracker, if it has one.
pub(crate) async fn manifest(
    conn: &Connection,
    content: ContentId,
) -> anyhow::Result<Option<Vec<u8>>> {
    match call(conn, &TrackerRequest::GetManifest { content }, None).await? {
        (TrackerResponse::Manifest { .. }, bytes) => Ok(Some(bytes)),
        (TrackerResponse::Unknown, _) => Ok(None),
        (other, _) => bail!("unexpected tracker answer {other:?}"),
    }
}
