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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::Revocations;

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

/// Why a CRL was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// No `X509 CRL` PEM block, or one that does not parse.
    #[error("not a PEM X.509 CRL: {0}")]
    Malformed(String),
    /// No trusted CA issued it, or its signature does not verify.
    #[error("the CRL is not signed by a CA this exchange trusts")]
    UntrustedIssuer,
    /// It has no CRL number, so it cannot be ordered.
    #[error("the CRL has no CRL number")]
    NoNumber,
    /// A CRL with a higher number from the same CA is in force.
    #[error("CRL number {offered} is older than number {current} already in force for that CA")]
    Rollback {
        /// The number offered.
        offered: BigUint,
        /// The number in force.
        current: BigUint,
    },
    /// A different CRL with the same number from the same CA is in force.
    #[error("a different CRL with number {0} is already in force for that CA")]
    Conflict(BigUint),
    /// The CRL omits certificates the CRL in force revokes and that may not have expired:
    /// applying it would un-revoke them.
    #[error(
        "CRL number {offered} would un-revoke {count} certificate(s) that the CRL in force \
         revokes and that may not have expired yet (serial(s) {shown}): was it signed from an \
         old copy of the CA directory? Restore the current CA directory (whose ledger.json \
         records the revocation), sign the CRL there and publish that; to un-revoke on purpose, \
         publish with --allow-unrevoke and a --reason (recorded in the audit log)",
        shown = shown_serials(serials, *count)
    )]
    Unrevokes {
        /// The number offered.
        offered: BigUint,
        /// The first few serials it would un-revoke (at most [`SHOWN_SERIALS`]).
        serials: Vec<String>,
        /// How many it would un-revoke.
        count: usize,
    },
    /// The persisted CRL set cannot be written.
    #[error("cannot persist the CRL: {0}")]
    Persist(std::io::Error),
    /// The new configuration cannot be built.
    #[error("cannot rebuild the TLS configuration: {0}")]
    Rebuild(String),
}

impl From<CrlError> for tonic::Status {
    fn from(err: CrlError) -> Self {
        match err {
            CrlError::Malformed(_) | CrlError::NoNumber => {
                crate::rpc::bad_request("crl_pem", &err.to_string())
            }
            CrlError::UntrustedIssuer => tonic::Status::invalid_argument(err.to_string()),
            CrlError::Rollback { .. } | CrlError::Conflict(_) | CrlError::Unrevokes { .. } => {
                tonic::Status::failed_precondition(err.to_string())
            }
            CrlError::Persist(e) => crate::rpc::internal(&e),
            CrlError::Rebuild(e) => crate::rpc::internal(&e),
        }
    }
}

/// What the applied CRL now says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// Its number (CRL numbers may reach 20 octets; larger than `u64::MAX` saturates).
    pub number: u64,
    /// How many certificates it revokes.
    pub revoked_count: usize,
    /// Its next-update time, Unix seconds.
    pub next_update: Option<i64>,
    /// False when the same CRL was already in force.
    pub changed: bool,
    /// Serials (hex) that were revoked, may not have expired, and are no longer: only ever
    /// non-empty when the caller allowed it.
    pub unrevoked: Vec<String>,
}

/// How many serials an [`CrlError::Unrevokes`] message names (a CRL may list thousands).
pub const SHOWN_SERIALS: usize = 5;

