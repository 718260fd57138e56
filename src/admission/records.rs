//! What callers and outsiders can add to the permanent audit log and to the server's log.
//!
//! - Refused TLS handshakes: one by one within a rate per source address (see
//!   [`RateLimits::handshake_records`]) and a global budget
//!   (`limits.refused_handshake_record_burst`, then `limits.refused_handshake_records_per_minute`);
//!   beyond it they are counted, and one aggregate entry ("N refused handshakes from M
//!   addresses") is written when the budget allows it again. Entries of refused handshakes per
//!   day are therefore at most the burst plus the rate times 1,440, whatever the number of
//!   addresses.
//! - Calls that append an entry on their caller's behalf — every refusal (`rpc::answer`),
//!   every `GetMessage` read and every `AuditService` query — are charged one token each to the
//!   caller's [`AuditBudget`] (`limits.audited_call_burst`, then
//!   `limits.audited_calls_per_minute`); one over it is answered `RESOURCE_EXHAUSTED` with a
//!   retry delay and appends nothing, like a call over the request rate.
//! - WARN lines about single events (refused handshakes, connection limits, callers over a
//!   limit) pass through one process-wide [`warning`] budget: [`WARN_BURST`] lines, then
//!   [`WARN_PER_MINUTE`]; the next line passed names how many were left out.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use super::{exhausted, RateLimits};
use crate::config::Limits;

/// WARN lines about single events logged one by one before [`WARN_PER_MINUTE`] applies.
pub(crate) const WARN_BURST: u32 = 50;
/// WARN lines about single events logged per minute after the burst.
pub(crate) const WARN_PER_MINUTE: u32 = 12;
/// Distinct addresses an aggregate entry counts one by one; beyond, it says "at least".
const MAX_COUNTED_ADDRESSES: usize = 100_000;
/// How often pending aggregate entries are looked at.
pub(crate) const AGGREGATE_INTERVAL: Duration = Duration::from_secs(1);

/// A token bucket: `burst` tokens, refilled at `per_minute`.
struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn new(per_minute: u32, burst: u32) -> Bucket {
        Bucket {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            updated: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.updated).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

// === Log lines ===

struct Warnings {
    bucket: Bucket,
    suppressed: u64,
}

static WARNINGS: Mutex<Option<Warnings>> = Mutex::new(None);

/// Whether a WARN line about a single event may be logged now: `Some(n)` with the number of
/// such lines left out since the last one logged (name it in the line), or `None` to leave
/// this one out.
pub(crate) fn warning() -> Option<u64> {
    let mut warnings = WARNINGS.lock().unwrap_or_else(PoisonError::into_inner);
    let warnings = warnings.get_or_insert_with(|| Warnings {
        bucket: Bucket::new(WARN_PER_MINUTE, WARN_BURST),
        suppressed: 0,
    });
    if warnings.bucket.take() {
        return Some(std::mem::take(&mut warnings.suppressed));
    }
    warnings.suppressed += 1;
    None
}

/// Logs a WARN line about a single event under the [`warning`] budget, with the number of
/// lines left out before it as `suppressed_warnings`.
#[macro_export]
macro_rules! budgeted_warn {
    ($($arg:tt)+) => {
        if let Some(suppressed) = $crate::admission::records::warning() {
            if suppressed == 0 {
                tracing::warn!($($arg)+);
            } else {
                tracing::warn!(suppressed_warnings = suppressed, $($arg)+);
            }
        }
    };
}

// === Refused handshakes ===

/// What to do with one refused handshake.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HandshakeRecord {
    /// Record it.
    One,
    /// Counted into the next aggregate entry.
    Aggregated,
}

/// Refused handshakes left out, waiting for an aggregate entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Aggregate {
    /// How many.
    pub refused: u64,
    /// From how many distinct addresses (at least, past [`MAX_COUNTED_ADDRESSES`]).
    pub addresses: usize,
}

struct Pending {
    budget: Bucket,
    refused: u64,
    addresses: HashSet<IpAddr>,
}

/// The per-address and global budgets of refused-handshake entries.
pub(crate) struct HandshakeRecords {
    per_address: Arc<RateLimits>,
    global: Mutex<Pending>,
}

