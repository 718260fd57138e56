//! The single writer: sequences every write, one atomic batch per operation (including the audit
//! entries that operation records), one flush and `fdatasync` per group of operations, answers
//! only after that.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::records::{keys, AgencyRecord, DeliveryRecord, IdempotencyRecord};
use super::{
    decode, encode, get_record, idempotent_answer, now_micros, Accepted, Inboxes, IndexEntry,
    NewMessage, PutMode, StoreError, MAX_GROUP_COMMIT,
};
use crate::audit::merkle::{self, Hash};
use crate::audit::parties;
use crate::pb::v1::{AuditEvent, DeliveryState};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued write.
pub(super) enum Op {
    Send {
        message: Box<NewMessage>,
        event: Box<AuditEvent>,
        reply: Reply<Accepted>,
    },
    AdvanceDelivery {
        message_id: String,
        agency: String,
        state: i32,
        event: Box<AuditEvent>,
        reply: Option<Reply<DeliveryRecord>>,
    },
    PutAgency {
        record: AgencyRecord,
        mode: PutMode,
        event: Box<AuditEvent>,
        reply: Reply<AgencyRecord>,
    },
    Audit {
        events: Vec<AuditEvent>,
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
        events: Vec<AuditEvent>,
        reply: Reply<()>,
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
}

/// The writer's view of the audit log: assigned (maybe not yet durable) size, the right edge of
/// the Merkle tree, and the last timestamp so times never decrease along the log.
#[derive(Debug, Clone, Default)]
pub(super) struct LogState {
    pub(super) size: u64,
    pub(super) frontier: Vec<(u8, Hash)>,
    pub(super) last_time: i64,
}

pub(super) struct Writer {
    db: sled::Db,
    db_file: File,
    inboxes: Arc<Inboxes>,
    /// Last assigned inbox sequence per agency (assigned, maybe not yet durable).
    sequences: HashMap<String, u64>,
    log: LogState,
    /// The audit log size that is on stable storage, for readers.
    durable_log_size: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn new(
        db: sled::Db,
        db_file: File,
        inboxes: Arc<Inboxes>,
        sequences: HashMap<String, u64>,
        log: LogState,
        durable_log_size: Arc<AtomicU64>,
    ) -> Writer {
        Writer {
            db,
            db_file,
            inboxes,
            sequences,
            log,
            durable_log_size,
        }
    }

    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Op>) {
        let mut pending = Vec::with_capacity(MAX_GROUP_COMMIT);
        let mut advanced: HashMap<String, u64> = HashMap::new();
        let mut closing = false;
        while !closing {
            let Some(first) = queue.blocking_recv() else {
                break;
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
            let durable = self.make_durable();
            super::stats::record_group(pending.len(), flush_started.elapsed().as_nanos() as u64);
            if let Err(e) = &durable {
                tracing::error!(error = %e, "store flush failed; failing the whole group");
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
        if let Err(e) = self.make_durable() {
            tracing::error!(error = %e, "final store flush failed");
        }
    }

    fn make_durable(&self) -> Result<(), String> {
        self.db.flush().map_err(|e| e.to_string())?;
        self.db_file.sync_data().map_err(|e| e.to_string())
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
            Op::Audit { events, reply } => Pending::Audit(reply, self.audit(events)),
            Op::Checkpoint { size, note, reply } => Pending::Checkpoint(
                reply,
                self.db
                    .insert(keys::checkpoint(size), note.as_bytes())
                    .map(|_| ())
                    .map_err(StoreError::from),
            ),
            Op::Index {
                puts,
                removes,
                events,
                reply,
            } => Pending::Index(reply, self.index(puts, removes, events)),
            Op::Close => return None,
        })
    }

    /// Adds audit entries to `batch`, advancing `log` (a scratch copy until the batch applies).
    /// Returns their indices.
    fn append_audit(
        batch: &mut sled::Batch,
        log: &mut LogState,
        events: Vec<AuditEvent>,
    ) -> Vec<u64> {
        let mut indices = Vec::with_capacity(events.len());
        for mut event in events {
            log.last_time = log.last_time.max(event.time_unix_micros).max(now_micros());
            event.time_unix_micros = log.last_time;
            event.version = crate::audit::EVENT_VERSION;
            let leaf = event.encode_to_vec();
            let index = log.size;
            for (level, node, hash) in
                merkle::append(&mut log.frontier, index, merkle::hash_leaf(&leaf))
            {
                batch.insert(keys::audit_hash(level, node), hash.to_vec());
            }
            for party in parties(&event) {
                batch.insert(keys::audit_party(party, index), &[] as &[u8]);
            }
            batch.insert(keys::audit_leaf(index), leaf);
            log.size += 1;
            indices.push(index);
        }
        indices
    }

    /// Applies `batch` and, once it is applied, adopts the advanced log state.
    fn commit(&mut self, batch: sled::Batch, log: LogState) -> Result<(), StoreError> {
        self.db.apply_batch(batch)?;
        self.log = log;
        Ok(())
    }

    fn index(
        &mut self,
        puts: Vec<IndexEntry>,
        removes: Vec<Vec<u8>>,
        events: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut log = self.log.clone();
        Self::append_audit(&mut batch, &mut log, events);
        for key in removes {
            batch.remove(key);
        }
        for (key, value) in puts {
            batch.insert(key, value);
        }
        self.commit(batch, log)
    }

    fn audit(&mut self, events: Vec<AuditEvent>) -> Result<Vec<u64>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut log = self.log.clone();
        let indices = Self::append_audit(&mut batch, &mut log, events);
        self.commit(batch, log)?;
        Ok(indices)
    }

