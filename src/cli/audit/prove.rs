//! `puente audit prove`: proves that one entry is in the log's latest signed checkpoint.

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};

use super::format::{header, row};
use super::{decode, pin, pinned_note, rpc_error, warn_unpinned, ConnectArgs, Exchange, PinArgs};
use crate::audit::verify::{self as audit_verify, KeySource, VerifierState};
use crate::pb::v1::{AuditAction, ListAuditEntriesRequest};

/// Flags of `puente audit prove`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("entry").required(true).args(["index", "message_id"])))]
pub(super) struct ProveArgs {
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

pub(super) async fn prove(args: ProveArgs) -> anyhow::Result<()> {
    let state = VerifierState::load(&args.pin.state)?;
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
    let leaf_hash = audit_verify::check_included(index, &entry.leaf, &checkpoint, &proof)?;
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