impl HandshakeRecords {
    /// The budgets of `limits`.
    #[must_use]
    pub(crate) fn new(limits: &Limits) -> Arc<HandshakeRecords> {
        Arc::new(HandshakeRecords {
            per_address: RateLimits::handshake_records(),
            global: Mutex::new(Pending {
                budget: Bucket::new(
                    limits.refused_handshake_records_per_minute,
                    limits.refused_handshake_record_burst,
                ),
                refused: 0,
                addresses: HashSet::new(),
            }),
        })
    }

    /// Decides about one refused handshake from `address`: recorded one by one within both
    /// its address's rate and the global budget, else counted for an aggregate entry. While
    /// refused handshakes wait for an aggregate entry, every new one joins them: the aggregate
    /// takes the next token.
    pub(crate) fn refused(&self, address: IpAddr) -> HandshakeRecord {
        let mut global = self.global.lock().unwrap_or_else(PoisonError::into_inner);
        if global.refused == 0
            && self.per_address.admit(&address.to_string()).is_ok()
            && global.budget.take()
        {
            return HandshakeRecord::One;
        }
        global.refused += 1;
        if global.addresses.len() < MAX_COUNTED_ADDRESSES {
            global.addresses.insert(address);
        }
        HandshakeRecord::Aggregated
    }

    /// The refused handshakes left out, once the global budget has a token for their entry.
    pub(crate) fn take_aggregate(&self) -> Option<Aggregate> {
        let mut global = self.global.lock().unwrap_or_else(PoisonError::into_inner);
        if global.refused == 0 || !global.budget.take() {
            return None;
        }
        let aggregate = Aggregate {
            refused: std::mem::take(&mut global.refused),
            addresses: global.addresses.len(),
        };
        global.addresses.clear();
        Some(aggregate)
    }
}

// === Audited calls ===

/// Per-caller budget of calls that append an audit entry on the caller's behalf.
pub struct AuditBudget {
    callers: Arc<RateLimits>,
    per_minute: u32,
    burst: u32,
}

impl std::fmt::Debug for AuditBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditBudget")
            .field("per_minute", &self.per_minute)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl Default for AuditBudget {
    fn default() -> Self {
        AuditBudget::new(&Limits::default())
    }
}

impl AuditBudget {
    /// The budget of `limits`.
    #[must_use]
    pub fn new(limits: &Limits) -> AuditBudget {
        AuditBudget {
            callers: RateLimits::per_minute(
                limits.audited_calls_per_minute,
                limits.audited_call_burst,
                "caller over its budget of audited calls (reads and refusals); calls refused with RESOURCE_EXHAUSTED",
            ),
            per_minute: limits.audited_calls_per_minute,
            burst: limits.audited_call_burst,
        }
    }

    /// Charges one audited call to `caller` (its identity; callers without a usable identity
    /// share one budget, under a name of their own).
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` with a retry delay when the caller's budget is spent: the call is
    /// not served and nothing is recorded.
    pub fn charge(&self, caller: &str) -> Result<(), Status> {
        self.callers.admit(caller).map(drop).map_err(|wait| {
            exhausted(
                format!(
                    "{caller} is over its budget of audited calls (each read and each refused call is a permanent audit entry: {} a minute after {} at once); retry after {} ms",
                    self.per_minute,
                    self.burst,
                    wait.as_millis().max(1)
                ),
                wait,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32, burst: u32) -> Limits {
        Limits {
            refused_handshake_records_per_minute: per_minute,
            refused_handshake_record_burst: burst,
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refused_handshakes_past_the_global_burst_are_aggregated_whatever_the_address() {
        let records = HandshakeRecords::new(&limits(60, 3));
        for host in 2..5u8 {
            assert_eq!(
                records.refused(IpAddr::from([127, 0, 0, host])),
                HandshakeRecord::One
            );
        }
        for host in 5..45u8 {
            assert_eq!(
                records.refused(IpAddr::from([127, 0, 0, host])),
                HandshakeRecord::Aggregated
            );
        }
        assert_eq!(records.take_aggregate(), None, "no token yet");
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert_eq!(
            records.take_aggregate(),
            Some(Aggregate {
                refused: 40,
                addresses: 40
            })
        );
        assert_eq!(records.take_aggregate(), None, "nothing left out since");
    }
}
