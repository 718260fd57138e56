//! A CA kept in a directory: `ca.pem`, `ca.key` (mode 0600, optionally encrypted) and
//! `ledger.json`, the record of every certificate it issued and revoked and of its CRL number.

use std::path::{Path, PathBuf};

use rcgen::{RevocationReason, SubjectPublicKeyInfo};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    decrypt_key, encrypt_key, write_private, write_public, CertificateAuthority, Issued, PkiError,
    Revoked, Subject,
};

/// One issued certificate in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LedgerEntry {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// SPIFFE ID, or `server:<names>` for server certificates.
    pub identity: String,
    /// Agency id, for agency certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency_id: Option<String>,
    /// Issued at, Unix seconds.
    pub issued_at: i64,
    /// Valid until, Unix seconds.
    pub not_after: i64,
    /// The key came from a CSR (the CA never saw the private key).
    pub from_csr: bool,
    /// Revoked at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// RFC 5280 reason code of the revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<u8>,
}

/// The ledger file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Ledger {
    /// Trust domain of the SPIFFE IDs this CA issues.
    pub trust_domain: String,
    /// Number of the last CRL put in force: written to a file, or accepted by the exchange.
    /// A publication the exchange refused does not advance it.
    pub crl_number: u64,
    /// Every certificate issued, oldest first.
    pub certificates: Vec<LedgerEntry>,
    /// The CRL signed last and not yet recorded as in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_crl: Option<PendingCrl>,
}

/// A CRL signed (numbered one above [`Ledger::crl_number`]) but not yet known to be in force.
/// Signing again while nothing changed returns it as it is, so that retrying a publication
/// whose answer was lost sends the very same CRL rather than a different one with the same
/// number, and repeated refused publications never move the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingCrl {
    /// Its number.
    pub number: u64,
    /// Signed at, Unix seconds.
    pub signed_at: i64,
    /// The days until its next update it was signed with.
    pub next_update_days: u32,
    /// The serials it lists, in ledger order.
    pub serials: Vec<String>,
    /// The CRL, PEM.
    pub pem: String,
}

/// How long a pending CRL is reused, in seconds: later its next-update time would have moved
/// too far toward now.
const PENDING_CRL_REUSE_SECS: i64 = 3_600;

/// Which certificates to revoke.
#[derive(Debug, Clone)]
pub(crate) enum Selector {
    /// One certificate, by serial (hex, case and leading zeros ignored).
    Serial(String),
    /// Every unrevoked certificate of an agency.
    Agency(String),
}

/// A CA directory, opened.
pub(crate) struct Authority {
    dir: PathBuf,
    ca: CertificateAuthority,
    ledger: Ledger,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Normalises a hex serial for comparison: lower case, no separators, no leading zeros.
pub(crate) fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect::<String>()
        .to_ascii_lowercase();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// Revocation reasons by their CLI names, with their RFC 5280 codes.
pub(crate) const REASONS: [(&str, RevocationReason); 7] = [
    ("unspecified", RevocationReason::Unspecified),
    ("key-compromise", RevocationReason::KeyCompromise),
    ("ca-compromise", RevocationReason::CaCompromise),
    ("affiliation-changed", RevocationReason::AffiliationChanged),
    ("superseded", RevocationReason::Superseded),
    (
        "cessation-of-operation",
        RevocationReason::CessationOfOperation,
    ),
    ("privilege-withdrawn", RevocationReason::PrivilegeWithdrawn),
];

/// The name of an RFC 5280 reason code.
pub(crate) fn reason_name(code: u8) -> &'static str {
    REASONS
        .iter()
        .find(|(_, reason)| *reason as u8 == code)
        .map_or("unknown", |(name, _)| name)
}

impl Authority {
    /// Creates a CA in `dir`: `ca.pem`, `ca.key` (0600; encrypted when `passphrase` is given)
    /// and an empty ledger.
    ///
    /// # Errors
    /// A CA already exists there, or files cannot be written.
    pub(crate) fn init(
        dir: &Path,
        trust_domain: &str,
        days: u32,
        passphrase: Option<&[u8]>,
    ) -> Result<Authority, PkiError> {
        crate::identity::validate_trust_domain(trust_domain)
            .map_err(|e| PkiError::Invalid(e.to_string()))?;
        // Owner-only: it holds the CA key and the ledger.
        crate::private_files::create_dir(dir).map_err(io_error(dir))?;
        for name in ["ca.pem", "ca.key", "ledger.json"] {
            if dir.join(name).exists() {
                return Err(PkiError::Invalid(format!(
                    "{} exists: refusing to overwrite an existing CA",
                    dir.join(name).display()
                )));
            }
        }
        let ca = CertificateAuthority::generate(&format!("Puente CA ({trust_domain})"), days)?;
        write_private(&dir.join("ca.key"), &encrypt_key(ca.key(), passphrase)?)?;
        write_public(&dir.join("ca.pem"), ca.cert_pem())?;
        let authority = Authority {
            dir: dir.to_path_buf(),
            ca,
            ledger: Ledger {
                trust_domain: trust_domain.to_string(),
                ..Ledger::default()
            },
        };
        authority.save()?;
        Ok(authority)
    }

