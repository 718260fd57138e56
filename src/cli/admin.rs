//! `puente admin`: the exchange's certificate authority kept in a directory (create it, issue,
//! list and revoke certificates, sign and publish revocation lists) and the agency directory,
//! managed over `AdminService` with an administrator's certificate.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde::Serialize;
use time::OffsetDateTime;
use tonic::transport::Channel;
use tonic::Code;

use super::{print_agencies, rpc_error_with_hint, ConnectArgs};
use crate::identity::AgencyId;
use crate::pb::v1::admin_service_client::AdminServiceClient;
use crate::pb::v1::{
    AdminServiceListAgenciesRequest, Agency, AgencyStatus, PublishRevocationListRequest, Region,
    RegisterAgencyRequest, UpdateAgencyRequest,
};
use crate::pki::authority::{reason_name, Authority, Ledger, LedgerEntry, Selector, REASONS};
use crate::pki::{
    check_person_name, csr_public_key, write_private, write_public, PkiError, Subject,
    MAX_LEAF_DAYS,
};

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

/// Flags of `puente admin ca init`.
#[derive(Debug, Args)]
struct CaInitArgs {
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

/// Flags of `puente admin cert issue`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("subject")
        .required(true)
        .args(["agency", "auditor", "admin", "server"])
))]
struct IssueArgs {
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
struct ListArgs {
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
struct RevokeArgs {
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

/// Flags of `puente admin crl`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    puente admin crl --dir ca --out crl.pem --publish --profile admin\n  \
    puente admin crl --dir ca --out crl.pem --publish --addr exchange.example.org:50051 \\\n      \
    --cert admin.pem --key admin.key --ca ca/ca.pem --server-name exchange.example.org")]
struct CrlArgs {
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

/// Region of an agency, as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RegionArg {
    /// A European Union member state or EU body.
    Eu,
    /// A Latin American or Caribbean state.
    Celac,
    /// An international organisation.
    International,
}

impl From<RegionArg> for Region {
    fn from(region: RegionArg) -> Region {
        match region {
            RegionArg::Eu => Region::Eu,
            RegionArg::Celac => Region::Celac,
            RegionArg::International => Region::International,
        }
    }
}

/// Flags of `puente admin agency add`.
#[derive(Debug, Args)]
struct AgencyAddArgs {
    /// Agency id: 2 to 32 of A-Z, 0-9 and '-', country code first (ES-CNP).
    #[arg(long, value_parser = AgencyId::parse)]
    id: AgencyId,
    /// Full name.
    #[arg(long)]
    name: String,
    /// ISO 3166-1 alpha-2 country code (ES, CO); XX for an international organisation.
    #[arg(long, value_parser = country_code)]
    country: String,
    /// Region whose recipients (`region:EU`...) include the agency.
    #[arg(long, value_enum)]
    region: RegionArg,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Flags of `puente admin agency update`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["name", "country", "region"])))]
