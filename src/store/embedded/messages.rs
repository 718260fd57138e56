//! Messages in the store: committing a send (record, inbox entries, idempotency key, retention
//! entry and audit entry in one group), delivery states, reading records and bodies back
//! (sealed at rest, opened here), inbox ranges and watermarks, and erasure by retention.

use std::sync::Arc;

use super::writer::Op;
use super::{decode, encode, get_record, keys, SledStore, INLINE_BODY_MAX};
use crate::store::records::{DeliveryRecord, IdempotencyRecord, MessageRecord, SealedFields};
use crate::store::{
    Accepted, Link, LogEntry, NewMessage, Part, RetentionEntry, Sealed, StoreError,
};

/// Bytes sealing adds to a body (the Poly1305 tag).
const SEAL_OVERHEAD: usize = 16;

/// The original acceptance of an earlier send, given its idempotency record, if the request
/// digests match.
///
/// # Errors
/// `IdempotencyConflict` if the key was used for a different request.
pub(super) fn idempotent_answer(
    earlier: Option<IdempotencyRecord>,
    request_sha256: &[u8],
) -> Result<Option<Accepted>, StoreError> {
    let Some(existing) = earlier else {
        return Ok(None);
    };
    if existing.request_sha256 != request_sha256 {
        return Err(StoreError::IdempotencyConflict);
    }
    Ok(Some(Accepted {
        message_id: existing.message_id,
        accepted_at_micros: existing.accepted_at_micros,
        audit_index: existing.audit_index,
        created: false,
    }))
}

impl Link {
    /// The index entry that records this link of `message`.
    pub(super) fn entry(&self, message: &MessageRecord) -> (Vec<u8>, Vec<u8>) {
        let id = message.message_id.as_str();
        match self {
            Link::ReplyTo(parent) => (keys::reply(parent, &message.sender, id), Vec::new()),
            Link::Case(case_reference) => (keys::case_entry(case_reference, id), Vec::new()),
            Link::CopyOf(original) => (keys::copy(original, id), Vec::new()),
            Link::NoticeAbout(original) => (keys::notice(original, id), Vec::new()),
            Link::Consent {
                original,
                holder,
                agency,
                record,
            } => (keys::consent(original, holder, agency), encode(record)),
        }
    }
}

// === impl SledStore: messages ===

impl SledStore {
    /// Commits a message durably: its record, an inbox entry per recipient (each PENDING until a
    /// delivery record says otherwise) and its idempotency key, atomically. The body is sealed
    /// with the current data key; sealed, if larger than [`INLINE_BODY_MAX`], it is first written
    /// to its own fsynced file.
    ///
    /// A retry (same sender and `client_message_id`, same `request_sha256`) returns the original
    /// acceptance with `created == false` and writes nothing.
    ///
    /// # Errors
    /// `IdempotencyConflict` for the same key with another request; I/O and sled errors.
    pub(super) async fn send(
        &self,
        mut message: NewMessage,
        event: LogEntry,
    ) -> Result<Accepted, StoreError> {
        let id = message.record.message_id.clone();
        let fields = encode(&SealedFields::take(&mut message.record));
        let fields = self.data_keys.seal(&id, Part::Fields, fields)?;
        message.record.sealed_fields = fields.ciphertext;
        message.record.sealed_fields_nonce = fields.nonce;
        let body = std::mem::take(&mut message.record.body);
        let external = body.len() + SEAL_OVERHEAD > INLINE_BODY_MAX;
        let sealed = if external {
            // Sealing and writing megabytes would hold up a runtime thread.
            let (keys, objects, id) = (
                Arc::clone(&self.data_keys),
                self.objects.clone(),
                id.clone(),
            );
            tokio::task::spawn_blocking(move || -> Result<Sealed, StoreError> {
                let mut sealed = keys.seal(&id, Part::Body, body)?;
                objects.put(&id, &sealed.ciphertext)?;
                sealed.ciphertext = Vec::new();
                Ok(sealed)
            })
            .await
            .map_err(|_| StoreError::Closed)??
        } else {
            self.data_keys.seal(&id, Part::Body, body)?
        };
        message.record.body = sealed.ciphertext;
        message.record.body_key_id = sealed.key_id;
        message.record.body_nonce = sealed.nonce;
        message.record.body_external = external;
        let result = self
            .submit(|reply| Op::Send {
                message: Box::new(message),
                event: Box::new(event),
                reply,
            })
            .await;
        if external && !matches!(result, Ok(Accepted { created: true, .. })) {
            if let Err(e) = self.objects.remove(&id) {
                tracing::warn!(message_id = %id, error = %e, "cannot remove body of uncommitted send");
            }
        }
        result
    }

