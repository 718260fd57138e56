//! `puente admin crl`: signs a certificate revocation list and, with `--publish`, puts it in
//! force on the server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use time::OffsetDateTime;
use tonic::Code;

use super::agency::{admin_client, admin_rpc_error};
use super::{crl_summary, open_authority, rfc3339, PassphraseArgs};
use crate::cli::{rpc_error_with_hint, ConnectArgs};
use crate::pb::v1::PublishRevocationListRequest;
use crate::pki::authority::Authority;
use crate::pki::write_public;

/// Flags of `puente admin crl`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    puente admin crl --dir ca --out crl.pem --publish --profile admin\n  \
    puente admin crl --dir ca --out crl.pem --publish --addr exchange.example.org:50051 \\\n      \
    --cert admin.pem --key admin.key --ca ca/ca.pem --server-name exchange.example.org")]
pub(super) struct CrlArgs {
    /// The CA directory.
    #[arg(long)]
    dir: PathBuf,
    /// File to write the CRL to (PEM), replaced atomically; a server started with
    /// `--crl FILE` picks it up.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Days until the CRL's next update: after it, the server warns that it is stale.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
    next_update_days: u32,
    /// Also send it to the server (AdminService.PublishRevocationList), which applies it at once
    /// and keeps it across restarts. Needs an administrator's certificate: see the connection
    /// flags.
    #[arg(long)]
    publish: bool,
    /// With --publish: apply the CRL even though it omits revoked certificates that may not
    /// have expired, making them valid again (refused otherwise, as a CRL from an old copy of
    /// the CA directory is). Needs --reason; recorded in the audit log.
    #[arg(long, requires_all = ["publish", "reason"])]
    allow_unrevoke: bool,
    /// Why revoked certificates become valid again (with --allow-unrevoke).
    #[arg(long, requires = "allow_unrevoke", value_name = "TEXT")]
    reason: Option<String>,
    #[command(flatten)]
    passphrase: PassphraseArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) async fn crl(args: &CrlArgs) -> anyhow::Result<()> {
    let mut authority = open_authority(&args.dir, &args.passphrase)?;
    let in_force = authority.ledger().crl_number;
    let (pem, number) = authority
        .sign_crl(args.next_update_days)
        .context("cannot sign the CRL")?;
    let (revoked_count, next_update) = crl_summary(&pem)?;
    let next_update = next_update.map_or_else(|| "-".into(), rfc3339);
    if !args.publish {
        // Replaced atomically: a server watching the file (`--crl`) never reads half of it.
        write_public(&args.out, &pem)?;
        record_crl(&mut authority, number, &args.dir)?;
        println!(
            "CRL number {number} written to {}: {revoked_count} revoked certificate(s), next update by {next_update}",
            args.out.display()
        );
        eprintln!(
            "not published: run this command again with --publish and an administrator's certificate, or start the server with --crl {}",
            args.out.display()
        );
        return Ok(());
    }
    // Nothing is written and the ledger's CRL number stays until the server accepts the CRL:
    // a refused publication changes nothing, however often it is tried.
    let unpublished = |error: anyhow::Error| {
        error.context(format!(
            "CRL number {number} NOT published and not written to {}; {} still records CRL number {in_force} as the last in force",
            args.out.display(),
            args.dir.join("ledger.json").display()
        ))
    };
    let mut client = admin_client(&args.connect).await.map_err(unpublished)?;
    let refused_hint = format!(
        "the server enforces revocations or a CRL number that {dir} does not know: {dir} is most likely an old copy of the CA directory. Do not publish from it: restore the current CA directory (its ledger.json records every revocation) and sign the CRL there. To make revoked certificates valid on purpose, add --allow-unrevoke --reason TEXT (audited).",
        dir = args.dir.display()
    );
    let response = client
        .publish_revocation_list(PublishRevocationListRequest {
            crl_pem: pem.clone(),
            allow_unrevoke: args.allow_unrevoke,
            unrevoke_reason: args.reason.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| {
            let hint = match status.code() {
                Code::FailedPrecondition => Some(refused_hint.as_str()),
                Code::InvalidArgument => Some("the server does not trust the CA that signed it: is its --client-ca this CA's ca.pem?"),
                _ => None,
            };
            unpublished(match hint {
                Some(_) => rpc_error_with_hint(status, hint),
                None => admin_rpc_error(status),
            })
        })?
        .into_inner();
    write_public(&args.out, &pem)?;
    record_crl(&mut authority, number, &args.dir)?;
    let next_update = response
        .next_update
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .map_or_else(|| "-".into(), rfc3339);
    println!(
        "published: the server enforces CRL number {} ({} revoked certificate(s)), next update by {next_update}; written to {}",
        response.crl_number,
        response.revoked_count,
        args.out.display()
    );
    Ok(())
}

/// Records CRL `number` as in force in the ledger of `dir`.
pub(super) fn record_crl(authority: &mut Authority, number: u64, dir: &Path) -> anyhow::Result<()> {
    authority.record_crl(number).with_context(|| {
        format!(
            "CRL number {number} is in force but {} could not record it; the next CRL will carry the same number and be refused until it does",
            dir.join("ledger.json").display()
        )
    })
}
