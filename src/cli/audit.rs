//! `puente audit`: the exchange's verifiable audit log as an auditor uses it. `log` lists
//! entries; `verify` checks the latest signed checkpoint against a pinned key and against the
//! checkpoint verified last time (with `--full`, against every entry too; with `--export`,
//! offline); `prove` proves that one entry is in the log; `export` saves the log for offline
//! verification. Agencies may run them too, within their access rules.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::{rpc_error, rpc_error_with_hint, ConnectArgs};
use crate::audit::merkle::{self, Hash, MemoryTree};
use crate::audit::note::{Checkpoint, NoteError, NoteVerifier};
use crate::pb::v1::audit_service_client::AuditServiceClient;
use crate::pb::v1::{
    AuditAction, AuditEvent, DeliveryState, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, GetLogInfoRequest, GetLogInfoResponse, HandlingCode,
    ListAuditEntriesRequest, ListAuditEntriesResponse, Topic,
};

/// Default state file of `puente audit verify`: the pinned key and the last verified checkpoint.
const DEFAULT_STATE: &str = "puente-audit-state.json";
/// Long runs report their progress on stderr every this many entries.
const PROGRESS_EVERY: u64 = 10_000;

/// Flags of `puente audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

/// The subcommands of `puente audit`.
#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List audit entries, oldest first, as a table or (with --json) one JSON object per line.
    ///
    /// Auditors see every entry; agencies see only the entries they are party to. Filters
    /// combine with AND. Entries record metadata only, never message content.
    #[command(after_help = "Examples:\n  \
        puente audit log --profile auditor\n  \
        puente audit log --profile auditor --action message-accepted --agency ES-CNP\n  \
        puente audit log --profile auditor --since 2025-03-01T00:00:00Z --json")]
    Log(LogArgs),
    /// Check the log's latest signed checkpoint: signed by the pinned key, consistent with the
    /// checkpoint verified last time, and (with --full) with every entry.
    ///
    /// The first run pins the log's verifier key (trust on first use) unless --verifier-key
    /// gives it; compare the printed key with the one the exchange's operators publish. Each
    /// run remembers the checkpoint it verified in --state, and the next run proves the log
    /// only grew since. With --export FILE it verifies an export offline instead.
    /// Exits non-zero on any verification failure.
    #[command(after_help = "Examples:\n  \
        puente audit verify --profile auditor\n  \
        puente audit verify --profile auditor --full\n  \
        puente audit verify --export audit.jsonl --verifier-key 'puente.local/puente-audit+1a2b3c4d+AaBb...'")]
    Verify(VerifyArgs),
    /// Prove that one entry is in the log's latest signed checkpoint (a receipt).
    ///
    /// Give the entry's index, or the id of a message whose acceptance to prove. Agencies can
    /// prove only entries they are party to.
    #[command(after_help = "Examples:\n  \
        puente audit prove --profile auditor --index 17\n  \
        puente audit prove --profile es-cnp --message-id 0195f3c2-...")]
    Prove(ProveArgs),
    /// Save the latest signed checkpoint and every entry below it to a JSON-lines file, for
    /// `puente audit verify --export` without the exchange.
    ///
    /// Only an auditor's export is complete: an agency's holds only the entries it is party
    /// to, and the checkpoint's root cannot be rebuilt from it. An existing file is never
    /// overwritten.
    #[command(after_help = "Example:\n  \
        puente audit export --profile auditor --out audit.jsonl")]
    Export(ExportArgs),
}

// === Flags ===

/// An audit action, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ActionArg {
    /// A message was accepted.
    MessageAccepted,
    /// A message was sent on a recipient's inbox stream.
    MessageDelivered,
    /// A recipient acknowledged a message.
    MessageAcknowledged,
    /// A party read a message.
    MessageRead,
    /// A call was refused.
    RequestRefused,
    /// A TLS handshake was refused.
    HandshakeRefused,
    /// An agency was registered.
    AgencyRegistered,
    /// An agency was changed.
    AgencyUpdated,
    /// An agency was suspended.
    AgencySuspended,
    /// A suspended agency was resumed.
    AgencyResumed,
    /// A certificate revocation list was applied.
    CrlApplied,
    /// Someone queried the audit log.
    AuditQueried,
    /// A recipient forwarded a message.
    MessageForwarded,
    /// A holder asked the originator for consent to forward.
    ConsentRequested,
    /// The originator granted consent.
    ConsentGranted,
    /// The originator denied consent.
    ConsentDenied,
    /// The originator retracted a message.
    MessageRetracted,
    /// The originator corrected a message.
    MessageCorrected,
    /// An agency published blinded identifiers.
    IdentifiersPublished,
    /// An agency withdrew blinded identifiers.
    IdentifiersWithdrawn,
    /// An agency queried identifiers.
    MatchQueried,
    /// A query matched another agency's identifier.
    MatchHit,
    /// The exchange erased a message whose retention period ran out.
    MessageErased,
}

