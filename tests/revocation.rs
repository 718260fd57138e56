//! Revocation and rotation, enforced live: CRLs published through AdminService or dropped into
//! the watched `--crl` file reach new handshakes, the next call of open connections and open
//! inbox streams; they survive a restart; bad CRLs are refused; certificate and CA files are
//! reloaded without dropping connections.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    agency_spiffe, assert_code, assert_refused, connect, eventually, inbox_request, served_with,
    TestPki, TestServer, WAIT,
};
use puente::pb::v1::admin_service_client::AdminServiceClient;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    AuditAction, ListAgenciesRequest, ListAuditEntriesRequest, PublishRevocationListRequest, Region,
};
use tonic::transport::Channel;
use tonic::Code;

/// An agency certificate and its serial: `(cert_pem, key_pem, serial)`.
fn agency_cert(pki: &TestPki, id: &str) -> (String, String, rcgen::SerialNumber) {
    pki.sign_with_serial(TestPki::client_params(&agency_spiffe(id)))
}

async fn server(pki: &TestPki) -> TestServer {
    let server = TestServer::spawn(pki).await;
    server.register(pki, "ES-CNP", Region::Eu).await;
    server.register(pki, "CO-DIJIN", Region::Celac).await;
    server
}

async fn exchange(
    cert: &str,
    key: &str,
    pki: &TestPki,
    server: &TestServer,
) -> ExchangeServiceClient<Channel> {
    ExchangeServiceClient::new(
        connect(cert, key, &pki.ca_pem, server.addr)
            .await
            .expect("connect"),
    )
}

async fn publish(
    admin: &mut AdminServiceClient<Channel>,
    crl_pem: String,
) -> Result<u64, tonic::Status> {
    admin
        .publish_revocation_list(PublishRevocationListRequest {
            crl_pem,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().crl_number)
}

/// Publishes with `allow_unrevoke` and `reason`.
async fn publish_unrevoking(
    admin: &mut AdminServiceClient<Channel>,
    crl_pem: String,
    reason: &str,
) -> Result<u64, tonic::Status> {
    admin
        .publish_revocation_list(PublishRevocationListRequest {
            crl_pem,
            allow_unrevoke: true,
            unrevoke_reason: reason.into(),
        })
        .await
        .map(|r| r.into_inner().crl_number)
}

/// The `reason` of every CRL_APPLIED audit entry, read by an auditor.
async fn crl_audit_reasons(pki: &TestPki, server: &TestServer) -> Vec<String> {
    let mut auditor = AuditServiceClient::new(
        pki.client_for(&common::auditor_spiffe("ana"), server.addr)
            .await,
    );
    let mut stream = auditor
        .list_audit_entries(ListAuditEntriesRequest {
            action: AuditAction::CrlApplied as i32,
            ..Default::default()
        })
        .await
        .expect("list audit entries")
        .into_inner();
    let mut reasons = Vec::new();
    while let Some(entry) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("listing stalled")
        .expect("audit entry")
    {
        reasons.push(entry.event.expect("event").reason);
    }
    reasons
}

/// A CRL published through AdminService refuses the revoked certificate's next handshake, others
/// unaffected.
#[tokio::test]
async fn published_crl_refuses_the_next_handshake() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    let mut before = exchange(&cert, &key, &pki, &server).await;
    before
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("valid before revocation");

    let mut admin = pki.admin_client("root", server.addr).await;
    publish(&mut admin, pki.crl(&[serial]))
        .await
        .expect("publish CRL");

    assert_refused(connect(&cert, &key, &pki.ca_pem, server.addr).await).await;
    // Other agencies are unaffected.
    let (other_cert, other_key, _) = agency_cert(&pki, "CO-DIJIN");
    exchange(&other_cert, &other_key, &pki, &server)
        .await
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("unrevoked agency still served");
}

/// A published CRL refuses the next call on a connection opened before it.
#[tokio::test]
async fn revoked_certificate_is_refused_on_open_connection() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    let mut client = exchange(&cert, &key, &pki, &server).await;
    client
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("valid before revocation");

    let mut admin = pki.admin_client("root", server.addr).await;
    publish(&mut admin, pki.crl(&[serial]))
        .await
        .expect("publish CRL");

    assert_code(
        client.list_agencies(ListAgenciesRequest {}).await,
        Code::Unauthenticated,
    );
    assert_code(
        client
            .send_message(common::message("after-revocation", &["CO-DIJIN"]))
            .await,
        Code::Unauthenticated,
    );
}

/// An open inbox stream ends when its certificate is revoked.
#[tokio::test]
async fn inbox_stream_ends_when_its_certificate_is_revoked() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let (cert, key, serial) = agency_cert(&pki, "CO-DIJIN");
    let mut client = exchange(&cert, &key, &pki, &server).await;
    let mut stream = client
        .stream_inbox(inbox_request(0))
        .await
        .expect("open live inbox")
        .into_inner();

    let mut admin = pki.admin_client("root", server.addr).await;
    publish(&mut admin, pki.crl(&[serial]))
        .await
        .expect("publish CRL");

    let ended = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream must end, not stay open");
    assert_eq!(
        ended.expect_err("stream ends with an error").code(),
        Code::Unauthenticated
    );
}

