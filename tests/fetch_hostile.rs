//! Fetches that hostile peers cannot stall or fool: liars (bitfields that claim every piece),
//! corrupters, silent peers (a raw QUIC server that completes the handshake with the peer ALPN
//! and then never answers a stream), and a peer whose refusals carry terminal escapes.

use std::net::SocketAddr;

use shoal_core::{PeerAddr, Ticket};

use crate::support::*;

/// A hostile peer: accepts QUIC connections with the peer ALPN and a valid identity, then
/// never answers any stream (or, [`SilentPeer::answering`], answers every stream with the same
/// bytes). Stops when dropped.
struct SilentPeer {
    node_id: String,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentPeer {
    fn start() -> SilentPeer {
        Self::answering(None)
    }

    /// A peer that writes `answer` on every stream opened to it, then ends the stream.
    fn answering(answer: Option<Vec<u8>>) -> SilentPeer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let identity = shoal_net::Identity::generate();
                let ep = shoal_net::Endpoint::bind(
                    &identity,
                    "127.0.0.1:0".parse().unwrap(),
                    &[shoal_wire::ALPN],
                )
                .unwrap();
                ready_tx.send((identity.node_id(), ep.local_addr().unwrap())).unwrap();
                // Connections are held (never read from) until the test ends.
                let mut held = Vec::new();
                let accept = async {
                    while let Some(incoming) = ep.accept().await {
                        if let Ok(conn) = incoming.await {
                            if let Some(answer) = answer.clone() {
                                tokio::spawn(answer_every_stream(conn.clone(), answer));
                            }
                            held.push(conn);
                        }
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    _ = accept => {}
                }
                ep.close();
            });
        });
        let (id, addr) = ready_rx.recv().unwrap();
        SilentPeer { node_id: id.to_string(), addr, stop: Some(stop), thread: Some(thread) }
    }

    fn peer(&self) -> String {
        format!("{}@{}", self.node_id, self.addr)
    }

    fn peer_addr(&self) -> PeerAddr {
        self.peer().parse().unwrap()
    }
}

async fn answer_every_stream(conn: quinn::Connection, answer: Vec<u8>) {
    while let Ok((mut send, _recv)) = conn.accept_bi().await {
        let _ = send.write_all(&answer).await;
        let _ = send.finish();
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `--danger-lie-bitfield` daemon holding part of the content: a standalone fetch from
/// `seed`, killed past 40 %, leaves the checkpointed pieces; the daemon then claims them all.
fn liar(dir: &std::path::Path, ticket: &str) -> Daemon {
    get_killed_past(dir, ticket, &dir.with_extension("partial.bin"), "1MiB/s", 40.0);
    Daemon::start(dir, &["--danger-lie-bitfield"])
}

fn peer_entry<'a>(report: &'a serde_json::Value, node_id: &str) -> &'a serde_json::Value {
    let peers = report["peers"].as_array().unwrap();
    peers
        .iter()
        .find(|p| p["node_id"] == node_id)
        .unwrap_or_else(|| panic!("{node_id} not in {report}"))
}

