//! The durable store: one sled tree, one sequencing writer thread with group commit, a commit
//! journal, and a directory of large message bodies. Message bodies are sealed (AEAD) before
//! any of these sees them.
//!
//! Every write goes through the writer. It collects the writes of the operations queued
//! meanwhile into one group, appends the group to the commit journal as one record and
//! `fdatasync`s it, applies it to sled, and only then answers the callers and advances the
//! inbox watermarks and audit log size that readers follow. So an answer means "on stable storage", and no reader
//! ever sees an entry a crash could lose. sled is flushed in the background whenever a journal
//! file fills; opening the store replays what the journal holds beyond it.
//!
//! Here: opening, the directory, index entries, consent and match-quota records. Elsewhere:
//! `messages` (sends, deliveries, inboxes, bodies, erasure), `log` (the audit log's leaves,
//! party index, hashes and checkpoints), `writer` (sequencing and group commit), `journal`,
//! `objects` (large bodies), `sealing` (AEAD at rest), [`records`] (record types and keys).

mod journal;
mod log;
mod messages;
mod objects;
pub mod records;
mod sealing;
mod stats;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

pub use journal::decode_groups as decode_journal_groups;
use journal::Journal;
use log::LogState;
pub use log::{LogEntry, StoredHashes};
use messages::idempotent_answer;
pub use messages::{Accepted, Link, NewMessage, RetentionEntry};
use objects::Objects;
pub use objects::{sync_dir, INLINE_BODY_MAX};
pub use records::PublishedKey;
use records::{keys, AgencyRecord, ConsentRecord, PublishedRecord, QuotaRecord};
pub use sealing::{DataKeys, Part, Sealed, SealingError};
pub use stats::{commit_histograms, commit_stats, CommitStats};
pub use writer::CommitFailure;
use writer::{Flusher, Op, Writer};

use crate::audit::merkle::MerkleError;
use std::sync::atomic::AtomicU64;

