//! Shared fixtures of the integration tests: a throw-away PKI ([`TestPki`]), a real server on
//! `127.0.0.1:0` with a temporary data directory ([`TestServer`]), mutual-TLS clients, and
//! builders for valid requests.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use puente::audit::merkle::{verify_consistency, Hash};
use puente::audit::note::{Checkpoint, NoteVerifier};
use puente::config::{Config, MetricsListen};
use puente::pb::v1::admin_service_client::AdminServiceClient;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    send_message_request, Agency, AgencyStatus, Evaluation, GetCheckpointRequest,
    GetConsistencyProofRequest, GetDeliveryStatusRequest, GetLogInfoRequest, HandlingCode,
    InformationAccuracy, ListAgenciesRequest, Region, RegisterAgencyRequest, SendMessageRequest,
    SourceReliability, StreamInboxRequest, StreamInboxResponse, Topic, UpdateAgencyRequest,
};
use puente::server::ServerError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status, Streaming};

/// Trust domain the test server serves (the configuration default).
pub const TRUST_DOMAIN: &str = "puente.local";
/// Upper bound for any single wait in a test, so that a bug fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(10);

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

    /// A channel authenticated as `spiffe_uri` with a normal certificate. Panics if the
    /// connection fails.
    pub async fn client_for(&self, spiffe_uri: &str, addr: SocketAddr) -> Channel {
        let (cert, key) = self.issue(spiffe_uri);
        connect(&cert, &key, &self.ca_pem, addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect as {spiffe_uri}: {e:?}"))
    }

    /// An ExchangeService client for agency `id`.
    pub async fn agency_client(
        &self,
        id: &str,
        addr: SocketAddr,
    ) -> ExchangeServiceClient<Channel> {
        ExchangeServiceClient::new(self.client_for(&agency_spiffe(id), addr).await)
    }

    /// An AdminService client for administrator `name`.
    pub async fn admin_client(&self, name: &str, addr: SocketAddr) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.client_for(&admin_spiffe(name), addr).await)
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

// === Connections ===

fn endpoint(addr: SocketAddr) -> tonic::transport::Endpoint {
    Channel::from_shared(format!("https://{addr}"))
        .expect("valid URL")
        .connect_timeout(WAIT)
}

/// Connects over mutual TLS with a client certificate, trusting `ca_pem` for the server.
///
/// # Errors
/// The TLS configuration or the connection fails. A refused handshake may also surface only at
/// the first call (TLS 1.3 verifies the client certificate after the client finishes): use
/// [`assert_refused`] to accept both.
pub async fn connect(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    addr: SocketAddr,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem));
    endpoint(addr).tls_config(tls)?.connect().await
}

/// Connects over TLS without presenting any client certificate.
///
/// # Errors
/// As [`connect`].
pub async fn connect_without_certificate(
    ca_pem: &str,
    addr: SocketAddr,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca_pem));
    endpoint(addr).tls_config(tls)?.connect().await
}

/// Asserts that the server refused the connection: either `connect` failed, or the channel
/// fails its first call with a transport error (not with an answer from a handler).
pub async fn assert_refused(connected: Result<Channel, tonic::transport::Error>) {
    let channel = match connected {
        Err(_) => return,
        Ok(channel) => channel,
    };
    let mut client = ExchangeServiceClient::new(channel);
    let call = tokio::time::timeout(WAIT, client.list_agencies(ListAgenciesRequest {}))
        .await
        .expect("a refused connection must fail promptly, not hang");
    match call {
        Ok(_) => panic!("the server answered a call over a connection it should have refused"),
        Err(status) => assert!(
            is_transport_failure(&status),
            "expected a transport failure, got an answer from the server: {status:?}"
        ),
    }
}

/// Whether a status comes from the client's transport rather than from a server handler: also
/// `INTERNAL` made by the client from an HTTP/2 error (a GOAWAY racing a call while the server
/// drains).
pub fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) || std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

// === TestServer ===

/// A Puente server on `127.0.0.1:<ephemeral>` with its own temporary data directory and TLS
/// files. Shuts down when dropped.
pub struct TestServer {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _dir: TempDir,
}

impl TestServer {
    /// A server with the default configuration, trusting `pki`'s CA.
    pub async fn spawn(pki: &TestPki) -> TestServer {
        TestServer::spawn_with(pki, |_| {}).await
    }