#[test]
fn one_honest_source_among_liars_corrupters_and_silent_peers_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 4 * 1024 * 1024, 21);
    let honest = Daemon::start(&tmp.path().join("honest"), &[]);
    let ticket = honest.add(&src);
    let corrupters: Vec<Daemon> = (0..2)
        .map(|i| {
            let d = Daemon::start(
                &tmp.path().join(format!("corrupt{i}")),
                &["--danger-corrupt-uploads", "1"],
            );
            d.add(&src);
            d
        })
        .collect();
    let liars: Vec<Daemon> =
        (0..2).map(|i| liar(&tmp.path().join(format!("liar{i}")), &ticket)).collect();
    let silent: Vec<SilentPeer> = (0..2).map(|_| SilentPeer::start()).collect();
    // The honest seed last among the candidates.
    let mut ticket: Ticket = ticket.parse().unwrap();
    let honest_addr = ticket.peers.clone();
    ticket.peers = silent.iter().map(SilentPeer::peer_addr).collect();
    ticket.peers.extend(liars.iter().map(|l| l.peer().parse::<PeerAddr>().unwrap()));
    ticket.peers.extend(corrupters.iter().map(|c| c.peer().parse::<PeerAddr>().unwrap()));
    ticket.peers.extend(honest_addr);
    // At 256 KiB/s the 4 MiB take at least 16 s: longer than the 10 s bitfield deadline, so
    // the silent peers are dropped before the end. Waiting on our own limit is not a stall.
    let out = tmp.path().join("out.bin");
    let report = get_json(
        &tmp.path().join("fetcher"),
        &ticket.to_string(),
        &out,
        &["--download-limit", "256KiB/s"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
    for c in &corrupters {
        let e = peer_entry(&report, &c.node_id);
        assert_eq!(e["banned"], true, "corrupter not banned: {report}");
        assert_eq!(e["pieces"], 0);
    }
    assert_eq!(report["bad_pieces"], 4, "each corrupter banned at its second bad piece: {report}");
    for l in &liars {
        let e = peer_entry(&report, &l.node_id);
        assert_eq!(e["banned"], true, "liar not banned: {report}");
    }
    for s in &silent {
        let e = peer_entry(&report, &s.node_id);
        assert_eq!(e["pieces"], 0);
        let why = e["dropped"].as_str().unwrap_or_else(|| panic!("silent peer kept: {report}"));
        // Dropped at the bitfield or manifest deadline, or, on a loaded machine, when its
        // connection died first (QUIC's idle timeout): either way never waited on.
        assert!(why.contains("no bitfield") || why.contains("manifest") || why == "gone", "{why}");
    }
    let h = peer_entry(&report, &honest.node_id);
    assert_eq!(h["banned"], false);
    assert!(h.get("dropped").is_none(), "{report}");
}

#[test]
fn a_fetch_whose_first_candidates_are_silent_for_the_manifest_still_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 1024 * 1024, 22);
    let honest = Daemon::start(&tmp.path().join("honest"), &[]);
    let mut ticket: Ticket = honest.add(&src).parse().unwrap();
    // Five silent peers: more than the manifest is asked of at once, so either the honest
    // peer is among the first asked or it is asked when a silent one's deadline passes.
    let silent: Vec<SilentPeer> = (0..5).map(|_| SilentPeer::start()).collect();
    let mut peers: Vec<PeerAddr> = silent.iter().map(SilentPeer::peer_addr).collect();
    peers.extend(ticket.peers);
    ticket.peers = peers;
    let out = tmp.path().join("out.bin");
    let report = get_json(&tmp.path().join("fetcher"), &ticket.to_string(), &out, &[]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(peer_entry(&report, &honest.node_id)["pieces"].as_u64().unwrap() > 0, "{report}");
    for s in &silent {
        assert_eq!(peer_entry(&report, &s.node_id)["pieces"], 0);
    }
}

#[test]
fn a_peers_refusal_text_reaches_the_terminal_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    write_file(&src, 64 * 1024, 23);
    let honest = Daemon::start(&tmp.path().join("honest"), &[]);
    let mut ticket: Ticket = honest.add(&src).parse().unwrap();
    // The only peer refuses the manifest with a text that clears the screen, sets the window
    // title, breaks the line and reverses what follows.
    let text = "\x1b[2J\x1b]0;pwned\x07\nerror: fake\u{202e}gpj.exe".to_string();
    let reject =
        shoal_wire::Response::Reject { reason: shoal_wire::RejectReason::BadRequest, text };
    let hostile = SilentPeer::answering(Some(shoal_wire::encode(&reject)));
    ticket.peers = vec![hostile.peer_addr()];
    let mut get = shoal(&tmp.path().join("fetcher"));
    get.args(["get", &ticket.to_string(), "-o"]).arg(tmp.path().join("out.bin"));
    // One line (no newline of the peer's got through), and none of its control characters.
    let line = fails(get);
    assert!(line.contains("no peer has content"), "{line}");
    assert!(!line.chars().any(|c| c.is_control() || c == '\u{202e}'), "{line:?}");
    assert!(line.contains("\\u{1b}[2J") && line.contains("\\u{202e}gpj.exe"), "{line}");
}
