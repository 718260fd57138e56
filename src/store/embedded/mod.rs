//! The embedded backend, [`SledStore`]: one sled tree, one sequencing writer thread with group
//! commit, a commit journal, and a directory of large message bodies. Message bodies are sealed
//! (AEAD) before any of these sees them.
//!
//! Every write goes through the writer. It collects the writes of the operations queued
//! meanwhile into one group, appends the group to the commit journal as one record and
//! `fdatasync`s it, applies it to sled, and only then answers the callers and advances the
//! inbox watermarks and audit log size that readers follow. So an answer means "on stable
//! storage", and no reader ever sees an entry a crash could lose. sled is flushed in the
//! background whenever a journal file fills; opening the store replays what the journal holds
//! beyond it.
//!
//! Here: opening, the directory, matching and consent records, and [`Store`] for
//! [`SledStore`] (each operation delegates to the inherent method of the same name). Elsewhere:
//! `messages` (sends, deliveries, inboxes, bodies, links, erasure), `log` (the audit log's
//! leaves, party index, hashes, proofs and checkpoints), `writer` (sequencing and group commit),
//! `journal`, `objects` (large bodies), `keys` (the key layout), `stats` (commit metrics).

mod audit_files;
mod bodies;
mod journal;
mod keys;
mod log;
mod messages;
mod objects;
mod stats;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use audit_files::AuditFiles;
use bodies::Bodies;
pub use journal::decode_groups as decode_journal_groups;
use journal::Journal;
use log::LogState;
use messages::idempotent_answer;
use objects::Objects;
pub use objects::{sync_dir, INLINE_BODY_MAX};
pub use stats::{commit_histograms, commit_stats, CommitStats};
pub use writer::CommitFailure;
use writer::{Flusher, Op, Writer};

use super::records::{
    AgencyRecord, ConsentRecord, DeliveryRecord, MessageRecord, PublishedRecord, QuotaRecord,
};
use super::{
    Accepted, DataKeys, LogEntry, NewMessage, PublishedKey, PutMode, RetentionEntry, Store,
    StoreError,
};
use crate::audit::merkle::Hash;

/// How many queued operations the writer takes into one group commit at most.
pub const MAX_GROUP_COMMIT: usize = 512;

/// A key and its value in one of the store's indexes.
pub(super) type IndexEntry = (Vec<u8>, Vec<u8>);

/// The embedded store. Cheap to share behind an `Arc`; reads go straight to sled, writes to the
/// writer.
pub struct SledStore {
    db: sled::Db,
    tables: Arc<Tables>,
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

// === impl SledStore ===

impl SledStore {
    /// Opens the store in `data_dir` (created if missing), replays the commit journal a crash
    /// left, removes bodies of messages a crash left uncommitted, and starts the writer thread.
    /// Message bodies are sealed with `data_keys`.
    ///
    /// # Errors
    /// The directory or sled cannot be opened, or a directory record is corrupt.
    pub fn open(data_dir: &Path, data_keys: Arc<DataKeys>) -> Result<Arc<SledStore>, StoreError> {
        // Owner-only whatever the umask: the directories here, and sled's files after it made
        // them (sled sets no modes of its own; `puente serve` also sets a umask of 077).
        crate::private_files::create_dir(data_dir)?;
        let db_dir = data_dir.join("store");
        crate::private_files::create_dir(&db_dir)?;
        let db = sled::Config::new()
            .path(&db_dir)
            // sled's page cache. At a million stored messages a settled server holds 352 MiB
            // with 32 MiB here and 469 MiB with 128 MiB (starting fills it: the metrics walk
            // back through inboxes), at the same send rate (BENCHMARKS.md).
            .cache_capacity(32 * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        crate::private_files::restrict_tree(&db_dir)?;
        let tables = Arc::new(Tables {
            db: db.clone(),
            // Kept for `Tables::flush`, which fdatasyncs it after each sled flush.
            db_file: File::open(db_dir.join("db"))?,
            audit: AuditFiles::open(&data_dir.join("audit"))?,
            bodies: Bodies::open(&data_dir.join("bodies"))?,
        });
        let journal_dir = data_dir.join("journal");
        let (journal, replayed) = Journal::recover(&journal_dir, &tables)?;
        if replayed > 0 {
            tracing::info!(groups = replayed, "replayed the commit journal");
        }
        let moved = log::move_legacy_entries(&db, &tables.audit)?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "moved the audit log's leaves and hashes out of sled into their own files"
            );
        }
        let flusher = Flusher::spawn(Arc::clone(&tables), journal_dir, journal.generation())?;
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

