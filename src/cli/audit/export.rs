//! `puente audit export`: saves the latest signed checkpoint and the entries below it for
//! offline verification, in the format of [`crate::audit::export`].

use std::path::PathBuf;

use clap::Args;

use super::{pin, rpc_error, warn_unpinned, ConnectArgs, Exchange, PinArgs, PROGRESS_EVERY};
use crate::audit::export::{ExportError, ExportHeader, ExportWriter};
use crate::audit::merkle::{self, MemoryTree};
use crate::audit::verify::{KeySource, VerifierState};
use crate::pb::v1::ListAuditEntriesRequest;

/// Flags of `puente audit export`.
#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// File to write (JSON lines); must not exist.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    pin: PinArgs,
}

pub(super) async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let state = VerifierState::load(&args.pin.state)?;
    let mut exchange = Exchange::connect(&args.connect).await?;
    let pinned = pin(&args.pin, state.as_ref(), &exchange.info.verifier_key)?;
    let (checkpoint, note) = exchange.checkpoint(&pinned).await?;
    let out = ExportWriter::create(&args.out)?;
    let header = ExportHeader {
        checkpoint: note,
        origin: checkpoint.origin.clone(),
        size: checkpoint.size,
        root: hex::encode(checkpoint.root),
        verifier_key: pinned.key.clone(),
    };
    let written = write_export(&mut exchange, out, &header).await;
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
        return Err(ExportError::ExportedAltered.into());
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
    mut out: ExportWriter,
    header: &ExportHeader,
) -> anyhow::Result<(u64, MemoryTree)> {
    out.header(header)?;
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
        let leaf_hash = out.entry(entry.index, &entry.leaf)?;
        if entry.index == tree.size() {
            tree.push(leaf_hash);
        }
        count += 1;
        if count % PROGRESS_EVERY == 0 {
            eprintln!("exported {count} entries");
        }
    }
    out.finish()?;
    Ok((count, tree))
}
