//! `puente match`: hit/no-hit matching from an agency's side. Identifiers are made canonical and
//! blinded here, with the matching key the agencies share; only the blinded values reach the
//! exchange, and the clear values typed or listed stay on this machine.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

mod files;

use super::{rpc_error, ConnectArgs};
use crate::matching::identifiers::{kind_label, MatchingKey};
use crate::matching::service::{MAX_PUBLISH_BATCH, MAX_QUERY_BATCH};
use crate::pb::v1::match_service_client::MatchServiceClient;
use crate::pb::v1::{
    IdentifierKind, PublishIdentifiersRequest, PublishedIdentifier, QueryRequest, QueryResult,
    WithdrawIdentifiersRequest,
};
use files::{entry, load_key, read_file, Entry};

/// Longest publisher's reference, in characters (the exchange's limit, checked here so that the
/// error names the line).
const MAX_REFERENCE_CHARS: usize = 128;
/// Most invalid lines listed in an error; the rest are counted.
const MAX_LISTED_ERRORS: usize = 20;

/// Flags of `puente match`.
#[derive(Debug, Args)]
#[command(after_long_help = MATCH_HELP)]
pub struct MatchArgs {
    #[command(subcommand)]
    command: MatchCommand,
}

/// The end of `puente match --help`: the file format and the kinds.
const MATCH_HELP: &str = "\
Identifier files (--file) are CSV, one identifier per line: kind,value[,reference]
A first line starting with `kind` is a header; lines starting with # are comments. Quote a
value that contains a comma (\"Pérez, José|1980-04-30\"). Kinds and values:

  firearm        MAKE|SERIAL               Glock|BXR-4471
  iban           IBAN                      DE89 3704 0044 0532 0130 00
  bank-account   BIC|ACCOUNT               BCOLCOBM|123-456789-01
  passport       COUNTRY|NUMBER            ES|PAA123456
  person         FULL NAME|YYYY-MM-DD      José Pérez|1980-04-30
  phone          +COUNTRY NUMBER           +57 300 123 4567
  crypto-wallet  CHAIN|ADDRESS             ETH|0x52908400098527886E0F7030069857D2E4169EE7

Values are made canonical before blinding (case, spaces, separators and diacritics do not
matter), so agencies that write an identifier differently still match. The reference (up to
128 characters) is yours: the exchange shows it only to you, in hit notifications.

Example:
  puente match keygen --out matching.key
  puente match publish --profile es-cnp --matching-key matching.key --file ids.csv
  puente match query --profile co-dijin --matching-key matching.key \\
      --kind firearm --value 'glock|bxr-4471' --case CO-2026-17 --legal-basis 'Art. 7 ...'";

/// The subcommands of `puente match`.
#[derive(Debug, Subcommand)]
enum MatchCommand {
    /// Create a new matching key (mode 0600); an existing file is never overwritten.
    ///
    /// Every agency must blind with the same key: hand it to them out of band, never through
    /// the exchange, and never to the exchange's operators.
    Keygen(KeygenArgs),
    /// Publish identifiers you hold, blinded, so that other agencies' queries can find you.
    Publish(PublishArgs),
    /// Withdraw identifiers you published.
    Withdraw(WithdrawArgs),
    /// Ask which agencies hold identifiers (counts against your query quota).
    Query(QueryArgs),
}

/// Kind of an identifier, as typed on the command line and in identifier files.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Firearm: MAKE|SERIAL.
    Firearm,
    /// IBAN.
    Iban,
    /// Account without IBAN: BIC|ACCOUNT.
    BankAccount,
    /// Passport: COUNTRY|NUMBER (ISO 3166-1 alpha-2 country).
    Passport,
    /// Person: FULL NAME|YYYY-MM-DD (date of birth).
    Person,
    /// Phone number with its country code (+ or 00).
    Phone,
    /// Crypto-asset wallet: CHAIN|ADDRESS.
    CryptoWallet,
}

impl From<KindArg> for IdentifierKind {
    fn from(kind: KindArg) -> IdentifierKind {
        match kind {
            KindArg::Firearm => IdentifierKind::Firearm,
            KindArg::Iban => IdentifierKind::Iban,
            KindArg::BankAccount => IdentifierKind::BankAccount,
            KindArg::Passport => IdentifierKind::Passport,
            KindArg::Person => IdentifierKind::Person,
            KindArg::Phone => IdentifierKind::Phone,
            KindArg::CryptoWallet => IdentifierKind::CryptoWallet,
        }
    }
}

/// Flags of `puente match keygen`.
#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where to write the key.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Epoch of the key: 1 for the first, one more at each rotation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    epoch: u32,
}

/// The matching key flag. Not `--key`, which names the client certificate's key.
#[derive(Debug, Args)]
struct KeyArg {
    /// The matching key file (from `puente match keygen`, shared by the agencies).
    #[arg(long, value_name = "FILE", env = "PUENTE_MATCHING_KEY")]
    matching_key: PathBuf,
}

