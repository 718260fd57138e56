//! Who may connect and what each identity may call: the TLS handshake refuses certificates the
//! CA did not issue or that are unusable for client authentication; certificates that pass TLS
//! but name no usable SPIFFE ID get UNAUTHENTICATED on every call; roles and the directory decide
//! the rest.

mod common;

use common::*;
use puente::pb::v1::admin_service_client::AdminServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    AcknowledgeMessageRequest, AdminServiceListAgenciesRequest, Agency, DeliveryState,
    GetDeliveryStatusRequest, GetMessageRequest, ListAgenciesRequest, Region,
    RegisterAgencyRequest, UpdateAgencyRequest,
};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, SanType};
use tonic::transport::Channel;
use tonic::Code;

const SOME_MESSAGE_ID: &str = "01936a4e-0000-7000-8000-000000000000";

/// Calls every ExchangeService and AdminService method over `channel` and asserts that each
/// fails with `code`.
async fn assert_every_call_fails(channel: Channel, code: Code) {
    let mut exchange = ExchangeServiceClient::new(channel.clone());
    assert_code(exchange.list_agencies(ListAgenciesRequest {}).await, code);
    assert_code(
        exchange
            .send_message(message("mtls-1", &["CO-DIJIN"]))
            .await,
        code,
    );
    assert_code(exchange.stream_inbox(inbox_request(0)).await, code);
    assert_code(
        exchange
            .get_message(GetMessageRequest {
                message_id: SOME_MESSAGE_ID.into(),
            })
            .await,
        code,
    );
    assert_code(
        exchange
            .acknowledge_message(AcknowledgeMessageRequest {
                message_id: SOME_MESSAGE_ID.into(),
                state: DeliveryState::Received as i32,
            })
            .await,
        code,
    );
    assert_code(
        exchange
            .get_delivery_status(GetDeliveryStatusRequest {
                message_id: SOME_MESSAGE_ID.into(),
            })
            .await,
        code,
    );
}

/// Calls every AdminService method over `channel` and asserts that each fails with `code`.
async fn assert_every_admin_call_fails(channel: Channel, code: Code) {
    let mut admin = AdminServiceClient::new(channel);
    let agency = Agency {
        agency_id: "MX-FGR".into(),
        name: "Fiscalía General de la República".into(),
        country: "MX".into(),
        region: Region::Celac as i32,
        status: 0,
    };
    assert_code(
        admin
            .list_agencies(AdminServiceListAgenciesRequest {})
            .await,
        code,
    );
    assert_code(
        admin
            .register_agency(RegisterAgencyRequest {
                agency: Some(agency.clone()),
            })
            .await,
        code,
    );
    assert_code(
        admin
            .update_agency(UpdateAgencyRequest {
                agency: Some(agency),
            })
            .await,
        code,
    );
}

/// A server on which ES-CNP and CO-DIJIN are registered, so that a refusal is never explained
/// by a missing registration.
async fn server_with_agencies(pki: &TestPki) -> TestServer {
    let server = TestServer::spawn(pki).await;
    server.register(pki, "ES-CNP", Region::Eu).await;
    server.register(pki, "CO-DIJIN", Region::Celac).await;
    server
}

/// Connects with a certificate for ES-CNP that `edit` altered, issued by the test CA.
async fn connect_with(
    pki: &TestPki,
    server: &TestServer,
    edit: impl FnOnce(&mut CertificateParams),
) -> Result<Channel, tonic::transport::Error> {
    let (cert, key) = pki.issue_with(&agency_spiffe("ES-CNP"), edit);
    connect(&cert, &key, &pki.ca_pem, server.addr).await
}

/// A registered agency with a valid certificate from the exchange CA is served.
#[tokio::test]
async fn accepts_registered_agency_certificate() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let mut client = pki.agency_client("ES-CNP", server.addr).await;
    let agencies = client
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("ListAgencies")
        .into_inner()
        .agencies;
    let ids: Vec<&str> = agencies.iter().map(|a| a.agency_id.as_str()).collect();
    assert_eq!(ids, ["CO-DIJIN", "ES-CNP"]);
}

/// A certificate from another CA, even one with the same name, is refused at the handshake.
#[tokio::test]
async fn rejects_certificate_from_foreign_ca() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    // Both test CAs carry the same subject name: a look-alike CA is refused too.
    let foreign = TestPki::new();
    let (cert, key) = foreign.issue(&agency_spiffe("ES-CNP"));
    assert_refused(connect(&cert, &key, &pki.ca_pem, server.addr).await).await;
}

