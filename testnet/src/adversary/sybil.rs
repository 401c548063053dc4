//! The sybil registrar: thousands of fresh ids, each registering at the tracker, announcing a
//! fabricated content (uploading its manifest when asked) and claiming every piece of the real
//! one, then vanishing. At most [`IN_FLIGHT`] ids talk to the tracker at once.

use shoal_core::manifest::Manifest;
use shoal_core::{Bitfield, PieceHash};
use shoal_net::Identity;
use shoal_wire::tracker::{Role, TrackerRequest, TrackerResponse, TRACKER_VERSION};
use tokio::task::JoinSet;

use super::{client, Ctx, Tally};

/// The adversary's name in the report.
pub(super) const NAME: &str = "sybils";
/// Sybil ids registering at once.
const IN_FLIGHT: usize = 8;

/// Runs `count` sybils, or fewer if the time is up. Cancel-safe.
pub(super) async fn run(ctx: Ctx, count: usize) -> Tally {
    let mut tally = Tally::new(NAME.into());
    let mut set = JoinSet::new();
    let mut started = 0;
    while started < count || !set.is_empty() {
        while started < count && set.len() < IN_FLIGHT && !ctx.done() {
            let c = ctx.clone();
            set.spawn(async move { one(&c).await });
            started += 1;
        }
        if ctx.done() && set.is_empty() {
            break;
        }
        let Some(done) = set.join_next().await else { break };
        match done {
            Ok(Ok(outcomes)) => outcomes.iter().for_each(|o| tally.count(o)),
            Ok(Err(e)) => tally.count(&Err(e)),
            Err(e) => tally.note(format!("a sybil task failed: {e}")),
        }
    }
    tally.note(format!("{started} ids made"));
    tally
}

/// Whether the tracker took the answer as recorded.
fn recorded(resp: &TrackerResponse) -> bool {
    matches!(resp, TrackerResponse::Registered { .. } | TrackerResponse::Ok)
}

/// A valid manifest of a content that does not exist.
fn fabricated() -> Manifest {
    let pieces = fastrand::usize(1..=8);
    let size = pieces as u64 * shoal_core::piece::MIN_PIECE_SIZE;
    let hashes = (0..pieces).map(|_| PieceHash(client::random_content().0)).collect();
    // Invariant: the name is valid and the piece count matches the size, so this cannot fail.
    Manifest::new("sybil.bin", size, hashes).expect("a well-formed fabricated manifest")
}

/// One sybil id: the outcome of each request it made.
async fn one(ctx: &Ctx) -> anyhow::Result<Vec<anyhow::Result<bool>>> {
    let id = Identity::generate();
    let node_id = id.node_id();
    let tracker = ctx.target.tracker;
    let ep = client::endpoint(&id, tracker, &[])?;
    let conn = client::dial_tracker(&ep, tracker, ctx.wait()).await?;
    let addrs = vec![ep.local_addr()?];
    let mut out = Vec::new();
    let register =
        TrackerRequest::Register { node_id, version: TRACKER_VERSION, role: Role::Node, addrs };
    let r = client::tracker_call(&conn, &register, None, ctx.wait()).await.map(|r| recorded(&r));
    let registered = matches!(r, Ok(true));
    out.push(r);
    if !registered {
        conn.close(0u32.into(), b"");
        return Ok(out);
    }
    let fake = fabricated();
    let content = fake.content_id();
    let announce =
        TrackerRequest::Announce { node_id, content, bitfield: Bitfield::full(fake.piece_count()) };
    match client::tracker_call(&conn, &announce, None, ctx.wait()).await {
        Ok(TrackerResponse::NeedManifest) => {
            out.push(Ok(false));
            let bytes = fake.encode();
            let put = TrackerRequest::PutManifest { node_id, content, len: bytes.len() as u32 };
            out.push(
                client::tracker_call(&conn, &put, Some(&bytes), ctx.wait())
                    .await
                    .map(|r| recorded(&r)),
            );
        }
        other => out.push(other.map(|r| recorded(&r))),
    }
    let claim = TrackerRequest::Announce {
        node_id,
        content: ctx.target.content,
        bitfield: Bitfield::full(ctx.manifest.piece_count()),
    };
    out.push(client::tracker_call(&conn, &claim, None, ctx.wait()).await.map(|r| recorded(&r)));
    conn.close(0u32.into(), b"");
    Ok(out)
}
