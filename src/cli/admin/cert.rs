//! `puente admin cert`: issues, lists and revokes the certificates of a CA directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};
use serde::Serialize;
use time::OffsetDateTime;

use super::{
    certificate_not_after, check_outputs, hex_serial, open_authority, person_name, prefixed,
    rfc3339, PassphraseArgs, EXPIRES_SOON_DAYS, SECONDS_PER_DAY,
};
use crate::identity::AgencyId;
use crate::pki::authority::{reason_name, Ledger, LedgerEntry, Selector, REASONS};
use crate::pki::{csr_public_key, write_private, write_public, PkiError, Subject, MAX_LEAF_DAYS};

/// Flags of `puente admin cert issue`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("subject")
        .required(true)
        .args(["agency", "auditor", "admin", "server"])
))]
pub(super) struct IssueArgs {
    /// The CA directory (see `puente admin ca init`).
    #[arg(long)]
    dir: PathBuf,
    /// Issue a client certificate for this agency's systems, e.g. ES-CNP.
    #[arg(long, value_name = "ID", value_parser = AgencyId::parse)]
    agency: Option<AgencyId>,
    /// Issue a client certificate for this auditor.
    #[arg(long, value_name = "NAME", value_parser = person_name)]
    auditor: Option<String>,
    /// Issue a client certificate for this administrator.
    #[arg(long, value_name = "NAME", value_parser = person_name)]
    admin: Option<String>,
    /// Issue the exchange's server certificate for this DNS name or IP address. Repeat for
    /// several.
    #[arg(long = "server", value_name = "HOST")]
    server: Vec<String>,
    /// Output prefix: writes PREFIX.pem and PREFIX.key.
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// Validity in days, at most 825.
    #[arg(
        long,
        default_value_t = 365,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LEAF_DAYS))
    )]
    days: u32,
    /// Certify the public key of this PEM certificate signing request instead of generating a
    /// key. Nothing else of the CSR is used.
    #[arg(long, value_name = "FILE")]
    csr: Option<PathBuf>,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

/// Flags of `puente admin cert list`.
#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// The CA directory.
    #[arg(long)]
    dir: PathBuf,
    /// Print one JSON object per certificate and line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Flags of `puente admin cert revoke`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["serial", "agency"])))]
pub(super) struct RevokeArgs {
    /// The CA directory.
    #[arg(long)]
    dir: PathBuf,
    /// Revoke the certificate with this serial number (hex, as `puente admin cert list` shows).
    #[arg(long, value_name = "HEX", value_parser = hex_serial)]
    serial: Option<String>,
    /// Revoke every unrevoked certificate of this agency.
    #[arg(long, value_name = "ID", value_parser = AgencyId::parse)]
    agency: Option<AgencyId>,
    /// Why (recorded in the CRL).
    #[arg(
        long,
        default_value = "unspecified",
        value_parser = clap::builder::PossibleValuesParser::new(REASONS.map(|(name, _)| name))
    )]
    reason: String,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

pub(super) fn cert_issue(args: &IssueArgs) -> anyhow::Result<()> {
    let subject = match (&args.agency, &args.auditor, &args.admin) {
        (Some(id), _, _) => Subject::Agency(id.clone()),
        (_, Some(name), _) => Subject::Auditor(name.clone()),
        (_, _, Some(name)) => Subject::Admin(name.clone()),
        (None, None, None) => Subject::Server(args.server.clone()),
    };
    let cert_path = prefixed(&args.out, ".pem");
    let key_path = prefixed(&args.out, ".key");
    // With a CSR an existing PREFIX.key is most likely the requester's own key: left alone.
    let outputs: Vec<&Path> = match args.csr {
        Some(_) => vec![&cert_path],
        None => vec![&cert_path, &key_path],
    };
    check_outputs(&args.out, &outputs)?;
    let public_key = match &args.csr {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --csr {}", path.display()))?;
            Some(csr_public_key(&pem).with_context(|| format!("--csr {}", path.display()))?)
        }
        None => None,
    };

    let mut authority = open_authority(&args.dir, &args.passphrase)?;
    let ca_not_after = certificate_not_after(authority.ca().cert_pem())?;
    let wanted = OffsetDateTime::now_utc() + time::Duration::days(i64::from(args.days));
    if wanted > ca_not_after {
        bail!(
            "the CA certificate expires on {}, before the {} days asked for: choose fewer --days, or a new CA",
            ca_not_after.date(),
            args.days
        );
    }
    let identity = subject.identity(&authority.ledger().trust_domain);
    let issued = authority
        .issue(&subject, args.days, public_key.as_ref())
        .context("cannot issue the certificate")?;
    let written = (|| -> Result<(), PkiError> {
        if let Some(key_pem) = &issued.key_pem {
            write_private(&key_path, key_pem)?;
        }
        write_public(&cert_path, &issued.cert_pem)
    })();
    written.with_context(|| {
        format!(
            "certificate {} was issued and recorded but could not be saved; revoke it with `puente admin cert revoke --dir {} --serial {}` and issue again",
            issued.serial,
            args.dir.display(),
            issued.serial
        )
    })?;
    println!("serial:    {}", issued.serial);
    println!("identity:  {identity}");
    println!("not after: {}", rfc3339(issued.not_after));
    println!("wrote:     {}", cert_path.display());
    if issued.key_pem.is_some() {
        println!("           {} (private key, mode 0600)", key_path.display());
    }
    Ok(())
}

/// How `puente admin cert list` describes one certificate.
#[derive(Debug, Serialize)]
pub(super) struct CertRow<'a> {
    serial: &'a str,
    identity: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agency_id: Option<&'a str>,
    /// RFC 3339.
    not_after: String,
    /// Whole days until `not_after`, rounded up; zero or less once expired.
    days_left: i64,
    /// `valid`, `expires-soon`, `expired` or `revoked`.
    status: &'static str,
    revoked: bool,
    revocation_reason: Option<&'static str>,
    expires_soon: bool,
    from_csr: bool,
}