    /// The answer already given to this sender for this idempotency key and request, if the
    /// request was committed before. Lets a retry succeed even when the checks a new send
    /// would pass (recipients active, reply target readable) no longer hold.
    ///
    /// # Errors
    /// `IdempotencyConflict` if the key was used for a different request; sled errors.
    pub(super) fn earlier_send(
        &self,
        sender: &str,
        client_message_id: &str,
        request_sha256: &[u8],
    ) -> Result<Option<Accepted>, StoreError> {
        let key = keys::idempotency(sender, client_message_id);
        idempotent_answer(get_record(&self.db, &key)?, request_sha256)
    }

    /// Moves a recipient's delivery state forward to `state` (never backward), records `event`
    /// in the audit log in the same batch, and returns the resulting record, once durable.
    ///
    /// # Errors
    /// `NotFound` if the agency is not a recipient of the message; I/O and sled errors.
    pub(super) async fn advance_delivery(
        &self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: LogEntry,
    ) -> Result<DeliveryRecord, StoreError> {
        let (message_id, agency) = (message_id.to_string(), agency.to_string());
        self.submit(|reply| Op::AdvanceDelivery {
            message_id,
            agency,
            state,
            event: Box::new(event),
            reply: Some(reply),
        })
        .await
    }

    /// Queues a move to `state` with its audit entry without waiting for durability (used when
    /// a message is streamed: DELIVERED is informative, and a crash before the next flush only
    /// understates delivery). Waits only while the writer's queue is full.
    ///
    /// # Errors
    /// `Closed` when the store is shutting down.
    pub(super) async fn advance_delivery_later(
        &self,
        message_id: &str,
        agency: &str,
        state: i32,
        event: LogEntry,
    ) -> Result<(), StoreError> {
        let op = Op::AdvanceDelivery {
            message_id: message_id.to_string(),
            agency: agency.to_string(),
            state,
            event: Box::new(event),
            reply: None,
        };
        self.ops.send(op).await.map_err(|_| StoreError::Closed)
    }

