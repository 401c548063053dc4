//! Raw protocol clients the adversaries share: endpoints, tracker calls (registering and
//! announcing among them), one peer request.
//!
//! Built on `shoal-wire` and `shoal-net` only (not the node library), so an adversary sends
//! exactly the frames it chooses. Every wait has a deadline: an honest node that never answers
//! a hostile request is a correct outcome, not a reason for the testnet to hang. Each call
//! takes its own (`wait`: at most [`ANSWER_WAIT`], cut to the time an adversary has left), and
//! the deadline covers the whole call: opening the stream, writing, and reading the answer.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quinn::{Connection, RecvStream, SendStream};
use shoal_core::manifest::Manifest;
use shoal_core::{Bitfield, ContentId, NodeId, PeerAddr, PieceIndex};
use shoal_net::{Endpoint, Identity, Limits};
use shoal_wire::tracker::{
    Role, TrackerRequest, TrackerResponse, MAX_TRACKER_FRAME_LEN, TRACKER_ALPN, TRACKER_VERSION,
};
use shoal_wire::{encode, Decoder, Frame, Opening, Request, Response};

/// How long one answer may take before the adversary counts it as unanswered.
pub(super) const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// The local address the kernel routes from towards `target` (loopback, or the testnet's
/// bridge with `--netns`): an adversary registers the address it really sends from.
pub(super) fn local_ip_for(target: SocketAddr) -> IpAddr {
    let probe = std::net::UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0))
        .and_then(|s| s.connect(target).map(|()| s))
        .and_then(|s| s.local_addr());
    probe.map_or(target.ip(), |a| a.ip())
}

/// An endpoint for `identity` on the address that reaches `target`, serving `alpns`.
/// Must be called inside the adversaries' runtime.
pub(super) fn endpoint(
    identity: &Identity,
    target: SocketAddr,
    alpns: &[&[u8]],
) -> anyhow::Result<Endpoint> {
    endpoint_with(identity, target, alpns, Limits::node())
}

/// [`endpoint`] with the windows and caps of `limits`.
pub(super) fn endpoint_with(
    identity: &Identity,
    target: SocketAddr,
    alpns: &[&[u8]],
    limits: Limits,
) -> anyhow::Result<Endpoint> {
    let bind = SocketAddr::new(local_ip_for(target), 0);
    Endpoint::bind_with(identity, bind, alpns, limits).context("binding an adversary endpoint")
}

/// How long a call may wait if its adversary stops at `until`: [`ANSWER_WAIT`], cut to the
/// time left.
pub(super) fn wait_until(until: Instant) -> Duration {
    ANSWER_WAIT.min(until.saturating_duration_since(Instant::now()))
}

/// Runs `fut` for at most `wait`; past it, [`Unanswered`]. Cancel-safe if `fut` is.
pub(super) async fn within<T>(
    wait: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(wait, fut).await.map_err(|_| Unanswered)?
}

/// Dials `peer` with `alpn` from `ep`, within `wait`. Cancel-safe.
pub(super) async fn dial(
    ep: &Endpoint,
    peer: &PeerAddr,
    alpn: &[u8],
    wait: Duration,
) -> anyhow::Result<Connection> {
    within(wait, async { Ok(ep.connect(peer, alpn).await?.0) }).await
}

/// Dials the tracker at `addr`, within `wait`. Cancel-safe.
pub(super) async fn dial_tracker(
    ep: &Endpoint,
    addr: SocketAddr,
    wait: Duration,
) -> anyhow::Result<Connection> {
    dial(ep, &PeerAddr { node_id: None, addr }, TRACKER_ALPN, wait).await
}

/// No answer came within the call's wait: the honest side stayed silent (or the adversary's
/// time ran out first).
#[derive(Debug)]
pub(super) struct Unanswered;

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer in time (at most {} s)", ANSWER_WAIT.as_secs())
    }
}

impl std::error::Error for Unanswered {}

/// Reads one frame of kind `F` (the decoder bounds its size). No deadline of its own: the
/// caller's covers it.
async fn read_frame<F: Frame>(recv: &mut RecvStream, dec: &mut Decoder) -> anyhow::Result<F> {
    shoal_net::framed::read_frame(recv, dec).await?.context("the stream ended without an answer")
}

/// One tracker request on its own stream (raw bytes follow the frame); the answer's frame,
/// all within `wait`. Bytes after the answer's frame (a manifest) are not read. Cancel-safe.
pub(super) async fn tracker_call(
    conn: &Connection,
    req: &TrackerRequest,
    raw: Option<&[u8]>,
    wait: Duration,
) -> anyhow::Result<TrackerResponse> {
    within(wait, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&encode(req)).await?;
        if let Some(raw) = raw {
            send.write_all(raw).await?;
        }
        send.finish()?;
        let mut dec = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
        read_frame(&mut recv, &mut dec).await
    })
    .await
}

