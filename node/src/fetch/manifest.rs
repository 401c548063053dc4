//! The manifest round of a fetch: asked of several peers at once through the `PeerSet`, first
//! valid answer wins; then the tracker, if there is one.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::bail;
use quinn::Connection;
use shoal_core::manifest::escape_name;
use shoal_core::{ContentId, Manifest, NodeId};
use shoal_swarm::{Action, ManifestReply};
use tokio::task::{AbortHandle, JoinSet};
use tracing::warn;

use super::links::{sleep_until, Links};
use super::requests::request_manifest;
use crate::tracker;

type Ask = (NodeId, anyhow::Result<(Vec<u8>, u64)>);

/// Finds the manifest of `content`: returns it with the bytes received for it. Dials the
/// set's candidates as it goes. Cancel-safe (abandons the requests in flight).
pub(super) async fn find(
    links: &mut Links,
    content: ContentId,
    tracker: Option<&Connection>,
) -> anyhow::Result<(Manifest, u64)> {
    let mut asks: JoinSet<Ask> = JoinSet::new();
    let mut handles: HashMap<NodeId, AbortHandle> = HashMap::new();
    let mut reasons = Vec::new();
    let mut received = 0u64;
    let mut found = None;
    loop {
        let now = Instant::now();
        while let Some(action) = links.set.poll_action(now) {
            match action {
                Action::Dial { addr, id } => links.dial(addr, id),
                Action::AskManifest(id) => {
                    if let Some(conn) = links.conn(id) {
                        let ask = async move { (id, request_manifest(&conn, content).await) };
                        handles.insert(id, asks.spawn(ask));
                    }
                }
                Action::CancelManifest(id) => {
                    if let Some(h) = handles.remove(&id) {
                        h.abort();
                    }
                }
                Action::Close { peer, reason } => {
                    if let Some(h) = handles.remove(&peer) {
                        h.abort();
                    }
                    links.close(peer, reason);
                }
                // Subscriptions and piece requests come only once the manifest is known.
                _ => {}
            }
        }
        if let Some(m) = found.take() {
            asks.abort_all();
            return Ok((m, received));
        }
        if links.set.manifest_exhausted() {
            break;
        }
        let deadline = links.set.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            Some(joined) = asks.join_next() => {
                let Ok((id, result)) = joined else { continue }; // cancelled
                handles.remove(&id);
                let addr = links.links.get(&id).map(|l| l.addr.to_string()).unwrap_or_default();
                let reply = match result {
                    Ok((bytes, n)) => {
                        received += n;
                        match Manifest::decode(&bytes) {
                            Ok(m) if m.content_id() == content => {
                                found = Some(m);
                                ManifestReply::Valid
                            }
                            Ok(_) => {
                                warn!(peer = %id, "peer sent a manifest for other content; banned");
                                reasons.push(format!("{addr}: sent a manifest for other content"));
                                ManifestReply::Invalid
                            }
                            Err(e) => {
                                // The error may quote the peer's bytes (a file name): escaped.
                                let e = escape_name(&e.to_string());
                                warn!(peer = %id, error = %e, "peer sent a bad manifest; banned");
                                reasons.push(format!("{addr}: sent a bad manifest ({e})"));
                                ManifestReply::Invalid
                            }
                        }
                    }
                    Err(e) => {
                        // A refusal quotes the peer's text: escaped before it can reach a
                        // terminal in the error message.
                        reasons.push(format!("{addr}: {}", escape_name(&format!("{e:#}"))));
                        ManifestReply::Failed
                    }
                };
                links.set.handle_manifest(Instant::now(), id, reply);
            }
            Some(joined) = links.dials.join_next() => {
                if let Ok(dialed) = joined {
                    links.dialed(Instant::now(), dialed);
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                links.set.handle_timeout(Instant::now());
            }
        }
    }
    // Nobody is left to ask: the tracker may still have it.
    if let Some(conn) = tracker {
        if let Some(bytes) = tracker::manifest(conn, content).await? {
            received += bytes.len() as u64;
            return match Manifest::decode(&bytes) {
                Ok(m) if m.content_id() == content => Ok((m, received)),
                _ => bail!("the tracker sent a manifest that does not match content {content}"),
            };
        }
    }
    if links.links.is_empty() {
        bail!("cannot reach any peer: {}", links.dial_errors.join("; "));
    }
    for l in links.links.values() {
        if l.reason == Some(shoal_swarm::DropReason::ManifestTimeout) {
            reasons.push(format!("{}: did not answer in time", l.addr));
        }
    }
    bail!(
        "no peer has content {content} ({}): check that the ticket is for a file they still share",
        reasons.join("; ")
    )
}
