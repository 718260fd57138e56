//! Connection admission: who may hold a connection, so that an outsider who has not finished a
//! TLS handshake can never take a place from callers that have.
//!
//! - Handshakes in progress have a budget of their own (`max_handshakes`), apart from
//!   established connections (`max_connections`), and one source address (an IPv6 /64) may
//!   hold at most `max_handshakes_per_address` of them. When the budget is full, a new
//!   connection takes the place of one in progress rather than being refused: first of a
//!   socket that has sent nothing for [`SILENT_GRACE`] (a real client sends its ClientHello
//!   with its first packet), else the oldest of the address holding the most, when that address
//!   holds at least two more than the newcomer's. So to keep a fresh agency out, an attacker
//!   needs more source addresses than the budget has places and must keep renewing them.
//! - An established connection counts against `max_connections` and against the cap of its
//!   identity (`max_connections_per_identity`; every connection without a usable identity
//!   shares one), so one certificate — a suspended agency's included — cannot fill the server.
//! - A connection with no call open for `idle_timeout_ms` is closed ([`IdleTimer`]); calls are
//!   counted by [`IdleLayer`] on the router, from the request to the end of the response body.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::config::Config;
use crate::identity::Peer;

/// How long a socket may stay silent before it is the first to give its place to a new
/// connection once the handshake budget is full. A client sends its ClientHello right after
/// the TCP handshake, so only a client further than this round trip away could be mistaken.
pub const SILENT_GRACE: Duration = Duration::from_secs(1);

/// Why a connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source address has as many handshakes in progress as it may.
    AddressFull,
    /// The handshake budget is full of handshakes that may not be displaced.
    HandshakesFull,
    /// It gave its place to a newer connection while still in handshake.
    Displaced,
    /// The server holds `max_connections` established connections.
    ServerFull,
    /// Its identity holds `max_connections_per_identity` connections.
    IdentityFull,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::AddressFull => "this address has max_handshakes_per_address TLS handshakes in progress: connection closed",
            Refused::HandshakesFull => "max_handshakes TLS handshakes are in progress: connection closed",
            Refused::Displaced => "handshake not finished; its place went to a newer connection",
            Refused::ServerFull => "max_connections connections are established: connection closed (raise max_connections if this load is legitimate)",
            Refused::IdentityFull => "this identity holds max_connections_per_identity connections: connection closed (a client should reuse its connections)",
        })
    }
}

/// The connection limits of a server and what holds them now.
pub struct ConnectionLimits {
    max_handshakes: usize,
    per_address: usize,
    max_connections: usize,
    per_identity: usize,
    handshakes: Mutex<Handshakes>,
    established: Mutex<Established>,
}

#[derive(Default)]
struct Handshakes {
    next: u64,
    /// By age: the first is the oldest.
    pending: BTreeMap<u64, Pending>,
    per_address: HashMap<IpAddr, usize>,
}

struct Pending {
    source: IpAddr,
    accepted: Instant,
    spoke: bool,
    /// Dropped to displace the handshake.
    _displace: oneshot::Sender<()>,
}

#[derive(Default)]
struct Established {
    total: usize,
    per_identity: HashMap<String, usize>,
}

/// The source a per-address limit counts: the IPv4 address, or the /64 prefix of an IPv6 one
/// (one host commonly holds a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Handshakes {
    /// The handshake a newcomer from `source` may displace, if any.
    fn victim(&self, source: IpAddr, now: Instant) -> Option<u64> {
        if let Some((&id, _)) = self
            .pending
            .iter()
            .find(|(_, p)| !p.spoke && now.duration_since(p.accepted) >= SILENT_GRACE)
        {
            return Some(id);
        }
        let own = self.per_address.get(&source).copied().unwrap_or(0);
        let (&busiest, &count) = self.per_address.iter().max_by_key(|(_, &n)| n)?;
        if count < own + 2 {
            return None;
        }
        self.pending
            .iter()
            .find(|(_, p)| p.source == busiest)
            .map(|(&id, _)| id)
    }

    fn remove(&mut self, id: u64) {
        if let Some(pending) = self.pending.remove(&id) {
            if let Some(count) = self.per_address.get_mut(&pending.source) {
                *count -= 1;
                if *count == 0 {
                    self.per_address.remove(&pending.source);
                }
            }
        }
    }
}

