//! Store behaviour, each test body run against every metadata backend.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use shoal_core::{Manifest, PieceIndex};
use shoal_store::{EntryState, MemMeta, SledMeta, Store, StoreError};

fn backends(dir: &Path) -> Vec<(&'static str, Store)> {
    vec![
        ("sled", Store::with_meta(Arc::new(SledMeta::open(&dir.join("meta")).unwrap()))),
        ("mem", Store::with_meta(Arc::new(MemMeta::default()))),
    ]
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
}

#[test]
fn import_serves_verified_pieces_and_notices_changes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in backends(dir.path()) {
        let path = dir.path().join(format!("{name}.bin"));
        let bytes = data(100_000);
        fs::write(&path, &bytes).unwrap();
        let m = store.import(&path, |_| {}).unwrap();
        let id = m.content_id();
        assert_eq!(m.piece_count(), 7, "{name}");
        assert!(store.bitfield(id).unwrap().unwrap().is_complete());
        let p = store.read_piece(id, PieceIndex(6)).unwrap();
        assert_eq!(p, bytes[6 * 16384..], "{name}");
        // Same length, one byte flipped in piece 2: that read is refused and the content stops
        // being served.
        let mut changed = bytes.clone();
        changed[2 * 16384 + 5] ^= 1;
        fs::write(&path, &changed).unwrap();
        assert!(
            matches!(store.read_piece(id, PieceIndex(2)), Err(StoreError::SourceChanged(_))),
            "{name}"
        );
        assert!(
            matches!(store.read_piece(id, PieceIndex(0)), Err(StoreError::SourceChanged(_))),
            "{name}"
        );
        assert_eq!(store.bitfield(id).unwrap(), None);
        assert_eq!(store.list().unwrap()[0].state, EntryState::SourceChanged);
    }
}

#[test]
fn list_notices_a_touched_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in backends(dir.path()) {
        let path = dir.path().join(format!("{name}.bin"));
        fs::write(&path, data(10)).unwrap();
        store.import(&path, |_| {}).unwrap();
        assert_eq!(store.list().unwrap()[0].state, EntryState::Complete);
        fs::write(&path, data(11)).unwrap();
        assert_eq!(store.list().unwrap()[0].state, EntryState::SourceChanged, "{name}");
    }
}

/// A piece is hashed once per process while its file stays untouched; a write that restores the
/// modification time afterwards still moves the file's status-change time, so the served piece
/// is checked again and the change is caught.
#[test]
fn a_piece_served_before_is_checked_again_after_a_write_that_hides_its_mtime() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in backends(dir.path()) {
        let path = dir.path().join(format!("{name}.bin"));
        let bytes = data(100_000);
        fs::write(&path, &bytes).unwrap();
        let id = store.import(&path, |_| {}).unwrap().content_id();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        // Served twice: the same bytes both times (the second from the checked marks).
        for _ in 0..2 {
            assert_eq!(store.read_piece(id, PieceIndex(2)).unwrap(), bytes[2 * 16384..3 * 16384]);
        }
        // Flip a byte in place and set the modification time back.
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_at(&[bytes[2 * 16384 + 5] ^ 1], 2 * 16384 + 5).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime, "{name}");
        assert!(
            matches!(store.read_piece(id, PieceIndex(2)), Err(StoreError::SourceChanged(_))),
            "{name}"
        );
        assert_eq!(store.list().unwrap()[0].state, EntryState::SourceChanged, "{name}");
    }
}

/// A seeded file whose modification time moved is no longer served, even before `ls` looks.
#[test]
fn a_touched_file_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in backends(dir.path()) {
        let path = dir.path().join(format!("{name}.bin"));
        fs::write(&path, data(40_000)).unwrap();
        let id = store.import(&path, |_| {}).unwrap().content_id();
        assert!(store.read_piece(id, PieceIndex(0)).is_ok(), "{name}");
        let later =
            fs::metadata(&path).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
        fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert!(
            matches!(store.read_piece(id, PieceIndex(1)), Err(StoreError::SourceChanged(_))),
            "{name}"
        );
    }
}

