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

mod after;
mod report;
mod run;
mod servers;
mod setup;

use after::*;
use report::*;
use run::*;
use servers::*;
use setup::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::config::DEFAULT_MAX_MESSAGE_BYTES;
use crate::store::MAX_GROUP_COMMIT;

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
    pub(super) fn check(&self) -> anyhow::Result<()> {
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
pub(super) fn check_fresh(dir: &Path) -> anyhow::Result<()> {
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
