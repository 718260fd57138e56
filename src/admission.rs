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

pub mod connections;
pub mod records;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use prost::bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

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

    /// Takes `tokens` from `key`'s bucket at once, for work that costs more than a call (a long
    /// scan pays as it goes). Nothing is taken when the bucket holds fewer.
    ///
    /// # Errors
    /// The bucket holds fewer than `tokens`: how long until it holds them (a cost above the
    /// burst is capped at the burst).
    pub fn charge(&self, key: &str, tokens: f64) -> Result<(), Duration> {
        let tokens = tokens.clamp(0.0, self.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
            warned: None,
            refused: 0,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= tokens {
            bucket.tokens -= tokens;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (tokens - bucket.tokens) / self.per_second,
        ))
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

/// Open streams per agency (inbox streams) or per caller identity (audit listings).
#[derive(Clone)]
pub struct StreamLimits {
    per_agency: usize,
    /// Streams of this kind open at once, all callers together.
    total: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
    /// When a refusal was last logged: at most one line per [`WARN_INTERVAL`], so refusals
    /// cannot flood the log.
    warned: Arc<Mutex<Option<Instant>>>,
    /// Where open inbox streams are counted; audit listings are not.
    metrics: Option<Arc<Metrics>>,
    /// What kind of stream, for the log.
    kind: &'static str,
}

impl StreamLimits {
    /// The inbox stream limit of `limits`; open streams are counted in `metrics` too.
    #[must_use]
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> StreamLimits {
        StreamLimits {
            per_agency: limits.inbox_streams_per_agency,
            // Bounded by the registered agencies.
            total: usize::MAX,
            open: Arc::new(Mutex::new(HashMap::new())),
            warned: Arc::default(),
            metrics: Some(metrics),
            kind: "inbox stream",
        }
    }

    /// The limits of open `ListAuditEntries` streams of `limits`, per caller identity and in
    /// total (auditor identities are as many as the CA issues).
    #[must_use]
    pub fn audit(limits: &Limits) -> StreamLimits {
        StreamLimits {
            per_agency: limits.audit_streams_per_caller,
            total: limits.audit_streams_total,
            open: Arc::new(Mutex::new(HashMap::new())),
            warned: Arc::default(),
            metrics: None,
            kind: "audit listing",
        }
    }

    /// Takes one of `agency`'s stream slots until the returned slot is dropped.
    ///
    /// # Errors
    /// The agency has as many streams open as it may.
    pub fn open(&self, agency: &str) -> Result<StreamSlot, StreamLimitReached> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let everyone = open.values().sum::<usize>() >= self.total;
        let count = open.entry(agency.to_string()).or_default();
        if everyone || *count >= self.per_agency {
            let limit = if everyone {
                self.total
            } else {
                self.per_agency
            };
            let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
            if warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                *warned = Some(Instant::now());
                crate::budgeted_warn!(
                    agency,
                    limit,
                    everyone,
                    kind = self.kind,
                    "stream refused: at the stream limit (logged at most every 10 s)"
                );
            }
            if *count == 0 {
                open.remove(agency);
            }
            return Err(StreamLimitReached {
                agency: agency.to_string(),
                limit,
                everyone,
            });
        }
        *count += 1;
        let gauge = self
            .metrics
            .as_ref()
            .map(|metrics| metrics.inbox_streams(agency));
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
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
    /// Its limit, or the total's.
    pub limit: usize,
    /// The limit reached is the total of all callers', not the agency's own.
    pub everyone: bool,
}

