//! `puente bench`: the durable send rate of a real server started in this process, set against
//! the bare-tonic bound measured in the same run; then a restart, the process's memory, and the
//! latency of audit proofs.
//!
//! Everything runs on a temporary directory with a PKI generated for the run. Every client has
//! its own mutual-TLS connection, made as the CLI makes it ([`crate::client::connect`]).
//! Senders work in a closed loop: each send waits for its answer, which the server gives only
//! once the message is on stable storage. Readers follow their inbox streams and acknowledge
//! every message. A message's text starts with its send instant (`t=<nanoseconds since the
//! bench started> `), so that the reader, in the same process, can tell its send→delivery
//! latency.
//!
//! The bound is an echo service ([`Echo`]) served by [`server::run_echo`](crate::server::run_echo)
//! with the same TLS configuration, accept loop and tonic settings, called by as many clients
//! with payloads of the same size.
//!
//! [`run`] takes the [`Options`] (the flags of `puente bench`) and returns the [`Report`]; the
//! CLI prints it.

mod after;
mod echo;
mod error;
mod report;
mod run;
mod servers;
mod setup;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) use echo::Echo;
pub(crate) use error::BenchError;
pub(crate) use report::Report;

use after::{memory, restart, time_computed_proofs, time_proofs};
use run::{measure_bound, measure_durable, measure_fdatasync, prepare};
use servers::start_exchange;
use setup::{Cast, Pki};

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
/// Smallest [`Options::size`]: room for the send instant at the start of the text.
const MIN_SIZE: usize = 32;
/// How long a failed connection waits to learn whether the server stopped.
const SERVER_EXIT_WAIT: Duration = Duration::from_secs(1);
/// How long a start waits for sled to release the lock of a store closed in this process.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(5);
/// Pause between starts refused for that lock.
const STORE_LOCK_RETRY: Duration = Duration::from_millis(10);
/// How long a reader waits for a message it is owed once every sender is done.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a bench run measures: the flags of `puente bench`, one field each (the field's name is
/// the flag's, which errors name).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Sending connections. Each sends one message at a time and waits for its durable
    /// acceptance before the next; the bound uses as many echo clients.
    pub senders: usize,
    /// Reading connections, one agency each, that follow their inbox stream and acknowledge
    /// every message; messages are addressed to them round-robin. 0 for none (messages then go
    /// to an agency nobody reads).
    pub readers: usize,
    /// Size of each message's text in bytes (the send instant, then padding), and of each echo
    /// payload.
    pub size: usize,
    /// Messages to send in the measured run, shared among the senders (as many echoes for the
    /// bound).
    pub messages: u64,
    /// Send for this many seconds instead of a number of messages (the bound runs as long).
    pub duration: Option<u64>,
    /// Messages to store before the measured run, committed by the exchange's own send handler
    /// with no network in between, as fast as the store takes them.
    pub preload: u64,
    /// Inclusion proofs, and as many consistency proofs, to time as an auditor after the run
    /// (random leaves and sizes); 0 for none.
    pub proofs: usize,
    /// Measure only the bare-tonic bound.
    pub bound_only: bool,
    /// Do not measure the bare-tonic bound.
    pub skip_bound: bool,
    /// Put the store here (to measure another disk) instead of in the temporary directory. It
    /// must be new or empty, and is kept afterwards.
    pub data_dir: Option<PathBuf>,
}