impl<'a> CertRow<'a> {
    fn new(entry: &'a LedgerEntry, now: i64) -> CertRow<'a> {
        let remaining = entry.not_after - now;
        let days_left = (remaining + SECONDS_PER_DAY - 1).div_euclid(SECONDS_PER_DAY);
        let revoked = entry.revoked_at.is_some();
        let expired = remaining <= 0;
        let expires_soon = !revoked && !expired && remaining <= EXPIRES_SOON_DAYS * SECONDS_PER_DAY;
        let status = if revoked {
            "revoked"
        } else if expired {
            "expired"
        } else if expires_soon {
            "expires-soon"
        } else {
            "valid"
        };
        CertRow {
            serial: &entry.serial,
            identity: &entry.identity,
            agency_id: entry.agency_id.as_deref(),
            not_after: OffsetDateTime::from_unix_timestamp(entry.not_after)
                .map_or_else(|_| entry.not_after.to_string(), rfc3339),
            days_left,
            status,
            revoked,
            revocation_reason: revoked.then(|| reason_name(entry.revocation_reason.unwrap_or(0))),
            expires_soon,
            from_csr: entry.from_csr,
        }
    }

    /// The STATUS column.
    fn status_column(&self) -> String {
        match (self.status, self.revocation_reason) {
            ("revoked", Some(reason)) => format!("revoked ({reason})"),
            ("expires-soon", _) => "EXPIRES SOON".into(),
            (status, _) => status.into(),
        }
    }
}

pub(super) fn cert_list(args: &ListArgs) -> anyhow::Result<()> {
    let path = args.dir.join("ledger.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (is {} a CA directory? create one with `puente admin ca init --dir {}`)",
            path.display(),
            args.dir.display(),
            args.dir.display()
        )
    })?;
    let ledger: Ledger = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a CA ledger", path.display()))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let rows: Vec<CertRow<'_>> = ledger
        .certificates
        .iter()
        .map(|entry| CertRow::new(entry, now))
        .collect();
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        println!(
            "{:<40}  {:<48}  {:<10}  {:>9}  STATUS",
            "SERIAL", "IDENTITY", "NOT AFTER", "DAYS LEFT"
        );
        for row in &rows {
            let date = row.not_after.get(..10).unwrap_or(&row.not_after);
            println!(
                "{:<40}  {:<48}  {:<10}  {:>9}  {}",
                row.serial,
                row.identity,
                date,
                row.days_left,
                row.status_column()
            );
        }
    }
    let revoked = rows.iter().filter(|r| r.revoked).count();
    let soon = rows.iter().filter(|r| r.expires_soon).count();
    eprintln!(
        "{} certificate(s): {revoked} revoked, {soon} expiring within {EXPIRES_SOON_DAYS} days; last CRL number {}",
        rows.len(),
        ledger.crl_number
    );
    Ok(())
}

pub(super) fn cert_revoke(args: &RevokeArgs) -> anyhow::Result<()> {
    let selector = match (&args.serial, &args.agency) {
        (Some(serial), _) => Selector::Serial(serial.clone()),
        (None, Some(id)) => Selector::Agency(id.to_string()),
        (None, None) => bail!("say what to revoke with --serial or --agency"),
    };
    let reason = REASONS
        .iter()
        .find(|(name, _)| *name == args.reason)
        .map(|(_, reason)| *reason)
        .with_context(|| format!("unknown --reason {}", args.reason))?;
    let mut authority = open_authority(&args.dir, &args.passphrase)?;
    let revoked = authority
        .revoke(&selector, reason)
        .context("cannot revoke")?;
    if revoked.is_empty() {
        println!("nothing to do: the matching certificates were already revoked");
    }
    for entry in &revoked {
        println!(
            "revoked {}  {}  ({})",
            entry.serial, entry.identity, args.reason
        );
    }
    eprintln!(
        "recorded in {}; the exchange enforces it once it has a CRL listing it:\n  puente admin crl --dir {} --out FILE --publish (with an administrator's --profile or --addr/--cert/--key/--ca)",
        args.dir.join("ledger.json").display(),
        args.dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_round_up_and_status_follows_revocation_then_expiry() {
        let entry = |not_after: i64, revoked: bool| LedgerEntry {
            serial: "01".into(),
            identity: "spiffe://puente.local/agency/ES-CNP".into(),
            agency_id: Some("ES-CNP".into()),
            issued_at: 0,
            not_after,
            from_csr: false,
            revoked_at: revoked.then_some(1),
            revocation_reason: revoked.then_some(1),
        };
        let now = 1_000_000_000;
        let cases = [
            (now + 400 * SECONDS_PER_DAY, false, 400, "valid", "valid"),
            (
                now + 10 * SECONDS_PER_DAY - 5,
                false,
                10,
                "expires-soon",
                "EXPIRES SOON",
            ),
            (
                now + 30 * SECONDS_PER_DAY,
                false,
                30,
                "expires-soon",
                "EXPIRES SOON",
            ),
            (now - 1, false, 0, "expired", "expired"),
            (
                now + 10 * SECONDS_PER_DAY,
                true,
                10,
                "revoked",
                "revoked (key-compromise)",
            ),
        ];
        for (not_after, revoked, days, status, column) in cases {
            let entry = entry(not_after, revoked);
            let row = CertRow::new(&entry, now);
            assert_eq!(row.days_left, days, "{status}");
            assert_eq!(row.status, status);
            assert_eq!(row.status_column(), column);
            assert_eq!(row.expires_soon, status == "expires-soon");
        }
    }
}