        let log = LogState::load(&tables.audit)?;
        let durable_log_size = Arc::new(AtomicU64::new(log.size));
        let (ops, queue) = mpsc::channel(4 * MAX_GROUP_COMMIT);
        let (failed, failure) = watch::channel(None);
        let writer = Writer::new(
            Arc::clone(&tables),
            journal,
            flusher,
            Arc::clone(&inboxes),
            sequences,
            log,
            Arc::clone(&durable_log_size),
            failed,
        )?;
        let handle = std::thread::Builder::new()
            .name("puente-store-writer".into())
            .spawn(move || writer.run(queue))?;
        Ok(Arc::new(SledStore {
            db,
            tables,
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
        events: Vec<LogEntry>,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Op::Index {
            puts,
            removes,
            events,
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
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn send(&self, message: NewMessage, event: LogEntry) -> Result<Accepted, StoreError> {
        SledStore::send(self, message, event).await
    }

    async fn earlier_send(
        &self,
        sender: &str,
        client_message_id: &str,
        request_sha256: &[u8],
    ) -> Result<Option<Accepted>, StoreError> {
        SledStore::earlier_send(self, sender, client_message_id, request_sha256)
    }

    async fn advance_delivery(
        &self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: LogEntry,
    ) -> Result<DeliveryRecord, StoreError> {
        SledStore::advance_delivery(self, message_id, agency, state, event).await
    }

    async fn advance_delivery_later(
        &self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: LogEntry,
    ) -> Result<(), StoreError> {
        SledStore::advance_delivery_later(self, message_id, agency, state, event).await
    }

    async fn message(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        SledStore::message(self, message_id)
    }

    async fn body(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
        SledStore::body(self, record)
    }

    async fn deliveries(
        &self,
        message: &MessageRecord,
    ) -> Result<Vec<(String, DeliveryRecord)>, StoreError> {
        SledStore::deliveries(self, message)
    }

    async fn delivery(
        &self,
        message_id: &str,
        agency: &str,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        SledStore::delivery(self, message_id, agency)
    }

    async fn inbox_range(
        &self,
        agency: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        SledStore::inbox_range(self, agency, after, up_to, limit)
    }

    fn subscribe_inbox(&self, agency: &str) -> watch::Receiver<u64> {
        self.inboxes.subscribe(agency)
    }

    async fn replies(&self, message_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        SledStore::replies(self, message_id)
    }

    async fn case_messages(&self, case_reference: &str) -> Result<Vec<String>, StoreError> {
        SledStore::case_messages(self, case_reference)
    }

    async fn copies(&self, original: &str) -> Result<Vec<String>, StoreError> {
        SledStore::copies(self, original)
    }

    async fn notices(&self, original: &str) -> Result<Vec<String>, StoreError> {
        SledStore::notices(self, original)
    }

    async fn consent(
        &self,
        original: &str,
        holder: &str,
        agency: &str,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        get_record(&self.db, &keys::consent(original, holder, agency))
    }

    async fn accepted_before(
        &self,
        topic: i32,
        before_micros: i64,
        after: Option<&RetentionEntry>,
        limit: usize,
    ) -> Result<Vec<RetentionEntry>, StoreError> {
        SledStore::accepted_before(self, topic, before_micros, after, limit)
    }

    async fn erase(&self, messages: Vec<(String, LogEntry)>) -> Result<usize, StoreError> {
        SledStore::erase(self, messages).await
    }

    async fn put_agency(
        &self,
        record: AgencyRecord,
        mode: PutMode,
        event: LogEntry,
    ) -> Result<AgencyRecord, StoreError> {
        self.submit(|reply| Op::PutAgency {
            record,
            mode,
            event: Box::new(event),
            reply,
        })
        .await
    }

    async fn agencies(&self) -> Result<Vec<AgencyRecord>, StoreError> {
        scan_agencies(&self.db)
    }

    async fn publication(
        &self,
        key: &PublishedKey,
        agency: &str,
    ) -> Result<Option<PublishedRecord>, StoreError> {
        get_record(&self.db, &key.key(agency))
    }

    async fn publications(
        &self,
        key: &PublishedKey,
    ) -> Result<Vec<(String, PublishedRecord)>, StoreError> {
        let prefix = key.prefix();
        self.scan(&prefix)?
            .into_iter()
            .map(|(agency, value)| {
                let record = decode(&[prefix.as_slice(), &agency].concat(), &value)?;
                Ok((String::from_utf8_lossy(&agency).into_owned(), record))
            })
            .collect()
    }

    async fn publish(
        &self,
        agency: &str,
        publications: Vec<(PublishedKey, PublishedRecord)>,
        event: LogEntry,
    ) -> Result<(), StoreError> {
        let puts = publications
            .iter()
            .map(|(key, record)| (key.key(agency), encode(record)))
            .collect();
        self.update_index(puts, Vec::new(), vec![event]).await
    }

    async fn withdraw(
        &self,
        agency: &str,
        keys: &[PublishedKey],
        event: LogEntry,
    ) -> Result<(), StoreError> {
        let removes = keys.iter().map(|key| key.key(agency)).collect();
        self.update_index(Vec::new(), removes, vec![event]).await
    }

    async fn match_quota(&self, agency: &str) -> Result<Option<QuotaRecord>, StoreError> {
        get_record(&self.db, &keys::match_quota(agency))
    }

    async fn record_match_query(
        &self,
        agency: &str,
        window: QuotaRecord,
        event: LogEntry,
    ) -> Result<(), StoreError> {
        // One small record per agency, overwritten, in the query's group commit.
        self.update_index(
            vec![(keys::match_quota(agency), encode(&window))],
            Vec::new(),
            vec![event],
        )
        .await
    }

    async fn record(&self, entries: Vec<LogEntry>) -> Result<Vec<u64>, StoreError> {
        SledStore::record(self, entries).await
    }

    async fn record_later(&self, entry: LogEntry) -> Result<(), StoreError> {
        SledStore::record_later(self, entry).await
    }

    async fn audit_size(&self) -> Result<u64, StoreError> {
        Ok(SledStore::audit_size(self))
    }

    async fn audit_leaves(
        &self,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        SledStore::audit_leaves(self, start, end, limit)
    }

    async fn audit_party_indices(
        &self,
        agency: &str,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        SledStore::audit_party_indices(self, agency, start, end, limit)
    }

    async fn audit_leaf(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        SledStore::audit_leaf(self, index)
    }

    async fn leaf_hash(&self, index: u64) -> Result<Hash, StoreError> {
        SledStore::leaf_hash(self, index)
    }

    async fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        SledStore::audit_root(self, size)
    }

    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        SledStore::inclusion_proof(self, index, size)
    }

    async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        SledStore::consistency_proof(self, from, to)
    }

    async fn put_checkpoint(&self, size: u64, note: String) -> Result<(), StoreError> {
        self.submit(|reply| Op::Checkpoint { size, note, reply })
            .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        SledStore::latest_checkpoint(self)
    }

    fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }

