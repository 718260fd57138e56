//! `puente.v1.AuditService`: checkpoints, entries and proofs for auditors (everything) and
//! agencies (the entries they are party to). Every call is itself recorded in the log.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::entry::{event, parties, refusal_event};
use super::merkle::{self, MerkleError};
use super::{AuditError, AuditLog};
use crate::admission::{RateLimits, StreamLimits};
use crate::config::Limits;
use crate::directory::Directory;
use crate::identity::{caller_of, AgencyId, Caller, IdentityError, Peer, Role};
use crate::pb::v1::audit_service_server::AuditService as AuditApi;
use crate::pb::v1::{
    AuditAction, AuditEvent, GetCheckpointRequest, GetCheckpointResponse,
    GetConsistencyProofRequest, GetConsistencyProofResponse, GetInclusionProofRequest,
    GetInclusionProofResponse, GetLogInfoRequest, GetLogInfoResponse, ListAuditEntriesRequest,
    ListAuditEntriesResponse,
};
use crate::rpc::InvalidField;
use crate::store::StoreError;
use crate::text::excerpt;

/// Entries read from the store per round of a listing: what a listing whose client does not
/// read holds besides its buffer.
const LIST_CHUNK: usize = 64;
/// Responses a listing buffers before its task waits for the client.
const LIST_BUFFER: usize = 8;
/// Entries a listing may read for the price of one call against the caller's request rate
/// (`admission::RateLimits`): a full scan of a long log costs what its reads cost, and pauses
/// while the caller's bucket is empty instead of competing with everybody's calls.
pub(crate) const ENTRIES_PER_CALL: usize = 32;

/// Why an audit call failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditServiceError {
    /// No usable identity.
    #[error(transparent)]
    Unauthenticated(#[from] IdentityError),
    /// The caller's agency is not registered, or suspended.
    #[error("agency {0} is not an active registered agency")]
    InactiveAgency(AgencyId),
    /// Administrators do not read the audit log.
    #[error("the audit log is for auditors and agencies; administrators need an auditor certificate to read it")]
    AdminNotAuditor,
    /// An agency asked for the entries of another party.
    #[error(
        "agency {0} may only list entries it is party to; leave agency_id empty or set it to {0}"
    )]
    NotOwnEntries(AgencyId),
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// A size beyond the log.
    #[error("{field} {value} is beyond the log's {size} entries")]
    BeyondLog {
        /// The request field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The log's size.
        size: u64,
    },
    /// No such entry among those the caller may see.
    #[error("no audit entry {0} that this caller may see")]
    NotFound(u64),
    /// No checkpoint has been signed yet.
    #[error("no checkpoint has been signed")]
    NoCheckpoint,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Proof computation failed.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    /// Signing failed.
    #[error(transparent)]
    Log(#[from] AuditError),
    /// The caller has as many listings open as it may.
    #[error("{caller} already has {limit} ListAuditEntries streams open, the most allowed; read one to its end or cancel it, then retry")]
    TooManyStreams {
        /// The caller identity.
        caller: String,
        /// Its limit.
        limit: usize,
    },
    /// All callers together have as many listings open as the exchange serves at once.
    #[error("the exchange already serves {0} ListAuditEntries streams, the most it serves at once; retry shortly")]
    AllStreamsOpen(usize),
    /// The caller is over its budget of audited calls: `RESOURCE_EXHAUSTED` with a retry delay.
    #[error("{}", .0.message())]
    OverBudget(Status),
}

impl From<AuditServiceError> for Status {
    fn from(err: AuditServiceError) -> Self {
        match err {
            AuditServiceError::Unauthenticated(e) => e.into(),
            AuditServiceError::InactiveAgency(_)
            | AuditServiceError::AdminNotAuditor
            | AuditServiceError::NotOwnEntries(_) => Status::permission_denied(err.to_string()),
            AuditServiceError::Invalid(invalid) => invalid.into(),
            AuditServiceError::BeyondLog { .. } => Status::out_of_range(err.to_string()),
            AuditServiceError::NotFound(_) => Status::not_found(err.to_string()),
            AuditServiceError::NoCheckpoint => Status::failed_precondition(err.to_string()),
            AuditServiceError::Store(e) => crate::rpc::store_failure(&e),
            AuditServiceError::Merkle(e) => crate::rpc::internal(&e),
            AuditServiceError::Log(e) => crate::rpc::internal(&e),
            AuditServiceError::TooManyStreams { .. } | AuditServiceError::AllStreamsOpen(_) => {
                crate::admission::exhausted(err.to_string(), crate::admission::STREAM_RETRY)
            }
            AuditServiceError::OverBudget(status) => status,
        }
    }
}

