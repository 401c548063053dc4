use std::sync::Arc;

use object_store::memory::InMemory;
use shoal_core::NodeId;

use super::*;

fn user() -> UserId {
    let kp = libp2p_identity::Keypair::generate_ed25519();
    UserId::from(NodeId::from_public_key(&kp.public()).unwrap())
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
    s.set_temporary_size(alice, "a.bin", 100).unwrap();
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
    assert!(s.remove_entry(alice, "one", None).await.unwrap());
    assert_eq!(s.usage(alice).unwrap(), 50, "the other entry still names it");
    assert!(s.remove_entry(alice, "two", None).await.unwrap());
    assert_eq!(s.usage(alice).unwrap(), 0);
    assert!(!s.owns(alice, c).unwrap());
    assert!(!s.remove_entry(alice, "two", None).await.unwrap());
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
    assert!(!s.remove_entry(alice, "f", Some(t1)).await.unwrap());
    s.add_temporary(alice, "g", t2, 1).await.unwrap();
    assert!(!s.remove_entry(alice, "g", Some(t1)).await.unwrap());
    assert!(s.remove_entry(alice, "g", Some(t2)).await.unwrap());
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
    let s = CloudStore::open(objects, dir.path()).unwrap();
    assert_eq!(s.task_records().unwrap(), vec![(TaskId([3; 16]), b"{\"a\":1}".to_vec())]);
    assert_eq!(s.resource_record("http://x/y").unwrap(), Some(b"r".to_vec()));
    assert_eq!(s.resource_record("http://x/z").unwrap(), None);
}