    async fn close(&self) {
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

/// Why a journaled write could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// sled refused it.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The bodies file or an audit file could not be written.
    #[error("a file beside sled: {0}")]
    Io(#[from] std::io::Error),
    /// A journal write meant for the audit files does not have their shape.
    #[error("malformed {0} write in the journal")]
    Malformed(&'static str),
}

/// Where the writes of durable groups are applied: sled, the audit log's own files and the
/// bodies file.
pub(super) struct Tables {
    db: sled::Db,
    db_file: File,
    audit: AuditFiles,
    bodies: Bodies,
}

impl Tables {
    /// Applies one write of a durable group: a body to the bodies file, leaves and hashes to the
    /// audit files (see [`log::apply_write`]), every other key to sled. Writing the same group
    /// twice (a replay) leaves the same result.
    fn apply(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), ApplyError> {
        if let (Some(offset), Some(body)) = (bodies::offset_of(&key), &value) {
            return Ok(self.bodies.write(offset, body)?);
        }
        log::apply_write(&self.db, &self.audit, key, value)
    }

    /// Makes everything applied durable: sled's flush (which only `sync_file_range`s), an
    /// `fdatasync` of its database file, of the audit files and of the bodies file.
    fn flush(&self) -> std::io::Result<()> {
        self.db.flush()?;
        self.db_file.sync_data()?;
        self.audit.sync()?;
        self.bodies.sync()
    }
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
mod tests;
