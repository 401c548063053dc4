//! The cloud store's behaviour, each test body run against every backend: a local directory
//! and a real S3-compatible server (moto's `moto_server`, started here on loopback).
//!
//! Without `moto_server` on PATH the S3 runs are skipped with a message, unless
//! `SHOAL_REQUIRE_S3=1` (set by `.ci/run`), which makes its absence a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use shoal_cloud::backend::{self, S3Options};
use shoal_cloud::{Claimed, CloudError, CloudStore, PutPiece};
use shoal_core::{Manifest, NodeId, PieceHash, PieceIndex, UserId};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running S3 server and bucket, or `None` if moto is not installed (and not required).
fn s3() -> Option<(Moto, S3Options, String)> {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => Moto(c),
        Err(e) => {
            assert!(
                std::env::var("SHOAL_REQUIRE_S3").is_err(),
                "moto_server is required (pip install 'moto[server]'): {e}"
            );
            eprintln!("skipping the S3 backend: moto_server not found ({e})");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let bucket = format!("shoal-{port}");
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            // Create the bucket (moto accepts unsigned requests).
            write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let opts = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
    };
    Some((child, opts, format!("s3://{bucket}/shoal")))
}

/// Runs `body` against a local directory and, when available, S3.
async fn each_backend<F, Fut>(body: F)
where
    F: Fn(&'static str, Arc<dyn ObjectStore>, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("objects").display());
    let local = backend::open(&url, &S3Options::default()).unwrap();
    body("local", local, dir.path().join("index-local")).await;
    if let Some((_moto, opts, url)) = s3() {
        let s3 = backend::open(&url, &opts).unwrap();
        body("s3", s3, dir.path().join("index-s3")).await;
    }
}

fn user() -> UserId {
    let kp = libp2p_identity::Keypair::generate_ed25519();
    UserId::from(NodeId::from_public_key(&kp.public()).unwrap())
}

fn content(len: usize) -> (Vec<u8>, Manifest) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let piece = 1usize << shoal_core::piece::piece_log2_for(len as u64);
    let hashes = data.chunks(piece).map(PieceHash::of).collect();
    (data.clone(), Manifest::new("f.bin", len as u64, hashes).unwrap())
}

fn piece(data: &[u8], m: &Manifest, i: u32) -> Bytes {
    let r = m.piece_range(PieceIndex(i));
    Bytes::copy_from_slice(&data[r.start as usize..r.end as usize])
}