/// How many queued operations the writer takes into one group commit at most.
pub const MAX_GROUP_COMMIT: usize = 512;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A file of the store could not be read or written.
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record does not decode.
    #[error("corrupt record at key {key}: {source}")]
    Corrupt {
        /// The key, escaped.
        key: String,
        /// The decoding error.
        source: prost::DecodeError,
    },
    /// The idempotency key is bound to a different request.
    #[error("client_message_id already used for a different message")]
    IdempotencyConflict,
    /// A record to create exists already.
    #[error("record exists")]
    AlreadyExists,
    /// A record to update does not exist.
    #[error("record not found")]
    NotFound,
    /// The writer has stopped (the server is shutting down).
    #[error("store is closed")]
    Closed,
    /// A message body cannot be sealed or opened.
    #[error(transparent)]
    Sealing(#[from] SealingError),
    /// The audit log's stored hashes do not give its frontier (at open).
    #[error("store I/O: audit log hashes: {0}")]
    LogHashes(#[source] MerkleError),
    /// The group commit this write belonged to failed; the write is not stored.
    #[error("store I/O: {0}")]
    Commit(#[source] Arc<CommitFailure>),
}

/// A key and its value in one of the store's indexes.
pub type IndexEntry = (Vec<u8>, Vec<u8>);

/// Whether `put_agency` creates or replaces a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fails with `AlreadyExists` if the agency is registered.
    Create,
    /// Fails with `NotFound` if the agency is not registered.
    Update,
}

/// The store. Cheap to share behind an `Arc`; reads go straight to sled, writes to the writer.
pub struct Store {
    db: sled::Db,
    objects: Objects,
    data_keys: Arc<DataKeys>,
    ops: mpsc::Sender<Op>,
    inboxes: Arc<Inboxes>,
    durable_log_size: Arc<AtomicU64>,
    failure: watch::Receiver<Option<String>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Durable inbox watermarks: the highest sequence of each agency's inbox that is on stable
/// storage. Readers subscribe and never read past it.
#[derive(Default)]
pub(crate) struct Inboxes {
    watermarks: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Inboxes {
    fn sender(&self, agency: &str, initial: u64) -> watch::Sender<u64> {
        let mut map = self
            .watermarks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(agency.to_string())
            .or_insert_with(|| watch::channel(initial).0)
            .clone()
    }

    pub(crate) fn publish(&self, agency: &str, sequence: u64) {
        self.sender(agency, sequence).send_if_modified(|current| {
            let advanced = sequence > *current;
            if advanced {
                *current = sequence;
            }
            advanced
        });
    }

    fn subscribe(&self, agency: &str) -> watch::Receiver<u64> {
        self.sender(agency, 0).subscribe()
    }
}

// === impl Store ===

impl Store {
    /// Opens the store in `data_dir` (created if missing), replays the commit journal a crash
    /// left, removes bodies of messages a crash left uncommitted, and starts the writer thread.
    /// Message bodies are sealed with `data_keys`.
    ///
    /// # Errors
    /// The directory or sled cannot be opened, or a directory record is corrupt.
    pub fn open(data_dir: &Path, data_keys: Arc<DataKeys>) -> Result<Arc<Store>, StoreError> {
        // Owner-only whatever the umask: the directories here, and sled's files after it made
        // them (sled sets no modes of its own; `puente serve` also sets a umask of 077).
        crate::private_files::create_dir(data_dir)?;
        let db_dir = data_dir.join("store");
        crate::private_files::create_dir(&db_dir)?;
        let db = sled::Config::new()
            .path(&db_dir)
            .cache_capacity(128 * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        crate::private_files::restrict_tree(&db_dir)?;
        // Kept for `flush_sled`, which fdatasyncs it after each sled flush.
        let db_file = File::open(db_dir.join("db"))?;
        let journal_dir = data_dir.join("journal");
        let (journal, replayed) = Journal::recover(&journal_dir, &db, &db_file)?;
        if replayed > 0 {
            tracing::info!(groups = replayed, "replayed the commit journal");
        }
        let flusher = Flusher::spawn(db.clone(), db_file, journal_dir, journal.generation())?;
        let objects = Objects::open(data_dir.join("objects"))?;
        let removed = objects.sweep(|id| matches!(db.contains_key(keys::message(id)), Ok(true)))?;
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed message bodies of sends that never committed"
            );
        }

        let inboxes = Arc::new(Inboxes::default());
        let mut sequences = HashMap::new();
        for agency in scan_agencies(&db)? {
            let last = last_inbox_sequence(&db, &agency.agency_id)?;
            inboxes.publish(&agency.agency_id, last);
            sequences.insert(agency.agency_id, last);
        }

        let log = LogState::load(&db)?;
        let durable_log_size = Arc::new(AtomicU64::new(log.size));
        let (ops, queue) = mpsc::channel(4 * MAX_GROUP_COMMIT);
        let (failed, failure) = watch::channel(None);
        let writer = Writer::new(
            db.clone(),
            journal,
            flusher,
            Arc::clone(&inboxes),
            sequences,
            log,
            Arc::clone(&durable_log_size),
            failed,
        );
        let handle = std::thread::Builder::new()
            .name("puente-store-writer".into())
            .spawn(move || writer.run(queue))?;
        Ok(Arc::new(Store {
            db,
            objects,
            data_keys,
            ops,
            inboxes,
            durable_log_size,
            failure,
            writer: Mutex::new(Some(handle)),
        }))
    }

    async fn submit<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes and removes index entries durably and atomically, with audit entries.
    async fn update_index(
        &self,
        puts: Vec<IndexEntry>,
        removes: Vec<Vec<u8>>,
        events: Vec<impl Into<LogEntry>>,
    ) -> Result<(), StoreError> {
        let events = events.into_iter().map(Into::into).collect();
        self.submit(|reply| Op::Index {
            puts,
            removes,
            events,
            reply,
        })
        .await
    }

    /// Creates or replaces a directory entry durably and returns it as stored.
    ///
    /// # Errors
    /// `AlreadyExists` / `NotFound` according to `mode`; I/O and sled errors.
    pub async fn put_agency(
        &self,
        record: AgencyRecord,
        mode: PutMode,
        event: impl Into<LogEntry>,
    ) -> Result<AgencyRecord, StoreError> {
        self.submit(|reply| Op::PutAgency {
            record,
            mode,
            event: Box::new(event.into()),
            reply,
        })
        .await
    }

    /// Keys under `prefix` (the part after it) and their values, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<IndexEntry>, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|item| {
                let (key, value) = item?;
                Ok((key[prefix.len()..].to_vec(), value.to_vec()))
            })
            .collect()
    }

    /// The match query quota window last recorded for `agency`.
    ///
    /// # Errors
    /// sled errors and a corrupt record.
    pub fn match_quota(&self, agency: &str) -> Result<Option<QuotaRecord>, StoreError> {
        let key = keys::match_quota(agency);
        self.db
            .get(&key)?
            .map(|value| decode(&key, &value))
            .transpose()
    }

    /// Records a match query: its audit entry and the agency's quota window after it, in the
    /// same group commit (one small record per agency, overwritten).
    ///
    /// # Errors
    /// As [`Store::update_index`].
    pub async fn record_match_query(
        &self,
        agency: &str,
        window: QuotaRecord,
        event: impl Into<LogEntry>,
    ) -> Result<(), StoreError> {
        self.update_index(
            vec![(keys::match_quota(agency), encode(&window))],
            Vec::new(),
            vec![event.into()],
        )
        .await
    }

    /// `holder`'s latest consent request to forward `original` to `agency`, and its decision.
    ///
    /// # Errors
    /// sled errors and corrupt records.
    pub fn consent(
        &self,
        original: &str,
        holder: &str,
        agency: &str,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        get_record(&self.db, &keys::consent(original, holder, agency))
    }

    /// What `agency` published under `identifier`, if it did.
    ///
    /// # Errors
    /// sled errors and a corrupt record.
    pub fn publication(
        &self,
        identifier: &PublishedKey,
        agency: &str,
    ) -> Result<Option<PublishedRecord>, StoreError> {
        get_record(&self.db, &identifier.key(agency))
    }

    /// Every agency that published `identifier`, with what it published, by agency id.
    ///
    /// # Errors
    /// sled errors and corrupt records.
    pub fn publications(
        &self,
        identifier: &PublishedKey,
    ) -> Result<Vec<(String, PublishedRecord)>, StoreError> {
        let prefix = identifier.prefix();
        self.scan(&prefix)?
            .into_iter()
            .map(|(agency, value)| {
                let record = decode(&[prefix.as_slice(), &agency].concat(), &value)?;
                Ok((String::from_utf8_lossy(&agency).into_owned(), record))
            })
            .collect()
    }

    /// Records (or replaces) what `agency` publishes under each identifier, with its audit
    /// entry, durably.
    ///
    /// # Errors
    /// I/O and sled errors; `Closed` when shutting down.
    pub async fn publish(
        &self,
        agency: &str,
        publications: Vec<(PublishedKey, PublishedRecord)>,
        event: impl Into<LogEntry>,
    ) -> Result<(), StoreError> {
        let puts = publications
            .iter()
            .map(|(identifier, record)| (identifier.key(agency), encode(record)))
            .collect();
        self.update_index(puts, Vec::new(), vec![event]).await
    }

    /// Removes `agency`'s publications under `identifiers`, with its audit entry, durably.
    ///
    /// # Errors
    /// As [`Store::publish`].
    pub async fn withdraw(
        &self,
        agency: &str,
        identifiers: &[PublishedKey],
        event: impl Into<LogEntry>,
    ) -> Result<(), StoreError> {
        let removes = identifiers.iter().map(|id| id.key(agency)).collect();
        self.update_index(Vec::new(), removes, vec![event]).await
    }

    /// Every directory entry, ordered by agency id.
    ///
    /// # Errors
    /// sled errors and corrupt records.
    pub fn agencies(&self) -> Result<Vec<AgencyRecord>, StoreError> {
        scan_agencies(&self.db)
    }

    /// Follows whether the store has failed for good: `Some(reason)` once a write failed in a
    /// way only a restart (which replays the commit journal) repairs. Every later write fails.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }

    /// Stops the writer after the operations already queued, and waits for it. Later writes
    /// fail with `Closed`.
    pub async fn close(&self) {
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(handle) = handle else { return };
        // The writer stops at `Op::Close`, after answering everything queued before it.
        if self.ops.send(Op::Close).await.is_err() {
            return;
        }
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("store writer thread panicked"),
        }
    }
}

