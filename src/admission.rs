//! Admission control: how much of the exchange one certificate can take. Each caller identity
//! has a token bucket of requests (refill `limits.requests_per_second`, capacity
//! `limits.request_burst`), and each agency at most `limits.inbox_streams_per_agency` open
//! inbox streams; a call over either limit is answered `RESOURCE_EXHAUSTED` with a retry delay,
//! so a flood from one agency leaves the others their share. What callers and outsiders can
//! add to the audit log and the server's log (refused handshakes, audited calls, warnings) is
//! budgeted by [`records`]. Who may hold a connection — handshakes in progress,
//! established connections per identity, idle connections — is decided by [`connections`],
//! where `server` accepts them.

pub mod connections;
pub mod records;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::service::Interceptor;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::Limits;
use crate::identity::Peer;
use crate::metrics::Metrics;

/// Buckets kept before idle ones are dropped: a bucket refilled to its burst, with no refusal
/// left to report, is the same as a new one.
const MAX_TRACKED_KEYS: usize = 10_000;
/// How often a caller that keeps hitting its limit is logged.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// How long a client should wait before opening another stream once at the limit.
pub const STREAM_RETRY: Duration = Duration::from_secs(1);

/// Refused TLS handshakes recorded per second per remote address, after a burst of
/// [`HANDSHAKE_RECORD_BURST`]: the others are counted and named in the next entry, so a flood
/// of bad handshakes cannot fill the audit log.
pub const HANDSHAKE_RECORDS_PER_SECOND: u32 = 1;
/// Refused TLS handshakes from one address recorded one by one before the rate applies.
pub const HANDSHAKE_RECORD_BURST: u32 = 20;

/// Token buckets by key: per-caller request rates, or per-address handshake records.
pub struct RateLimits {
    per_second: f64,
    burst: f64,
    /// Logged (at most every [`WARN_INTERVAL`] per key) when a key runs out.
    warning: &'static str,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    warned: Option<Instant>,
    /// Refusals since the last admitted one.
    refused: u64,
}

impl RateLimits {
    /// The per-caller request rates of `limits`.
    #[must_use]
    pub fn new(limits: &Limits) -> Arc<RateLimits> {
        RateLimits::with_rate(
            limits.requests_per_second,
            limits.request_burst,
            "caller over its request rate; calls refused with RESOURCE_EXHAUSTED",
        )
    }

    /// The per-address rate of refused-handshake audit entries.
    #[must_use]
    pub fn handshake_records() -> Arc<RateLimits> {
        RateLimits::with_rate(
            HANDSHAKE_RECORDS_PER_SECOND,
            HANDSHAKE_RECORD_BURST,
            "refused TLS handshakes from this address are no longer recorded one by one",
        )
    }

    /// A rate of `per_minute` per key, after a burst of `burst`.
    #[must_use]
    pub fn per_minute(per_minute: u32, burst: u32, warning: &'static str) -> Arc<RateLimits> {
        Arc::new(RateLimits {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
            warning,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    fn with_rate(per_second: u32, burst: u32, warning: &'static str) -> Arc<RateLimits> {
        Arc::new(RateLimits {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            warning,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token from `key`'s bucket. Returns how many were refused since the last one
    /// taken.
    ///
    /// # Errors
    /// The bucket is empty: how long until it holds a token again.
    pub fn admit(&self, key: &str) -> Result<u64, Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_KEYS && !buckets.contains_key(key) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.refused > 0
                    || b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
            warned: None,
            refused: 0,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(std::mem::take(&mut bucket.refused));
        }
        bucket.refused += 1;
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second);
        if bucket
            .warned
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            bucket.warned = Some(now);
            crate::budgeted_warn!(key, per_second = self.per_second, "{}", self.warning);
        }
        Err(wait)
    }

    /// An interceptor admitting each call of an authenticated caller against its bucket. Calls
    /// without a usable identity pass: the services refuse them.
    #[must_use]
    pub fn interceptor(self: &Arc<Self>) -> RateInterceptor {
        RateInterceptor(Arc::clone(self))
    }
}

/// The tonic interceptor of [`RateLimits`].
#[derive(Clone)]
pub struct RateInterceptor(Arc<RateLimits>);

impl Interceptor for RateInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let caller = request
            .extensions()
            .get::<Peer>()
            .and_then(|peer| peer.caller.as_ref().ok())
            .map(|caller| caller.id.to_string());
        if let Some(caller) = caller {
            if let Err(wait) = self.0.admit(&caller) {
                return Err(exhausted(
                    format!(
                        "{caller} is over its limit of {} calls per second; retry after {} ms",
                        self.0.per_second,
                        wait.as_millis().max(1)
                    ),
                    wait,
                ));
            }
        }
        Ok(request)
    }
}