impl ConnectionLimits {
    /// The limits of `config`.
    #[must_use]
    pub fn new(config: &Config) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_handshakes: config.max_handshakes,
            per_address: config.max_handshakes_per_address,
            max_connections: config.max_connections,
            per_identity: config.max_connections_per_identity,
            handshakes: Mutex::new(Handshakes::default()),
            established: Mutex::new(Established::default()),
        })
    }

    /// A place for a handshake from `remote`, displacing another when the budget is full.
    ///
    /// # Errors
    /// `AddressFull` or `HandshakesFull`: close the connection.
    pub fn begin_handshake(self: &Arc<Self>, remote: IpAddr) -> Result<HandshakeSlot, Refused> {
        let source = source_of(remote);
        let now = Instant::now();
        let mut table = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if table.per_address.get(&source).copied().unwrap_or(0) >= self.per_address {
            return Err(Refused::AddressFull);
        }
        if table.pending.len() >= self.max_handshakes {
            let victim = table.victim(source, now).ok_or(Refused::HandshakesFull)?;
            table.remove(victim);
        }
        let id = table.next;
        table.next += 1;
        let (displace, displaced) = oneshot::channel();
        table.pending.insert(
            id,
            Pending {
                source,
                accepted: now,
                spoke: false,
                _displace: displace,
            },
        );
        *table.per_address.entry(source).or_default() += 1;
        Ok(HandshakeSlot {
            limits: Arc::clone(self),
            id,
            displaced: Some(displaced),
        })
    }

    /// A place for an established connection of `identity` (any stable key; connections
    /// without a usable identity share one).
    ///
    /// # Errors
    /// `ServerFull` or `IdentityFull`: close the connection.
    pub fn establish(self: &Arc<Self>, identity: &str) -> Result<ConnectionSlot, Refused> {
        let mut established = self
            .established
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if established.total >= self.max_connections {
            return Err(Refused::ServerFull);
        }
        let held = established
            .per_identity
            .entry(identity.to_string())
            .or_default();
        if *held >= self.per_identity {
            return Err(Refused::IdentityFull);
        }
        *held += 1;
        established.total += 1;
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            identity: identity.to_string(),
        })
    }
}

/// A handshake's place in the budget, given back when dropped.
pub struct HandshakeSlot {
    limits: Arc<ConnectionLimits>,
    id: u64,
    displaced: Option<oneshot::Receiver<()>>,
}

impl HandshakeSlot {
    /// The client sent its first bytes: no longer displaced for silence.
    pub fn spoke(&self) {
        let mut table = self
            .limits
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pending) = table.pending.get_mut(&self.id) {
            pending.spoke = true;
        }
    }

    /// Completes when a newer connection takes this handshake's place (once per slot).
    pub fn displaced(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let receiver = self.displaced.take();
        async move {
            match receiver {
                Some(receiver) => {
                    let _ = receiver.await;
                }
                None => std::future::pending().await,
            }
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.limits
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}

/// An established connection's place under the limits, given back when dropped.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    identity: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut established = self
            .limits
            .established
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        established.total = established.total.saturating_sub(1);
        if let Some(held) = established.per_identity.get_mut(&self.identity) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                established.per_identity.remove(&self.identity);
            }
        }
    }
}

// === Idle connections ===

/// The calls open on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    /// Counts one call open until the guard is dropped.
    pub fn call(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        CallGuard(Arc::clone(self))
    }

    /// When the connection becomes idle for `timeout`, or `None` while a call is open.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                + timeout,
        )
    }
}

/// One open call of a connection.
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The time first, so that a connection never looks idle since before this call.
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells a connection when it has had no call open for its idle timeout.
pub struct IdleTimer {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl IdleTimer {
    /// A timer for the connection whose calls `activity` counts.
    pub fn new(activity: Arc<Activity>, timeout: Duration) -> IdleTimer {
        IdleTimer {
            activity,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            expired: false,
        }
    }

    /// Whether the connection is idle past its timeout; otherwise `cx` is woken to ask again.
    /// While calls are open it looks again every timeout, so a connection is closed between
    /// one and two timeouts after its last call ended.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while !self.expired {
            let deadline = self
                .activity
                .idle_deadline(self.timeout)
                .unwrap_or_else(|| Instant::now() + self.timeout);
            if deadline <= Instant::now() {
                self.expired = true;
                break;
            }
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
        true
    }
}

/// The tower layer that counts each call of a connection in its [`Activity`] (from the
/// [`Peer`] of the request) until its response body ends or is dropped.
#[derive(Clone, Copy, Default)]
pub struct IdleLayer;

impl<S> Layer<S> for IdleLayer {
    type Service = IdleService<S>;

    fn layer(&self, inner: S) -> IdleService<S> {
        IdleService { inner }
    }
}

