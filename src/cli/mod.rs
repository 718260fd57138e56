//! The `puente` command line: `serve` runs the exchange; `send`, `inbox`, `ack`, `status`, `get`
//! and `agencies` are thin agency clients over the generated tonic client, as are `forward`,
//! `consent`, `retract`, `correct` and `thread` for the handling rules; `admin` runs the
//! certificate authority and manages the agency directory; `audit` reviews, verifies, proves
//! and exports the audit log; `match` blinds identifiers locally and publishes, withdraws and
//! queries them for hit/no-hit matching; `config check` validates a server configuration;
//! `data-key` keeps the keyring that seals message bodies
//! at rest; `bench` measures the exchange's durable send rate
//! against the bare-tonic bound.

mod admin;
mod agency;
mod audit;
mod bench;
mod config;
mod connect;
mod data_key;
mod handling;
mod matching;
mod serve;

use clap::{Parser, Subcommand};

pub use connect::ConnectArgs;

use crate::telemetry::LogFormat;

/// Puente: a mutual-TLS exchange of intelligence between law-enforcement and
/// financial-intelligence agencies.
#[derive(Debug, Parser)]
#[command(
    name = "puente",
    // The commit comes from build.rs, so an operator can tell exactly which code is running.
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PUENTE_BUILD_COMMIT"), ")"),
    propagate_version = true
)]
pub struct Cli {
    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// collectors. `RUST_LOG` sets what is logged.
    #[arg(
        long,
        global = true,
        env = "PUENTE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Trace the server's gRPC calls (`serve`, and the server `bench` starts): export a span
    /// per call, with the handler's spans under it, to an OpenTelemetry collector over
    /// OTLP/gRPC, configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT,
    /// default http://localhost:4317). Needs a puente built with the `otel` cargo feature; one
    /// built without it refuses to start. PUENTE_OTEL takes 1/0, true/false, yes/no, on/off.
    #[arg(
        long,
        global = true,
        env = "PUENTE_OTEL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub otel: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the exchange server.
    Serve(serve::ServeArgs),
    /// Send a message to one or more agencies.
    Send(agency::SendArgs),
    /// Print your agency's inbox (backlog, then new messages with --follow).
    Inbox(agency::InboxArgs),
    /// Acknowledge a message you received (as received, or as read with --read).
    Ack(agency::AckArgs),
    /// Show each recipient's delivery state of a message you sent.
    Status(agency::MessageArgs),
    /// Print one message you sent or received.
    Get(agency::GetArgs),
    /// List the agencies of the directory.
    Agencies(agency::AgenciesArgs),
    /// Export a message you sent or received, as a STIX 2.1 bundle with TLP 2.0 markings.
    Export(agency::ExportArgs),
    /// Pass a message you received on to other agencies (H2/H3 only with the originator's
    /// consent).
    Forward(handling::ForwardArgs),
    /// Ask for, grant or deny consent to forward an H2 or H3 message.
    Consent(handling::ConsentArgs),
    /// Retract a message you sent: every holder gets a notice to acknowledge.
    Retract(handling::RetractArgs),
    /// Correct a message you sent: every holder gets the corrected text to acknowledge.
    Correct(handling::CorrectArgs),
    /// List a thread (a message, its root and every reply) or the messages of a case reference.
    Thread(handling::ThreadArgs),
    /// Administer the exchange: its certificate authority, revocation lists and agency directory.
    Admin(admin::AdminArgs),
    /// Review, verify, prove and export the audit log (auditors; agencies for the entries they
    /// are party to).
    Audit(audit::AuditArgs),
    /// Hit/no-hit matching: publish, withdraw and query identifiers, blinded on this machine
    /// with the matching key the agencies share.
    Match(matching::MatchArgs),
    /// Check a server configuration and the files it names; print the effective configuration.
    Config(config::ConfigArgs),
    /// Create or rotate the keyring of data keys that seal messages at rest.
    DataKey(data_key::DataKeyArgs),
    /// Measure the durable send rate of a server started in this process on a temporary
    /// directory, against the bare-tonic bound (an echo service behind the same TLS); then a
    /// restart, memory and audit-proof latencies.
    Bench(bench::BenchArgs),
}

impl Cli {
    /// The log filter when `RUST_LOG` is unset: `info`, but `warn` for `bench`, where the
    /// server's per-message info lines on the terminal would be measured with it.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Bench(_) => "warn",
            _ => "info",
        }
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command failed with, worded for the person at the terminal.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Send(args) => agency::send(args).await,
        Command::Inbox(args) => agency::inbox(args).await,
        Command::Ack(args) => agency::ack(args).await,
        Command::Status(args) => agency::status(args).await,
        Command::Get(args) => agency::get(args).await,
        Command::Agencies(args) => agency::agencies(args).await,
        Command::Export(args) => agency::export(args).await,
        Command::Forward(args) => handling::forward(args).await,
        Command::Consent(args) => handling::consent(args).await,
        Command::Retract(args) => handling::retract(args).await,
        Command::Correct(args) => handling::correct(args).await,
        Command::Thread(args) => handling::thread(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Match(args) => matching::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::DataKey(args) => data_key::run(args),
        Command::Config(args) => config::run(args),
    }
}

