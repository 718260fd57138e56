//! The accept loop: TCP connections admitted under the connection limits, each TLS handshake in
//! its own task under a timeout, refused handshakes counted, logged and recorded in the audit log
//! within their budget, and the [`TlsConnection`]s that tonic serves.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::debug;

use crate::admission::connections::{
    Activity, ConnectionLimits, ConnectionSlot, IdleTimer, Refused,
};
use crate::admission::records::{
    AuditBudget, HandshakeRecord, HandshakeRecords, AGGREGATE_INTERVAL,
};
use crate::audit;
use crate::budgeted_warn;
use crate::config::Config;
use crate::identity::{Caller, IdentityError, Peer};
use crate::metrics::{ConnectionGuard, HandshakeFailure, Metrics};
use crate::pb::v1::AuditAction;
use crate::store::Store;
use crate::tls::TlsState;

/// Pending finished handshakes waiting for tonic to take them.
const ACCEPT_QUEUE: usize = 128;
/// Agencies connecting with a certificate closer than this to expiry are logged.
const EXPIRY_WARNING_DAYS: i64 = 14;
/// The identity under which connections whose certificate names no usable one are capped.
const NO_IDENTITY: &str = "(no usable identity)";
/// How often reaching the connection limit is logged again.
const CONNECTIONS_FULL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes each TLS handshake in its own task, so a slow or silent
/// client stalls nobody. Yields connections whose handshake succeeded. Refused handshakes are
/// recorded in the audit log of `store`, when there is one. Handshakes in progress and
/// established connections are held under separate limits (see `admission::connections`): a
/// connection that has not finished its handshake never takes the place of one that has.
pub(super) fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    store: Option<Arc<dyn Store>>,
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
                            if store.record_later(event.into()).await.is_err() {
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
    store: Arc<dyn Store>,
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
        if store.record_later(event.into()).await.is_err() {
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