/// One open inbox stream of an agency; frees its slot when dropped.
pub struct StreamSlot {
    limits: StreamLimits,
    agency: String,
    /// The agency's open-streams gauge, lowered again on drop.
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
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

/// How long a call waits for room in the response budgets before it is refused: long enough
/// to ride out a burst of large answers, short enough that a caller whose own answers sit
/// unread learns it at once.
pub const RESPONSE_WAIT: Duration = Duration::from_secs(1);
/// How long a client should wait before retrying a call refused for want of response budget.
pub const RESPONSE_RETRY: Duration = Duration::from_secs(1);
/// Largest piece of a budgeted response body handed to the transport at once. hyper asks for
/// the next piece only once the stream has send capacity again, and h2 queues whole pieces: so
/// the body, and the permit it holds, lives until all but about one piece and the client's
/// window has left the server.
pub const RESPONSE_CHUNK: usize = 64 * 1024;

/// Bytes of answers in flight: encoded (or about to be) but not yet sent, typically because the
/// client does not read. One budget for the whole exchange and one per caller identity, so a
/// caller that never reads its answers holds at most its own share, and all callers together
/// at most the total. A handler reserves before it reads the message it answers with; the
/// permit travels with the response (in its extensions) to [`ResponseBytesLayer`], which holds
/// it until the body is sent or dropped.
pub struct ResponseBudget {
    total: Arc<Semaphore>,
    total_kib: u32,
    per_caller_kib: u32,
    callers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Room reserved in the response budgets, given back when the last clone is dropped. Clone
/// only because response extensions must be.
#[derive(Clone)]
pub struct ResponsePermit {
    /// The caller's share and the total's, released together.
    _held: Arc<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// Whose response budget was spent.
#[derive(Debug)]
pub enum ResponseBudgetSpent {
    /// The caller's own.
    Caller {
        /// The caller identity.
        caller: String,
        /// Its budget, in MiB.
        mib: u64,
    },
    /// The exchange's, shared by every caller.
    Total {
        /// The budget, in MiB.
        mib: u64,
    },
}

impl std::fmt::Display for ResponseBudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBudgetSpent::Caller { caller, mib } => write!(
                f,
                "{caller} already has {mib} MiB of answers that its clients have not read yet, the most allowed; read or cancel those calls, then retry"
            ),
            ResponseBudgetSpent::Total { mib } => write!(
                f,
                "the exchange has {mib} MiB of answers in flight to slow readers, the most it holds; retry shortly"
            ),
        }
    }
}

impl ResponseBudget {
    /// The budgets of `limits`.
    #[must_use]
    pub fn new(limits: &Limits) -> Arc<ResponseBudget> {
        let kib = |bytes: u64| u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let total_kib = kib(limits.response_bytes_in_flight).max(1);
        Arc::new(ResponseBudget {
            total: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            per_caller_kib: kib(limits.response_bytes_per_caller).clamp(1, total_kib),
            callers: Mutex::new(HashMap::new()),
        })
    }

    /// Reserves room for an answer of about `bytes` bytes to `caller`, waiting up to
    /// [`RESPONSE_WAIT`]. An answer larger than the caller's budget takes all of it, and goes
    /// alone.
    ///
    /// # Errors
    /// No room came free in time, in the caller's budget or in the total.
    pub async fn reserve(
        &self,
        caller: &str,
        bytes: u64,
    ) -> Result<ResponsePermit, ResponseBudgetSpent> {
        let need = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.per_caller_kib);
        let own = self.caller_budget(caller);
        let deadline = tokio::time::Instant::now() + RESPONSE_WAIT;
        // The caller's own budget first: a caller over it waits without holding any of the
        // total that others need.
        let spent_own = || ResponseBudgetSpent::Caller {
            caller: caller.to_string(),
            mib: u64::from(self.per_caller_kib) / 1024,
        };
        let own = match tokio::time::timeout_at(deadline, own.acquire_many_owned(need)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(spent_own()),
        };
        let total = Arc::clone(&self.total);
        let spent_total = || ResponseBudgetSpent::Total {
            mib: u64::from(self.total_kib) / 1024,
        };
        let total = match tokio::time::timeout_at(deadline, total.acquire_many_owned(need)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(spent_total()),
        };
        Ok(ResponsePermit {
            _held: Arc::new((own, total)),
        })
    }

    /// The semaphore of `caller`'s budget. Budgets with nothing reserved are forgotten once
    /// many callers are tracked: they are the same as new ones.
    fn caller_budget(&self, caller: &str) -> Arc<Semaphore> {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if callers.len() >= MAX_TRACKED_KEYS && !callers.contains_key(caller) {
            let full = self.per_caller_kib as usize;
            callers.retain(|_, budget| budget.available_permits() < full);
        }
        Arc::clone(
            callers
                .entry(caller.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller_kib as usize))),
        )
    }
}