#[tokio::test]
async fn verified_pieces_only_and_completion() {
    each_backend(|name, objects, index| async move {
        let store = CloudStore::open(objects.clone(), &index).unwrap();
        let (data, m) = content(3 * 16384 + 5);
        let id = m.content_id();
        let bad = store.put_piece(id, PieceIndex(0), piece(&data, &m, 0)).await;
        assert!(matches!(bad, Err(CloudError::UnknownContent(_))), "{name}: manifest first");
        store.put_manifest(&m.encode()).await.unwrap();
        // A piece with the wrong bytes never reaches the object store.
        let wrong = piece(&data, &m, 1);
        let err = store.put_piece(id, PieceIndex(0), wrong).await.unwrap_err();
        assert!(matches!(err, CloudError::BadPiece(_)), "{name}: {err}");
        let key = Path::from(format!("pieces/{id}/00000000"));
        assert!(objects.head(&key).await.is_err(), "{name}: no object for a refused piece");
        for i in 0..3 {
            let r = store.put_piece(id, PieceIndex(i), piece(&data, &m, i)).await.unwrap();
            assert_eq!(r, PutPiece::Stored { complete: false }, "{name}");
        }
        assert_eq!(
            store.put_piece(id, PieceIndex(1), piece(&data, &m, 1)).await.unwrap(),
            PutPiece::AlreadyStored
        );
        assert_eq!(
            store.put_piece(id, PieceIndex(3), piece(&data, &m, 3)).await.unwrap(),
            PutPiece::Stored { complete: true },
            "{name}: the last piece completes it"
        );
        assert!(store.content(id).unwrap().unwrap().is_complete());
        for i in 0..4 {
            assert_eq!(
                store.read_piece(id, PieceIndex(i)).await.unwrap(),
                piece(&data, &m, i),
                "{name}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn state_survives_reopening() {
    each_backend(|name, objects, index| async move {
        let (data, m) = content(40_000);
        let id = m.content_id();
        let owner = user();
        {
            let store = CloudStore::open(objects.clone(), &index).unwrap();
            store.claim(owner, id, m.size(), None).await.unwrap();
            store.put_manifest(&m.encode()).await.unwrap();
            store.put_piece(id, PieceIndex(1), piece(&data, &m, 1)).await.unwrap();
            store.flush().await.unwrap();
        }
        let store = CloudStore::open(objects, &index).unwrap();
        let b = store.bitfield(id).unwrap().unwrap();
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![PieceIndex(1)], "{name}");
        assert!(store.owns(owner, id).unwrap(), "{name}: the ownership record survives");
        assert_eq!(store.usage(owner).unwrap(), m.size(), "{name}");
        // The manifest push is idempotent.
        store.put_manifest(&m.encode()).await.unwrap();
        assert_eq!(store.bitfield(id).unwrap().unwrap().count(), 1, "{name}");
    })
    .await;
}

#[tokio::test]
async fn ownership_is_per_user_and_content_and_quotas_hold() {
    each_backend(|name, objects, index| async move {
        let store = CloudStore::open(objects.clone(), &index).unwrap();
        let (alice, bob) = (user(), user());
        let (data, m) = content(100_000);
        let (id, size) = (m.content_id(), m.size());
        // Alice claims and stores part; claiming again charges nothing.
        let c = store.claim(alice, id, size, Some(150_000)).await.unwrap();
        assert_eq!(c, Claimed { already_owned: false, used: size }, "{name}");
        store.put_manifest(&m.encode()).await.unwrap();
        store.put_piece(id, PieceIndex(0), piece(&data, &m, 0)).await.unwrap();
        let c = store.claim(alice, id, size, Some(150_000)).await.unwrap();
        assert_eq!(c, Claimed { already_owned: true, used: size }, "{name}");
        // A second content does not fit her quota: refused, nothing recorded.
        let (_, m2) = content(60_000);
        match store.claim(alice, m2.content_id(), m2.size(), Some(150_000)).await {
            Err(e @ CloudError::QuotaExceeded { .. }) => {
                let text = e.to_string();
                let CloudError::QuotaExceeded { used, quota, need } = e else { unreachable!() };
                assert_eq!((used, quota, need), (size, 150_000, 60_000), "{name}");
                assert!(text.contains("97.7 KiB used of 146.5 KiB"), "{name}: {text}");
                assert!(text.contains("--grant"), "{name}: {text}");
            }
            other => panic!("{name}: expected over quota, got {other:?}"),
        }
        assert!(!store.owns(alice, m2.content_id()).unwrap(), "{name}");
        assert_eq!(store.usage(alice).unwrap(), size, "{name}");
        // Bob claims the content Alice started: his own record; hers stays.
        let c = store.claim(bob, id, size, None).await.unwrap();
        assert_eq!(c, Claimed { already_owned: false, used: size }, "{name}");
        assert!(store.owns(alice, id).unwrap() && store.owns(bob, id).unwrap(), "{name}");
        // Records survive a restart.
        drop(store);
        let store = CloudStore::open(objects, &index).unwrap();
        assert!(store.owns(alice, id).unwrap() && store.owns(bob, id).unwrap(), "{name}");
        assert_eq!(store.usage(bob).unwrap(), size, "{name}");
        // Releasing gives the size back, once, and touches nobody else's record.
        assert!(store.release(bob, id).await.unwrap(), "{name}");
        assert!(!store.release(bob, id).await.unwrap(), "{name}");
        assert_eq!(store.usage(bob).unwrap(), 0, "{name}");
        assert!(store.owns(alice, id).unwrap(), "{name}");
        assert_eq!(store.bitfield(id).unwrap().unwrap().count(), 1, "{name}: pieces stay");
    })
    .await;
}

#[tokio::test]
async fn empty_and_one_byte_contents() {
    each_backend(|name, objects, index| async move {
        let store = CloudStore::open(objects, &index).unwrap();
        let (_, empty) = content(0);
        store.put_manifest(&empty.encode()).await.unwrap();
        assert!(store.content(empty.content_id()).unwrap().unwrap().is_complete(), "{name}");
        let (data, one) = content(1);
        store.put_manifest(&one.encode()).await.unwrap();
        let r =
            store.put_piece(one.content_id(), PieceIndex(0), piece(&data, &one, 0)).await.unwrap();
        assert_eq!(r, PutPiece::Stored { complete: true }, "{name}");
        let err = store.put_piece(one.content_id(), PieceIndex(1), Bytes::new()).await.unwrap_err();
        assert!(matches!(err, CloudError::PieceOutOfRange(_)), "{name}");
    })
    .await;
}

#[test]
fn bad_urls_say_what_to_use() {
    for bad in ["ftp://x", "file://relative/path", "s3://", "/tmp/x"] {
        let Err(err) = backend::open(bad, &S3Options::default()) else { panic!("{bad} accepted") };
        let err = err.to_string();
        assert!(err.contains("file:///absolute/path or s3://bucket"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_store_that_cannot_write_reports_it_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects =
        backend::open(&format!("file://{}", root.display()), &S3Options::default()).unwrap();
    let store = CloudStore::open(objects, &dir.path().join("index")).unwrap();
    let (data, m) = content(20_000);
    store.put_manifest(&m.encode()).await.unwrap();
    // A file where the pieces directory belongs: every piece write fails.
    std::fs::write(root.join("pieces"), b"in the way").unwrap();
    let err =
        store.put_piece(m.content_id(), PieceIndex(0), piece(&data, &m, 0)).await.unwrap_err();
    assert!(matches!(err, CloudError::Backend(_)), "{err}");
    assert!(err.to_string().contains("retry later"), "{err}");
    assert_eq!(store.bitfield(m.content_id()).unwrap().unwrap().count(), 0, "nothing recorded");
    std::fs::remove_file(root.join("pieces")).unwrap();
    store.put_piece(m.content_id(), PieceIndex(0), piece(&data, &m, 0)).await.unwrap();
}