/// Flags of `puente match publish`.
#[derive(Debug, Args)]
struct PublishArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    key: KeyArg,
    /// CSV file of identifiers, kind,value[,reference] (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Your case reference for these identifiers.
    #[arg(long)]
    case_reference: Option<String>,
    /// The message the identifiers come from.
    #[arg(long)]
    source_message_id: Option<String>,
}

/// Flags of `puente match withdraw`.
#[derive(Debug, Args)]
struct WithdrawArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    key: KeyArg,
    /// CSV file of identifiers, kind,value[,reference] (`-` for standard input); references
    /// are ignored.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
}

/// Flags of `puente match query`.
#[derive(Debug, Args)]
struct QueryArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    key: KeyArg,
    /// Kind of the one identifier to ask about (with --value).
    #[arg(
        long,
        value_enum,
        requires = "value",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    kind: Option<KindArg>,
    /// The identifier to ask about, written as for its kind (see `puente match --help`).
    #[arg(long, requires = "kind")]
    value: Option<String>,
    /// CSV file of identifiers to ask about, kind,value[,reference] (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Your case reference (required: purpose limitation). The holders are told it.
    #[arg(long = "case")]
    case_reference: String,
    /// The legal basis of the query, e.g. "Art. 7 Decision 2008/615/JHA". The holders are told
    /// it.
    #[arg(long)]
    legal_basis: String,
    /// Print the results as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Runs `puente match`.
///
/// # Errors
/// Unreadable or invalid files and keys, or the exchange's refusal.
pub(super) async fn run(args: MatchArgs) -> anyhow::Result<()> {
    match args.command {
        MatchCommand::Keygen(args) => keygen(args),
        MatchCommand::Publish(args) => publish(args).await,
        MatchCommand::Withdraw(args) => withdraw(args).await,
        MatchCommand::Query(args) => query(args).await,
    }
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let key = MatchingKey::generate(args.epoch)?;
    key.save(&args.out)?;
    println!(
        "wrote matching key epoch {} to {} (mode 0600)",
        key.epoch(),
        args.out.display()
    );
    println!(
        "Hand it to every participating agency out of band (not through the exchange), and \
         never to the exchange's operators: whoever holds it can test guesses against the \
         blinded identifiers."
    );
    Ok(())
}

async fn client(connect: &ConnectArgs) -> anyhow::Result<MatchServiceClient<Channel>> {
    Ok(MatchServiceClient::new(connect.connect().await?))
}

// === Commands ===

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let key = load_key(&args.key)?;
    let entries = read_file(&args.file, &key)?;
    let mut client = client(&args.connect).await?;
    let (mut added, mut updated) = (0, 0);
    let batches = entries.chunks(MAX_PUBLISH_BATCH);
    let count = batches.len();
    for (i, batch) in batches.enumerate() {
        let request = PublishIdentifiersRequest {
            key_epoch: key.epoch(),
            identifiers: batch
                .iter()
                .map(|e| PublishedIdentifier {
                    identifier: Some(e.blinded()),
                    reference: e.reference.clone(),
                })
                .collect(),
            source_message_id: args.source_message_id.clone().unwrap_or_default(),
            case_reference: args.case_reference.clone().unwrap_or_default(),
        };
        let response = client
            .publish_identifiers(request)
            .await
            .map_err(|status| partial(rpc_error(status), i, count, "publish"))?
            .into_inner();
        added += response.added;
        updated += response.updated;
    }
    println!(
        "published {} identifier(s) under key epoch {}: {added} new, {updated} already published (reference updated)",
        entries.len(),
        key.epoch()
    );
    Ok(())
}

async fn withdraw(args: WithdrawArgs) -> anyhow::Result<()> {
    let key = load_key(&args.key)?;
    let entries = read_file(&args.file, &key)?;
    let mut client = client(&args.connect).await?;
    let mut withdrawn = 0;
    let batches = entries.chunks(MAX_PUBLISH_BATCH);
    let count = batches.len();
    for (i, batch) in batches.enumerate() {
        let request = WithdrawIdentifiersRequest {
            key_epoch: key.epoch(),
            identifiers: batch.iter().map(Entry::blinded).collect(),
        };
        let response = client
            .withdraw_identifiers(request)
            .await
            .map_err(|status| partial(rpc_error(status), i, count, "withdraw"))?
            .into_inner();
        withdrawn += response.withdrawn;
    }
    println!(
        "withdrew {withdrawn} of {} identifier(s) under key epoch {} (ones you had not published are ignored)",
        entries.len(),
        key.epoch()
    );
    Ok(())
}