fn manifest_of(bytes: &[u8]) -> Arc<Manifest> {
    let hashes = bytes
        .chunks(1 << shoal_core::piece::piece_log2_for(bytes.len() as u64))
        .map(shoal_core::PieceHash::of)
        .collect();
    Arc::new(Manifest::new("out.bin", bytes.len() as u64, hashes).unwrap())
}

#[test]
fn download_rejects_bad_pieces_resumes_and_finishes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in backends(dir.path()) {
        let bytes = data(5 * 16384 + 3);
        let m = manifest_of(&bytes);
        let out = dir.path().join(format!("{name}-out.bin"));
        let piece = |i: u32| {
            let r = m.piece_range(PieceIndex(i));
            &bytes[r.start as usize..r.end as usize]
        };
        {
            let dl = store.begin_download(m.clone(), &out).unwrap();
            assert!(!dl.write_piece(PieceIndex(0), piece(1)).unwrap(), "wrong bytes refused");
            assert!(dl.write_piece(PieceIndex(0), piece(0)).unwrap());
            assert!(dl.write_piece(PieceIndex(3), piece(3)).unwrap());
            dl.checkpoint().unwrap();
            // Served while downloading: only verified pieces.
            assert_eq!(store.read_piece(m.content_id(), PieceIndex(3)).unwrap(), piece(3));
            assert!(store.read_piece(m.content_id(), PieceIndex(1)).is_err());
            assert!(!out.exists(), "nothing at the output before completion");
        }
        // Resume: the two verified pieces are known without rehashing.
        let dl = store.begin_download(m.clone(), &out).unwrap();
        assert_eq!(dl.resumed_pieces(), 2, "{name}");
        assert_eq!(
            store.list().unwrap().iter().find(|e| e.content == m.content_id()).unwrap().state,
            EntryState::Partial { have: 2, total: 6 }
        );
        for i in [1, 2, 4, 5] {
            assert!(dl.write_piece(PieceIndex(i), piece(i)).unwrap());
        }
        let path = dl.finish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name}");
        assert!(store.bitfield(m.content_id()).unwrap().unwrap().is_complete());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".shoal-part"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn boundary_sizes_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::with_meta(Arc::new(MemMeta::default()));
    let p = 16384;
    // 0 bytes, 1 byte, piece-1, piece, piece+1, many pieces
    for (k, size) in [0, 1, p - 1, p, p + 1, 40 * p + 17].into_iter().enumerate() {
        let src = dir.path().join(format!("src{k}"));
        let bytes = data(size);
        fs::write(&src, &bytes).unwrap();
        let m = Arc::new(store.import(&src, |_| {}).unwrap());
        let out = dir.path().join(format!("out{k}"));
        // A second store fetches from the first.
        let other = Store::with_meta(Arc::new(MemMeta::default()));
        let dl = other.begin_download(m.clone(), &out).unwrap();
        for i in 0..m.piece_count() {
            let piece = store.read_piece(m.content_id(), PieceIndex(i)).unwrap();
            assert!(dl.write_piece(PieceIndex(i), &piece).unwrap());
        }
        assert_eq!(fs::read(dl.finish().unwrap()).unwrap(), bytes, "size {size}");
    }
}

#[test]
fn bad_outputs_are_refused_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::with_meta(Arc::new(MemMeta::default()));
    let m = manifest_of(&data(100));
    let err = store.begin_download(m.clone(), &dir.path().join("nope/out")).unwrap_err();
    assert!(matches!(err, StoreError::NoOutputDir(_)), "{err}");
    let existing = dir.path().join("exists");
    fs::write(&existing, b"x").unwrap();
    let err = store.begin_download(m, &existing).unwrap_err();
    assert!(matches!(err, StoreError::OutputExists(_)), "{err}");
    assert_eq!(fs::read(&existing).unwrap(), b"x");
    let err = store.import(&dir.path().join("missing"), |_| {}).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
