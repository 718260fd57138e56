//! The store seam: every operation the services need from durable storage, as they mean it
//! (send a message, advance a delivery, append to the audit log, prove an entry), never as keys
//! or tables. [`Store`] is the interface; [`SledStore`] (in `embedded`, over sled with a commit
//! journal) is the embedded backend every single-machine server uses. A backend over a
//! networked database implements the same trait: every operation is asynchronous, and nothing
//! here assumes one server process (inbox watermarks and the failure signal are subscriptions).
//!
//! What every backend guarantees: an operation's answer means its writes are durable (fsynced,
//! or committed by the database); a send, its inbox entries, links, idempotency key and audit
//! entry commit together or not at all; inbox sequences are gapless per agency; the audit log has
//! one order; message bodies and free-text fields are sealed ([`DataKeys`]) before they reach
//! storage.

mod embedded;
pub mod records;
mod sealing;

use std::sync::Arc;

use tokio::sync::watch;

use crate::audit::merkle::{Hash, MerkleError};
use crate::pb::v1::AuditEvent;
pub use records::PublishedKey;
use records::{
    AgencyRecord, ConsentRecord, DeliveryRecord, MessageRecord, PublishedRecord, QuotaRecord,
};

pub use embedded::{
    commit_histograms, commit_stats, decode_journal_groups, sync_dir, CommitFailure, CommitStats,
    SledStore, INLINE_BODY_MAX, MAX_GROUP_COMMIT,
};
pub use sealing::{DataKeys, Part, Sealed, SealingError};

/// Opens the store in `data_dir` with the embedded backend (created if missing; see
/// [`SledStore::open`]). Message bodies are sealed with `data_keys`.
///
/// # Errors
/// The directory or its database cannot be opened, or a record needed at start is corrupt.
pub fn open(
    data_dir: &std::path::Path,
    data_keys: Arc<DataKeys>,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(SledStore::open(data_dir, data_keys)?)
}