struct AgencyUpdateArgs {
    /// The agency to change.
    #[arg(long, value_parser = AgencyId::parse)]
    id: AgencyId,
    /// New full name.
    #[arg(long)]
    name: Option<String>,
    /// New ISO 3166-1 alpha-2 country code.
    #[arg(long, value_parser = country_code)]
    country: Option<String>,
    /// New region.
    #[arg(long, value_enum)]
    region: Option<RegionArg>,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Flags of `puente admin agency suspend` and `resume`.
#[derive(Debug, Args)]
struct AgencyIdArgs {
    /// The agency id.
    #[arg(value_parser = AgencyId::parse)]
    id: AgencyId,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Flags of `puente admin agency list`.
#[derive(Debug, Args)]
struct AgencyListArgs {
    #[command(flatten)]
    connect: ConnectArgs,
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
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
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

fn ca_init(args: &CaInitArgs) -> anyhow::Result<()> {
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

fn cert_issue(args: &IssueArgs) -> anyhow::Result<()> {
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
struct CertRow<'a> {
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

fn cert_list(args: &ListArgs) -> anyhow::Result<()> {
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

fn cert_revoke(args: &RevokeArgs) -> anyhow::Result<()> {
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

async fn crl(args: &CrlArgs) -> anyhow::Result<()> {
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
fn record_crl(authority: &mut Authority, number: u64, dir: &Path) -> anyhow::Result<()> {
    authority.record_crl(number).with_context(|| {
        format!(
            "CRL number {number} is in force but {} could not record it; the next CRL will carry the same number and be refused until it does",
            dir.join("ledger.json").display()
        )
    })
}

// === Agencies ===

async fn admin_client(connect: &ConnectArgs) -> anyhow::Result<AdminServiceClient<Channel>> {
    if connect.profile.is_none()
        && (connect.cert.is_none() || connect.key.is_none() || connect.ca.is_none())
    {
        bail!("say which administrator you are: --profile admin after `puente serve --dev`, or --addr, --cert, --key and --ca with a certificate from `puente admin cert issue --admin NAME`");
    }
    Ok(AdminServiceClient::new(connect.connect().await?))
}

/// Turns a gRPC error of AdminService into a message for the terminal.
fn admin_rpc_error(status: tonic::Status) -> anyhow::Error {
    let hint = matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated).then_some(
        "this needs an administrator's certificate: --profile admin after `puente serve --dev`, or --cert/--key issued by `puente admin cert issue --admin NAME`",
    );
    rpc_error_with_hint(status, hint)
}

/// The directory's record of agency `id`.
async fn current_agency(
    client: &mut AdminServiceClient<Channel>,
    id: &AgencyId,
) -> anyhow::Result<Agency> {
    client
        .list_agencies(AdminServiceListAgenciesRequest {})
        .await
        .map_err(admin_rpc_error)?
        .into_inner()
        .agencies
        .into_iter()
        .find(|agency| agency.agency_id == id.as_str())
        .with_context(|| {
            format!("agency {id} is not registered (see `puente admin agency list`; register it with `puente admin agency add`)")
        })
}

async fn update(
    client: &mut AdminServiceClient<Channel>,
    agency: Agency,
) -> anyhow::Result<Agency> {
    client
        .update_agency(UpdateAgencyRequest {
            agency: Some(agency),
        })
        .await
        .map_err(admin_rpc_error)?
        .into_inner()
        .agency
        .context("the exchange answered without the agency")
}

async fn agency_add(args: AgencyAddArgs) -> anyhow::Result<()> {
    let mut client = admin_client(&args.connect).await?;
    let agency = client
        .register_agency(RegisterAgencyRequest {
            agency: Some(Agency {
                agency_id: args.id.to_string(),
                name: args.name,
                country: args.country,
                region: Region::from(args.region) as i32,
                status: AgencyStatus::Unspecified as i32,
            }),
        })
        .await
        .map_err(|status| {
            if status.code() == Code::AlreadyExists {
                anyhow::anyhow!(
                    "agency {} is already registered; change it with `puente admin agency update --id {}`",
                    args.id,
                    args.id
                )
            } else {
                admin_rpc_error(status)
            }
        })?
        .into_inner()
        .agency
        .context("the exchange answered without the agency")?;
    print_agencies(&[agency]);
    Ok(())
}

async fn agency_update(args: AgencyUpdateArgs) -> anyhow::Result<()> {
    let mut client = admin_client(&args.connect).await?;
    let mut agency = current_agency(&mut client, &args.id).await?;
    if let Some(name) = args.name {
        agency.name = name;
    }
    if let Some(country) = args.country {
        agency.country = country;
    }
    if let Some(region) = args.region {
        agency.region = Region::from(region) as i32;
    }
    // UNSPECIFIED keeps the status, so a concurrent suspend is not undone.
    agency.status = AgencyStatus::Unspecified as i32;
    let agency = update(&mut client, agency).await?;
    print_agencies(&[agency]);
    Ok(())
}

async fn agency_set_status(args: AgencyIdArgs, status: AgencyStatus) -> anyhow::Result<()> {
    let mut client = admin_client(&args.connect).await?;
    let mut agency = current_agency(&mut client, &args.id).await?;
    let word = match status {
        AgencyStatus::Suspended => "suspended",
        AgencyStatus::Active | AgencyStatus::Unspecified => "active",
    };
    if agency.status == status as i32 {
        println!("{} is already {word}", args.id);
        return Ok(());
    }
    agency.status = status as i32;
    let agency = update(&mut client, agency).await?;
    print_agencies(&[agency]);
    if status == AgencyStatus::Suspended {
        eprintln!(
            "{} is suspended: its systems are refused until `puente admin agency resume {}`",
            args.id, args.id
        );
    }
    Ok(())
}

async fn agency_list(args: AgencyListArgs) -> anyhow::Result<()> {
    let agencies = admin_client(&args.connect)
        .await?
        .list_agencies(AdminServiceListAgenciesRequest {})
        .await
        .map_err(admin_rpc_error)?
        .into_inner()
        .agencies;
    print_agencies(&agencies);
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