/// The tower layer that hands the data of every response body to the transport in pieces of at
/// most [`RESPONSE_CHUNK`] bytes (zero-copy), and holds the [`ResponsePermit`] a response
/// carries in its extensions until its body is sent or dropped. Streams hold the permits of
/// their items themselves (`exchange::inbox`); the pieces make those precise too.
#[derive(Clone, Copy, Default)]
pub struct ResponseBytesLayer;

impl<S> Layer<S> for ResponseBytesLayer {
    type Service = ResponseBytesService<S>;

    fn layer(&self, inner: S) -> ResponseBytesService<S> {
        ResponseBytesService { inner }
    }
}

/// The service of [`ResponseBytesLayer`].
#[derive(Clone)]
pub struct ResponseBytesService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ResponseBytesService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<HeldBody<ResBody>>;
    type Error = S::Error;
    type Future = futures::future::MapOk<
        S::Future,
        fn(http::Response<ResBody>) -> http::Response<HeldBody<ResBody>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        use futures::TryFutureExt as _;
        self.inner
            .call(request)
            .map_ok(hold_permit as fn(http::Response<ResBody>) -> _)
    }
}

fn hold_permit<B>(mut response: http::Response<B>) -> http::Response<HeldBody<B>> {
    let permit = response.extensions_mut().remove::<ResponsePermit>();
    response.map(|inner| HeldBody {
        inner,
        permit,
        pending: Bytes::new(),
    })
}

pin_project_lite::pin_project! {
    /// A response body handed over in pieces, holding the [`ResponsePermit`] of its response,
    /// if it has one, until the body ends or is dropped.
    pub struct HeldBody<B> {
        #[pin]
        inner: B,
        permit: Option<ResponsePermit>,
        // The rest of a data frame not yet handed over.
        pending: Bytes,
    }
}

