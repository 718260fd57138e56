//! The server's TLS: a rustls configuration (mutual TLS, TLS 1.3 only, no session resumption)
//! held in an `ArcSwap` so that a reloaded certificate, a new CA bundle or a new CRL applies to
//! the next handshake, and the CRL set, verified against the trusted CAs and persisted in the
//! data directory.
//!
//! Revocation policy: a CA for which no CRL was ever applied is trusted without one (a missing
//! CRL does not lock every agency out), and that is logged at start. A CRL past its next-update
//! time stays in force — revocations never lapse — and is logged as stale until a newer one
//! arrives. A CRL never replaces one with a higher number from the same CA, nor — unless an
//! administrator says so, audited — one that lists a certificate it drops and that may not have
//! expired yet (revoked less than [`crate::pki::MAX_LEAF_DAYS`] ago): an old copy of the CA
//! directory signs CRLs with higher numbers that know nothing of later revocations.
//!
//! Layout: this file holds the files, the live state and the configuration it builds; `crl` the
//! CRLs (verification, the one-per-CA merge that never goes back, and their errors); `verifier`
//! the client certificate verifier wrapped around webpki's.

mod crl;
mod verifier;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::identity::Revocations;
use crl::{crl_blocks, merge, now_secs, verify_crl, AppliedCrl};
pub use crl::{CrlError, CrlSummary, SHOWN_SERIALS};
use verifier::DirectlyIssued;

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier cannot be built from the CA bundle and CRLs.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A CRL was refused.
    #[error(transparent)]
    Crl(#[from] CrlError),
}

/// Files the TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server key, PEM.
    pub key: PathBuf,
    /// Client CA bundle, PEM.
    pub client_ca: PathBuf,
    /// A CRL file to apply and watch, PEM.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The TLS files a server configuration names.
    pub fn of(config: &crate::config::Config) -> TlsFiles {
        TlsFiles {
            cert: config.tls_cert.clone(),
            key: config.tls_key.clone(),
            client_ca: config.client_ca.clone(),
            crl: config.crl.clone(),
        }
    }
}

/// Server certificate, key and client CAs, as last loaded successfully.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
}

/// The live TLS state of the server.
pub struct TlsState {
    files: TlsFiles,
    persisted: PathBuf,
    config: ArcSwap<ServerConfig>,
    material: Mutex<Material>,
    crls: Mutex<Vec<AppliedCrl>>,
    revocations: Arc<Revocations>,
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// The file cannot be read, or holds no certificate.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

fn load_material(files: &TlsFiles) -> Result<Material, TlsError> {
    Ok(Material {
        chain: load_certs(&files.cert, "server certificate")?,
        key: PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| file_error("server key", &files.key, e))?,
        client_cas: load_certs(&files.client_ca, "client CA bundle")?,
    })
}

