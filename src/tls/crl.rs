//! Certificate revocation lists: parsing and verifying one against the trusted CAs, the set in
//! force (one CRL per CA, never replaced by a lower number nor, unless allowed, by one that
//! un-revokes a certificate that may still be valid), and why a CRL is refused.

use std::collections::HashSet;
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{FromDer, X509Certificate};

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

/// One CA's CRL in force.
#[derive(Debug, Clone)]
pub(super) struct AppliedCrl {
    pub(super) issuer: Vec<u8>,
    pub(super) number: BigUint,
    pub(super) next_update: Option<i64>,
    pub(super) der: CertificateRevocationListDer<'static>,
    pub(super) revoked: Vec<RevokedSerial>,
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RevokedSerial {
    /// Serial number, hex of its DER content octets.
    pub(super) serial: String,
    /// Revocation date, Unix seconds.
    pub(super) revoked_at: i64,
}

/// The CRL blocks of a PEM text.
pub(super) fn crl_blocks(
    pem: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, CrlError> {
    let ders = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CrlError::Malformed(e.to_string()))?;
    if ders.is_empty() {
        return Err(CrlError::Malformed("no X509 CRL PEM block".into()));
    }
    Ok(ders)
}

pub(super) fn verify_crl(
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
pub(super) struct Merged {
    /// The set changed.
    pub(super) changed: bool,
    /// Serials the replaced CRL revoked, that may not have expired, and that the new one omits.
    pub(super) unrevoked: Vec<String>,
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
pub(super) fn merge(
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

pub(super) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
}
