//! `puente.v1.ExchangeService`: agencies send, receive and acknowledge intelligence.
//!
//! The sender of a message is always the agency named by the caller's certificate. Handlers
//! validate requests into domain types ([`validate`]), expand recipients against the directory,
//! and hand one [`NewMessage`] to the store, which answers only once it is durable.

mod api;
pub mod content;
mod error;
mod handling;
mod inbox;
mod threads;
pub mod validate;

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message as _;
use tokio::sync::watch;
use tonic::{Request, Response};
use tracing::info;

use crate::admission::{ResponseBudget, ResponsePermit, StreamLimits};
use crate::audit;
use crate::config::Limits;
use crate::directory::Directory;
use crate::identity::{caller_of, AgencyId, Caller, IdentityError, Peer, Role};
use crate::metrics::Metrics;
use crate::pb::v1::MatchHitNotice;
use crate::pb::v1::{
    AcknowledgeMessageRequest, AcknowledgeMessageResponse, AuditAction, DeliveryState, Evaluation,
    ForwardHop, GetDeliveryStatusRequest, GetDeliveryStatusResponse, GetMessageRequest,
    GetMessageResponse, Message, NoticeStatus, RecipientStatus, SendMessageRequest,
    SendMessageResponse, StreamInboxRequest,
};
use crate::store::records::{DeliveryRecord, MessageRecord};
use crate::store::{Accepted, Link, NewMessage, Store, StoreError};
use crate::time::{now_micros, timestamp};
pub use error::{ExchangeError, PartyOnly};
use validate::{MessageId, Recipient};

/// The ExchangeService handlers and what they share.
#[derive(Clone)]
pub struct ExchangeService {
    store: Arc<dyn Store>,
    directory: Arc<Directory>,
    limits: Limits,
    streams: StreamLimits,
    /// Bytes of `GetMessage` answers not yet sent, per caller and in total.
    responses: Arc<ResponseBudget>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl ExchangeService {
    /// Serves agencies from `store` and `directory`; inbox streams end when `shutdown` turns true.
    /// Accepted and delivered messages and open streams are counted in `metrics`.
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<Directory>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> ExchangeService {
        ExchangeService {
            store,
            directory,
            streams: StreamLimits::new(&limits, Arc::clone(&metrics)),
            responses: ResponseBudget::new(&limits),
            limits,
            shutdown,
            metrics,
        }
    }

    /// The calling agency, which must be registered and active.
    fn require_agency<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<Caller>, AgencyId), ExchangeError> {
        let caller = caller_of(request)?;
        let Role::Agency(agency) = &caller.role else {
            return Err(ExchangeError::NotAnAgency(caller.id.to_string()));
        };
        let agency = agency.clone();
        self.check_active(&agency)?;
        Ok((caller, agency))
    }

    fn check_active(&self, agency: &AgencyId) -> Result<(), ExchangeError> {
        match self.directory.get(agency.as_str()) {
            None => Err(ExchangeError::UnregisteredAgency(agency.clone())),
            Some(_) if !self.directory.is_active(agency.as_str()) => {
                Err(ExchangeError::SuspendedAgency(agency.clone()))
            }
            Some(_) => Ok(()),
        }
    }

    /// A message the agency is party to (sender or recipient); `MessageNotFound` otherwise.
    async fn readable(
        &self,
        agency: &AgencyId,
        id: &MessageId,
    ) -> Result<MessageRecord, ExchangeError> {
        match self.store.message(id.as_str()).await? {
            Some(record) if is_party(&record, agency) => Ok(record),
            _ => Err(ExchangeError::MessageNotFound(id.clone())),
        }
    }

    /// Expands recipient entries into sorted agency ids, checking each named one.
    fn expand(
        &self,
        sender: &AgencyId,
        entries: &[Recipient],
    ) -> Result<Vec<String>, ExchangeError> {
        let mut expanded = BTreeSet::new();
        for (i, entry) in entries.iter().enumerate() {
            match entry {
                Recipient::Agency(id) => {
                    let field = || format!("recipients[{i}]");
                    if id == sender {
                        return Err(ExchangeError::invalid(
                            field(),
                            "an agency cannot send a message to itself",
                        ));
                    }
                    if self.directory.get(id.as_str()).is_none() {
                        return Err(ExchangeError::invalid(
                            field(),
                            format!("no agency {id} is registered; see ListAgencies"),
                        ));
                    }
                    if !self.directory.is_active(id.as_str()) {
                        return Err(ExchangeError::RecipientSuspended(id.to_string()));
                    }
                    expanded.insert(id.to_string());
                }
                Recipient::Region(region) => expanded.extend(self.directory.active(Some(*region))),
                Recipient::Everyone => expanded.extend(self.directory.active(None)),
            }
        }
        expanded.remove(sender.as_str());
        if expanded.is_empty() {
            return Err(ExchangeError::invalid(
                "recipients",
                "no active agency other than the sender matches",
            ));
        }
        if expanded.len() > self.limits.max_recipients {
            return Err(ExchangeError::invalid(
                "recipients",
                format!(
                    "expands to {} agencies; the limit is {}",
                    expanded.len(),
                    self.limits.max_recipients
                ),
            ));
        }
        Ok(expanded.into_iter().collect())
    }

