//! Certificate issuing: a CA (ECDSA P-256, path length 0) that issues server certificates and
//! client certificates carrying exactly one SPIFFE ID, signs CSRs (taking only their public key)
//! and CRLs. [`authority`] keeps a CA on disk with its ledger; [`dev`] is the development PKI.

pub(crate) mod authority;
pub(crate) mod dev;
mod keyfile;

use std::io::Write;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevocationReason, RevokedCertParams, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

use crate::identity::AgencyId;
pub use keyfile::{decrypt_key, encrypt_key};

/// Longest validity of an issued (non-CA) certificate, in days: the CA/Browser Forum's old
/// ceiling, short enough that lost keys age out.
pub const MAX_LEAF_DAYS: u32 = 825;

/// Whether a certificate revoked at `revoked_at` (Unix seconds) may still be within its
/// validity at `now`, judged from the revocation date alone: it was issued before it was
/// revoked, for at most [`MAX_LEAF_DAYS`]. CRLs keep listing it until then, and the exchange
/// refuses a CRL that drops it earlier (an old copy of the CA directory would).
pub fn revoked_may_be_unexpired(revoked_at: i64, now: i64) -> bool {
    revoked_at.saturating_add(i64::from(MAX_LEAF_DAYS) * 86_400) > now
}

/// Why a certificate, key or CRL could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or key.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// No randomness for a serial number or key encryption.
    #[error("the system random number generator failed")]
    Random,
    /// A CSR does not parse or its signature does not verify.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// The CA key is encrypted and no passphrase was given, or the passphrase is wrong.
    #[error("{0}")]
    Passphrase(&'static str),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be written or read.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An agency system: `spiffe://<td>/agency/<ID>`.
    Agency(AgencyId),
    /// An auditor: `spiffe://<td>/auditor/<name>`.
    Auditor(String),
    /// An administrator: `spiffe://<td>/admin/<name>`.
    Admin(String),
    /// The exchange server, for these DNS names and IP addresses.
    Server(Vec<String>),
}

impl Subject {
    /// The identity the certificate carries: the SPIFFE ID, or the server's names.
    pub fn identity(&self, trust_domain: &str) -> String {
        match self {
            Subject::Agency(id) => format!("spiffe://{trust_domain}/agency/{id}"),
            Subject::Auditor(name) => format!("spiffe://{trust_domain}/auditor/{name}"),
            Subject::Admin(name) => format!("spiffe://{trust_domain}/admin/{name}"),
            Subject::Server(hosts) => format!("server:{}", hosts.join(",")),
        }
    }
}

/// A name for an auditor or administrator: what a SPIFFE path segment allows.
///
/// # Errors
/// `PkiError::Invalid` if empty, longer than 64 characters, or with other characters.
pub fn check_person_name(name: &str) -> Result<(), PkiError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "invalid name {name:?}: use 1 to 64 letters, digits, '-', '.' or '_'"
        )))
    }
}

/// A certificate just issued.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The new private key, PEM; `None` when the key came from a CSR.
    pub key_pem: Option<String>,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A revoked certificate, as listed in a CRL.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// A certificate authority held in memory.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// 20 random bytes, positive: the largest serial RFC 5280 allows, 159 bits of randomness.
fn random_serial() -> Result<(SerialNumber, String), PkiError> {
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok((SerialNumber::from_slice(&bytes), hex::encode(bytes)))
}

/// Reads the public key of a CSR after checking the CSR's signature. Nothing else of the CSR
/// is used: its subject, SANs, CA flag and extensions are ignored.
///
/// # Errors
/// `PkiError::BadCsr` if it does not parse or its signature does not verify.
pub fn csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::BadCsr(format!("no CERTIFICATE REQUEST PEM block ({e})")))?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    csr.verify_signature()
        .map_err(|_| PkiError::BadCsr("its signature does not verify".into()))?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| PkiError::BadCsr(e.to_string()))
}

fn leaf_validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    if days == 0 || days > MAX_LEAF_DAYS {
        return Err(PkiError::Invalid(format!(
            "validity must be 1 to {MAX_LEAF_DAYS} days, not {days}"
        )));
    }
    set_validity(params, days);
    Ok(())
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little back-dating tolerates clock skew between the CA and the exchange.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
}

