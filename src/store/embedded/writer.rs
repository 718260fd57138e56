//! The single writer: sequences every write and collects the writes of a group of operations
//! (including the audit entries they record) into one journal record, which it appends to the
//! commit journal and `fdatasync`s, then applies to sled; it answers only after that.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use super::bodies;
use super::journal::{self, Journal};
use super::log::{self, LogState};
use super::{
    decode, encode, idempotent_answer, keys, Inboxes, IndexEntry, Tables, MAX_GROUP_COMMIT,
};
use crate::store::records::{AgencyRecord, DeliveryRecord, IdempotencyRecord, MessageRecord};
use crate::store::{Accepted, LogEntry, NewMessage, PutMode, StoreError};
use crate::time::now_micros;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued write.
pub(super) enum Op {
    Send {
        message: Box<NewMessage>,
        event: Box<LogEntry>,
        reply: Reply<Accepted>,
    },
    AdvanceDelivery {
        message_id: String,
        agency: String,
        state: i32,
        event: Box<LogEntry>,
        reply: Option<Reply<DeliveryRecord>>,
    },
    PutAgency {
        record: AgencyRecord,
        mode: PutMode,
        event: Box<LogEntry>,
        reply: Reply<AgencyRecord>,
    },
    Audit {
        entries: Vec<LogEntry>,
        reply: Option<Reply<Vec<u64>>>,
    },
    Checkpoint {
        size: u64,
        note: String,
        reply: Reply<()>,
    },
    Index {
        puts: Vec<IndexEntry>,
        removes: Vec<Vec<u8>>,
        events: Vec<LogEntry>,
        reply: Reply<()>,
    },
    Erase {
        messages: Vec<(String, LogEntry)>,
        reply: Reply<Vec<MessageRecord>>,
    },
    Close,
}

/// An answer held back until the group it belongs to is durable.
enum Pending {
    Send(Reply<Accepted>, Result<Accepted, StoreError>),
    Delivery(
        Option<Reply<DeliveryRecord>>,
        Result<DeliveryRecord, StoreError>,
    ),
    Agency(Reply<AgencyRecord>, Result<AgencyRecord, StoreError>),
    Audit(Option<Reply<Vec<u64>>>, Result<Vec<u64>, StoreError>),
    Checkpoint(Reply<()>, Result<(), StoreError>),
    Index(Reply<()>, Result<(), StoreError>),
    Erase(
        Reply<Vec<MessageRecord>>,
        Result<Vec<MessageRecord>, StoreError>,
    ),
}

/// The writes of the operations of one group commit: one journal record, then sled's. Later
/// operations of the group read earlier ones' writes through it.
#[derive(Default)]
struct Group {
    writes: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Group {
    fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// The value of `key` as this group leaves it, else as stored.
    fn get(&self, db: &sled::Db, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(db.get(key)?.map(|value| value.to_vec())),
        }
    }

    fn get_record<T: prost::Message + Default>(
        &self,
        db: &sled::Db,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(db, key)?
            .map(|value| decode(key, &value))
            .transpose()
    }
}

/// Flushes sled and the audit files in the background after the writer moved to a new journal
/// file, removes the journal files they now hold, and prepares the file after the new one.
pub(super) struct Flusher {
    tables: Arc<Tables>,
    requests: Option<std::sync::mpsc::Sender<u64>>,
    busy: Arc<AtomicBool>,
    /// The latest generation prepared, plus one (0: none yet).
    prepared: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the flusher thread for `tables` and the journal in `dir`, whose current
    /// generation is `current`; it prepares the next one at once.
    pub(super) fn spawn(
        tables: Arc<Tables>,
        dir: PathBuf,
        current: u64,
    ) -> std::io::Result<Flusher> {
        let (requests, received) = std::sync::mpsc::channel::<u64>();
        let busy = Arc::new(AtomicBool::new(true));
        let prepared = Arc::new(AtomicU64::new(0));
        let thread = {
            let flushed_tables = Arc::clone(&tables);
            let (busy, prepared) = (Arc::clone(&busy), Arc::clone(&prepared));
            std::thread::Builder::new()
                .name("puente-store-flusher".into())
                .spawn(move || {
                    let mut next = current;
                    loop {
                        match journal::prepare(&dir, next + 1) {
                            Ok(()) => prepared.store(next + 2, Ordering::Release),
                            Err(e) => tracing::warn!(error = %e, "cannot prepare the next journal file; the writer appends to the current one"),
                        }
                        busy.store(false, Ordering::Release);
                        let Ok(generation) = received.recv() else {
                            return;
                        };
                        let flushed = flushed_tables
                            .flush()
                            .and_then(|()| journal::remove_before(&dir, generation));
                        if let Err(e) = flushed {
                            tracing::warn!(error = %e, "background sled flush failed; the journal is kept and will be replayed at the next start");
                        }
                        next = generation;
                    }
                })?
        };
        Ok(Flusher {
            tables,
            requests: Some(requests),
            busy,
            prepared,
            thread: Some(thread),
        })
    }

    fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// The latest journal generation prepared ahead of use.
    fn prepared(&self) -> Option<u64> {
        self.prepared.load(Ordering::Acquire).checked_sub(1)
    }

    /// Has sled and the audit files flushed, then the journal files before `generation`
    /// removed.
    fn flush_before(&self, generation: u64) {
        if let Some(requests) = &self.requests {
            self.busy.store(true, Ordering::Release);
            if requests.send(generation).is_err() {
                self.busy.store(false, Ordering::Release);
            }
        }
    }

    /// Waits for a flush in progress and stops the thread.
    fn finish(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Makes the tables durable, on the calling thread.
    fn flush_tables(&self) -> std::io::Result<()> {
        self.tables.flush()
    }
}

/// Why a group commit failed: every write of the group fails with it.
#[derive(Debug, thiserror::Error)]
pub enum CommitFailure {
    /// The journal record could not be written; undone, unless the store stopped for it.
    #[error("cannot write the commit journal: {0}")]
    JournalWrite(#[source] std::io::Error),
    /// The journal record was written but could not be synced.
    #[error("the commit journal could not be synced ({0}); restart the server to recover")]
    JournalSync(#[source] std::io::Error),
    /// sled or an audit file refused a write of a journaled group.
    #[error(
        "a journaled write could not be applied ({0}); restart the server to replay the journal"
    )]
    Apply(#[source] super::ApplyError),
}

/// What the writer assigns as it goes, saved at the start of a group so that a group whose
/// journal write fails leaves no trace.
#[derive(Clone)]
struct Assigned {
    sequences: HashMap<String, u64>,
    log: LogState,
    bodies_end: u64,
}

pub(super) struct Writer {
    tables: Arc<Tables>,
    group: Group,
    journal: Journal,
    flusher: Flusher,
    /// Set once the store cannot go on without a restart: a journaled group could not be
    /// applied to sled (sled and the journal disagree until a restart replays the journal), or
    /// a failed journal write could not be undone. Every later write fails.
    failed: Option<Arc<CommitFailure>>,
    /// Tells the server about `failed`, so it can stop and be restarted.
    failure: watch::Sender<Option<String>>,
    inboxes: Arc<Inboxes>,
    /// Last assigned inbox sequence per agency (assigned, maybe not yet durable).
    sequences: HashMap<String, u64>,
    log: LogState,
    /// Where the next body goes in the bodies file (assigned, maybe not yet durable).
    bodies_end: u64,
    /// The audit log size that is on stable storage, for readers.
    durable_log_size: Arc<AtomicU64>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)] // each is a distinct piece of the writer's state
    pub(super) fn new(
        tables: Arc<Tables>,
        journal: Journal,
        flusher: Flusher,
        inboxes: Arc<Inboxes>,
        sequences: HashMap<String, u64>,
        log: LogState,
        durable_log_size: Arc<AtomicU64>,
        failure: watch::Sender<Option<String>>,
    ) -> std::io::Result<Writer> {
        Ok(Writer {
            bodies_end: tables.bodies.end()?,
            tables,
            group: Group::default(),
            journal,
            flusher,
            failed: None,
            failure,
            inboxes,
            sequences,
            log,
            durable_log_size,
        })
    }

    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Op>) {
        let mut pending = Vec::with_capacity(MAX_GROUP_COMMIT);
        let mut advanced: HashMap<String, u64> = HashMap::new();
        let mut closing = false;
        while !closing {
            let Some(first) = queue.blocking_recv() else {
                break;
            };
            let saved = Assigned {
                sequences: self.sequences.clone(),
                log: self.log.clone(),
                bodies_end: self.bodies_end,
            };
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match self.apply(op, &mut advanced) {
                    Some(answer) => pending.push(answer),
                    None => closing = true,
                }
                if closing || pending.len() >= MAX_GROUP_COMMIT {
                    break;
                }
                next = queue.try_recv().ok();
            }
            let flush_started = std::time::Instant::now();
            let durable = self.commit_group();
            if durable.is_err() {
                self.sequences = saved.sequences;
                self.log = saved.log;
                self.bodies_end = saved.bodies_end;
                advanced.clear();
            }
            super::stats::record_group(pending.len(), flush_started.elapsed().as_nanos() as u64);
            if let Err(e) = &durable {
                tracing::error!(error = %e, "group commit failed; failing the whole group");
            } else {
                self.durable_log_size
                    .store(self.log.size, Ordering::Release);
                for (agency, sequence) in advanced.drain() {
                    self.inboxes.publish(&agency, sequence);
                }
            }
            for answer in pending.drain(..) {
                answer.finish(&durable);
            }
        }
        self.flusher.finish();
        if self.failed.is_none() {
            // Also removes the prepared next file: the next start makes its own.
            // Everything is in sled: a clean stop leaves no journal to replay.
            if let Err(e) = self
                .flusher
                .flush_tables()
                .and_then(|()| journal::remove_before(self.journal.dir(), u64::MAX))
            {
                tracing::error!(error = %e, "final store flush failed; the journal will be replayed at the next start");
            }
        }
    }

    /// Stops every later write with `failure`: sled and the journal may disagree until a restart
    /// replays the journal. Returns the failure.
    fn fail(&mut self, failure: CommitFailure) -> Arc<CommitFailure> {
        let failure = Arc::new(failure);
        self.failed = Some(Arc::clone(&failure));
        self.failure.send_replace(Some(failure.to_string()));
        failure
    }

    /// Makes the group durable in the journal, then applies it to sled, and moves to the next
    /// journal file (with a background sled flush) when the current one is full.
    fn commit_group(&mut self) -> Result<(), Arc<CommitFailure>> {
        let group = std::mem::take(&mut self.group);
        if let Some(failure) = &self.failed {
            return Err(Arc::clone(failure));
        }
        if group.writes.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.journal.write(&group.writes) {
            let failure = CommitFailure::JournalWrite(e);
            // A write that was undone leaves the journal as it was: the next group may succeed
            // (e.g. once space is freed). One that could not be undone stops the store.
            return Err(if self.journal.damaged() {
                self.fail(failure)
            } else {
                Arc::new(failure)
            });
        }
        if let Err(e) = self.journal.sync() {
            return Err(self.fail(CommitFailure::JournalSync(e)));
        }
        // Only now is the group applied to sled, key by key (much cheaper than one sled batch;
        // atomicity comes from the journal). Whatever part of it sled may persist is in a
        // durable journal record that a start after a crash replays in full; readers see it
        // only once the inbox watermarks and log size move, after the whole group.
        for (key, value) in group.writes {
            if let Err(e) = self.tables.apply(key, value) {
                return Err(self.fail(CommitFailure::Apply(e)));
            }
        }
        if self.journal.wants_rotation(self.flusher.prepared()) && !self.flusher.busy() {
            match self.journal.rotate() {
                Ok(generation) => self.flusher.flush_before(generation),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the next journal file; writing on in the current one")
                }
            }
        }
        Ok(())
    }

    /// Applies one operation's batch; `None` for `Op::Close`.
    fn apply(&mut self, op: Op, advanced: &mut HashMap<String, u64>) -> Option<Pending> {
        Some(match op {
            Op::Send {
                message,
                event,
                reply,
            } => Pending::Send(reply, self.send(*message, *event, advanced)),
            Op::AdvanceDelivery {
                message_id,
                agency,
                state,
                event,
                reply,
            } => Pending::Delivery(
                reply,
                self.advance_delivery(&message_id, &agency, state, *event),
            ),
            Op::PutAgency {
                record,
                mode,
                event,
                reply,
            } => Pending::Agency(reply, self.put_agency(record, mode, *event)),
            Op::Audit { entries, reply } => Pending::Audit(reply, Ok(self.append_audit(entries))),
            Op::Checkpoint { size, note, reply } => {
                self.group
                    .insert(log::checkpoint_key(size), note.into_bytes());
                Pending::Checkpoint(reply, Ok(()))
            }
            Op::Index {
                puts,
                removes,
                events,
                reply,
            } => Pending::Index(reply, self.index(puts, removes, events)),
            Op::Erase { messages, reply } => Pending::Erase(reply, self.erase(messages)),
            Op::Close => return None,
        })
    }

    /// Adds audit entries to the group and returns their indices.
    fn append_audit(&mut self, entries: Vec<LogEntry>) -> Vec<u64> {
        let group = &mut self.group;
        self.log
            .append(entries, |key, value| group.insert(key, value))
    }

    fn index(
        &mut self,
        puts: Vec<IndexEntry>,
        removes: Vec<Vec<u8>>,
        events: Vec<LogEntry>,
    ) -> Result<(), StoreError> {
        self.append_audit(events);
        for key in removes {
            self.group.remove(key);
        }
        for (key, value) in puts {
            self.group.insert(key, value);
        }
        Ok(())
    }

    /// Commits a message: its record, index entries, idempotency key and one inbox entry per
    /// recipient. A recipient without a delivery record is PENDING since the message's creation.
    fn send(
        &mut self,
        message: NewMessage,
        mut event: LogEntry,
        advanced: &mut HashMap<String, u64>,
    ) -> Result<Accepted, StoreError> {
        let NewMessage {
            mut record,
            client_message_id,
            request_sha256,
            links,
        } = message;
        let idempotency_key = keys::idempotency(&record.sender, &client_message_id);
        let earlier = self
            .group
            .get_record::<IdempotencyRecord>(&self.tables.db, &idempotency_key)?;
        if let Some(original) = idempotent_answer(earlier, &request_sha256)? {
            return Ok(original);
        }
        event.set_time(record.created_at_micros);
        if !record.body_external {
            // The sealed body goes to the bodies file; the record keeps where.
            let body = std::mem::take(&mut record.body);
            record.body_offset = self.bodies_end;
            record.body_file_len = body.len() as u64;
            self.bodies_end += record.body_file_len;
            self.group.insert(bodies::key(record.body_offset), body);
        }
        let audit_index = self.append_audit(vec![event])[0];
        for agency in &record.recipients {
            let sequence = self.sequences.entry(agency.clone()).or_default();
            *sequence += 1;
            self.group
                .insert(keys::inbox(agency, *sequence), record.message_id.as_bytes());
            advanced.insert(agency.clone(), *sequence);
        }
        for link in &links {
            let (key, value) = link.entry(&record);
            self.group.insert(key, value);
        }
        self.group.insert(
            idempotency_key,
            encode(&IdempotencyRecord {
                message_id: record.message_id.clone(),
                request_sha256,
                accepted_at_micros: record.created_at_micros,
                audit_index,
            }),
        );
        self.group.insert(
            keys::retention(record.topic, record.created_at_micros, &record.message_id),
            [],
        );
        self.group
            .insert(keys::message(&record.message_id), encode(&record));
        Ok(Accepted {
            message_id: record.message_id,
            accepted_at_micros: record.created_at_micros,
            audit_index,
            created: true,
        })
    }

    /// Erases messages: record, delivery records and retention entry go, each with its audit
    /// entry; inbox entries, idempotency keys and thread indexes stay (ids only, no content).
    /// Returns the records erased; a message already gone is skipped without an entry.
    fn erase(
        &mut self,
        messages: Vec<(String, LogEntry)>,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let mut erased = Vec::with_capacity(messages.len());
        for (message_id, event) in messages {
            let key = keys::message(&message_id);
            let Some(record) = self
                .group
                .get_record::<MessageRecord>(&self.tables.db, &key)?
            else {
                continue;
            };
            for agency in &record.recipients {
                self.group.remove(keys::delivery(&message_id, agency));
            }
            self.group.remove(keys::retention(
                record.topic,
                record.created_at_micros,
                &message_id,
            ));
            self.group.remove(key);
            if record.body_file_len > 0 {
                let zeros = vec![0u8; usize::try_from(record.body_file_len).unwrap_or_default()];
                self.group.insert(bodies::key(record.body_offset), zeros);
            }
            self.append_audit(vec![event]);
            erased.push(record);
        }
        Ok(erased)
    }

    fn advance_delivery(
        &mut self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: LogEntry,
    ) -> Result<DeliveryRecord, StoreError> {
        let key = keys::delivery(message_id, agency);
        let current = match self
            .group
            .get_record::<DeliveryRecord>(&self.tables.db, &key)?
        {
            Some(current) => current,
            None => {
                let message = self
                    .group
                    .get_record::<MessageRecord>(&self.tables.db, &keys::message(message_id))?
                    .ok_or(StoreError::NotFound)?;
                if !message.recipients.iter().any(|r| r == agency) {
                    return Err(StoreError::NotFound);
                }
                DeliveryRecord::pending(&message)
            }
        };
        self.append_audit(vec![event]);
        if state <= current.state {
            return Ok(current);
        }
        let next = DeliveryRecord {
            state,
            updated_at_micros: now_micros(),
        };
        self.group.insert(key, encode(&next));
        Ok(next)
    }

    fn put_agency(
        &mut self,
        mut record: AgencyRecord,
        mode: PutMode,
        event: LogEntry,
    ) -> Result<AgencyRecord, StoreError> {
        let key = keys::agency(&record.agency_id);
        let existing = self
            .group
            .get_record::<AgencyRecord>(&self.tables.db, &key)?;
        match (mode, existing) {
            (PutMode::Create, Some(_)) => return Err(StoreError::AlreadyExists),
            (PutMode::Update, None) => return Err(StoreError::NotFound),
            (PutMode::Update, Some(old)) => record.created_at_micros = old.created_at_micros,
            (PutMode::Create, None) => {
                self.sequences.entry(record.agency_id.clone()).or_insert(0);
            }
        }
        self.append_audit(vec![event]);
        self.group.insert(key, encode(&record));
        Ok(record)
    }
}

impl Pending {
    fn finish(self, durable: &Result<(), Arc<CommitFailure>>) {
        fn settle<T>(
            result: Result<T, StoreError>,
            durable: &Result<(), Arc<CommitFailure>>,
        ) -> Result<T, StoreError> {
            match durable {
                Ok(()) => result,
                Err(failure) => Err(StoreError::Commit(Arc::clone(failure))),
            }
        }
        fn answer<T>(
            reply: Option<Reply<T>>,
            result: Result<T, StoreError>,
            durable: &Result<(), Arc<CommitFailure>>,
        ) {
            // A caller that went away no longer needs the answer; the write stands.
            if let Some(reply) = reply {
                let _ = reply.send(settle(result, durable));
            }
        }
        match self {
            Pending::Send(reply, result) => answer(Some(reply), result, durable),
            Pending::Delivery(reply, result) => answer(reply, result, durable),
            Pending::Agency(reply, result) => answer(Some(reply), result, durable),
            Pending::Audit(reply, result) => answer(reply, result, durable),
            Pending::Checkpoint(reply, result) => answer(Some(reply), result, durable),
            Pending::Index(reply, result) => answer(Some(reply), result, durable),
            Pending::Erase(reply, result) => answer(Some(reply), result, durable),
        }
    }
}
