//! Prometheus metrics: what the exchange counts as it runs ([`Metrics`]), what is read from the
//! store when scraped, the per-call observation layer of the gRPC router ([`rpc`]), and the
//! plain-HTTP endpoint that serves them all in the Prometheus text format ([`endpoint`]).
//!
//! Metrics name agencies and show their volumes, so the endpoint listens on loopback unless
//! configured otherwise. They never carry message content, subjects or key material. Label
//! values come from fixed sets (methods of the served services, status codes, refusal reasons,
//! audit actions) or from agency ids, which only the exchange's CA hands out.

pub mod endpoint;
pub mod rpc;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use prost::Message as _;
use tracing::warn;

use crate::directory::Directory;
use crate::identity::{Caller, Role};
use crate::pb::v1::{AuditAction, AuditEvent, DeliveryState};
use crate::store::records::{keys, DeliveryRecord};
use crate::store::{Store, StoreError};
use crate::time::now_micros;

/// Upper bounds of the RPC latency buckets, seconds: 0.5 ms to 10 s for unary calls, then up to
/// an hour for the life of server-streaming calls.
const RPC_LATENCY_BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];
/// How long the size of the data directory is reused between scrapes: walking a large object
/// directory on every scrape would cost more than the figure is worth.
const STORE_SIZE_CACHE: Duration = Duration::from_secs(15);
/// Inbox entries walked back per agency at start to find its last delivered one; an agency
/// further behind reads as its whole inbox until its next stream.
const BACKLOG_SEED_WALK: u64 = 1_000_000;
/// Inbox entries read per round of that walk.
const BACKLOG_SEED_CHUNK: usize = 256;

/// Why a TLS connection was refused: a fixed set, so the label cannot grow without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client certificate was not issued by a CA the exchange trusts: no trusted CA has its
    /// issuer name, or one has and did not sign it (a foreign CA with a trusted CA's name).
    UnknownCa,
    /// The client certificate has expired.
    Expired,
    /// The client certificate is not valid yet.
    NotYetValid,
    /// The client certificate is revoked by a CRL in force.
    Revoked,
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate verified but names no usable identity (no or several SPIFFE IDs,
    /// another trust domain, an unknown role) or lacks the clientAuth usage.
    BadIdentity,
    /// The certificate is unusable otherwise (malformed, unsupported algorithm or extension).
    BadCertificate,
    /// The client did not finish the handshake in time.
    Timeout,
    /// The connection limit was reached: closed as accepted.
    ConnectionLimit,
    /// Anything else: no TLS, an incompatible client, a connection closed mid-handshake.
    Protocol,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::Revoked,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::BadIdentity,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::ConnectionLimit,
        HandshakeFailure::Protocol,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::BadIdentity => "bad_identity",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ConnectionLimit => "connection_limit",
            HandshakeFailure::Protocol => "protocol",
        }
    }

    /// The reason of a failed `TlsAcceptor::accept`, from the rustls error inside it.
    pub fn of(error: &io::Error) -> HandshakeFailure {
        use rustls::CertificateError as Cert;
        let Some(error) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Protocol;
        };
        match error {
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            rustls::Error::InvalidCertificate(cert) => match cert {
                Cert::UnknownIssuer | Cert::BadSignature => HandshakeFailure::UnknownCa,
                Cert::Expired | Cert::ExpiredContext { .. } => HandshakeFailure::Expired,
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                    HandshakeFailure::NotYetValid
                }
                Cert::Revoked => HandshakeFailure::Revoked,
                Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => {
                    HandshakeFailure::BadIdentity
                }
                _ => HandshakeFailure::BadCertificate,
            },
            _ => HandshakeFailure::Protocol,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgencyLabel {
    agency: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `service` and `method` of a call, as in `puente.v1.ExchangeService` / `SendMessage`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: &'static str,
    method: &'static str,
}