impl From<ActionArg> for AuditAction {
    fn from(action: ActionArg) -> AuditAction {
        match action {
            ActionArg::MessageAccepted => AuditAction::MessageAccepted,
            ActionArg::MessageDelivered => AuditAction::MessageDelivered,
            ActionArg::MessageAcknowledged => AuditAction::MessageAcknowledged,
            ActionArg::MessageRead => AuditAction::MessageRead,
            ActionArg::RequestRefused => AuditAction::RequestRefused,
            ActionArg::HandshakeRefused => AuditAction::HandshakeRefused,
            ActionArg::AgencyRegistered => AuditAction::AgencyRegistered,
            ActionArg::AgencyUpdated => AuditAction::AgencyUpdated,
            ActionArg::AgencySuspended => AuditAction::AgencySuspended,
            ActionArg::AgencyResumed => AuditAction::AgencyResumed,
            ActionArg::CrlApplied => AuditAction::CrlApplied,
            ActionArg::MessageForwarded => AuditAction::MessageForwarded,
            ActionArg::ConsentRequested => AuditAction::ConsentRequested,
            ActionArg::ConsentGranted => AuditAction::ConsentGranted,
            ActionArg::ConsentDenied => AuditAction::ConsentDenied,
            ActionArg::MessageRetracted => AuditAction::MessageRetracted,
            ActionArg::MessageCorrected => AuditAction::MessageCorrected,
            ActionArg::IdentifiersPublished => AuditAction::IdentifiersPublished,
            ActionArg::IdentifiersWithdrawn => AuditAction::IdentifiersWithdrawn,
            ActionArg::MatchQueried => AuditAction::MatchQueried,
            ActionArg::MatchHit => AuditAction::MatchHit,
            ActionArg::MessageErased => AuditAction::MessageErased,
            ActionArg::AuditQueried => AuditAction::AuditQueried,
        }
    }
}

/// Flags of `puente audit log`.
#[derive(Debug, Args)]
struct LogArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// First index to list.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Only entries this agency is party to (as actor, sender, recipient or subject). Agencies
    /// may give only their own id.
    #[arg(long, value_name = "ID")]
    agency: Option<String>,
    /// Only entries of this action.
    #[arg(long, value_enum)]
    action: Option<ActionArg>,
    /// Only entries at or after this time: RFC 3339 (2025-03-01T12:00:00Z) or a date (UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<prost_types::Timestamp>,
    /// Only entries before this time: RFC 3339 (2025-03-01T12:00:00Z) or a date (UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<prost_types::Timestamp>,
    /// Only entries about this message.
    #[arg(long, value_name = "ID")]
    message_id: Option<String>,
    /// At most this many entries.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// One JSON object per line: index, leaf (base64, the exact bytes hashed into the log) and
    /// the decoded event.
    #[arg(long)]
    json: bool,
}

/// Where the log's verifier key comes from.
#[derive(Debug, Args)]
struct PinArgs {
    /// The log's verifier key, obtained out of band from the exchange's operators
    /// (`<name>+<hash>+<key>`, as the server logs it at start) [default: the key pinned in
    /// --state].
    #[arg(long, value_name = "KEY")]
    verifier_key: Option<String>,
    /// State file: the pinned verifier key and the last checkpoint `verify` checked. Only
    /// `verify` (without --export) writes it.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_STATE)]
    state: PathBuf,
}

/// Flags of `puente audit verify`.
#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    pin: PinArgs,
    /// Also fetch every entry, rebuild the tree and compare its root with the checkpoint's;
    /// names the first altered entry. Needs an auditor's certificate.
    #[arg(long)]
    full: bool,
    /// Verify this file written by `puente audit export`, offline, instead of asking the
    /// exchange. Takes no connection flags (nor PUENTE_PROFILE and the like in the
    /// environment).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["full", "profile", "addr", "cert", "key", "ca", "server_name"]
    )]
    export: Option<PathBuf>,
}

/// Flags of `puente audit prove`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("entry").required(true).args(["index", "message_id"])))]
struct ProveArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Index of the entry to prove.
    #[arg(long, value_name = "N")]
    index: Option<u64>,
    /// Prove the acceptance (the message-accepted entry) of this message.
    #[arg(long, value_name = "ID")]
    message_id: Option<String>,
    #[command(flatten)]
    pin: PinArgs,
}

/// Flags of `puente audit export`.
#[derive(Debug, Args)]
struct ExportArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// File to write (JSON lines); must not exist.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    pin: PinArgs,
}

fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not a time: give RFC 3339 such as 2025-03-01T12:00:00Z, or a date such as 2025-03-01")
    })
}

/// Runs `puente audit`.
///
/// # Errors
/// Connection failures, the exchange's refusal, or any verification failure.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Log(args) => log(args).await,
        AuditCommand::Verify(args) => match &args.export {
            Some(file) => verify_export(file, &args.pin),
            None => verify(&args).await,
        },
        AuditCommand::Prove(args) => prove(args).await,
        AuditCommand::Export(args) => export(args).await,
    }
}

// === Files ===

/// What `verify` remembers between runs.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    /// The log's origin line.
    origin: String,
    /// The pinned verifier key.
    verifier_key: String,
    /// Size of the last verified checkpoint.
    size: u64,
    /// Its root, hex.
    root: String,
    /// The signed note itself, so the state is evidence on its own.
    note: String,
}

/// First line of an export.
#[derive(Debug, Serialize, Deserialize)]
struct ExportHeader {
    /// The signed note; the fields below repeat its content for readers, and are checked
    /// against it.
    checkpoint: String,
    origin: String,
    size: u64,
    /// Root, hex.
    root: String,
    /// The key the note was verified with when exported.
    verifier_key: String,
}

/// Every further line of an export.
#[derive(Debug, Serialize, Deserialize)]
struct ExportEntry {
    index: u64,
    /// The leaf, base64: the exact bytes hashed into the log.
    leaf: String,
    /// `HASH(0x00 || leaf)`, hex. Not trusted as such: only once the leaf hashes of the whole
    /// export give the signed root are they authentic, and then they name an altered leaf.
    leaf_hash: String,
}

fn load_state(path: &Path) -> anyhow::Result<Option<State>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the state file {}", path.display()))
        }
    };
    serde_json::from_str(&text).map(Some).with_context(|| {
        format!(
            "the state file {} is not a puente audit state; give another --state, or move it away to start over (pinning the key again)",
            path.display()
        )
    })
}

fn save_state(path: &Path, state: &State) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(state).context("cannot encode the state")?;
    text.push('\n');
    crate::pki::write_public(path, &text)
        .with_context(|| format!("cannot save the state file {}", path.display()))
}