/// Who is asking, and what they may see.
enum Reader {
    /// Every entry.
    Auditor(Arc<Caller>),
    /// Entries this agency is party to.
    Agency(Arc<Caller>, AgencyId),
}

impl Reader {
    fn caller(&self) -> &Caller {
        match self {
            Reader::Auditor(caller) | Reader::Agency(caller, _) => caller,
        }
    }
}

/// The AuditService handlers.
pub(crate) struct AuditService {
    log: Arc<AuditLog>,
    directory: Arc<Directory>,
    /// Open listings per caller identity.
    streams: StreamLimits,
    /// The callers' request rates, which long listings are charged against.
    rates: Arc<RateLimits>,
}

/// The response stream of `ListAuditEntries`.
pub(crate) type EntryStream =
    Pin<Box<dyn Stream<Item = Result<ListAuditEntriesResponse, Status>> + Send>>;

impl AuditService {
    /// Serves `log`; agency callers are checked against `directory`. Listings are limited per
    /// caller as `limits` says and charged against the callers' request rates `rates`.
    pub(crate) fn new(
        log: Arc<AuditLog>,
        directory: Arc<Directory>,
        limits: &Limits,
        rates: Arc<RateLimits>,
    ) -> AuditService {
        AuditService {
            log,
            directory,
            streams: StreamLimits::audit(limits),
            rates,
        }
    }

    /// Authorises the caller and records its query (`method`, `details`) before answering.
    async fn admit<T>(
        &self,
        request: &Request<T>,
        method: &str,
        details: String,
    ) -> Result<Reader, AuditServiceError> {
        let store = self.log.store();
        // Every query is an entry, refused or not: charged to the caller first.
        crate::rpc::charge_audited(request.extensions().get::<Peer>())
            .map_err(AuditServiceError::OverBudget)?;
        let reader = match self.authorize(request) {
            Ok(reader) => reader,
            Err(err) => {
                let peer = request.extensions().get::<Peer>();
                let event = refusal_event(peer, method, &err.to_string());
                if let Err(e) = store.record(vec![event.into()]).await {
                    tracing::error!(error = %e, "cannot record a refused request in the audit log");
                }
                return Err(err);
            }
        };
        let mut query = event(AuditAction::AuditQueried, Some(reader.caller()));
        query.method = method.to_string();
        query.reason = details;
        store.record(vec![query.into()]).await?;
        Ok(reader)
    }

