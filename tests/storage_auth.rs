//! Who may write into storage: grants, quotas, ownership per (user, content), device
//! certificates, tokens; and pushes that cost nothing before they are authorised.

use std::path::Path;

use shoal_core::{ContentId, DeviceCert, Manifest, NodeId, PeerAddr, PieceHash, PieceIndex};
use shoal_net::{Endpoint, Identity};
use shoal_wire::{Decoder, RejectReason, Request, Response};

use crate::support::*;

/// A tracker and a storage node started with `grants` (raw `--grant` values).
fn cluster(root: &Path, grants: &[String]) -> (TrackerProc, Daemon) {
    let tracker = TrackerProc::start_admitting(
        &root.join("tracker"),
        "127.0.0.1:0",
        &[&root.join("storage")],
        &[],
    );
    let t = tracker.addr.to_string();
    let mut args = vec!["--tracker".to_string(), t, "--role".into(), "storage".into()];
    for g in grants {
        args.extend(["--grant".to_string(), g.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let storage = Daemon::start(&root.join("storage"), &args);
    (tracker, storage)
}

fn node(root: &Path, name: &str, tracker: &TrackerProc) -> Daemon {
    Daemon::start(&root.join(name), &["--tracker", &tracker.addr.to_string()])
}

/// `shoal push TARGET --json` that must succeed.
fn push(node: &Daemon, target: &Path) -> serde_json::Value {
    let mut c = node.cmd();
    c.arg("push").arg(target).arg("--json");
    serde_json::from_str(ok(c).trim()).unwrap()
}

/// `shoal push TARGET` that must fail with one line; returns it.
fn push_fails(node: &Daemon, target: &Path) -> String {
    let mut c = node.cmd();
    c.arg("push").arg(target);
    fails(c)
}

/// The manifest `shoal add` makes of `data` named `name`.
fn manifest_of(name: &str, data: &[u8]) -> Manifest {
    let piece = 1usize << shoal_core::piece::piece_log2_for(data.len() as u64);
    let hashes = data.chunks(piece).map(PieceHash::of).collect();
    Manifest::new(name, data.len() as u64, hashes).unwrap()
}

/// A hostile client with its own key, speaking the peer protocol by hand.
struct Raw {
    id: Identity,
    ep: Endpoint,
}

impl Raw {
    fn new() -> Raw {
        let id = Identity::generate();
        let ep = Endpoint::bind(&id, "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
        Raw { id, ep }
    }

    fn user(&self) -> String {
        self.id.node_id().to_string()
    }

    async fn connect(&self, to: &Daemon) -> quinn::Connection {
        let target = PeerAddr { node_id: Some(to.node_id.parse().unwrap()), addr: to.addr };
        self.ep.connect(&target, shoal_wire::ALPN).await.unwrap().0
    }
}

/// One request with its body; the response (a refused body's failed write is ignored).
fn refused(r: Response, reason: RejectReason, want: &str) {
    match r {
        Response::Reject { reason: got, text } if got == reason => {
            assert!(text.contains(want), "{text:?} should say {want:?}")
        }
        other => panic!("expected {reason:?} saying {want:?}, got {other:?}"),
    }
}

#[test]
fn an_ungranted_user_is_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (tracker, storage) = cluster(tmp.path(), &[]);
    let n = node(tmp.path(), "node", &tracker);
    let src = tmp.path().join("f.bin");
    write_file(&src, 200_000, 1);
    let err = push_fails(&n, &src);
    let me = user_id(&n.dir);
    assert!(err.contains(&format!("--grant {me}")), "names what to ask for: {err}");
    assert_eq!(storage.ls(), serde_json::json!([]), "storage holds nothing");
    assert_eq!(storage.status()["pushes_refused"], 1);
}

#[test]
fn a_second_user_gets_stored_content_at_once_and_the_first_is_not_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let grants = [user_id(&tmp.path().join("alice")), user_id(&tmp.path().join("bob"))];
    let (tracker, storage) = cluster(tmp.path(), &grants);
    let (alice, bob) = (node(tmp.path(), "alice", &tracker), node(tmp.path(), "bob", &tracker));
    let src = tmp.path().join("f.bin");
    write_file(&src, 1_000_000, 2);
    let first = push(&alice, &src);
    assert_eq!(
        (first["pushed_bytes"].as_u64(), first["stored"].as_bool()),
        (Some(1_000_000), Some(true))
    );
    // Bob has the same file: he owns it at once, with no piece bytes sent.
    let second = push(&bob, &src);
    assert_eq!(second["already_stored"], true, "{second}");
    assert_eq!(second["pushed_bytes"], 0, "{second}");
    assert_eq!(second["content_id"], first["content_id"]);
    // Alice still pushes it as hers.
    let again = push(&alice, &src);
    assert_eq!(again["already_stored"], true, "{again}");
    assert_eq!(storage.ls().as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_squatter_pushing_the_manifest_first_does_not_lock_out_the_uploader() {
    let tmp = tempfile::tempdir().unwrap();
    let squatter = Raw::new();
    let stranger = Raw::new();
    let alice_dir = tmp.path().join("alice");
    let alice_user = tokio::task::spawn_blocking(move || user_id(&alice_dir)).await.unwrap();
    let grants = [alice_user, squatter.user()];
    let (tracker, storage) = cluster(tmp.path(), &grants);
    let alice = node(tmp.path(), "alice", &tracker);
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 300_000, 3);
    let m = manifest_of("f.bin", &data);
    let content = m.content_id();
    let bytes = m.encode();
    // The squatter (granted) claims the content first and pushes no piece.
    let conn = squatter.connect(&storage).await;
    let req = Request::PushManifest { content, len: bytes.len() as u32, cert: None };
    match raw_request(&conn, &req, &bytes).await {
        Response::Pushed { already: false, complete: false } => {}
        other => panic!("squatter's manifest: {other:?}"),
    }
    // A stranger without a grant cannot even do that, nor push a piece.
    let sconn = stranger.connect(&storage).await;
    refused(
        raw_request(&sconn, &req, &bytes).await,
        RejectReason::Unauthorized,
        "has no space here",
    );
    let piece =
        Request::PushPiece { content, piece: PieceIndex(0), len: 16384, cert: None, token: None };
    refused(
        raw_request(&sconn, &piece, &data[..16384]).await,
        RejectReason::Unauthorized,
        "no re-seed token",
    );
    // Alice pushes her file in full regardless.
    let report = tokio::task::spawn_blocking(move || push(&alice, &src)).await.unwrap();
    assert_eq!(report["content_id"], content.to_string());
    assert_eq!(report["stored"], true, "{report}");
    assert_eq!(report["pushed_bytes"], 300_000, "{report}");
}

#[test]
fn over_quota_is_refused_with_the_reason_shoal_push_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let me = user_id(&tmp.path().join("node"));
    let (tracker, storage) = cluster(tmp.path(), &[format!("{me}=1MiB")]);
    let n = node(tmp.path(), "node", &tracker);
    let (a, b) = (tmp.path().join("a.bin"), tmp.path().join("b.bin"));
    let data = write_file(&a, 600_000, 4);
    write_file(&b, 600_000, 5);
    assert_eq!(push(&n, &a)["stored"], true);
    let err = push_fails(&n, &b);
    // Charged: the file and its manifest.
    let used = (600_000 + manifest_of("a.bin", &data).encode().len()) as f64 / 1024.0;
    let says = format!("{used:.1} KiB used of 1.0 MiB");
    assert!(err.contains("over quota") && err.contains(&says), "{err} should say {says}");
    assert!(err.contains("--grant"), "says what to do: {err}");
    assert_eq!(storage.ls().as_array().unwrap().len(), 1, "the second file is not stored");
    // Pushing what it owns already still works at the limit.
    assert_eq!(push(&n, &a)["already_stored"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_contents_are_charged_their_manifests_so_a_quota_bounds_them() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Raw::new();
    let (_tracker, storage) = tokio::task::spawn_blocking({
        let (root, user) = (tmp.path().to_path_buf(), raw.user());
        move || cluster(&root, &[format!("{user}=4KiB")])
    })
    .await
    .unwrap();
    let conn = raw.connect(&storage).await;
    // Distinct empty files: each costs storage a manifest object and index entries.
    let (mut stored, mut charged) = (0, 0);
    let mut refusal = None;
    for i in 0..1000 {
        let m = manifest_of(&format!("empty-{i}"), &[]);
        let bytes = m.encode();
        let req =
            Request::PushManifest { content: m.content_id(), len: bytes.len() as u32, cert: None };
        match raw_request(&conn, &req, &bytes).await {
            Response::Pushed { .. } => {
                stored += 1;
                charged += bytes.len();
            }
            other => {
                // Refused exactly when the next manifest would pass the quota.
                assert!(charged + bytes.len() > 4096, "refused at {charged} bytes");
                refusal = Some(other);
                break;
            }
        }
    }
    refused(refusal.expect("the quota ends it"), RejectReason::QuotaExceeded, "over quota");
    assert!(stored > 0 && charged <= 4096, "{stored} empty contents, {charged} bytes charged");
    let held = tokio::task::spawn_blocking(move || storage.ls()).await.unwrap();
    assert_eq!(held.as_array().unwrap().len(), stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_separate_user_key_pushes_through_its_device_certificate_and_forgeries_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let user = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            std::fs::create_dir_all(&dir).unwrap();
            let mut c = shoal(&dir);
            c.args(["user", "new"]);
            ok(c).trim().to_string()
        }
    })
    .await
    .unwrap();
    let (tracker, storage) = cluster(tmp.path(), std::slice::from_ref(&user));
    let n = node(tmp.path(), "node", &tracker);
    assert_ne!(user, n.node_id, "the user is not the node key");
    let src = tmp.path().join("f.bin");
    let data = write_file(&src, 100_000, 6);
    let report = tokio::task::spawn_blocking(move || {
        let r = push(&n, &src);
        (r, n)
    })
    .await
    .unwrap();
    assert_eq!(report.0["stored"], true, "{}", report.0);
    // Mallory claims to act for the user: a certificate she signed herself, and the real
    // certificate of the user's node, are both refused.
    let mallory = Raw::new();
    let user_id: shoal_core::UserId = user.parse().unwrap();
    let mut forged = mallory.id.device_cert(mallory.id.node_id());
    forged.user = user_id;
    let user_key = Identity::load_user(&dir).unwrap().unwrap();
    let stolen: DeviceCert = user_key.device_cert(report.1.node_id.parse::<NodeId>().unwrap());
    let m = manifest_of("g.bin", &data[..50_000]);
    let bytes = m.encode();
    let conn = mallory.connect(&storage).await;
    for (cert, want) in
        [(forged, "not signed by its user key"), (stolen, "not this connection's node")]
    {
        let req = Request::PushManifest {
            content: m.content_id(),
            len: bytes.len() as u32,
            cert: Some(cert),
        };
        refused(raw_request(&conn, &req, &bytes).await, RejectReason::Unauthorized, want);
    }
    assert_eq!(storage.ls().as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_for_another_content_or_piece_are_refused() {
    use shoal_wire::tracker::ReseedToken;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let me = tokio::task::spawn_blocking(move || user_id(&dir)).await.unwrap();
    let (tracker, storage) = cluster(tmp.path(), &[me]);
    let n = node(tmp.path(), "node", &tracker);
    let (a, b) = (tmp.path().join("a.bin"), tmp.path().join("b.bin"));
    let data = write_file(&a, 100_000, 7);
    write_file(&b, 100_000, 8);
    let (ra, rb) = tokio::task::spawn_blocking(move || {
        // Push a in full; register b's manifest only (its pieces stay missing).
        let ra = push(&n, &a);
        let rb = push(&n, &b);
        (ra, rb)
    })
    .await
    .unwrap();
    let ca: ContentId = ra["content_id"].as_str().unwrap().parse().unwrap();
    let cb: ContentId = rb["content_id"].as_str().unwrap().parse().unwrap();
    let tracker_key = Identity::load_or_create(&tmp.path().join("tracker")).unwrap();
    let holder = Raw::new();
    let later =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64
            + 60_000;
    let token = |content: ContentId, piece: u32| {
        let mut t = ReseedToken {
            content,
            storage: storage.node_id.parse().unwrap(),
            holder: holder.id.node_id(),
            expires_ms: later,
            pieces: vec![PieceIndex(piece)],
            signature: vec![],
        };
        t.signature = tracker_key.sign(&t.signed_bytes());
        t.encode()
    };
    let conn = holder.connect(&storage).await;
    let push_piece0 = |tok: Vec<u8>| Request::PushPiece {
        content: ca,
        piece: PieceIndex(0),
        len: 16384,
        cert: None,
        token: Some(tok),
    };
    let body = &data[..16384];
    refused(
        raw_request(&conn, &push_piece0(token(cb, 0)), body).await,
        RejectReason::Unauthorized,
        "does not cover",
    );
    refused(
        raw_request(&conn, &push_piece0(token(ca, 1)), body).await,
        RejectReason::Unauthorized,
        "does not cover",
    );
    // The right token is honoured (the piece is stored already).
    match raw_request(&conn, &push_piece0(token(ca, 0)), body).await {
        Response::Pushed { already: true, complete: true } => {}
        other => panic!("valid token refused: {other:?}"),
    }
    // A token holder may not push manifests at all.
    let m = manifest_of("c.bin", &data[..20_000]);
    let bytes = m.encode();
    let req =
        Request::PushManifest { content: m.content_id(), len: bytes.len() as u32, cert: None };
    refused(
        raw_request(&conn, &req, &bytes).await,
        RejectReason::Unauthorized,
        "has no space here",
    );
}

/// Opens `streams` push-manifest requests announcing `len` body bytes that never come, over
/// a few connections; returns the senders (kept open) and the answers that arrive by then.
struct Silent {
    _sends: Vec<quinn::SendStream>,
    answers: tokio::sync::mpsc::UnboundedReceiver<Response>,
}

async fn silent_pushes(raw: &Raw, to: &Daemon, streams: usize, len: u32) -> Silent {
    let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
    let mut sends = Vec::new();
    // quinn allows 100 concurrent streams per connection by default: spread them.
    for _ in 0..4 {
        let conn = raw.connect(to).await;
        for _ in 0..streams / 4 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let req = Request::PushManifest { content: ContentId([9; 32]), len, cert: None };
            send.write_all(&shoal_wire::encode(&req)).await.unwrap();
            sends.push(send);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(bytes) = recv.read_to_end(64 * 1024).await {
                    let mut d = Decoder::new();
                    d.feed(&bytes);
                    if let Ok(Some(r)) = d.decode::<Response>() {
                        let _ = tx.send(r);
                    }
                }
            });
        }
    }
    Silent { _sends: sends, answers }
}

async fn next_answer(s: &mut Silent) -> Response {
    tokio::time::timeout(DEADLINE, s.answers.recv()).await.unwrap().unwrap()
}

/// Growth of resident memory a hostile probe may cause, in KiB (the issue measured 400 MiB).
const PROBE_CEILING_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn silent_push_bodies_cost_no_memory_and_storage_still_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let granted = Raw::new();
    let dir = tmp.path().join("node");
    let me = tokio::task::spawn_blocking(move || user_id(&dir)).await.unwrap();
    let (tracker, storage) = cluster(tmp.path(), &[me, granted.user()]);
    let plain = node(tmp.path(), "plain", &tracker);
    const LEN: u32 = 2_000_000;

    // A node that is not storage refuses every push before reading a byte.
    let before = rss_kib(plain.child.id());
    let mut s = silent_pushes(&Raw::new(), &plain, 200, LEN).await;
    for _ in 0..200 {
        refused(next_answer(&mut s).await, RejectReason::BadRequest, "not a storage node");
    }
    let after = rss_kib(plain.child.id());
    eprintln!("plain node: VmRSS {before} KiB before, {after} KiB after 200 silent pushes");
    assert!(after < before + PROBE_CEILING_KIB, "{before} -> {after} KiB");

    // An ungranted key against storage: refused at once too.
    let before = rss_kib(storage.child.id());
    let mut s = silent_pushes(&Raw::new(), &storage, 200, LEN).await;
    for _ in 0..200 {
        refused(next_answer(&mut s).await, RejectReason::Unauthorized, "has no space here");
    }
    // A granted key: bodies are waited for within the byte budget, the rest are `Busy`.
    let mut s = silent_pushes(&granted, &storage, 200, LEN).await;
    let budget = (256 * 1024 * 1024) / LEN as usize;
    let mut answers = Vec::new();
    for _ in 0..200 - budget {
        answers.push(next_answer(&mut s).await);
    }
    let after = rss_kib(storage.child.id());
    eprintln!(
        "storage: VmRSS {before} KiB before, {after} KiB with {budget} silent bodies waited for"
    );
    assert!(after < before + PROBE_CEILING_KIB, "{before} -> {after} KiB");
    // The silent bodies lose their budget at the stall deadline.
    for _ in 0..budget {
        answers.push(next_answer(&mut s).await);
    }
    let busy = answers
        .iter()
        .filter(|r| matches!(r, Response::Reject { reason: RejectReason::Busy, .. }))
        .count();
    assert!(busy >= 1, "the byte budget binds: {answers:?}");
    for r in answers
        .into_iter()
        .filter(|r| !matches!(r, Response::Reject { reason: RejectReason::Busy, .. }))
    {
        refused(r, RejectReason::BadRequest, "too slow");
    }
    drop(s);
    // An honest push goes through afterwards.
    let n = node(tmp.path(), "node", &tracker);
    let src = tmp.path().join("f.bin");
    write_file(&src, 500_000, 9);
    let report = tokio::task::spawn_blocking(move || push(&n, &src)).await.unwrap();
    assert_eq!(report["stored"], true, "{report}");
}
