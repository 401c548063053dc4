//! The request flooder: floods every honest node (storage included) with request streams,
//! [`IN_FLIGHT`] at a time and at most [`MAX_REQUESTS`] per node: pieces of random contents,
//! out-of-range pieces of the real content, manifests and holdings of random contents, and
//! manifest pushes of the largest size whose body never comes; plus one control stream of
//! [`MAX_SUBSCRIBES`] subscriptions to random contents.

use std::time::Duration;

use quinn::Connection;
use shoal_core::{PeerAddr, PieceIndex};
use shoal_net::framed::read_frame;
use shoal_net::{Endpoint, Identity};
use shoal_wire::{encode, Decoder, Message, Opening, Request, Response, PROTOCOL_VERSION};
use tokio::task::JoinSet;

use super::client::random_content;
use super::{client, Ctx, Tally};

/// Requests per honest node.
const MAX_REQUESTS: usize = 4000;
/// Requests in flight per honest node.
const IN_FLIGHT: usize = 32;
/// Subscriptions sent on the control stream.
const MAX_SUBSCRIBES: usize = 20_000;
/// Subscriptions per write.
const SUBSCRIBE_BATCH: usize = 256;
/// Connections made to one node (it may close the flooder's; the flooder comes back).
const MAX_DIALS: usize = 10;

/// Runs one flooder until its requests are spent or the time is up. Cancel-safe.
pub(super) async fn run(ctx: Ctx, name: String) -> Tally {
    let mut tally = Tally::new(name);
    let targets: Vec<PeerAddr> =
        ctx.target.honest.iter().chain(&ctx.target.storage).cloned().collect();
    let Some(first) = targets.first() else { return tally };
    let ep = match client::endpoint(&Identity::generate(), first.addr, &[]) {
        Ok(ep) => ep,
        Err(e) => {
            tally.note(format!("cannot start: {e:#}"));
            return tally;
        }
    };
    let mut set = JoinSet::new();
    for peer in targets {
        set.spawn(flood_peer(ctx.clone(), ep.clone(), peer));
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok(t) => tally.merge(t),
            Err(e) => tally.note(format!("a flood task failed: {e}")),
        }
    }
    ep.close();
    tally
}

/// The `i`th hostile request: which, and whether its send side stays open (a push body that
/// never comes).
fn hostile(ctx: &Ctx, i: usize) -> (Request, bool) {
    let real = ctx.target.content;
    let count = ctx.manifest.piece_count();
    let (far, random) = far_indices();
    let piece = |p| Request::Piece { content: real, piece: PieceIndex(p) };
    match i % 6 {
        0 => (Request::Piece { content: random_content(), piece: PieceIndex(random) }, false),
        1 => (piece(far), false),
        2 => (piece(count.saturating_add(i as u32)), false),
        3 => (Request::Manifest { content: random_content() }, false),
        4 => (Request::Holding { content: random_content() }, false),
        _ => {
            let len = shoal_core::manifest::MAX_ENCODED_LEN as u32;
            (Request::PushManifest { content: random_content(), len, cert: None }, true)
        }
    }
}

/// A piece index past the end of the real content (the last one a u32 names: it made nodes
/// before issue 8 allocate 16 GiB), and a random index for random contents.
fn far_indices() -> (u32, u32) {
    (u32::MAX, fastrand::u32(..))
}

/// Whether an honest node served what it must refuse.
fn served(resp: &Response) -> bool {
    match resp {
        Response::Reject { .. } | Response::Holding { bitfield: None } => false,
        Response::Holding { bitfield: Some(_) } => true,
        _ => true,
    }
}

/// Counts one request's outcome; a served one is a breach.
fn record(tally: &mut Tally, peer: &PeerAddr, outcome: &anyhow::Result<bool>) {
    if matches!(outcome, Ok(true)) {
        tally.breach(format!("{} served a request it must refuse", peer.addr));
    }
    tally.count(outcome);
}