    /// The wire form of a stored message, body included.
    async fn to_message(&self, record: MessageRecord) -> Result<Message, ExchangeError> {
        let body = self.store.body(&record).await.map_err(|e| match e {
            // Erased (retention) after the record was read.
            StoreError::NotFound => MessageId::parse("message_id", &record.message_id)
                .map_or_else(|e| e, ExchangeError::MessageNotFound),
            e => e.into(),
        })?;
        let body = SendMessageRequest::decode(body.as_slice()).map_err(|source| {
            ExchangeError::Store(StoreError::Corrupt {
                key: format!("body of {}", record.message_id),
                source,
            })
        })?;
        let match_hit = (!record.match_hit.is_empty())
            .then(|| MatchHitNotice::decode(record.match_hit.as_slice()))
            .transpose()
            .map_err(|source| {
                ExchangeError::Store(StoreError::Corrupt {
                    key: format!("match hit of {}", record.message_id),
                    source,
                })
            })?;
        let originator = if record.originator.is_empty() {
            record.sender.clone()
        } else {
            record.originator
        };
        Ok(Message {
            message_id: record.message_id,
            sender: record.sender,
            recipients: record.recipients,
            topic: record.topic,
            subject: record.subject,
            handling: record.handling,
            evaluation: Some(Evaluation {
                source_reliability: record.source_reliability,
                information_accuracy: record.information_accuracy,
            }),
            created_at: Some(timestamp(record.created_at_micros)),
            in_reply_to: record.in_reply_to,
            case_reference: record.case_reference,
            content: body.content.map(content::to_message_content),
            attachments: body.attachments,
            content_sha256: record.content_sha256,
            handling_conditions: record.handling_conditions,
            priority: record.priority,
            respond_by: (record.respond_by_micros != 0)
                .then(|| timestamp(record.respond_by_micros)),
            kind: record.kind,
            originator,
            original_message_id: record.original_message_id,
            provenance: record
                .provenance
                .into_iter()
                .map(|hop| ForwardHop {
                    from_agency: hop.from_agency,
                    to_agency: hop.to_agency,
                    message_id: hop.message_id,
                    forwarded_at: Some(timestamp(hop.forwarded_at_micros)),
                })
                .collect(),
            related_message_id: record.related_message_id,
            consent_agency: record.consent_agency,
            consent_granted: record.consent_granted,
            reason: record.reason,
            match_hit,
        })
    }

