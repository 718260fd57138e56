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
//!
//! Layout: this file builds the services and runs them; `accept` holds the accept loop, the
//! handshakes and the [`TlsConnection`] handed to tonic; `reload` the watch that reloads the TLS
//! material when its files change.

mod accept;
mod layers;
mod reload;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;
use tokio::net::TcpListener;

use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tracing::{error, info, warn};

use crate::admission::{RateLimits, ResponseBytesLayer};
use crate::audit::service::AuditService;
use crate::audit::{AuditError, AuditLog};
use crate::bench::Echo;
use crate::config::{Config, ConfigError, MetricsListen};
use crate::directory::service::AdminService;
use crate::directory::{Directory, DirectoryError};
use crate::exchange::ExchangeService;
use crate::matching::service::MatchService;
use crate::metrics::rpc::RpcLayer;
use crate::metrics::Metrics;
use crate::pb::bench::v1::echo_service_server::EchoServiceServer;
use crate::pb::v1::admin_service_server::AdminServiceServer;
use crate::pb::v1::audit_service_server::AuditServiceServer;
use crate::pb::v1::exchange_service_server::ExchangeServiceServer;
use crate::pb::v1::match_service_server::MatchServiceServer;
use crate::store::{DataKeys, SealingError, Store, StoreError};
use crate::tls::{TlsError, TlsFiles, TlsState};
use accept::accept_loop;
pub use accept::TlsConnection;
use layers::{IdleLayer, RateInterceptor};
use reload::watch_tls_files;

/// Room for a request's other fields on top of `limits.max_message_bytes`: a gRPC frame larger
/// than both is refused from its length prefix, before it is buffered.
const ENVELOPE_HEADROOM: usize = 64 * 1024;
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
    let store = crate::store::open(&config.data_dir, Arc::new(data_keys))?;
    let tls = load_tls(&config)?;
    let directory = Arc::new(Directory::load(Arc::clone(&store)).await?);
    let audit = AuditLog::open(Arc::clone(&store), &config.data_dir, &config.trust_domain).await?;

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
            RateInterceptor(Arc::clone(&rates)),
        ))
        .add_service(InterceptedService::new(
            AdminServiceServer::new(admin).max_decoding_message_size(max_frame),
            RateInterceptor(Arc::clone(&rates)),
        ))
        .add_service(InterceptedService::new(
            AuditServiceServer::new(auditing),
            RateInterceptor(Arc::clone(&rates)),
        ))
        .add_service(InterceptedService::new(
            MatchServiceServer::new(matching).max_decoding_message_size(max_frame),
            RateInterceptor(Arc::clone(&rates)),
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
    store: &Arc<dyn Store>,
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
    tokio::spawn(async move { metrics.seed_inbox_cursors(store.as_ref(), &directory).await });
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
