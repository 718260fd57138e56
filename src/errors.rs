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

/// Most characters of a caller's input that an error message repeats: enough to recognise the
/// value, never enough to turn a refusal into an amplifier of what was sent.
pub const MAX_ECHO_CHARS: usize = 40;

/// The start of a caller's input, as much of it as an error message (or an audit entry) may
/// repeat: at most [`MAX_ECHO_CHARS`] characters, followed by `…` when cut. Quote it with
/// `{:?}` so that control and bidi characters show escaped.
pub fn excerpt(input: &str) -> String {
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", &input[..end]),
        None => input.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::{excerpt, MAX_ECHO_CHARS};

    #[test]
    fn excerpt_keeps_short_input_and_cuts_long_input_on_a_character_boundary() {
        assert_eq!(excerpt(""), "");
        assert_eq!(excerpt("ES-CNP"), "ES-CNP");
        let exact = "x".repeat(MAX_ECHO_CHARS);
        assert_eq!(excerpt(&exact), exact);
        let long = "é".repeat(100_000);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(cut.ends_with('…'));
        // Quoted, control and bidi characters show escaped.
        assert_eq!(
            format!("{:?}", excerpt("a\u{1b}[2J\u{202e}")),
            r#""a\u{1b}[2J\u{202e}""#
        );
    }
}