/// Open inbox streams per agency.
#[derive(Clone)]
pub struct StreamLimits {
    per_agency: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
    metrics: Arc<Metrics>,
}

impl StreamLimits {
    /// The stream limit of `limits`; open streams are counted in `metrics` too.
    #[must_use]
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> StreamLimits {
        StreamLimits {
            per_agency: limits.inbox_streams_per_agency,
            open: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Takes one of `agency`'s stream slots until the returned slot is dropped.
    ///
    /// # Errors
    /// The agency has as many streams open as it may.
    pub fn open(&self, agency: &str) -> Result<StreamSlot, StreamLimitReached> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(agency.to_string()).or_default();
        if *count >= self.per_agency {
            crate::budgeted_warn!(
                agency,
                limit = self.per_agency,
                "inbox stream refused: agency at its stream limit"
            );
            return Err(StreamLimitReached {
                agency: agency.to_string(),
                limit: self.per_agency,
            });
        }
        *count += 1;
        let gauge = self.metrics.inbox_streams(agency);
        gauge.inc();
        Ok(StreamSlot {
            limits: self.clone(),
            agency: agency.to_string(),
            gauge,
        })
    }
}

/// An agency asked for one stream more than it may have open.
#[derive(Debug)]
pub struct StreamLimitReached {
    /// The agency.
    pub agency: String,
    /// Its limit.
    pub limit: usize,
}

/// One open inbox stream of an agency; frees its slot when dropped.
pub struct StreamSlot {
    limits: StreamLimits,
    agency: String,
    /// The agency's open-streams gauge, lowered again on drop.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.agency) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.agency);
            }
        }
    }
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo` detail.
#[must_use]
pub fn exhausted(message: String, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32, streams: usize) -> Limits {
        Limits {
            requests_per_second: per_second,
            request_burst: burst,
            inbox_streams_per_agency: streams,
            ..Limits::default()
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_the_wait() {
        let rates = RateLimits::new(&limits(10, 3, 1));
        for _ in 0..3 {
            rates.admit("ES-CNP").expect("within the burst");
        }
        let wait = rates.admit("ES-CNP").expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another caller has its own bucket.
        rates.admit("CO-DIJIN").expect("other caller");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert_eq!(rates.admit("ES-CNP"), Ok(1), "names the one refusal since");
    }

    #[test]
    fn idle_buckets_are_dropped_once_many_keys_are_tracked() {
        let rates = RateLimits::with_rate(1_000_000, 2, "test");
        for n in 0..MAX_TRACKED_KEYS {
            rates.admit(&n.to_string()).expect("fresh key");
        }
        std::thread::sleep(Duration::from_millis(5));
        rates.admit("one more").expect("fresh key");
        let tracked = rates.buckets.lock().expect("lock").len();
        assert!(tracked < MAX_TRACKED_KEYS, "{tracked} buckets kept");
    }

    #[test]
    fn stream_slots_are_counted_per_agency_and_freed_on_drop() {
        let metrics = Arc::new(Metrics::default());
        let streams = StreamLimits::new(&limits(10, 10, 2), Arc::clone(&metrics));
        let first = streams.open("ES-CNP").expect("first");
        let _second = streams.open("ES-CNP").expect("second");
        let refused = streams.open("ES-CNP").err().expect("third refused");
        assert_eq!((refused.agency.as_str(), refused.limit), ("ES-CNP", 2));
        assert_eq!(
            metrics.inbox_streams("ES-CNP").get(),
            2,
            "the refused one is not open"
        );
        let _other = streams.open("CO-DIJIN").expect("other agency");
        drop(first);
        assert_eq!(metrics.inbox_streams("ES-CNP").get(), 1);
        assert_eq!(metrics.inbox_streams("CO-DIJIN").get(), 1);
        streams.open("ES-CNP").expect("a slot was freed");
    }
}
