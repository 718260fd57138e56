//! The throw-away PKI of the tests ([`TestPki`]): a CA of its own, the server certificate,
//! client certificates and CRLs on demand, the server's data keyring, and the SPIFFE IDs of the
//! test trust domain.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

/// Trust domain the test server serves (the configuration default).
pub const TRUST_DOMAIN: &str = "puente.local";

/// SPIFFE ID of an agency in the test trust domain.
pub fn agency_spiffe(id: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/agency/{id}")
}

/// SPIFFE ID of an administrator in the test trust domain.
pub fn admin_spiffe(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/admin/{name}")
}

/// SPIFFE ID of an auditor in the test trust domain.
pub fn auditor_spiffe(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/auditor/{name}")
}

/// A URI subject alternative name.
pub fn uri_san(uri: &str) -> SanType {
    SanType::URI(rcgen::string::Ia5String::try_from(uri).expect("URI SAN is IA5"))
}

// === TestPki ===

/// A CA of its own, a server certificate for `localhost`/`127.0.0.1`, and client certificates
/// on demand. Two `TestPki::new()` are two unrelated CAs (with the same subject name).
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CA certificate: the server's client CA bundle and the clients' trust anchor.
    pub ca_pem: String,
    /// PEM of the server certificate.
    pub server_cert_pem: String,
    /// PEM of the server key.
    pub server_key_pem: String,
    /// The server's data keyring (`puente data-key new`), the same for every server of this
    /// PKI so that a restarted server opens the bodies the first one sealed.
    pub data_keys: String,
}

/// Serial numbers unique within the test process.
static SERIALS: AtomicU64 = AtomicU64::new(1);

fn next_serial() -> SerialNumber {
    let n = SERIALS.fetch_add(1, Ordering::Relaxed);
    let mut bytes = vec![0x01];
    bytes.extend_from_slice(&n.to_be_bytes());
    SerialNumber::from_slice(&bytes)
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl TestPki {
    /// A fresh CA (P-256, path length 0) and a server certificate it issued.
    pub fn new() -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Puente test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = now() - time::Duration::hours(1);
        ca_params.not_after = now() + time::Duration::days(2);
        ca_params.serial_number = Some(next_serial());
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server SANs");
        server_params.distinguished_name = rcgen::DistinguishedName::new();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.not_before = now() - time::Duration::hours(1);
        server_params.not_after = now() + time::Duration::days(30);
        server_params.serial_number = Some(next_serial());
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let keyring = tempfile::tempdir().expect("temporary directory");
        let keyring_path = keyring.path().join("data.keys");
        puente::store::DataKeys::add_new(&keyring_path).expect("data key");
        TestPki {
            issuer,
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            data_keys: std::fs::read_to_string(&keyring_path).expect("read data keyring"),
        }
    }

    /// Writes the data keyring as `path`, readable by its owner only.
    pub fn write_data_keys(&self, path: &Path) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut file| file.write_all(self.data_keys.as_bytes()))
            .expect("write data keyring");
    }

    /// The parameters of a normal client certificate for `spiffe_uri`: that one URI SAN, the
    /// clientAuth EKU, valid from an hour ago until tomorrow.
    pub fn client_params(spiffe_uri: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "puente test client");
        params.subject_alt_names = vec![uri_san(spiffe_uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + time::Duration::days(30);
        params
    }

    /// Signs `params` with this CA under a fresh key and serial; returns `(cert_pem, key_pem)`.
    pub fn sign(&self, params: CertificateParams) -> (String, String) {
        let (cert, key, _) = self.sign_with_serial(params);
        (cert, key)
    }

    /// As [`TestPki::sign`], also returning the serial number (to revoke it).
    pub fn sign_with_serial(
        &self,
        mut params: CertificateParams,
    ) -> (String, String, SerialNumber) {
        let key = KeyPair::generate().expect("client key");
        let serial = next_serial();
        params.serial_number = Some(serial.clone());
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        (cert.pem(), key.serialize_pem(), serial)
    }

    /// A PEM CRL signed by this CA that revokes `serials`.
    pub fn crl(&self, serials: &[SerialNumber]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: now() - time::Duration::minutes(5),
            next_update: now() + time::Duration::days(1),
            crl_number: next_serial(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: serial.clone(),
                    revocation_time: now() - time::Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }

    /// A normal client certificate for `spiffe_uri`: `(cert_pem, key_pem)`.
    pub fn issue(&self, spiffe_uri: &str) -> (String, String) {
        self.issue_with(spiffe_uri, |_| {})
    }

    /// A client certificate for `spiffe_uri` whose parameters `edit` changes first (validity,
    /// EKUs, SANs...).
    pub fn issue_with(
        &self,
        spiffe_uri: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let mut params = TestPki::client_params(spiffe_uri);
        edit(&mut params);
        self.sign(params)
    }

    /// A client certificate for `spiffe_uri` issued by an intermediate CA that this CA signed:
    /// `(chain_pem, key_pem)`, the chain being the leaf followed by the intermediate.
    pub fn issue_via_intermediate(&self, spiffe_uri: &str) -> (String, String) {
        let intermediate_key = KeyPair::generate().expect("intermediate key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Rogue intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + time::Duration::days(1);
        params.serial_number = Some(next_serial());
        let intermediate = params
            .signed_by(&intermediate_key, &self.issuer)
            .expect("intermediate certificate");
        let intermediate_issuer = Issuer::new(params, intermediate_key);
        let key = KeyPair::generate().expect("client key");
        let mut leaf = TestPki::client_params(spiffe_uri);
        leaf.serial_number = Some(next_serial());
        let cert = leaf
            .signed_by(&key, &intermediate_issuer)
            .expect("leaf certificate");
        (
            format!("{}{}", cert.pem(), intermediate.pem()),
            key.serialize_pem(),
        )
    }

    /// Writes the files [`ServerProcess::start`] reads from `dir`: `server.pem`, `server.key`,
    /// `ca.pem` (the client CA bundle) and `data.keys`.
    pub fn write_server_files(&self, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        for (name, pem) in [
            ("server.pem", &self.server_cert_pem),
            ("server.key", &self.server_key_pem),
            ("ca.pem", &self.ca_pem),
        ] {
            std::fs::write(dir.join(name), pem).expect("write TLS file");
        }
        // A private key is its owner's alone (`puente config check` refuses it otherwise).
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod 600 server.key");
        self.write_data_keys(&dir.join("data.keys"));
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