/// An error of batch `i` of `count`: when earlier batches went through, says so, and that the
/// command can be repeated (both calls are idempotent).
fn partial(error: anyhow::Error, i: usize, count: usize, verb: &str) -> anyhow::Error {
    if i == 0 {
        error
    } else {
        anyhow::anyhow!(
            "{error}\n(requests 1 to {i} of {count} went through; the command is safe to repeat to {verb} the rest)"
        )
    }
}

/// One line of `puente match query --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultJson<'a> {
    /// Line of the file; absent for --kind/--value.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    kind: &'static str,
    value: &'a str,
    canonical: &'a str,
    hit: bool,
    holders: Vec<HolderJson<'a>>,
}

/// A holder in `puente match query --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HolderJson<'a> {
    agency_id: &'a str,
    match_reference: &'a str,
}

/// The document `puente match query --json` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueryJson<'a> {
    results: Vec<ResultJson<'a>>,
    remaining_quota: Option<u64>,
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    if args.case_reference.trim().is_empty() {
        bail!("--case must not be empty: a query needs the case it serves");
    }
    if args.legal_basis.trim().is_empty() {
        bail!("--legal-basis must not be empty");
    }
    let key = load_key(&args.key)?;
    let entries = match (&args.file, args.kind, &args.value) {
        (Some(path), _, _) => read_file(path, &key)?,
        (None, Some(kind), Some(value)) => {
            vec![entry(&key, 0, kind, value).context("--value")?]
        }
        _ => bail!("give --kind and --value, or --file"),
    };
    let mut client = client(&args.connect).await?;
    let mut results: Vec<QueryResult> = Vec::with_capacity(entries.len());
    let mut remaining_quota = None;
    let mut failure = None;
    for batch in entries.chunks(MAX_QUERY_BATCH) {
        let request = QueryRequest {
            key_epoch: key.epoch(),
            identifiers: batch.iter().map(Entry::blinded).collect(),
            case_reference: args.case_reference.clone(),
            legal_basis: args.legal_basis.clone(),
        };
        match client.query(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if response.results.len() != batch.len() {
                    bail!(
                        "the exchange answered {} results for {} identifiers",
                        response.results.len(),
                        batch.len()
                    );
                }
                results.extend(response.results);
                remaining_quota = Some(response.remaining_quota);
            }
            // Answers already received are printed before the error: they counted against the
            // quota, and asking again would count again.
            Err(status) => {
                failure = Some(rpc_error(status));
                break;
            }
        }
    }
    let answered = &entries[..results.len()];
    if args.json {
        print_json(answered, &results, remaining_quota)?;
    } else if !results.is_empty() {
        print_table(answered, &results, remaining_quota);
    }
    match failure {
        None => Ok(()),
        Some(error) if results.is_empty() => Err(error),
        Some(error) => Err(error.context(format!(
            "answered {} of {} identifiers",
            results.len(),
            entries.len()
        ))),
    }
}

fn print_table(entries: &[Entry], results: &[QueryResult], remaining_quota: Option<u64>) {
    let width = entries
        .iter()
        .map(|e| e.value.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(5, 48);
    println!("{:<14} {:<width$} {:<7} HOLDERS", "KIND", "VALUE", "RESULT");
    let mut hits = 0;
    for (entry, result) in entries.iter().zip(results) {
        let holders: Vec<String> = result
            .holders
            .iter()
            .map(|h| {
                format!(
                    "{} (match reference {})",
                    crate::text::line(&h.agency_id),
                    crate::text::line(&h.match_reference)
                )
            })
            .collect();
        hits += usize::from(result.hit);
        let row = format!(
            "{:<14} {:<width$} {:<7} {}",
            kind_label(entry.kind),
            entry.value,
            if result.hit { "HIT" } else { "no hit" },
            holders.join("; ")
        );
        println!("{}", row.trim_end());
    }
    println!("{hits} hit(s) for {} identifier(s)", results.len());
    if let Some(remaining) = remaining_quota {
        println!("remaining query quota: {remaining} identifier(s)");
    }
    if hits > 0 {
        println!("To follow up, send the holder a request quoting the match reference (puente send --to AGENCY ...).");
    }
}

fn print_json(
    entries: &[Entry],
    results: &[QueryResult],
    remaining_quota: Option<u64>,
) -> anyhow::Result<()> {
    let by_entry = entries
        .iter()
        .zip(results)
        .map(|(entry, result)| ResultJson {
            line: (entry.line > 0).then_some(entry.line),
            kind: kind_label(entry.kind),
            value: &entry.value,
            canonical: &entry.canonical,
            hit: result.hit,
            holders: result
                .holders
                .iter()
                .map(|h| HolderJson {
                    agency_id: &h.agency_id,
                    match_reference: &h.match_reference,
                })
                .collect(),
        });
    let document = QueryJson {
        results: by_entry.collect(),
        remaining_quota,
    };
    // The holders come from the exchange: safe for a terminal, same JSON.
    println!(
        "{}",
        crate::text::json(&serde_json::to_string_pretty(&document)?)
    );
    Ok(())
}