/// A call's method and its gRPC status code name (`OK`, `PERMISSION_DENIED`...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// What the exchange counts as it runs, shared by the router layer, the accept loop and the
/// services. Clones of its metrics go into the registry the endpoint encodes.
pub struct Metrics {
    requests: Family<RpcLabels, Counter>,
    latency: LatencyFamily,
    accepted: Family<ActionLabel, Counter>,
    delivered: Counter,
    inbox_streams: Family<AgencyLabel, Gauge>,
    handshake_failures: Family<ReasonLabel, Counter>,
    certificates: Arc<Certificates>,
    cursors: Arc<InboxCursors>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let handshake_failures = Family::<ReasonLabel, Counter>::default();
        // Every reason shows from the start at 0, so a rate over the first failure is right.
        for reason in HandshakeFailure::ALL {
            handshake_failures.get_or_create_owned(&ReasonLabel {
                reason: reason.label(),
            });
        }
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(RPC_LATENCY_BUCKETS)),
            accepted: Family::default(),
            delivered: Counter::default(),
            inbox_streams: Family::default(),
            handshake_failures,
            certificates: Arc::default(),
            cursors: Arc::default(),
        }
    }
}

impl Metrics {
    /// Counts a message the store committed under `action`, its audit action
    /// (`MESSAGE_ACCEPTED` for a send); idempotent retries are not counted.
    pub fn message_accepted(&self, action: AuditAction) {
        let action = action.as_str_name().trim_start_matches("AUDIT_ACTION_");
        self.accepted.get_or_create(&ActionLabel { action }).inc();
    }

    /// Counts a refused TLS connection.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// The gauge of `agency`'s open inbox streams, which each stream raises while it lives.
    pub fn inbox_streams(&self, agency: &str) -> Gauge {
        self.inbox_streams.get_or_create_owned(&AgencyLabel {
            agency: agency.to_string(),
        })
    }

    /// Starts following the delivery progress of an inbox stream of `agency` that resumes
    /// after `after_sequence`: the client holds everything up to there already.
    pub fn inbox_opened(&self, agency: &str, after_sequence: u64) -> InboxProgress {
        let cursor = self.cursors.get(agency);
        cursor.fetch_max(after_sequence, Ordering::Relaxed);
        InboxProgress {
            cursor,
            delivered: self.delivered.clone(),
        }
    }

    /// Records the certificate of an agency's connection until the returned guard is dropped
    /// with the connection; `None` for callers that are not agencies.
    pub fn agency_connected(&self, caller: &Caller) -> Option<ConnectionGuard> {
        let Role::Agency(agency) = &caller.role else {
            return None;
        };
        Some(self.certificates.open(agency.as_str(), caller.not_after))
    }

    /// Sets each registered agency's delivery cursor from the store: the last inbox entry that
    /// reached DELIVERED or beyond, walking back at most [`BACKLOG_SEED_WALK`] entries. Run
    /// once at start, off the runtime threads; streams opened meanwhile only move cursors
    /// forward.
    pub fn seed_inbox_cursors(&self, store: &Store, directory: &Directory) {
        for agency in directory.list() {
            let id = agency.agency_id;
            let last = *store.subscribe_inbox(&id).borrow();
            match last_delivered(store, &id, last) {
                Ok(Some(sequence)) => {
                    self.cursors.get(&id).fetch_max(sequence, Ordering::Relaxed);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(agency = %id, error = %e, "cannot read the inbox to measure its backlog")
                }
            }
        }
    }

    /// A registry of every metric: these, the store's group-commit histograms, and what is
    /// read from `store`, `directory` and the size of `data_dir` at each scrape. Names carry the
    /// `puente_` prefix.
    pub fn registry(
        &self,
        store: Arc<Store>,
        directory: Arc<Directory>,
        data_dir: PathBuf,
    ) -> Registry {
        let mut registry = Registry::with_prefix("puente");
        registry.register(
            "rpc_requests",
            "gRPC calls answered, by method and status code; a server-streaming call is counted when its stream ends",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "rpc_duration",
            "Time from a call's request headers to the end of its response, by method; for server-streaming methods (StreamInbox, ListAuditEntries) the life of the stream",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages committed to stable storage, by audit action (MESSAGE_ACCEPTED for sends); retries answered from the idempotency record are not counted",
            self.accepted.clone(),
        );
        registry.register(
            "messages_delivered",
            "Inbox entries handed to an inbox stream (DELIVERED); a message replayed to a resuming stream counts again",
            self.delivered.clone(),
        );
        registry.register(
            "inbox_streams_open",
            "Open StreamInbox streams, by agency",
            self.inbox_streams.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS connections refused, by reason; bad_identity counts connections whose verified certificate names no usable identity (their calls are refused)",
            self.handshake_failures.clone(),
        );
        let (group_sizes, flush_seconds) = crate::store::commit_histograms();
        registry.register(
            "store_group_commit_operations",
            "Operations made durable together by one group commit (one journal write and fdatasync)",
            group_sizes,
        );
        registry.register_with_unit(
            "store_group_commit_flush",
            "Time to make one group commit durable (journal write and fdatasync)",
            Unit::Seconds,
            flush_seconds,
        );
        registry.register_collector(Box::new(Scraped {
            store,
            directory,
            data_dir,
            certificates: Arc::clone(&self.certificates),
            cursors: Arc::clone(&self.cursors),
            store_size: Mutex::new(None),
        }));
        registry
    }

