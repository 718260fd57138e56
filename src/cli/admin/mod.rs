//! `puente admin`: the exchange's certificate authority kept in a directory (create it, issue,
//! list and revoke certificates, sign and publish revocation lists) and the agency directory,
//! managed over `AdminService` with an administrator's certificate.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use time::OffsetDateTime;

mod agency;
mod ca;
mod cert;
mod crl;

use crate::pb::v1::AgencyStatus;
use crate::pki::authority::Authority;
use crate::pki::{check_person_name, PkiError};
use agency::{
    agency_add, agency_list, agency_set_status, agency_update, AgencyAddArgs, AgencyIdArgs,
    AgencyListArgs, AgencyUpdateArgs,
};
use ca::{ca_init, CaInitArgs};
use cert::{cert_issue, cert_list, cert_revoke, IssueArgs, ListArgs, RevokeArgs};
use crl::{crl, CrlArgs};

/// Environment variable read for the CA key's passphrase when no passphrase flag is given.
const PASSPHRASE_ENV: &str = "PUENTE_CA_PASSPHRASE";
/// A certificate this close to its end (or closer) is listed as expiring soon.
const EXPIRES_SOON_DAYS: i64 = 30;
const SECONDS_PER_DAY: i64 = 86_400;

/// Flags of `puente admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

/// The subcommands of `puente admin`.
#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create the exchange's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue, list and revoke certificates of a CA directory.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Sign a certificate revocation list, and with --publish put it in force on the server.
    Crl(CrlArgs),
    /// Register, change, suspend and resume agencies (needs an administrator's certificate).
    #[command(subcommand)]
    Agency(AgencyCommand),
}

/// The subcommands of `puente admin ca`.
#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA directory: ca.pem, ca.key (mode 0600) and ledger.json.
    ///
    /// Give ca.pem to the server as --client-ca and to clients as --ca. Keep ca.key offline and
    /// encrypt it with --passphrase-file or --passphrase-env. An existing CA is never
    /// overwritten.
    #[command(after_help = "Example:\n  puente admin ca init --dir ca --passphrase-file ca.pass")]
    Init(CaInitArgs),
}

/// The subcommands of `puente admin cert`.
#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a certificate for an agency, an auditor, an administrator or the server.
    ///
    /// Writes PREFIX.pem and the new private key PREFIX.key (mode 0600); with --csr the key
    /// stays with the requester and only PREFIX.pem is written. Only the CSR's public key is
    /// used: the identity is the one given here. Existing files are never overwritten.
    #[command(after_help = "Examples:\n  \
        puente admin cert issue --dir ca --server exchange.example.org --out server\n  \
        puente admin cert issue --dir ca --agency ES-CNP --out es-cnp\n  \
        puente admin cert issue --dir ca --agency CO-DIJIN --csr co-dijin.csr --out co-dijin")]
    Issue(IssueArgs),
    /// List the certificates the CA issued, with their expiry and revocation.
    ///
    /// Reads only ledger.json: no passphrase is needed.
    List(ListArgs),
    /// Record certificates as revoked (then sign and publish a CRL to enforce it).
    ///
    /// Revoking is recorded in the CA's ledger only. The exchange refuses the certificates
    /// once it has a CRL listing them: run `puente admin crl --dir DIR --out FILE --publish`.
    #[command(after_help = "Examples:\n  \
        puente admin cert revoke --dir ca --agency ES-CNP --reason key-compromise\n  \
        puente admin cert revoke --dir ca --serial 5a0c...")]
    Revoke(RevokeArgs),
}

/// The subcommands of `puente admin agency`.
#[derive(Debug, Subcommand)]
enum AgencyCommand {
    /// Register an agency in the directory.
    #[command(after_help = "Example:\n  \
        puente admin agency add --profile admin --id PT-PJ --name 'Polícia Judiciária' --country PT --region eu")]
    Add(AgencyAddArgs),
    /// Change an agency's name, country or region; other fields and its status are kept.
    Update(AgencyUpdateArgs),
    /// Suspend an agency: its systems are refused and nobody can send to it.
    Suspend(AgencyIdArgs),
    /// Resume a suspended agency.
    Resume(AgencyIdArgs),
    /// List every registered agency, suspended ones included.
    List(AgencyListArgs),
}

// === Flags ===

