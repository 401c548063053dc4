//! The slow-reading peer: connects to every honest node, keeps [`STREAMS`] piece requests open
//! on each, and reads the answers at a trickle ([`TRICKLE`] bytes per [`TICK`]), asking again
//! whenever a stream ends. Bounded by [`MAX_REQUESTS`] per stream slot, [`MAX_DIALS`] per node
//! and the adversary's time.
//!
//! The reader's QUIC receive windows on the connections it dials are [`WINDOW`] per stream
//! (not `shoal-net`'s node default of 16 MiB, into which a whole piece lands at once), so the
//! node's sends really wait on the trickle: what it tests is that a slot held by a reader that
//! makes (almost) no progress is taken back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use shoal_core::PieceIndex;
use shoal_net::{Identity, Limits};
use shoal_wire::{Request, Response};
use tokio::task::JoinSet;

use super::{client, Ctx, Tally};

/// Piece requests kept open per honest node.
const STREAMS: usize = 8;
/// Bytes read per tick.
const TRICKLE: usize = 512;
/// How often a trickle is read.
const TICK: Duration = Duration::from_millis(200);
/// The reader's receive window per stream it dials, in bytes (and [`STREAMS`] of them per
/// connection): a few trickles' worth.
const WINDOW: u32 = 4 * 1024;
/// Requests per stream slot.
const MAX_REQUESTS: usize = 500;
/// Connections made to one node (a node may close the reader's connection; it comes back).
const MAX_DIALS: usize = 5;

#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    cut: AtomicU64,
}

/// Runs one slow reader until the time is up. Cancel-safe.
pub(super) async fn run(ctx: Ctx, name: String) -> Tally {
    let mut tally = Tally::new(name);
    let id = Identity::generate();
    let Some(first) = ctx.target.honest.first() else { return tally };
    let limits = Limits {
        dial_stream_window: WINDOW,
        dial_connection_window: WINDOW * STREAMS as u32,
        ..Limits::node()
    };
    let ep = match client::endpoint_with(&id, first.addr, &[], limits) {
        Ok(ep) => ep,
        Err(e) => {
            tally.note(format!("cannot start: {e:#}"));
            return tally;
        }
    };
    let counters = Arc::new(Counters::default());
    let mut set = JoinSet::new();
    for peer in ctx.target.honest.clone() {
        let (ctx, ep, counters) = (ctx.clone(), ep.clone(), counters.clone());
        set.spawn(async move {
            let mut tally = Tally::default();
            for _ in 0..MAX_DIALS {
                if ctx.done() {
                    break;
                }
                match client::dial(&ep, &peer, shoal_wire::ALPN, ctx.wait()).await {
                    Ok(conn) => read_slowly(&ctx, &conn, &mut tally, &counters).await,
                    Err(e) => tally.count(&Err(e)),
                }
                ctx.pause(Duration::from_millis(500)).await;
            }
            tally
        });
    }
    while let Some(done) = set.join_next().await {
        if let Ok(t) = done {
            tally.merge(t);
        }
    }
    tally.note(format!(
        "read {} bytes at a trickle; {} streams cut by the node mid-piece",
        counters.bytes.load(Ordering::Relaxed),
        counters.cut.load(Ordering::Relaxed)
    ));
    ep.close();
    tally
}

/// Keeps [`STREAMS`] trickling requests open on `conn` until it closes or the time is up.
async fn read_slowly(ctx: &Ctx, conn: &Connection, tally: &mut Tally, counters: &Arc<Counters>) {
    let mut set = JoinSet::new();
    for _ in 0..STREAMS {
        let (ctx, conn, counters) = (ctx.clone(), conn.clone(), counters.clone());
        set.spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..MAX_REQUESTS {
                if ctx.done() || conn.close_reason().is_some() {
                    break;
                }
                outcomes.push(one(&ctx, &conn, &counters).await);
            }
            outcomes
        });
    }
    while let Some(done) = set.join_next().await {
        for o in done.into_iter().flatten() {
            tally.count(&o);
        }
    }
}

/// One piece request read at a trickle: `Ok(true)` if the node served it.
async fn one(ctx: &Ctx, conn: &Connection, counters: &Counters) -> anyhow::Result<bool> {
    let piece = PieceIndex(fastrand::u32(..ctx.manifest.piece_count().max(1)));
    let req = Request::Piece { content: ctx.target.content, piece };
    let mut a = client::request(conn, req, None, false, ctx.wait()).await?;
    let Response::Piece { len } = a.response else {
        ctx.pause(TICK).await; // refused: ask again a little later
        return Ok(false);
    };
    let mut got = a.dec.take_rest().len() as u64;
    while got < u64::from(len) && !ctx.done() {
        ctx.pause(TICK).await;
        // Bounded like every call: a node that sends nothing more ends this request.
        match tokio::time::timeout(ctx.wait(), a.recv.read_chunk(TRICKLE, true)).await {
            Ok(Ok(Some(c))) => {
                got += c.bytes.len() as u64;
                counters.bytes.fetch_add(c.bytes.len() as u64, Ordering::Relaxed);
            }
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(_)) => {
                counters.cut.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    Ok(true)
}