    /// Up to `limit` messages of `topic` accepted before `before_micros`, oldest first, starting
    /// after `after` (a position returned earlier) or at the oldest.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn accepted_before(
        &self,
        topic: i32,
        before_micros: i64,
        after: Option<&RetentionEntry>,
        limit: usize,
    ) -> Result<Vec<RetentionEntry>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(after) => Bound::Excluded(after.position.clone()),
            None => Bound::Included(keys::retention_prefix(topic)),
        };
        let end = Bound::Excluded(keys::retention(topic, before_micros, ""));
        self.db
            .range::<Vec<u8>, _>((start, end))
            .take(limit)
            .map(|item| {
                let (key, _) = item?;
                Ok(RetentionEntry {
                    message_id: keys::retention_message_id(&key)
                        .unwrap_or_default()
                        .to_string(),
                    position: key.to_vec(),
                })
            })
            .collect()
    }

    /// Erases messages durably, each with its audit entry (see `records::keys` for what stays):
    /// the record with its inline body, delivery records, retention entry, then the body file.
    /// Messages already gone are skipped. Returns how many were erased.
    ///
    /// # Errors
    /// I/O and sled errors; `Closed` when shutting down. A body file that cannot be removed is
    /// logged and removed at the next start.
    pub(super) async fn erase(
        &self,
        messages: Vec<(String, LogEntry)>,
    ) -> Result<usize, StoreError> {
        let erased = self.submit(|reply| Op::Erase { messages, reply }).await?;
        let files: Vec<String> = erased
            .iter()
            .filter(|record| record.body_external)
            .map(|record| record.message_id.clone())
            .collect();
        if !files.is_empty() {
            let objects = self.objects.clone();
            let removed = tokio::task::spawn_blocking(move || {
                files.iter().try_for_each(|id| objects.remove(id))
            })
            .await
            .map_err(|_| StoreError::Closed)?;
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove the body file of an erased message; the next start removes it");
            }
        }
        Ok(erased.len())
    }

    /// A message record, if it exists, with its sealed fields opened (its body stays sealed:
    /// see `body`).
    ///
    /// # Errors
    /// sled errors, corrupt records, sealed fields that do not open.
    pub(super) fn message(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let key = keys::message(message_id);
        let Some(mut record) = get_record::<MessageRecord>(&self.db, &key)? else {
            return Ok(None);
        };
        let sealed = Sealed {
            key_id: record.body_key_id.clone(),
            nonce: std::mem::take(&mut record.sealed_fields_nonce),
            ciphertext: std::mem::take(&mut record.sealed_fields),
        };
        let fields = self.data_keys.open(message_id, Part::Fields, sealed)?;
        decode::<SealedFields>(&key, &fields)?.restore(&mut record);
        Ok(Some(record))
    }

    /// The plain body of a message: read from its own file when it is external, then opened
    /// with the data key that sealed it.
    ///
    /// # Errors
    /// `NotFound` when the message was erased (retention) after `record` was read; the body
    /// file cannot be read; the key is not in the keyring; the sealed body was altered.
    pub(super) fn body(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
        let erased = || -> Result<bool, StoreError> {
            Ok(self.db.get(keys::message(&record.message_id))?.is_none())
        };
        let ciphertext = if record.body_external {
            match self.objects.get(&record.message_id) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && erased()? => {
                    return Err(StoreError::NotFound)
                }
                read => read?,
            }
        } else if record.body_file_len > 0 {
            self.tables
                .bodies
                .read(record.body_offset, record.body_file_len)?
        } else {
            record.body.clone()
        };
        let sealed = Sealed {
            key_id: record.body_key_id.clone(),
            nonce: record.body_nonce.clone(),
            ciphertext,
        };
        match self.data_keys.open(&record.message_id, Part::Body, sealed) {
            // An erasure overwrote it with zeros after `record` was read.
            Err(_) if record.body_file_len > 0 && erased()? => Err(StoreError::NotFound),
            opened => Ok(opened?),
        }
    }

    /// The delivery record of each recipient of `message` (as [`Store::message`] read it),
    /// ordered by agency id.
    ///
    /// # Errors
    /// sled errors and corrupt records.
    pub(super) fn deliveries(
        &self,
        message: &MessageRecord,
    ) -> Result<Vec<(String, DeliveryRecord)>, StoreError> {
        let mut deliveries: Vec<_> = message
            .recipients
            .iter()
            .map(|agency| {
                let key = keys::delivery(&message.message_id, agency);
                let record =
                    get_record(&self.db, &key)?.unwrap_or_else(|| DeliveryRecord::pending(message));
                Ok((agency.clone(), record))
            })
            .collect::<Result<_, StoreError>>()?;
        deliveries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(deliveries)
    }

    /// Up to `limit` inbox entries of `agency` with `after < sequence <= up_to`, in order.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn inbox_range(
        &self,
        agency: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        let start = keys::inbox(agency, after.saturating_add(1));
        let end = keys::inbox(agency, up_to);
        self.db
            .range(start..=end)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let sequence = keys::trailing_u64(&key).unwrap_or_default();
                Ok((sequence, String::from_utf8_lossy(&value).into_owned()))
            })
            .collect()
    }

    /// The delivery record of `agency` for `message_id`, if its state moved past PENDING.
    ///
    /// # Errors
    /// sled errors and a corrupt record.
    pub(super) fn delivery(
        &self,
        message_id: &str,
        agency: &str,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        get_record(&self.db, &keys::delivery(message_id, agency))
    }

    /// The replies to `message_id`: (replying agency, reply id), in key order.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn replies(&self, message_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .scan(&keys::replies_prefix(message_id))?
            .into_iter()
            .filter_map(|(rest, _)| {
                let rest = String::from_utf8_lossy(&rest).into_owned();
                rest.split_once('/')
                    .map(|(agency, reply)| (agency.to_string(), reply.to_string()))
            })
            .collect())
    }

    /// The ids of the messages carrying `case_reference`, in id order.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn case_messages(&self, case_reference: &str) -> Result<Vec<String>, StoreError> {
        self.scan_ids(&keys::case_prefix(case_reference))
    }

    /// The ids of the forwarded copies of `original`.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn copies(&self, original: &str) -> Result<Vec<String>, StoreError> {
        self.scan_ids(&keys::copies_prefix(original))
    }

    /// The ids of the retraction and correction notices about `original`.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn notices(&self, original: &str) -> Result<Vec<String>, StoreError> {
        self.scan_ids(&keys::notices_prefix(original))
    }

    /// The rest of each key under `prefix`, as a message id.
    pub(super) fn scan_ids(&self, prefix: &[u8]) -> Result<Vec<String>, StoreError> {
        Ok(self
            .scan(prefix)?
            .into_iter()
            .map(|(id, _)| String::from_utf8_lossy(&id).into_owned())
            .collect())
    }
}
