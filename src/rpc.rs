//! The gRPC edge: how a call's outcome becomes its answer. Each service's error enum maps to a
//! `tonic::Status` in one exhaustive `match` in its own module, with the helpers here keeping the
//! statuses uniform ([`InvalidField`], [`store_failure`], [`internal`], [`shutting_down`]); and
//! [`answer`] records every refusal in the audit log before it is answered.

use std::fmt::Display;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::error;

use crate::audit::entry::refusal_event;
use crate::identity::Peer;
use crate::store::{Store, StoreError};

/// A request field that breaks a rule. Answered `INVALID_ARGUMENT` naming the field (see
/// [`bad_request`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Field path, e.g. `recipients[2]` or `agency.country`.
    pub field: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl InvalidField {
    /// `field` breaks a rule: `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
        InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<InvalidField> for Status {
    fn from(invalid: InvalidField) -> Status {
        bad_request(&invalid.field, &invalid.reason)
    }
}

/// `INVALID_ARGUMENT` naming the field, with a `BadRequest` field violation in the details so
/// clients can point at the field programmatically.
pub fn bad_request(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// `INTERNAL` without detail for the caller; the detail is logged.
pub fn internal(error: &dyn Display) -> Status {
    tracing::error!(error = %error, "internal error");
    Status::internal("internal error; the exchange operators have been notified in the server log")
}

/// `UNAVAILABLE` when the store cannot write (full disk, I/O error): the caller may retry, with
/// the same `client_message_id` for a send; the detail is logged.
fn storage_unavailable(error: &dyn Display) -> Status {
    tracing::error!(error = %error, "storage failure");
    Status::unavailable(
        "the exchange cannot write to its storage right now; retry later (a send with the same client_message_id is never stored twice)",
    )
}

/// The status of a store failure that reached a service: `UNAVAILABLE` while shutting down or
/// when storage cannot be written, `INTERNAL` (detail logged) otherwise.
pub fn store_failure(error: &StoreError) -> Status {
    match error {
        StoreError::Closed => shutting_down(),
        StoreError::Io(_) | StoreError::Sled(_) | StoreError::Commit(_) => {
            storage_unavailable(error)
        }
        StoreError::Corrupt { .. }
        | StoreError::LogHashes(_)
        | StoreError::IdempotencyConflict
        | StoreError::AlreadyExists
        | StoreError::NotFound
        | StoreError::Sealing(_) => internal(error),
    }
}

/// `UNAVAILABLE` while the server shuts down.
pub fn shutting_down() -> Status {
    Status::unavailable("the exchange is shutting down; retry shortly")
}

/// An error that says whether it refuses the caller (authentication, authorisation,
/// validation: recorded as REQUEST_REFUSED) or is the server's own failure (not recorded).
pub trait Refusal: std::fmt::Display {
    /// Whether this error refuses the caller.
    fn is_refusal(&self) -> bool;
}

/// Answers a call of `service` (e.g. `puente.v1.ExchangeService`); a refused call is recorded
/// in the audit log first: who (as far as the connection says), which method, why — within
/// the caller's budget of audited calls, else the answer is `RESOURCE_EXHAUSTED` instead.
///
/// # Errors
/// The status of the error, or `RESOURCE_EXHAUSTED` over the caller's audit budget.
pub async fn answer<T, E: Refusal + Into<Status>>(
    store: &dyn Store,
    service: &str,
    method: &str,
    peer: Option<Peer>,
    result: Result<T, E>,
) -> Result<tonic::Response<T>, Status> {
    let err = match result {
        Ok(value) => return Ok(tonic::Response::new(value)),
        Err(err) => err,
    };
    if err.is_refusal() {
        // Over the caller's budget of audited calls: refused for that instead, not recorded.
        charge_audited(peer.as_ref())?;
        let event = refusal_event(
            peer.as_ref(),
            &format!("/{service}/{method}"),
            &err.to_string(),
        );
        if let Err(e) = store.record(vec![event.into()]).await {
            error!(error = %e, "cannot record a refused request in the audit log");
        }
    }
    Err(err.into())
}

/// Charges one audited call to the caller of `peer`'s connection against its budget of
/// audited calls ([`crate::admission::records::AuditBudget`]); a call with no connection
/// information (in-process) is not charged.
///
/// # Errors
/// `RESOURCE_EXHAUSTED` with a retry delay when the caller's budget is spent.
pub fn charge_audited(peer: Option<&Peer>) -> Result<(), Status> {
    let Some(peer) = peer else { return Ok(()) };
    let caller = peer
        .caller
        .as_ref()
        .map_or_else(|_| "(no usable identity)".to_string(), |c| c.id.to_string());
    peer.audit_budget.charge(&caller)
}