/// The operations the services need from durable storage. Every write is durable when it
/// answers (except the `*_later` ones, which say so); reads see only durable data.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    // --- Messages and deliveries

    /// Commits a message durably with `event` (its audit entry, dated at the message's
    /// acceptance): its record, an inbox entry per recipient (PENDING until a delivery record
    /// says otherwise), its links and its idempotency key, atomically. A retry (same sender and
    /// `client_message_id`, same `request_sha256`) returns the original acceptance with
    /// `created == false` and writes nothing.
    ///
    /// # Errors
    /// `IdempotencyConflict` for the same key with another request; storage errors.
    async fn send(&self, message: NewMessage, event: LogEntry) -> Result<Accepted, StoreError>;

    /// The answer already given to `sender` for this idempotency key and request, if it was
    /// committed before.
    ///
    /// # Errors
    /// `IdempotencyConflict` if the key was used for a different request; storage errors.
    async fn earlier_send(
        &self,
        sender: &str,
        client_message_id: &str,
        request_sha256: &[u8],
    ) -> Result<Option<Accepted>, StoreError>;

    /// Moves a recipient's delivery state forward to `state` (never backward) with `event`,
    /// and returns the resulting record, once durable.
    ///
    /// # Errors
    /// `NotFound` if the agency is not a recipient of the message; storage errors.
    async fn advance_delivery(
        &self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: LogEntry,
    ) -> Result<DeliveryRecord, StoreError>;

    /// Queues a move to `state` with its audit entry without waiting for durability (DELIVERED
    /// while streaming: a crash before it is durable only understates delivery).
    ///
    /// # Errors
    /// `Closed` when the store is shutting down.
    async fn advance_delivery_later(
        &self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: LogEntry,
    ) -> Result<(), StoreError>;

    /// A message record with its sealed fields opened (the body stays sealed: see
    /// [`Store::body`]).
    ///
    /// # Errors
    /// Storage errors, corrupt records, sealed fields that do not open.
    async fn message(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError>;

    /// The plain body of a message.
    ///
    /// # Errors
    /// `NotFound` when the message was erased after `record` was read; a body that cannot be
    /// read or opened.
    async fn body(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError>;

    /// The delivery record of each recipient of `message`, ordered by agency id.
    ///
    /// # Errors
    /// Storage errors and corrupt records.
    async fn deliveries(
        &self,
        message: &MessageRecord,
    ) -> Result<Vec<(String, DeliveryRecord)>, StoreError>;

    /// The delivery record of `agency` for `message_id`, if its state moved past PENDING.
    ///
    /// # Errors
    /// Storage errors and a corrupt record.
    async fn delivery(
        &self,
        message_id: &str,
        agency: &str,
    ) -> Result<Option<DeliveryRecord>, StoreError>;

    /// Up to `limit` inbox entries (sequence, message id) of `agency` with
    /// `after < sequence <= up_to`, in order.
    ///
    /// # Errors
    /// Storage errors.
    async fn inbox_range(
        &self,
        agency: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError>;

    /// Follows the durable watermark (highest durable sequence) of an agency's inbox.
    fn subscribe_inbox(&self, agency: &str) -> watch::Receiver<u64>;

    // --- Threads, copies, notices, consent

    /// The replies to `message_id`: (replying agency, reply id).
    ///
    /// # Errors
    /// Storage errors.
    async fn replies(&self, message_id: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// The ids of the messages carrying `case_reference`, in id order.
    ///
    /// # Errors
    /// Storage errors.
    async fn case_messages(&self, case_reference: &str) -> Result<Vec<String>, StoreError>;

    /// The ids of the forwarded copies of `original`.
    ///
    /// # Errors
    /// Storage errors.
    async fn copies(&self, original: &str) -> Result<Vec<String>, StoreError>;

    /// The ids of the retraction and correction notices about `original`.
    ///
    /// # Errors
    /// Storage errors.
    async fn notices(&self, original: &str) -> Result<Vec<String>, StoreError>;

    /// `holder`'s latest consent request to pass `original` on to `agency`, and its decision.
    ///
    /// # Errors
    /// Storage errors and a corrupt record.
    async fn consent(
        &self,
        original: &str,
        holder: &str,
        agency: &str,
    ) -> Result<Option<ConsentRecord>, StoreError>;

    // --- Retention

    /// Up to `limit` messages of `topic` accepted before `before_micros`, oldest first,
    /// starting after `after` (a position returned earlier) or at the oldest.
    ///
    /// # Errors
    /// Storage errors.
    async fn accepted_before(
        &self,
        topic: i32,
        before_micros: i64,
        after: Option<&RetentionEntry>,
        limit: usize,
    ) -> Result<Vec<RetentionEntry>, StoreError>;

    /// Erases messages durably, each with its audit entry: record, body, delivery records and
    /// retention entry (inbox entries, idempotency keys and links stay: ids only). Messages
    /// already gone are skipped. Returns how many were erased.
    ///
    /// # Errors
    /// Storage errors; `Closed` when shutting down.
    async fn erase(&self, messages: Vec<(String, LogEntry)>) -> Result<usize, StoreError>;

    // --- Directory

    /// Creates or replaces a directory entry durably with `event` and returns it as stored.
    ///
    /// # Errors
    /// `AlreadyExists` / `NotFound` according to `mode`; storage errors.
    async fn put_agency(
        &self,
        record: AgencyRecord,
        mode: PutMode,
        event: LogEntry,
    ) -> Result<AgencyRecord, StoreError>;

    /// Every directory entry, ordered by agency id.
    ///
    /// # Errors
    /// Storage errors and corrupt records.
    async fn agencies(&self) -> Result<Vec<AgencyRecord>, StoreError>;

    // --- Matching

    /// What `agency` published under `key`, if it did.
    ///
    /// # Errors
    /// Storage errors and a corrupt record.
    async fn publication(
        &self,
        key: &PublishedKey,
        agency: &str,
    ) -> Result<Option<PublishedRecord>, StoreError>;

    /// Every agency that published under `key`, with what it published, by agency id.
    ///
    /// # Errors
    /// Storage errors and corrupt records.
    async fn publications(
        &self,
        key: &PublishedKey,
    ) -> Result<Vec<(String, PublishedRecord)>, StoreError>;

    /// Records (or replaces) what `agency` publishes under each key, with `event`.
    ///
    /// # Errors
    /// Storage errors; `Closed` when shutting down.
    async fn publish(
        &self,
        agency: &str,
        publications: Vec<(PublishedKey, PublishedRecord)>,
        event: LogEntry,
    ) -> Result<(), StoreError>;

    /// Removes `agency`'s publications under `keys`, with `event`.
    ///
    /// # Errors
    /// Storage errors; `Closed` when shutting down.
    async fn withdraw(
        &self,
        agency: &str,
        keys: &[PublishedKey],
        event: LogEntry,
    ) -> Result<(), StoreError>;

    /// The match query quota window last recorded for `agency`.
    ///
    /// # Errors
    /// Storage errors and a corrupt record.
    async fn match_quota(&self, agency: &str) -> Result<Option<QuotaRecord>, StoreError>;

    /// Records a match query's audit entry and the agency's quota window after it, together.
    ///
    /// # Errors
    /// Storage errors; `Closed` when shutting down.
    async fn record_match_query(
        &self,
        agency: &str,
        window: QuotaRecord,
        event: LogEntry,
    ) -> Result<(), StoreError>;

    // --- The audit log

    /// Appends audit entries durably and returns their indices.
    ///
    /// # Errors
    /// Storage errors; `Closed` when shutting down.
    async fn record(&self, entries: Vec<LogEntry>) -> Result<Vec<u64>, StoreError>;

    /// Queues an audit entry without waiting for durability.
    ///
    /// # Errors
    /// `Closed` when the store is shutting down.
    async fn record_later(&self, entry: LogEntry) -> Result<(), StoreError>;

    /// Number of audit entries on stable storage.
    ///
    /// # Errors
    /// Storage errors.
    async fn audit_size(&self) -> Result<u64, StoreError>;

    /// Up to `limit` audit leaves (index, encoded `AuditEvent`) with `start <= index < end`.
    ///
    /// # Errors
    /// Storage errors.
    async fn audit_leaves(
        &self,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Up to `limit` indices, `start <= index < end`, of audit entries `agency` is party to.
    ///
    /// # Errors
    /// Storage errors.
    async fn audit_party_indices(
        &self,
        agency: &str,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// One audit leaf.
    ///
    /// # Errors
    /// Storage errors.
    async fn audit_leaf(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// The hash the Merkle tree holds for leaf `index`, from the stored hashes (not from the
    /// leaf as stored now: comparing the two finds an altered leaf).
    ///
    /// # Errors
    /// `LogHashes` when it is not stored; storage errors.
    async fn leaf_hash(&self, index: u64) -> Result<Hash, StoreError>;

    /// The root of the log's first `size` entries.
    ///
    /// # Errors
    /// `LogHashes` when the stored hashes do not give it.
    async fn audit_root(&self, size: u64) -> Result<Hash, StoreError>;

    /// The inclusion proof of leaf `index` in the tree of size `size` (RFC 9162).
    ///
    /// # Errors
    /// `LogHashes` for arguments out of range or hashes missing.
    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError>;

    /// The consistency proof between the trees of sizes `from` and `to` (RFC 9162).
    ///
    /// # Errors
    /// `LogHashes` for arguments out of range or hashes missing.
    async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError>;

    /// Stores a signed checkpoint durably.
    ///
    /// # Errors
    /// Storage errors; `Closed` when shutting down.
    async fn put_checkpoint(&self, size: u64, note: String) -> Result<(), StoreError>;

    /// The latest stored checkpoint: its tree size and signed note.
    ///
    /// # Errors
    /// Storage errors.
    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;

    // --- Lifecycle

    /// Follows whether the store has failed for good: `Some(reason)` once a write failed in a
    /// way only a restart repairs. Every later write fails.
    fn failure(&self) -> watch::Receiver<Option<String>>;

    /// Finishes the writes already queued and stops; later writes fail with `Closed`.
    async fn close(&self);
}

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
    /// The audit log's stored hashes do not give its frontier, a root or a proof.
    #[error("store I/O: audit log hashes: {0}")]
    LogHashes(#[source] MerkleError),
    /// The group commit this write belonged to failed; the write is not stored.
    #[error("store I/O: {0}")]
    Commit(#[source] Arc<CommitFailure>),
}

/// Whether `put_agency` creates or replaces a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fails with `AlreadyExists` if the agency is registered.
    Create,
    /// Fails with `NotFound` if the agency is not registered.
    Update,
}

/// A message ready to be committed.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The record with its plain body; `send` seals the body and keeps it inline or writes it
    /// to the object directory.
    pub record: MessageRecord,
    /// The sender's idempotency key.
    pub client_message_id: String,
    /// SHA-256 of the request without its idempotency key.
    pub request_sha256: Vec<u8>,
    /// How the message relates to others, recorded in the same commit.
    pub links: Vec<Link>,
}

/// A relation of a new message to others, recorded with it so that threads, copies, notices
/// and consents can be found again.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// It answers this message (`in_reply_to`).
    ReplyTo(String),
    /// It carries this case reference.
    Case(String),
    /// It is a forwarded copy of this original.
    CopyOf(String),
    /// It is a retraction or correction notice about this original.
    NoticeAbout(String),
    /// It asks for or decides on `holder` passing `original` on to `agency`: the consent
    /// record of that triple becomes `record`.
    Consent {
        /// The originator's message.
        original: String,
        /// The agency that asks to pass it on.
        holder: String,
        /// The agency it would go to.
        agency: String,
        /// The request's state after this message.
        record: ConsentRecord,
    },
}

/// A committed send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The message id.
    pub message_id: String,
    /// When it was accepted, microseconds since the Unix epoch.
    pub accepted_at_micros: i64,
    /// Index of its MESSAGE_ACCEPTED audit entry.
    pub audit_index: u64,
    /// False when this answers a retry of an already committed request.
    pub created: bool,
}

/// A message's place in its topic's retention order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionEntry {
    /// The message.
    pub message_id: String,
    /// Where the backend resumes after it (opaque outside the backend).
    position: Vec<u8>,
}

/// An audit entry as the store appends it: the event, and the agencies it is filed under
/// (each can list the entries it is party to). Made from an `AuditEvent` by the audit module,
/// which says who the parties are.
#[derive(Debug, Clone)]
pub struct LogEntry {
    event: AuditEvent,
    parties: Vec<String>,
}

impl LogEntry {
    /// `event`, filed under each of `parties`.
    pub fn new(event: AuditEvent, parties: Vec<String>) -> LogEntry {
        LogEntry { event, parties }
    }

    /// Dates the entry at `micros` (a send's entry carries the message's acceptance time).
    fn set_time(&mut self, micros: i64) {
        self.event.time_unix_micros = micros;
    }
}