    /// A server whose configuration `edit` adjusts (limits, trust domain...) before it starts.
    pub async fn spawn_with(pki: &TestPki, edit: impl FnOnce(&mut Config)) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();

        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write TLS file");
            path
        };
        let tls_cert = write("server.pem", &pki.server_cert_pem);
        let tls_key = write("server.key", &pki.server_key_pem);
        let client_ca = write("ca.pem", &pki.ca_pem);
        let data_key = dir.path().join("data.keys");
        pki.write_data_keys(&data_key);
        let data_dir = dir.path().join("data");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut config = Config {
            listen: addr,
            data_dir: data_dir.clone(),
            tls_cert,
            tls_key,
            client_ca,
            data_key,
            // Tests run many servers at once; none reads their metrics over HTTP.
            metrics_listen: MetricsListen::Off,
            ..Default::default()
        };
        edit(&mut config);

        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stop.await;
            };
            let served = puente::server::run(listener, config, stopped).await;
            if let Err(e) = &served {
                // Otherwise only visible as refused connections.
                eprintln!("test server failed: {e}");
            }
            served
        });
        TestServer {
            addr,
            data_dir,
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Asks the server to shut down without waiting for it.
    pub fn request_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts the server down and waits (at most [`WAIT`] plus its drain timeout) until `run`
    /// returns; returns what it returned.
    pub async fn stop(mut self, drain_timeout: Duration) -> Result<(), ServerError> {
        self.request_shutdown();
        let task = self.task.take().expect("server task");
        tokio::time::timeout(WAIT + drain_timeout, task)
            .await
            .expect("server stops in time")
            .expect("server task did not panic")
    }

    /// Registers agency `id` in `region` through AdminService; see [`register_agency`].
    pub async fn register(&self, pki: &TestPki, id: &str, region: Region) -> Agency {
        register_agency(pki, self.addr, id, region).await
    }

    /// Sets the status of a registered agency, keeping its other fields.
    pub async fn set_status(&self, pki: &TestPki, id: &str, status: AgencyStatus) -> Agency {
        let mut admin = pki.admin_client("root", self.addr).await;
        let mut agency = admin
            .list_agencies(puente::pb::v1::AdminServiceListAgenciesRequest {})
            .await
            .expect("admin ListAgencies")
            .into_inner()
            .agencies
            .into_iter()
            .find(|a| a.agency_id == id)
            .unwrap_or_else(|| panic!("{id} is not registered"));
        agency.status = status as i32;
        admin
            .update_agency(UpdateAgencyRequest {
                agency: Some(agency),
            })
            .await
            .unwrap_or_else(|s| panic!("cannot update {id}: {s:?}"))
            .into_inner()
            .agency
            .expect("updated agency")
    }

    /// Suspends a registered agency.
    pub async fn suspend(&self, pki: &TestPki, id: &str) -> Agency {
        self.set_status(pki, id, AgencyStatus::Suspended).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.request_shutdown();
    }
}

// === ServerProcess ===

/// A `puente serve` child process on `127.0.0.1:<ephemeral>`, with its metrics endpoint on
/// another ephemeral loopback port. Killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its metrics endpoint listens.
    pub metrics_addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the binary with the files [`TestPki::write_server_files`] wrote to `dir` and data
    /// directory `dir/data` (see [`ServerProcess::file_args`]).
    pub fn start(dir: &Path) -> ServerProcess {
        ServerProcess::start_with(ServerProcess::file_args(dir))
    }

    /// The flags naming the files [`TestPki::write_server_files`] wrote to `dir` (`server.pem`,
    /// `server.key`, client CA `ca.pem`, data keyring `data.keys`) and data directory `dir/data`.
    pub fn file_args(dir: &Path) -> Vec<OsString> {
        [
            ("--data-dir", "data"),
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
            ("--client-ca", "ca.pem"),
            ("--data-key", "data.keys"),
        ]
        .into_iter()
        .flat_map(|(flag, name)| [OsString::from(flag), dir.join(name).into_os_string()])
        .collect()
    }

    /// Starts `puente serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0` with these
    /// further arguments, logging warnings to the test's stderr; see [`ServerProcess::spawn`].
    pub fn start_with<I, S>(args: I) -> ServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        ServerProcess::spawn(ServerProcess::command(args), "warn", Stdio::inherit())
    }

    /// `puente serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0` with these further
    /// arguments.
    pub fn command<I, S>(args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_puente"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(args);
        command
    }

    /// Starts `command`, which must end up running `puente serve` with both listeners on port 0
    /// in the same process (e.g. [`ServerProcess::command`], or a shell that `exec`s it), with
    /// `RUST_LOG=rust_log` and its stderr to `stderr`, and reads the bound addresses from the
    /// first two lines of its stdout.
    pub fn spawn(mut command: Command, rust_log: &str, stderr: Stdio) -> ServerProcess {
        let mut child = command
            .env("RUST_LOG", rust_log)
            .env_remove("PUENTE_CONFIG")
            .env_remove("PUENTE_CRL")
            .env_remove("PUENTE_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start puente serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut read_addr = |prefix: &str| -> SocketAddr {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read an address line");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got the line {line:?}"))
                .parse()
                .expect("socket address")
        };
        let addr = read_addr("listening on ");
        let metrics_addr = read_addr("metrics on ");
        ServerProcess {
            child,
            addr,
            metrics_addr,
        }
    }

    /// The process id (to read its memory from `/proc/<pid>/status`, or limit it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself within `within`; its exit status.
    pub fn wait_for_exit(mut self, within: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for exit")
    }

    /// Sends a signal by name (`HUP`, ...) and leaves the process running.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === Requests ===

