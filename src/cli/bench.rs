//! `puente bench`: its flags, turned into [`bench::Options`](crate::bench::Options); the run is
//! the library's [`bench::run`](crate::bench::run), its report printed here as text or JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::bench::{self, BenchError, Options};
use crate::cli::rpc_error;

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
pub(super) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let options = Options {
        senders: args.senders,
        readers: args.readers,
        size: args.size,
        messages: args.messages,
        duration: args.duration,
        preload: args.preload,
        proofs: args.proofs,
        bound_only: args.bound_only,
        skip_bound: args.skip_bound,
        data_dir: args.data_dir,
    };
    let report = bench::run(&options, |step| eprintln!("bench: {step}"))
        .await
        .map_err(for_terminal)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        print!("{report}");
    }
    Ok(())
}

/// A failed run, worded for the terminal: what the exchange answered to a call is told as the
/// other client commands tell it.
fn for_terminal(error: BenchError) -> anyhow::Error {
    match error {
        BenchError::Call { what, status } => rpc_error(status).context(what),
        BenchError::Restart(cause) => for_terminal(*cause).context("the server failed to restart"),
        other => other.into(),
    }
}