/// A CRL signed by another CA is refused.
#[tokio::test]
async fn crl_from_another_ca_is_refused() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let foreign = TestPki::new();
    let (_, _, serial) = agency_cert(&pki, "ES-CNP");
    let mut admin = pki.admin_client("root", server.addr).await;
    assert_code(
        publish(&mut admin, foreign.crl(&[serial])).await,
        Code::InvalidArgument,
    );
    assert_code(
        publish(&mut admin, "not a CRL".into()).await,
        Code::InvalidArgument,
    );
}

/// Only administrators may publish a CRL.
#[tokio::test]
async fn only_administrators_may_publish_a_crl() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    let channel = connect(&cert, &key, &pki.ca_pem, server.addr)
        .await
        .expect("connect");
    let mut as_agency = AdminServiceClient::new(channel);
    assert_code(
        publish(&mut as_agency, pki.crl(&[serial])).await,
        Code::PermissionDenied,
    );
    let auditor = pki
        .client_for(&common::auditor_spiffe("ana"), server.addr)
        .await;
    assert_code(
        publish(&mut AdminServiceClient::new(auditor), pki.crl(&[])).await,
        Code::PermissionDenied,
    );
}

/// An older CRL cannot undo a revocation; publishing the same CRL again is harmless.
#[tokio::test]
async fn an_older_crl_cannot_undo_a_revocation() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    let older_empty = pki.crl(&[]);
    let newer = pki.crl(&[serial]);
    let mut admin = pki.admin_client("root", server.addr).await;
    publish(&mut admin, newer.clone()).await.expect("publish");
    assert_code(
        publish(&mut admin, older_empty).await,
        Code::FailedPrecondition,
    );
    // Publishing the same CRL again is harmless.
    publish(&mut admin, newer)
        .await
        .expect("republish the same CRL");
    assert_refused(connect(&cert, &key, &pki.ca_pem, server.addr).await).await;
}

/// A CRL with a higher number that omits a revoked, unexpired certificate (what an old copy of
/// the CA directory signs) is refused, and the certificate stays revoked.
#[tokio::test]
async fn a_newer_crl_that_drops_an_unexpired_revocation_is_refused() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    let mut admin = pki.admin_client("root", server.addr).await;
    publish(&mut admin, pki.crl(&[serial]))
        .await
        .expect("publish");
    for _ in 0..3 {
        let refused = assert_code(
            publish(&mut admin, pki.crl(&[])).await,
            Code::FailedPrecondition,
        );
        assert!(refused.message().len() < 1_000, "bounded message");
    }
    assert_refused(connect(&cert, &key, &pki.ca_pem, server.addr).await).await;
}

/// `allow_unrevoke` needs a reason; with one, the CRL applies, the certificate works again and
/// the audit log names the serial and the reason.
#[tokio::test]
async fn allow_unrevoke_needs_a_reason_and_is_audited() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    let mut admin = pki.admin_client("root", server.addr).await;
    publish(&mut admin, pki.crl(std::slice::from_ref(&serial)))
        .await
        .expect("publish");
    assert_code(
        publish_unrevoking(&mut admin, pki.crl(&[]), " ").await,
        Code::InvalidArgument,
    );
    assert_refused(connect(&cert, &key, &pki.ca_pem, server.addr).await).await;

    publish_unrevoking(&mut admin, pki.crl(&[]), "revoked the wrong agency")
        .await
        .expect("un-revoke on purpose");
    exchange(&cert, &key, &pki, &server)
        .await
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("valid again");
    let reasons = crl_audit_reasons(&pki, &server).await;
    let serial_hex = hex::encode(serial.as_ref());
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&serial_hex) && r.contains("revoked the wrong agency")),
        "no audit entry names the un-revoked serial and the reason: {reasons:?}"
    );
}

/// A watched CRL file replaced by a newer-numbered CRL that drops a revocation un-revokes
/// nothing, also when the server starts with it.
#[tokio::test]
async fn a_crl_file_that_drops_a_revocation_is_not_applied_at_start() {
    let pki = TestPki::new();
    let files = tempfile::tempdir().expect("temporary directory");
    let crl_path = files.path().join("crl.pem");
    let data_dir = files.path().join("data");
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    {
        let (path, dir) = (crl_path.clone(), data_dir.clone());
        let server = TestServer::spawn_with(&pki, |config| {
            config.crl = Some(path);
            config.data_dir = dir;
        })
        .await;
        server.register(&pki, "ES-CNP", Region::Eu).await;
        let mut admin = pki.admin_client("root", server.addr).await;
        publish(&mut admin, pki.crl(&[serial]))
            .await
            .expect("publish");
        drop(admin);
        server
            .stop(Duration::from_secs(1))
            .await
            .expect("clean stop");
    }
    std::fs::write(&crl_path, pki.crl(&[])).expect("write the CRL file");
    let (path, dir) = (crl_path.clone(), data_dir.clone());
    let restarted = TestServer::spawn_with(&pki, |config| {
        config.crl = Some(path);
        config.data_dir = dir;
    })
    .await;
    assert_refused(connect(&cert, &key, &pki.ca_pem, restarted.addr).await).await;
}