fn parse_hash(hex_hash: &str, what: &str) -> anyhow::Result<Hash> {
    hex::decode(hex_hash)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("{what} is not a 32-byte hex hash"))
}

// === Keys and checkpoints ===

/// Where the verifier key in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySource {
    /// --verifier-key.
    Flag,
    /// The state file.
    State,
    /// Nowhere: the key the exchange (or the export) offers, trusted on first use.
    Unpinned,
}

/// The verifier key checkpoints are checked with.
struct Pinned {
    key: String,
    verifier: NoteVerifier,
    source: KeySource,
}

/// The key to check with: --verifier-key, else the state's, else `offered` (unpinned).
fn pin(args: &PinArgs, state: Option<&State>, offered: &str) -> anyhow::Result<Pinned> {
    let parse = |key: &str, from: &str| {
        NoteVerifier::parse(key).with_context(|| {
            format!(
                "{from} is not a verifier key (expected <name>+<hash>+<base64 key>): {}",
                crate::text::line(key)
            )
        })
    };
    if let (Some(flag), Some(state)) = (&args.verifier_key, state) {
        if parse(flag, "--verifier-key")?
            != parse(&state.verifier_key, "the key in the state file")?
        {
            bail!(
                "--verifier-key is not the key pinned in {}:\n  pinned: {}\n  given:  {}\nA log's key never changes. If you are certain this is another log, use another --state file.",
                args.state.display(),
                state.verifier_key,
                flag.trim()
            );
        }
    }
    let (key, source) = match (&args.verifier_key, state) {
        (Some(flag), _) => (flag.trim(), KeySource::Flag),
        (None, Some(state)) => (state.verifier_key.trim(), KeySource::State),
        (None, None) => (offered.trim(), KeySource::Unpinned),
    };
    let from = match source {
        KeySource::Flag => "--verifier-key",
        KeySource::State => "the key in the state file",
        KeySource::Unpinned => "the key offered",
    };
    Ok(Pinned {
        verifier: parse(key, from)?,
        key: key.to_string(),
        source,
    })
}

/// Checks `note`'s signature and parses its checkpoint.
fn open_note(pinned: &Pinned, note: &str) -> anyhow::Result<Checkpoint> {
    let body = pinned.verifier.verify(note).map_err(|e| match e {
        NoteError::NotSigned(_) => anyhow::anyhow!(
            "the checkpoint is NOT signed by the pinned key {}: do not trust this log",
            pinned.key
        ),
        e => anyhow::Error::new(e).context("the checkpoint is not a valid signed note"),
    })?;
    Checkpoint::parse(body).context("the signed checkpoint is malformed")
}

/// A connection to AuditService and what GetLogInfo said.
struct Exchange {
    client: AuditServiceClient<Channel>,
    info: GetLogInfoResponse,
}

impl Exchange {
    async fn connect(connect: &ConnectArgs) -> anyhow::Result<Exchange> {
        let mut client = AuditServiceClient::new(connect.connect().await?);
        let info = client
            .get_log_info(GetLogInfoRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        Ok(Exchange { client, info })
    }

    /// The latest checkpoint, signed by the pinned key.
    async fn checkpoint(&mut self, pinned: &Pinned) -> anyhow::Result<(Checkpoint, String)> {
        let offered = NoteVerifier::parse(&self.info.verifier_key).ok();
        if offered.as_ref() != Some(&pinned.verifier) {
            bail!(
                "the exchange's log key is not the pinned key:\n  pinned:   {}\n  exchange: {}\nEither this is another exchange (check --addr or --profile), or the log was replaced: a log's key never changes. Do not trust it until its operators explain.",
                pinned.key,
                self.info.verifier_key
            );
        }
        let response = self
            .client
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        let checkpoint = open_note(pinned, &response.checkpoint)?;
        if checkpoint.origin != self.info.origin {
            bail!(
                "the checkpoint is for log {:?}, but the exchange says its log is {:?}",
                checkpoint.origin,
                self.info.origin
            );
        }
        if response.tree_size != checkpoint.size || response.root_hash != checkpoint.root {
            bail!("the exchange's answer disagrees with the checkpoint it signed (size or root): do not trust this log");
        }
        Ok((checkpoint, response.checkpoint))
    }

    async fn entries(
        &mut self,
        request: ListAuditEntriesRequest,
    ) -> anyhow::Result<Streaming<ListAuditEntriesResponse>> {
        Ok(self
            .client
            .list_audit_entries(request)
            .await
            .map_err(rpc_error)?
            .into_inner())
    }

    async fn consistency_proof(&mut self, from: u64, to: u64) -> anyhow::Result<Vec<Hash>> {
        let response = self
            .client
            .get_consistency_proof(GetConsistencyProofRequest {
                from_size: from,
                to_size: to,
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        proof_hashes(response.hashes)
    }

    async fn inclusion_proof(&mut self, index: u64, size: u64) -> anyhow::Result<Vec<Hash>> {
        let response = self
            .client
            .get_inclusion_proof(GetInclusionProofRequest {
                leaf_index: index,
                tree_size: size,
            })
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => rpc_error_with_hint(
                    status,
                    Some("agencies can prove only the entries they are party to; an auditor can prove any"),
                ),
                _ => rpc_error(status),
            })?
            .into_inner();
        proof_hashes(response.hashes)
    }
}

fn proof_hashes(hashes: Vec<Vec<u8>>) -> anyhow::Result<Vec<Hash>> {
    hashes
        .into_iter()
        .map(|hash| {
            hash.try_into()
                .map_err(|_| anyhow::anyhow!("the exchange sent a proof hash that is not 32 bytes"))
        })
        .collect()
}

/// How `signed by KEY` goes on.
fn pinned_note(source: KeySource) -> &'static str {
    match source {
        KeySource::Flag | KeySource::State => " (pinned)",
        KeySource::Unpinned => " (NOT pinned: see the WARNING)",
    }
}