/// Whether the tracker took a request as recorded.
pub(super) fn recorded(resp: &TrackerResponse) -> bool {
    matches!(resp, TrackerResponse::Registered { .. } | TrackerResponse::Ok)
}

/// Registers `node_id` at the tracker on `conn` with `role` and `addrs`, each call by `until`:
/// `Ok(true)` if the tracker recorded it. Cancel-safe.
pub(super) async fn register(
    conn: &Connection,
    node_id: NodeId,
    role: Role,
    addrs: Vec<SocketAddr>,
    until: Instant,
) -> anyhow::Result<bool> {
    let register =
        TrackerRequest::Register { node_id, version: TRACKER_VERSION, role, addrs, region: None };
    tracker_call(conn, &register, None, wait_until(until)).await.map(|r| recorded(&r))
}

/// Announces `bitfield` of `content` for `node_id`, uploading `manifest` (its encoding) when
/// the tracker asks for it, each call by `until`: the outcome of each request made (asking for
/// the manifest counts as a refusal of the announce). Cancel-safe.
pub(super) async fn announce(
    conn: &Connection,
    node_id: NodeId,
    content: ContentId,
    bitfield: Bitfield,
    manifest: &[u8],
    until: Instant,
) -> Vec<anyhow::Result<bool>> {
    let announce = TrackerRequest::Announce { node_id, content, bitfield };
    match tracker_call(conn, &announce, None, wait_until(until)).await {
        Ok(TrackerResponse::NeedManifest) => {
            let put = TrackerRequest::PutManifest { node_id, content, len: manifest.len() as u32 };
            let r = tracker_call(conn, &put, Some(manifest), wait_until(until)).await;
            vec![Ok(false), r.map(|r| recorded(&r))]
        }
        other => vec![other.map(|r| recorded(&r))],
    }
}

/// A request stream: the request is sent (and `raw` after it), the send side left open when
/// `hold_open` (a body announced and never sent), and the answer's header read.
pub(super) struct Answered {
    pub(super) response: Response,
    pub(super) recv: RecvStream,
    pub(super) dec: Decoder,
    /// Kept so a held-open stream is not reset before the answer.
    pub(super) _send: SendStream,
}

/// Opens a request stream on `conn` and waits for the answer's header, all within `wait`.
/// Cancel-safe.
pub(super) async fn request(
    conn: &Connection,
    req: Request,
    raw: Option<&[u8]>,
    hold_open: bool,
    wait: Duration,
) -> anyhow::Result<Answered> {
    within(wait, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&encode(&Opening::Request(req))).await?;
        if let Some(raw) = raw {
            send.write_all(raw).await?;
        }
        if !hold_open {
            send.finish()?;
        }
        let mut dec = Decoder::new();
        let response = read_frame::<Response>(&mut recv, &mut dec).await?;
        Ok(Answered { response, recv, dec, _send: send })
    })
    .await
}

/// Reads the `len` raw bytes after an answer's header, at most `max`, within [`ANSWER_WAIT`].
pub(super) async fn read_body(a: &mut Answered, len: usize, max: usize) -> anyhow::Result<Vec<u8>> {
    if len > max {
        bail!("announced body of {len} bytes is over the limit of {max}");
    }
    let mut buf = a.dec.take_rest().to_vec();
    if buf.len() > len {
        bail!("more bytes than announced");
    }
    let have = buf.len();
    buf.resize(len, 0);
    within(ANSWER_WAIT, async { Ok(a.recv.read_exact(&mut buf[have..]).await?) }).await?;
    Ok(buf)
}

/// The manifest of `content` as the peer on `conn` serves it, checked against the content id,
/// with its encoding. Cancel-safe.
pub(super) async fn fetch_manifest(
    conn: &Connection,
    content: ContentId,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let mut a = request(conn, Request::Manifest { content }, None, false, ANSWER_WAIT).await?;
    let Response::Manifest { len } = a.response else {
        bail!("the seed refused its manifest: {:?}", a.response)
    };
    let bytes = read_body(&mut a, len as usize, shoal_core::manifest::MAX_ENCODED_LEN).await?;
    let manifest = Manifest::decode(&bytes).context("the seed's manifest does not decode")?;
    if manifest.content_id() != content {
        bail!("the seed's manifest does not hash to the content id");
    }
    Ok((manifest, bytes))
}

/// A piece push request. The one place that builds it, so a change of the push frame's fields
/// touches one line.
pub(super) fn push_piece(
    content: ContentId,
    piece: PieceIndex,
    len: u32,
    token: Option<Vec<u8>>,
) -> Request {
    Request::PushPiece { content, piece, len, cert: None, token }
}

/// A random content id: one nobody holds.
pub(super) fn random_content() -> ContentId {
    let mut b = [0u8; 32];
    b.iter_mut().for_each(|x| *x = fastrand::u8(..));
    ContentId(b)
}
