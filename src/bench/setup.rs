//! The PKI of a bench run and the identities (senders, readers) it issues.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;

use super::{BenchError, CERT_DAYS, READER_COUNTRIES, SENDER_AGENCIES, SERVER_NAME, UNREAD_AGENCY};
use crate::client::{self, ConnectError};
use crate::config::{ClientProfile, Config, Limits, MetricsListen};
use crate::identity::{AgencyId, Caller, Peer, Revocations};
use crate::pki::{self, CertificateAuthority, PkiError, Subject};
use crate::store::DataKeys;

// === The PKI and the identities of a run ===

/// A CA generated for the run, the server's certificate and key it issued, and its (empty) CRL,
/// on disk. With a CRL the servers check revocation, as a production exchange does.
pub(super) struct Pki {
    pub(super) ca: CertificateAuthority,
    pub(super) dir: PathBuf,
    pub(super) ca_cert: PathBuf,
    pub(super) crl: PathBuf,
    pub(super) server_cert: PathBuf,
    pub(super) server_key: PathBuf,
    pub(super) data_key: PathBuf,
    pub(super) trust_domain: String,
}

impl Pki {
    /// Generates the PKI of a run in `dir`.
    pub(super) fn generate(dir: PathBuf) -> Result<Pki, BenchError> {
        std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
            what: format!("cannot create {}", dir.display()),
            source,
        })?;
        let ca = CertificateAuthority::generate("Puente bench CA", CERT_DAYS)
            .map_err(pki_error("cannot generate the bench's CA"))?;
        let ca_cert = dir.join("ca.pem");
        write_public(&ca_cert, ca.cert_pem())?;
        let crl = dir.join("crl.pem");
        let crl_pem = ca
            .crl(&[], 1, CERT_DAYS)
            .map_err(pki_error("cannot sign the bench's CRL"))?;
        write_public(&crl, &crl_pem)?;
        let data_key = dir.join("data.keys");
        DataKeys::add_new(&data_key).map_err(|source| BenchError::DataKeys {
            what: "cannot create the bench's data key".into(),
            source,
        })?;
        let pki = Pki {
            ca,
            data_key,
            dir,
            ca_cert,
            crl,
            server_cert: PathBuf::new(),
            server_key: PathBuf::new(),
            trust_domain: Config::default().trust_domain,
        };
        let hosts = vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()];
        let server = pki.issue(&Subject::Server(hosts), "server")?;
        Ok(Pki {
            server_cert: server.cert,
            server_key: server.key,
            ..pki
        })
    }

    /// Issues a certificate for `subject` and writes it, and its key, as `<stem>.pem` and
    /// `<stem>.key`.
    pub(super) fn issue(&self, subject: &Subject, stem: &str) -> Result<Identity, BenchError> {
        let issued = self
            .ca
            .issue(subject, &self.trust_domain, CERT_DAYS, None)
            .map_err(pki_error(&format!("cannot issue a certificate for {stem}")))?;
        let key_pem = issued.key_pem.ok_or_else(|| BenchError::MissingKey {
            stem: stem.to_string(),
        })?;
        let (cert, key) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        write_public(&cert, &issued.cert_pem)?;
        pki::write_private(&key, &key_pem).map_err(pki_error(WRITE))?;
        Ok(Identity {
            cert,
            key,
            ca: self.ca_cert.clone(),
            cert_pem: issued.cert_pem,
        })
    }

    /// A server configuration with this PKI and `data_dir`, defaults otherwise.
    pub(super) fn config(&self, data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            tls_cert: self.server_cert.clone(),
            tls_key: self.server_key.clone(),
            client_ca: self.ca_cert.clone(),
            crl: Some(self.crl.clone()),
            data_key: self.data_key.clone(),
            trust_domain: self.trust_domain.clone(),
            // The bench measures capacity: a few sender identities carry every call, so the
            // per-caller rate limit is lifted.
            limits: Limits {
                requests_per_second: u32::MAX,
                request_burst: u32::MAX,
                // Each timed proof is an audited query.
                audited_calls_per_minute: u32::MAX,
                audited_call_burst: u32::MAX,
                ..Limits::default()
            },
            // One sender identity carries many connections.
            max_connections_per_identity: crate::config::DEFAULT_MAX_CONNECTIONS,
            // Servers of one run come and go in this process: the default port would clash
            // with a server running on this machine. The per-call metrics are still recorded.
            metrics_listen: MetricsListen::Off,
            ..Config::default()
        }
    }
}

