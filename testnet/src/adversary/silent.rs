//! The silent peer and the storage claimant: an id that registers at the tracker (as a node,
//! or claiming to be storage), announces every piece of the real content, keeps heartbeating,
//! accepts the peer connections and streams honest nodes open to it, and never answers one.
//! At most [`MAX_CONNECTIONS`] connections and [`MAX_STREAMS`] streams each are held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use shoal_core::Bitfield;
use shoal_net::Identity;
use shoal_wire::tracker::{Load, Role, TrackerRequest, TrackerResponse};
use tokio::task::JoinSet;

use super::{client, stopped, Ctx, Tally};

/// Peer connections held at once.
const MAX_CONNECTIONS: usize = 64;
/// Streams held per connection.
const MAX_STREAMS: usize = 64;
/// Heartbeats keep the claim alive at the tracker.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs one silent id until the time is up. Cancel-safe.
pub(super) async fn run(ctx: Ctx, name: String, as_storage: bool) -> Tally {
    let mut tally = Tally::new(name);
    if let Err(e) = serve(&ctx, &mut tally, as_storage).await {
        tally.note(format!("stopped early: {e:#}"));
    }
    tally
}

async fn serve(ctx: &Ctx, tally: &mut Tally, as_storage: bool) -> anyhow::Result<()> {
    let id = Identity::generate();
    let node_id = id.node_id();
    let tracker = ctx.target.tracker;
    let ep = client::endpoint(&id, tracker, &[shoal_wire::ALPN])?;
    let conn = client::dial_tracker(&ep, tracker, ctx.wait()).await?;
    let role = if as_storage { Role::Storage } else { Role::Node };
    let addrs = vec![ep.local_addr()?];
    tally.count(&client::register(&conn, node_id, role, addrs, ctx.until).await);
    let (content, bitfield) = (ctx.target.content, Bitfield::full(ctx.manifest.piece_count()));
    let bytes = ctx.manifest_bytes.as_slice();
    let claims = client::announce(&conn, node_id, content, bitfield, bytes, ctx.until).await;
    claims.iter().for_each(|o| tally.count(o));
    if as_storage {
        let listed =
            match client::tracker_call(&conn, &TrackerRequest::FindStorage, None, ctx.wait()).await
            {
                Ok(TrackerResponse::StorageNodes { nodes }) => {
                    Ok(nodes.iter().any(|n| n.node_id == node_id))
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            };
        if matches!(listed, Ok(true)) {
            tally.breach("the tracker lists an unadmitted id as storage".into());
        }
        tally.count(&listed);
    }

    let held = Arc::new(AtomicU64::new(0));
    let mut holders = JoinSet::new();
    let mut connections = 0u64;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut stop = ctx.stop.clone();
    let until = tokio::time::Instant::from_std(ctx.until);
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = tokio::time::sleep_until(until) => break,
            incoming = ep.accept() => {
                let Some(incoming) = incoming else { break };
                // `len` counts finished tasks too: reap them, so the cap is on connections
                // held at once, not made in total.
                while holders.try_join_next().is_some() {}
                if holders.len() >= MAX_CONNECTIONS {
                    incoming.refuse();
                    continue;
                }
                connections += 1;
                let held = held.clone();
                holders.spawn(async move {
                    if let Ok(Ok(c)) = tokio::time::timeout(client::ANSWER_WAIT, incoming).await {
                        hold(c, &held).await;
                    }
                });
            }
            _ = beat.tick() => {
                let hb = TrackerRequest::Heartbeat { node_id, load: Load::default(), links: vec![] };
                let r = client::tracker_call(&conn, &hb, None, ctx.wait()).await;
                if let Err(e) = r {
                    tally.note(format!("heartbeat failed: {e}"));
                    if conn.close_reason().is_some() {
                        break;
                    }
                }
            }
        }
    }
    holders.shutdown().await;
    tally.note(format!(
        "held {connections} peer connections and {} streams without answering",
        held.load(Ordering::Relaxed)
    ));
    conn.close(0u32.into(), b"");
    ep.close();
    Ok(())
}

/// Accepts streams on `conn` and keeps them open, unanswered, until the connection ends.
async fn hold(conn: Connection, held: &AtomicU64) {
    let mut streams = Vec::new();
    while let Ok(s) = conn.accept_bi().await {
        if streams.len() >= MAX_STREAMS {
            drop(s); // over the cap: reset at once
            continue;
        }
        held.fetch_add(1, Ordering::Relaxed);
        streams.push(s);
    }
}
