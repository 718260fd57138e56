//! How a CLI client reaches the exchange: a named profile, explicit flags, or both (flags win).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tonic::transport::Channel;

use crate::config::{ClientProfile, DEFAULT_LISTEN};

/// Connection flags shared by the client subcommands.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Client profile to use, a table of the profiles file (e.g. es-cnp).
    #[arg(long, env = "PUENTE_PROFILE")]
    pub profile: Option<String>,
    /// Profiles file; `puente serve --dev` writes one for its demo identities.
    #[arg(
        long,
        env = "PUENTE_PROFILES",
        default_value = "certs/dev/profiles.toml"
    )]
    pub profiles: PathBuf,
    /// Server address, host:port [default: the profile's, or 127.0.0.1:50051].
    #[arg(long, env = "PUENTE_ADDR")]
    pub addr: Option<String>,
    /// Your PEM client certificate.
    #[arg(long, env = "PUENTE_CERT")]
    pub cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, env = "PUENTE_KEY")]
    pub key: Option<PathBuf>,
    /// PEM CA certificate that issued the server's certificate.
    #[arg(long, env = "PUENTE_CA")]
    pub ca: Option<PathBuf>,
    /// Name the server's certificate must carry [default: the profile's, or localhost].
    #[arg(long, env = "PUENTE_SERVER_NAME")]
    pub server_name: Option<String>,
}

fn load_profile(file: &Path, name: &str) -> anyhow::Result<ClientProfile> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!("cannot read profiles file {} (run `puente serve --dev` to create the development one, or pass --profiles)", file.display())
    })?;
    let mut profiles: BTreeMap<String, ClientProfile> = toml::from_str(&text)
        .with_context(|| format!("invalid profiles file {}", file.display()))?;
    let known = profiles.keys().cloned().collect::<Vec<_>>().join(", ");
    let mut profile = profiles.remove(name).with_context(|| {
        format!(
            "no profile {name:?} in {}; known profiles: {known}",
            file.display()
        )
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    for path in [&mut profile.cert, &mut profile.key, &mut profile.ca] {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    }
    Ok(profile)
}

impl ConnectArgs {
    /// The effective profile: the named one with flags applied over it.
    ///
    /// # Errors
    /// The profile cannot be loaded, or certificate, key or CA is missing.
    pub fn resolve(&self) -> anyhow::Result<ClientProfile> {
        let profile = match &self.profile {
            Some(name) => Some(load_profile(&self.profiles, name)?),
            None => None,
        };
        let pick = |flag: &Option<PathBuf>, from_profile: Option<&PathBuf>, name: &str| {
            flag.clone().or_else(|| from_profile.cloned()).with_context(|| {
                format!("--{name} is required, or choose an identity with --profile (e.g. --profile es-cnp after `puente serve --dev`)")
            })
        };
        Ok(ClientProfile {
            cert: pick(&self.cert, profile.as_ref().map(|p| &p.cert), "cert")?,
            key: pick(&self.key, profile.as_ref().map(|p| &p.key), "key")?,
            ca: pick(&self.ca, profile.as_ref().map(|p| &p.ca), "ca")?,
            addr: self
                .addr
                .clone()
                .or_else(|| profile.as_ref().map(|p| p.addr.clone()))
                .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            server_name: self
                .server_name
                .clone()
                .or_else(|| profile.as_ref().map(|p| p.server_name.clone()))
                .unwrap_or_else(|| "localhost".into()),
        })
    }

    /// Opens a mutual-TLS channel to the exchange.
    ///
    /// # Errors
    /// Files cannot be read, or the server cannot be reached or refuses the certificate.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let profile = self.resolve()?;
        Ok(crate::client::connect(&profile).await?)
    }
}
