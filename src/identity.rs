//! Who is calling: the SPIFFE ID in a verified client certificate, parsed once per connection
//! into a [`Caller`] that reaches handlers through request extensions ([`Peer`], in
//! [`peer`]: it also carries the connection's admission state, so it sits above `admission`
//! while the rest of this module sits below it).

mod peer;

pub use peer::{caller_of, peer_of, Peer};

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A SPIFFE ID of this exchange: `spiffe://<trust_domain>/<kind>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// An agency identifier, `[A-Z0-9-]{2,32}`, such as `ES-CNP`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgencyId(String);

/// What a caller may do, taken from the path of its SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An agency system: `/agency/<AGENCY_ID>`.
    Agency(AgencyId),
    /// An auditor: `/auditor/<name>`.
    Auditor(String),
    /// An administrator: `/admin/<name>`.
    Admin(String),
}

/// The verified identity behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The SPIFFE ID from the certificate's URI SAN.
    pub id: SpiffeId,
    /// The role that ID grants.
    pub role: Role,
    /// The certificate's serial number, lower-case hex.
    pub serial: String,
    /// Unix seconds at which the certificate expires.
    pub not_after: i64,
}

/// Serials (lower-case hex) of revoked client certificates, shared by every connection so a
/// new CRL reaches connections that are already open.
pub struct Revocations {
    revoked: ArcSwap<HashSet<String>>,
    generation: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            revoked: ArcSwap::from_pointee(HashSet::new()),
            generation: watch::Sender::new(0),
        }
    }
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("revoked", &self.revoked.load().len())
            .finish()
    }
}

impl Revocations {
    /// Whether the certificate with this serial is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.load().contains(serial)
    }

    /// Replaces the revoked set and wakes every subscriber.
    pub fn replace(&self, revoked: HashSet<String>) {
        self.revoked.store(Arc::new(revoked));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever the revoked set is replaced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// Why a certificate (or a string) is not a valid identity on this exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The connection presented no client certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The certificate is not parseable X.509.
    #[error("the client certificate cannot be parsed")]
    BadCertificate,
    /// The certificate has no `spiffe://` URI SAN.
    #[error("the client certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// The certificate has more than one `spiffe://` URI SAN.
    #[error("the client certificate has {0} spiffe:// URI SANs; exactly one is required")]
    SeveralSpiffeIds(usize),
    /// The certificate was revoked after the connection was opened.
    #[error(
        "the client certificate has been revoked; ask the exchange administrators for a new one"
    )]
    Revoked,
    /// The certificate lacks the clientAuth extended key usage.
    #[error("the client certificate lacks the clientAuth extended key usage")]
    NotForClientAuth,
    /// The string is not a SPIFFE ID.
    #[error("malformed SPIFFE ID: {0}")]
    Malformed(&'static str),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("SPIFFE ID is in trust domain {got:?}, this exchange serves {want:?}")]
    WrongTrustDomain {
        /// The certificate's trust domain.
        got: String,
        /// The configured trust domain.
        want: String,
    },
    /// The SPIFFE ID path is not `/agency/<ID>`, `/auditor/<name>` or `/admin/<name>`.
    #[error("SPIFFE ID path {0:?} names no role; expected /agency/<ID>, /auditor/<name> or /admin/<name>")]
    UnknownRole(String),
    /// The agency id is not `[A-Z0-9-]{2,32}`.
    #[error("invalid agency id {0:?}: expected 2 to 32 characters of A-Z, 0-9 and '-'")]
    BadAgencyId(String),
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses `spiffe://<trust-domain>/<path>`.
    ///
    /// # Errors
    /// `IdentityError::Malformed` naming what is wrong.
    pub fn parse(s: &str) -> Result<SpiffeId, IdentityError> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(IdentityError::Malformed("scheme must be spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or(IdentityError::Malformed("missing path"))?;
        validate_trust_domain(trust_domain)?;
        if path.is_empty() || path.ends_with('/') {
            return Err(IdentityError::Malformed("empty path segment"));
        }
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(IdentityError::Malformed("empty or dot path segment"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(IdentityError::Malformed(
                    "path segments may hold only letters, digits, '-', '.' and '_'",
                ));
            }
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            path: format!("/{path}"),
        })
    }

    /// The trust domain, e.g. `puente.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The role this ID grants in `trust_domain`.
    ///
    /// # Errors
    /// Another trust domain, an unknown role, or a malformed agency id.
    pub fn role(&self, trust_domain: &str) -> Result<Role, IdentityError> {
        if self.trust_domain != trust_domain {
            return Err(IdentityError::WrongTrustDomain {
                got: self.trust_domain.clone(),
                want: trust_domain.to_string(),
            });
        }
        let mut segments = self.path[1..].split('/');
        match (segments.next(), segments.next(), segments.next()) {
            (Some("agency"), Some(id), None) => Ok(Role::Agency(AgencyId::parse(id)?)),
            (Some("auditor"), Some(name), None) => Ok(Role::Auditor(name.to_string())),
            (Some("admin"), Some(name), None) => Ok(Role::Admin(name.to_string())),
            _ => Err(IdentityError::UnknownRole(crate::text::excerpt(&self.path))),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// Checks a SPIFFE trust domain: lower-case letters, digits, `-`, `.` and `_`.
///
/// # Errors
/// `IdentityError::Malformed` if empty, too long or with other characters.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    if trust_domain.is_empty() || trust_domain.len() > 255 {
        return Err(IdentityError::Malformed(
            "trust domain must be 1 to 255 characters",
        ));
    }
    if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(IdentityError::Malformed(
            "trust domain may hold only lower-case letters, digits, '-', '.' and '_'",
        ));
    }
    Ok(())
}