    /// `OUT_OF_RANGE` when `value` of `field` (a tree size) exceeds the durable log.
    async fn within_log(&self, field: &'static str, value: u64) -> Result<(), AuditServiceError> {
        let size = self.log.store().audit_size().await?;
        if value > size {
            return Err(AuditServiceError::BeyondLog { field, value, size });
        }
        Ok(())
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<Reader, AuditServiceError> {
        let caller = caller_of(request)?;
        match &caller.role {
            Role::Auditor(_) => Ok(Reader::Auditor(Arc::clone(&caller))),
            Role::Agency(agency) if self.directory.is_active(agency.as_str()) => {
                Ok(Reader::Agency(Arc::clone(&caller), agency.clone()))
            }
            Role::Agency(agency) => Err(AuditServiceError::InactiveAgency(agency.clone())),
            Role::Admin(_) => Err(AuditServiceError::AdminNotAuditor),
        }
    }

    fn may_see(reader: &Reader, event: &AuditEvent) -> bool {
        match reader {
            Reader::Auditor(_) => true,
            Reader::Agency(_, agency) => parties(event).contains(agency.as_str()),
        }
    }

    fn decode(index: u64, leaf: &[u8]) -> Result<AuditEvent, AuditServiceError> {
        AuditEvent::decode(leaf).map_err(|source| {
            AuditServiceError::Store(StoreError::Corrupt {
                key: format!("audit leaf {index}"),
                source,
            })
        })
    }
}

/// Filters of a listing, validated.
struct Filters {
    agency: Option<String>,
    action: Option<i32>,
    since: Option<i64>,
    until: Option<i64>,
    message_id: Option<String>,
}

impl Filters {
    fn matches(&self, event: &AuditEvent) -> bool {
        self.action.is_none_or(|a| event.action == a)
            && self.since.is_none_or(|t| event.time_unix_micros >= t)
            && self.until.is_none_or(|t| event.time_unix_micros < t)
            && self
                .message_id
                .as_ref()
                .is_none_or(|id| &event.message_id == id)
            && self
                .agency
                .as_ref()
                .is_none_or(|a| parties(event).contains(a.as_str()))
    }
}

/// The filters of a listing as stable `key=value` pairs, for the audit-query entry. Values the
/// caller typed are cut like error messages: the entry is permanent.
fn describe(request: &ListAuditEntriesRequest) -> String {
    let mut parts = vec![format!("start_index={}", request.start_index)];
    if !request.agency_id.is_empty() {
        parts.push(format!("agency_id={}", filter_value(&request.agency_id)));
    }
    if let Ok(action) = AuditAction::try_from(request.action) {
        if action != AuditAction::Unspecified {
            parts.push(format!("action={}", action.as_str_name()));
        }
    }
    if let Some(since) = &request.since {
        parts.push(format!("since_micros={}", micros(since)));
    }
    if let Some(until) = &request.until {
        parts.push(format!("until_micros={}", micros(until)));
    }
    if !request.message_id.is_empty() {
        parts.push(format!("message_id={}", filter_value(&request.message_id)));
    }
    if request.limit != 0 {
        parts.push(format!("limit={}", request.limit));
    }
    parts.join(" ")
}

/// A filter value as the caller sent it, for the permanent log that people read: its
/// [`excerpt`], escaped by [`crate::text::line`], so that a caller can neither grow the log
/// with a long value nor reach an auditor's terminal through it.
fn filter_value(value: &str) -> String {
    crate::text::line(&excerpt(value)).into_owned()
}

fn micros(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(timestamp.nanos) / 1_000)
}

/// Compares a leaf with the hash the tree was built from, and raises the alarm in the server
/// log when they differ: a leaf was altered in storage. The leaf is still served, as stored,
/// so that auditors' own verification names it.
async fn check_leaf(log: &AuditLog, index: u64, leaf: &[u8]) {
    match log.store().leaf_hash(index).await {
        Ok(stored) if stored == merkle::hash_leaf(leaf) => {}
        Ok(_) => tracing::error!(
            index,
            "AUDIT LOG INTEGRITY: stored leaf does not match its hash in the tree"
        ),
        Err(e) => {
            tracing::error!(index, error = %e, "AUDIT LOG INTEGRITY: no stored hash for leaf")
        }
    }
}

/// Waits until the caller's request rate pays for reading `LIST_CHUNK` more entries. False when
/// the client went away meanwhile.
async fn pay_for_chunk(
    rates: &RateLimits,
    caller: &str,
    tx: &mpsc::Sender<Result<ListAuditEntriesResponse, Status>>,
) -> bool {
    let cost = LIST_CHUNK as f64 / ENTRIES_PER_CALL as f64;
    loop {
        match rates.charge(caller, cost) {
            Ok(()) => return true,
            Err(wait) => tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = tx.closed() => return false,
            },
        }
    }
}

