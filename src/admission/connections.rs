//! Connection admission: who may hold a connection, so that an outsider who has not finished a
//! TLS handshake can never take a place from callers that have.
//!
//! - Handshakes in progress have a budget of their own (`max_handshakes`), apart from
//!   established connections (`max_connections`), and one source address (an IPv6 /64) may
//!   hold at most `max_handshakes_per_address` of them. When either is full, a new connection
//!   takes the place of a handshake in progress rather than being refused (within its address
//!   when that is what is full): first the oldest socket that has sent nothing yet (a real
//!   client sends its ClientHello at once, and one that has is never displaced for silence),
//!   then the oldest handshake older than [`STALL_GRACE`] (a real one takes a few round trips),
//!   then — for the global budget — the oldest of the address holding the most, when it holds
//!   at least two more than the newcomer's address. Otherwise the newcomer is closed. So
//!   silent sockets never keep an agency out: a fresh socket is displaced last, and never once
//!   its ClientHello has arrived (seen through a duplicate of the socket, before its task even
//!   runs); from the agency's own address (a shared NAT) an attacker can only delay it by
//!   opening more than its address's share within one round trip of the agency. Stalled
//!   handshakes must be renewed every [`STALL_GRACE`], from more addresses than the budget has
//!   places.
//! - An established connection counts against `max_connections` and against the cap of its
//!   identity (`max_connections_per_identity`; every connection without a usable identity
//!   shares one), so one certificate — a suspended agency's included — cannot fill the server.
//! - A connection with no call open for `idle_timeout_ms` is closed ([`IdleTimer`]); calls are
//!   counted by the router's idle layer (`server::layers`), from the request to the end of the
//!   response body.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Context;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::config::Config;

/// How long a handshake that has begun may take before a new connection may displace it when
/// the budget is full: a TLS 1.3 handshake takes two round trips and a signature.
pub(crate) const STALL_GRACE: Duration = Duration::from_secs(2);

/// Why a connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
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
pub(crate) struct ConnectionLimits {
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
    /// A duplicate of the socket, to look for its first bytes without waiting for its task.
    probe: Option<std::net::TcpStream>,
    /// Dropped to displace the handshake.
    _displace: oneshot::Sender<()>,
}

impl Pending {
    /// Whether the client has sent anything yet. A socket whose task has not run since its
    /// ClientHello arrived is asked directly (a non-blocking peek), so an agency's fresh
    /// connection is never taken for a silent one.
    fn spoke(&mut self) -> bool {
        if !self.spoke {
            self.spoke = self.probe.as_ref().is_some_and(has_spoken);
        }
        self.spoke
    }
}