/// A valid text message: topic firearms trafficking, handling H1, evaluation B2.
pub fn text_message(
    client_message_id: &str,
    recipients: &[&str],
    text: &str,
) -> SendMessageRequest {
    SendMessageRequest {
        client_message_id: client_message_id.to_string(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        topic: Topic::FirearmsTrafficking as i32,
        subject: "Seized pistol, serial number filed off".to_string(),
        handling: HandlingCode::H1 as i32,
        evaluation: Some(Evaluation {
            source_reliability: SourceReliability::B as i32,
            information_accuracy: InformationAccuracy::InformationAccuracy2 as i32,
        }),
        content: Some(send_message_request::Content::Text(text.to_string())),
        ..Default::default()
    }
}

/// A valid message with a fixed text.
pub fn message(client_message_id: &str, recipients: &[&str]) -> SendMessageRequest {
    text_message(
        client_message_id,
        recipients,
        "Glock 17 seized at the port of Algeciras; container from Cartagena.",
    )
}

/// The digest a stored message must carry: SHA-256 of the encoding of a `SendMessageRequest`
/// holding only the request's content and attachments, fields in field-number order (as the
/// protobuf libraries of other languages write them): text (9), attachments (10), or
/// attachments (10), structured report (11 to 14).
pub fn content_sha256(request: &SendMessageRequest) -> Vec<u8> {
    let content = SendMessageRequest {
        content: request.content.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let attachments = SendMessageRequest {
        attachments: request.attachments.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let text_or_nothing = matches!(
        request.content,
        None | Some(send_message_request::Content::Text(_))
    );
    let body = if text_or_nothing {
        [content, attachments].concat()
    } else {
        [attachments, content].concat()
    };
    Sha256::digest(body).to_vec()
}

/// The text of a delivered message, if it carries text.
pub fn text_of(message: &puente::pb::v1::Message) -> Option<&str> {
    match &message.content {
        Some(puente::pb::v1::message::Content::Text(text)) => Some(text),
        _ => None,
    }
}

// === Inbox streams ===

/// Registers agency `id` in `region` through the AdminService of the server at `addr` (as
/// administrator `root`) and returns it as stored. The country is the id's first two letters,
/// or `XX` for an international organisation.
pub async fn register_agency(pki: &TestPki, addr: SocketAddr, id: &str, region: Region) -> Agency {
    let country = match region {
        Region::International => "XX".to_string(),
        _ => id[..2].to_string(),
    };
    let agency = Agency {
        agency_id: id.to_string(),
        name: format!("Agency {id}"),
        country,
        region: region as i32,
        status: AgencyStatus::Unspecified as i32,
    };
    pki.admin_client("root", addr)
        .await
        .register_agency(RegisterAgencyRequest {
            agency: Some(agency),
        })
        .await
        .unwrap_or_else(|s| panic!("cannot register {id}: {s:?}"))
        .into_inner()
        .agency
        .expect("registered agency")
}

/// The checkpoint of a signed note, after checking its signature with the log's verifier key.
/// Panics if the key, the signature or the body is bad.
pub fn verify_checkpoint(verifier_key: &str, note: &str) -> Checkpoint {
    let verifier = NoteVerifier::parse(verifier_key).expect("verifier key");
    Checkpoint::parse(verifier.verify(note).expect("signed by the log key"))
        .expect("checkpoint body")
}

/// The log's verifier key and its latest checkpoint, whose signature is checked with that key.
pub async fn signed_checkpoint(client: &mut AuditServiceClient<Channel>) -> (String, Checkpoint) {
    let key = client
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner()
        .verifier_key;
    let note = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner()
        .checkpoint;
    let checkpoint = verify_checkpoint(&key, &note);
    (key, checkpoint)
}

/// Asserts, with a consistency proof from the server, that the log of checkpoint `after`
/// extends the log of checkpoint `before`.
pub async fn assert_log_extends(
    client: &mut AuditServiceClient<Channel>,
    before: &Checkpoint,
    after: &Checkpoint,
) {
    assert!(
        after.size >= before.size,
        "the log shrank from {} to {} entries",
        before.size,
        after.size
    );
    let proof: Vec<Hash> = client
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: before.size,
            to_size: after.size,
        })
        .await
        .expect("consistency proof")
        .into_inner()
        .hashes
        .into_iter()
        .map(|h| h.try_into().expect("32-byte hash"))
        .collect();
    verify_consistency(before.size, after.size, &proof, &before.root, &after.root)
        .expect("the later log extends the earlier checkpoint");
}

/// Each recipient's delivery state of a message, as its sender sees it: (agency id, state).
pub async fn delivery_states(
    client: &mut ExchangeServiceClient<Channel>,
    message_id: &str,
) -> Vec<(String, i32)> {
    client
        .get_delivery_status(GetDeliveryStatusRequest {
            message_id: message_id.to_string(),
        })
        .await
        .expect("GetDeliveryStatus")
        .into_inner()
        .recipients
        .into_iter()
        .map(|r| (r.agency_id, r.state))
        .collect()
}

/// Every entry of the caller's inbox from sequence 1, backlog only, in order.
pub async fn backlog(client: &mut ExchangeServiceClient<Channel>) -> Vec<StreamInboxResponse> {
    let mut stream = client
        .stream_inbox(StreamInboxRequest {
            after_sequence: 0,
            backlog_only: true,
        })
        .await
        .expect("StreamInbox")
        .into_inner();
    let mut entries = Vec::new();
    while let Some(entry) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("inbox stream stalled")
        .expect("inbox stream failed")
    {
        entries.push(entry);
    }
    entries
}

/// A `StreamInbox` request resuming after `after_sequence`.
pub fn inbox_request(after_sequence: u64) -> StreamInboxRequest {
    StreamInboxRequest {
        after_sequence,
        ..Default::default()
    }
}

/// Opens the caller's inbox stream after `after_sequence`; panics if the call is refused.
pub async fn open_inbox(
    client: &mut ExchangeServiceClient<Channel>,
    after_sequence: u64,
) -> Streaming<StreamInboxResponse> {
    tokio::time::timeout(WAIT, client.stream_inbox(inbox_request(after_sequence)))
        .await
        .expect("StreamInbox did not answer in time")
        .expect("StreamInbox refused")
        .into_inner()
}

/// The next entry of an inbox stream; panics on error, end of stream or timeout.
pub async fn next_entry(stream: &mut Streaming<StreamInboxResponse>) -> StreamInboxResponse {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Err(_) => panic!("no inbox entry within {WAIT:?}"),
        Ok(Err(status)) => panic!("inbox stream failed: {status:?}"),
        Ok(Ok(None)) => panic!("inbox stream ended"),
        Ok(Ok(Some(entry))) => entry,
    }
}

/// The next `n` entries of an inbox stream.
pub async fn next_entries(
    stream: &mut Streaming<StreamInboxResponse>,
    n: usize,
) -> Vec<StreamInboxResponse> {
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(next_entry(stream).await);
    }
    entries
}

/// The first entry of agency `id`'s inbox (sequence 1 onwards).
pub async fn first_inbox_entry(
    pki: &TestPki,
    server: &TestServer,
    id: &str,
) -> StreamInboxResponse {
    let mut client = pki.agency_client(id, server.addr).await;
    let mut stream = open_inbox(&mut client, 0).await;
    next_entry(&mut stream).await
}

/// Asserts that `result` failed with `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status {status:?}");
            status
        }
    }
}

/// Asserts that `result` is INVALID_ARGUMENT whose BadRequest details name `field`.
#[track_caller]
pub fn assert_bad_field<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    use tonic_types::StatusExt;
    let status = assert_code(result, Code::InvalidArgument);
    let details = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    let fields: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "field violations of {status:?}");
}
