//! Open-stream limits: inbox streams per agency, audit listings per caller identity and in
//! total; a slot is held while its stream lives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::WARN_INTERVAL;
use crate::config::Limits;
use crate::metrics::Metrics;

/// How long a client should wait before opening another stream once at the limit.
pub const STREAM_RETRY: Duration = Duration::from_secs(1);

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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn stream_slots_are_counted_per_agency_and_freed_on_drop() {
        let metrics = Arc::new(Metrics::default());
        let streams = StreamLimits::new(
            &Limits {
                inbox_streams_per_agency: 2,
                ..Limits::default()
            },
            Arc::clone(&metrics),
        );
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