// === impl AgencyId ===

impl AgencyId {
    /// Parses an agency id: 2 to 32 characters of `A-Z`, `0-9` and `-`.
    ///
    /// # Errors
    /// `IdentityError::BadAgencyId`.
    pub fn parse(s: &str) -> Result<AgencyId, IdentityError> {
        let valid = (2..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(AgencyId(s.to_string()))
        } else {
            Err(IdentityError::BadAgencyId(crate::text::excerpt(s)))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl Caller ===

impl Caller {
    /// Reads the identity from a client certificate that TLS has already verified (chain,
    /// validity, revocation). Requires exactly one `spiffe://` URI SAN in `trust_domain` and the
    /// clientAuth EKU.
    ///
    /// # Errors
    /// The `IdentityError` that names the first rule the certificate breaks.
    pub fn from_certificate(der: &[u8], trust_domain: &str) -> Result<Caller, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| IdentityError::BadCertificate)?;
        let mut spiffe_uris = Vec::new();
        let mut client_auth = false;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            if uri.to_ascii_lowercase().starts_with("spiffe:") {
                                spiffe_uris.push(*uri);
                            }
                        }
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => client_auth = eku.client_auth,
                _ => {}
            }
        }
        if !client_auth {
            return Err(IdentityError::NotForClientAuth);
        }
        let uri = match spiffe_uris.as_slice() {
            [] => return Err(IdentityError::NoSpiffeId),
            [one] => *one,
            several => return Err(IdentityError::SeveralSpiffeIds(several.len())),
        };
        let id = SpiffeId::parse(uri)?;
        let role = id.role(trust_domain)?;
        Ok(Caller {
            id,
            role,
            serial: hex::encode(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The agency this caller speaks for, if it is an agency.
    pub fn agency(&self) -> Option<&AgencyId> {
        match &self.role {
            Role::Agency(id) => Some(id),
            Role::Auditor(_) | Role::Admin(_) => None,
        }
    }
}

impl From<IdentityError> for tonic::Status {
    fn from(err: IdentityError) -> Self {
        tonic::Status::unauthenticated(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_into_roles() {
        let cases = [
            (
                "spiffe://puente.local/agency/ES-CNP",
                Ok(Role::Agency(AgencyId("ES-CNP".into()))),
            ),
            (
                "spiffe://puente.local/auditor/ana",
                Ok(Role::Auditor("ana".into())),
            ),
            (
                "spiffe://puente.local/admin/root",
                Ok(Role::Admin("root".into())),
            ),
            (
                "spiffe://puente.local/agency/es-cnp",
                Err(IdentityError::BadAgencyId("es-cnp".into())),
            ),
            (
                "spiffe://puente.local/agency/ES-CNP/x",
                Err(IdentityError::UnknownRole("/agency/ES-CNP/x".into())),
            ),
            (
                "spiffe://other.example/agency/ES-CNP",
                Err(IdentityError::WrongTrustDomain {
                    got: "other.example".into(),
                    want: "puente.local".into(),
                }),
            ),
        ];
        for (uri, want) in cases {
            let got = SpiffeId::parse(uri).and_then(|id| id.role("puente.local"));
            assert_eq!(got, want, "{uri}");
        }
    }

    #[test]
    fn malformed_spiffe_ids_are_refused() {
        for uri in [
            "https://puente.local/agency/ES-CNP",
            "spiffe://puente.local",
            "spiffe://puente.local/",
            "spiffe://puente.local/agency//ES",
            "spiffe://puente.local/agency/../admin",
            "spiffe://Puente.Local/agency/ES-CNP",
            "spiffe://puente.local/agency/ES CNP",
        ] {
            assert!(SpiffeId::parse(uri).is_err(), "{uri}");
        }
    }

    #[test]
    fn agency_ids_follow_the_directory_convention() {
        for ok in [
            "ES-CNP",
            "CO-DIJIN",
            "EU-EUROPOL",
            "XX",
            "A1234567890123456789012345678901",
        ] {
            assert!(AgencyId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "E",
            "es-cnp",
            "ES_CNP",
            "ES CNP",
            "A12345678901234567890123456789012",
        ] {
            assert!(AgencyId::parse(bad).is_err(), "{bad}");
        }
    }
}
