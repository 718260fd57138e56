//! `puente audit`: the exchange's verifiable audit log as an auditor uses it. `log` lists
//! entries; `verify` checks the latest signed checkpoint against a pinned key and against the
//! checkpoint verified last time (with `--full`, against every entry too; with `--export`,
//! offline); `prove` proves that one entry is in the log; `export` saves the log for offline
//! verification. Agencies may run them too, within their access rules.

mod export;
mod format;
mod log;
mod prove;
mod verify;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use prost::Message as _;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::{rpc_error, rpc_error_with_hint, ConnectArgs};
use crate::audit::merkle::Hash;
use crate::audit::note::Checkpoint;
use crate::audit::verify::{self as audit_verify, KeySource, Pinned, VerifierState};
use crate::pb::v1::audit_service_client::AuditServiceClient;
use crate::pb::v1::{
    AuditEvent, GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest,
    GetLogInfoRequest, GetLogInfoResponse, ListAuditEntriesRequest, ListAuditEntriesResponse,
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
    Log(log::LogArgs),
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
    Verify(verify::VerifyArgs),
    /// Prove that one entry is in the log's latest signed checkpoint (a receipt).
    ///
    /// Give the entry's index, or the id of a message whose acceptance to prove. Agencies can
    /// prove only entries they are party to.
    #[command(after_help = "Examples:\n  \
        puente audit prove --profile auditor --index 17\n  \
        puente audit prove --profile es-cnp --message-id 0195f3c2-...")]
    Prove(prove::ProveArgs),
    /// Save the latest signed checkpoint and every entry below it to a JSON-lines file, for
    /// `puente audit verify --export` without the exchange.
    ///
    /// Only an auditor's export is complete: an agency's holds only the entries it is party
    /// to, and the checkpoint's root cannot be rebuilt from it. An existing file is never
    /// overwritten.
    #[command(after_help = "Example:\n  \
        puente audit export --profile auditor --out audit.jsonl")]
    Export(export::ExportArgs),
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

/// Runs `puente audit`.
///
/// # Errors
/// Connection failures, the exchange's refusal, or any verification failure.
pub(super) async fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Log(args) => log::log(args).await,
        AuditCommand::Verify(args) => match &args.export {
            Some(file) => verify::verify_export(file, &args.pin),
            None => verify::verify(&args).await,
        },
        AuditCommand::Prove(args) => prove::prove(args).await,
        AuditCommand::Export(args) => export::export(args).await,
    }
}

/// The key to check with: --verifier-key, else the state's, else `offered` (unpinned).
fn pin(args: &PinArgs, state: Option<&VerifierState>, offered: &str) -> anyhow::Result<Pinned> {
    Ok(audit_verify::pin(
        args.verifier_key.as_deref(),
        &args.state,
        state,
        offered,
    )?)
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

    /// The latest checkpoint, signed by the pinned key, and its note.
    async fn checkpoint(&mut self, pinned: &Pinned) -> anyhow::Result<(Checkpoint, String)> {
        pinned.check_offered(&self.info.verifier_key)?;
        let response = self
            .client
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        let checkpoint = pinned.open_served(
            &response.checkpoint,
            &self.info.origin,
            response.tree_size,
            &response.root_hash,
        )?;
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

/// Decodes entry `index` from its leaf, the exact bytes hashed into the log.
fn decode(index: u64, leaf: &[u8]) -> anyhow::Result<AuditEvent> {
    AuditEvent::decode(leaf)
        .with_context(|| format!("entry {index} does not decode as an audit event"))
}