async fn list(
    log: Arc<AuditLog>,
    rates: Arc<RateLimits>,
    reader: Reader,
    request: ListAuditEntriesRequest,
    filters: Filters,
    tx: mpsc::Sender<Result<ListAuditEntriesResponse, Status>>,
) -> Result<(), AuditServiceError> {
    let store = log.store();
    let caller = reader.caller().id.to_string();
    let end = store.audit_size().await?;
    let limit = if request.limit == 0 {
        u64::MAX
    } else {
        request.limit
    };
    let mut sent = 0u64;
    let mut next = request.start_index;
    while next < end && sent < limit {
        // A listing whose client went away ends here even if its filters match nothing, and so
        // never sends: otherwise it would scan to the end of the log for nobody.
        if tx.is_closed() || !pay_for_chunk(&rates, &caller, &tx).await {
            return Ok(());
        }
        let chunk: Vec<(u64, Vec<u8>)> = match &filters.agency {
            Some(agency) => {
                let indices = store
                    .audit_party_indices(agency, next, end, LIST_CHUNK)
                    .await?;
                let mut leaves = Vec::with_capacity(indices.len());
                for index in indices {
                    let leaf = store
                        .audit_leaf(index)
                        .await?
                        .ok_or(AuditServiceError::NotFound(index))?;
                    leaves.push((index, leaf));
                }
                leaves
            }
            None => store.audit_leaves(next, end, LIST_CHUNK).await?,
        };
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        for (index, leaf) in chunk {
            check_leaf(&log, index, &leaf).await;
            let event = AuditService::decode(index, &leaf)?;
            if !filters.matches(&event) || !AuditService::may_see(&reader, &event) {
                continue;
            }
            let response = ListAuditEntriesResponse {
                index,
                leaf,
                event: Some(event),
            };
            if tx.send(Ok(response)).await.is_err() {
                return Ok(());
            }
            sent += 1;
            if sent >= limit {
                break;
            }
        }
        next = last + 1;
    }
    Ok(())
}

