//! Handling rules beyond delivery: forwarding (allowed for H0/H1, for H2/H3 only with the
//! originator's consent), the consent exchange itself, and retractions and corrections that
//! reach every holder of a message, forwarded copies included. Each produces inbox entries
//! through the same durable path as SendMessage, with its own audit entry.

use prost::Message as _;
use sha2::{Digest, Sha256};
use tonic::Request;

use super::validate::{self, MessageId};
use super::{ExchangeError, ExchangeService, NewCommit, PartyOnly};
use crate::identity::AgencyId;
use crate::pb::v1::{
    AuditAction, CorrectMessageRequest, CorrectMessageResponse, DenyConsentRequest,
    DenyConsentResponse, ForwardMessageRequest, ForwardMessageResponse, GrantConsentRequest,
    GrantConsentResponse, HandlingCode, MessageKind, RequestConsentRequest, RequestConsentResponse,
    RetractMessageRequest, RetractMessageResponse, SendMessageRequest,
};
use crate::store::records::{ConsentRecord, ForwardHopRecord, MessageRecord};
use crate::store::{Link, StoreError};
use crate::time::{now_micros, timestamp};

/// Longest reason given with a forward, consent or notice, in characters.
pub(super) const MAX_REASON_CHARS: usize = 1000;

fn check_reason(reason: &str, required: bool) -> Result<String, ExchangeError> {
    let reason = reason.trim().to_string();
    if required && reason.is_empty() {
        return Err(ExchangeError::invalid("reason", "is required"));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ExchangeError::invalid(
            "reason",
            "must be at most 1000 characters",
        ));
    }
    validate::readable("reason", &reason, crate::text::Shape::Lines)?;
    Ok(reason)
}

/// The original behind a message or a forwarded copy: its id and its originator.
fn origin(record: &MessageRecord) -> (String, String) {
    if record.kind == MessageKind::Forwarded as i32 {
        (
            record.original_message_id.clone(),
            record.originator.clone(),
        )
    } else {
        (record.message_id.clone(), record.sender.clone())
    }
}

/// `link` plus, when the new message carries a case reference, its link to that case, so that
/// ListThread by case reference finds copies and notices like the original.
fn with_case(link: Link, case_reference: &str) -> Vec<Link> {
    let mut links = vec![link];
    if !case_reference.is_empty() {
        links.push(Link::Case(case_reference.to_string()));
    }
    links
}

/// A fresh idempotency key for entries the exchange creates on the caller's behalf.
fn generated_key() -> String {
    format!("puente:{}", uuid::Uuid::new_v4())
}

/// A message that carries no content of its own (consent requests and decisions, retractions).
fn empty_body() -> (Vec<u8>, Vec<u8>) {
    let body = SendMessageRequest::default().encode_to_vec();
    let digest = Sha256::digest(&body).to_vec();
    (body, digest)
}

impl ExchangeService {
    /// A message the caller received and may act on as a holder: intelligence or a forwarded
    /// copy of which it is a recipient.
    async fn held(
        &self,
        agency: &AgencyId,
        id: &MessageId,
    ) -> Result<MessageRecord, ExchangeError> {
        let record = self.readable(agency, id).await?;
        let intelligence = record.kind == MessageKind::Unspecified as i32
            || record.kind == MessageKind::Forwarded as i32;
        if !intelligence {
            return Err(ExchangeError::invalid(
                "message_id",
                "names a notice or consent message, not intelligence",
            ));
        }
        if !record.recipients.iter().any(|r| r == agency.as_str()) {
            return Err(ExchangeError::NotAllowed(PartyOnly::RecipientPassesOn));
        }
        Ok(record)
    }