/// A certificate issued by an intermediate CA is refused, even with the intermediate sent along.
#[tokio::test]
async fn rejects_certificate_issued_by_an_intermediate_ca() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    // The exchange CA has path length 0: a CA certificate it signed by mistake must not be
    // able to mint agency identities, even when the client sends the intermediate along.
    let (chain, key) = pki.issue_via_intermediate(&agency_spiffe("ES-CNP"));
    assert_refused(connect(&chain, &key, &pki.ca_pem, server.addr).await).await;
}

/// An expired client certificate is refused at the handshake.
#[tokio::test]
async fn rejects_expired_certificate() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let now = time::OffsetDateTime::now_utc();
    let connected = connect_with(&pki, &server, |params| {
        params.not_before = now - time::Duration::days(2);
        params.not_after = now - time::Duration::days(1);
    })
    .await;
    assert_refused(connected).await;
}

/// A client certificate that is not yet valid is refused at the handshake.
#[tokio::test]
async fn rejects_not_yet_valid_certificate() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let now = time::OffsetDateTime::now_utc();
    let connected = connect_with(&pki, &server, |params| {
        params.not_before = now + time::Duration::days(1);
        params.not_after = now + time::Duration::days(2);
    })
    .await;
    assert_refused(connected).await;
}

/// A certificate without the clientAuth EKU is refused at the handshake.
#[tokio::test]
async fn rejects_certificate_without_client_auth_eku() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let connected = connect_with(&pki, &server, |params| {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    })
    .await;
    assert_refused(connected).await;
}

/// A certificate with no extended key usage extension at all is refused at the handshake:
/// webpki alone reads a missing EKU as "any purpose", the exchange requires clientAuth.
#[tokio::test]
async fn rejects_certificate_without_any_eku() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let connected = connect_with(&pki, &server, |params| params.extended_key_usages.clear()).await;
    assert_refused(connected).await;
}

/// A connection without a client certificate is refused.
#[tokio::test]
async fn rejects_connection_without_client_certificate() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    assert_refused(connect_without_certificate(&pki.ca_pem, server.addr).await).await;
}

/// A certificate without a SPIFFE ID is UNAUTHENTICATED.
#[tokio::test]
async fn certificate_without_spiffe_id_is_unauthenticated() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = connect_with(&pki, &server, |params| {
        params.subject_alt_names = vec![SanType::DnsName(
            "es-cnp.example".try_into().expect("DNS name"),
        )];
    })
    .await
    .expect("the handshake succeeds");
    assert_every_call_fails(channel.clone(), Code::Unauthenticated).await;
    assert_every_admin_call_fails(channel, Code::Unauthenticated).await;
}

/// A certificate with two SPIFFE IDs is UNAUTHENTICATED.
#[tokio::test]
async fn certificate_with_two_spiffe_ids_is_unauthenticated() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = connect_with(&pki, &server, |params| {
        params
            .subject_alt_names
            .push(uri_san(&agency_spiffe("CO-DIJIN")));
    })
    .await
    .expect("the handshake succeeds");
    assert_every_call_fails(channel.clone(), Code::Unauthenticated).await;
    assert_every_admin_call_fails(channel, Code::Unauthenticated).await;
}

/// A SPIFFE ID of another trust domain is UNAUTHENTICATED.
#[tokio::test]
async fn certificate_from_other_trust_domain_is_unauthenticated() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let (cert, key) = pki.issue("spiffe://other.example/agency/ES-CNP");
    let channel = connect(&cert, &key, &pki.ca_pem, server.addr)
        .await
        .expect("the handshake succeeds");
    assert_every_call_fails(channel.clone(), Code::Unauthenticated).await;

    let (cert, key) = pki.issue("spiffe://other.example/admin/root");
    let channel = connect(&cert, &key, &pki.ca_pem, server.addr)
        .await
        .expect("the handshake succeeds");
    assert_every_admin_call_fails(channel, Code::Unauthenticated).await;
}

