//! Admission control: how much of the exchange one certificate can take. Each caller identity
//! has a token bucket of requests (refill `limits.requests_per_second`, capacity
//! `limits.request_burst`), and each agency at most `limits.inbox_streams_per_agency` open
//! inbox streams; a call over either limit is answered `RESOURCE_EXHAUSTED` with a retry delay,
//! so a flood from one agency leaves the others their share. What callers and outsiders can
//! add to the audit log and the server's log (refused handshakes, audited calls, warnings) is
//! budgeted by [`records`]. Who may hold a connection — handshakes in progress,
//! established connections per identity, idle connections — is decided by [`connections`],
//! where `server` accepts them.
//!
//! Answers not yet sent are budgeted in bytes ([`ResponseBudget`]), per caller identity and in
//! total: a client that opens calls for large messages and never reads them holds at most its
//! share of the server's memory, and its calls beyond it are refused.
//!
//! Layout: `rate` holds the token buckets (requests per caller, handshake records per address),
//! `streams` the open-stream limits, `responses` the response byte budget and the layer that
//! enforces it; this file the limits they share and the `RESOURCE_EXHAUSTED` answer.

pub(crate) mod connections;
mod rate;
pub(crate) mod records;
mod responses;
mod streams;

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use rate::{RateLimits, HANDSHAKE_RECORDS_PER_SECOND, HANDSHAKE_RECORD_BURST};
pub use responses::{
    HeldBody, ResponseBudget, ResponseBudgetSpent, ResponseBytesLayer, ResponseBytesService,
    ResponsePermit, RESPONSE_CHUNK, RESPONSE_RETRY, RESPONSE_WAIT,
};
pub use streams::{StreamLimitReached, StreamLimits, StreamSlot, STREAM_RETRY};

/// Buckets kept before idle ones are dropped: a bucket refilled to its burst, with no refusal
/// left to report, is the same as a new one.
const MAX_TRACKED_KEYS: usize = 10_000;
/// How often a caller that keeps hitting its limit is logged.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// `RESOURCE_EXHAUSTED` with a `RetryInfo` detail.
#[must_use]
pub fn exhausted(message: String, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}
