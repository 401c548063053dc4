//! The sybil registrar: thousands of fresh ids, each registering at the tracker, announcing a
//! fabricated content (uploading its manifest when asked) and claiming every piece of the real
//! one, then vanishing. At most [`IN_FLIGHT`] ids talk to the tracker at once.

use shoal_core::manifest::Manifest;
use shoal_core::{Bitfield, PieceHash};
use shoal_net::Identity;
use shoal_wire::tracker::{Role, TrackerRequest};
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
    let r = client::register(&conn, node_id, Role::Node, addrs, ctx.until).await;
    let registered = matches!(r, Ok(true));
    let mut out = vec![r];
    if !registered {
        conn.close(0u32.into(), b"");
        return Ok(out);
    }
    let fake = fabricated();
    let bitfield = Bitfield::full(fake.piece_count());
    let bytes = fake.encode();
    out.extend(
        client::announce(&conn, node_id, fake.content_id(), bitfield, &bytes, ctx.until).await,
    );
    let claim = TrackerRequest::Announce {
        node_id,
        content: ctx.target.content,
        bitfield: Bitfield::full(ctx.manifest.piece_count()),
    };
    out.push(
        client::tracker_call(&conn, &claim, None, ctx.wait()).await.map(|r| client::recorded(&r)),
    );
    conn.close(0u32.into(), b"");
    Ok(out)
}