fn shown_serials(serials: &[String], count: usize) -> String {
    let mut shown = serials
        .iter()
        .take(SHOWN_SERIALS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if count > SHOWN_SERIALS {
        shown.push_str(&format!(" and {} more", count - SHOWN_SERIALS));
    }
    shown
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

/// One CA's CRL in force.
#[derive(Debug, Clone)]
struct AppliedCrl {
    issuer: Vec<u8>,
    number: BigUint,
    next_update: Option<i64>,
    der: CertificateRevocationListDer<'static>,
    revoked: Vec<RevokedSerial>,
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RevokedSerial {
    /// Serial number, hex of its DER content octets.
    serial: String,
    /// Revocation date, Unix seconds.
    revoked_at: i64,
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

/// The CRL blocks of a PEM text.
fn crl_blocks(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, CrlError> {
    let ders = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CrlError::Malformed(e.to_string()))?;
    if ders.is_empty() {
        return Err(CrlError::Malformed("no X509 CRL PEM block".into()));
    }
    Ok(ders)
}

fn verify_crl(
    der: CertificateRevocationListDer<'static>,
    cas: &[CertificateDer<'static>],
) -> Result<AppliedCrl, CrlError> {
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| CrlError::Malformed(e.to_string()))?;
    let signed_by_trusted_ca = cas.iter().any(|ca| {
        X509Certificate::from_der(ca).is_ok_and(|(_, ca)| {
            ca.subject().as_raw() == crl.issuer().as_raw()
                && crl.verify_signature(ca.public_key()).is_ok()
        })
    });
    if !signed_by_trusted_ca {
        return Err(CrlError::UntrustedIssuer);
    }
    let number = crl.crl_number().ok_or(CrlError::NoNumber)?.clone();
    Ok(AppliedCrl {
        issuer: crl.issuer().as_raw().to_vec(),
        number,
        next_update: crl.next_update().map(|t| t.timestamp()),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| RevokedSerial {
                serial: hex::encode(r.raw_serial()),
                revoked_at: r.revocation_date.timestamp(),
            })
            .collect(),
        der: der.clone(),
    })
}

/// What [`merge`] did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Merged {
    /// The set changed.
    changed: bool,
    /// Serials the replaced CRL revoked, that may not have expired, and that the new one omits.
    unrevoked: Vec<String>,
}

/// The serials `current` revokes, that `new` omits, and whose certificates may still be valid
/// at `now`: a CA drops a revoked certificate from its CRLs once it has expired, and no
/// certificate outlives its revocation by more than [`crate::pki::MAX_LEAF_DAYS`].
fn dropped_serials(current: &AppliedCrl, new: &AppliedCrl, now: i64) -> Vec<String> {
    let kept: HashSet<&str> = new.revoked.iter().map(|r| r.serial.as_str()).collect();
    current
        .revoked
        .iter()
        .filter(|r| !kept.contains(r.serial.as_str()))
        .filter(|r| crate::pki::revoked_may_be_unexpired(r.revoked_at, now))
        .map(|r| r.serial.clone())
        .collect()
}

/// Puts `new` into `set`, keeping one CRL per issuer: only a higher number replaces a CRL, and
/// only if it un-revokes nothing that may still be valid, unless `allow_unrevoke`.
fn merge(
    set: &mut Vec<AppliedCrl>,
    new: AppliedCrl,
    allow_unrevoke: bool,
) -> Result<Merged, CrlError> {
    match set.iter_mut().find(|c| c.issuer == new.issuer) {
        None => {
            set.push(new);
            Ok(Merged {
                changed: true,
                unrevoked: Vec::new(),
            })
        }
        Some(current) if new.number > current.number => {
            let unrevoked = dropped_serials(current, &new, now_secs());
            if !unrevoked.is_empty() && !allow_unrevoke {
                return Err(CrlError::Unrevokes {
                    offered: new.number,
                    count: unrevoked.len(),
                    serials: unrevoked.into_iter().take(SHOWN_SERIALS).collect(),
                });
            }
            *current = new;
            Ok(Merged {
                changed: true,
                unrevoked,
            })
        }
        Some(current) if new.number == current.number && new.der == current.der => {
            Ok(Merged::default())
        }
        Some(current) if new.number == current.number => Err(CrlError::Conflict(new.number)),
        Some(current) => Err(CrlError::Rollback {
            offered: new.number,
            current: current.number.clone(),
        }),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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

/// Accepts only client certificates issued directly by a trusted CA that carry the clientAuth
/// extended key usage explicitly. Intermediates the client sends are ignored: webpki does not
/// enforce a trust anchor's path length, so without this a CA certificate issued by mistake
/// could mint identities of its own. And webpki reads a certificate with no EKU extension at
/// all as good for any purpose, which the exchange's certificates never are.
#[derive(Debug)]
struct DirectlyIssued(Arc<dyn ClientCertVerifier>);

/// Whether `der` carries an extended key usage extension that lists clientAuth. A certificate
/// that does not parse is left to webpki, which has refused it already.
fn has_client_auth_eku(der: &[u8]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth)
}

impl ClientCertVerifier for DirectlyIssued {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, &[], now)?;
        if !has_client_auth_eku(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::InvalidPurpose,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crl(issuer: &[u8], number: u32, der: &[u8]) -> AppliedCrl {
        AppliedCrl {
            issuer: issuer.to_vec(),
            number: BigUint::from(number),
            next_update: None,
            der: CertificateRevocationListDer::from(der.to_vec()),
            revoked: Vec::new(),
        }
    }

    #[test]
    fn merge_keeps_one_crl_per_issuer_and_never_goes_back() {
        let mut set = vec![crl(b"ca-1", 5, b"five")];
        assert!(
            merge(&mut set, crl(b"ca-2", 1, b"other ca"), false)
                .unwrap()
                .changed
        );
        assert!(
            merge(&mut set, crl(b"ca-1", 6, b"six"), false)
                .unwrap()
                .changed
        );
        assert!(
            !merge(&mut set, crl(b"ca-1", 6, b"six"), false)
                .unwrap()
                .changed,
            "same CRL again"
        );
        assert!(matches!(
            merge(&mut set, crl(b"ca-1", 6, b"forged six"), false),
            Err(CrlError::Conflict(_))
        ));
        assert!(matches!(
            merge(&mut set, crl(b"ca-1", 4, b"four"), false),
            Err(CrlError::Rollback { .. })
        ));
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].number, BigUint::from(6u32));
    }

    fn revoking(issuer: &[u8], number: u32, entries: &[(&str, i64)]) -> AppliedCrl {
        let mut crl = crl(issuer, number, format!("{number}").as_bytes());
        crl.revoked = entries
            .iter()
            .map(|(serial, revoked_at)| RevokedSerial {
                serial: (*serial).to_string(),
                revoked_at: *revoked_at,
            })
            .collect();
        crl
    }

    /// A higher number does not let a CRL drop a revocation that may not have expired; one
    /// revoked more than MAX_LEAF_DAYS ago may go, and `allow_unrevoke` lets any go, saying
    /// which.
    #[test]
    fn merge_refuses_to_unrevoke_unless_allowed() {
        let now = now_secs();
        let long_ago = now - i64::from(crate::pki::MAX_LEAF_DAYS) * 86_400 - 60;
        let mut set = vec![revoking(b"ca", 1, &[("aa", now - 60), ("bb", long_ago)])];
        let refused = merge(&mut set, revoking(b"ca", 9, &[]), false);
        assert!(
            matches!(&refused, Err(CrlError::Unrevokes { serials, count: 1, .. }) if serials == &["aa"]),
            "{refused:?}"
        );
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("Restore the current CA directory"));
        let merged = merge(&mut set, revoking(b"ca", 2, &[("aa", now - 60)]), false).unwrap();
        assert!(
            merged.changed && merged.unrevoked.is_empty(),
            "expired one dropped"
        );
        let merged = merge(&mut set, revoking(b"ca", 3, &[]), true).unwrap();
        assert_eq!(merged.unrevoked, ["aa"]);
    }

    /// Names at most SHOWN_SERIALS serials, and how many more.
    #[test]
    fn unrevokes_message_is_bounded() {
        let serials: Vec<String> = (0..SHOWN_SERIALS).map(|i| format!("{i:040x}")).collect();
        let message = CrlError::Unrevokes {
            offered: BigUint::from(2u32),
            serials,
            count: 10_000,
        }
        .to_string();
        assert!(message.contains("and 9995 more"), "{message}");
        assert!(message.len() < 1_000);
    }

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