/// A SPIFFE ID with an unknown role is UNAUTHENTICATED.
#[tokio::test]
async fn spiffe_id_with_unknown_role_is_unauthenticated() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = pki
        .client_for(
            &format!("spiffe://{TRUST_DOMAIN}/workload/ES-CNP"),
            server.addr,
        )
        .await;
    assert_every_call_fails(channel.clone(), Code::Unauthenticated).await;
    assert_every_admin_call_fails(channel, Code::Unauthenticated).await;
}

/// An agency that is not registered is PERMISSION_DENIED.
#[tokio::test]
async fn unregistered_agency_is_permission_denied() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = pki.client_for(&agency_spiffe("BE-FPJ"), server.addr).await;
    assert_every_call_fails(channel, Code::PermissionDenied).await;
}

/// A suspended agency is PERMISSION_DENIED from its next call, also on an open connection.
#[tokio::test]
async fn suspended_agency_is_permission_denied() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await;
    ExchangeServiceClient::new(channel.clone())
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("active agency may call");

    server.suspend(&pki, "ES-CNP").await;
    // The same, already open connection: suspension applies to the next call.
    assert_every_call_fails(channel, Code::PermissionDenied).await;
}

/// An auditor cannot call ExchangeService methods.
#[tokio::test]
async fn auditor_cannot_call_exchange_methods() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = pki.client_for(&auditor_spiffe("ana"), server.addr).await;
    assert_every_call_fails(channel.clone(), Code::PermissionDenied).await;
    assert_every_admin_call_fails(channel, Code::PermissionDenied).await;
}

/// An administrator cannot call ExchangeService methods.
#[tokio::test]
async fn admin_cannot_call_exchange_methods() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = pki.client_for(&admin_spiffe("root"), server.addr).await;
    assert_every_call_fails(channel, Code::PermissionDenied).await;
}

/// An agency cannot call AdminService methods.
#[tokio::test]
async fn agency_cannot_call_admin_methods() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let channel = pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await;
    assert_every_admin_call_fails(channel, Code::PermissionDenied).await;
}

/// The gRPC health service reports the server and its services as serving.
#[tokio::test]
async fn health_service_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let channel = pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await;
    let mut health = HealthClient::new(channel);
    for service in ["", "puente.v1.ExchangeService", "puente.v1.AdminService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?}: {s:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

/// gRPC reflection lists the Puente services.
#[tokio::test]
async fn reflection_lists_the_puente_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let channel = pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();
    let response = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("reflection answers in time")
        .expect("reflection response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "puente.v1.ExchangeService",
        "puente.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

/// A revoked certificate is refused; a new certificate for the same agency is not affected.
#[tokio::test]
async fn rejects_revoked_certificate() {
    let pki = TestPki::new();
    let (revoked_cert, revoked_key, serial) =
        pki.sign_with_serial(TestPki::client_params(&agency_spiffe("ES-CNP")));
    let crl_file = tempfile::NamedTempFile::new().expect("CRL file");
    std::fs::write(crl_file.path(), pki.crl(&[serial])).expect("write CRL");
    let crl_path = crl_file.path().to_path_buf();
    let server = TestServer::spawn_with(&pki, |config| config.crl = Some(crl_path)).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;

    assert_refused(connect(&revoked_cert, &revoked_key, &pki.ca_pem, server.addr).await).await;
    // A new certificate for the same agency is not affected.
    let mut client = pki.agency_client("ES-CNP", server.addr).await;
    client
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("a certificate that is not revoked is accepted");
}

/// Only the configured trust domain is accepted, also when it is not the default.
#[tokio::test]
async fn only_the_configured_trust_domain_is_accepted() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.trust_domain = "exchange.example".into();
    })
    .await;
    let admin = pki
        .client_for("spiffe://exchange.example/admin/root", server.addr)
        .await;
    AdminServiceClient::new(admin)
        .register_agency(RegisterAgencyRequest {
            agency: Some(Agency {
                agency_id: "ES-CNP".into(),
                name: "Policía Nacional".into(),
                country: "ES".into(),
                region: Region::Eu as i32,
                status: 0,
            }),
        })
        .await
        .expect("admin of the configured trust domain");
    let agency = pki
        .client_for("spiffe://exchange.example/agency/ES-CNP", server.addr)
        .await;
    ExchangeServiceClient::new(agency)
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("agency of the configured trust domain");

    // The default trust domain is now a foreign one.
    let default_domain = pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await;
    assert_every_call_fails(default_domain, Code::Unauthenticated).await;
}
