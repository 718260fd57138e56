//! The development PKI of `puente serve --dev`: a CA, a server certificate for localhost, three
//! demo agencies, an auditor and an administrator, client profiles, and a data key for sealing
//! message bodies, under `certs/dev/`.
//! For trying Puente on one machine only: the CA key sits unencrypted next to everything else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::authority::Authority;
use super::{check_person_name, write_private, write_public, PkiError, Subject};
use crate::config::ClientProfile;
use crate::identity::AgencyId;
use crate::pb::v1::Region;
use crate::store::DataKeys;

/// Where `--dev` keeps its PKI, relative to the working directory.
pub(crate) const DEV_PKI_DIR: &str = "certs/dev";
/// Validity of development certificates, in days.
const DEV_DAYS: u32 = 365;
/// Validity of the development CA, in days.
const DEV_CA_DAYS: u32 = 3650;

fn issue_into(
    authority: &mut Authority,
    subject: &Subject,
    cert: &Path,
    key: &Path,
) -> Result<(), PkiError> {
    let issued = authority.issue(subject, DEV_DAYS, None)?;
    if let Some(key_pem) = &issued.key_pem {
        write_private(key, key_pem)?;
    }
    write_public(cert, &issued.cert_pem)
}

/// The demo agencies `--dev` registers: id, name, country, region.
pub(crate) const DEMO_AGENCIES: [(&str, &str, &str, Region); 3] = [
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
pub(crate) struct DevPki {
    /// CA certificate (also the client CA bundle).
    pub ca_cert: PathBuf,
    /// Server certificate for localhost and 127.0.0.1.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client profiles, one per demo identity.
    pub profiles: PathBuf,
    /// The keyring of data keys that seal message bodies at rest.
    pub data_key: PathBuf,
}

/// The file stem and subject of each demo client identity.
fn identities() -> Result<Vec<(String, Subject)>, PkiError> {
    let mut identities = Vec::new();
    for (id, ..) in DEMO_AGENCIES {
        let agency = AgencyId::parse(id).map_err(|e| PkiError::Invalid(e.to_string()))?;
        identities.push((id.to_ascii_lowercase(), Subject::Agency(agency)));
    }
    check_person_name("dev-auditor")?;
    identities.push(("auditor".into(), Subject::Auditor("dev-auditor".into())));
    identities.push(("admin".into(), Subject::Admin("dev-admin".into())));
    Ok(identities)
}

/// Where the development PKI in `dir` keeps the files the server needs.
pub(crate) fn paths(dir: &Path) -> DevPki {
    DevPki {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        profiles: dir.join("profiles.toml"),
        data_key: dir.join("data.keys"),
    }
}

/// Creates whatever part of the development PKI in `dir` is missing (all of it on first run)
/// and (re)writes the client profiles to point at `addr`.
///
/// # Errors
/// Files cannot be read or written, or generation failed.
pub(crate) fn ensure(dir: &Path, trust_domain: &str, addr: SocketAddr) -> Result<DevPki, PkiError> {
    let io = |source| PkiError::Io {
        path: dir.display().to_string(),
        source,
    };
    crate::private_files::create_dir(dir).map_err(io)?;
    let mut authority = if dir.join("ca.pem").exists() {
        Authority::open(dir, None)?
    } else {
        tracing::info!(dir = %dir.display(), "creating a development PKI");
        Authority::init(dir, trust_domain, DEV_CA_DAYS, None)?
    };
    if authority.ledger().trust_domain != trust_domain {
        tracing::warn!(
            pki = %authority.ledger().trust_domain,
            configured = trust_domain,
            "the development PKI was made for another trust domain; delete certs/dev/ to recreate it"
        );
    }
    let DevPki {
        ca_cert,
        server_cert,
        server_key,
        profiles: profiles_path,
        data_key,
    } = paths(dir);
    if !server_cert.exists() || !server_key.exists() {
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        issue_into(
            &mut authority,
            &Subject::Server(hosts),
            &server_cert,
            &server_key,
        )?;
    }
    if !data_key.exists() {
        let id = DataKeys::add_new(&data_key)
            .map_err(|e| PkiError::Invalid(format!("development data key: {e}")))?;
        tracing::info!(key_id = id, "created a development data key");
    }
    let mut profiles = BTreeMap::new();
    for (stem, subject) in identities()? {
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        if !cert.exists() || !key.exists() {
            issue_into(&mut authority, &subject, &cert, &key)?;
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
        data_key,
    })
}