    fn send(
        &mut self,
        message: NewMessage,
        mut event: AuditEvent,
        advanced: &mut HashMap<String, u64>,
    ) -> Result<Accepted, StoreError> {
        let record = &message.record;
        if let Some(original) = idempotent_answer(
            &self.db,
            &record.sender,
            &message.client_message_id,
            &message.request_sha256,
        )? {
            return Ok(original);
        }
        let mut batch = sled::Batch::default();
        let mut log = self.log.clone();
        event.time_unix_micros = record.created_at_micros;
        let audit_index = Self::append_audit(&mut batch, &mut log, vec![event])[0];
        batch.insert(keys::message(&record.message_id), encode(record));
        for (key, value) in &message.index_entries {
            batch.insert(key.as_slice(), value.as_slice());
        }
        batch.insert(
            keys::idempotency(&record.sender, &message.client_message_id),
            encode(&IdempotencyRecord {
                message_id: record.message_id.clone(),
                request_sha256: message.request_sha256.clone(),
                accepted_at_micros: record.created_at_micros,
                audit_index,
            }),
        );
        let pending = encode(&DeliveryRecord {
            state: DeliveryState::Pending as i32,
            updated_at_micros: record.created_at_micros,
        });
        let mut assigned = Vec::with_capacity(record.recipients.len());
        for agency in &record.recipients {
            let sequence = self.sequences.get(agency).copied().unwrap_or_default() + 1;
            batch.insert(keys::inbox(agency, sequence), record.message_id.as_bytes());
            batch.insert(keys::delivery(&record.message_id, agency), pending.clone());
            assigned.push((agency.clone(), sequence));
        }
        self.commit(batch, log)?;
        for (agency, sequence) in assigned {
            self.sequences.insert(agency.clone(), sequence);
            advanced.insert(agency, sequence);
        }
        Ok(Accepted {
            message_id: record.message_id.clone(),
            accepted_at_micros: record.created_at_micros,
            audit_index,
            created: true,
        })
    }

    fn advance_delivery(
        &mut self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: AuditEvent,
    ) -> Result<DeliveryRecord, StoreError> {
        let key = keys::delivery(message_id, agency);
        let current: DeliveryRecord = get_record(&self.db, &key)?.ok_or(StoreError::NotFound)?;
        let mut batch = sled::Batch::default();
        let mut log = self.log.clone();
        Self::append_audit(&mut batch, &mut log, vec![event]);
        let result = if state > current.state {
            let next = DeliveryRecord {
                state,
                updated_at_micros: now_micros(),
            };
            batch.insert(key, encode(&next));
            next
        } else {
            current
        };
        self.commit(batch, log)?;
        Ok(result)
    }

    fn put_agency(
        &mut self,
        mut record: AgencyRecord,
        mode: PutMode,
        event: AuditEvent,
    ) -> Result<AgencyRecord, StoreError> {
        let key = keys::agency(&record.agency_id);
        let existing: Option<AgencyRecord> = match self.db.get(&key)? {
            Some(value) => Some(decode(&key, &value)?),
            None => None,
        };
        match (mode, existing) {
            (PutMode::Create, Some(_)) => return Err(StoreError::AlreadyExists),
            (PutMode::Update, None) => return Err(StoreError::NotFound),
            (PutMode::Update, Some(old)) => record.created_at_micros = old.created_at_micros,
            (PutMode::Create, None) => {
                self.sequences.entry(record.agency_id.clone()).or_insert(0);
            }
        }
        let mut batch = sled::Batch::default();
        let mut log = self.log.clone();
        Self::append_audit(&mut batch, &mut log, vec![event]);
        batch.insert(key, encode(&record));
        self.commit(batch, log)?;
        Ok(record)
    }
}

impl Pending {
    fn finish(self, durable: &Result<(), String>) {
        fn settle<T>(
            result: Result<T, StoreError>,
            durable: &Result<(), String>,
        ) -> Result<T, StoreError> {
            match durable {
                Ok(()) => result,
                Err(e) => Err(StoreError::Io(std::io::Error::other(e.clone()))),
            }
        }
        fn answer<T>(
            reply: Option<Reply<T>>,
            result: Result<T, StoreError>,
            durable: &Result<(), String>,
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
        }
    }
}
