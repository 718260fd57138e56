//! Mutual-TLS connections to a server under test, and assertions on what a call returned.

use std::net::SocketAddr;

use puente::pb::v1::admin_service_client::AdminServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::ListAgenciesRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};

use super::{admin_spiffe, agency_spiffe, TestPki, WAIT};

impl TestPki {
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
}

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

/// Whether a new connection with `cert_pem`/`key_pem`, trusting `ca_pem`, is served a
/// `ListAgencies` call; the error says why not (for [`super::eventually`]).
///
/// # Errors
/// The connection or the call failed.
pub async fn served_with(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    addr: SocketAddr,
) -> Result<(), String> {
    let channel = connect(cert_pem, key_pem, ca_pem, addr)
        .await
        .map_err(|e| e.to_string())?;
    ExchangeServiceClient::new(channel)
        .list_agencies(ListAgenciesRequest {})
        .await
        .map(drop)
        .map_err(|status| status.to_string())
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

/// Asserts that `result` failed with `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    assert_code_for("the call", result, code)
}

/// As [`assert_code`], naming `case` (the row of a table of cases) in the failure message.
#[track_caller]
pub fn assert_code_for<T: std::fmt::Debug>(
    case: &str,
    result: Result<T, Status>,
    code: Code,
) -> Status {
    match result {
        Ok(value) => panic!("{case}: expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{case}: unexpected status {status:?}");
            status
        }
    }
}

/// Asserts that `result` is INVALID_ARGUMENT whose BadRequest details name `field`.
#[track_caller]
pub fn assert_bad_field<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    assert_bad_field_for("the call", result, field);
}

/// As [`assert_bad_field`], naming `case` (the row of a table of cases) in the failure message.
#[track_caller]
pub fn assert_bad_field_for<T: std::fmt::Debug>(
    case: &str,
    result: Result<T, Status>,
    field: &str,
) {
    use tonic_types::StatusExt;
    let status = assert_code_for(case, result, Code::InvalidArgument);
    let details = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("{case}: no BadRequest details in {status:?}"));
    let fields: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "{case}: field violations of {status:?}");
}
