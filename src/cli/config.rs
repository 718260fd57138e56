//! `puente config check`: validates a configuration and the files it names, and prints the
//! effective configuration. The configuration holds paths, never key bytes; of each key file
//! the check prints what it holds (key ids, certificate names and expiry), never the key.

use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::serve::ServeArgs;
use crate::config::Config;
use crate::store::DataKeys;
use crate::tls::{self, TlsFiles, TlsState};

/// Arguments of `puente config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration as `puente serve` would load it (the --config file, then the same
    /// flags and PUENTE_* environment variables), with every file it names, and print the
    /// effective configuration. Exits non-zero if the server could not start with it.
    Check(Box<ServeArgs>),
}

/// Runs `puente config`.
///
/// # Errors
/// The configuration or one of its files cannot be used; the message says which and why.
pub(super) fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let ConfigCommand::Check(serve) = args.command;
    let config = serve.config()?;
    let source = match serve.config_file() {
        Some(path) => format!("{}, then flags and PUENTE_* environment", path.display()),
        None => "defaults, then flags and PUENTE_* environment".to_string(),
    };
    println!("# effective configuration ({source})");
    print!(
        "{}",
        toml::to_string(&config).context("cannot print the configuration")?
    );
    println!();
    println!("# checks");
    config.validate()?;
    println!("ok    values are in range");
    for line in check_files(&config)? {
        println!("ok    {line}");
    }
    Ok(())
}

/// Loads every file the configuration names as the server would; one line per file.
fn check_files(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    check_tls_key_mode(&config.tls_key)?;
    TlsState::load(TlsFiles::of(config), &config.data_dir)
        .context("the TLS files cannot be used")?;
    lines.push(format!(
        "tls_cert {}: {}",
        config.tls_cert.display(),
        describe_certificate(&config.tls_cert)?
    ));
    lines.push(format!(
        "tls_key {}: a private key that matches tls_cert",
        config.tls_key.display()
    ));
    let cas = tls::load_certs(&config.client_ca, "client CA bundle")?;
    lines.push(format!(
        "client_ca {}: {} CA certificate(s)",
        config.client_ca.display(),
        cas.len()
    ));
    if let Some(crl) = &config.crl {
        lines.push(format!("crl {}: applies", crl.display()));
    }
    let keys = DataKeys::load(&config.data_key).context("the data keyring cannot be used")?;
    let ids: Vec<&str> = keys.ids().collect();
    lines.push(format!(
        "data_key {}: {} key(s) [{}], new bodies sealed with {} (keys not shown)",
        config.data_key.display(),
        ids.len(),
        ids.join(", "),
        keys.current_id()
    ));
    lines.push(describe_data_dir(&config.data_dir)?);
    Ok(lines)
}

/// Refuses a TLS private key others can read or its group change, as the data keyring is.
fn check_tls_key_mode(path: &Path) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("tls_key {}: cannot be read", path.display()))?;
    if crate::private_files::is_exposed(&metadata) {
        anyhow::bail!(
            "tls_key {0} is open to other users: run `chmod 600 {0}` (or 640, owned by root and the server's group)",
            path.display()
        );
    }
    Ok(())
}

/// Names and expiry of the first certificate of a PEM file.
fn describe_certificate(path: &Path) -> anyhow::Result<String> {
    let chain = tls::load_certs(path, "server certificate")?;
    let (_, cert) = X509Certificate::from_der(&chain[0])
        .map_err(|e| anyhow::anyhow!("{}: not an X.509 certificate: {e}", path.display()))?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let not_after = cert.validity().not_after;
    let days = (not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
    if days < 0 {
        anyhow::bail!(
            "{}: the server certificate expired on {not_after}; issue a new one with `puente admin cert issue --server ...`",
            path.display()
        );
    }
    Ok(format!(
        "certificate for {}, valid until {not_after} ({days} days)",
        names.join(", ")
    ))
}

/// Whether the data directory exists and can be written, or can be created.
fn describe_data_dir(dir: &Path) -> anyhow::Result<String> {
    if !dir.exists() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        anyhow::ensure!(
            parent.is_dir(),
            "data_dir {}: neither it nor its parent directory exists",
            dir.display()
        );
        return Ok(format!(
            "data_dir {}: does not exist yet; the server creates it",
            dir.display()
        ));
    }
    anyhow::ensure!(dir.is_dir(), "data_dir {}: not a directory", dir.display());
    let probe = tempfile::tempfile_in(dir)
        .with_context(|| format!("data_dir {}: cannot write in it", dir.display()));
    probe.map(|_| format!("data_dir {}: exists and is writable", dir.display()))
}