    fn observe_call(&self, method: &'static rpc::Method, code: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RpcLabels {
                service: method.service(),
                method: method.name(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                service: method.service(),
                method: method.name(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The delivery progress of one inbox stream.
pub struct InboxProgress {
    cursor: Arc<AtomicU64>,
    delivered: Counter,
}

impl InboxProgress {
    /// Counts the entry `sequence` as handed to the stream.
    pub fn delivered(&self, sequence: u64) {
        self.delivered.inc();
        self.cursor.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Passes over the entry `sequence`, whose message was erased: not backlog any more.
    pub fn skipped(&self, sequence: u64) {
        self.cursor.fetch_max(sequence, Ordering::Relaxed);
    }
}

/// The highest inbox sequence handed to (or skipped by) a stream of each agency.
#[derive(Default)]
struct InboxCursors(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl InboxCursors {
    fn get(&self, agency: &str) -> Arc<AtomicU64> {
        let mut cursors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(cursors.entry(agency.to_string()).or_default())
    }

    fn value(&self, agency: &str) -> u64 {
        let cursors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        cursors
            .get(agency)
            .map_or(0, |cursor| cursor.load(Ordering::Relaxed))
    }
}

/// The latest inbox sequence of `agency` at or below `last` whose delivery state is DELIVERED
/// or beyond, if one is within [`BACKLOG_SEED_WALK`] entries of `last`.
fn last_delivered(store: &Store, agency: &str, last: u64) -> Result<Option<u64>, StoreError> {
    let floor = last.saturating_sub(BACKLOG_SEED_WALK);
    let mut high = last;
    while high > floor {
        let low = high.saturating_sub(BACKLOG_SEED_CHUNK as u64).max(floor);
        let entries = store.inbox_range(agency, low, high, BACKLOG_SEED_CHUNK)?;
        for (sequence, message_id) in entries.into_iter().rev() {
            // No delivery record means PENDING; an erased message has none either.
            let Some(value) = store.index_value(&keys::delivery(&message_id, agency))? else {
                continue;
            };
            let record =
                DeliveryRecord::decode(value.as_slice()).map_err(|source| StoreError::Corrupt {
                    key: format!("delivery of {message_id} to {agency}"),
                    source,
                })?;
            if record.state != DeliveryState::Pending as i32 {
                return Ok(Some(sequence));
            }
        }
        high = low;
    }
    Ok(None)
}

/// The `not_after` (Unix seconds) of the certificates of each agency's open connections, with
/// how many connections use each.
#[derive(Default)]
struct Certificates(Mutex<HashMap<String, BTreeMap<i64, usize>>>);

impl Certificates {
    fn open(self: &Arc<Self>, agency: &str, not_after: i64) -> ConnectionGuard {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *open
            .entry(agency.to_string())
            .or_default()
            .entry(not_after)
            .or_default() += 1;
        ConnectionGuard {
            certificates: Arc::clone(self),
            agency: agency.to_string(),
            not_after,
        }
    }

    /// Each connected agency and the latest `not_after` among its connections: a renewed
    /// certificate expires later than the one it replaces, so this is the one in use.
    fn latest(&self) -> Vec<(String, i64)> {
        let open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut latest: Vec<_> = open
            .iter()
            .filter_map(|(agency, expiries)| Some((agency.clone(), *expiries.last_key_value()?.0)))
            .collect();
        latest.sort();
        latest
    }
}

/// One open connection of an agency, counted in the certificate expiry gauge until dropped.
pub struct ConnectionGuard {
    certificates: Arc<Certificates>,
    agency: String,
    not_after: i64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self
            .certificates
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(expiries) = open.get_mut(&self.agency) else {
            return;
        };
        if let Some(count) = expiries.get_mut(&self.not_after) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                expiries.remove(&self.not_after);
            }
        }
        if expiries.is_empty() {
            open.remove(&self.agency);
        }
    }
}

// === Scrape-time metrics ===

/// What is read when the endpoint is scraped rather than counted as it happens.
struct Scraped {
    store: Arc<Store>,
    directory: Arc<Directory>,
    data_dir: PathBuf,
    certificates: Arc<Certificates>,
    cursors: Arc<InboxCursors>,
    /// The size of `data_dir` in bytes, and when it was measured.
    store_size: Mutex<Option<(Instant, u64)>>,
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut backlog: Vec<(String, i64)> = self
            .directory
            .list()
            .into_iter()
            .map(|agency| {
                let last = *self.store.subscribe_inbox(&agency.agency_id).borrow();
                let behind = last.saturating_sub(self.cursors.value(&agency.agency_id));
                (agency.agency_id, saturating_i64(behind))
            })
            .collect();
        backlog.sort();
        labelled_gauges(
            &mut encoder,
            "inbox_backlog_messages",
            "Inbox entries of a registered agency not yet handed to any of its inbox streams: its last durable inbox sequence minus the highest sequence a stream delivered or resumed after (seeded from stored delivery states at start).",
            None,
            &backlog,
        )?;
        let now = now_micros() / 1_000_000;
        let expiries: Vec<(String, i64)> = self
            .certificates
            .latest()
            .into_iter()
            .map(|(agency, not_after)| (agency, not_after - now))
            .collect();
        labelled_gauges(
            &mut encoder,
            "agency_certificate_expiry",
            "Seconds until the client certificate of a connected agency expires (the latest-expiring one if its open connections use several); agencies without open connections are absent.",
            Some(&Unit::Seconds),
            &expiries,
        )?;
        gauge(
            &mut encoder,
            "audit_log_entries",
            "Entries in the audit log on stable storage.",
            None,
            saturating_i64(self.store.audit_size()),
        )?;
        match self.checkpoint() {
            Ok(Some((size, age_seconds))) => {
                gauge(
                    &mut encoder,
                    "audit_checkpoint_size",
                    "Tree size of the latest signed audit checkpoint.",
                    None,
                    saturating_i64(size),
                )?;
                gauge(
                    &mut encoder,
                    "audit_checkpoint_age",
                    "Seconds since the newest audit entry the latest signed checkpoint covers was written; the signer signs within a second of growth, so this is the checkpoint's age, and it only matters while audit_log_entries exceeds audit_checkpoint_size.",
                    Some(&Unit::Seconds),
                    age_seconds,
                )?;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the latest audit checkpoint for metrics"),
        }
        gauge(
            &mut encoder,
            "store_size",
            "Bytes of the files under the data directory (measured at most every 15 s).",
            Some(&Unit::Bytes),
            saturating_i64(self.store_size()),
        )
    }
}

impl Scraped {
    /// The latest checkpoint's tree size and the age in seconds of the newest entry it covers.
    fn checkpoint(&self) -> Result<Option<(u64, i64)>, StoreError> {
        let Some((size, _note)) = self.store.latest_checkpoint()? else {
            return Ok(None);
        };
        let Some(index) = size.checked_sub(1) else {
            return Ok(None);
        };
        let Some(leaf) = self.store.audit_leaf(index)? else {
            return Ok(None);
        };
        let event = AuditEvent::decode(leaf.as_slice()).map_err(|source| StoreError::Corrupt {
            key: format!("audit leaf {index}"),
            source,
        })?;
        let age = (now_micros() - event.time_unix_micros).max(0) / 1_000_000;
        Ok(Some((size, age)))
    }

    fn store_size(&self) -> u64 {
        let mut cached = self
            .store_size
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *cached {
            Some((at, bytes)) if at.elapsed() < STORE_SIZE_CACHE => bytes,
            _ => {
                let bytes = directory_size(&self.data_dir);
                *cached = Some((Instant::now(), bytes));
                bytes
            }
        }
    }
}

/// Bytes of the regular files under `dir`, symbolic links not followed. Files that vanish
/// while walking (a journal file removed by the flusher) are passed over.
fn directory_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
            Ok(meta) if meta.is_file() => meta.len(),
            _ => 0,
        })
        .sum()
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// A gauge with one series per agency; nothing when there are none.
fn labelled_gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[(String, i64)],
) -> Result<(), fmt::Error> {
    if values.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (agency, value) in values {
        let labels = [("agency", agency.as_str())];
        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(agency: &str, not_after: i64) -> Caller {
        let id =
            crate::identity::SpiffeId::parse(&format!("spiffe://puente.local/agency/{agency}"))
                .unwrap();
        Caller {
            role: id.role("puente.local").unwrap(),
            id,
            serial: "01".into(),
            not_after,
        }
    }

    #[test]
    fn certificate_expiry_follows_the_latest_certificate_of_open_connections() {
        let metrics = Metrics::default();
        let old = metrics.agency_connected(&caller("ES-CNP", 1_000)).unwrap();
        let renewed = metrics.agency_connected(&caller("ES-CNP", 5_000)).unwrap();
        let other = metrics
            .agency_connected(&caller("CO-DIJIN", 2_000))
            .unwrap();
        assert_eq!(
            metrics.certificates.latest(),
            [
                ("CO-DIJIN".to_string(), 2_000),
                ("ES-CNP".to_string(), 5_000)
            ]
        );
        drop(renewed);
        assert_eq!(
            metrics.certificates.latest(),
            [
                ("CO-DIJIN".to_string(), 2_000),
                ("ES-CNP".to_string(), 1_000)
            ]
        );
        drop((old, other));
        assert!(metrics.certificates.latest().is_empty());
    }

    #[test]
    fn only_agencies_are_tracked_for_certificate_expiry() {
        let metrics = Metrics::default();
        let id = crate::identity::SpiffeId::parse("spiffe://puente.local/auditor/ana").unwrap();
        let auditor = Caller {
            role: id.role("puente.local").unwrap(),
            id,
            serial: "02".into(),
            not_after: 1_000,
        };
        assert!(metrics.agency_connected(&auditor).is_none());
    }

    #[test]
    fn inbox_cursors_only_move_forward() {
        let metrics = Metrics::default();
        let progress = metrics.inbox_opened("ES-CNP", 5);
        progress.delivered(6);
        progress.delivered(7);
        // A second stream replaying from the start does not move the cursor back.
        let replay = metrics.inbox_opened("ES-CNP", 0);
        replay.delivered(1);
        assert_eq!(metrics.cursors.value("ES-CNP"), 7);
        assert_eq!(metrics.delivered.get(), 3);
        assert_eq!(metrics.cursors.value("CO-DIJIN"), 0);
    }

    #[test]
    fn handshake_errors_map_to_fixed_reasons() {
        use rustls::CertificateError as Cert;
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                tls(rustls::Error::InvalidCertificate(Cert::UnknownIssuer)),
                HandshakeFailure::UnknownCa,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::Expired)),
                HandshakeFailure::Expired,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::NotValidYet)),
                HandshakeFailure::NotYetValid,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::Revoked)),
                HandshakeFailure::Revoked,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::InvalidPurpose)),
                HandshakeFailure::BadIdentity,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::BadSignature)),
                HandshakeFailure::UnknownCa,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::BadEncoding)),
                HandshakeFailure::BadCertificate,
            ),
            (
                tls(rustls::Error::NoCertificatesPresented),
                HandshakeFailure::NoCertificate,
            ),
            (
                io::Error::from(io::ErrorKind::UnexpectedEof),
                HandshakeFailure::Protocol,
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(HandshakeFailure::of(&error), reason, "{error}");
        }
    }

    #[test]
    fn directory_size_sums_files_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 23]).unwrap();
        assert_eq!(directory_size(dir.path()), 123);
        assert_eq!(directory_size(&dir.path().join("missing")), 0);
    }
}
