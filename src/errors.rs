//! Shared pieces of the error → `tonic::Status` mappings. Each module maps its own error enum in
//! one exhaustive `match`; these helpers keep the statuses uniform.

use std::fmt::Display;

use tonic::{Code, Status};

use crate::store::StoreError;
use tonic_types::{ErrorDetails, StatusExt};

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
        StoreError::Io(_) | StoreError::Sled(_) => storage_unavailable(error),
        _ => internal(error),
    }
}

/// `UNAVAILABLE` while the server shuts down.
pub fn shutting_down() -> Status {
    Status::unavailable("the exchange is shutting down; retry shortly")
}