// === Output helpers shared by the client commands ===
//
// Every string the exchange sends is printed through `crate::text` (`line`, `lines`, `json`):
// another server version, or a compromised one, must not reach the reader's terminal either.

/// Turns a gRPC error into a message for the terminal.
pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    rpc_error_with_hint(status, None)
}

/// Turns a gRPC error into a message for the terminal, with `hint` on its own line. A refused
/// connection (revoked or unknown certificate) surfaces as a transport error: its cause is
/// printed, with a hint of what to check. An UNAVAILABLE the server itself sent (shutting
/// down, storage full) already says what to do and gets no connection hint.
pub(crate) fn rpc_error_with_hint(status: tonic::Status, hint: Option<&str>) -> anyhow::Error {
    let mut detail = status.message().to_string();
    let mut cause = std::error::Error::source(&status);
    let transport_failure = cause.is_some();
    while let Some(err) = cause {
        detail = format!("{detail}: {err}");
        cause = err.source();
    }
    // The server wrote it: shown, never obeyed, by the terminal.
    let detail = crate::text::line(&detail);
    let hint = hint.or(match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown if transport_failure => Some(
            "is the server running at that address, does it trust the CA of your certificate, and is the certificate unrevoked and unexpired?",
        ),
        _ => None,
    });
    match hint {
        Some(hint) => anyhow::anyhow!(
            "the exchange refused the request ({:?}): {detail}\n{hint}",
            status.code()
        ),
        None => anyhow::anyhow!(
            "the exchange refused the request ({:?}): {detail}",
            status.code()
        ),
    }
}

/// Prints agencies as the table of `puente agencies`.
pub(crate) fn print_agencies(agencies: &[crate::pb::v1::Agency]) {
    use crate::pb::v1::{AgencyStatus, Region};
    use crate::text::line;
    println!(
        "{:<16} {:<8} {:<14} {:<10} NAME",
        "AGENCY", "COUNTRY", "REGION", "STATUS"
    );
    for agency in agencies {
        let region = Region::try_from(agency.region).map_or("?", |r| r.as_str_name());
        let status = AgencyStatus::try_from(agency.status).map_or("?", |s| s.as_str_name());
        println!(
            "{:<16} {:<8} {:<14} {:<10} {}",
            line(&agency.agency_id),
            line(&agency.country),
            region.trim_start_matches("REGION_"),
            status.trim_start_matches("AGENCY_STATUS_"),
            line(&agency.name)
        );
    }
}

/// A time for people: RFC 3339, or `-` when absent.
pub(crate) fn format_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// The error of an idempotent call (send, forward). Only when the outcome is unknown is a retry
/// useful; the key makes it safe, so the message says how.
pub(crate) fn retryable_error(
    status: tonic::Status,
    what: &str,
    client_message_id: &str,
) -> anyhow::Error {
    let unsure = matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
    );
    let error = rpc_error(status);
    if unsure {
        anyhow::anyhow!("{error}\n(the {what} may or may not have been accepted: repeat the command with --client-message-id {client_message_id} to retry safely)")
    } else {
        error
    }
}

/// Prints what an accepted send or forward returned; `audit_index` is the receipt that
/// `puente audit prove --index N` proves.
pub(crate) fn print_acceptance(
    message_id: &str,
    accepted_at: Option<&prost_types::Timestamp>,
    audit_index: Option<u64>,
    client_message_id: &str,
) {
    println!("message_id: {}", crate::text::line(message_id));
    println!("accepted_at: {}", format_time(accepted_at));
    if let Some(index) = audit_index {
        println!("audit_index: {index}");
    }
    println!("client_message_id: {client_message_id}");
}

/// The text of a `--file` argument, or of standard input for `-`.
pub(crate) fn read_file_arg(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    if path == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read --file - from standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_is_text_unless_json_is_asked_for_before_or_after_the_command() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().log_format;
        assert_eq!(parse(&["puente", "serve"]), LogFormat::Text);
        assert_eq!(
            parse(&["puente", "serve", "--log-format", "json"]),
            LogFormat::Json
        );
        assert_eq!(
            parse(&["puente", "--log-format", "json", "serve"]),
            LogFormat::Json
        );
        assert!(Cli::try_parse_from(["puente", "--log-format", "xml", "serve"]).is_err());
    }

    #[test]
    fn otel_is_off_unless_asked_for_before_or_after_the_command() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().otel;
        assert!(!parse(&["puente", "serve"]));
        assert!(parse(&["puente", "--otel", "serve"]));
        assert!(parse(&["puente", "serve", "--otel"]));
    }
}