fn build_config(material: &Material, crls: &[AppliedCrl]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in &material.client_cas {
        roots.add(ca.clone()).map_err(|e| TlsError::File {
            what: "client CA bundle",
            path: String::new(),
            reason: e.to_string(),
        })?;
    }
    let verifier = Arc::new(DirectlyIssued(
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls.iter().map(|crl| crl.der.clone()))
            .allow_unknown_revocation_status()
            .build()?,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    // A resumed session skips client certificate verification, so a revoked certificate could
    // come back through a ticket: no session cache, no tickets.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

impl TlsState {
    /// Loads the server certificate, key and client CAs, then the CRLs persisted in
    /// `data_dir` and the CRL file, if any.
    ///
    /// # Errors
    /// A file is missing or malformed, the key does not match, or a CRL is refused.
    pub fn load(files: TlsFiles, data_dir: &Path) -> Result<Arc<TlsState>, TlsError> {
        let material = load_material(&files)?;
        let persisted = data_dir.join("crls.pem");
        let mut crls = Vec::new();
        let sources = [Some(&persisted), files.crl.as_ref()];
        for path in sources.into_iter().flatten().filter(|p| p.exists()) {
            let pem = std::fs::read(path).map_err(|e| file_error("CRL", path, e))?;
            for der in crl_blocks(&pem)? {
                // A file replaced by an older copy un-revokes nothing: refused, the persisted
                // CRL stays.
                if let Err(e) = verify_crl(der, &material.client_cas)
                    .and_then(|crl| merge(&mut crls, crl, false))
                {
                    warn!(file = %path.display(), error = %e, "CRL not applied");
                }
            }
        }
        let config = build_config(&material, &crls)?;
        if crls.is_empty() {
            warn!("no CRL in force: certificates are checked for validity but not for revocation");
        }
        let state = Arc::new(TlsState {
            files,
            persisted,
            config: ArcSwap::new(config),
            material: Mutex::new(material),
            crls: Mutex::new(Vec::new()),
            revocations: Arc::new(Revocations::default()),
        });
        state.install(crls).map_err(TlsError::Crl)?;
        Ok(state)
    }

    /// The revocation set that connections check on every call.
    pub fn revocations(&self) -> Arc<Revocations> {
        Arc::clone(&self.revocations)
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Persists `crls`, makes them the set in force and updates the revocation set.
    fn install(&self, crls: Vec<AppliedCrl>) -> Result<(), CrlError> {
        let pem: String = crls
            .iter()
            .map(|crl| {
                pkcs8::der::pem::encode_string("X509 CRL", pkcs8::LineEnding::LF, &crl.der)
                    .map_err(|e| CrlError::Persist(std::io::Error::other(e.to_string())))
            })
            .collect::<Result<_, _>>()?;
        if !crls.is_empty() {
            let tmp = self.persisted.with_extension("pem.tmp");
            // Owner-only like the rest of the data directory, whatever the umask.
            crate::private_files::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .and_then(|mut file| {
                    std::io::Write::write_all(&mut file, pem.as_bytes())?;
                    file.sync_all()
                })
                .and_then(|()| std::fs::rename(&tmp, &self.persisted))
                .and_then(|()| {
                    crate::store::sync_dir(self.persisted.parent().unwrap_or(Path::new(".")))
                })
                .map_err(CrlError::Persist)?;
        }
        let revoked: HashSet<String> = crls
            .iter()
            .flat_map(|c| c.revoked.iter().map(|r| r.serial.clone()))
            .collect();
        self.revocations.replace(revoked);
        *self.crls.lock().unwrap_or_else(PoisonError::into_inner) = crls;
        Ok(())
    }

    /// Verifies and applies the CRLs of a PEM text: persisted, then in force for the next
    /// handshake, the next call of open connections, and open inbox streams. A CRL that omits
    /// a revoked certificate that may not have expired is refused unless `allow_unrevoke`.
    ///
    /// # Errors
    /// `CrlError` saying why nothing was applied.
    pub fn apply_crl(&self, pem: &[u8], allow_unrevoke: bool) -> Result<CrlSummary, CrlError> {
        // Holding the material lock serialises every change of the configuration.
        let material = self.material.lock().unwrap_or_else(PoisonError::into_inner);
        let offered = crl_blocks(pem)?
            .into_iter()
            .map(|der| verify_crl(der, &material.client_cas))
            .collect::<Result<Vec<_>, _>>()?;
        let mut crls = self
            .crls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut summary = None;
        let mut changed = false;
        let mut unrevoked = Vec::new();
        for crl in offered {
            let digits = crl.number.to_u64_digits();
            summary = Some(CrlSummary {
                number: if digits.len() > 1 {
                    u64::MAX
                } else {
                    digits.first().copied().unwrap_or(0)
                },
                revoked_count: crl.revoked.len(),
                next_update: crl.next_update,
                changed: false,
                unrevoked: Vec::new(),
            });
            let merged = merge(&mut crls, crl, allow_unrevoke)?;
            changed |= merged.changed;
            unrevoked.extend(merged.unrevoked);
        }
        let config =
            build_config(&material, &crls).map_err(|e| CrlError::Rebuild(e.to_string()))?;
        self.install(crls)?;
        self.config.store(config);
        let mut summary = summary.ok_or_else(|| CrlError::Malformed("no CRL".into()))?;
        summary.changed = changed;
        summary.unrevoked = unrevoked;
        if !summary.unrevoked.is_empty() {
            warn!(
                crl_number = summary.number,
                unrevoked = summary.unrevoked.len(),
                "CRL applied with allow_unrevoke: revoked certificates are valid again"
            );
        }
        info!(
            crl_number = summary.number,
            revoked = summary.revoked_count,
            "CRL applied"
        );
        Ok(summary)
    }

    /// Re-reads the server certificate, key and client CA bundle, and the CRL file if it holds
    /// a newer CRL (then returned). On any error the configuration in force stays as it was.
    ///
    /// # Errors
    /// The new material does not load or does not build a configuration.
    pub fn reload(&self) -> Result<Option<CrlSummary>, TlsError> {
        {
            let mut material = self.material.lock().unwrap_or_else(PoisonError::into_inner);
            let reloaded = load_material(&self.files)?;
            let crls = self
                .crls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            self.config.store(build_config(&reloaded, &crls)?);
            *material = reloaded;
        }
        info!("TLS certificate, key and client CA bundle reloaded");
        let Some(path) = &self.files.crl else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        let pem = std::fs::read(path).map_err(|e| file_error("CRL", path, e))?;
        match self.apply_crl(&pem, false) {
            Ok(summary) => Ok(summary.changed.then_some(summary)),
            Err(
                e
                @ (CrlError::Conflict(_) | CrlError::Rollback { .. } | CrlError::Unrevokes { .. }),
            ) => {
                warn!(file = %path.display(), error = %e, "CRL file not applied");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Logs every CRL in force whose next-update time has passed. Returns how many.
    pub fn report_stale_crls(&self) -> usize {
        let now = now_secs();
        let crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<&AppliedCrl> = crls
            .iter()
            .filter(|c| c.next_update.is_some_and(|t| t < now))
            .collect();
        for crl in &stale {
            error!(
                crl_number = %crl.number,
                next_update = crl.next_update,
                "CRL is past its next update and still enforced: publish a new one with `puente admin crl --publish`"
            );
        }
        stale.len()
    }

    /// Modification stamps of the watched files, to notice changes.
    pub fn file_stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let mut paths = vec![&self.files.cert, &self.files.key, &self.files.client_ca];
        paths.extend(self.files.crl.as_ref());
        paths
            .into_iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watched CRL file replaced by a newer CRL that drops a revocation: reload leaves the
    /// revocation in force.
    #[test]
    fn reloaded_crl_file_cannot_unrevoke() {
        use crate::pki::{CertificateAuthority, Revoked, Subject};
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("Test CA", 30).unwrap();
        let server = ca
            .issue(
                &Subject::Server(vec!["localhost".into()]),
                "puente.local",
                30,
                None,
            )
            .unwrap();
        let files = TlsFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            client_ca: dir.path().join("ca.pem"),
            crl: Some(dir.path().join("crl.pem")),
        };
        std::fs::write(&files.cert, &server.cert_pem).unwrap();
        std::fs::write(&files.key, server.key_pem.as_deref().unwrap()).unwrap();
        std::fs::write(&files.client_ca, ca.cert_pem()).unwrap();
        let revoked = Revoked {
            serial: "7f01".into(),
            revoked_at: time::OffsetDateTime::now_utc(),
            reason: rcgen::RevocationReason::KeyCompromise,
        };
        std::fs::write(
            dir.path().join("crl.pem"),
            ca.crl(&[revoked], 1, 7).unwrap(),
        )
        .unwrap();
        let state = TlsState::load(files, dir.path()).unwrap();
        assert!(state.revocations().is_revoked("7f01"));

        std::fs::write(dir.path().join("crl.pem"), ca.crl(&[], 2, 7).unwrap()).unwrap();
        assert_eq!(state.reload().unwrap(), None, "not applied");
        assert!(state.revocations().is_revoked("7f01"));
    }
}
