//! The push squatter: a fresh id with no right on any storage node. First it pushes the seed's
//! manifest into storage before the seed does (hoping to own the content and lock the real
//! uploader out); then, every [`ROUND`] for at most [`MAX_ROUNDS`] rounds, it pushes a junk
//! content of its own (manifest and pieces) and pieces of the real content with garbage bytes,
//! without a token and with a forged one.

use std::time::Duration;

use quinn::Connection;
use shoal_core::manifest::Manifest;
use shoal_core::{PeerAddr, PieceHash, PieceIndex};
use shoal_net::Identity;
use shoal_wire::{Request, Response};

use super::{client, Ctx, Tally};

/// The adversary's name in the report (after its manifest-first move).
pub(super) const NAME: &str = "squatter";
/// Time between push rounds.
const ROUND: Duration = Duration::from_millis(500);
/// Push rounds at most.
const MAX_ROUNDS: usize = 40;
/// Pieces of the junk content.
const JUNK_PIECES: usize = 2;
/// Pieces of the real content pushed with garbage per round.
const REAL_PIECES: u32 = 4;

/// The squatter's identity: the same key in both phases, so a storage node that made it the
/// owner of the manifest would take its pieces too.
fn identity(ctx: &Ctx) -> &Identity {
    &ctx.squatter
}

async fn dial(
    ctx: &Ctx,
    storage: &PeerAddr,
    wait: Duration,
) -> anyhow::Result<(shoal_net::Endpoint, Connection)> {
    let ep = client::endpoint(identity(ctx), storage.addr, &[])?;
    let conn = client::dial(&ep, storage, shoal_wire::ALPN, wait).await?;
    Ok((ep, conn))
}

/// Whether storage accepted a push.
fn pushed(resp: &Response) -> bool {
    matches!(resp, Response::Pushed { .. })
}

/// Pushes the seed's manifest into every storage node. Cancel-safe. Runs before the
/// adversaries' time starts, so each call waits [`client::ANSWER_WAIT`] at most.
pub(super) async fn manifest_first(ctx: &Ctx) -> Tally {
    let wait = client::ANSWER_WAIT;
    let mut tally = Tally::new("squatter-manifest".into());
    for storage in &ctx.target.storage {
        let outcome = async {
            let (_ep, conn) = dial(ctx, storage, shoal_net::endpoint::CONNECT_TIMEOUT).await?;
            let bytes = ctx.manifest_bytes.as_slice();
            let req = Request::PushManifest {
                content: ctx.target.content,
                len: bytes.len() as u32,
                cert: None,
            };
            let a = client::request(&conn, req, Some(bytes), false, wait).await?;
            anyhow::Ok(pushed(&a.response))
        }
        .await;
        if matches!(outcome, Ok(true)) {
            tally.breach(format!("{} took the seed's manifest from the squatter", storage.addr));
        }
        tally.count(&outcome);
    }
    tally
}

/// A junk content: its manifest and pieces.
fn junk() -> (Manifest, Vec<Vec<u8>>) {
    let size = shoal_core::piece::MIN_PIECE_SIZE as usize;
    let pieces: Vec<Vec<u8>> =
        (0..JUNK_PIECES).map(|_| (0..size).map(|_| fastrand::u8(..)).collect()).collect();
    let hashes = pieces.iter().map(|p| PieceHash::of(p)).collect();
    // Invariant: a valid name and as many hashes as the size has pieces.
    let m = Manifest::new("squat.bin", (size * JUNK_PIECES) as u64, hashes)
        .expect("a well-formed junk manifest");
    (m, pieces)
}

/// The squatter's pushes after the manifest, until the time is up. Cancel-safe.
pub(super) async fn run(ctx: Ctx) -> Tally {
    let mut tally = Tally::new(NAME.into());
    let (manifest, pieces) = junk();
    let bytes = manifest.encode();
    let mut conns: Vec<Option<(shoal_net::Endpoint, Connection)>> =
        ctx.target.storage.iter().map(|_| None).collect();
    for _ in 0..MAX_ROUNDS {
        if ctx.done() {
            break;
        }
        for (storage, slot) in ctx.target.storage.iter().zip(conns.iter_mut()) {
            if slot.as_ref().is_none_or(|(_, c)| c.close_reason().is_some()) {
                match dial(&ctx, storage, ctx.wait()).await {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        tally.count(&Err(e));
                        continue;
                    }
                }
            }
            let Some((_, conn)) = slot.as_ref() else { continue };
            round(&ctx, conn, storage, &manifest, &bytes, &pieces, &mut tally).await;
        }
        ctx.pause(ROUND).await;
    }
    tally
}

async fn round(
    ctx: &Ctx,
    conn: &Connection,
    storage: &PeerAddr,
    manifest: &Manifest,
    bytes: &[u8],
    pieces: &[Vec<u8>],
    tally: &mut Tally,
) {
    let junk = manifest.content_id();
    let req = Request::PushManifest { content: junk, len: bytes.len() as u32, cert: None };
    let outcome = push(ctx, conn, req, bytes).await;
    if matches!(outcome, Ok(true)) {
        tally.breach(format!("{} stored the squatter's junk manifest", storage.addr));
    }
    tally.count(&outcome);
    for (i, data) in pieces.iter().enumerate() {
        if ctx.done() {
            return; // the time is up: what is left would only count as unanswered
        }
        let req = client::push_piece(junk, PieceIndex(i as u32), data.len() as u32, None);
        let outcome = push(ctx, conn, req, data).await;
        if matches!(outcome, Ok(true)) {
            tally.breach(format!("{} stored the squatter's junk pieces", storage.addr));
        }
        tally.count(&outcome);
    }
    let real = ctx.target.content;
    for p in 0..REAL_PIECES.min(ctx.manifest.piece_count()) {
        let piece = PieceIndex(p);
        let len = ctx.manifest.piece_len(piece) as usize;
        let garbage: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
        let forged: Vec<u8> = (0..200).map(|_| fastrand::u8(..)).collect();
        for token in [None, Some(forged)] {
            if ctx.done() {
                return;
            }
            let req = client::push_piece(real, piece, len as u32, token);
            let outcome = push(ctx, conn, req, &garbage).await;
            if matches!(outcome, Ok(true)) {
                tally.breach(format!("{} stored garbage as a piece", storage.addr));
            }
            tally.count(&outcome);
        }
    }
}

/// One push within the time left. Cancel-safe.
async fn push(ctx: &Ctx, conn: &Connection, req: Request, body: &[u8]) -> anyhow::Result<bool> {
    let a = client::request(conn, req, Some(body), false, ctx.wait()).await?;
    Ok(pushed(&a.response))
}
