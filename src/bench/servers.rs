//! The servers a bench run starts (the exchange, the echo bound) and its closed-loop budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Channel;

use super::setup::Identity;
use super::{BenchError, SERVER_EXIT_WAIT, STORE_LOCK_RETRY, STORE_LOCK_WAIT};
use crate::config::Config;
use crate::pb::v1::exchange_service_client::ExchangeServiceClient;
use crate::pb::v1::ListAgenciesRequest;
use crate::server::{self, ServerError};
use crate::store::StoreError;

// === Servers ===

/// Which server to start.
pub(super) enum Service {
    /// The exchange: `server::run`.
    Exchange,
    /// The echo service of the bound: `server::run_echo`.
    Echo,
}

/// A server running in this process on `127.0.0.1:<ephemeral>`.
pub(super) struct Running {
    pub(super) addr: SocketAddr,
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Binds `127.0.0.1:0` and starts `service` there with `config`.
    pub(super) async fn start(service: Service, mut config: Config) -> Result<Running, BenchError> {
        let listen = |what| move |source| BenchError::Listen { what, source };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(listen("cannot listen on 127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(listen("cannot read the listening address"))?;
        config.listen = addr;
        let (stop, stopped) = oneshot::channel();
        let shutdown = async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        };
        let task = match service {
            Service::Exchange => tokio::spawn(server::run(listener, config, shutdown)),
            Service::Echo => tokio::spawn(server::run_echo(listener, config, shutdown)),
        };
        Ok(Running { addr, stop, task })
    }

    /// A new mutual-TLS connection as `identity`. When it fails because the server stopped, the
    /// error says why the server stopped.
    pub(super) async fn connect(&mut self, identity: &Identity) -> Result<Channel, BenchError> {
        let refused = match identity.connect(self.addr).await {
            Ok(channel) => return Ok(channel),
            Err(refused) => refused,
        };
        match tokio::time::timeout(SERVER_EXIT_WAIT, &mut self.task).await {
            Ok(Ok(Err(e))) => Err(BenchError::ServerStopped(e)),
            Ok(Ok(Ok(()))) => Err(BenchError::ServerExited(refused)),
            Ok(Err(source)) => Err(BenchError::Panicked {
                what: "the server task",
                source,
            }),
            Err(_still_running) => Err(BenchError::Connect(refused)),
        }
    }

    /// Shuts the server down and waits until it has stopped; returns how long that took.
    pub(super) async fn stop(self) -> Result<Duration, BenchError> {
        let started = Instant::now();
        // Fails only if the server already stopped, which the task's result reports.
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|source| BenchError::Panicked {
                what: "the server task",
                source,
            })?
            .map_err(BenchError::Server)?;
        Ok(started.elapsed())
    }
}

/// Starts the exchange on `config` and waits for its first answer to a call as `identity`.
/// Returns the server and the time from starting it until that answer.
///
/// sled releases the lock on its database from its own I/O threads, some time after the last
/// handle on the previous store of this process is dropped. A start refused for that lock is
/// tried again (for at most [`STORE_LOCK_WAIT`]), and only the attempt that succeeds is timed.
pub(super) async fn start_exchange(
    config: &Config,
    identity: &Identity,
) -> Result<(Running, Duration), BenchError> {
    let deadline = Instant::now() + STORE_LOCK_WAIT;
    loop {
        let started = Instant::now();
        let mut server = Running::start(Service::Exchange, config.clone()).await?;
        let answered = async {
            ExchangeServiceClient::new(server.connect(identity).await?)
                .list_agencies(ListAgenciesRequest {})
                .await
                .map_err(BenchError::call("the server did not answer its first call"))
        }
        .await;
        match answered {
            Ok(_) => return Ok((server, started.elapsed())),
            Err(e) if store_locked(&e) && Instant::now() < deadline => {
                tokio::time::sleep(STORE_LOCK_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the server stopped because another handle in this process still holds the lock on
/// its sled database. sled (pinned at 0.34.7) says so only in the text of an `Other` I/O error.
fn store_locked(error: &BenchError) -> bool {
    matches!(
        error,
        BenchError::ServerStopped(ServerError::Store(StoreError::Sled(sled::Error::Io(e))))
            if e.to_string().starts_with("could not acquire lock")
    )
}

// === Closed loops ===

/// How much the closed loops of one phase send, shared among them: a number of messages, or
/// whatever fits before a deadline. Each send takes a ticket, numbered from 0.
#[derive(Clone)]
pub(super) struct Budget {
    pub(super) issued: Arc<AtomicU64>,
    pub(super) limit: Limit,
}

#[derive(Clone, Copy)]
pub(super) enum Limit {
    Count(u64),
    Until(Instant),
}

impl Budget {
    pub(super) fn new(count: u64, duration: Option<u64>) -> Budget {
        let limit = match duration {
            Some(secs) => Limit::Until(Instant::now() + Duration::from_secs(secs)),
            None => Limit::Count(count),
        };
        Budget {
            issued: Arc::new(AtomicU64::new(0)),
            limit,
        }
    }

    /// The ticket of the next send, while the budget lasts.
    pub(super) fn next(&self) -> Option<u64> {
        if let Limit::Until(deadline) = self.limit {
            if Instant::now() >= deadline {
                return None;
            }
        }
        let ticket = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Limit::Count(count) if ticket >= count => None,
            _ => Some(ticket),
        }
    }
}

/// Waits for every task; the first failure is returned, and aborts the others as `tasks` is
/// dropped.
pub(super) async fn join_all<T: 'static>(
    mut tasks: JoinSet<Result<T, BenchError>>,
) -> Result<Vec<T>, BenchError> {
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.map_err(|source| BenchError::Panicked {
            what: "a bench task",
            source,
        })??);
    }
    Ok(results)
}
