//! `puente bench`: the durable send rate of a real server started in this process, set against
//! the bare-tonic bound measured in the same run; then a restart, the process's memory, and the
//! latency of audit proofs.
//!
//! Everything runs on a temporary directory with a PKI generated for the run. Every client has
//! its own mutual-TLS connection, made as the CLI makes it. Senders work in a closed loop: each
//! send waits for its answer, which the server gives only once the message is on stable storage.
//! Readers follow their inbox streams and acknowledge every message. A message's text starts with
//! its send instant (`t=<nanoseconds since the bench started> `), so that the reader, in the same
//! process, can tell its send→delivery latency.
//!
//! The bound is an echo service served by [`server::run_echo`] with the same TLS configuration,
//! accept loop and tonic settings, called by as many clients with payloads of the same size.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use rand_core::{OsRng, RngCore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Channel;
use tonic::Streaming;

use super::rpc_error;
use crate::audit::merkle;
use crate::config::{ClientProfile, Config, Limits, MetricsListen, DEFAULT_MAX_MESSAGE_BYTES};
use crate::directory::{AgencyEntry, Directory};
use crate::exchange::ExchangeService;
use crate::identity::{AgencyId, Caller, Peer, Revocations};
use crate::pb::bench::v1::echo_service_client::EchoServiceClient;
use crate::pb::bench::v1::EchoRequest;
use crate::pb::v1::audit_service_client::AuditServiceClient;
use crate::pb::v1::exchange_service_client::ExchangeServiceClient;
use crate::pb::v1::exchange_service_server::ExchangeService as _;
use crate::pb::v1::{
    message, send_message_request, AcknowledgeMessageRequest, DeliveryState, Evaluation,
    GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest, HandlingCode,
    InformationAccuracy, ListAgenciesRequest, Message, Region, SendMessageRequest,
    SourceReliability, StreamInboxRequest, StreamInboxResponse, Topic,
};
use crate::pki::{self, CertificateAuthority, Subject};
use crate::server::{self, ServerError};
use crate::store::{commit_stats, DataKeys, Store, StoreError, MAX_GROUP_COMMIT};

/// The sending agencies, reused round-robin by the sender connections.
const SENDER_AGENCIES: [&str; 4] = ["ES-CNP", "BE-FPJ", "FR-OCLCO", "PT-PJ"];
/// Countries the reading agencies are spread over.
const READER_COUNTRIES: [&str; 6] = ["CO", "MX", "BR", "AR", "CL", "PE"];
/// Receives the preloaded messages, and every message when there are no readers. Nobody reads
/// its inbox.
const UNREAD_AGENCY: &str = "CO-DIJIN";
/// The name the server certificate carries and the clients check.
const SERVER_NAME: &str = "localhost";
/// Validity of the run's certificates and CRL, in days: beyond the server's expiry warning.
const CERT_DAYS: u32 = 30;
/// Sends in flight while preloading: as many as one group commit takes.
const PRELOAD_IN_FLIGHT: usize = MAX_GROUP_COMMIT;
/// Acknowledgements one reader keeps in flight, so that it goes on reading its stream while
/// earlier acknowledgements wait for their fsync.
const ACKS_IN_FLIGHT: usize = 64;
/// Smallest `--size`: room for the send instant at the start of the text.
const MIN_SIZE: usize = 32;
/// How long a failed connection waits to learn whether the server stopped.
const SERVER_EXIT_WAIT: Duration = Duration::from_secs(1);
/// How long a start waits for sled to release the lock of a store closed in this process.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(5);
/// Pause between starts refused for that lock.
const STORE_LOCK_RETRY: Duration = Duration::from_millis(10);
/// How long a reader waits for a message it is owed once every sender is done.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `puente bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Sending connections. Each sends one message at a time and waits for its durable
    /// acceptance before the next; the bound uses as many echo clients.
    #[arg(long, default_value_t = 32)]
    senders: usize,
    /// Reading connections, one agency each, that follow their inbox stream and acknowledge
    /// every message; messages are addressed to them round-robin. 0 for none (messages then go
    /// to an agency nobody reads).
    #[arg(long, default_value_t = 32)]
    readers: usize,
    /// Size of each message's text in bytes (the send instant, then padding), and of each echo
    /// payload.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to send in the measured run, shared among the senders (as many echoes for the
    /// bound).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Send for this many seconds instead of a number of messages (the bound runs as long).
    #[arg(long, conflicts_with = "messages")]
    duration: Option<u64>,
    /// Messages to store before the measured run, committed by the exchange's own send handler
    /// with no network in between, as fast as the store takes them.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Inclusion proofs, and as many consistency proofs, to time as an auditor after the run
    /// (random leaves and sizes); 0 for none.
    #[arg(long, default_value_t = 1000)]
    proofs: usize,
    /// Measure only the bare-tonic bound.
    #[arg(long, conflicts_with = "skip_bound")]
    bound_only: bool,
    /// Do not measure the bare-tonic bound.
    #[arg(long)]
    skip_bound: bool,
    /// Put the store here (to measure another disk) instead of in the temporary directory. It
    /// must be new or empty, and is kept afterwards.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its report.
