use std::sync::Arc;

use object_store::memory::InMemory;
use shoal_core::NodeId;

use super::*;

fn user() -> UserId {
    let kp = libp2p_identity::Keypair::generate_ed25519();
    UserId::from(NodeId::from_public_key(&kp.public()).unwrap())
}

/// Opens the store again after a `CloudStore` of the same dir was dropped: sled's flusher
/// thread may still hold the old database's lock for a moment.
fn reopen(objects: Arc<InMemory>, dir: &std::path::Path) -> CloudStore {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match CloudStore::open(objects.clone(), dir) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() > end => panic!("reopening: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

fn store() -> (tempfile::TempDir, CloudStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CloudStore::open(Arc::new(InMemory::new()), dir.path()).unwrap();
    (dir, store)
}

#[tokio::test]
async fn a_temporary_entry_costs_nothing_until_committed_then_its_size() {
    let (_d, s) = store();
    let alice = user();
    let task = TaskId([1; 16]);
    s.add_temporary(alice, "a.bin", task, 1).await.unwrap();
    s.set_temporary_size(alice, "a.bin", task, 100).unwrap();
    // Another task's size never lands on this entry.
    s.set_temporary_size(alice, "a.bin", TaskId([2; 16]), 7).unwrap();
    let e = s.entry(alice, "a.bin").unwrap().unwrap();
    assert!(!e.permanent);
    assert_eq!((e.size, e.task, e.content), (100, Some(task), None));
    assert_eq!(s.usage(alice).unwrap(), 0);

    s.commit_entry(
        alice,
        "a.bin",
        Commit { task, content: ContentId([9; 32]), size: 100, time_ms: 2 },
        Some(1000),
    )
    .await
    .unwrap();
    let e = s.entry(alice, "a.bin").unwrap().unwrap();
    assert!(e.permanent);
    assert_eq!((e.content, e.task, e.time_ms), (Some(ContentId([9; 32])), None, 2));
    assert_eq!(s.usage(alice).unwrap(), 100);
    assert!(s.owns(alice, ContentId([9; 32])).unwrap());
}

#[tokio::test]
async fn a_commit_over_quota_changes_nothing() {
    let (_d, s) = store();
    let alice = user();
    let task = TaskId([1; 16]);
    s.add_temporary(alice, "big", task, 1).await.unwrap();
    let err = s
        .commit_entry(
            alice,
            "big",
            Commit { task, content: ContentId([9; 32]), size: 101, time_ms: 2 },
            Some(100),
        )
        .await;
    assert!(matches!(err, Err(CloudError::QuotaExceeded { used: 0, quota: 100, need: 101 })));
    let e = s.entry(alice, "big").unwrap().unwrap();
    assert!(!e.permanent);
    assert_eq!(s.usage(alice).unwrap(), 0);
    assert!(!s.owns(alice, ContentId([9; 32])).unwrap());
}

#[tokio::test]
async fn names_are_per_user_and_taken_once() {
    let (_d, s) = store();
    let (alice, bob) = (user(), user());
    s.add_temporary(alice, "x", TaskId([1; 16]), 1).await.unwrap();
    assert!(matches!(
        s.add_temporary(alice, "x", TaskId([2; 16]), 1).await,
        Err(CloudError::EntryExists(n)) if n == "x"
    ));
    // Another user's space is another namespace.
    s.add_temporary(bob, "x", TaskId([3; 16]), 1).await.unwrap();
    assert_eq!(s.entries(alice).unwrap().len(), 1);
    assert_eq!(s.entries(bob).unwrap().len(), 1);
    // A commit by another task than the entry's is refused.
    assert!(matches!(
        s.commit_entry(
            alice,
            "x",
            Commit { task: TaskId([2; 16]), content: ContentId([1; 32]), size: 1, time_ms: 2 },
            None
        )
        .await,
        Err(CloudError::NoEntry(_))
    ));
}

#[tokio::test]
async fn removing_gives_the_charge_back_unless_another_entry_names_the_content() {
    let (_d, s) = store();
    let alice = user();
    let c = ContentId([5; 32]);
    for (i, name) in ["one", "two"].into_iter().enumerate() {
        let task = TaskId([i as u8; 16]);
        s.add_temporary(alice, name, task, 1).await.unwrap();
        s.commit_entry(alice, name, Commit { task, content: c, size: 50, time_ms: 2 }, None)
            .await
            .unwrap();
    }
    // One content, charged once.
    assert_eq!(s.usage(alice).unwrap(), 50);
    assert!(s.remove_entry(alice, "one", None).await.unwrap().is_some());
    assert_eq!(s.usage(alice).unwrap(), 50, "the other entry still names it");
    assert!(s.remove_entry(alice, "two", None).await.unwrap().is_some());
    assert_eq!(s.usage(alice).unwrap(), 0);
    assert!(!s.owns(alice, c).unwrap());
    assert!(s.remove_entry(alice, "two", None).await.unwrap().is_none());
}

#[tokio::test]
async fn a_task_cleanup_removes_only_its_own_temporary_entry() {
    let (_d, s) = store();
    let alice = user();
    let (t1, t2) = (TaskId([1; 16]), TaskId([2; 16]));
    s.add_temporary(alice, "f", t1, 1).await.unwrap();
    s.commit_entry(
        alice,
        "f",
        Commit { task: t1, content: ContentId([1; 32]), size: 10, time_ms: 2 },
        None,
    )
    .await
    .unwrap();
    // A failing task of the same name (refused at add, but say a stale record) cannot remove
    // a permanent entry.
    assert!(s.remove_entry(alice, "f", Some(t1)).await.unwrap().is_none());
    s.add_temporary(alice, "g", t2, 1).await.unwrap();
    assert!(s.remove_entry(alice, "g", Some(t1)).await.unwrap().is_none());
    // A user cannot remove an entry still being fetched: the task is cancelled instead.
    assert!(matches!(s.remove_entry(alice, "g", None).await, Err(CloudError::Fetching(_))));
    assert!(s.remove_entry(alice, "g", Some(t2)).await.unwrap().is_some());
    assert_eq!(s.entries(alice).unwrap().len(), 1);
}

#[tokio::test]
async fn a_space_holds_at_most_max_entries() {
    let (_d, s) = store();
    let alice = user();
    for i in 0..MAX_ENTRIES {
        s.spaces
            .insert(
                entry_key(alice, &format!("e{i}")),
                encode(&Entry { content: None, size: 0, permanent: false, time_ms: 0, task: None }),
            )
            .unwrap();
    }
    assert!(matches!(
        s.add_temporary(alice, "one-more", TaskId([1; 16]), 1).await,
        Err(CloudError::SpaceFull { .. })
    ));
}

#[tokio::test]
async fn task_and_resource_records_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(InMemory::new());
    {
        let s = CloudStore::open(objects.clone(), dir.path()).unwrap();
        s.put_task_record(TaskId([3; 16]), b"{\"a\":1}").await.unwrap();
        s.put_task_record(TaskId([4; 16]), b"{}").await.unwrap();
        s.remove_task_record(TaskId([4; 16])).await.unwrap();
        s.put_resource_record("http://x/y", b"r").await.unwrap();
    }
    let s = reopen(objects, dir.path());
    assert_eq!(s.task_records().unwrap(), vec![(TaskId([3; 16]), b"{\"a\":1}".to_vec())]);
    assert_eq!(s.resource_record("http://x/y").unwrap(), Some(b"r".to_vec()));
    assert_eq!(s.resource_record("http://x/z").unwrap(), None);
}

#[tokio::test]
async fn content_nobody_owns_any_more_is_deleted_and_owned_content_is_kept() {
    let (_d, s) = store();
    let (alice, bob) = (user(), user());
    let data = bytes::Bytes::from(vec![7u8; 100_000]);
    let piece = 1usize << shoal_core::piece::piece_log2_for(data.len() as u64);
    let hashes = data.chunks(piece).map(shoal_core::PieceHash::of).collect();
    let m = shoal_core::Manifest::new("x", data.len() as u64, hashes).unwrap();
    let c = m.content_id();
    s.put_manifest(&m.encode()).await.unwrap();
    for (i, chunk) in data.chunks(piece).enumerate() {
        let p = shoal_core::PieceIndex(i as u32);
        s.put_piece(c, p, bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    // Alice has it in her space; Bob pushed it (a claim).
    let t = TaskId([1; 16]);
    s.add_temporary(alice, "x", t, 1).await.unwrap();
    let commit = Commit { task: t, content: c, size: m.size(), time_ms: 2 };
    s.commit_entry(alice, "x", commit, None).await.unwrap();
    s.claim(bob, c, m.size(), None).await.unwrap();
    let gone = s.remove_entry(alice, "x", None).await.unwrap().unwrap();
    assert_eq!(gone.content, Some(c));
    assert_eq!(s.usage(alice).unwrap(), 0);
    assert!(!s.delete_if_unowned(c).await.unwrap(), "Bob still owns it");
    assert!(s.content(c).unwrap().is_some());
    // Once Bob lets go, nobody owns it: deleted, index and objects.
    s.release(bob, c).await.unwrap();
    assert!(s.delete_if_unowned(c).await.unwrap());
    assert!(s.content(c).unwrap().is_none());
    assert!(s.read_piece(c, shoal_core::PieceIndex(0)).await.is_err());
    assert!(s.manifest(c).unwrap().is_none());
}

#[tokio::test]
async fn the_reverse_owner_index_is_rebuilt_for_an_older_index() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(InMemory::new());
    let alice = user();
    let c = ContentId([3; 32]);
    {
        let s = CloudStore::open(objects.clone(), dir.path()).unwrap();
        s.claim(alice, c, 10, None).await.unwrap();
        // As an index written before the reverse index existed.
        s.owned_by.clear().unwrap();
        s.flush().await.unwrap();
    }
    let s = reopen(objects, dir.path());
    assert!(s.is_owned(c).unwrap());
}

#[tokio::test]
async fn resource_records_stay_within_their_cap() {
    let (_d, s) = store();
    // Far more distinct URLs (long ones) than the cap: the tree stays at the cap.
    let cap = 64;
    for i in 0..1000 {
        let url = format!("http://h/{}?n={i}", "x".repeat(2000));
        s.put_resource_capped(&url, b"r", cap).unwrap();
    }
    assert_eq!(s.resources.len(), cap);
    // Writing a remembered URL again forgets nothing.
    let last = format!("http://h/{}?n=999", "x".repeat(2000));
    s.put_resource_capped(&last, b"s", cap).unwrap();
    assert_eq!(s.resources.len(), cap);
    assert_eq!(s.resource_record(&last).unwrap(), Some(b"s".to_vec()));
}
