//! Tests of the embedded backend: journal flushing, sealing at rest, erasure.
use super::*;
use crate::pb::v1::AuditAction;
use crate::store::records::MessageRecord;
use crate::time::now_micros;

fn journal_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("journal"))
        .expect("journal dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".journal"))
        .collect();
    names.sort();
    names
}

/// Past a journal file's size the writer moves on, sled is flushed in the background and
/// the older file removed; a clean close leaves no journal, and everything reads back.
#[tokio::test(flavor = "multi_thread")]
async fn full_journal_files_are_flushed_into_sled_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), test_keys(dir.path())).expect("open");
    let mut event = crate::audit::event(AuditAction::CrlApplied, None);
    event.reason = "x".repeat(400);
    let mut recorded = 0u64;
    while recorded * 400 < 2 * journal::ROTATE_BYTES {
        store
            .record(vec![event.clone().into(); 1000])
            .await
            .expect("record");
        recorded += 1000;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while journal_files(dir.path())
        .first()
        .is_some_and(|first| first.starts_with("0000000000000000"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first journal file was never removed: {:?}",
            journal_files(dir.path())
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store
        .record(vec![event.clone().into()])
        .await
        .expect("record");
    recorded += 1;
    let root = store.audit_root(recorded).expect("root");
    store.close().await;
    drop(store);
    assert!(journal_files(dir.path()).is_empty());

    let store = retry_while_locked(|| SledStore::open(dir.path(), test_keys(dir.path())));
    assert_eq!(store.audit_size(), recorded);
    assert_eq!(store.audit_root(recorded).expect("root"), root);
    assert!(store.audit_leaf(recorded - 1).expect("leaf").is_some());
    store.close().await;
}

/// A data directory of release 1 (audit leaves and hashes in sled, under `l/` and `h/`) opens
/// with the same log: they move to the audit files and leave sled, and the log grows on.
#[tokio::test(flavor = "multi_thread")]
async fn audit_entries_kept_in_sled_move_to_their_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), test_keys(dir.path())).expect("open");
    let mut event = crate::audit::event(AuditAction::CrlApplied, None);
    for n in 0..37 {
        event.reason = "y".repeat(n);
        store
            .record(vec![event.clone().into()])
            .await
            .expect("record");
    }
    let root = store.audit_root(37).expect("root");
    let leaves = store.audit_leaves(0, 37, 100).expect("leaves");
    store.close().await;
    drop(store);
    {
        let audit_dir = dir.path().join("audit");
        let files = AuditFiles::open(&audit_dir).expect("audit files");
        let db = retry_while_locked(|| sled::Config::new().path(dir.path().join("store")).open());
        for (index, leaf) in &leaves {
            db.insert(
                [b"l/".as_slice(), &index.to_be_bytes()].concat(),
                leaf.as_slice(),
            )
            .expect("leaf");
        }
        for level in 1..8u8 {
            for index in 0..(37u64 >> level) {
                let hash = files
                    .hash(level, index)
                    .expect("read")
                    .expect("stored hash");
                db.insert(
                    [b"h/".as_slice(), &[level], &index.to_be_bytes()].concat(),
                    hash.as_slice(),
                )
                .expect("hash");
            }
        }
        db.flush().expect("flush");
        drop(files);
        std::fs::remove_dir_all(&audit_dir).expect("remove the audit files");
    }
    let store = retry_while_locked(|| SledStore::open(dir.path(), test_keys(dir.path())));
    assert_eq!(store.audit_size(), 37);
    assert_eq!(store.audit_root(37).expect("root"), root);
    assert_eq!(store.audit_leaves(0, 37, 100).expect("leaves"), leaves);
    assert_eq!(store.db.scan_prefix(b"l/").count(), 0);
    assert_eq!(store.db.scan_prefix(b"h/").count(), 0);
    store.record(vec![event.into()]).await.expect("record");
    let grown = store.audit_root(38).expect("root");
    let proof = store.consistency_proof(37, 38).expect("proof");
    crate::audit::merkle::verify_consistency(37, 38, &proof, &root, &grown)
        .expect("the moved log grows consistently");
    store.close().await;
}

/// The keyring `data.keys` in `dir`, created on first use.
fn test_keys(dir: &Path) -> Arc<DataKeys> {
    let path = dir.join("data.keys");
    if !path.exists() {
        DataKeys::add_new(&path).expect("data key");
    }
    Arc::new(DataKeys::load(&path).expect("keyring"))
}

fn message(id: &str, topic: i32, created_at_micros: i64, body: Vec<u8>) -> NewMessage {
    NewMessage {
        record: MessageRecord {
            message_id: id.to_string(),
            sender: "ES-CNP".into(),
            recipients: vec!["CO-DIJIN".into()],
            topic,
            created_at_micros,
            body_len: body.len() as u64,
            body,
            ..MessageRecord::default()
        },
        client_message_id: format!("c-{id}"),
        request_sha256: vec![1; 32],
        links: Vec::new(),
    }
}