///
/// # Errors
/// Invalid flags, a directory that cannot be written, a server that fails to start, or a call
/// that fails during the run.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.check()?;
    let work = tempfile::Builder::new()
        .prefix("puente-bench-")
        .tempdir()
        .context("cannot create a temporary directory (set TMPDIR to a writable directory)")?;
    let data_dir = match &args.data_dir {
        Some(dir) => {
            check_fresh(dir)?;
            dir.clone()
        }
        None => work.path().join("data"),
    };
    let base = Instant::now();
    let pki = Pki::generate(work.path().join("tls"))?;
    let readers = if args.bound_only { 0 } else { args.readers };
    let cast = Cast::issue(&pki, args.senders, readers)?;
    let mut report = Report {
        payload_bytes: args.size,
        senders: args.senders,
        readers,
        ..Report::default()
    };

    if !args.skip_bound {
        eprintln!("bench: measuring the bare-tonic bound");
        let echo_dir = work.path().join("echo");
        std::fs::create_dir(&echo_dir)
            .with_context(|| format!("cannot create {}", echo_dir.display()))?;
        report.bound = Some(measure_bound(&args, &cast, pki.config(echo_dir)).await?);
    }
    if args.bound_only {
        report.memory = memory();
    } else {
        eprintln!("bench: registering agencies");
        report.preload = prepare(&args, &cast, &pki, &data_dir).await?;
        report.fdatasync = Some(measure_fdatasync(&data_dir)?);
        let config = pki.config(data_dir.clone());
        let (mut server, _) = start_exchange(&config, &cast.sender(0).identity).await?;
        eprintln!("bench: measuring durable sends");
        let durable = measure_durable(&args, &cast, &mut server, base).await?;
        let stored = args.preload + durable.messages;
        report.durable_to_bound = report
            .bound
            .as_ref()
            .map(|bound| durable.per_second / bound.per_second);
        report.durable = Some(durable);

        eprintln!("bench: restarting the server");
        let (mut server, restart) = restart(server, &config, &cast, stored).await?;
        report.restart = Some(restart);
        report.memory = memory();
        if args.proofs > 0 {
            eprintln!("bench: timing audit proofs");
            report.proofs = Some(time_proofs(&cast.auditor, &mut server, args.proofs).await?);
        }
        server.stop().await?;
        if let Some(proofs) = &mut report.proofs {
            proofs.computed = Some(
                time_computed_proofs(&data_dir, &pki.data_key, proofs.tree_size, args.proofs)
                    .await?,
            );
        }
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        report.print();
    }
    work.close()
        .context("cannot remove the bench's temporary directory")?;
    Ok(())
}

impl BenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.senders == 0 {
            bail!("--senders must be at least 1");
        }
        if !(MIN_SIZE..=DEFAULT_MAX_MESSAGE_BYTES).contains(&self.size) {
            bail!("--size must be between {MIN_SIZE} and {DEFAULT_MAX_MESSAGE_BYTES} bytes");
        }
        match self.duration {
            Some(0) => bail!("--duration must be at least 1 second"),
            None if self.messages == 0 => bail!("--messages must be at least 1"),
            _ => Ok(()),
        }
    }
}

/// Refuses a `--data-dir` that holds anything: the bench's counts assume a fresh store.
fn check_fresh(dir: &Path) -> anyhow::Result<()> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read --data-dir {}", dir.display()))
        }
    };
    if !empty {
        bail!(
            "--data-dir {} is not empty: give a new or empty directory, the bench needs a fresh store",
            dir.display()
        );
    }
    Ok(())
}

// === The PKI and the identities of a run ===

/// A CA generated for the run, the server's certificate and key it issued, and its (empty) CRL,
/// on disk. With a CRL the servers check revocation, as a production exchange does.
struct Pki {
    ca: CertificateAuthority,
    dir: PathBuf,
    ca_cert: PathBuf,
    crl: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    data_key: PathBuf,
    trust_domain: String,
}

impl Pki {
    fn generate(dir: PathBuf) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let ca = CertificateAuthority::generate("Puente bench CA", CERT_DAYS)
            .context("cannot generate the bench's CA")?;
        let ca_cert = dir.join("ca.pem");
        pki::write_public(&ca_cert, ca.cert_pem())?;
        let crl = dir.join("crl.pem");
        let crl_pem = ca
            .crl(&[], 1, CERT_DAYS)
            .context("cannot sign the bench's CRL")?;
        pki::write_public(&crl, &crl_pem)?;
        let data_key = dir.join("data.keys");
        DataKeys::add_new(&data_key).context("cannot create the bench's data key")?;
        let pki = Pki {
            ca,
            data_key,
            dir,
            ca_cert,
            crl,
            server_cert: PathBuf::new(),
            server_key: PathBuf::new(),
            trust_domain: Config::default().trust_domain,
        };
        let hosts = vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()];
        let server = pki.issue(&Subject::Server(hosts), "server")?;
        Ok(Pki {
            server_cert: server.cert,
            server_key: server.key,
            ..pki
        })
    }

    /// Issues a certificate for `subject` and writes it, and its key, as `<stem>.pem` and
    /// `<stem>.key`.
    fn issue(&self, subject: &Subject, stem: &str) -> anyhow::Result<Identity> {
        let issued = self
            .ca
            .issue(subject, &self.trust_domain, CERT_DAYS, None)
            .with_context(|| format!("cannot issue a certificate for {stem}"))?;
        let key_pem = issued
            .key_pem
            .context("the CA issued a certificate without generating its key")?;
        let (cert, key) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        pki::write_public(&cert, &issued.cert_pem)?;
        pki::write_private(&key, &key_pem)?;
        Ok(Identity {
            cert,
            key,
            ca: self.ca_cert.clone(),
            cert_pem: issued.cert_pem,
        })
    }

    /// A server configuration with this PKI and `data_dir`, defaults otherwise.
    fn config(&self, data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            tls_cert: self.server_cert.clone(),
            tls_key: self.server_key.clone(),
            client_ca: self.ca_cert.clone(),
            crl: Some(self.crl.clone()),
            data_key: self.data_key.clone(),
            trust_domain: self.trust_domain.clone(),
            // The bench measures capacity: a few sender identities carry every call, so the
            // per-caller rate limit is lifted.
            limits: Limits {
                requests_per_second: u32::MAX,
                request_burst: u32::MAX,
                // Each timed proof is an audited query.
                audited_calls_per_minute: u32::MAX,
                audited_call_burst: u32::MAX,
                ..Limits::default()
            },
            // One sender identity carries many connections.
            max_connections_per_identity: crate::config::DEFAULT_MAX_CONNECTIONS,
            // Servers of one run come and go in this process: the default port would clash
            // with a server running on this machine. The per-call metrics are still recorded.
            metrics_listen: MetricsListen::Off,
            ..Config::default()
        }
    }
}

