//! `puente admin ca`: creates the exchange's certificate authority in a directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{certificate_not_after, rfc3339, PassphraseArgs};
use crate::pki::authority::Authority;

/// Flags of `puente admin ca init`.
#[derive(Debug, Args)]
pub(super) struct CaInitArgs {
    /// Directory to create the CA in (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// SPIFFE trust domain of the identities this CA issues; must match the server's.
    #[arg(long, default_value = crate::config::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Validity of the CA certificate, in days (at most 100 years).
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    days: u32,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

pub(super) fn ca_init(args: &CaInitArgs) -> anyhow::Result<()> {
    let passphrase = args.passphrase.read()?;
    let authority = Authority::init(
        &args.dir,
        &args.trust_domain,
        args.days,
        passphrase.as_ref().map(|p| p.0.as_slice()),
    )
    .with_context(|| format!("cannot create a CA in {}", args.dir.display()))?;
    let not_after = certificate_not_after(authority.ca().cert_pem())?;
    let files = [
        (
            args.dir.join("ca.pem"),
            format!(
                "CA certificate, valid until {}: the server's --client-ca and the clients' --ca",
                rfc3339(not_after)
            ),
        ),
        (
            args.dir.join("ca.key"),
            format!(
                "CA private key, mode 0600, {}",
                if passphrase.is_some() {
                    "encrypted with the passphrase"
                } else {
                    "NOT encrypted"
                }
            ),
        ),
        (
            args.dir.join("ledger.json"),
            "record of the certificates issued and revoked".to_string(),
        ),
    ];
    println!(
        "created a CA for trust domain {} in {}",
        args.trust_domain,
        args.dir.display()
    );
    let width = files
        .iter()
        .map(|(path, _)| path.display().to_string().len())
        .max()
        .unwrap_or(0);
    for (path, what) in &files {
        println!("  {:<width$}  {what}", path.display().to_string());
    }
    if passphrase.is_none() {
        eprintln!("warning: the CA key is not encrypted; anyone who can read it can issue certificates (encrypt it with --passphrase-file or --passphrase-env when you create a CA)");
    }
    Ok(())
}