#[tonic::async_trait]
impl AuditApi for AuditService {
    #[instrument(skip(self, request))]
    async fn get_log_info(
        &self,
        request: Request<GetLogInfoRequest>,
    ) -> Result<Response<GetLogInfoResponse>, Status> {
        self.admit(
            &request,
            "/puente.v1.AuditService/GetLogInfo",
            String::new(),
        )
        .await?;
        Ok(Response::new(GetLogInfoResponse {
            origin: self.log.origin().to_string(),
            verifier_key: self.log.verifier_key(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        self.admit(
            &request,
            "/puente.v1.AuditService/GetCheckpoint",
            String::new(),
        )
        .await?;
        // Sign now if the log grew, so the checkpoint covers everything durable, this query too.
        self.log
            .sign_if_grown()
            .await
            .map_err(AuditServiceError::from)?;
        let (size, note) = self
            .log
            .store()
            .latest_checkpoint()
            .await
            .map_err(AuditServiceError::from)?
            .ok_or_else(|| AuditServiceError::NoCheckpoint)?;
        let verifier = super::note::NoteVerifier::parse(&self.log.verifier_key())
            .map_err(AuditError::from)
            .map_err(AuditServiceError::from)?;
        let checkpoint = verifier
            .verify(&note)
            .and_then(super::note::Checkpoint::parse)
            .map_err(AuditError::from)
            .map_err(AuditServiceError::from)?;
        Ok(Response::new(GetCheckpointResponse {
            checkpoint: note,
            tree_size: size,
            root_hash: checkpoint.root.to_vec(),
        }))
    }

    type ListAuditEntriesStream = EntryStream;

    #[instrument(skip(self, request))]
    async fn list_audit_entries(
        &self,
        request: Request<ListAuditEntriesRequest>,
    ) -> Result<Response<EntryStream>, Status> {
        // Before anything is recorded: a caller at its limit must not grow the log either.
        let slot = match caller_of(&request) {
            Ok(caller) => Some(self.streams.open(&caller.id.to_string()).map_err(|full| {
                if full.everyone {
                    AuditServiceError::AllStreamsOpen(full.limit)
                } else {
                    AuditServiceError::TooManyStreams {
                        caller: full.agency,
                        limit: full.limit,
                    }
                }
            })?),
            // Refused (and recorded) by `admit` below.
            Err(_) => None,
        };
        let details = describe(request.get_ref());
        let reader = self
            .admit(
                &request,
                "/puente.v1.AuditService/ListAuditEntries",
                details,
            )
            .await?;
        let request = request.into_inner();
        let mut agency = (!request.agency_id.is_empty()).then(|| request.agency_id.clone());
        if let Reader::Agency(_, own) = &reader {
            match &agency {
                Some(asked) if asked != own.as_str() => {
                    return Err(AuditServiceError::NotOwnEntries(own.clone()).into())
                }
                _ => agency = Some(own.to_string()),
            }
        }
        let action = match AuditAction::try_from(request.action) {
            Ok(AuditAction::Unspecified) => None,
            Ok(action) => Some(action as i32),
            Err(_) => {
                return Err(
                    AuditServiceError::from(InvalidField::new("action", "unknown action")).into(),
                )
            }
        };
        let filters = Filters {
            agency,
            action,
            since: request.since.as_ref().map(micros),
            until: request.until.as_ref().map(micros),
            message_id: (!request.message_id.is_empty()).then(|| request.message_id.clone()),
        };
        let (tx, rx) = mpsc::channel(LIST_BUFFER);
        let (log, rates) = (Arc::clone(&self.log), Arc::clone(&self.rates));
        tokio::spawn(async move {
            if let Err(e) = list(log, rates, reader, request, filters, tx.clone()).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        // The slot lives as long as the response stream: until the client has read it to its
        // end (or nearly: see `admission::RESPONSE_CHUNK`) or cancelled it.
        let entries = ReceiverStream::new(rx).map(move |entry| {
            let _held = &slot;
            entry
        });
        Ok(Response::new(Box::pin(entries)))
    }

    #[instrument(skip(self, request))]
    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        let GetInclusionProofRequest {
            leaf_index,
            tree_size,
        } = *request.get_ref();
        let reader = self
            .admit(
                &request,
                "/puente.v1.AuditService/GetInclusionProof",
                format!("leaf_index={leaf_index} tree_size={tree_size}"),
            )
            .await?;
        self.within_log("tree_size", tree_size).await?;
        if leaf_index >= tree_size {
            return Err(AuditServiceError::from(InvalidField::new(
                "leaf_index",
                format!("must be below tree_size {tree_size}"),
            ))
            .into());
        }
        let leaf = self
            .log
            .store()
            .audit_leaf(leaf_index)
            .await
            .map_err(AuditServiceError::from)?
            .ok_or(AuditServiceError::NotFound(leaf_index))?;
        if !Self::may_see(&reader, &Self::decode(leaf_index, &leaf)?) {
            return Err(AuditServiceError::NotFound(leaf_index).into());
        }
        let hashes = self
            .log
            .store()
            .inclusion_proof(leaf_index, tree_size)
            .await
            .map_err(AuditServiceError::from)?;
        Ok(Response::new(GetInclusionProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        let GetConsistencyProofRequest { from_size, to_size } = *request.get_ref();
        self.admit(
            &request,
            "/puente.v1.AuditService/GetConsistencyProof",
            format!("from_size={from_size} to_size={to_size}"),
        )
        .await?;
        self.within_log("to_size", to_size).await?;
        if from_size > to_size {
            return Err(AuditServiceError::from(InvalidField::new(
                "from_size",
                format!("must not exceed to_size {to_size}"),
            ))
            .into());
        }
        let hashes = self
            .log
            .store()
            .consistency_proof(from_size, to_size)
            .await
            .map_err(AuditServiceError::from)?;
        Ok(Response::new(GetConsistencyProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filter values reach the audit-query entry cut and escaped; ordinary ones unchanged.
    #[test]
    fn the_audit_query_entry_bounds_and_escapes_filter_values() {
        let request = ListAuditEntriesRequest {
            agency_id: "ES-CNP".into(),
            message_id: format!("\u{1b}[2J{}", "x".repeat(100_000)),
            ..Default::default()
        };
        let details = describe(&request);
        assert!(details.starts_with("start_index=0 agency_id=ES-CNP message_id=\\x1b[2Jxxx"));
        assert!(details.ends_with('…') && details.len() < 200, "{details}");
    }
}
