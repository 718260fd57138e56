//! `puente.v1.MatchService`: blinded identifiers published, withdrawn and queried by agencies.
//!
//! The server only ever sees HMAC values: it learns which agencies published and queried the
//! same (unknown) identifier, and when; never the identifier. Queries need a case reference
//! and a legal basis, count against a per-agency quota, and every query and hit is in the audit
//! log. The holder of a hit is told through its inbox who asked, for which case, on which basis.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message as _;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::{info, instrument};

use crate::audit;
use crate::directory::Directory;
use crate::identity::{caller_of, peer_of, AgencyId, Caller, IdentityError, Peer, Role};
use crate::pb::v1::match_service_server::MatchService as MatchApi;
use crate::pb::v1::{
    AuditAction, BlindedIdentifier, HandlingCode, IdentifierKind, InformationAccuracy,
    MatchHitNotice, MatchHolder, MessageKind, PublishIdentifiersRequest,
    PublishIdentifiersResponse, QueryRequest, QueryResponse, QueryResult, SendMessageRequest,
    SourceReliability, Topic, WithdrawIdentifiersRequest, WithdrawIdentifiersResponse,
};
use crate::rpc::InvalidField;
use crate::store::records::{MessageRecord, PublishedRecord, QuotaRecord};
use crate::store::{NewMessage, PublishedKey, Store, StoreError};
use crate::time::now_micros;

/// Most identifiers one publication or withdrawal may carry.
pub(crate) const MAX_PUBLISH_BATCH: usize = 10_000;
/// Most identifiers one query may carry.
pub(crate) const MAX_QUERY_BATCH: usize = 1_000;
/// Length of a blinded identifier (HMAC-SHA-256).
pub(crate) const BLINDED_LEN: usize = 32;
/// The quota window.
pub(crate) const QUOTA_WINDOW: Duration = Duration::from_secs(3_600);

