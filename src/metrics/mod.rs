//! Prometheus metrics: what the exchange counts as it runs ([`Metrics`]), what is read from the
//! store when scraped, the per-call observation layer of the gRPC router ([`rpc`]), and the
//! plain-HTTP endpoint that serves them all in the Prometheus text format ([`endpoint`]).
//!
//! Metrics name agencies and show their volumes, so the endpoint listens on loopback unless
//! configured otherwise. They never carry message content, subjects or key material. Label
//! values come from fixed sets (methods of the served services, status codes, refusal reasons,
//! audit actions) or from agency ids, which only the exchange's CA hands out.
//!
//! Layout: this file holds the label sets and [`Metrics`], the counters and histograms bumped as
//! calls run; `handshake` the fixed reasons of refused TLS connections; `tracked` the state
//! followed between scrapes (inbox delivery cursors, open connections' certificates); `scrape`
//! what is read from the store and the data directory when the endpoint is scraped.

pub(crate) mod endpoint;
mod handshake;
pub(crate) mod rpc;
mod scrape;
mod tracked;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;

use crate::directory::Directory;
use crate::identity::{Caller, Role};
use crate::pb::v1::AuditAction;
use crate::store::Store;

pub(crate) use handshake::HandshakeFailure;
use scrape::Scraped;
use tracked::{last_delivered, Certificates, InboxCursors};
pub(crate) use tracked::{ConnectionGuard, InboxProgress};

/// Upper bounds of the RPC latency buckets, seconds: 0.5 ms to 10 s for unary calls, then up to
/// an hour for the life of server-streaming calls.
const RPC_LATENCY_BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];

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
    /// reached DELIVERED or beyond, walking back at most [`tracked::BACKLOG_SEED_WALK`] entries. Run
    /// once at start, as a task of its own; streams opened meanwhile only move cursors forward.
    pub async fn seed_inbox_cursors(&self, store: &dyn Store, directory: &Directory) {
        for agency in directory.list() {
            let id = agency.agency_id;
            let last = *store.subscribe_inbox(&id).borrow();
            match last_delivered(store, &id, last).await {
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
        store: Arc<dyn Store>,
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