    async fn send(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<SendMessageResponse, ExchangeError> {
        let (caller, sender) = self.require_agency(&request)?;
        let draft = validate::validate(request.into_inner(), &self.limits)?;
        let conflict = |e| match e {
            StoreError::IdempotencyConflict => {
                ExchangeError::IdempotencyConflict(draft.client_message_id.clone())
            }
            other => other.into(),
        };
        // A retry is answered from the idempotency record before any check against the current
        // directory: the original send passed them, and its answer must not change.
        if let Some(original) = self
            .store
            .earlier_send(
                sender.as_str(),
                &draft.client_message_id,
                &draft.request_sha256,
            )
            .await
            .map_err(conflict)?
        {
            info!(agency = %sender, message_id = %original.message_id, "idempotent retry answered");
            return Ok(response(original));
        }
        if let Some(parent) = &draft.in_reply_to {
            self.readable(&sender, parent).await.map_err(|_| {
                ExchangeError::invalid("in_reply_to", "names no message this agency can read")
            })?;
        }
        let recipients = self.expand(&sender, &draft.recipients)?;
        let message_id = MessageId::generate();
        let in_reply_to = draft
            .in_reply_to
            .map(|id| id.to_string())
            .unwrap_or_default();
        let mut links = Vec::new();
        if !in_reply_to.is_empty() {
            links.push(Link::ReplyTo(in_reply_to.clone()));
        }
        if !draft.case_reference.is_empty() {
            links.push(Link::Case(draft.case_reference.clone()));
        }
        let record = MessageRecord {
            message_id: message_id.to_string(),
            sender: sender.to_string(),
            recipients,
            topic: draft.topic as i32,
            subject: draft.subject,
            handling: draft.handling as i32,
            source_reliability: draft.source_reliability as i32,
            information_accuracy: draft.information_accuracy as i32,
            created_at_micros: now_micros(),
            in_reply_to,
            case_reference: draft.case_reference,
            content_sha256: draft.content_sha256,
            sender_serial: caller.serial.clone(),
            body_len: draft.body.len() as u64,
            body: draft.body,
            handling_conditions: draft.handling_conditions,
            priority: draft.priority as i32,
            respond_by_micros: draft.respond_by_micros,
            originator: sender.to_string(),
            ..MessageRecord::default()
        };
        let accepted = self
            .commit(
                &caller,
                record,
                NewCommit {
                    client_message_id: &draft.client_message_id,
                    request_sha256: draft.request_sha256.clone(),
                    links,
                    action: AuditAction::MessageAccepted,
                    related_message_id: "",
                    audit_reason: None,
                },
            )
            .await
            .map_err(conflict)?;
        Ok(response(accepted))
    }

    /// Commits a new inbox entry for every recipient of `record`, with its audit entry and
    /// index entries in the same batch.
    async fn commit(
        &self,
        caller: &Caller,
        record: MessageRecord,
        commit: NewCommit<'_>,
    ) -> Result<Accepted, StoreError> {
        let mut event = audit::message_event(commit.action, Some(caller), &record);
        event.related_message_id = commit.related_message_id.to_string();
        if let Some(reason) = commit.audit_reason {
            event.reason = reason;
        } else if !record.consent_agency.is_empty() {
            // Named here, not as `subject_agency`: that would make the prospective recipient a
            // party to the entry and reveal the message's existence to it.
            event.reason = format!("consent for forwarding to {}", record.consent_agency);
        }
        let (sender, recipients) = (record.sender.clone(), record.recipients.len());
        let accepted = self
            .store
            .send(
                NewMessage {
                    record,
                    client_message_id: commit.client_message_id.to_string(),
                    request_sha256: commit.request_sha256,
                    links: commit.links,
                },
                event.into(),
            )
            .await?;
        if accepted.created {
            self.metrics.message_accepted(commit.action);
            info!(agency = %sender, message_id = %accepted.message_id, recipients, action = commit.action.as_str_name(), "message accepted");
        } else {
            info!(agency = %sender, message_id = %accepted.message_id, "idempotent retry answered");
        }
        Ok(accepted)
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeMessageRequest>,
    ) -> Result<AcknowledgeMessageResponse, ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let id = MessageId::parse("message_id", &request.message_id)?;
        let state = match DeliveryState::try_from(request.state) {
            Ok(state @ (DeliveryState::Received | DeliveryState::Read)) => state,
            _ => {
                return Err(ExchangeError::invalid(
                    "state",
                    "must be DELIVERY_STATE_RECEIVED or DELIVERY_STATE_READ",
                ))
            }
        };
        let record = self.readable(&agency, &id).await?;
        if !record.recipients.iter().any(|r| r == agency.as_str()) {
            return Err(ExchangeError::NotAllowed(PartyOnly::RecipientAcknowledges));
        }
        let delivery = self
            .store
            .advance_delivery(id.as_str(), agency.as_str(), state as i32, {
                let mut event =
                    audit::message_event(AuditAction::MessageAcknowledged, Some(&caller), &record);
                event.delivery_state = state as i32;
                event.into()
            })
            .await
            .map_err(|e| match e {
                // Erased (retention) between the check above and the write.
                StoreError::NotFound => ExchangeError::MessageNotFound(id.clone()),
                e => e.into(),
            })?;
        info!(agency = %agency, message_id = %id, state = state.as_str_name(), "message acknowledged");
        Ok(AcknowledgeMessageResponse {
            state: delivery.state,
            updated_at: Some(timestamp(delivery.updated_at_micros)),
        })
    }

    async fn get(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<(GetMessageResponse, ResponsePermit), ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let id = MessageId::parse("message_id", &request.get_ref().message_id)?;
        let record = self.readable(&agency, &id).await?;
        // Room for the answer before its body is read: a caller that does not read its answers
        // holds at most its share of the server's memory (see `admission::ResponseBudget`).
        let permit = self
            .responses
            .reserve(
                &caller.id.to_string(),
                record.body_len.saturating_add(ANSWER_OVERHEAD),
            )
            .await
            .map_err(ExchangeError::ResponsesUnread)?;
        // The read is on record before the content leaves the exchange.
        let event = audit::message_event(AuditAction::MessageRead, Some(&caller), &record);
        self.store.record(vec![event.into()]).await?;
        let response = GetMessageResponse {
            message: Some(self.to_message(record).await?),
        };
        Ok((response, permit))
    }