/// Makes everything applied to sled durable: its flush (which only `sync_file_range`s), then an
/// `fdatasync` of its database file.
fn flush_sled(db: &sled::Db, db_file: &File) -> std::io::Result<()> {
    db.flush()?;
    db_file.sync_data()
}

fn scan_agencies(db: &sled::Db) -> Result<Vec<AgencyRecord>, StoreError> {
    db.scan_prefix(keys::AGENCY_PREFIX)
        .map(|item| {
            let (key, value) = item?;
            decode(&key, &value)
        })
        .collect()
}

fn last_inbox_sequence(db: &sled::Db, agency: &str) -> Result<u64, StoreError> {
    match db.scan_prefix(keys::inbox_prefix(agency)).next_back() {
        Some(item) => Ok(keys::trailing_u64(&item?.0).unwrap_or_default()),
        None => Ok(0),
    }
}

fn get_record<T: prost::Message + Default>(
    db: &sled::Db,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    db.get(key)?.map(|value| decode(key, &value)).transpose()
}

fn decode<T: prost::Message + Default>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    T::decode(value).map_err(|source| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).escape_debug().to_string(),
        source,
    })
}

fn encode(record: &impl prost::Message) -> Vec<u8> {
    record.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle;
    use crate::pb::v1::AuditAction;
    use crate::time::now_micros;
    use records::MessageRecord;

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
        let store = Store::open(dir.path(), test_keys(dir.path())).expect("open");
        let mut event = crate::audit::event(AuditAction::CrlApplied, None);
        event.reason = "x".repeat(400);
        let mut recorded = 0u64;
        while recorded * 400 < 2 * journal::ROTATE_BYTES {
            store
                .record(vec![event.clone(); 1000])
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
        store.record(vec![event.clone()]).await.expect("record");
        recorded += 1;
        let root = merkle::root(&store.audit_hashes(), recorded).expect("root");
        store.close().await;
        drop(store);
        assert!(journal_files(dir.path()).is_empty());

        let store = retry_while_locked(|| Store::open(dir.path(), test_keys(dir.path())));
        assert_eq!(store.audit_size(), recorded);
        assert_eq!(
            merkle::root(&store.audit_hashes(), recorded).expect("root"),
            root
        );
        assert!(store.audit_leaf(recorded - 1).expect("leaf").is_some());
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
        let store = Store::open(&data, test_keys(dir.path())).expect("open");
        let marker = b"CARTEL-LEDGER-7731";
        let small = [marker.as_slice(), b" small"].concat();
        let large = marker.repeat(2 * INLINE_BODY_MAX / marker.len());
        let event = crate::audit::event(AuditAction::MessageAccepted, None);
        for (id, body) in [("m-small", &small), ("m-large", &large)] {
            store
                .send(message(id, 5, now_micros(), body.clone()), event.clone())
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
        let store = retry_while_locked(|| Store::open(&data, test_keys(dir.path())));
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
        let store = Store::open(dir.path(), test_keys(dir.path())).expect("open");
        let event = crate::audit::event(AuditAction::MessageAccepted, None);
        let old = now_micros() - 10_000_000;
        let bodies = [vec![1u8; 10], vec![2u8; 2 * INLINE_BODY_MAX]];
        for (i, body) in bodies.iter().enumerate() {
            store
                .send(
                    message(&format!("m-{i}"), 5, old + i as i64, body.clone()),
                    event.clone(),
                )
                .await
                .expect("send");
        }
        store
            .send(message("m-new", 5, now_micros(), vec![3]), event.clone())
            .await
            .expect("send");
        store
            .send(message("m-other-topic", 2, old, vec![4]), event.clone())
            .await
            .expect("send");
        store
            .advance_delivery("m-0", "CO-DIJIN", 3, event.clone())
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
        let size = store.audit_size();
        let erase = |id: &str| {
            let mut event = crate::audit::event(AuditAction::MessageErased, None);
            event.message_id = id.to_string();
            (id.to_string(), event)
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
}
