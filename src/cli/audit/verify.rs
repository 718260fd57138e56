//! `puente audit verify`: checks the latest signed checkpoint against the pinned key and the
//! checkpoint verified last time (with `--full`, against every entry; with `--export`, an
//! export offline).

use std::path::{Path, PathBuf};

use clap::Args;

use super::{
    pin, pinned_note, rpc_error, warn_unpinned, ConnectArgs, Exchange, PinArgs, PROGRESS_EVERY,
};
use crate::audit::export::ExportReader;
use crate::audit::merkle::{self, MemoryTree};
use crate::audit::note::Checkpoint;
use crate::audit::verify::{
    self as audit_verify, KeySource, Locator, Rebuild, VerifierState, VerifyError,
};
use crate::pb::v1::ListAuditEntriesRequest;

/// Flags of `puente audit verify`.
#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    pub(super) connect: ConnectArgs,
    #[command(flatten)]
    pub(super) pin: PinArgs,
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
    pub(super) export: Option<PathBuf>,
}

pub(super) async fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let state = VerifierState::load(&args.pin.state)?;
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
        let old_root = state.root()?;
        audit_verify::check_not_shrunk(state, &args.pin.state, &checkpoint)?;
        let proof = exchange
            .consistency_proof(state.size, checkpoint.size)
            .await?;
        audit_verify::check_grew(state.size, &old_root, &checkpoint, &proof)?;
        println!(
            "consistent with the checkpoint of {} entries verified before",
            state.size
        );
    }

    if args.full {
        let tree = rebuild(&mut exchange, checkpoint.size).await?;
        if merkle::root(&tree, checkpoint.size)? != checkpoint.root {
            let index = locate(&mut exchange, &tree, &checkpoint).await?;
            return Err(VerifyError::AlteredServed { index }.into());
        }
        println!(
            "all {} entries rebuild the checkpoint's root",
            checkpoint.size
        );
    }

    VerifierState {
        origin: checkpoint.origin.clone(),
        verifier_key: pinned.key.clone(),
        size: checkpoint.size,
        root: hex::encode(checkpoint.root),
        note,
    }
    .save(&args.pin.state)?;
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

/// Fetches entries `0..size` and hashes them into a tree.
async fn rebuild(exchange: &mut Exchange, size: u64) -> anyhow::Result<MemoryTree> {
    let mut stream = exchange
        .entries(ListAuditEntriesRequest {
            start_index: 0,
            limit: size,
            ..Default::default()
        })
        .await?;
    let mut rebuild = Rebuild::new(size);
    while !rebuild.is_complete() {
        let Some(entry) = stream.message().await.map_err(rpc_error)? else {
            break;
        };
        rebuild.push(entry.index, &entry.leaf)?;
        if rebuild.len() % PROGRESS_EVERY == 0 {
            eprintln!("fetched {} of {size} entries", rebuild.len());
        }
    }
    Ok(rebuild.finish()?)
}

/// The first entry of `tree` that is not in `checkpoint`, whose root `tree` does not give,
/// found with the exchange's proofs (see [`Locator`]).
async fn locate(
    exchange: &mut Exchange,
    tree: &MemoryTree,
    checkpoint: &Checkpoint,
) -> anyhow::Result<u64> {
    let n = checkpoint.size;
    eprintln!("the entries do not give the checkpoint's root; locating the first altered entry");
    let mut locator = Locator::new(tree, checkpoint);
    while let Some(m) = locator.probe() {
        let proof = exchange.consistency_proof(m, n).await?;
        locator.record(m, &proof)?;
    }
    let proof = exchange.inclusion_proof(locator.candidate(), n).await?;
    Ok(locator.conclude(&proof)?)
}

// === verify --export ===

pub(super) fn verify_export(path: &Path, pin_args: &PinArgs) -> anyhow::Result<()> {
    let reader = ExportReader::open(path)?;
    let state = VerifierState::load(&pin_args.state)?;
    let pinned = pin(pin_args, state.as_ref(), &reader.header.verifier_key)?;
    let check =
        crate::audit::export::verify_export(reader, &pinned, PROGRESS_EVERY, |read, size| {
            eprintln!("read {read} of {size} entries");
        })?;
    if pinned.source == KeySource::Unpinned {
        warn_unpinned(
            &pinned.key,
            "the export itself",
            "So this only shows that the file agrees with itself: whoever could rewrite the log could re-sign it with another key. Pass --verifier-key with the key you pinned or the exchange's operators publish.",
        );
    }
    check.conclude()?;
    println!(
        "OK: all {} entries of {} give the root of the checkpoint signed by {}{}",
        check.checkpoint.size,
        path.display(),
        pinned.key,
        pinned_note(pinned.source)
    );
    Ok(())
}