async fn flood_peer(ctx: Ctx, ep: Endpoint, peer: PeerAddr) -> Tally {
    let mut tally = Tally::default();
    let mut set = JoinSet::new();
    let mut conn: Option<Connection> = None;
    let (mut sent, mut dials) = (0, 0);
    let mut subscribing = None;
    while sent < MAX_REQUESTS && !ctx.done() {
        let c = match &conn {
            Some(c) if c.close_reason().is_none() => c.clone(),
            _ => {
                if dials >= MAX_DIALS {
                    tally.note(format!("{} closed the flooder out {dials} times", peer.addr));
                    break;
                }
                dials += 1;
                match client::dial(&ep, &peer, shoal_wire::ALPN, ctx.wait()).await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        tally.count(&Err(e));
                        ctx.pause(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
        };
        if subscribing.is_none() {
            subscribing = Some(tokio::spawn(subscribe(ctx.clone(), c.clone(), ep.node_id())));
        }
        while set.len() < IN_FLIGHT && sent < MAX_REQUESTS {
            let (req, hold) = hostile(&ctx, sent);
            let (c, wait) = (c.clone(), ctx.wait());
            set.spawn(async move {
                let a = client::request(&c, req, None, hold, wait).await?;
                Ok(served(&a.response))
            });
            sent += 1;
        }
        if let Some(Ok(outcome)) = set.join_next().await {
            record(&mut tally, &peer, &outcome);
        }
    }
    while let Some(done) = set.join_next().await {
        if let Ok(outcome) = done {
            record(&mut tally, &peer, &outcome);
        }
    }
    if let Some(s) = subscribing {
        let abort = s.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), s).await {
            Ok(Ok(note)) => tally.note(format!("{}: {note}", peer.addr)),
            _ => {
                abort.abort(); // not left running past the flooder
                tally.note(format!("{}: the subscription flood did not end", peer.addr));
            }
        }
    }
    tally
}

/// Sends subscriptions to random contents on one control stream, counting the node's rejects;
/// a line saying how it went.
async fn subscribe(ctx: Ctx, conn: Connection, node_id: shoal_core::NodeId) -> String {
    let open = client::within(ctx.wait(), async { Ok(conn.open_bi().await?) });
    let (mut send, mut recv) = match open.await {
        Ok(s) => s,
        Err(e) => return format!("no control stream: {e}"),
    };
    let hello =
        Opening::Control(Message::Hello { version: PROTOCOL_VERSION, node_id, region: None });
    let rejects = tokio::spawn(async move {
        let mut dec = Decoder::new();
        let mut n = 0u64;
        while let Ok(Some(m)) = read_frame::<Message>(&mut recv, &mut dec).await {
            n += u64::from(matches!(m, Message::Reject { .. }));
        }
        n
    });
    let mut sent = 0;
    let mut err = None;
    let hello = client::within(ctx.wait(), async { Ok(send.write_all(&encode(&hello)).await?) });
    if let Err(e) = hello.await {
        err = Some(e.to_string());
    }
    while err.is_none() && sent < MAX_SUBSCRIBES && !ctx.done() {
        let mut batch = Vec::new();
        for _ in 0..SUBSCRIBE_BATCH {
            batch.extend(encode(&Message::Subscribe { content: random_content() }));
        }
        match tokio::time::timeout(ctx.wait(), send.write_all(&batch)).await {
            Ok(Ok(())) => sent += SUBSCRIBE_BATCH,
            Ok(Err(e)) => err = Some(e.to_string()),
            Err(_) => err = Some("the node stopped reading".into()),
        }
    }
    let _ = send.finish();
    let abort = rejects.abort_handle();
    let rejected = tokio::time::timeout(client::ANSWER_WAIT, rejects).await;
    abort.abort();
    let rejected = rejected.ok().and_then(Result::ok).unwrap_or(0);
    match err {
        Some(e) => format!("{sent} subscriptions sent, {rejected} rejected, then: {e}"),
        None => format!("{sent} subscriptions sent, {rejected} rejected"),
    }
}