impl<B: Body<Data = Bytes>> Body for HeldBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if !this.pending.is_empty() {
            let take = this.pending.len().min(RESPONSE_CHUNK);
            return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(take)))));
        }
        let frame = ready!(this.inner.poll_frame(cx));
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > RESPONSE_CHUNK {
                        *this.pending = data.split_off(RESPONSE_CHUNK);
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => {
                // Ended, or broke off: nothing more of it will be queued.
                *this.permit = None;
                Poll::Ready(other)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(pending));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint
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

    /// Audit listings are limited per caller and in total; a refused caller is not tracked.
    #[test]
    fn audit_stream_slots_are_limited_per_caller_and_in_total() {
        let streams = StreamLimits::audit(&Limits {
            audit_streams_per_caller: 2,
            audit_streams_total: 3,
            ..Limits::default()
        });
        let first = streams.open("auditor/ana").expect("first");
        let _second = streams.open("auditor/ana").expect("second");
        let own = streams
            .open("auditor/ana")
            .err()
            .expect("over its own limit");
        assert_eq!((own.limit, own.everyone), (2, false));
        let _third = streams.open("auditor/bo").expect("another caller");
        let all = streams.open("auditor/cy").err().expect("over the total");
        assert_eq!((all.limit, all.everyone), (3, true));
        assert!(
            !streams
                .open
                .lock()
                .expect("lock")
                .contains_key("auditor/cy"),
            "a refused caller leaves no entry"
        );
        drop(first);
        streams.open("auditor/cy").expect("a slot was freed");
    }

    /// Work charged in many tokens at once drains the same bucket as calls, and waits for what
    /// it lacks instead of taking it.
    #[test]
    fn a_charge_takes_many_tokens_or_names_the_wait() {
        let rates = RateLimits::new(&limits(10, 5, 1));
        rates.charge("ES-CNP", 4.0).expect("within the burst");
        let wait = rates.charge("ES-CNP", 2.0).expect_err("only one left");
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        rates
            .admit("ES-CNP")
            .expect("the token the charge did not take");
        assert!(
            rates.admit("ES-CNP").is_err(),
            "the charge used up the burst"
        );
        rates.charge("CO-DIJIN", 5.0).expect("another caller");
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

    fn budget(total_mib: u64, per_caller_mib: u64) -> Arc<ResponseBudget> {
        ResponseBudget::new(&Limits {
            response_bytes_in_flight: total_mib << 20,
            response_bytes_per_caller: per_caller_mib << 20,
            ..Limits::default()
        })
    }

    /// A caller's answers in flight are bounded by its own budget, then by the total; room
    /// comes back when a permit is dropped.
    #[tokio::test]
    async fn response_budgets_bound_each_caller_and_the_total() {
        let responses = budget(3, 2);
        let first = responses
            .reserve("ES-CNP", 1 << 20)
            .await
            .expect("first MiB");
        let _second = responses
            .reserve("ES-CNP", 1 << 20)
            .await
            .expect("second MiB");
        let spent = responses
            .reserve("ES-CNP", 1)
            .await
            .err()
            .expect("own budget spent");
        assert!(
            matches!(spent, ResponseBudgetSpent::Caller { mib: 2, .. }),
            "{spent:?}"
        );
        let _other = responses
            .reserve("CO-DIJIN", 1 << 20)
            .await
            .expect("another caller");
        let spent = responses
            .reserve("FR-PJ", 1)
            .await
            .err()
            .expect("total spent");
        assert!(
            matches!(spent, ResponseBudgetSpent::Total { mib: 3 }),
            "{spent:?}"
        );
        drop(first);
        responses
            .reserve("ES-CNP", 1 << 20)
            .await
            .expect("room came back");
    }

    /// An answer larger than a caller's budget is admitted alone, not refused for ever.
    #[tokio::test]
    async fn an_answer_larger_than_the_budget_goes_alone() {
        let responses = budget(8, 2);
        let large = responses.reserve("ES-CNP", 100 << 20).await.expect("alone");
        assert!(
            responses.reserve("ES-CNP", 1).await.is_err(),
            "nothing beside it"
        );
        drop(large);
        responses.reserve("ES-CNP", 1).await.expect("after it");
    }

    /// A budgeted body is handed over in pieces of at most `RESPONSE_CHUNK` bytes, and keeps
    /// its permit until it ends.
    #[tokio::test]
    async fn a_budgeted_body_is_cut_into_chunks_and_holds_its_permit_until_it_ends() {
        use http_body_util::BodyExt as _;
        let responses = budget(1, 1);
        let permit = responses.reserve("ES-CNP", 1 << 20).await.expect("permit");
        let data = Bytes::from(vec![7u8; 3 * RESPONSE_CHUNK + 10]);
        let mut response = http::Response::new(http_body_util::Full::new(data));
        response.extensions_mut().insert(permit);
        let mut body = hold_permit(response).into_body();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            sizes.push(data.len());
            if sizes.len() < 4 {
                assert!(responses.reserve("CO-DIJIN", 1).await.is_err(), "held");
            }
        }
        assert_eq!(
            sizes,
            vec![RESPONSE_CHUNK, RESPONSE_CHUNK, RESPONSE_CHUNK, 10]
        );
        responses
            .reserve("CO-DIJIN", 1)
            .await
            .expect("released at the end");
    }
}
