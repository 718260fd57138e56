//! The single writer: sequences every write, one atomic batch per operation, one flush and
//! `fdatasync` per group of operations, answers only after that.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::records::{keys, AgencyRecord, DeliveryRecord, IdempotencyRecord};
use super::{
    decode, encode, get_record, idempotent_answer, Accepted, Inboxes, NewMessage, PutMode,
    StoreError, MAX_GROUP_COMMIT,
};
use crate::pb::v1::DeliveryState;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued write.
pub(super) enum Op {
    Send {
        message: Box<NewMessage>,
        reply: Reply<Accepted>,
    },
    AdvanceDelivery {
        message_id: String,
        agency: String,
        state: i32,
        reply: Option<Reply<DeliveryRecord>>,
    },
    PutAgency {
        record: AgencyRecord,
        mode: PutMode,
        reply: Reply<AgencyRecord>,
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
}

pub(super) struct Writer {
    db: sled::Db,
    db_file: File,
    inboxes: Arc<Inboxes>,
    /// Last assigned inbox sequence per agency (assigned, maybe not yet durable).
    sequences: HashMap<String, u64>,
}

impl Writer {
    pub(super) fn new(
        db: sled::Db,
        db_file: File,
        inboxes: Arc<Inboxes>,
        sequences: HashMap<String, u64>,
    ) -> Writer {
        Writer {
            db,
            db_file,
            inboxes,
            sequences,
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
            let durable = self.make_durable();
            if let Err(e) = &durable {
                tracing::error!(error = %e, "store flush failed; failing the whole group");
            } else {
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
            Op::Send { message, reply } => {
                let result = self.send(*message, advanced);
                Pending::Send(reply, result)
            }
            Op::AdvanceDelivery {
                message_id,
                agency,
                state,
                reply,
            } => Pending::Delivery(reply, self.advance_delivery(&message_id, &agency, state)),
            Op::PutAgency {
                record,
                mode,
                reply,
            } => Pending::Agency(reply, self.put_agency(record, mode)),
            Op::Close => return None,
        })
    }

    fn send(
        &mut self,
        message: NewMessage,
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
        batch.insert(keys::message(&record.message_id), encode(record));
        batch.insert(
            keys::idempotency(&record.sender, &message.client_message_id),
            encode(&IdempotencyRecord {
                message_id: record.message_id.clone(),
                request_sha256: message.request_sha256.clone(),
                accepted_at_micros: record.created_at_micros,
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
        self.db.apply_batch(batch)?;
        for (agency, sequence) in assigned {
            self.sequences.insert(agency.clone(), sequence);
            advanced.insert(agency, sequence);
        }
        Ok(Accepted {
            message_id: record.message_id.clone(),
            accepted_at_micros: record.created_at_micros,
            created: true,
        })
    }

    fn advance_delivery(
        &self,
        message_id: &str,
        agency: &str,
        state: i32,
    ) -> Result<DeliveryRecord, StoreError> {
        let key = keys::delivery(message_id, agency);
        let current: DeliveryRecord = get_record(&self.db, &key)?.ok_or(StoreError::NotFound)?;
        if state <= current.state {
            return Ok(current);
        }
        let next = DeliveryRecord {
            state,
            updated_at_micros: super::now_micros(),
        };
        self.db.insert(key, encode(&next))?;
        Ok(next)
    }

    fn put_agency(
        &mut self,
        mut record: AgencyRecord,
        mode: PutMode,
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
        self.db.insert(key, encode(&record))?;
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
        // A caller that went away no longer needs the answer; the write stands.
        match self {
            Pending::Send(reply, result) => {
                let _ = reply.send(settle(result, durable));
            }
            Pending::Delivery(Some(reply), result) => {
                let _ = reply.send(settle(result, durable));
            }
            Pending::Delivery(None, _) => {}
            Pending::Agency(reply, result) => {
                let _ = reply.send(settle(result, durable));
            }
        }
    }
}