/// Says loudly that `key` is trusted only because `offered_by` offered it, and what to do.
fn warn_unpinned(key: &str, offered_by: &str, then: &str) {
    let key = crate::text::line(key);
    eprintln!("WARNING: no verifier key is pinned; trusting the key {offered_by} offers:\n\n    {key}\n\n{then}");
}

// === log ===

async fn log(args: LogArgs) -> anyhow::Result<()> {
    let mut client = AuditServiceClient::new(args.connect.connect().await?);
    let request = ListAuditEntriesRequest {
        start_index: args.start,
        agency_id: args.agency.clone().unwrap_or_default(),
        action: args.action.map_or(0, |a| AuditAction::from(a) as i32),
        since: args.since,
        until: args.until,
        message_id: args.message_id.clone().unwrap_or_default(),
        limit: args.limit.unwrap_or(0),
    };
    let mut stream = client
        .list_audit_entries(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    if !args.json && !emit(&header())? {
        return Ok(());
    }
    let mut count = 0u64;
    while let Some(entry) = stream.message().await.map_err(rpc_error)? {
        // Show what was hashed into the log, not the server's decoding of it.
        let event = decode(entry.index, &entry.leaf)?;
        let line = if args.json {
            entry_json(entry.index, &entry.leaf, &event)?
        } else {
            row(entry.index, &event)
        };
        if !emit(&line)? {
            return Ok(());
        }
        count += 1;
    }
    if !args.json {
        eprintln!("{count} entries");
    }
    Ok(())
}

/// Writes a line to stdout; false once the reader has gone (`| head`), which ends a listing
/// quietly instead of with a panic.
fn emit(line: &str) -> anyhow::Result<bool> {
    match writeln!(std::io::stdout(), "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

fn decode(index: u64, leaf: &[u8]) -> anyhow::Result<AuditEvent> {
    AuditEvent::decode(leaf)
        .with_context(|| format!("entry {index} does not decode as an audit event"))
}

// === verify ===

async fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let state = load_state(&args.pin.state)?;
    let mut exchange = Exchange::connect(&args.connect).await?;
    let pinned = pin(&args.pin, state.as_ref(), &exchange.info.verifier_key)?;
    let (checkpoint, note) = exchange.checkpoint(&pinned).await?;
    println!(
        "checkpoint: {} entries, root {}",
        checkpoint.size,
        hex::encode(checkpoint.root)
    );
    println!(
        "signed by {}{}",
        crate::text::line(&pinned.key),
        pinned_note(pinned.source)
    );

    if let Some(state) = &state {
        if state.origin != checkpoint.origin {
            bail!(
                "this is log {:?}, but {} remembers log {:?}; use another --state file for another log",
                checkpoint.origin,
                args.pin.state.display(),
                state.origin
            );
        }
        let old_root = parse_hash(&state.root, "the root in the state file")?;
        check_grew(&mut exchange, state.size, &old_root, &checkpoint).await?;
        println!(
            "consistent with the checkpoint of {} entries verified before",
            state.size
        );
    }

    if args.full {
        let tree = rebuild(&mut exchange, checkpoint.size).await?;
        if merkle::root(&tree, checkpoint.size)? != checkpoint.root {
            let index = locate(&mut exchange, &tree, &checkpoint).await?;
            bail!(
                "entry {index} does not match the log's signed checkpoint: the {index} entries before it are proven to be in it, but neither a consistency nor an inclusion proof puts entry {index}, as the exchange now serves it, there — it was altered after it was logged.\nReport this to the exchange's operators; `puente audit log --start {index} --limit 1` shows the entry as it now reads."
            );
        }
        println!(
            "all {} entries rebuild the checkpoint's root",
            checkpoint.size
        );
    }

    save_state(
        &args.pin.state,
        &State {
            origin: checkpoint.origin.clone(),
            verifier_key: pinned.key.clone(),
            size: checkpoint.size,
            root: hex::encode(checkpoint.root),
            note,
        },
    )?;
    if pinned.source == KeySource::Unpinned {
        warn_unpinned(
            &pinned.key,
            "the exchange",
            &format!(
                "It is now pinned in {}: later runs accept only checkpoints it signed. Compare it, out of band, with the key the exchange's operators publish (the server logs it at start as verifier_key); if they differ, delete {} and do not trust this log.",
                args.pin.state.display(),
                args.pin.state.display()
            ),
        );
    }
    println!("OK: verified; remembered in {}", args.pin.state.display());
    Ok(())
}

/// Checks that the log of `checkpoint` extends the one of `old_size` entries and `old_root`.
async fn check_grew(
    exchange: &mut Exchange,
    old_size: u64,
    old_root: &Hash,
    checkpoint: &Checkpoint,
) -> anyhow::Result<()> {
    if checkpoint.size < old_size {
        bail!(
            "the log SHRANK: its latest checkpoint has {} entries, but one of {old_size} entries was verified before. A log never shrinks: it was rolled back or replaced.",
            checkpoint.size
        );
    }
    let proof = exchange
        .consistency_proof(old_size, checkpoint.size)
        .await?;
    merkle::verify_consistency(old_size, checkpoint.size, &proof, old_root, &checkpoint.root)
        .with_context(|| {
            format!(
                "the log is NOT consistent with the checkpoint of {old_size} entries verified before: entries were changed or removed since. Keep the state file as evidence."
            )
        })
}

/// Fetches entries `0..size` and hashes them into a tree.
async fn rebuild(exchange: &mut Exchange, size: u64) -> anyhow::Result<MemoryTree> {
    let mut stream = exchange
        .entries(ListAuditEntriesRequest {
            start_index: 0,
            limit: size,
            ..Default::default()
        })
        .await?;
    let mut tree = MemoryTree::default();
    while tree.size() < size {
        let Some(entry) = stream.message().await.map_err(rpc_error)? else {
            break;
        };
        if entry.index != tree.size() {
            bail!(
                "the listing skips from entry {} to {}: --full needs an auditor's certificate (agencies see only the entries they are party to)",
                tree.size(),
                entry.index
            );
        }
        tree.push(merkle::hash_leaf(&entry.leaf));
        if tree.size() % PROGRESS_EVERY == 0 {
            eprintln!("fetched {} of {size} entries", tree.size());
        }
    }
    if tree.size() < size {
        bail!(
            "the exchange listed only {} entries, but its checkpoint has {size}: entries are missing",
            tree.size()
        );
    }
    Ok(tree)
}

/// The first entry of `tree` that is not in `checkpoint`, whose root `tree` does not give.
///
/// The prefixes that are in the checkpoint are exactly those before the first altered entry,
/// so a binary search over prefix sizes `m` finds it: a prefix is in the checkpoint when the
/// consistency proof from `m` to the checkpoint's size verifies against the locally computed
/// root of the first `m` entries. A verifying proof is what makes "the entries before it are
/// intact" certain; that the entry found is itself the altered one rests on the exchange's
/// failing proofs being honest failures, so its inclusion proof is asked as a cross-check and
/// proofs that contradict each other are reported as such rather than blamed on an entry.
async fn locate(
    exchange: &mut Exchange,
    tree: &MemoryTree,
    checkpoint: &Checkpoint,
) -> anyhow::Result<u64> {
    let n = checkpoint.size;
    eprintln!("the entries do not give the checkpoint's root; locating the first altered entry");
    // Invariant: the first `good` entries are in the checkpoint, the first `bad` are not.
    let (mut good, mut bad) = (0u64, n);
    while bad - good > 1 {
        let m = good + (bad - good) / 2;
        let proof = exchange.consistency_proof(m, n).await?;
        let prefix = merkle::root(tree, m)?;
        if merkle::verify_consistency(m, n, &proof, &prefix, &checkpoint.root).is_ok() {
            good = m;
        } else {
            bad = m;
        }
    }
    let index = good;
    let proof = exchange.inclusion_proof(index, n).await?;
    let leaf_hash = merkle::HashReader::hash(tree, 0, index)?;
    if merkle::verify_inclusion(&leaf_hash, index, n, &proof, &checkpoint.root).is_ok() {
        bail!(
            "the entries do not give the checkpoint's root, and the exchange's proofs contradict each other (entry {index} is both in and not in the checkpoint): do not trust this log"
        );
    }
    Ok(index)
}

// === prove ===

async fn prove(args: ProveArgs) -> anyhow::Result<()> {
    let state = load_state(&args.pin.state)?;
    let mut exchange = Exchange::connect(&args.connect).await?;
    let pinned = pin(&args.pin, state.as_ref(), &exchange.info.verifier_key)?;
    let (checkpoint, _) = exchange.checkpoint(&pinned).await?;
    let index = match (args.index, &args.message_id) {
        (Some(index), _) => index,
        (None, Some(message_id)) => {
            let mut stream = exchange
                .entries(ListAuditEntriesRequest {
                    message_id: message_id.clone(),
                    action: AuditAction::MessageAccepted as i32,
                    limit: 1,
                    ..Default::default()
                })
                .await?;
            let entry = stream
                .message()
                .await
                .map_err(rpc_error)?
                .with_context(|| {
                    format!("no message-accepted entry for message {message_id} that you may see")
                })?;
            entry.index
        }
        (None, None) => bail!("give --index or --message-id"),
    };
    if index >= checkpoint.size {
        bail!(
            "there is no entry {index} in the log's latest checkpoint, which has {} entries (indices start at 0)",
            checkpoint.size
        );
    }
    let proof = exchange.inclusion_proof(index, checkpoint.size).await?;
    let mut stream = exchange
        .entries(ListAuditEntriesRequest {
            start_index: index,
            limit: 1,
            ..Default::default()
        })
        .await?;
    let entry = stream
        .message()
        .await
        .map_err(rpc_error)?
        .filter(|entry| entry.index == index)
        .with_context(|| format!("the exchange did not list entry {index}"))?;
    let event = decode(index, &entry.leaf)?;
    let leaf_hash = merkle::hash_leaf(&entry.leaf);
    merkle::verify_inclusion(&leaf_hash, index, checkpoint.size, &proof, &checkpoint.root)
        .with_context(|| {
            format!(
                "entry {index} as the exchange serves it is NOT in the log's signed checkpoint: it was altered after it was logged"
            )
        })?;
    println!("{}", header());
    println!("{}", row(index, &event));
    println!();
    println!("leaf hash: {}", hex::encode(leaf_hash));
    println!(
        "entry {index} is included in the checkpoint of size {} (root {})",
        checkpoint.size,
        hex::encode(checkpoint.root)
    );
    println!(
        "signed by {}{}",
        crate::text::line(&pinned.key),
        pinned_note(pinned.source)
    );
    if pinned.source == KeySource::Unpinned {
        warn_unpinned(
            &pinned.key,
            "the exchange",
            "This proof is only as good as that key: pass --verifier-key with the key the exchange's operators publish, or run `puente audit verify` once to pin it.",
        );
    }
    Ok(())
}

// === export ===

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let state = load_state(&args.pin.state)?;
    let mut exchange = Exchange::connect(&args.connect).await?;
    let pinned = pin(&args.pin, state.as_ref(), &exchange.info.verifier_key)?;
    let (checkpoint, note) = exchange.checkpoint(&pinned).await?;
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&args.out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten; choose another --out)",
                args.out.display()
            )
        })?;
    let header = ExportHeader {
        checkpoint: note,
        origin: checkpoint.origin.clone(),
        size: checkpoint.size,
        root: hex::encode(checkpoint.root),
        verifier_key: pinned.key.clone(),
    };
    let written = write_export(&mut exchange, BufWriter::new(file), &header).await;
    let (count, tree) = match written {
        Ok(written) => written,
        Err(e) => {
            // Half an export is no evidence, and would block the retry (never overwritten).
            let _ = std::fs::remove_file(&args.out);
            return Err(e.context(format!(
                "the export to {} failed; the partial file was removed",
                args.out.display()
            )));
        }
    };
    println!(
        "exported the checkpoint of {} entries (root {}) and {count} entries to {}",
        checkpoint.size,
        hex::encode(checkpoint.root),
        args.out.display()
    );
    if count < checkpoint.size {
        eprintln!(
            "note: the export is partial — only the entries your certificate may see; `puente audit verify --export` cannot rebuild the checkpoint's root from it. Export with an auditor's certificate for a complete one."
        );
    } else if merkle::root(&tree, checkpoint.size)? != checkpoint.root {
        bail!(
            "the exported entries do NOT give the checkpoint's root: the log was altered. The file is kept as evidence; run `puente audit verify --full` to name the first altered entry."
        );
    }
    if pinned.source == KeySource::Unpinned {
        warn_unpinned(
            &pinned.key,
            "the exchange",
            "The export records it; pass --verifier-key with the key the exchange's operators publish, or run `puente audit verify` once to pin it.",
        );
    }
    Ok(())
}