/// Where the CA key's passphrase comes from.
#[derive(Debug, Args)]
struct PassphraseArgs {
    /// File holding the CA key's passphrase (one trailing newline is ignored).
    /// [default: the environment variable PUENTE_CA_PASSPHRASE, if set]
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_env")]
    passphrase_file: Option<PathBuf>,
    /// Name of the environment variable holding the CA key's passphrase.
    #[arg(long, value_name = "VAR")]
    passphrase_env: Option<String>,
}

fn person_name(name: &str) -> Result<String, PkiError> {
    check_person_name(name)?;
    Ok(name.to_string())
}

fn country_code(code: &str) -> Result<String, String> {
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err("use an ISO 3166-1 alpha-2 code such as ES or CO (XX for international)".into())
    }
}

fn hex_serial(serial: &str) -> Result<String, String> {
    let digits = serial.chars().filter(|c| !matches!(c, ':' | ' ' | '-'));
    let mut any = false;
    for c in digits {
        if !c.is_ascii_hexdigit() {
            return Err(
                "a serial is hexadecimal, as `puente admin cert list --dir DIR` shows it".into(),
            );
        }
        any = true;
    }
    if any {
        Ok(serial.to_string())
    } else {
        Err("the serial is empty".into())
    }
}

// === Passphrase ===

/// A CA key passphrase; never printed, not even by `Debug`.
struct Passphrase(Vec<u8>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl PassphraseArgs {
    /// The passphrase from --passphrase-file, --passphrase-env or PUENTE_CA_PASSPHRASE, in
    /// that order; `None` if none is given.
    fn read(&self) -> anyhow::Result<Option<Passphrase>> {
        if let Some(path) = &self.passphrase_file {
            let mut bytes = std::fs::read(path)
                .with_context(|| format!("cannot read --passphrase-file {}", path.display()))?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            if bytes.is_empty() {
                bail!("--passphrase-file {} is empty", path.display());
            }
            return Ok(Some(Passphrase(bytes)));
        }
        let (var, explicit) = match &self.passphrase_env {
            Some(var) => (var.as_str(), true),
            None => (PASSPHRASE_ENV, false),
        };
        match std::env::var_os(var) {
            Some(value) if value.is_empty() => {
                bail!("the environment variable {var} (the CA key's passphrase) is empty")
            }
            Some(value) => Ok(Some(Passphrase(value.into_encoded_bytes()))),
            None if explicit => bail!(
                "--passphrase-env {var}: the environment variable {var} is not set; export it first"
            ),
            None => Ok(None),
        }
    }
}

/// Opens the CA directory with the passphrase the flags give.
fn open_authority(dir: &Path, passphrase: &PassphraseArgs) -> anyhow::Result<Authority> {
    let passphrase = passphrase.read()?;
    Authority::open(dir, passphrase.as_ref().map(|p| p.0.as_slice()))
        .with_context(|| format!("cannot open the CA in {}", dir.display()))
}

// === Commands ===

/// Runs `puente admin ...`.
///
/// # Errors
/// Whatever the subcommand failed with, worded for the person at the terminal.
pub(super) async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Ca(CaCommand::Init(args)) => ca_init(&args),
        AdminCommand::Cert(CertCommand::Issue(args)) => cert_issue(&args),
        AdminCommand::Cert(CertCommand::List(args)) => cert_list(&args),
        AdminCommand::Cert(CertCommand::Revoke(args)) => cert_revoke(&args),
        AdminCommand::Crl(args) => crl(&args).await,
        AdminCommand::Agency(AgencyCommand::Add(args)) => agency_add(args).await,
        AdminCommand::Agency(AgencyCommand::Update(args)) => agency_update(args).await,
        AdminCommand::Agency(AgencyCommand::Suspend(args)) => {
            agency_set_status(args, AgencyStatus::Suspended).await
        }
        AdminCommand::Agency(AgencyCommand::Resume(args)) => {
            agency_set_status(args, AgencyStatus::Active).await
        }
        AdminCommand::Agency(AgencyCommand::List(args)) => agency_list(args).await,
    }
}

/// PREFIX + extension, e.g. `certs/es-cnp` + `.pem`.
fn prefixed(prefix: &Path, extension: &str) -> PathBuf {
    let mut path = prefix.as_os_str().to_os_string();
    path.push(extension);
    PathBuf::from(path)
}

