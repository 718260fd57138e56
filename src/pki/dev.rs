//! The development PKI of `puente serve --dev`: a CA, a server certificate for localhost, three
//! demo agencies, an auditor and an administrator, plus client profiles, under `certs/dev/`.
//! For trying Puente on one machine only: the CA key sits unencrypted next to everything else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{write_private, write_public, CertificateAuthority, PkiError};
use crate::config::ClientProfile;
use crate::pb::v1::Region;

/// Where `--dev` keeps its PKI, relative to the working directory.
pub const DEV_PKI_DIR: &str = "certs/dev";
/// Validity of development certificates, in days.
const DEV_DAYS: u32 = 365;

/// The demo agencies `--dev` registers: id, name, country, region.
pub const DEMO_AGENCIES: [(&str, &str, &str, Region); 3] = [
    ("ES-CNP", "Policía Nacional", "ES", Region::Eu),
    (
        "CO-DIJIN",
        "Dirección de Investigación Criminal e INTERPOL",
        "CO",
        Region::Celac,
    ),
    ("BE-FPJ", "Federal Judicial Police", "BE", Region::Eu),
];

/// Paths of the development PKI that the server needs.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (also the client CA bundle).
    pub ca_cert: PathBuf,
    /// Server certificate for localhost and 127.0.0.1.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client profiles, one per demo identity.
    pub profiles: PathBuf,
}

/// The file stem and SPIFFE ID of each demo client identity.
fn identities(trust_domain: &str) -> Vec<(String, String)> {
    let mut identities: Vec<(String, String)> = DEMO_AGENCIES
        .iter()
        .map(|(id, ..)| {
            (
                id.to_ascii_lowercase(),
                format!("spiffe://{trust_domain}/agency/{id}"),
            )
        })
        .collect();
    identities.push((
        "auditor".into(),
        format!("spiffe://{trust_domain}/auditor/dev-auditor"),
    ));
    identities.push((
        "admin".into(),
        format!("spiffe://{trust_domain}/admin/dev-admin"),
    ));
    identities
}

/// Creates whatever part of the development PKI in `dir` is missing (all of it on first run)
/// and (re)writes the client profiles to point at `addr`.
///
/// # Errors
/// Files cannot be read or written, or generation failed.
pub fn ensure(dir: &Path, trust_domain: &str, addr: SocketAddr) -> Result<DevPki, PkiError> {
    let io = |source| PkiError::Io {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca = if ca_cert.exists() && ca_key.exists() {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        CertificateAuthority::from_pem(&read(&ca_cert)?, &read(&ca_key)?)?
    } else {
        tracing::info!(dir = %dir.display(), "creating a development PKI");
        let ca = CertificateAuthority::generate("Puente development CA", DEV_DAYS)?;
        write_private(&ca_key, &ca.key_pem())?;
        write_public(&ca_cert, ca.cert_pem())?;
        ca
    };
    let (server_cert, server_key) = (dir.join("server.pem"), dir.join("server.key"));
    if !server_cert.exists() || !server_key.exists() {
        let issued = ca.issue_server(&["localhost", "127.0.0.1"], DEV_DAYS)?;
        write_private(&server_key, &issued.key_pem)?;
        write_public(&server_cert, &issued.cert_pem)?;
    }
    let mut profiles = BTreeMap::new();
    for (stem, spiffe_id) in identities(trust_domain) {
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        if !cert.exists() || !key.exists() {
            let issued = ca.issue_client(&spiffe_id, DEV_DAYS)?;
            write_private(&key, &issued.key_pem)?;
            write_public(&cert, &issued.cert_pem)?;
        }
        profiles.insert(
            stem.clone(),
            ClientProfile {
                addr: addr.to_string(),
                cert: PathBuf::from(format!("{stem}.pem")),
                key: PathBuf::from(format!("{stem}.key")),
                ca: PathBuf::from("ca.pem"),
                server_name: "localhost".into(),
            },
        );
    }
    let profiles_path = dir.join("profiles.toml");
    let text = toml::to_string(&profiles).map_err(|e| PkiError::Io {
        path: profiles_path.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    write_public(
        &profiles_path,
        &format!(
            "# Client profiles of the development PKI; paths are relative to this file.\n{text}"
        ),
    )?;
    Ok(DevPki {
        ca_cert,
        server_cert,
        server_key,
        profiles: profiles_path,
    })
}