/// A client certificate and key on disk, used as a CLI profile uses them.
pub(super) struct Identity {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) ca: PathBuf,
    pub(super) cert_pem: String,
}

impl Identity {
    /// A new mutual-TLS connection to the server at `addr`.
    pub(super) async fn connect(&self, addr: SocketAddr) -> Result<Channel, ConnectError> {
        client::connect(&ClientProfile {
            addr: addr.to_string(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            server_name: SERVER_NAME.into(),
        })
        .await
    }

    /// What the server makes of this certificate on a connection.
    pub(super) fn peer(&self, trust_domain: &str) -> Result<Peer, BenchError> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(BenchError::Certificate)?;
        let caller = Caller::from_certificate(&der, trust_domain).map_err(|source| {
            BenchError::Identity {
                what: "the bench's own certificate names no identity".into(),
                source,
            }
        })?;
        Ok(Peer {
            caller: Ok(Arc::new(caller)),
            remote_addr: None,
            revocations: Arc::new(Revocations::default()),
            activity: Arc::default(),
            audit_budget: Arc::default(),
        })
    }
}

/// An agency of the run and its certificate.
pub(super) struct Member {
    pub(super) id: AgencyId,
    pub(super) identity: Identity,
}

/// Who takes part: the sending agencies, one agency per reader, and an auditor.
pub(super) struct Cast {
    pub(super) senders: Vec<Member>,
    pub(super) readers: Vec<Member>,
    pub(super) auditor: Identity,
}

impl Cast {
    /// Certificates for `senders` connections (at most one agency per entry of
    /// [`SENDER_AGENCIES`]), `readers` reading agencies and an auditor.
    pub(super) fn issue(pki: &Pki, senders: usize, readers: usize) -> Result<Cast, BenchError> {
        let member = |id: String| -> Result<Member, BenchError> {
            let id = AgencyId::parse(&id).map_err(|source| BenchError::Identity {
                what: format!("{id:?} is no agency id"),
                source,
            })?;
            let identity = pki.issue(&Subject::Agency(id.clone()), id.as_str())?;
            Ok(Member { id, identity })
        };
        let senders = SENDER_AGENCIES
            .iter()
            .take(senders)
            .map(|id| member(id.to_string()))
            .collect::<Result<_, BenchError>>()?;
        let readers = (0..readers)
            .map(|i| {
                member(format!(
                    "{}-R{i:03}",
                    READER_COUNTRIES[i % READER_COUNTRIES.len()]
                ))
            })
            .collect::<Result<_, BenchError>>()?;
        let auditor = pki.issue(&Subject::Auditor("bench".into()), "auditor")?;
        Ok(Cast {
            senders,
            readers,
            auditor,
        })
    }

    /// The agency that sender connection `i` sends as.
    pub(super) fn sender(&self, i: usize) -> &Member {
        &self.senders[i % self.senders.len()]
    }

    /// Where the measured messages go, round-robin.
    pub(super) fn recipients(&self) -> Arc<[String]> {
        if self.readers.is_empty() {
            Arc::from([UNREAD_AGENCY.to_string()])
        } else {
            self.readers.iter().map(|r| r.id.to_string()).collect()
        }
    }
}

/// What failed when a file of the PKI could not be written (the error names the file).
const WRITE: &str = "cannot write the bench's PKI";

/// Writes a certificate or CRL of the run.
fn write_public(path: &Path, pem: &str) -> Result<(), BenchError> {
    pki::write_public(path, pem).map_err(pki_error(WRITE))
}

/// Wraps a PKI failure with what the run was doing.
fn pki_error(what: &str) -> impl FnOnce(PkiError) -> BenchError + '_ {
    move |source| BenchError::Pki {
        what: what.to_string(),
        source,
    }
}
