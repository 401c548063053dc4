//! Multi-link nodes end to end: a node listening on two addresses (one on another IP than it
//! registers from) has both checked by the tracker and listed; each asker is handed the least
//! loaded link and keeps it; an address where another key answers is never listed.

use std::net::SocketAddr;

use shoal_core::{Bitfield, ContentId, NodeId, PeerAddr};
use shoal_wire::tracker::{Role, TrackerRequest, TrackerResponse, TRACKER_VERSION};

use crate::support::*;

/// A registered raw asker of the tracker.
struct Asker {
    id: shoal_net::Identity,
    _ep: shoal_net::Endpoint,
    conn: quinn::Connection,
}

impl Asker {
    async fn new(tracker: SocketAddr, addrs: Vec<SocketAddr>) -> Asker {
        let (id, _ep, conn) = tracker_client(tracker).await;
        let reg = TrackerRequest::Register {
            node_id: id.node_id(),
            version: TRACKER_VERSION,
            role: Role::Node,
            addrs,
            region: None,
        };
        assert!(matches!(tracker_call(&conn, &reg).await, TrackerResponse::Registered { .. }));
        Asker { id, _ep, conn }
    }

    /// The addresses a lookup hands out for `holder`, the chosen one first.
    async fn addrs_of(&self, content: ContentId, holder: NodeId) -> Vec<SocketAddr> {
        let req = TrackerRequest::Lookup {
            content,
            max_peers: 16,
            have: None,
            compact: true,
            regions: false,
        };
        match tracker_call(&self.conn, &req).await {
            TrackerResponse::CompactLookupReply { peers, .. } => {
                peers.into_iter().find(|p| p.node_id == holder).map(|p| p.addrs).unwrap_or_default()
            }
            // Not announced yet.
            TrackerResponse::Unknown => Vec::new(),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn the_least_loaded_checked_link_is_handed_out_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker =
        TrackerProc::start_with(&tmp.path().join("t"), "127.0.0.1:0", &["--heartbeat", "1"]);
    let t = tracker.addr.to_string();
    // Link a on 127.0.0.1 (what the tracker sees it register from: the daemon's first
    // --listen, given by `Daemon::start`), link b on 127.0.0.2.
    let seed =
        Daemon::start(&tmp.path().join("seed"), &["--tracker", &t, "--listen", "127.0.0.2:0=b"]);
    let src = tmp.path().join("f.bin");
    write_file(&src, 100_000, 8);
    let ticket: shoal_core::Ticket = seed.add(&src).parse().unwrap();
    let (content, holder) = (ticket.content, seed.node_id.parse::<NodeId>().unwrap());
    let log2 = shoal_core::piece::piece_log2_for(100_000);
    let pieces = shoal_core::piece::piece_count(100_000, log2) as u32;
    let status = seed.status();
    let links = status["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    assert_eq!((links[0]["name"].as_str(), links[1]["name"].as_str()), (Some(""), Some("b")));
    let a: SocketAddr = links[0]["addr"].as_str().unwrap().parse().unwrap();
    let b: SocketAddr = links[1]["addr"].as_str().unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // An impostor claims link b's address as its own: the key there is the seed's.
        let impostor = Asker::new(tracker.addr, vec![b]).await;
        let hold = TrackerRequest::Announce {
            node_id: impostor.id.node_id(),
            content,
            bitfield: Bitfield::full(pieces),
        };
        let _ = tracker_call(&impostor.conn, &hold).await;
        // The tracker checks link b (the seed proves its key there) and lists it.
        let first = Asker::new(tracker.addr, vec![]).await;
        wait_until_async("link b is checked and listed", || async {
            let got = first.addrs_of(content, holder).await;
            (got.len() == 2).then_some(())
        })
        .await;
        // Load link a with real connections; once a heartbeat reports it, new askers get b.
        let (_id, ep, _) = tracker_client(tracker.addr).await;
        let mut on_a = Vec::new();
        for _ in 0..3 {
            let (conn, _) = ep
                .connect(&PeerAddr { node_id: Some(holder), addr: a }, shoal_wire::ALPN)
                .await
                .unwrap();
            on_a.push(conn);
        }
        let (second, chosen) = wait_until_async("a new asker is handed link b", || async {
            let asker = Asker::new(tracker.addr, vec![]).await;
            let got = asker.addrs_of(content, holder).await;
            (got.first() == Some(&b)).then_some((asker, got))
        })
        .await;
        assert_eq!(chosen, vec![b, a], "both links, the chosen one first");
        // Now b carries the load and a none: a new asker gets a, the earlier one keeps b.
        drop(on_a);
        let mut on_b = Vec::new();
        for _ in 0..6 {
            let (conn, _) = ep
                .connect(&PeerAddr { node_id: Some(holder), addr: b }, shoal_wire::ALPN)
                .await
                .unwrap();
            on_b.push(conn);
        }
        wait_until_async("a new asker is handed link a", || async {
            let asker = Asker::new(tracker.addr, vec![]).await;
            (asker.addrs_of(content, holder).await.first() == Some(&a)).then_some(())
        })
        .await;
        assert_eq!(second.addrs_of(content, holder).await.first(), Some(&b), "kept for its fetch");
        // The impostor's claim of b was checked and refused: it never lists b.
        let got = first.addrs_of(content, impostor.id.node_id()).await;
        assert!(!got.contains(&b), "an address where another key answers: {got:?}");
    });
}
