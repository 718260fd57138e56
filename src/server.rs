//! `run(listener, config, shutdown)`: the TLS accept loop and the tonic router.
//!
//! TLS is ours, not tonic's: each handshake runs in its own task under a timeout, the verified
//! client certificate is parsed once into a [`Peer`], and finished connections are handed to
//! tonic, which attaches the `Peer` to every request of the connection.
//!
//! Every call passes the [`RpcLayer`] (metrics and one log line per call), and the metrics are
//! served on their own plain-HTTP listener (`metrics_listen`, loopback by default).
//!
//! [`run_echo`] serves the echo service of `puente bench` through the same TLS, accept loop and
//! tonic settings, with nothing behind it: the bound the exchange's durable rate is set against.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Connected;
use tracing::{debug, error, info, warn};

use crate::admission::connections::{
    Activity, ConnectionLimits, ConnectionSlot, IdleLayer, IdleTimer, Refused,
};
use crate::admission::records::{
    AuditBudget, HandshakeRecord, HandshakeRecords, AGGREGATE_INTERVAL,
};
use crate::admission::{RateLimits, ResponseBytesLayer};
use crate::audit::service::AuditService;
use crate::audit::{self, AuditError, AuditLog};
use crate::bench::Echo;
use crate::budgeted_warn;
use crate::config::{Config, ConfigError, MetricsListen};
use crate::directory::service::AdminService;
use crate::directory::{Directory, DirectoryError};
use crate::exchange::ExchangeService;
use crate::identity::{Caller, IdentityError, Peer};
use crate::matching::service::MatchService;
use crate::metrics::rpc::RpcLayer;
use crate::metrics::{ConnectionGuard, HandshakeFailure, Metrics};
use crate::pb::bench::v1::echo_service_server::EchoServiceServer;
use crate::pb::v1::admin_service_server::AdminServiceServer;
use crate::pb::v1::audit_service_server::AuditServiceServer;
use crate::pb::v1::exchange_service_server::ExchangeServiceServer;
use crate::pb::v1::match_service_server::MatchServiceServer;
use crate::pb::v1::AuditAction;
use crate::store::{DataKeys, SealingError, Store, StoreError};
use crate::tls::{TlsError, TlsFiles, TlsState};

/// Room for a request's other fields on top of `limits.max_message_bytes`: a gRPC frame larger
/// than both is refused from its length prefix, before it is buffered.
const ENVELOPE_HEADROOM: usize = 64 * 1024;
/// Pending finished handshakes waiting for tonic to take them.
const ACCEPT_QUEUE: usize = 128;
/// How often the TLS files are checked for changes.
const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often a stale CRL is logged again.
const STALE_CRL_REPORT_INTERVAL: Duration = Duration::from_secs(600);
/// Agencies connecting with a certificate closer than this to expiry are logged.
const EXPIRY_WARNING_DAYS: i64 = 14;
/// The identity under which connections whose certificate names no usable one are capped.
const NO_IDENTITY: &str = "(no usable identity)";
/// How often reaching the connection limit is logged again.
const CONNECTIONS_FULL_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Time calls get to finish once a connection reached its maximum age.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// HTTP/2 streams (calls) one connection may have open at once; a client queues the ones over
/// it. tonic passes "no limit" to hyper unless told, and an inbox stream whose client stops
/// reading holds about five times `limits.max_message_bytes` (see `exchange::inbox`). A
/// connection serves one caller: room for its inbox streams (16 by default) and its
/// concurrent calls.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed while serving (e.g. a full disk); a restart replays its journal.
    #[error("the store failed ({0}); restart the server once the cause is fixed (a supervisor such as systemd's Restart=on-failure does it)")]
    StoreFailed(String),
    /// The data keyring cannot be used.
    #[error(transparent)]
    DataKeys(#[from] SealingError),
    /// The directory cannot be loaded.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The audit log cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The reflection service cannot be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics endpoint's address cannot be bound.
    #[error("cannot listen for metrics on {addr} (in use? choose another with --metrics-listen, or turn metrics off with --metrics-listen off)")]
    MetricsListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// Binds the metrics endpoint's address of `config`, unless metrics are off.
///
/// # Errors
/// `MetricsListen` when the address cannot be bound.
pub async fn bind_metrics(config: &Config) -> Result<Option<TcpListener>, ServerError> {
    match config.metrics_listen {
        MetricsListen::Off => Ok(None),
        MetricsListen::On(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| ServerError::MetricsListen { addr, source }),
    }
}

/// Serves the exchange on `listener` until `shutdown` completes, then drains: open inbox streams
/// end with UNAVAILABLE, in-flight calls get up to `config.drain_timeout_ms` to finish, and the
/// store is closed after its last write is durable. Metrics are served on
/// `config.metrics_listen`, bound here.
///
/// # Errors
/// Invalid configuration, unusable TLS material, a store that cannot be opened, a metrics
/// address that cannot be bound, or a transport failure.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let metrics_listener = bind_metrics(&config).await?;
    run_with_metrics(listener, metrics_listener, config, shutdown).await
}