    /// `holder`'s own consent request to pass `original` to `agency`, if the originator
    /// granted it. Nobody else's consent counts: not one given to another holder for
    /// the same agency, nor the one under which `holder`'s copy reached it.
    async fn consent_of(
        &self,
        original: &str,
        holder: &str,
        agency: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .consent(original, holder, agency)
            .await?
            .filter(ConsentRecord::is_granted)
            .map(|consent| consent.consent_request_id))
    }

    /// Whether the originator retracted `original` (a RETRACTION notice was sent for it).
    async fn retracted(&self, original: &str) -> Result<bool, ExchangeError> {
        for notice_id in self.store.notices(original).await? {
            if let Some(notice) = self.store.message(&notice_id).await? {
                if notice.kind == MessageKind::Retraction as i32 {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Every agency holding `original`: its recipients and those of its forwarded copies.
    async fn holders(&self, original: &MessageRecord) -> Result<Vec<String>, ExchangeError> {
        let mut holders: std::collections::BTreeSet<String> =
            original.recipients.iter().cloned().collect();
        for copy_id in self.store.copies(&original.message_id).await? {
            if let Some(copy) = self.store.message(&copy_id).await? {
                holders.extend(copy.recipients);
            }
        }
        holders.remove(&original.sender);
        Ok(holders.into_iter().collect())
    }

    pub(super) async fn forward(
        &self,
        request: Request<ForwardMessageRequest>,
    ) -> Result<ForwardMessageResponse, ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let request_sha256 = Sha256::digest(
            ForwardMessageRequest {
                client_message_id: String::new(),
                ..request.clone()
            }
            .encode_to_vec(),
        )
        .to_vec();
        validate::check_client_message_id(&request.client_message_id)?;
        if let Some(original) = self
            .store
            .earlier_send(agency.as_str(), &request.client_message_id, &request_sha256)
            .await
            .map_err(|e| self.conflict(e, &request.client_message_id))?
        {
            return Ok(forward_response(original));
        }
        let id = MessageId::parse("message_id", &request.message_id)?;
        let held = self.held(&agency, &id).await?;
        let reason = check_reason(&request.reason, false)?;
        if request.recipients.is_empty() {
            return Err(ExchangeError::invalid(
                "recipients",
                "at least one agency id is required",
            ));
        }
        let mut targets = Vec::new();
        for (i, entry) in request.recipients.iter().enumerate() {
            let target = AgencyId::parse(entry).map_err(|_| {
                ExchangeError::invalid(
                    format!("recipients[{i}]"),
                    "must be an agency id; forwarding takes no regions and no *",
                )
            })?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        let expanded = self.expand(
            &agency,
            &targets
                .iter()
                .cloned()
                .map(validate::Recipient::Agency)
                .collect::<Vec<_>>(),
        )?;
        let (original_id, originator) = origin(&held);
        // A copy made after the retraction would reach an agency that never gets the notice.
        if self.retracted(&original_id).await? {
            return Err(ExchangeError::Retracted(original_id));
        }
        let handling = HandlingCode::try_from(held.handling).unwrap_or(HandlingCode::H3);
        // The granted requests this forward relies on, named in its audit entry: each carries
        // the holder's reason and the originator's decision.
        let mut consents = Vec::new();
        if matches!(handling, HandlingCode::H2 | HandlingCode::H3) {
            for target in &expanded {
                if let Some(request_id) = self
                    .consent_of(&original_id, agency.as_str(), target)
                    .await?
                {
                    consents.push(request_id);
                } else {
                    return Err(ExchangeError::NoConsent {
                        message_id: original_id,
                        handling,
                        originator,
                        holder: agency,
                        target: target.clone(),
                    });
                }
            }
        }
        let copy_id = MessageId::generate();
        let now = now_micros();
        let mut provenance = held.provenance.clone();
        for target in &expanded {
            provenance.push(ForwardHopRecord {
                from_agency: agency.to_string(),
                to_agency: target.clone(),
                message_id: copy_id.to_string(),
                forwarded_at_micros: now,
            });
        }
        let body = self.store.body(&held).await?;
        let record = MessageRecord {
            message_id: copy_id.to_string(),
            sender: agency.to_string(),
            recipients: expanded,
            topic: held.topic,
            subject: held.subject.clone(),
            handling: held.handling,
            source_reliability: held.source_reliability,
            information_accuracy: held.information_accuracy,
            created_at_micros: now,
            case_reference: held.case_reference.clone(),
            content_sha256: held.content_sha256.clone(),
            sender_serial: caller.serial.clone(),
            body_len: body.len() as u64,
            body,
            handling_conditions: held.handling_conditions.clone(),
            priority: held.priority,
            kind: MessageKind::Forwarded as i32,
            originator,
            original_message_id: original_id.clone(),
            provenance,
            reason,
            ..MessageRecord::default()
        };
        let accepted = self
            .commit(
                &caller,
                record,
                NewCommit {
                    client_message_id: &request.client_message_id,
                    request_sha256,
                    links: with_case(Link::CopyOf(original_id.clone()), &held.case_reference),
                    action: AuditAction::MessageForwarded,
                    related_message_id: &original_id,
                    audit_reason: (!consents.is_empty())
                        .then(|| format!("under consent requests {}", consents.join(" "))),
                },
            )
            .await
            .map_err(|e| self.conflict(e, &request.client_message_id))?;
        Ok(forward_response(accepted))
    }

    fn conflict(&self, err: StoreError, client_message_id: &str) -> ExchangeError {
        match err {
            StoreError::IdempotencyConflict => {
                ExchangeError::IdempotencyConflict(client_message_id.to_string())
            }
            other => other.into(),
        }
    }

    pub(super) async fn ask_consent(
        &self,
        request: Request<RequestConsentRequest>,
    ) -> Result<RequestConsentResponse, ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let id = MessageId::parse("message_id", &request.message_id)?;
        let held = self.held(&agency, &id).await?;
        let target = AgencyId::parse(&request.agency_id)
            .map_err(|e| ExchangeError::invalid("agency_id", e.to_string()))?;
        if target == agency {
            return Err(ExchangeError::invalid(
                "agency_id",
                "is the caller itself: consent is asked to pass a message to another agency",
            ));
        }
        if self.directory.get(target.as_str()).is_none() {
            return Err(ExchangeError::invalid(
                "agency_id",
                format!("no agency {target} is registered"),
            ));
        }
        let reason = check_reason(&request.reason, true)?;
        let handling = HandlingCode::try_from(held.handling).unwrap_or(HandlingCode::H3);
        if !matches!(handling, HandlingCode::H2 | HandlingCode::H3) {
            return Err(ExchangeError::invalid(
                "message_id",
                "is H0 or H1: it may be forwarded without consent",
            ));
        }
        let (original_id, originator) = origin(&held);
        if target.as_str() == originator {
            return Err(ExchangeError::invalid(
                "agency_id",
                "is the message's originator, which needs no consent to hold its own message",
            ));
        }
        // One open question per holder, message and agency: asking again while the originator
        // has not answered (or after it granted) would only fill its inbox.
        if let Some(asked) = self
            .store
            .consent(&original_id, agency.as_str(), target.as_str())
            .await?
        {
            if !asked.decided {
                return Err(ExchangeError::ConsentPending(asked.consent_request_id));
            }
            if asked.granted {
                return Err(ExchangeError::ConsentGranted(asked.consent_request_id));
            }
        }
        if !self.directory.is_active(&originator) {
            return Err(ExchangeError::RecipientSuspended(originator));
        }
        let (body, content_sha256) = empty_body();
        let request_id = MessageId::generate();
        let pending = ConsentRecord {
            consent_request_id: request_id.to_string(),
            decided: false,
            granted: false,
        };
        let record = MessageRecord {
            message_id: request_id.to_string(),
            sender: agency.to_string(),
            recipients: vec![originator.clone()],
            topic: held.topic,
            subject: format!(
                "Consent requested: forward \"{}\" to {target}",
                held.subject
            ),
            handling: held.handling,
            source_reliability: held.source_reliability,
            information_accuracy: held.information_accuracy,
            created_at_micros: now_micros(),
            content_sha256,
            sender_serial: caller.serial.clone(),
            body_len: body.len() as u64,
            body,
            kind: MessageKind::ConsentRequest as i32,
            originator,
            related_message_id: original_id.clone(),
            consent_agency: target.to_string(),
            reason,
            ..MessageRecord::default()
        };
        let key = generated_key();
        let accepted = self
            .commit(
                &caller,
                record,
                NewCommit {
                    client_message_id: &key,
                    request_sha256: Vec::new(),
                    links: vec![Link::Consent {
                        original: original_id.clone(),
                        holder: agency.to_string(),
                        agency: target.to_string(),
                        record: pending,
                    }],
                    action: AuditAction::ConsentRequested,
                    related_message_id: &original_id,
                    audit_reason: None,
                },
            )
            .await?;
        Ok(RequestConsentResponse {
            consent_request_id: accepted.message_id,
        })
    }

    /// Grants or denies a consent request the caller received as originator.
    async fn decide(
        &self,
        caller_request: (&std::sync::Arc<crate::identity::Caller>, &AgencyId),
        consent_request_id: &str,
        reason: &str,
        granted: bool,
    ) -> Result<String, ExchangeError> {
        let (caller, agency) = caller_request;
        let id = MessageId::parse("consent_request_id", consent_request_id)?;
        let asked = self.readable(agency, &id).await?;
        if asked.kind != MessageKind::ConsentRequest as i32
            || !asked.recipients.iter().any(|r| r == agency.as_str())
        {
            return Err(ExchangeError::invalid(
                "consent_request_id",
                "names no consent request addressed to this agency",
            ));
        }
        let reason = check_reason(reason, !granted)?;
        let holder = asked.sender.clone();
        let latest = self
            .store
            .consent(&asked.related_message_id, &holder, &asked.consent_agency)
            .await?;
        // Only the holder's latest request is open to a decision (the originator may change
        // its mind on it); an earlier one was superseded when the holder asked again after a
        // denial. No record: a request from before consent was bound to the holder.
        if let Some(latest) = latest.filter(|l| l.consent_request_id != asked.message_id) {
            return Err(ExchangeError::ConsentSuperseded(latest.consent_request_id));
        }
        let decided = ConsentRecord {
            consent_request_id: asked.message_id.clone(),
            decided: true,
            granted,
        };
        let (body, content_sha256) = empty_body();
        let decision_id = MessageId::generate();
        let record = MessageRecord {
            message_id: decision_id.to_string(),
            sender: agency.to_string(),
            recipients: vec![asked.sender.clone()],
            topic: asked.topic,
            subject: format!(
                "Consent {}: forward {} to {}",
                if granted { "granted" } else { "denied" },
                asked.related_message_id,
                asked.consent_agency
            ),
            handling: asked.handling,
            source_reliability: asked.source_reliability,
            information_accuracy: asked.information_accuracy,
            created_at_micros: now_micros(),
            content_sha256,
            sender_serial: caller.serial.clone(),
            body_len: body.len() as u64,
            body,
            kind: MessageKind::ConsentDecision as i32,
            originator: agency.to_string(),
            related_message_id: asked.related_message_id.clone(),
            consent_agency: asked.consent_agency.clone(),
            consent_granted: granted,
            reason,
            ..MessageRecord::default()
        };
        let key = generated_key();
        let accepted = self
            .commit(
                caller,
                record,
                NewCommit {
                    client_message_id: &key,
                    request_sha256: Vec::new(),
                    links: vec![Link::Consent {
                        original: asked.related_message_id.clone(),
                        holder,
                        agency: asked.consent_agency.clone(),
                        record: decided,
                    }],
                    action: if granted {
                        AuditAction::ConsentGranted
                    } else {
                        AuditAction::ConsentDenied
                    },
                    related_message_id: &asked.related_message_id,
                    audit_reason: None,
                },
            )
            .await?;
        Ok(accepted.message_id)
    }

    pub(super) async fn grant(
        &self,
        request: Request<GrantConsentRequest>,
    ) -> Result<GrantConsentResponse, ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let decision_message_id = self
            .decide(
                (&caller, &agency),
                &request.consent_request_id,
                &request.reason,
                true,
            )
            .await?;
        Ok(GrantConsentResponse {
            decision_message_id,
        })
    }

    pub(super) async fn deny(
        &self,
        request: Request<DenyConsentRequest>,
    ) -> Result<DenyConsentResponse, ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let decision_message_id = self
            .decide(
                (&caller, &agency),
                &request.consent_request_id,
                &request.reason,
                false,
            )
            .await?;
        Ok(DenyConsentResponse {
            decision_message_id,
        })
    }

    /// Sends a retraction or correction notice of `original` to all its holders.
    async fn notify(
        &self,
        caller: &std::sync::Arc<crate::identity::Caller>,
        agency: &AgencyId,
        message_id: &str,
        reason: &str,
        correction: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<String, ExchangeError> {
        let id = MessageId::parse("message_id", message_id)?;
        let original = self.readable(agency, &id).await?;
        if original.sender != agency.as_str() || original.kind != MessageKind::Unspecified as i32 {
            return Err(ExchangeError::NotAllowed(PartyOnly::OriginatorAmends));
        }
        let reason = check_reason(reason, true)?;
        let holders = self.holders(&original).await?;
        let (kind, action, label) = match correction {
            Some(_) => (
                MessageKind::Correction,
                AuditAction::MessageCorrected,
                "Correction",
            ),
            None => (
                MessageKind::Retraction,
                AuditAction::MessageRetracted,
                "Retraction",
            ),
        };
        let (body, content_sha256) = correction.unwrap_or_else(empty_body);
        let notice_id = MessageId::generate();
        let record = MessageRecord {
            message_id: notice_id.to_string(),
            sender: agency.to_string(),
            recipients: holders,
            topic: original.topic,
            subject: format!("{label}: {}", original.subject),
            handling: original.handling,
            source_reliability: original.source_reliability,
            information_accuracy: original.information_accuracy,
            created_at_micros: now_micros(),
            case_reference: original.case_reference.clone(),
            content_sha256,
            sender_serial: caller.serial.clone(),
            body_len: body.len() as u64,
            body,
            handling_conditions: original.handling_conditions.clone(),
            kind: kind as i32,
            originator: agency.to_string(),
            related_message_id: original.message_id.clone(),
            reason,
            ..MessageRecord::default()
        };
        let key = generated_key();
        let accepted = self
            .commit(
                caller,
                record,
                NewCommit {
                    client_message_id: &key,
                    request_sha256: Vec::new(),
                    links: with_case(
                        Link::NoticeAbout(original.message_id.clone()),
                        &original.case_reference,
                    ),
                    action,
                    related_message_id: &original.message_id,
                    audit_reason: None,
                },
            )
            .await?;
        Ok(accepted.message_id)
    }

    pub(super) async fn retract(
        &self,
        request: Request<RetractMessageRequest>,
    ) -> Result<RetractMessageResponse, ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let notice_message_id = self
            .notify(&caller, &agency, &request.message_id, &request.reason, None)
            .await?;
        Ok(RetractMessageResponse { notice_message_id })
    }

    pub(super) async fn correct(
        &self,
        request: Request<CorrectMessageRequest>,
    ) -> Result<CorrectMessageResponse, ExchangeError> {
        use crate::pb::v1::correct_message_request::Content as Corrected;
        use crate::pb::v1::send_message_request::Content;
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let mut content = request.content.map(|content| match content {
            Corrected::Text(text) => Content::Text(text),
            Corrected::Firearms(report) => Content::Firearms(report),
            Corrected::FirearmTrace(trace) => Content::FirearmTrace(trace),
            Corrected::Financial(report) => Content::Financial(report),
            Corrected::EarlyWarning(alert) => Content::EarlyWarning(alert),
        });
        super::content::validate(&mut content)?;
        let body = SendMessageRequest {
            content,
            ..SendMessageRequest::default()
        }
        .encode_to_vec();
        if body.len() > self.limits.max_message_bytes {
            return Err(ExchangeError::invalid(
                "content",
                "is larger than the message size limit",
            ));
        }
        let digest = Sha256::digest(&body).to_vec();
        let notice_message_id = self
            .notify(
                &caller,
                &agency,
                &request.message_id,
                &request.reason,
                Some((body, digest)),
            )
            .await?;
        Ok(CorrectMessageResponse { notice_message_id })
    }
}

fn forward_response(accepted: crate::store::Accepted) -> ForwardMessageResponse {
    ForwardMessageResponse {
        message_id: accepted.message_id,
        audit_index: Some(accepted.audit_index),
        accepted_at: Some(timestamp(accepted.accepted_at_micros)),
    }
}