/// Whether bytes (or the end of the stream) wait on a non-blocking socket, without consuming
/// them.
pub(crate) fn has_spoken(socket: &std::net::TcpStream) -> bool {
    match socket.peek(&mut [0u8; 1]) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
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
    /// The handshake a newcomer may displace among those `within` selects: the oldest silent
    /// one, else the oldest past [`STALL_GRACE`].
    fn displaceable(&mut self, now: Instant, within: impl Fn(&Pending) -> bool) -> Option<u64> {
        let mut stalled = None;
        for (&id, pending) in self.pending.iter_mut().filter(|(_, p)| within(p)) {
            if !pending.spoke() {
                return Some(id);
            }
            if stalled.is_none() && now.duration_since(pending.accepted) >= STALL_GRACE {
                stalled = Some(id);
            }
        }
        stalled
    }

    /// The handshake a newcomer from `source` may displace once the budget is full, if any.
    fn victim(&mut self, source: IpAddr, now: Instant) -> Option<u64> {
        if let Some(id) = self.displaceable(now, |_| true) {
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
    pub(crate) fn new(config: &Config) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_handshakes: config.max_handshakes,
            per_address: config.max_handshakes_per_address,
            max_connections: config.max_connections,
            per_identity: config.max_connections_per_identity,
            handshakes: Mutex::new(Handshakes::default()),
            established: Mutex::new(Established::default()),
        })
    }

    /// A place for a handshake from `remote`, displacing another when its address's share or
    /// the budget is full. `probe` is a duplicate of the socket (non-blocking), through which
    /// the table sees whether the client has sent its first bytes; it is closed with the slot.
    ///
    /// # Errors
    /// `AddressFull` or `HandshakesFull`: close the connection.
    pub(crate) fn begin_handshake(
        self: &Arc<Self>,
        remote: IpAddr,
        probe: Option<std::net::TcpStream>,
    ) -> Result<HandshakeSlot, Refused> {
        let source = source_of(remote);
        let now = Instant::now();
        let mut table = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if table.per_address.get(&source).copied().unwrap_or(0) >= self.per_address {
            let victim = table
                .displaceable(now, |p| p.source == source)
                .ok_or(Refused::AddressFull)?;
            table.remove(victim);
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
                spoke: probe.as_ref().is_some_and(has_spoken),
                probe,
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
    pub(crate) fn establish(self: &Arc<Self>, identity: &str) -> Result<ConnectionSlot, Refused> {
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
pub(crate) struct HandshakeSlot {
    limits: Arc<ConnectionLimits>,
    id: u64,
    displaced: Option<oneshot::Receiver<()>>,
}

impl HandshakeSlot {
    /// The client sent its first bytes: no longer displaced for silence.
    pub(crate) fn spoke(&self) {
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
    pub(crate) fn displaced(&mut self) -> impl Future<Output = ()> + Send + 'static {
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
pub(crate) struct ConnectionSlot {
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
pub(crate) struct IdleTimer {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl IdleTimer {
    /// A timer for the connection whose calls `activity` counts.
    pub(crate) fn new(activity: Arc<Activity>, timeout: Duration) -> IdleTimer {
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
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
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

    /// A handshake slot from `from` whose client has (`spoke`) or has not sent bytes yet.
    fn begin(
        limits: &Arc<ConnectionLimits>,
        from: u8,
        spoke: bool,
    ) -> Result<HandshakeSlot, Refused> {
        let slot = limits.begin_handshake(ip(from), None)?;
        if spoke {
            slot.spoke();
        }
        Ok(slot)
    }

    #[tokio::test]
    async fn one_address_holds_its_share_and_its_silent_sockets_give_way() {
        let limits = limits(10, 2);
        let mut silent = begin(&limits, 2, false).expect("silent");
        let _talking = begin(&limits, 2, true).expect("talking");
        // At the address's share: a newcomer from it takes the silent socket's place...
        let displaced = silent.displaced();
        let _agency = begin(&limits, 2, true).expect("displaces the silent one");
        tokio::time::timeout(Duration::from_secs(1), displaced)
            .await
            .expect("the silent socket was told");
        // ...but never the place of one that has spoken, within the stall grace.
        assert_eq!(begin(&limits, 2, false).err(), Some(Refused::AddressFull));
        let _other = begin(&limits, 3, false).expect("another address");
    }

    #[tokio::test]
    async fn a_newcomer_displaces_the_busiest_address_never_a_lone_handshake() {
        let limits = limits(3, 3);
        let mut first = begin(&limits, 2, true).expect("first");
        let _second = begin(&limits, 2, true).expect("second");
        let agency = begin(&limits, 1, true).expect("third");
        // Full: a newcomer from a fresh address takes the oldest place of 127.0.0.2.
        let displaced = first.displaced();
        let _newcomer = begin(&limits, 4, true).expect("displaces 127.0.0.2");
        tokio::time::timeout(Duration::from_secs(1), displaced)
            .await
            .expect("the oldest of the busiest address was told");
        // Now one each, all speaking: nobody may be displaced for a fifth address.
        assert_eq!(
            begin(&limits, 5, false).err(),
            Some(Refused::HandshakesFull)
        );
        drop(agency);
        let _again = begin(&limits, 5, false).expect("a place was given back");
    }

    #[tokio::test]
    async fn silent_sockets_give_way_first_and_stalled_handshakes_after_the_grace() {
        let limits = limits(2, 2);
        let mut silent = begin(&limits, 2, false).expect("silent");
        let mut stalled = begin(&limits, 3, true).expect("talking");
        let displaced = silent.displaced();
        let _newcomer = begin(&limits, 4, true).expect("displaces the silent one, however young");
        displaced.await;
        assert_eq!(
            begin(&limits, 5, true).err(),
            Some(Refused::HandshakesFull),
            "within the grace a handshake that has begun keeps its place"
        );
        tokio::time::sleep(STALL_GRACE).await;
        let displaced = stalled.displaced();
        let _late = begin(&limits, 5, true).expect("displaces the stalled one");
        displaced.await;
    }

    #[test]
    fn a_probe_sees_the_first_bytes_without_consuming_them() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        assert!(!has_spoken(&server), "nothing sent yet");
        client.write_all(b"hello").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !has_spoken(&server) {
            assert!(std::time::Instant::now() < deadline, "never saw the bytes");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.set_nonblocking(false).expect("blocking");
        let mut read = [0u8; 5];
        server.read_exact(&mut read).expect("read");
        assert_eq!(&read, b"hello", "the peek consumed nothing");
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
