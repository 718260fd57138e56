//! Token buckets by key: each caller identity's request rate (enforced by a tonic interceptor,
//! and charged by work that costs more than a call), and the rate at which refused handshakes
//! from one address are recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{MAX_TRACKED_KEYS, WARN_INTERVAL};
use crate::config::Limits;

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

    /// The sustained rate, in tokens per second.
    #[must_use]
    pub fn per_second(&self) -> f64 {
        self.per_second
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
        let bucket = self.refilled(&mut buckets, key, now);
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

    /// `key`'s bucket (a full one if it had none), refilled for the time since it was last used.
    fn refilled<'a>(
        &self,
        buckets: &'a mut HashMap<String, Bucket>,
        key: &str,
        now: Instant,
    ) -> &'a mut Bucket {
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
            warned: None,
            refused: 0,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        bucket
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
        let bucket = self.refilled(&mut buckets, key, now);
        if bucket.tokens >= tokens {
            bucket.tokens -= tokens;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (tokens - bucket.tokens) / self.per_second,
        ))
    }
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
}