impl CertificateAuthority {
    /// Generates a new self-signed CA: ECDSA P-256, path length 0, keyCertSign + cRLSign.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn generate(common_name: &str, days: u32) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?.0);
        set_validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and its key.
    ///
    /// # Errors
    /// The certificate does not parse.
    pub fn from_parts(cert_pem: &str, key: KeyPair) -> Result<CertificateAuthority, PkiError> {
        Ok(CertificateAuthority {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's key pair.
    pub fn key(&self) -> &KeyPair {
        self.issuer.key()
    }

    /// Issues a certificate for `subject`, valid for `days` (at most [`MAX_LEAF_DAYS`]).
    /// Client certificates carry their SPIFFE ID as the only SAN and the clientAuth EKU only;
    /// server certificates their DNS/IP SANs and serverAuth only; neither may sign others.
    /// With `public_key` (from [`csr_public_key`]) no key is generated.
    ///
    /// # Errors
    /// Invalid names, validity out of range, or signing failed.
    pub fn issue(
        &self,
        subject: &Subject,
        trust_domain: &str,
        days: u32,
        public_key: Option<&SubjectPublicKeyInfo>,
    ) -> Result<Issued, PkiError> {
        let identity = subject.identity(trust_domain);
        let mut params = match subject {
            Subject::Server(hosts) => {
                let mut params = CertificateParams::new(hosts.clone())?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                params
            }
            Subject::Agency(_) | Subject::Auditor(_) | Subject::Admin(_) => {
                if let Subject::Auditor(name) | Subject::Admin(name) = subject {
                    check_person_name(name)?;
                }
                let mut params = CertificateParams::default();
                params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                params
            }
        };
        let common_name = match subject {
            Subject::Server(hosts) => hosts.first().cloned().unwrap_or_default(),
            _ => identity,
        };
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (serial, serial_hex) = random_serial()?;
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        leaf_validity(&mut params, days)?;
        let (cert_pem, key_pem) = match public_key {
            Some(public_key) => (params.signed_by(public_key, &self.issuer)?.pem(), None),
            None => {
                let key = KeyPair::generate()?;
                let cert = params.signed_by(&key, &self.issuer)?;
                (cert.pem(), Some(key.serialize_pem()))
            }
        };
        Ok(Issued {
            cert_pem,
            key_pem,
            serial: serial_hex,
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }

    /// Signs a CRL listing `revoked`, numbered `number`, promising the next one within
    /// `next_update_days`.
    ///
    /// # Errors
    /// A serial is not hex, or signing failed.
    pub fn crl(
        &self,
        revoked: &[Revoked],
        number: u64,
        next_update_days: u32,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let serial = hex::decode(&r.serial)
                    .map_err(|_| PkiError::Invalid(format!("serial {} is not hex", r.serial)))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: r.revoked_at,
                    reason_code: Some(r.reason),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(i64::from(next_update_days.max(1))),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// DER of the CA's SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.issuer.key().subject_public_key_info()
    }
}

/// Writes a file readable by its owner only (mode 0600 on Unix), replacing any old one.
///
/// # Errors
/// The file cannot be created or written.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = crate::private_files::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    // A file that existed keeps its mode through open: narrow it before writing the secret.
    crate::private_files::restrict(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes a public file (a certificate, a CRL) atomically: a temporary file, fsynced, renamed
/// over the old one, so a reader (a server watching a CRL file) never sees half of it.
///
/// # Errors
/// The file cannot be written.
pub fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Caller, Role};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use x509_parser::prelude::X509Certificate;

    fn agency(id: &str) -> Subject {
        Subject::Agency(AgencyId::parse(id).unwrap())
    }

    #[test]
    fn issued_client_certificates_carry_one_spiffe_id_and_client_auth() {
        let ca = CertificateAuthority::generate("Test CA", 30).unwrap();
        let issued = ca
            .issue(&agency("ES-CNP"), "puente.local", 30, None)
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let caller = Caller::from_certificate(&der, "puente.local").unwrap();
        assert!(matches!(caller.role, Role::Agency(ref id) if id.as_str() == "ES-CNP"));
        assert_eq!(caller.serial, issued.serial);
        assert_eq!(caller.serial.len(), 40, "20-byte random serial");
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
    }

    #[test]
    fn validity_is_bounded() {
        let ca = CertificateAuthority::generate("Test CA", 30).unwrap();
        assert!(ca
            .issue(&agency("ES-CNP"), "puente.local", 826, None)
            .is_err());
        assert!(ca
            .issue(&agency("ES-CNP"), "puente.local", 0, None)
            .is_err());
        assert!(ca
            .issue(&agency("ES-CNP"), "puente.local", 825, None)
            .is_ok());
    }

    #[test]
    fn csr_gives_only_its_public_key() {
        let ca = CertificateAuthority::generate("Test CA", 30).unwrap();
        // The requester asks to be a CA for another identity.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://puente.local/admin/root".try_into().unwrap(),
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let public_key = csr_public_key(&csr).unwrap();
        let issued = ca
            .issue(&agency("CO-DIJIN"), "puente.local", 30, Some(&public_key))
            .unwrap();
        assert!(issued.key_pem.is_none());
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let caller = Caller::from_certificate(&der, "puente.local").unwrap();
        assert!(matches!(caller.role, Role::Agency(ref id) if id.as_str() == "CO-DIJIN"));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn tampered_csr_is_refused() {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let pem =
            pkcs8::der::pem::encode_string("CERTIFICATE REQUEST", pkcs8::LineEnding::LF, &der)
                .unwrap();
        assert!(matches!(csr_public_key(&pem), Err(PkiError::BadCsr(_))));
    }

    #[test]
    fn person_names_are_spiffe_segments() {
        assert!(check_person_name("ana.garcia").is_ok());
        assert!(check_person_name("").is_err());
        assert!(check_person_name("a/b").is_err());
    }
}