/// A client certificate and key on disk, used as a CLI profile uses them.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    cert_pem: String,
}

impl Identity {
    /// A new mutual-TLS connection to the server at `addr`.
    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<Channel> {
        super::connect::connect(&ClientProfile {
            addr: addr.to_string(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            server_name: SERVER_NAME.into(),
        })
        .await
    }

    /// What the server makes of this certificate on a connection.
    fn peer(&self, trust_domain: &str) -> anyhow::Result<Peer> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .context("the bench's own certificate does not parse")?;
        let caller = Caller::from_certificate(&der, trust_domain)
            .context("the bench's own certificate names no identity")?;
        Ok(Peer {
            caller: Ok(Arc::new(caller)),
            remote_addr: None,
            revocations: Arc::new(Revocations::default()),
            activity: Arc::default(),
            audit_budget: Arc::default(),
        })
    }
}

/// An agency of the run and its certificate.
struct Member {
    id: AgencyId,
    identity: Identity,
}

/// Who takes part: the sending agencies, one agency per reader, and an auditor.
struct Cast {
    senders: Vec<Member>,
    readers: Vec<Member>,
    auditor: Identity,
}

impl Cast {
    /// Certificates for `senders` connections (at most one agency per entry of
    /// [`SENDER_AGENCIES`]), `readers` reading agencies and an auditor.
    fn issue(pki: &Pki, senders: usize, readers: usize) -> anyhow::Result<Cast> {
        let member = |id: String| -> anyhow::Result<Member> {
            let id = AgencyId::parse(&id)?;
            let identity = pki.issue(&Subject::Agency(id.clone()), id.as_str())?;
            Ok(Member { id, identity })
        };
        let senders = SENDER_AGENCIES
            .iter()
            .take(senders)
            .map(|id| member(id.to_string()))
            .collect::<anyhow::Result<_>>()?;
        let readers = (0..readers)
            .map(|i| {
                member(format!(
                    "{}-R{i:03}",
                    READER_COUNTRIES[i % READER_COUNTRIES.len()]
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let auditor = pki.issue(&Subject::Auditor("bench".into()), "auditor")?;
        Ok(Cast {
            senders,
            readers,
            auditor,
        })
    }

    /// The agency that sender connection `i` sends as.
    fn sender(&self, i: usize) -> &Member {
        &self.senders[i % self.senders.len()]
    }

    /// Where the measured messages go, round-robin.
    fn recipients(&self) -> Arc<[String]> {
        if self.readers.is_empty() {
            Arc::from([UNREAD_AGENCY.to_string()])
        } else {
            self.readers.iter().map(|r| r.id.to_string()).collect()
        }
    }
}

// === Servers ===

/// Which server to start.
enum Service {
    /// The exchange: `server::run`.
    Exchange,
    /// The echo service of the bound: `server::run_echo`.
    Echo,
}

/// A server running in this process on `127.0.0.1:<ephemeral>`.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Binds `127.0.0.1:0` and starts `service` there with `config`.
    async fn start(service: Service, mut config: Config) -> anyhow::Result<Running> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("cannot read the listening address")?;
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
    async fn connect(&mut self, identity: &Identity) -> anyhow::Result<Channel> {
        let refused = match identity.connect(self.addr).await {
            Ok(channel) => return Ok(channel),
            Err(refused) => refused,
        };
        match tokio::time::timeout(SERVER_EXIT_WAIT, &mut self.task).await {
            Ok(Ok(Err(e))) => Err(e).context("the server stopped"),
            Ok(Ok(Ok(()))) => Err(refused.context("the server stopped")),
            Ok(Err(panicked)) => Err(panicked).context("the server task panicked"),
            Err(_still_running) => Err(refused),
        }
    }

    /// Shuts the server down and waits until it has stopped; returns how long that took.
    async fn stop(self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        // Fails only if the server already stopped, which the task's result reports.
        let _ = self.stop.send(());
        self.task
            .await
            .context("the server task panicked")?
            .context("the server failed")?;
        Ok(started.elapsed())
    }
}

/// Starts the exchange on `config` and waits for its first answer to a call as `identity`.
/// Returns the server and the time from starting it until that answer.
///
/// sled releases the lock on its database from its own I/O threads, some time after the last
/// handle on the previous store of this process is dropped. A start refused for that lock is
/// tried again (for at most [`STORE_LOCK_WAIT`]), and only the attempt that succeeds is timed.
async fn start_exchange(
    config: &Config,
    identity: &Identity,
) -> anyhow::Result<(Running, Duration)> {
    let deadline = Instant::now() + STORE_LOCK_WAIT;
    loop {
        let started = Instant::now();
        let mut server = Running::start(Service::Exchange, config.clone()).await?;
        let answered = async {
            ExchangeServiceClient::new(server.connect(identity).await?)
                .list_agencies(ListAgenciesRequest {})
                .await
                .map_err(rpc_error)
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
fn store_locked(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ServerError>(),
        Some(ServerError::Store(StoreError::Sled(sled::Error::Io(e))))
            if e.to_string().starts_with("could not acquire lock")
    )
}

// === Closed loops ===

/// How much the closed loops of one phase send, shared among them: a number of messages, or
/// whatever fits before a deadline. Each send takes a ticket, numbered from 0.
#[derive(Clone)]
struct Budget {
    issued: Arc<AtomicU64>,
    limit: Limit,
}

#[derive(Clone, Copy)]
enum Limit {
    Count(u64),
    Until(Instant),
}

impl Budget {
    fn new(count: u64, duration: Option<u64>) -> Budget {
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
    fn next(&self) -> Option<u64> {
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
async fn join_all<T: 'static>(mut tasks: JoinSet<anyhow::Result<T>>) -> anyhow::Result<Vec<T>> {
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.context("a bench task panicked")??);
    }
    Ok(results)
}

// === The bare-tonic bound ===

/// The echo service on the run's TLS, called by `--senders` clients in closed loops with
/// payloads of `--size` bytes.
async fn measure_bound(args: &BenchArgs, cast: &Cast, config: Config) -> anyhow::Result<Bound> {
    let mut server = Running::start(Service::Echo, config).await?;
    let mut clients = Vec::with_capacity(args.senders);
    for i in 0..args.senders {
        let channel = server.connect(&cast.sender(i).identity).await?;
        clients.push(EchoServiceClient::new(channel));
    }
    let payload = vec![b'x'; args.size];
    let budget = Budget::new(args.messages, args.duration);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let (budget, payload) = (budget.clone(), payload.clone());
        tasks.spawn(async move {
            let mut rtts = Vec::new();
            while budget.next().is_some() {
                let sent = Instant::now();
                client
                    .echo(EchoRequest {
                        payload: payload.clone(),
                    })
                    .await
                    .map_err(rpc_error)
                    .context("an echo call failed")?;
                rtts.push(sent.elapsed());
            }
            anyhow::Ok(rtts)
        });
    }
    let mut rtts: Vec<Duration> = join_all(tasks).await?.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    server.stop().await?;
    let rtt = Percentiles::of(&mut rtts);
    Ok(Bound {
        messages: rtts.len() as u64,
        seconds: elapsed.as_secs_f64(),
        per_second: rtts.len() as f64 / elapsed.as_secs_f64(),
        rtt_p50_ms: rtt.p50_ms,
        rtt_p99_ms: rtt.p99_ms,
    })
}

// === Setup and preload ===

/// Registers the run's agencies and stores `--preload` messages, before the server starts. Both
/// go through the library as the server uses it: the directory, and the exchange's own send
/// handler, called with the sender's identity as a connection would carry it.
async fn prepare(
    args: &BenchArgs,
    cast: &Cast,
    pki: &Pki,
    data_dir: &Path,
) -> anyhow::Result<Option<Preload>> {
    let config = pki.config(data_dir.to_path_buf());
    let store = Store::open(data_dir, open_data_keys(&pki.data_key)?)
        .with_context(|| format!("cannot open a store in {}", data_dir.display()))?;
    let directory = Arc::new(Directory::load(Arc::clone(&store))?);
    let unread = (AgencyId::parse(UNREAD_AGENCY)?, Region::Celac);
    let agencies = cast
        .senders
        .iter()
        .map(|s| (s.id.clone(), Region::Eu))
        .chain(cast.readers.iter().map(|r| (r.id.clone(), Region::Celac)))
        .chain([unread]);
    for (id, region) in agencies {
        let entry = AgencyEntry {
            name: format!("Bench agency {id}"),
            country: id.as_str()[..2].to_string(),
            agency_id: id.clone(),
            region,
            status: None,
        };
        directory
            .register(entry, None)
            .await
            .with_context(|| format!("cannot register agency {id}"))?;
    }

    let preload = if args.preload > 0 {
        Some(preload(args, cast, &config, &store, &directory).await?)
    } else {
        None
    };
    // The server opens the store next: every handle on it must be gone by then.
    drop(directory);
    store.close().await;
    Ok(preload)
}

/// Stores `--preload` messages for [`UNREAD_AGENCY`] through the exchange's own send handler,
/// [`PRELOAD_IN_FLIGHT`] at a time.
async fn preload(
    args: &BenchArgs,
    cast: &Cast,
    config: &Config,
    store: &Arc<Store>,
    directory: &Arc<Directory>,
) -> anyhow::Result<Preload> {
    eprintln!("bench: preloading {} messages", args.preload);
    // Inbox streams end when this turns true; the preload opens none.
    let (_stopping, stopping) = watch::channel(false);
    let exchange = ExchangeService::new(
        Arc::clone(store),
        Arc::clone(directory),
        config.limits.clone(),
        stopping,
        Arc::default(),
    );
    let peers: Arc<[Peer]> = cast
        .senders
        .iter()
        .map(|s| s.identity.peer(&config.trust_domain))
        .collect::<anyhow::Result<_>>()?;
    let budget = Budget::new(args.preload, None);
    let size = args.size;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..PRELOAD_IN_FLIGHT {
        let (exchange, peers, budget) = (exchange.clone(), Arc::clone(&peers), budget.clone());
        tasks.spawn(async move {
            while let Some(ticket) = budget.next() {
                let text = stamped_text(Duration::ZERO, size);
                let mut request = tonic::Request::new(text_message(
                    format!("preload-{ticket}"),
                    UNREAD_AGENCY,
                    text,
                ));
                let peer = peers[ticket as usize % peers.len()].clone();
                request.extensions_mut().insert(peer);
                exchange
                    .send_message(request)
                    .await
                    .map_err(rpc_error)
                    .context("a preloaded send failed")?;
            }
            anyhow::Ok(())
        });
    }
    join_all(tasks).await?;
    let elapsed = started.elapsed();
    Ok(Preload {
        messages: args.preload,
        seconds: elapsed.as_secs_f64(),
        per_second: args.preload as f64 / elapsed.as_secs_f64(),
    })
}

/// Times `fdatasync` of a 4 KiB overwrite in a preallocated file in `data_dir`: the least one
/// durable answer costs on this disk.
fn measure_fdatasync(data_dir: &Path) -> anyhow::Result<Percentiles> {
    const SYNCS: usize = 500;
    const BLOCK: usize = 4096;
    let path = data_dir.join("bench-fdatasync.tmp");
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = vec![0x5a; BLOCK];
    for _ in 0..SYNCS {
        file.write_all(&block)?;
    }
    file.sync_all()?;
    let mut samples = Vec::with_capacity(SYNCS);
    for i in 0..SYNCS {
        let started = Instant::now();
        file.write_all_at(&block, (i * BLOCK) as u64)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(Percentiles::of(&mut samples))
}

// === The durable run ===

/// The measured run: readers follow their inboxes, then `--senders` closed loops send until the
/// budget is spent, then the readers collect what they are owed.
async fn measure_durable(
    args: &BenchArgs,
    cast: &Cast,
    server: &mut Running,
    base: Instant,
) -> anyhow::Result<Durable> {
    // Readers are following their inboxes before the first send.
    let mut owed = Vec::with_capacity(cast.readers.len());
    let mut readers = JoinSet::new();
    for reader in &cast.readers {
        let mut client = ExchangeServiceClient::new(server.connect(&reader.identity).await?);
        let stream = client
            .stream_inbox(StreamInboxRequest {
                after_sequence: 0,
                backlog_only: false,
            })
            .await
            .map_err(rpc_error)
            .with_context(|| format!("cannot open the inbox stream of {}", reader.id))?
            .into_inner();
        let (owed_tx, owed_rx) = watch::channel(None);
        owed.push(owed_tx);
        readers.spawn(read_inbox(
            client,
            stream,
            owed_rx,
            base,
            reader.id.to_string(),
        ));
    }
    let mut senders = Vec::with_capacity(args.senders);
    for i in 0..args.senders {
        let channel = server.connect(&cast.sender(i).identity).await?;
        senders.push(ExchangeServiceClient::new(channel));
    }

    let recipients = cast.recipients();
    let before = commit_stats();
    let budget = Budget::new(args.messages, args.duration);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for client in senders {
        tasks.spawn(send_loop(
            client,
            budget.clone(),
            Arc::clone(&recipients),
            args.size,
            base,
        ));
    }
    let mut send_to_ack = Vec::new();
    let mut sent_to = vec![0u64; recipients.len()];
    for (latencies, counts) in join_all(tasks).await? {
        send_to_ack.extend(latencies);
        for (total, count) in sent_to.iter_mut().zip(counts) {
            *total += count;
        }
    }
    let elapsed = started.elapsed();
    for (reader, count) in owed.iter().zip(&sent_to) {
        reader.send_replace(Some(*count));
    }
    let mut deliveries: Vec<Duration> = join_all(readers).await?.into_iter().flatten().collect();
    let stats = commit_stats().since(before);

    let messages = send_to_ack.len() as u64;
    Ok(Durable {
        messages,
        seconds: elapsed.as_secs_f64(),
        per_second: messages as f64 / elapsed.as_secs_f64(),
        send_to_ack: Percentiles::of(&mut send_to_ack),
        send_to_delivery: (!cast.readers.is_empty()).then(|| Percentiles::of(&mut deliveries)),
        mean_group_commit: stats.mean_group_size(),
        mean_flush_ms: stats.mean_flush_micros() / 1e3,
    })
}

/// One sender's closed loop. Returns its send→ack latencies and how many messages it sent to
/// each recipient.
async fn send_loop(
    mut client: ExchangeServiceClient<Channel>,
    budget: Budget,
    recipients: Arc<[String]>,
    size: usize,
    base: Instant,
) -> anyhow::Result<(Vec<Duration>, Vec<u64>)> {
    let mut latencies = Vec::new();
    let mut counts = vec![0u64; recipients.len()];
    while let Some(ticket) = budget.next() {
        let to = ticket as usize % recipients.len();
        let sent = Instant::now();
        let text = stamped_text(sent.duration_since(base), size);
        let request = text_message(format!("bench-{ticket}"), &recipients[to], text);
        client
            .send_message(request)
            .await
            .map_err(rpc_error)
            .context("a measured send failed")?;
        latencies.push(sent.elapsed());
        counts[to] += 1;
    }
    Ok((latencies, counts))
}

/// One reader: follows the inbox stream of `agency`, acknowledges every message as received,
/// and stops once it has every message it is `owed` (known when the senders are done). Returns
/// its send→delivery latencies.
async fn read_inbox(
    client: ExchangeServiceClient<Channel>,
    mut stream: Streaming<StreamInboxResponse>,
    mut owed: watch::Receiver<Option<u64>>,
    base: Instant,
    agency: String,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut acks = JoinSet::new();
    loop {
        let target = *owed.borrow_and_update();
        let received = latencies.len() as u64;
        let next = match target {
            Some(count) if received >= count => break,
            Some(count) => tokio::time::timeout(STALL_TIMEOUT, stream.message())
                .await
                .map_err(|_| {
                    anyhow!("{agency} received {received} of its {count} messages, then nothing for {STALL_TIMEOUT:?}: the server stopped delivering")
                })?,
            None => tokio::select! {
                next = stream.message() => next,
                changed = owed.changed() => {
                    changed.context("the bench stopped before its senders were done")?;
                    continue;
                }
            },
        };
        let entry = next
            .map_err(rpc_error)
            .with_context(|| format!("the inbox stream of {agency} failed"))?
            .with_context(|| format!("the inbox stream of {agency} ended early"))?;
        let arrived = base.elapsed();
        let message = entry
            .message
            .context("an inbox entry came without its message")?;
        let sent = sent_at(&message)
            .with_context(|| format!("message {} carries no send instant", message.message_id))?;
        latencies.push(arrived.saturating_sub(sent));

        if acks.len() >= ACKS_IN_FLIGHT {
            if let Some(done) = acks.join_next().await {
                done.context("an acknowledgement task panicked")??;
            }
        }
        let mut client = client.clone();
        acks.spawn(async move {
            client
                .acknowledge_message(AcknowledgeMessageRequest {
                    message_id: message.message_id,
                    state: DeliveryState::Received as i32,
                })
                .await
                .map_err(rpc_error)
                .context("an acknowledgement failed")
        });
    }
    join_all(acks).await?;
    Ok(latencies)
}

/// A valid text message (topic, handling code and evaluation as an agency would send them) to
/// one recipient.
fn text_message(client_message_id: String, recipient: &str, text: String) -> SendMessageRequest {
    SendMessageRequest {
        client_message_id,
        recipients: vec![recipient.to_string()],
        topic: Topic::FirearmsTrafficking as i32,
        subject: "Benchmark message".into(),
        handling: HandlingCode::H1 as i32,
        evaluation: Some(Evaluation {
            source_reliability: SourceReliability::B as i32,
            information_accuracy: InformationAccuracy::InformationAccuracy2 as i32,
        }),
        content: Some(send_message_request::Content::Text(text)),
        ..Default::default()
    }
}

/// A text of `size` bytes that starts with the send instant: `t=<nanoseconds> xxx…`.
fn stamped_text(sent: Duration, size: usize) -> String {
    let mut text = format!("t={} ", sent.as_nanos());
    let padding = size.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('x', padding));
    text
}

/// The send instant at the start of a message's text.
fn sent_at(message: &Message) -> Option<Duration> {
    let Some(message::Content::Text(text)) = &message.content else {
        return None;
    };
    let (nanos, _) = text.strip_prefix("t=")?.split_once(' ')?;
    nanos.parse().ok().map(Duration::from_nanos)
}

// === Restart, memory and proofs ===

/// Stops `server`, starts it again on the same configuration, and times its first answer.
async fn restart(
    server: Running,
    config: &Config,
    cast: &Cast,
    stored: u64,
) -> anyhow::Result<(Running, Restart)> {
    let stop = server.stop().await?;
    let (server, ready) = start_exchange(config, &cast.sender(0).identity)
        .await
        .context("the server failed to restart")?;
    Ok((
        server,
        Restart {
            stored,
            stop_ms: millis(stop),
            ready_ms: millis(ready),
        },
    ))
}

/// Resident memory of this process, server and clients together (Linux only).
fn memory() -> Option<Memory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse().ok())
    };
    Some(Memory {
        vm_rss_kib: kib("VmRSS:")?,
        vm_hwm_kib: kib("VmHWM:")?,
    })
}

/// Times `count` inclusion proofs of random leaves and `count` consistency proofs between random
/// sizes, one call at a time, in the tree of the latest checkpoint.
async fn time_proofs(
    auditor: &Identity,
    server: &mut Running,
    count: usize,
) -> anyhow::Result<Proofs> {
    let mut client = AuditServiceClient::new(server.connect(auditor).await?);
    let tree_size = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map_err(rpc_error)
        .context("cannot get the audit checkpoint")?
        .into_inner()
        .tree_size;
    if tree_size == 0 {
        bail!("the audit log is empty: nothing to prove");
    }
    let below = |n: u64| OsRng.next_u64() % n;

    let mut inclusion = Vec::with_capacity(count);
    for _ in 0..count {
        let request = GetInclusionProofRequest {
            leaf_index: below(tree_size),
            tree_size,
        };
        let started = Instant::now();
        client
            .get_inclusion_proof(request)
            .await
            .map_err(rpc_error)
            .context("an inclusion proof failed")?;
        inclusion.push(started.elapsed());
    }
    let mut consistency = Vec::with_capacity(count);
    for _ in 0..count {
        let (a, b) = (1 + below(tree_size), 1 + below(tree_size));
        let request = GetConsistencyProofRequest {
            from_size: a.min(b),
            to_size: a.max(b),
        };
        let started = Instant::now();
        client
            .get_consistency_proof(request)
            .await
            .map_err(rpc_error)
            .context("a consistency proof failed")?;
        consistency.push(started.elapsed());
    }
    Ok(Proofs {
        count,
        tree_size,
        inclusion: Percentiles::of(&mut inclusion),
        consistency: Percentiles::of(&mut consistency),
        computed: None,
    })
}

/// The run's data keyring, for opening the store outside the server.
fn open_data_keys(path: &Path) -> anyhow::Result<Arc<DataKeys>> {
    Ok(Arc::new(DataKeys::load(path)?))
}

/// Times `count` inclusion and consistency proofs computed straight from the stored hashes of a
/// log of `tree_size` entries, without RPC or the audit entry the service records for each
/// query: the cost of the proof itself. The server must be stopped.
async fn time_computed_proofs(
    data_dir: &Path,
    data_key: &Path,
    tree_size: u64,
    count: usize,
) -> anyhow::Result<ComputedProofs> {
    let store = Store::open(data_dir, open_data_keys(data_key)?)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let below = |n: u64| OsRng.next_u64() % n;
    let hashes = store.audit_hashes();
    let mut inclusion = Vec::with_capacity(count);
    let mut consistency = Vec::with_capacity(count);
    for _ in 0..count {
        let leaf = below(tree_size);
        let started = Instant::now();
        merkle::inclusion_proof(&hashes, leaf, tree_size)?;
        inclusion.push(started.elapsed());
        let (a, b) = (1 + below(tree_size), 1 + below(tree_size));
        let started = Instant::now();
        merkle::consistency_proof(&hashes, a.min(b), a.max(b))?;
        consistency.push(started.elapsed());
    }
    store.close().await;
    Ok(ComputedProofs {
        inclusion: Percentiles::of(&mut inclusion),
        consistency: Percentiles::of(&mut consistency),
    })
}

// === The report ===

/// Everything a run measured; a section is absent when it was not measured.
#[derive(Debug, Default, Serialize)]
struct Report {
    payload_bytes: usize,
    senders: usize,
    readers: usize,
    preload: Option<Preload>,
    bound: Option<Bound>,
    durable: Option<Durable>,
    /// Durable msg/s over bound msg/s.
    durable_to_bound: Option<f64>,
    /// One `fdatasync` of a 4 KiB overwrite in the data directory.
    fdatasync: Option<Percentiles>,
    restart: Option<Restart>,
    /// Of this process: the server and every client.
    memory: Option<Memory>,
    proofs: Option<Proofs>,
}

#[derive(Debug, Serialize)]
struct Preload {
    messages: u64,
    seconds: f64,
    per_second: f64,
}

#[derive(Debug, Serialize)]
struct Bound {
    messages: u64,
    seconds: f64,
    per_second: f64,
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Durable {
    messages: u64,
    seconds: f64,
    per_second: f64,
    send_to_ack: Percentiles,
    send_to_delivery: Option<Percentiles>,
    /// Store operations per group commit, every operation counted (sends, deliveries,
    /// acknowledgements).
    mean_group_commit: f64,
    /// Time to make one group durable: its journal write and `fdatasync`, with sled applying it
    /// meanwhile.
    mean_flush_ms: f64,
}

#[derive(Debug, Serialize)]
struct Restart {
    /// Messages in the store.
    stored: u64,
    /// From the shutdown request until `server::run` returned.
    stop_ms: f64,
    /// From starting the server until the first call was answered.
    ready_ms: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    vm_rss_kib: u64,
    vm_hwm_kib: u64,
}

#[derive(Debug, Serialize)]
struct Proofs {
    count: usize,
    tree_size: u64,
    /// As an auditor over gRPC; each answer waits for its own durable audit entry.
    inclusion: Percentiles,
    consistency: Percentiles,
    computed: Option<ComputedProofs>,
}

/// Proofs computed in-process from the stored hashes.
#[derive(Debug, Serialize)]
struct ComputedProofs {
    inclusion: Percentiles,
    consistency: Percentiles,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted in place); zero when there are none.
    fn of(samples: &mut [Duration]) -> Percentiles {
        samples.sort_unstable();
        let at = |p: f64| {
            let rank = (p * samples.len() as f64).ceil() as usize;
            samples
                .get(rank.saturating_sub(1))
                .map_or(0.0, |d| millis(*d))
        };
        Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

impl Report {
    /// Prints the report as aligned text, one figure per line.
    fn print(&self) {
        let line = |label: &str, value: String| println!("{:<36} {value}", format!("{label}:"));
        line("payload size", format!("{} B", self.payload_bytes));
        line("senders", self.senders.to_string());
        line("readers", self.readers.to_string());
        if let Some(preload) = &self.preload {
            line(
                "preloaded",
                format!(
                    "{} messages in {:.2} s ({:.0} msg/s)",
                    preload.messages, preload.seconds, preload.per_second
                ),
            );
        }
        if let Some(durable) = &self.durable {
            line("messages", durable.messages.to_string());
            line("duration", format!("{:.2} s", durable.seconds));
            line("durable rate", format!("{:.0} msg/s", durable.per_second));
            let ack = durable.send_to_ack;
            line("send->ack p50", format!("{:.2} ms", ack.p50_ms));
            line("send->ack p99", format!("{:.2} ms", ack.p99_ms));
            line("send->ack p99.9", format!("{:.2} ms", ack.p999_ms));
            if let Some(delivery) = durable.send_to_delivery {
                line("send->delivery p50", format!("{:.2} ms", delivery.p50_ms));
                line("send->delivery p99", format!("{:.2} ms", delivery.p99_ms));
            }
            line(
                "group commit size (mean)",
                format!("{:.1} operations", durable.mean_group_commit),
            );
            line(
                "group commit flush (mean)",
                format!("{:.2} ms", durable.mean_flush_ms),
            );
        }
        if let Some(bound) = &self.bound {
            line(
                "bound rate (bare tonic echo)",
                format!(
                    "{:.0} msg/s ({} echoes in {:.2} s)",
                    bound.per_second, bound.messages, bound.seconds
                ),
            );
            line("bound RTT p50", format!("{:.2} ms", bound.rtt_p50_ms));
            line("bound RTT p99", format!("{:.2} ms", bound.rtt_p99_ms));
        }
        if let Some(ratio) = self.durable_to_bound {
            line("durable / bound", format!("{ratio:.3}"));
        }
        if let Some(sync) = &self.fdatasync {
            line(
                "fdatasync p50 (data dir)",
                format!("{:.3} ms (p99 {:.3} ms)", sync.p50_ms, sync.p99_ms),
            );
            if let (Some(durable), Some(bound)) = (&self.durable, &self.bound) {
                let target = 2.0 * bound.rtt_p50_ms + sync.p50_ms;
                line(
                    "2 x bound RTT p50 + fdatasync",
                    format!(
                        "{target:.3} ms; send->ack p50 is {:.2}x that",
                        durable.send_to_ack.p50_ms / target
                    ),
                );
            }
        }
        line("summary", self.summary());
        if let Some(restart) = &self.restart {
            line(
                &format!("restart with {} stored", restart.stored),
                format!(
                    "ready in {:.1} ms (stop took {:.1} ms)",
                    restart.ready_ms, restart.stop_ms
                ),
            );
        }
        if let Some(memory) = &self.memory {
            let mib = |kib: u64| kib as f64 / 1024.0;
            line(
                "VmRSS (server and clients)",
                format!("{:.1} MiB", mib(memory.vm_rss_kib)),
            );
            line(
                "VmHWM (server and clients)",
                format!("{:.1} MiB", mib(memory.vm_hwm_kib)),
            );
        }
        if let Some(proofs) = &self.proofs {
            let at = format!("({} each, tree size {})", proofs.count, proofs.tree_size);
            let (inclusion, consistency) = (proofs.inclusion, proofs.consistency);
            line(
                "inclusion proof p50",
                format!("{:.2} ms {at}", inclusion.p50_ms),
            );
            line("inclusion proof p99", format!("{:.2} ms", inclusion.p99_ms));
            line(
                "consistency proof p50",
                format!("{:.2} ms", consistency.p50_ms),
            );
            line(
                "consistency proof p99",
                format!("{:.2} ms", consistency.p99_ms),
            );
            if let Some(computed) = &proofs.computed {
                let (inclusion, consistency) = (computed.inclusion, computed.consistency);
                line(
                    "inclusion proof computed p50/p99",
                    format!("{:.3} / {:.3} ms", inclusion.p50_ms, inclusion.p99_ms),
                );
                line(
                    "consistency proof computed p50/p99",
                    format!("{:.3} / {:.3} ms", consistency.p50_ms, consistency.p99_ms),
                );
            }
        }
    }

    /// The run in one line.
    fn summary(&self) -> String {
        let setup = format!(
            "{} B texts, {} senders, {} readers",
            self.payload_bytes, self.senders, self.readers
        );
        match (&self.durable, &self.bound, self.durable_to_bound) {
            (Some(durable), Some(bound), Some(ratio)) => format!(
                "{:.0} durable msg/s = {:.1}% of the bare-tonic bound ({:.0} msg/s); send->ack p99 {:.2} ms; {setup}",
                durable.per_second,
                ratio * 100.0,
                bound.per_second,
                durable.send_to_ack.p99_ms
            ),
            (Some(durable), _, _) => format!(
                "{:.0} durable msg/s (bound not measured); send->ack p99 {:.2} ms; {setup}",
                durable.per_second, durable.send_to_ack.p99_ms
            ),
            (None, Some(bound), _) => format!(
                "bare-tonic bound {:.0} msg/s, RTT p50 {:.2} ms; {setup}",
                bound.per_second, bound.rtt_p50_ms
            ),
            (None, None, _) => format!("nothing measured; {setup}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_instant_survives_the_text() {
        let sent = Duration::from_nanos(1_234_567_890);
        let text = stamped_text(sent, 1024);
        assert_eq!(text.len(), 1024);
        let message = Message {
            content: Some(message::Content::Text(text)),
            ..Default::default()
        };
        assert_eq!(sent_at(&message), Some(sent));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.p50_ms, p.p99_ms, p.p999_ms), (500.0, 990.0, 999.0));
        assert_eq!(Percentiles::of(&mut []).p50_ms, 0.0);
    }

    #[test]
    fn a_counted_budget_issues_exactly_its_tickets() {
        let budget = Budget::new(3, None);
        let tickets: Vec<u64> = std::iter::from_fn(|| budget.next()).collect();
        assert_eq!(tickets, [0, 1, 2]);
        assert_eq!(budget.next(), None);
    }
}