/// Runs the benchmark and returns its report. `progress` is told each step as it starts
/// (`measuring the bare-tonic bound`, ...), for the person waiting.
///
/// # Errors
/// Invalid options, a directory that cannot be written, a server that fails to start, or a call
/// that fails during the run.
pub(crate) async fn run(options: &Options, progress: fn(&str)) -> Result<Report, BenchError> {
    options.check()?;
    let work = tempfile::Builder::new()
        .prefix("puente-bench-")
        .tempdir()
        .map_err(|source| BenchError::Io {
            what: "cannot create a temporary directory (set TMPDIR to a writable directory)".into(),
            source,
        })?;
    let data_dir = match &options.data_dir {
        Some(dir) => {
            check_fresh(dir)?;
            dir.clone()
        }
        None => work.path().join("data"),
    };
    let base = Instant::now();
    let pki = Pki::generate(work.path().join("tls"))?;
    let readers = if options.bound_only {
        0
    } else {
        options.readers
    };
    let cast = Cast::issue(&pki, options.senders, readers)?;
    let mut report = Report {
        payload_bytes: options.size,
        senders: options.senders,
        readers,
        ..Report::default()
    };

    if !options.skip_bound {
        progress("measuring the bare-tonic bound");
        let echo_dir = work.path().join("echo");
        std::fs::create_dir(&echo_dir).map_err(|source| BenchError::Io {
            what: format!("cannot create {}", echo_dir.display()),
            source,
        })?;
        report.bound = Some(measure_bound(options, &cast, pki.config(echo_dir)).await?);
    }
    if options.bound_only {
        report.memory = memory();
    } else {
        progress("registering agencies");
        report.preload = prepare(options, &cast, &pki, &data_dir, progress).await?;
        report.fdatasync = Some(measure_fdatasync(&data_dir)?);
        let config = pki.config(data_dir.clone());
        let (mut server, _) = start_exchange(&config, &cast.sender(0).identity).await?;
        progress("measuring durable sends");
        let durable = measure_durable(options, &cast, &mut server, base).await?;
        let stored = options.preload + durable.messages;
        report.durable_to_bound = report
            .bound
            .as_ref()
            .map(|bound| durable.per_second / bound.per_second);
        report.durable = Some(durable);

        progress("restarting the server");
        let (mut server, restart) = restart(server, &config, &cast, stored).await?;
        report.restart = Some(restart);
        report.memory = memory();
        if options.proofs > 0 {
            progress("timing audit proofs");
            report.proofs = Some(time_proofs(&cast.auditor, &mut server, options.proofs).await?);
        }
        server.stop().await?;
        if let Some(proofs) = &mut report.proofs {
            proofs.computed = Some(
                time_computed_proofs(&data_dir, &pki.data_key, proofs.tree_size, options.proofs)
                    .await?,
            );
        }
    }

    work.close().map_err(|source| BenchError::Io {
        what: "cannot remove the bench's temporary directory".into(),
        source,
    })?;
    Ok(report)
}

impl Options {
    /// Refuses options no run can measure.
    fn check(&self) -> Result<(), BenchError> {
        let invalid = |option, requirement: &str| {
            Err(BenchError::Option {
                option,
                requirement: requirement.to_string(),
            })
        };
        if self.senders == 0 {
            return invalid("senders", "at least 1");
        }
        if !(MIN_SIZE..=DEFAULT_MAX_MESSAGE_BYTES).contains(&self.size) {
            return invalid(
                "size",
                &format!("between {MIN_SIZE} and {DEFAULT_MAX_MESSAGE_BYTES} bytes"),
            );
        }
        match self.duration {
            Some(0) => invalid("duration", "at least 1 second"),
            None if self.messages == 0 => invalid("messages", "at least 1"),
            _ => Ok(()),
        }
    }
}

/// Refuses a `data_dir` that holds anything: the bench's counts assume a fresh store.
fn check_fresh(dir: &Path) -> Result<(), BenchError> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => {
            return Err(BenchError::Io {
                what: format!("cannot read --data-dir {}", dir.display()),
                source,
            })
        }
    };
    if !empty {
        return Err(BenchError::DataDirNotEmpty {
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            senders: 32,
            readers: 32,
            size: 1024,
            messages: 20_000,
            duration: None,
            preload: 0,
            proofs: 1000,
            bound_only: false,
            skip_bound: false,
            data_dir: None,
        }
    }

    /// Options no run can measure are refused before anything starts, naming the option.
    #[test]
    fn options_no_run_can_measure_are_refused_by_name() {
        type Change = fn(&mut Options);
        let cases: [(&str, Change); 5] = [
            ("senders", |o| o.senders = 0),
            ("size", |o| o.size = MIN_SIZE - 1),
            ("size", |o| o.size = DEFAULT_MAX_MESSAGE_BYTES + 1),
            ("duration", |o| o.duration = Some(0)),
            ("messages", |o| o.messages = 0),
        ];
        for (name, change) in cases {
            let mut invalid = options();
            change(&mut invalid);
            match invalid.check() {
                Err(BenchError::Option { option, .. }) => assert_eq!(option, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        let mut timed = options();
        (timed.messages, timed.duration) = (0, Some(1));
        assert!(timed.check().is_ok(), "a duration replaces the count");
        assert!(options().check().is_ok());
    }
}