    /// Opens the CA in `dir`.
    ///
    /// # Errors
    /// Missing files (run `ca init`), an encrypted key without its passphrase, a bad ledger.
    pub(crate) fn open(dir: &Path, passphrase: Option<&[u8]>) -> Result<Authority, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                path: format!(
                    "{} (create a CA with `puente admin ca init --dir {}`)",
                    path.display(),
                    dir.display()
                ),
                source,
            })
        };
        let key = decrypt_key(&read("ca.key")?, passphrase)?;
        let ca = CertificateAuthority::from_parts(&read("ca.pem")?, key)?;
        let ledger = serde_json::from_str(&read("ledger.json")?).map_err(|e| {
            PkiError::Invalid(format!("{}: {e}", dir.join("ledger.json").display()))
        })?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            ca,
            ledger,
        })
    }

    /// The CA.
    pub(crate) fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The ledger.
    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Writes the ledger atomically (temporary file, fsync, rename, directory fsync).
    fn save(&self) -> Result<(), PkiError> {
        let path = self.dir.join("ledger.json");
        let tmp = self.dir.join("ledger.json.tmp");
        let text = serde_json::to_string_pretty(&self.ledger)
            .map_err(|e| PkiError::Invalid(format!("ledger: {e}")))?;
        write_private(&tmp, &text)?;
        std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
        crate::store::sync_dir(&self.dir).map_err(io_error(&self.dir))
    }

    /// Issues a certificate and records it in the ledger before returning it.
    ///
    /// # Errors
    /// As [`CertificateAuthority::issue`], or the ledger cannot be written.
    pub(crate) fn issue(
        &mut self,
        subject: &Subject,
        days: u32,
        public_key: Option<&SubjectPublicKeyInfo>,
    ) -> Result<Issued, PkiError> {
        let issued = self
            .ca
            .issue(subject, &self.ledger.trust_domain, days, public_key)?;
        self.ledger.certificates.push(LedgerEntry {
            serial: issued.serial.clone(),
            identity: subject.identity(&self.ledger.trust_domain),
            agency_id: match subject {
                Subject::Agency(id) => Some(id.to_string()),
                _ => None,
            },
            issued_at: OffsetDateTime::now_utc().unix_timestamp(),
            not_after: issued.not_after.unix_timestamp(),
            from_csr: public_key.is_some(),
            revoked_at: None,
            revocation_reason: None,
        });
        self.save()?;
        Ok(issued)
    }

    /// Marks certificates revoked in the ledger and returns them. Already revoked ones are
    /// left as they were.
    ///
    /// # Errors
    /// Nothing matches, or the ledger cannot be written.
    pub(crate) fn revoke(
        &mut self,
        selector: &Selector,
        reason: RevocationReason,
    ) -> Result<Vec<LedgerEntry>, PkiError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let matches = |entry: &LedgerEntry| match selector {
            Selector::Serial(serial) => normalize_serial(&entry.serial) == normalize_serial(serial),
            Selector::Agency(id) => entry.agency_id.as_deref() == Some(id.as_str()),
        };
        if !self.ledger.certificates.iter().any(matches) {
            return Err(PkiError::Invalid(match selector {
                Selector::Serial(serial) => format!(
                    "no certificate with serial {serial} in this CA's ledger; see `puente admin cert list`"
                ),
                Selector::Agency(id) => format!("this CA issued no certificate to agency {id}"),
            }));
        }
        let mut revoked = Vec::new();
        for entry in self.ledger.certificates.iter_mut() {
            if matches(entry) && entry.revoked_at.is_none() {
                entry.revoked_at = Some(now);
                entry.revocation_reason = Some(reason as u8);
                revoked.push(entry.clone());
            }
        }
        self.save()?;
        Ok(revoked)
    }

    /// Signs the next CRL (its number one above the last in force) listing every revoked
    /// certificate that may not have expired yet, and keeps it as pending; returns the PEM and
    /// the number. While nothing changed, the pending CRL is returned again. The CRL number in
    /// force moves only with [`Authority::record_crl`], once the CRL is published.
    ///
    /// # Errors
    /// Signing failed, or the ledger cannot be written.
    pub(crate) fn sign_crl(&mut self, next_update_days: u32) -> Result<(String, u64), PkiError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let revoked: Vec<Revoked> = self
            .ledger
            .certificates
            .iter()
            // Listed while the certificate may be valid by either measure: the exchange refuses
            // a CRL that drops a serial revoked less than MAX_LEAF_DAYS ago.
            .filter(|entry| {
                entry.not_after > now
                    || entry
                        .revoked_at
                        .is_some_and(|at| super::revoked_may_be_unexpired(at, now))
            })
            .filter_map(|entry| {
                let revoked_at = OffsetDateTime::from_unix_timestamp(entry.revoked_at?).ok()?;
                let code = entry.revocation_reason.unwrap_or(0);
                let reason = REASONS
                    .iter()
                    .find(|(_, r)| *r as u8 == code)
                    .map_or(RevocationReason::Unspecified, |(_, r)| *r);
                Some(Revoked {
                    serial: entry.serial.clone(),
                    revoked_at,
                    reason,
                })
            })
            .collect();
        let number = self.ledger.crl_number + 1;
        let serials: Vec<String> = revoked.iter().map(|r| r.serial.clone()).collect();
        if let Some(pending) = &self.ledger.pending_crl {
            if pending.number == number
                && pending.serials == serials
                && pending.next_update_days == next_update_days
                && (0..PENDING_CRL_REUSE_SECS).contains(&(now - pending.signed_at))
            {
                return Ok((pending.pem.clone(), number));
            }
        }
        let pem = self.ca.crl(&revoked, number, next_update_days)?;
        self.ledger.pending_crl = Some(PendingCrl {
            number,
            signed_at: now,
            next_update_days,
            serials,
            pem: pem.clone(),
        });
        self.save()?;
        Ok((pem, number))
    }

    /// Records that CRL `number` is in force (written to the CRL file, or accepted by the
    /// exchange): the next one is numbered above it.
    ///
    /// # Errors
    /// The ledger cannot be written.
    pub(crate) fn record_crl(&mut self, number: u64) -> Result<(), PkiError> {
        self.ledger.crl_number = self.ledger.crl_number.max(number);
        if self
            .ledger
            .pending_crl
            .as_ref()
            .is_some_and(|pending| pending.number <= number)
        {
            self.ledger.pending_crl = None;
        }
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AgencyId;

    #[test]
    fn init_refuses_to_overwrite_and_open_needs_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        Authority::init(dir.path(), "puente.local", 365, Some(b"pw")).unwrap();
        assert!(Authority::init(dir.path(), "puente.local", 365, None).is_err());
        assert!(matches!(
            Authority::open(dir.path(), None),
            Err(PkiError::Passphrase(_))
        ));
        assert!(Authority::open(dir.path(), Some(b"pw")).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn issuing_and_revoking_are_recorded_and_crl_numbers_increase() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = Authority::init(dir.path(), "puente.local", 365, None).unwrap();
        let agency = Subject::Agency(AgencyId::parse("ES-CNP").unwrap());
        let first = ca.issue(&agency, 30, None).unwrap();
        let second = ca.issue(&agency, 30, None).unwrap();
        let revoked = ca
            .revoke(
                &Selector::Serial(first.serial.to_uppercase()),
                RevocationReason::KeyCompromise,
            )
            .unwrap();
        assert_eq!(revoked.len(), 1);
        let revoked = ca
            .revoke(
                &Selector::Agency("ES-CNP".into()),
                RevocationReason::Superseded,
            )
            .unwrap();
        assert_eq!(revoked.len(), 1, "only the one not yet revoked");
        assert_eq!(revoked[0].serial, second.serial);
        let (first_pem, one) = ca.sign_crl(7).unwrap();
        let (again_pem, again) = ca.sign_crl(7).unwrap();
        assert_eq!(
            (again, &again_pem),
            (one, &first_pem),
            "unpublished: signing again returns the same CRL"
        );
        ca.record_crl(one).unwrap();
        let (_, two) = ca.sign_crl(7).unwrap();
        ca.record_crl(two).unwrap();
        assert_eq!((one, two), (1, 2));
        let reopened = Authority::open(dir.path(), None).unwrap();
        assert_eq!(reopened.ledger().crl_number, 2);
        assert!(reopened
            .ledger()
            .certificates
            .iter()
            .all(|c| c.revoked_at.is_some()));
        assert!(ca
            .revoke(
                &Selector::Serial("abcd".into()),
                RevocationReason::Unspecified
            )
            .is_err());
    }
}