/// Every file under `dir`, recursively, that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .expect("read file")
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Inline and external bodies reach the journal, sled and the object directory sealed, and
/// read back in the clear through the store, also after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_sealed_on_disk_and_open_through_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = SledStore::open(&data, test_keys(dir.path())).expect("open");
    let marker = b"CARTEL-LEDGER-7731";
    let small = [marker.as_slice(), b" small"].concat();
    let large = marker.repeat(2 * INLINE_BODY_MAX / marker.len());
    let event = crate::audit::event(AuditAction::MessageAccepted, None);
    for (id, body) in [("m-small", &small), ("m-large", &large)] {
        store
            .send(
                message(id, 5, now_micros(), body.clone()),
                event.clone().into(),
            )
            .await
            .expect("send");
    }
    assert_eq!(files_containing(&data, marker), Vec::<String>::new());
    for (id, body) in [("m-small", &small), ("m-large", &large)] {
        let record = store.message(id).expect("read").expect("stored");
        assert_eq!(&store.body(&record).expect("open body"), body);
    }
    store.close().await;
    drop(store);
    assert_eq!(files_containing(&data, marker), Vec::<String>::new());
    let store = retry_while_locked(|| SledStore::open(&data, test_keys(dir.path())));
    let record = store.message("m-large").expect("read").expect("stored");
    assert!(record.body_external);
    assert_eq!(store.body(&record).expect("open body"), large);
    store.close().await;
}

/// Erasure removes the record, its delivery records, its retention entry and its body
/// file, with one audit entry each, and keeps the inbox entries; a body read that raced
/// the erasure is `NotFound`.
#[tokio::test(flavor = "multi_thread")]
async fn erased_messages_leave_only_their_audit_entries_and_inbox_slots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), test_keys(dir.path())).expect("open");
    let event = crate::audit::event(AuditAction::MessageAccepted, None);
    let old = now_micros() - 10_000_000;
    let bodies = [vec![1u8; 10], vec![2u8; 2 * INLINE_BODY_MAX]];
    for (i, body) in bodies.iter().enumerate() {
        store
            .send(
                message(&format!("m-{i}"), 5, old + i as i64, body.clone()),
                event.clone().into(),
            )
            .await
            .expect("send");
    }
    store
        .send(
            message("m-new", 5, now_micros(), vec![3]),
            event.clone().into(),
        )
        .await
        .expect("send");
    store
        .send(
            message("m-other-topic", 2, old, vec![4]),
            event.clone().into(),
        )
        .await
        .expect("send");
    store
        .advance_delivery("m-0", "CO-DIJIN", 3, event.clone().into())
        .await
        .expect("ack");
    let expired = store
        .accepted_before(5, now_micros() - 5_000_000, None, 10)
        .expect("expired");
    let ids: Vec<&str> = expired.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, ["m-0", "m-1"]);
    let after_first = store
        .accepted_before(5, now_micros() - 5_000_000, Some(&expired[0]), 10)
        .expect("expired");
    assert_eq!(after_first, expired[1..]);

    // A reader that read m-1's record just before the erasure.
    let read_before = store.message("m-1").expect("read").expect("stored");
    assert!(read_before.body_external);
    let small_before = store.message("m-0").expect("read").expect("stored");
    assert!(small_before.body_file_len > 0 && small_before.body.is_empty());
    let size = store.audit_size();
    let erase = |id: &str| {
        let mut event = crate::audit::event(AuditAction::MessageErased, None);
        event.message_id = id.to_string();
        (id.to_string(), event.into())
    };
    assert_eq!(
        store
            .erase(vec![erase("m-0"), erase("m-1")])
            .await
            .expect("erase"),
        2
    );
    assert_eq!(store.audit_size(), size + 2);
    assert_eq!(
        store.erase(vec![erase("m-0")]).await.expect("erase again"),
        0
    );
    assert_eq!(store.audit_size(), size + 2);
    for id in ["m-0", "m-1"] {
        assert!(store.message(id).expect("read").is_none());
        assert!(store.delivery(id, "CO-DIJIN").expect("read").is_none());
    }
    assert!(!dir.path().join("objects").join("m-1").exists());
    assert!(
        matches!(store.body(&read_before), Err(StoreError::NotFound)),
        "a body read racing its message's erasure is NotFound, not an I/O failure"
    );
    assert!(matches!(
        store.body(&small_before),
        Err(StoreError::NotFound)
    ));
    let (offset, len) = (small_before.body_offset, small_before.body_file_len);
    assert_eq!(
        store.tables.bodies.read(offset, len).expect("read"),
        vec![0u8; usize::try_from(len).expect("length")],
        "an erased body is overwritten with zeros in the bodies file"
    );
    assert!(store
        .accepted_before(5, now_micros() - 5_000_000, None, 10)
        .expect("expired")
        .is_empty());
    assert!(store.message("m-new").expect("read").is_some());
    assert!(store.message("m-other-topic").expect("read").is_some());
    let inbox = store.inbox_range("CO-DIJIN", 0, 4, 10).expect("inbox");
    assert_eq!(inbox.len(), 4, "inbox slots stay: {inbox:?}");
    store.close().await;
}

/// sled releases its lock from its own threads shortly after its last handle is dropped,
/// so opening the same directory again in one process must wait for that.
pub(super) fn retry_while_locked<T, E: std::fmt::Display>(
    mut open: impl FnMut() -> Result<T, E>,
) -> T {
    for _ in 0..500 {
        match open() {
            Ok(opened) => return opened,
            Err(e) if e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
    panic!("still locked after 5 s")
}