/// The router wrapped by [`IdleLayer`].
#[derive(Clone)]
pub struct IdleService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for IdleService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CallBody<ResBody>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<Peer>()
            .map(|peer| peer.activity.call());
        CallFuture {
            inner: self.inner.call(request),
            guard,
        }
    }
}

pin_project! {
    /// The response future of [`IdleService`].
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, ResBody, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<CallBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| CallBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that keeps its call counted until it is dropped.
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        _guard: Option<CallGuard>,
    }
}

impl<B: Body> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_handshakes: usize, per_address: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(&Config {
            max_handshakes,
            max_handshakes_per_address: per_address,
            max_connections: 3,
            max_connections_per_identity: 2,
            ..Config::default()
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_holds_at_most_its_share_of_handshakes() {
        let limits = limits(10, 2);
        let _a = limits.begin_handshake(ip(2)).expect("first");
        let _b = limits.begin_handshake(ip(2)).expect("second");
        assert_eq!(
            limits.begin_handshake(ip(2)).err(),
            Some(Refused::AddressFull)
        );
        let _c = limits.begin_handshake(ip(3)).expect("another address");
    }

    #[tokio::test]
    async fn a_newcomer_displaces_the_busiest_address_never_a_lone_handshake() {
        let limits = limits(3, 3);
        let mut first = limits.begin_handshake(ip(2)).expect("first");
        first.spoke();
        let second = limits.begin_handshake(ip(2)).expect("second");
        second.spoke();
        let agency = limits.begin_handshake(ip(1)).expect("third");
        agency.spoke();
        // Full: a newcomer from a fresh address takes the oldest place of 127.0.0.2.
        let displaced = first.displaced();
        let _newcomer = limits.begin_handshake(ip(4)).expect("displaces 127.0.0.2");
        tokio::time::timeout(Duration::from_secs(1), displaced)
            .await
            .expect("the oldest of the busiest address was told");
        // Now one each: nobody may be displaced for a fourth address.
        assert_eq!(
            limits.begin_handshake(ip(5)).err(),
            Some(Refused::HandshakesFull)
        );
        drop(agency);
        let _again = limits
            .begin_handshake(ip(5))
            .expect("a place was given back");
    }

    #[tokio::test]
    async fn a_silent_socket_gives_its_place_first_once_past_the_grace() {
        let limits = limits(2, 2);
        let mut silent = limits.begin_handshake(ip(2)).expect("silent");
        let talking = limits.begin_handshake(ip(3)).expect("talking");
        talking.spoke();
        assert_eq!(
            limits.begin_handshake(ip(4)).err(),
            Some(Refused::HandshakesFull),
            "within the grace a silent socket keeps its place"
        );
        tokio::time::sleep(SILENT_GRACE).await;
        let displaced = silent.displaced();
        let _newcomer = limits
            .begin_handshake(ip(4))
            .expect("displaces the silent one");
        displaced.await;
    }

    #[test]
    fn established_connections_are_capped_per_identity_and_in_total() {
        let limits = limits(10, 10);
        let a = limits.establish("ES-CNP").expect("first");
        let _b = limits.establish("ES-CNP").expect("second");
        assert_eq!(
            limits.establish("ES-CNP").err(),
            Some(Refused::IdentityFull)
        );
        let _c = limits.establish("CO-DIJIN").expect("another identity");
        assert_eq!(limits.establish("BE-FPJ").err(), Some(Refused::ServerFull));
        drop(a);
        let _d = limits.establish("BE-FPJ").expect("a place was given back");
    }

    #[test]
    fn ipv6_sources_are_counted_by_64_bit_prefix() {
        let a: IpAddr = "2001:db8::1".parse().expect("address");
        let b: IpAddr = "2001:db8::ffff:2".parse().expect("address");
        assert_eq!(source_of(a), source_of(b));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("address");
        assert_eq!(source_of(mapped), ip(2));
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_without_open_calls() {
        let timeout = Duration::from_millis(200);
        let activity = Arc::new(Activity::default());
        let mut timer = IdleTimer::new(Arc::clone(&activity), timeout);
        let waker = futures_task_noop();
        let mut cx = Context::from_waker(&waker);
        assert!(!timer.poll_expired(&mut cx));
        let call = activity.call();
        tokio::time::sleep(timeout * 2).await;
        assert!(!timer.poll_expired(&mut cx), "a call is open");
        drop(call);
        tokio::time::sleep(timeout / 2).await;
        assert!(!timer.poll_expired(&mut cx), "idle for half the timeout");
        tokio::time::sleep(timeout).await;
        assert!(timer.poll_expired(&mut cx), "idle past the timeout");
    }

    fn futures_task_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