/// [`run`] with the metrics endpoint's listener already bound (see [`bind_metrics`]), or none
/// to serve no metrics: for a caller that reports both bound addresses before serving.
///
/// # Errors
/// As [`run`].
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.validate()?;
    let data_keys = DataKeys::load(&config.data_key)?;
    info!(
        key_id = data_keys.current_id(),
        "message bodies are sealed with data key"
    );
    let store = Store::open(&config.data_dir, Arc::new(data_keys))?;
    let tls = load_tls(&config)?;
    let directory = Arc::new(Directory::load(Arc::clone(&store))?);
    let audit = AuditLog::open(Arc::clone(&store), &config.data_dir, &config.trust_domain)?;

    let (stopping_tx, stopping) = watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let exchange = ExchangeService::new(
        Arc::clone(&store),
        Arc::clone(&directory),
        config.limits.clone(),
        stopping.clone(),
        Arc::clone(&metrics),
    );
    let admin = AdminService::new(Arc::clone(&directory), Arc::clone(&tls), Arc::clone(&store));
    let rates = RateLimits::new(&config.limits);
    let auditing = AuditService::new(
        Arc::clone(&audit),
        Arc::clone(&directory),
        &config.limits,
        Arc::clone(&rates),
    );
    if let Some(metrics_listener) = metrics_listener {
        serve_metrics(
            metrics_listener,
            &metrics,
            &store,
            &directory,
            &config,
            stopping.clone(),
        );
    }
    let matching = MatchService::new(
        Arc::clone(&store),
        directory,
        config.match_query_quota_per_hour,
    );
    audit.spawn_signer(stopping.clone());
    crate::retention::spawn(
        Arc::clone(&store),
        config.retention.clone(),
        stopping.clone(),
    );
    tokio::spawn(watch_tls_files(
        Arc::clone(&tls),
        Arc::clone(&store),
        stopping,
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExchangeServiceServer<ExchangeService>>()
        .await;
    health
        .set_serving::<AdminServiceServer<AdminService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let max_frame = max_frame(&config);

    let local_addr = listener.local_addr().ok();
    let incoming = accept_loop(
        listener,
        Arc::clone(&tls),
        Some(Arc::clone(&store)),
        &config,
        Arc::clone(&metrics),
    );
    let (draining_tx, draining) = oneshot::channel();
    let mut failure = store.failure();
    let failed = Arc::new(std::sync::Mutex::new(None));
    let signal = {
        let failed = Arc::clone(&failed);
        async move {
            tokio::select! {
                () = shutdown => info!("shutdown requested: draining"),
                Ok(reason) = failure.wait_for(Option::is_some) => {
                    let reason = reason.clone().unwrap_or_default();
                    error!(reason = %reason, "the store failed; draining and exiting so that a restart replays the commit journal");
                    *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
                }
            }
            let _ = stopping_tx.send(true);
            let _ = draining_tx.send(());
        }
    };
    info!(addr = ?local_addr, trust_domain = %config.trust_domain, "serving");
    let serve = server_builder(&config)
        .layer(IdleLayer)
        .layer(RpcLayer::new(metrics))
        .layer(crate::codec::FramingLayer)
        .layer(ResponseBytesLayer)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(InterceptedService::new(
            ExchangeServiceServer::new(exchange).max_decoding_message_size(max_frame),
            rates.interceptor(),
        ))
        .add_service(InterceptedService::new(
            AdminServiceServer::new(admin).max_decoding_message_size(max_frame),
            rates.interceptor(),
        ))
        .add_service(InterceptedService::new(
            AuditServiceServer::new(auditing),
            rates.interceptor(),
        ))
        .add_service(InterceptedService::new(
            MatchServiceServer::new(matching).max_decoding_message_size(max_frame),
            rates.interceptor(),
        ))
        .serve_with_incoming_shutdown(incoming, signal);
    let drain_timeout = config.drain_timeout();
    let drain_deadline = async move {
        match draining.await {
            Ok(()) => tokio::time::sleep(drain_timeout).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serve => served?,
        () = drain_deadline => warn!(?drain_timeout, "drain timed out; closing remaining connections"),
    }
    if let Err(e) = audit.sign_if_grown().await {
        error!(error = %e, "cannot sign the final audit checkpoint");
    }
    store.close().await;
    let failed = failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(reason) = failed {
        return Err(ServerError::StoreFailed(reason));
    }
    info!("stopped");
    Ok(())
}

/// Serves only the echo service of `puente bench` on `listener` until `shutdown` completes: the
/// TLS, accept loop and tonic settings of [`run`] with no store behind them. Refused handshakes
/// are logged but not recorded, as there is no audit log. `config.data_dir` receives only the
/// CRLs that [`TlsState::load`] persists: give it an existing directory of its own.
///
/// # Errors
/// Invalid configuration, unusable TLS material, or a transport failure.
pub async fn run_echo(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.validate()?;
    let tls = load_tls(&config)?;
    // Nothing reads these: the echo server has no metrics endpoint.
    let incoming = accept_loop(listener, tls, None, &config, Arc::default());
    info!(trust_domain = %config.trust_domain, "serving the bench echo service");
    server_builder(&config)
        .layer(IdleLayer)
        .add_service(EchoServiceServer::new(Echo).max_decoding_message_size(max_frame(&config)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Serves `metrics` and what is read from `store` and `directory` at each scrape on `listener`,
/// until `stopping`; measures the agencies' inbox backlogs from the store first, in the
/// background.
fn serve_metrics(
    listener: TcpListener,
    metrics: &Arc<Metrics>,
    store: &Arc<Store>,
    directory: &Arc<Directory>,
    config: &Config,
    stopping: watch::Receiver<bool>,
) {
    match listener.local_addr() {
        Ok(addr) if !addr.ip().is_loopback() => warn!(
            %addr,
            "metrics are served beyond loopback, without TLS or authentication: they name agencies and show their message volumes, so only the Prometheus server should reach this address"
        ),
        Ok(addr) => info!(%addr, "serving metrics on /metrics"),
        Err(e) => warn!(error = %e, "cannot read the metrics address"),
    }
    let registry = metrics.registry(
        Arc::clone(store),
        Arc::clone(directory),
        config.data_dir.clone(),
    );
    crate::metrics::endpoint::spawn(listener, registry, stopping);
    let (metrics, store, directory) = (
        Arc::clone(metrics),
        Arc::clone(store),
        Arc::clone(directory),
    );
    tokio::task::spawn_blocking(move || metrics.seed_inbox_cursors(&store, &directory));
}

/// The server's TLS state from the files `config` names and the CRLs persisted in its data
/// directory.
fn load_tls(config: &Config) -> Result<Arc<TlsState>, TlsError> {
    TlsState::load(TlsFiles::of(config), &config.data_dir)
}

/// The connection settings every server of this module uses.
fn server_builder(config: &Config) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_connection_age(config.max_connection_age())
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
}

/// The largest gRPC frame a service decodes.
fn max_frame(config: &Config) -> usize {
    config.limits.max_message_bytes + ENVELOPE_HEADROOM
}

/// Accepts TCP connections and completes each TLS handshake in its own task, so a slow or silent
/// client stalls nobody. Yields connections whose handshake succeeded. Refused handshakes are
/// recorded in the audit log of `store`, when there is one. Handshakes in progress and
/// established connections are held under separate limits (see `admission::connections`): a
/// connection that has not finished its handshake never takes the place of one that has.
fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    store: Option<Arc<Store>>,
    config: &Config,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let trust_domain: Arc<str> = config.trust_domain.as_str().into();
    let handshake_timeout = config.handshake_timeout();
    let idle_timeout = config.idle_timeout();
    let limits = ConnectionLimits::new(config);
    let handshake_records = HandshakeRecords::new(&config.limits);
    let audit_budget = Arc::new(AuditBudget::new(&config.limits));
    if let Some(store) = &store {
        tokio::spawn(record_aggregates(
            Arc::clone(&handshake_records),
            Arc::clone(store),
            tx.clone(),
        ));
    }
    tokio::spawn(async move {
        let mut full_reported_at: Option<tokio::time::Instant> = None;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    budgeted_warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (tcp, probe) = match with_probe(tcp) {
                Ok(pair) => pair,
                Err(e) => {
                    budgeted_warn!(%remote_addr, error = %e, "cannot duplicate an accepted socket; closed");
                    continue;
                }
            };
            let mut slot = match limits.begin_handshake(remote_addr.ip(), Some(probe)) {
                Ok(slot) => slot,
                Err(refused) => {
                    metrics.handshake_failed(HandshakeFailure::ConnectionLimit);
                    if full_reported_at
                        .is_none_or(|at| at.elapsed() >= CONNECTIONS_FULL_REPORT_INTERVAL)
                    {
                        full_reported_at = Some(tokio::time::Instant::now());
                        budgeted_warn!(%remote_addr, "{refused}");
                    }
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // The configuration in force now: a CRL or certificate applied later reaches the
            // next handshake.
            let acceptor = tls.acceptor();
            let revocations = tls.revocations();
            let (tx, trust_domain, store) = (tx.clone(), Arc::clone(&trust_domain), store.clone());
            let handshake_records = Arc::clone(&handshake_records);
            let (metrics, limits) = (Arc::clone(&metrics), Arc::clone(&limits));
            let audit_budget = Arc::clone(&audit_budget);
            tokio::spawn(async move {
                let displaced = slot.displaced();
                let handshake = async {
                    // Until its first bytes, a socket is the first to give its place away.
                    if tcp.readable().await.is_ok() {
                        slot.spoke();
                    }
                    acceptor.accept(tcp).await
                };
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(handshake_timeout, handshake) => outcome,
                    () = displaced => {
                        metrics.handshake_failed(HandshakeFailure::ConnectionLimit);
                        debug!(%remote_addr, "{}", Refused::Displaced);
                        return;
                    }
                };
                drop(slot);
                match outcome {
                    Ok(Ok(stream)) => {
                        let caller = identify(&stream, &trust_domain);
                        log_connection(&caller, remote_addr);
                        let identity = caller
                            .as_ref()
                            .map_or_else(|_| NO_IDENTITY.to_string(), |c| c.id.to_string());
                        let place = match limits.establish(&identity) {
                            Ok(place) => place,
                            Err(refused) => {
                                metrics.handshake_failed(HandshakeFailure::ConnectionLimit);
                                budgeted_warn!(%remote_addr, caller = %identity, "{refused}");
                                return;
                            }
                        };
                        let agency = match &caller {
                            Ok(caller) => metrics.agency_connected(caller),
                            Err(_) => {
                                metrics.handshake_failed(HandshakeFailure::BadIdentity);
                                None
                            }
                        };
                        let activity = Arc::new(Activity::default());
                        let peer = Peer {
                            caller,
                            remote_addr: Some(remote_addr),
                            revocations,
                            activity: Arc::clone(&activity),
                            audit_budget,
                        };
                        let connection = TlsConnection {
                            stream,
                            peer,
                            idle: IdleTimer::new(activity, idle_timeout),
                            _place: place,
                            _agency: agency,
                        };
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.handshake_failed(HandshakeFailure::of(&e));
                        budgeted_warn!(%remote_addr, error = %e, "TLS handshake refused");
                        let record = handshake_records.refused(remote_addr.ip());
                        if let (Some(store), HandshakeRecord::One) = (store, record) {
                            let mut event = audit::event(AuditAction::HandshakeRefused, None);
                            event.remote_address = remote_addr.to_string();
                            event.reason = e.to_string();
                            if store.record_later(event).await.is_err() {
                                debug!("store closed: refused handshake not recorded");
                            }
                        }
                    }
                    Err(_) => {
                        metrics.handshake_failed(HandshakeFailure::Timeout);
                        budgeted_warn!(%remote_addr, ?handshake_timeout, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Records the refused handshakes left out of the audit log one by one, as aggregate entries
/// within the same budget, until the accept loop's consumer is gone.
async fn record_aggregates(
    records: Arc<HandshakeRecords>,
    store: Arc<Store>,
    accepted: mpsc::Sender<io::Result<TlsConnection>>,
) {
    let mut ticks = tokio::time::interval(AGGREGATE_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = accepted.closed() => return,
        }
        let Some(aggregate) = records.take_aggregate() else {
            continue;
        };
        let mut event = audit::event(AuditAction::HandshakeRefused, None);
        event.reason = format!(
            "{} refused TLS handshakes from {} address{} were not recorded one by one (over the budget of refused-handshake entries)",
            aggregate.refused,
            aggregate.addresses,
            if aggregate.addresses == 1 { "" } else { "es" }
        );
        if store.record_later(event).await.is_err() {
            return;
        }
    }
}

/// The socket and a duplicate of it through which the handshake table sees whether the client
/// has sent its first bytes (see `admission::connections`).
fn with_probe(tcp: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let socket = tcp.into_std()?;
    let probe = socket.try_clone()?;
    Ok((TcpStream::from_std(socket)?, probe))
}

fn log_connection(caller: &Result<Arc<Caller>, IdentityError>, remote_addr: SocketAddr) {
    match caller {
        Ok(caller) => {
            let days_left = (caller.not_after - crate::time::now_micros() / 1_000_000) / 86_400;
            debug!(%remote_addr, caller = %caller.id, serial = %caller.serial, "connection authenticated");
            if days_left < EXPIRY_WARNING_DAYS {
                budgeted_warn!(caller = %caller.id, serial = %caller.serial, days_left, "client certificate expires soon: issue a new one");
            }
        }
        Err(e) => {
            budgeted_warn!(%remote_addr, error = %e, "client certificate names no usable identity")
        }
    }
}

/// Reloads the TLS material when its files change or on SIGHUP, and reports stale CRLs, until
/// `stopping` turns true.
async fn watch_tls_files(
    tls: Arc<TlsState>,
    store: Arc<Store>,
    mut stopping: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut stamps = tls.file_stamps();
    let mut ticks = tokio::time::interval(FILE_POLL_INTERVAL);
    let mut stale_reported_at: Option<tokio::time::Instant> = None;
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = ticks.tick() => false,
            _ = hangup_received => true,
            _ = stopping.changed() => return,
        };
        let current = tls.file_stamps();
        if forced || current != stamps {
            stamps = current;
            match tls.reload() {
                Ok(Some(crl)) => {
                    let mut event = audit::event(AuditAction::CrlApplied, None);
                    event.crl_number = crl.number;
                    event.reason = "CRL file changed".into();
                    if let Err(e) = store.record(vec![event]).await {
                        error!(error = %e, "cannot record the CRL in the audit log");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "TLS reload failed; the previous certificates stay in force")
                }
            }
        }
        if stale_reported_at.is_none_or(|at| at.elapsed() >= STALE_CRL_REPORT_INTERVAL) {
            stale_reported_at = (tls.report_stale_crls() > 0).then(tokio::time::Instant::now);
        }
    }
}

fn identify(
    stream: &TlsStream<TcpStream>,
    trust_domain: &str,
) -> Result<Arc<Caller>, IdentityError> {
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(IdentityError::NoCertificate)?;
    Caller::from_certificate(leaf, trust_domain).map(Arc::new)
}

/// A server-side TLS connection and the identity parsed from its client certificate.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: Peer,
    /// Closes the connection once it has had no call open for the idle timeout.
    idle: IdleTimer,
    /// This connection's place under the connection limits, given back when it is dropped.
    _place: ConnectionSlot,
    /// An agency's connection, counted for the certificate expiry metric while it is open.
    _agency: Option<ConnectionGuard>,
}

impl Connected for TlsConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Reading nothing is the end of the stream: hyper closes the connection.
        if this.idle.poll_expired(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