/// Writes `header` and the entries below its size to `out`; returns how many entries it wrote
/// and the tree of the leading run of them (all of them in an auditor's export).
async fn write_export(
    exchange: &mut Exchange,
    mut out: BufWriter<File>,
    header: &ExportHeader,
) -> anyhow::Result<(u64, MemoryTree)> {
    writeln!(out, "{}", serde_json::to_string(header)?)?;
    let mut stream = exchange
        .entries(ListAuditEntriesRequest {
            start_index: 0,
            limit: header.size,
            ..Default::default()
        })
        .await?;
    // Hashed as exported, to tell an auditor at once if the log does not match its checkpoint.
    let mut tree = MemoryTree::default();
    let mut count = 0u64;
    while let Some(entry) = stream.message().await.map_err(rpc_error)? {
        // An agency's listing is filtered, so it may run past the checkpoint.
        if entry.index >= header.size {
            break;
        }
        let leaf_hash = merkle::hash_leaf(&entry.leaf);
        let line = ExportEntry {
            index: entry.index,
            leaf: BASE64.encode(&entry.leaf),
            leaf_hash: hex::encode(leaf_hash),
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
        if entry.index == tree.size() {
            tree.push(leaf_hash);
        }
        count += 1;
        if count % PROGRESS_EVERY == 0 {
            eprintln!("exported {count} entries");
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((count, tree))
}

// === verify --export ===

fn verify_export(path: &Path, pin_args: &PinArgs) -> anyhow::Result<()> {
    let file =
        File::open(path).with_context(|| format!("cannot open the export {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let read_error = || format!("cannot read the export {}", path.display());
    let first = lines
        .next()
        .transpose()
        .with_context(read_error)?
        .with_context(|| format!("the export {} is empty", path.display()))?;
    let header: ExportHeader = serde_json::from_str(&first).with_context(|| {
        format!(
            "the first line of {} is not the checkpoint of a `puente audit export`",
            path.display()
        )
    })?;
    let state = load_state(&pin_args.state)?;
    let pinned = pin(pin_args, state.as_ref(), &header.verifier_key)?;
    let checkpoint = open_note(&pinned, &header.checkpoint)?;
    if checkpoint.origin != header.origin
        || checkpoint.size != header.size
        || hex::encode(checkpoint.root) != header.root
    {
        bail!("the export's header disagrees with its signed checkpoint: the file was edited");
    }

    // `leaves` hashes the leaves themselves; `claimed` the leaf hashes the export lists.
    let (mut leaves, mut claimed) = (MemoryTree::default(), MemoryTree::default());
    let mut first_undecodable = None;
    for (number, line) in (2u64..).zip(lines) {
        let line = line.with_context(read_error)?;
        let entry: ExportEntry = serde_json::from_str(&line)
            .with_context(|| format!("line {number} of the export is not an entry"))?;
        let expected = leaves.size();
        if entry.index != expected {
            if entry.index > expected && entry.index < checkpoint.size {
                bail!(
                    "the export is partial: it has no entry {expected} (it goes on with entry {}). An agency's export holds only the entries it is party to, so the checkpoint's root cannot be rebuilt from it; verify a complete export made with an auditor's certificate.",
                    entry.index
                );
            }
            bail!(
                "line {number} of the export holds entry {}, expected entry {expected}",
                entry.index
            );
        }
        if expected >= checkpoint.size {
            bail!(
                "the export holds more entries than its checkpoint's {}",
                checkpoint.size
            );
        }
        let leaf = BASE64
            .decode(&entry.leaf)
            .with_context(|| format!("entry {expected}: the leaf is not base64"))?;
        if first_undecodable.is_none() && AuditEvent::decode(leaf.as_slice()).is_err() {
            first_undecodable = Some(expected);
        }
        leaves.push(merkle::hash_leaf(&leaf));
        claimed.push(parse_hash(
            &entry.leaf_hash,
            &format!("the leaf hash of entry {expected}"),
        )?);
        if leaves.size() % PROGRESS_EVERY == 0 {
            eprintln!("read {} of {} entries", leaves.size(), checkpoint.size);
        }
    }
    if leaves.size() < checkpoint.size {
        bail!(
            "the export is partial: it holds {} of the checkpoint's {} entries, so the root cannot be rebuilt; verify a complete export made with an auditor's certificate",
            leaves.size(),
            checkpoint.size
        );
    }
    if pinned.source == KeySource::Unpinned {
        warn_unpinned(
            &pinned.key,
            "the export itself",
            "So this only shows that the file agrees with itself: whoever could rewrite the log could re-sign it with another key. Pass --verifier-key with the key you pinned or the exchange's operators publish.",
        );
    }
    match find_altered(&leaves, &claimed, &checkpoint)? {
        Verdict::Intact => {
            println!(
                "OK: all {} entries of {} give the root of the checkpoint signed by {}{}",
                checkpoint.size,
                path.display(),
                pinned.key,
                pinned_note(pinned.source)
            );
            Ok(())
        }
        Verdict::Altered(index) => bail!(
            "entry {index} does not match the log's signed checkpoint: the export's leaf hashes give the signed root, and the leaf of entry {index} does not have its hash. The export was altered after it was made."
        ),
        Verdict::Unlocated => match first_undecodable {
            Some(index) => bail!(
                "the entries do NOT give the checkpoint's root: the export or the log was altered. Entry {index} is the first that does not even decode as an audit event."
            ),
            None => bail!(
                "the entries do NOT give the checkpoint's root: the export or the log was altered. Which entry cannot be told offline; run `puente audit verify --full` against the exchange to name it."
            ),
        },
    }
}

/// What comparing a rebuilt tree with its signed checkpoint found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The leaves give the signed root.
    Intact,
    /// The claimed leaf hashes give the signed root, so they are authentic, and this is the
    /// first leaf whose hash is not the claimed one.
    Altered(u64),
    /// Neither gives the signed root.
    Unlocated,
}

fn find_altered(
    leaves: &MemoryTree,
    claimed: &MemoryTree,
    checkpoint: &Checkpoint,
) -> anyhow::Result<Verdict> {
    if merkle::root(leaves, checkpoint.size)? == checkpoint.root {
        return Ok(Verdict::Intact);
    }
    if merkle::root(claimed, checkpoint.size)? != checkpoint.root {
        return Ok(Verdict::Unlocated);
    }
    for index in 0..checkpoint.size {
        let hash = |tree: &MemoryTree| merkle::HashReader::hash(tree, 0, index);
        if hash(leaves)? != hash(claimed)? {
            return Ok(Verdict::Altered(index));
        }
    }
    // Same leaf hashes give the same root; unreachable unless the trees disagree internally.
    Ok(Verdict::Unlocated)
}

// === Output ===

/// `AUDIT_ACTION_MESSAGE_ACCEPTED` → `message-accepted`: the spelling of `--action`.
fn kebab(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

fn action_name(action: i32) -> String {
    AuditAction::try_from(action).map_or_else(
        |_| action.to_string(),
        |a| kebab(a.as_str_name(), "AUDIT_ACTION_"),
    )
}

fn topic_name(topic: i32) -> String {
    Topic::try_from(topic).map_or_else(|_| topic.to_string(), |t| kebab(t.as_str_name(), "TOPIC_"))
}

fn handling_name(handling: i32) -> String {
    HandlingCode::try_from(handling).map_or_else(
        |_| handling.to_string(),
        |h| kebab(h.as_str_name(), "HANDLING_CODE_"),
    )
}

fn state_name(state: i32) -> String {
    DeliveryState::try_from(state).map_or_else(
        |_| state.to_string(),
        |s| kebab(s.as_str_name(), "DELIVERY_STATE_"),
    )
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

/// To the second, for the table.
fn short_time(micros: i64) -> String {
    rfc3339(micros.div_euclid(1_000_000) * 1_000_000)
}

/// The agency id of the actor, else its SPIFFE ID without the trust domain (`auditor/ana`).
fn actor_name(event: &AuditEvent) -> &str {
    if !event.actor_agency.is_empty() {
        return &event.actor_agency;
    }
    let path = event
        .actor
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or(event.actor.as_str(), |(_, path)| path);
    if path.is_empty() {
        "-"
    } else {
        path
    }
}

/// The fields an action sets, beyond time, action, actor and message.
fn details(event: &AuditEvent) -> String {
    let mut parts = Vec::new();
    if !event.sender.is_empty() {
        parts.push(format!("from {}", event.sender));
    }
    if !event.recipients.is_empty() {
        parts.push(format!("to {}", event.recipients.join(",")));
    }
    if event.topic != 0 {
        parts.push(format!("topic {}", topic_name(event.topic)));
    }
    if event.handling != 0 {
        parts.push(format!("handling {}", handling_name(event.handling)));
    }
    if !event.content_sha256.is_empty() {
        parts.push(format!("{} bytes", event.content_size));
    }
    if event.delivery_state != 0 {
        parts.push(format!("state {}", state_name(event.delivery_state)));
    }
    if !event.subject_agency.is_empty() {
        parts.push(format!("agency {}", event.subject_agency));
    }
    if event.crl_number != 0 {
        parts.push(format!("crl {}", event.crl_number));
    }
    if !event.remote_address.is_empty() {
        parts.push(format!("address {}", event.remote_address));
    }
    if !event.method.is_empty() {
        parts.push(event.method.clone());
    }
    // Free text, so last.
    if !event.reason.is_empty() {
        parts.push(format!("reason: {}", event.reason));
    }
    parts.join("  ")
}

fn header() -> String {
    format!(
        "{:<7} {:<20} {:<20} {:<20} {:<36} DETAILS",
        "INDEX", "TIME", "ACTION", "ACTOR", "MESSAGE"
    )
}

fn row(index: u64, event: &AuditEvent) -> String {
    let message = if event.message_id.is_empty() {
        "-"
    } else {
        &event.message_id
    };
    let row = format!(
        "{:<7} {:<20} {:<20} {:<20} {:<36} {}",
        index,
        short_time(event.time_unix_micros),
        action_name(event.action),
        actor_name(event),
        message,
        details(event)
    );
    // Reasons, agencies and ids come from the log as served: one line, shown, never obeyed.
    crate::text::line(&row).into_owned()
}

/// A line of `puente audit log --json`. A struct rather than `json!` so that the fields keep
/// this order: index first, the event's fields in field-number order.
#[derive(Serialize)]
struct JsonEntry<'a> {
    index: u64,
    /// Base64.
    leaf: String,
    event: JsonEvent<'a>,
}

/// The decoded event of a [`JsonEntry`], enums by their `--action`-style names.
#[derive(Serialize)]
struct JsonEvent<'a> {
    version: u32,
    time: String,
    time_unix_micros: i64,
    action: String,
    actor: &'a str,
    actor_serial: &'a str,
    actor_agency: &'a str,
    message_id: &'a str,
    sender: &'a str,
    recipients: &'a [String],
    topic: String,
    handling: String,
    /// Hex.
    content_sha256: String,
    content_size: u64,
    delivery_state: String,
    method: &'a str,
    reason: &'a str,
    subject_agency: &'a str,
    remote_address: &'a str,
    crl_number: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    related_message_id: &'a str,
}

fn entry_json(index: u64, leaf: &[u8], event: &AuditEvent) -> anyhow::Result<String> {
    let entry = JsonEntry {
        index,
        leaf: BASE64.encode(leaf),
        event: JsonEvent {
            version: event.version,
            time: rfc3339(event.time_unix_micros),
            time_unix_micros: event.time_unix_micros,
            action: action_name(event.action),
            actor: &event.actor,
            actor_serial: &event.actor_serial,
            actor_agency: &event.actor_agency,
            message_id: &event.message_id,
            sender: &event.sender,
            recipients: &event.recipients,
            topic: topic_name(event.topic),
            handling: handling_name(event.handling),
            content_sha256: hex::encode(&event.content_sha256),
            content_size: event.content_size,
            delivery_state: state_name(event.delivery_state),
            method: &event.method,
            reason: &event.reason,
            subject_agency: &event.subject_agency,
            remote_address: &event.remote_address,
            crl_number: event.crl_number,
            related_message_id: &event.related_message_id,
        },
    };
    let json = serde_json::to_string(&entry).context("cannot encode an entry as JSON")?;
    // The entry's strings come from the log as served: safe for a terminal, same JSON.
    Ok(crate::text::json(&json).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_a_flag_value_spelled_as_it_is_printed() {
        let values = ActionArg::value_variants();
        // Every action but UNSPECIFIED.
        assert_eq!(
            values.len(),
            (1..)
                .take_while(|&n| AuditAction::try_from(n).is_ok())
                .count()
        );
        for value in values {
            let name = value.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(action_name(AuditAction::from(*value) as i32), name);
        }
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(
            parse_time("2025-03-01T12:00:00Z").unwrap().seconds,
            1_740_830_400
        );
        assert_eq!(
            parse_time("2025-03-01T13:00:00+01:00").unwrap().seconds,
            1_740_830_400
        );
        assert_eq!(parse_time("2025-03-01").unwrap().seconds, 1_740_787_200);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(rfc3339(1_740_830_400_000_000), "2025-03-01T12:00:00Z");
        assert_eq!(short_time(1_740_830_400_123_456), "2025-03-01T12:00:00Z");
    }

    fn trees(leaves: &[Vec<u8>], claimed: &[Vec<u8>]) -> (MemoryTree, MemoryTree) {
        let mut a = MemoryTree::default();
        let mut b = MemoryTree::default();
        for leaf in leaves {
            a.push(merkle::hash_leaf(leaf));
        }
        for leaf in claimed {
            b.push(merkle::hash_leaf(leaf));
        }
        (a, b)
    }

    #[test]
    fn an_altered_leaf_is_named_only_when_the_claimed_hashes_give_the_signed_root() {
        let genuine: Vec<Vec<u8>> = (0..21u8).map(|i| vec![i; 3]).collect();
        let (tree, _) = trees(&genuine, &[]);
        let checkpoint = Checkpoint {
            origin: "test".into(),
            size: 21,
            root: merkle::root(&tree, 21).unwrap(),
        };
        let (leaves, claimed) = trees(&genuine, &genuine);
        assert_eq!(
            find_altered(&leaves, &claimed, &checkpoint).unwrap(),
            Verdict::Intact
        );

        let mut altered = genuine.clone();
        altered[13][1] ^= 1;
        let (leaves, claimed) = trees(&altered, &genuine);
        assert_eq!(
            find_altered(&leaves, &claimed, &checkpoint).unwrap(),
            Verdict::Altered(13)
        );
        // Leaf and its listed hash altered together: nothing authentic names the entry.
        let (leaves, claimed) = trees(&altered, &altered);
        assert_eq!(
            find_altered(&leaves, &claimed, &checkpoint).unwrap(),
            Verdict::Unlocated
        );
    }

    #[test]
    fn actors_print_as_agency_or_role_and_name() {
        let mut event = AuditEvent {
            actor: "spiffe://puente.local/auditor/ana".into(),
            ..Default::default()
        };
        assert_eq!(actor_name(&event), "auditor/ana");
        event.actor_agency = "ES-CNP".into();
        assert_eq!(actor_name(&event), "ES-CNP");
        assert_eq!(actor_name(&AuditEvent::default()), "-");
    }
}