/// A revocation survives a server restart.
#[tokio::test]
async fn revocation_survives_a_restart() {
    let pki = TestPki::new();
    let data = tempfile::tempdir().expect("data dir");
    let data_dir: PathBuf = data.path().join("data");
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    {
        let dir = data_dir.clone();
        let server = TestServer::spawn_with(&pki, |config| config.data_dir = dir).await;
        server.register(&pki, "ES-CNP", Region::Eu).await;
        let mut admin = pki.admin_client("root", server.addr).await;
        publish(&mut admin, pki.crl(&[serial]))
            .await
            .expect("publish CRL");
        drop(admin);
        server
            .stop(Duration::from_secs(1))
            .await
            .expect("clean stop");
    }
    let dir = data_dir.clone();
    let restarted = TestServer::spawn_with(&pki, |config| config.data_dir = dir).await;
    assert_refused(connect(&cert, &key, &pki.ca_pem, restarted.addr).await).await;
}

/// A CRL written to the watched --crl file is applied without a restart.
#[tokio::test]
async fn a_crl_written_to_the_watched_file_is_applied() {
    let pki = TestPki::new();
    let files = tempfile::tempdir().expect("temporary directory");
    let crl_path = files.path().join("crl.pem");
    let path = crl_path.clone();
    let server = TestServer::spawn_with(&pki, |config| config.crl = Some(path)).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    let (cert, key, serial) = agency_cert(&pki, "ES-CNP");
    exchange(&cert, &key, &pki, &server)
        .await
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("valid before the CRL file appears");

    std::fs::write(&crl_path, pki.crl(&[serial])).expect("write CRL file");
    eventually("the CRL file to be applied", async || {
        match connect(&cert, &key, &pki.ca_pem, server.addr).await {
            Err(_) => Ok(()),
            Ok(channel) => match ExchangeServiceClient::new(channel)
                .list_agencies(ListAgenciesRequest {})
                .await
            {
                Err(_) => Ok(()),
                Ok(_) => Err("still served"),
            },
        }
    })
    .await;
}

/// Rotated server certificate and CA bundle files apply without dropping open connections, old-CA
/// clients still served.
#[tokio::test]
async fn rotated_server_certificate_and_ca_bundle_apply_without_dropping_connections() {
    let old = TestPki::new();
    let new = TestPki::new();
    let mut paths = None;
    let server = TestServer::spawn_with(&old, |config| {
        paths = Some((
            config.tls_cert.clone(),
            config.tls_key.clone(),
            config.client_ca.clone(),
        ));
    })
    .await;
    let (tls_cert, tls_key, client_ca) = paths.expect("paths");
    server.register(&old, "ES-CNP", Region::Eu).await;
    server.register(&old, "CO-DIJIN", Region::Celac).await;
    let (old_cert, old_key, _) = agency_cert(&old, "ES-CNP");
    let mut open = exchange(&old_cert, &old_key, &old, &server).await;
    open.list_agencies(ListAgenciesRequest {})
        .await
        .expect("before rotation");

    // CA rollover: the server now presents a certificate from the new CA and trusts both CAs.
    std::fs::write(&client_ca, format!("{}{}", old.ca_pem, new.ca_pem)).expect("CA bundle");
    std::fs::write(&tls_key, &new.server_key_pem).expect("server key");
    std::fs::write(&tls_cert, &new.server_cert_pem).expect("server cert");

    let (new_cert, new_key, _) = agency_cert(&new, "CO-DIJIN");
    // A client of the new CA, verifying the new server certificate, is served.
    eventually(
        "the rotated certificate and CA bundle to apply",
        async || served_with(&new_cert, &new_key, &new.ca_pem, server.addr).await,
    )
    .await;
    // A certificate of the old CA still works on a new connection (the bundle holds both)...
    let old_client_new_server_view = connect(&old_cert, &old_key, &new.ca_pem, server.addr)
        .await
        .expect("connect with an old-CA client certificate");
    ExchangeServiceClient::new(old_client_new_server_view)
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("old-CA client accepted during rollover");
    // ...and the connection opened before the rotation is still alive.
    open.list_agencies(ListAgenciesRequest {})
        .await
        .expect("open connection survives reload");
}