/// Checks that `--out PREFIX` can take the files and that none of them exists yet.
fn check_outputs(prefix: &Path, outputs: &[&Path]) -> anyhow::Result<()> {
    let example = "`--out certs/es-cnp` writes certs/es-cnp.pem and certs/es-cnp.key";
    let text = prefix.to_string_lossy();
    if text.is_empty() || text.ends_with(std::path::MAIN_SEPARATOR) || prefix.is_dir() {
        bail!("--out takes a file prefix, not a directory: {example}");
    }
    if matches!(
        prefix.extension().and_then(|e| e.to_str()),
        Some("pem" | "key" | "crt")
    ) {
        bail!("--out takes a prefix without extension: {example}");
    }
    for path in outputs {
        if path.exists() {
            bail!(
                "{} already exists: refusing to overwrite it (choose another --out or move the old file away)",
                path.display()
            );
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !parent.as_os_str().is_empty() && !parent.is_dir() {
            bail!(
                "directory {} does not exist: create it first",
                parent.display()
            );
        }
    }
    Ok(())
}

// === Helpers ===

/// RFC 3339 in whole seconds.
fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The end of validity of a PEM certificate.
fn certificate_not_after(cert_pem: &str) -> anyhow::Result<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .context("the CA certificate is not PEM")?;
    let cert = pem
        .parse_x509()
        .context("the CA certificate does not parse")?;
    Ok(cert.validity().not_after.to_datetime())
}

/// How many certificates a PEM CRL revokes, and its next update.
fn crl_summary(crl_pem: &str) -> anyhow::Result<(usize, Option<OffsetDateTime>)> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(crl_pem.as_bytes()).context("the CRL is not PEM")?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&pem.contents).context("the signed CRL does not parse")?;
    Ok((
        crl.iter_revoked_certificates().count(),
        crl.next_update().map(|t| t.to_datetime()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        crate::cli::Cli::try_parse_from(std::iter::once("puente").chain(args.iter().copied()))
    }

    #[test]
    fn issue_takes_exactly_one_subject() {
        let base = ["admin", "cert", "issue", "--dir", "ca", "--out", "x"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&["--agency", "ES-CNP"]).is_ok());
        assert!(with(&["--server", "localhost", "--server", "127.0.0.1"]).is_ok());
        assert!(with(&[]).is_err());
        assert!(with(&["--agency", "ES-CNP", "--admin", "root"]).is_err());
        assert!(with(&["--agency", "es-cnp"]).is_err());
        assert!(with(&["--admin", "a/b"]).is_err());
        assert!(with(&["--agency", "ES-CNP", "--days", "826"]).is_err());
        assert!(with(&["--agency", "ES-CNP", "--days", "0"]).is_err());
        assert!(with(&[
            "--agency",
            "ES-CNP",
            "--passphrase-file",
            "f",
            "--passphrase-env",
            "V"
        ])
        .is_err());
    }

    #[test]
    fn revoke_and_update_need_something_to_do() {
        assert!(parse(&["admin", "cert", "revoke", "--dir", "ca"]).is_err());
        assert!(parse(&["admin", "cert", "revoke", "--dir", "ca", "--serial", "xyz"]).is_err());
        assert!(parse(&["admin", "cert", "revoke", "--dir", "ca", "--serial", "0A:1b"]).is_ok());
        assert!(parse(&[
            "admin", "cert", "revoke", "--dir", "ca", "--agency", "ES-CNP", "--reason", "bored"
        ])
        .is_err());
        assert!(parse(&["admin", "agency", "update", "--id", "ES-CNP"]).is_err());
        assert!(parse(&[
            "admin",
            "agency",
            "update",
            "--id",
            "ES-CNP",
            "--country",
            "es",
            "--region",
            "eu"
        ])
        .is_ok());
    }

    #[test]
    fn passphrase_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        for (contents, expected) in [
            (&b"secret\n"[..], &b"secret"[..]),
            (b"secret\r\n", b"secret"),
            (b"secret\n\n", b"secret\n"),
            (b"secret", b"secret"),
        ] {
            std::fs::write(&path, contents).unwrap();
            let args = PassphraseArgs {
                passphrase_file: Some(path.clone()),
                passphrase_env: None,
            };
            assert_eq!(args.read().unwrap().unwrap().0, expected);
        }
        std::fs::write(&path, b"\n").unwrap();
        let args = PassphraseArgs {
            passphrase_file: Some(path),
            passphrase_env: None,
        };
        assert!(args.read().is_err());
        assert_eq!(
            format!("{:?}", Passphrase(b"secret".to_vec())),
            "Passphrase(<redacted>)"
        );
    }
}