/// Why a matching call failed.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    /// No usable identity.
    #[error(transparent)]
    Unauthenticated(#[from] IdentityError),
    /// The caller is not an agency.
    #[error("matching is for agencies (spiffe://<trust-domain>/agency/<ID>); this caller is {0}")]
    NotAnAgency(String),
    /// The caller's agency is not registered, or suspended.
    #[error("agency {0} is not an active registered agency")]
    InactiveAgency(AgencyId),
    /// A field breaks a rule.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The caller's query quota is used up.
    #[error("query quota of {quota} identifiers per hour used up; retry in {retry_after:?}")]
    QuotaExceeded {
        /// The quota.
        quota: u64,
        /// When the window resets.
        retry_after: Duration,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::rpc::Refusal for MatchError {
    fn is_refusal(&self) -> bool {
        !matches!(self, MatchError::Store(_))
    }
}

impl From<MatchError> for Status {
    fn from(err: MatchError) -> Self {
        match err {
            MatchError::Unauthenticated(e) => e.into(),
            MatchError::NotAnAgency(_) | MatchError::InactiveAgency(_) => {
                Status::permission_denied(err.to_string())
            }
            MatchError::Invalid(invalid) => invalid.into(),
            MatchError::QuotaExceeded { retry_after, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                err.to_string(),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            MatchError::Store(e) => crate::rpc::store_failure(&e),
        }
    }
}

fn invalid(field: impl Into<String>, reason: &str) -> MatchError {
    MatchError::Invalid(InvalidField::new(field, reason))
}

/// The MatchService handlers.
pub(crate) struct MatchService {
    store: Arc<dyn Store>,
    directory: Arc<Directory>,
    quota_per_hour: u64,
    /// Each agency's quota window, read from the store on its first query after a start and
    /// written back with every query's audit entry.
    windows: Mutex<HashMap<String, QuotaRecord>>,
}

fn check_identifier(
    field: &str,
    identifier: Option<&BlindedIdentifier>,
) -> Result<BlindedIdentifier, MatchError> {
    let identifier = identifier.ok_or_else(|| invalid(field, "is required"))?;
    match IdentifierKind::try_from(identifier.kind) {
        Ok(IdentifierKind::Unspecified) | Err(_) => {
            return Err(invalid(
                format!("{field}.kind"),
                "must be one of the IDENTIFIER_KIND_* values",
            ))
        }
        Ok(_) => {}
    }
    if identifier.blinded.len() != BLINDED_LEN {
        return Err(invalid(
            format!("{field}.blinded"),
            "must be exactly 32 bytes (HMAC-SHA-256): clear values, prefixes and wildcards are not accepted",
        ));
    }
    Ok(identifier.clone())
}

/// A batch must hold 1 to `max` identifiers.
fn check_count(count: usize, max: usize, per: &str) -> Result<(), MatchError> {
    if count == 0 || count > max {
        return Err(invalid(
            "identifiers",
            &format!("1 to {max} identifiers per {per}"),
        ));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<String, MatchError> {
    let value = value.trim().to_string();
    if required && value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.chars().count() > max {
        return Err(invalid(field, &format!("must be at most {max} characters")));
    }
    // Shown to people: the holder reads them in its hit notice.
    crate::text::check(&value, crate::text::Shape::Line)
        .map_err(|e| invalid(field, &e.to_string()))?;
    Ok(value)
}

impl MatchService {
    /// Serves matching from `store`; agencies are checked against `directory`; each agency may
    /// query `quota_per_hour` identifiers per hour.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        directory: Arc<Directory>,
        quota_per_hour: u64,
    ) -> MatchService {
        MatchService {
            store,
            directory,
            quota_per_hour,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn require_agency<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<Caller>, AgencyId), MatchError> {
        let caller = caller_of(request)?;
        let Role::Agency(agency) = &caller.role else {
            return Err(MatchError::NotAnAgency(caller.id.to_string()));
        };
        if !self.directory.is_active(agency.as_str()) {
            return Err(MatchError::InactiveAgency(agency.clone()));
        }
        let agency = agency.clone();
        Ok((caller, agency))
    }

    /// Takes `count` identifiers from the agency's quota, or says when it resets. Returns what
    /// is left and the window to record with the query ([`Store::record_match_query`]).
    ///
    /// The window is wall-clock time so that it means the same after a restart. A clock set
    /// back by less than a window only makes this one last longer; by more, it starts afresh.
    async fn take_quota(&self, agency: &str, count: u64) -> Result<(u64, QuotaRecord), MatchError> {
        // The stored window is read before the lock (which is not held across a wait); if two
        // first queries race, the one that locks first installs it.
        let known = self
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(agency);
        let stored = if known {
            None
        } else {
            self.store.match_quota(agency).await?
        };
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window_secs = QUOTA_WINDOW.as_secs();
        let now = u64::try_from(now_micros() / 1_000_000).unwrap_or(0);
        let window = match windows.entry(agency.to_string()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(stored.unwrap_or_default()),
        };
        let elapsed = now.saturating_sub(window.window_start_unix_secs);
        if elapsed >= window_secs || window.window_start_unix_secs > now + window_secs {
            *window = QuotaRecord {
                window_start_unix_secs: now,
                used: 0,
            };
        }
        let elapsed = now.saturating_sub(window.window_start_unix_secs);
        if window.used.saturating_add(count) > self.quota_per_hour {
            return Err(MatchError::QuotaExceeded {
                quota: self.quota_per_hour,
                retry_after: Duration::from_secs(window_secs.saturating_sub(elapsed).max(1)),
            });
        }
        window.used += count;
        Ok((self.quota_per_hour - window.used, *window))
    }

    async fn publish(
        &self,
        request: Request<PublishIdentifiersRequest>,
    ) -> Result<PublishIdentifiersResponse, MatchError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        check_count(request.identifiers.len(), MAX_PUBLISH_BATCH, "call")?;
        let case_reference = check_text("case_reference", &request.case_reference, 128, false)?;
        let source_message_id =
            check_text("source_message_id", &request.source_message_id, 64, false)?;
        let now = now_micros();
        let (mut added, mut updated) = (0u64, 0u64);
        let mut puts = Vec::with_capacity(request.identifiers.len());
        for (i, published) in request.identifiers.iter().enumerate() {
            let identifier = check_identifier(
                &format!("identifiers[{i}].identifier"),
                published.identifier.as_ref(),
            )?;
            let reference = check_text(
                &format!("identifiers[{i}].reference"),
                &published.reference,
                128,
                false,
            )?;
            let blinded = PublishedKey {
                key_epoch: request.key_epoch,
                kind: identifier.kind,
                blinded: identifier.blinded.clone(),
            };
            let existing = self.store.publication(&blinded, agency.as_str()).await?;
            let match_reference = match existing {
                Some(existing) => {
                    updated += 1;
                    existing.match_reference
                }
                None => {
                    added += 1;
                    format!("m-{}", uuid::Uuid::new_v4().simple())
                }
            };
            let record = PublishedRecord {
                reference,
                match_reference,
                source_message_id: source_message_id.clone(),
                case_reference: case_reference.clone(),
                published_at_micros: now,
            };
            puts.push((blinded, record));
        }
        let mut event = audit::event(AuditAction::IdentifiersPublished, Some(&caller));
        event.reason = format!(
            "epoch={} added={added} updated={updated} case_reference={case_reference}",
            request.key_epoch
        );
        event.related_message_id = source_message_id;
        self.store
            .publish(agency.as_str(), puts, event.into())
            .await?;
        info!(agency = %agency, added, updated, epoch = request.key_epoch, "identifiers published");
        Ok(PublishIdentifiersResponse { added, updated })
    }

    async fn withdraw(
        &self,
        request: Request<WithdrawIdentifiersRequest>,
    ) -> Result<WithdrawIdentifiersResponse, MatchError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        check_count(request.identifiers.len(), MAX_PUBLISH_BATCH, "call")?;
        let mut removes = Vec::new();
        for (i, identifier) in request.identifiers.iter().enumerate() {
            let identifier = check_identifier(&format!("identifiers[{i}]"), Some(identifier))?;
            let blinded = PublishedKey {
                key_epoch: request.key_epoch,
                kind: identifier.kind,
                blinded: identifier.blinded.clone(),
            };
            if self
                .store
                .publication(&blinded, agency.as_str())
                .await?
                .is_some()
            {
                removes.push(blinded);
            }
        }
        let withdrawn = removes.len() as u64;
        let mut event = audit::event(AuditAction::IdentifiersWithdrawn, Some(&caller));
        event.reason = format!("epoch={} withdrawn={withdrawn}", request.key_epoch);
        self.store
            .withdraw(agency.as_str(), &removes, event.into())
            .await?;
        Ok(WithdrawIdentifiersResponse { withdrawn })
    }

    async fn query(&self, request: Request<QueryRequest>) -> Result<QueryResponse, MatchError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        check_count(request.identifiers.len(), MAX_QUERY_BATCH, "query")?;
        let case_reference = check_text("case_reference", &request.case_reference, 128, true)?;
        let legal_basis = check_text("legal_basis", &request.legal_basis, 256, true)?;
        let identifiers = request
            .identifiers
            .iter()
            .enumerate()
            .map(|(i, identifier)| check_identifier(&format!("identifiers[{i}]"), Some(identifier)))
            .collect::<Result<Vec<_>, _>>()?;
        let (remaining_quota, window) = self
            .take_quota(agency.as_str(), identifiers.len() as u64)
            .await?;

        let mut results = Vec::with_capacity(identifiers.len());
        let mut hits = Vec::new();
        for identifier in identifiers {
            let kind = identifier.kind;
            let blinded = PublishedKey {
                key_epoch: request.key_epoch,
                kind,
                blinded: identifier.blinded.clone(),
            };
            let mut holders = Vec::new();
            for (holder, published) in self.store.publications(&blinded).await? {
                if holder == agency.as_str() {
                    continue;
                }
                holders.push(MatchHolder {
                    agency_id: holder.clone(),
                    match_reference: published.match_reference.clone(),
                });
                hits.push((holder, identifier.kind, published));
            }
            results.push(QueryResult {
                hit: !holders.is_empty(),
                identifier: Some(identifier),
                holders,
            });
        }
        let mut event = audit::event(AuditAction::MatchQueried, Some(&caller));
        event.reason = format!(
            "epoch={} identifiers={} hits={} case_reference={case_reference} legal_basis={legal_basis}",
            request.key_epoch,
            results.len(),
            hits.len()
        );
        // The quota window goes to the store with the query's audit entry: one group commit.
        self.store
            .record_match_query(agency.as_str(), window, event.into())
            .await?;
        for (holder, kind, published) in hits {
            self.notify(
                &caller,
                &agency,
                &holder,
                kind,
                &published,
                &case_reference,
                &legal_basis,
            )
            .await?;
        }
        info!(agency = %agency, identifiers = results.len(), "match query answered");
        Ok(QueryResponse {
            results,
            remaining_quota,
        })
    }

    /// Tells the holder, through its inbox, that `querier` matched one of its identifiers.
    #[allow(clippy::too_many_arguments)] // each is a distinct fact of the notice
    async fn notify(
        &self,
        caller: &Caller,
        querier: &AgencyId,
        holder: &str,
        kind: i32,
        published: &PublishedRecord,
        case_reference: &str,
        legal_basis: &str,
    ) -> Result<(), MatchError> {
        let notice = MatchHitNotice {
            querying_agency: querier.to_string(),
            case_reference: case_reference.to_string(),
            legal_basis: legal_basis.to_string(),
            match_reference: published.match_reference.clone(),
            your_reference: published.reference.clone(),
            kind,
        };
        let body = SendMessageRequest::default().encode_to_vec();
        let message_id = uuid::Uuid::now_v7().hyphenated().to_string();
        let record = MessageRecord {
            message_id: message_id.clone(),
            sender: querier.to_string(),
            recipients: vec![holder.to_string()],
            topic: Topic::Other as i32,
            subject: format!(
                "Hit: {querier} matched an identifier you published ({})",
                published.match_reference
            ),
            // Who investigates what is itself sensitive.
            handling: HandlingCode::H2 as i32,
            source_reliability: SourceReliability::A as i32,
            information_accuracy: InformationAccuracy::InformationAccuracy1 as i32,
            created_at_micros: now_micros(),
            case_reference: published.case_reference.clone(),
            content_sha256: Sha256::digest(&body).to_vec(),
            sender_serial: caller.serial.clone(),
            body_len: body.len() as u64,
            body,
            kind: MessageKind::MatchHit as i32,
            originator: querier.to_string(),
            related_message_id: published.source_message_id.clone(),
            match_hit: notice.encode_to_vec(),
            ..MessageRecord::default()
        };
        let mut event = audit::message_event(AuditAction::MatchHit, Some(caller), &record);
        event.subject_agency = holder.to_string();
        event.reason = format!(
            "match_reference={} case_reference={case_reference}",
            published.match_reference
        );
        self.store
            .send(
                NewMessage {
                    record,
                    client_message_id: format!("puente:{}", uuid::Uuid::new_v4()),
                    request_sha256: Vec::new(),
                    links: Vec::new(),
                },
                event.into(),
            )
            .await?;
        Ok(())
    }
}

impl MatchService {
    /// Answers `method` of `puente.v1.MatchService` (see [`crate::rpc::answer`]).
    async fn answer<T>(
        &self,
        method: &str,
        peer: Option<Peer>,
        result: Result<T, MatchError>,
    ) -> Result<Response<T>, Status> {
        crate::rpc::answer(
            self.store.as_ref(),
            "puente.v1.MatchService",
            method,
            peer,
            result,
        )
        .await
    }
}

#[tonic::async_trait]
impl MatchApi for MatchService {
    #[instrument(skip(self, request))]
    async fn publish_identifiers(
        &self,
        request: Request<PublishIdentifiersRequest>,
    ) -> Result<Response<PublishIdentifiersResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.publish(request).await;
        self.answer("PublishIdentifiers", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn withdraw_identifiers(
        &self,
        request: Request<WithdrawIdentifiersRequest>,
    ) -> Result<Response<WithdrawIdentifiersResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.withdraw(request).await;
        self.answer("WithdrawIdentifiers", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let peer = peer_of(&request);
        let result = MatchService::query(self, request).await;
        self.answer("Query", peer, result).await
    }
}
