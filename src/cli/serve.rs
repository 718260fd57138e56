//! `puente serve`: load the configuration (file, then flags), optionally set up the development
//! PKI and demo agencies, bind, and serve until SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

use crate::config::{Config, MetricsListen};
use crate::directory::{AgencyEntry, Directory};
use crate::identity::AgencyId;
use crate::pb::v1::AgencyStatus;
use crate::pki::dev::{self, DEMO_AGENCIES, DEV_PKI_DIR};
use crate::store::DataKeys;

/// Flags of `puente serve`; each overrides the same key of `--config`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its keys.
    #[arg(long, env = "PUENTE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051]. Port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the Prometheus metrics endpoint (plain HTTP, `GET /metrics`), or `off`
    /// [default: 127.0.0.1:9464]. Metrics name agencies and show their volumes: keep it on
    /// loopback or behind a firewall. Port 0 picks a free port.
    #[arg(long)]
    metrics_listen: Option<MetricsListen>,
    /// Directory of the store [default: puente-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain the server presents.
    #[arg(long, env = "PUENTE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PUENTE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs whose client certificates are accepted.
    #[arg(long, env = "PUENTE_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// SPIFFE trust domain of client identities [default: puente.local].
    #[arg(long)]
    trust_domain: Option<String>,
    /// PEM certificate revocation list applied to client certificates.
    #[arg(long, env = "PUENTE_CRL")]
    crl: Option<PathBuf>,
    /// Keyring of the data keys that seal message bodies at rest (`puente data-key new`).
    #[arg(long, env = "PUENTE_DATA_KEY")]
    data_key: Option<PathBuf>,
    /// Development mode: create a development PKI under certs/dev/ on first run (CA, server
    /// certificate, three demo agencies, an auditor, an administrator, client profiles, a data
    /// key), use it unless flags say otherwise, and register the demo agencies.
    #[arg(long)]
    dev: bool,
}

/// Runs the server.
///
/// # Errors
/// Invalid configuration, unusable key material, a port in use, or a store that cannot open.
pub(super) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("PUENTE_BUILD_COMMIT"),
        "starting puente"
    );
    // Whatever the umask it inherited, the server's files are its user's alone (see
    // `private_files`, which also sets the modes of the files the server makes itself).
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(
        crate::private_files::SERVER_UMASK,
    ));
    let mut config = args.config()?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (in use? choose another with --listen)",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let metrics_listener = crate::server::bind_metrics(&config).await?;
    if args.dev {
        let pki = dev::ensure(Path::new(DEV_PKI_DIR), &config.trust_domain, addr)?;
        config.tls_cert = args.tls_cert.clone().unwrap_or(pki.server_cert);
        config.tls_key = args.tls_key.clone().unwrap_or(pki.server_key);
        config.client_ca = args.client_ca.clone().unwrap_or(pki.ca_cert);
        config.data_key = args.data_key.clone().unwrap_or(pki.data_key);
        register_demo_agencies(&config).await?;
        eprintln!(
            "development mode: PKI in {DEV_PKI_DIR}/, client profiles in {}",
            pki.profiles.display()
        );
    }
    config.validate()?;
    // Scripts and tests read the bound addresses (useful with port 0) from stdout.
    println!("listening on {addr}");
    if let Some(metrics) = &metrics_listener {
        println!("metrics on {}", metrics.local_addr()?);
    }
    crate::server::run_with_metrics(listener, metrics_listener, config, shutdown_signal()).await?;
    Ok(())
}

impl ServeArgs {
    /// The configuration these flags give: the `--config` file (or the defaults), then each
    /// flag (or its `PUENTE_*` environment variable) over the same key.
    ///
    /// # Errors
    /// The config file cannot be read or parsed.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        apply_flags(&mut config, self);
        if self.dev {
            // What `serve --dev` uses when the development PKI exists (it creates it if not).
            let pki = dev::paths(Path::new(DEV_PKI_DIR));
            let unset = |path: &mut PathBuf, dev: PathBuf| {
                if path.as_os_str().is_empty() {
                    *path = dev;
                }
            };
            unset(&mut config.tls_cert, pki.server_cert);
            unset(&mut config.tls_key, pki.server_key);
            unset(&mut config.client_ca, pki.ca_cert);
            unset(&mut config.data_key, pki.data_key);
        }
        Ok(config)
    }

    /// The config file given, if any.
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

fn apply_flags(config: &mut Config, args: &ServeArgs) {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(metrics_listen) = args.metrics_listen {
        config.metrics_listen = metrics_listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(path) = &args.tls_cert {
        config.tls_cert = path.clone();
    }
    if let Some(path) = &args.tls_key {
        config.tls_key = path.clone();
    }
    if let Some(path) = &args.client_ca {
        config.client_ca = path.clone();
    }
    if let Some(domain) = &args.trust_domain {
        config.trust_domain = domain.clone();
    }
    if let Some(path) = &args.crl {
        config.crl = Some(path.clone());
    }
    if let Some(path) = &args.data_key {
        config.data_key = path.clone();
    }
}

/// Registers the demo agencies that are not in the directory yet.
async fn register_demo_agencies(config: &Config) -> anyhow::Result<()> {
    let data_keys = DataKeys::load(&config.data_key)?;
    let store = crate::store::open(&config.data_dir, std::sync::Arc::new(data_keys))?;
    let directory = Directory::load(std::sync::Arc::clone(&store)).await?;
    for (id, name, country, region) in DEMO_AGENCIES {
        if directory.get(id).is_none() {
            directory
                .register(
                    AgencyEntry {
                        agency_id: AgencyId::parse(id)?,
                        name: name.into(),
                        country: country.into(),
                        region,
                        status: Some(AgencyStatus::Active),
                    },
                    None,
                )
                .await?;
            tracing::info!(agency = id, "registered demo agency");
        }
    }
    drop(directory);
    store.close().await;
    Ok(())
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