    async fn delivery_status(
        &self,
        request: Request<GetDeliveryStatusRequest>,
    ) -> Result<GetDeliveryStatusResponse, ExchangeError> {
        let (_, agency) = self.require_agency(&request)?;
        let id = MessageId::parse("message_id", &request.get_ref().message_id)?;
        let record = self.readable(&agency, &id).await?;
        if record.sender != agency.as_str() {
            return Err(ExchangeError::NotAllowed(PartyOnly::SenderSeesDelivery));
        }
        let repliers = self.repliers_seen_by(id.as_str(), &agency).await?;
        let now = now_micros();
        let due = record.respond_by_micros;
        let statuses = |deliveries: Vec<(String, DeliveryRecord)>| -> Vec<RecipientStatus> {
            deliveries
                .into_iter()
                .map(|(agency_id, delivery)| {
                    let replied = repliers.contains(&agency_id);
                    RecipientStatus {
                        overdue: due != 0 && now > due && !replied,
                        replied,
                        agency_id,
                        state: delivery.state,
                        updated_at: Some(timestamp(delivery.updated_at_micros)),
                    }
                })
                .collect()
        };
        let recipients = statuses(self.store.deliveries(&record).await?);
        let mut notices = Vec::new();
        for notice_id in self.store.notices(id.as_str()).await? {
            let Some(notice) = self.store.message(&notice_id).await? else {
                continue;
            };
            notices.push(NoticeStatus {
                recipients: statuses(self.store.deliveries(&notice).await?)
                    .into_iter()
                    .map(|s| RecipientStatus {
                        replied: false,
                        overdue: false,
                        ..s
                    })
                    .collect(),
                notice_message_id: notice_id,
                kind: notice.kind,
            });
        }
        Ok(GetDeliveryStatusResponse {
            message_id: id.to_string(),
            recipients,
            respond_by: (due != 0).then(|| timestamp(due)),
            notices,
        })
    }
}

impl ExchangeService {
    fn open_inbox(
        &self,
        request: Request<StreamInboxRequest>,
    ) -> Result<inbox::InboxStream, ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let revocations = request
            .extensions()
            .get::<Peer>()
            .map(|peer| Arc::clone(&peer.revocations))
            .ok_or(ExchangeError::Unauthenticated(IdentityError::NoCertificate))?;
        let StreamInboxRequest {
            after_sequence,
            backlog_only,
        } = request.into_inner();
        let slot =
            self.streams
                .open(agency.as_str())
                .map_err(|full| ExchangeError::TooManyStreams {
                    agency: full.agency,
                    limit: full.limit,
                })?;
        info!(agency = %agency, after_sequence, backlog_only, "inbox stream opened");
        Ok(inbox::spawn(
            self.clone(),
            inbox::Reader {
                progress: self.metrics.inbox_opened(agency.as_str(), after_sequence),
                agency,
                caller: Arc::clone(&caller),
                revocations,
                _slot: slot,
            },
            after_sequence,
            backlog_only,
        ))
    }
}

/// The response of an answer and the room reserved for it: the permit rides in the response's
/// extensions until its body is sent or dropped (`admission::ResponseBytesLayer`).
fn with_permit<T>(answer: Response<(T, ResponsePermit)>) -> Response<T> {
    let (message, permit) = answer.into_inner();
    let mut response = Response::new(message);
    response.extensions_mut().insert(permit);
    response
}

/// What an answer carrying a message takes besides its body: the record's other fields, at most
/// a few KiB, and the gRPC framing, rounded up generously.
const ANSWER_OVERHEAD: u64 = 64 * 1024;

/// What `commit` needs besides the record.
struct NewCommit<'a> {
    client_message_id: &'a str,
    request_sha256: Vec<u8>,
    links: Vec<Link>,
    action: AuditAction,
    related_message_id: &'a str,
    /// The audit entry's reason, when the action has one to record.
    audit_reason: Option<String>,
}

fn response(accepted: Accepted) -> SendMessageResponse {
    SendMessageResponse {
        message_id: accepted.message_id,
        audit_index: Some(accepted.audit_index),
        accepted_at: Some(timestamp(accepted.accepted_at_micros)),
    }
}

fn is_party(record: &MessageRecord, agency: &AgencyId) -> bool {
    record.sender == agency.as_str() || record.recipients.iter().any(|r| r == agency.as_str())
}
