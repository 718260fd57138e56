//! Malformed and oversized requests, as a hostile caller sends them: a request that does not
//! decode (invalid UTF-8 in a string, nesting beyond the decoder's recursion limit, a protobuf
//! message or a gRPC frame cut short) is the caller's fault and answers INVALID_ARGUMENT on
//! every service, and no refusal repeats more than a few dozen characters of what was sent.

mod common;

use std::future::poll_fn;

use common::*;
use http_body_util::BodyExt as _;
use puente::pb::v1::admin_service_client::AdminServiceClient;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::match_service_client::MatchServiceClient;
use puente::pb::v1::{
    Agency, AgencyStatus, BlindedIdentifier, ForwardMessageRequest, GetMessageRequest,
    HandlingCode, IdentifierKind, ListAuditEntriesRequest, QueryRequest, Region,
    RegisterAgencyRequest, RequestConsentRequest, SendMessageRequest,
};
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::Service as _;

/// Longest status message a refusal may have, in bytes: enough for any fixed explanation plus a
/// cut echo, far below the 100 kB fields these tests send.
const MAX_STATUS_MESSAGE: usize = 200;

/// 100 kB of a character no identifier accepts.
fn huge() -> String {
    "x".repeat(100_000)
}

/// The gRPC status of one call made of exactly `frame` as the request body (the 5-byte gRPC
/// header included, so a test can send a frame that lies about its length).
async fn raw_call(channel: &Channel, path: &str, frame: Vec<u8>) -> (Code, String) {
    let mut channel = channel.clone();
    let request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(frame),
        )))
        .expect("request");
    poll_fn(|cx| channel.poll_ready(cx)).await.expect("ready");
    let response = tokio::time::timeout(WAIT, channel.call(request))
        .await
        .expect("no answer in time")
        .expect("transport");
    let status_of = |headers: &http::HeaderMap| {
        Status::from_header_map(headers).map(|s| (s.code(), s.message().to_string()))
    };
    if let Some(status) = status_of(response.headers()) {
        return status;
    }
    let collected = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("no trailers in time")
        .expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    status_of(&trailers).expect("no grpc-status")
}

/// A gRPC frame: uncompressed, with its true length.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("len").to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A message nested 200 groups deep in an unknown field (15): every protobuf message type
/// must walk it to skip it, past prost's recursion limit of 100.
fn too_deep() -> Vec<u8> {
    let mut message = vec![0x7b; 200]; // field 15, wire type 3 (start group)
    message.extend(std::iter::repeat_n(0x7c, 200)); // field 15, wire type 4 (end group)
    message
}

/// A server with ES-CNP and CO-DIJIN registered, and channels for both, an administrator and an
/// auditor.
struct Callers {
    agency: Channel,
    holder: Channel,
    admin: Channel,
    auditor: Channel,
    _server: TestServer,
}

async fn callers() -> Callers {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    Callers {
        agency: pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await,
        holder: pki
            .client_for(&agency_spiffe("CO-DIJIN"), server.addr)
            .await,
        admin: pki.client_for(&admin_spiffe("root"), server.addr).await,
        auditor: pki.client_for(&auditor_spiffe("ana"), server.addr).await,
        _server: server,
    }
}

/// Asserts a refusal is `code` with a short message, and that its details (the BadRequest
/// violations) are short too.
#[track_caller]
fn assert_short<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    let status = assert_code(result, code);
    // The figures RELIABILITY.md quotes: `cargo test --test malformed -- --nocapture`.
    eprintln!(
        "{what}: message {} bytes, details {} bytes",
        status.message().len(),
        status.details().len()
    );
    assert!(
        status.message().len() < MAX_STATUS_MESSAGE,
        "{what}: {} bytes of message: {:.300}",
        status.message().len(),
        status.message()
    );
    assert!(
        status.details().len() < 2 * MAX_STATUS_MESSAGE,
        "{what}: {} bytes of details",
        status.details().len()
    );
}

/// Undecodable requests are INVALID_ARGUMENT, not INTERNAL, on every service: invalid UTF-8
/// in a string field, nesting past the recursion limit, a protobuf message cut short inside
/// its frame, and a gRPC frame whose body ends before the length its header announced.
#[tokio::test]
async fn undecodable_requests_are_invalid_argument_on_every_service() {
    let c = callers().await;
    // (channel, method, a string field set to the bytes FF FE, which are not UTF-8)
    let methods: [(&Channel, &str, &[u8]); 4] = [
        (
            &c.agency,
            "/puente.v1.ExchangeService/GetMessage",
            &[0x0a, 0x02, 0xff, 0xfe],
        ),
        (
            &c.admin,
            "/puente.v1.AdminService/RegisterAgency",
            &[0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe],
        ),
        (
            &c.auditor,
            "/puente.v1.AuditService/ListAuditEntries",
            &[0x12, 0x02, 0xff, 0xfe],
        ),
        (
            &c.agency,
            "/puente.v1.MatchService/Query",
            &[0x1a, 0x02, 0xff, 0xfe],
        ),
    ];
    for (channel, path, not_utf8) in methods {
        let mut cut_frame = frame(&[0x0a, 0x05, b'a', b'b', b'c', b'd', b'e']);
        cut_frame.truncate(8);
        let cases = [
            ("invalid UTF-8", frame(not_utf8)),
            ("recursion limit", frame(&too_deep())),
            // Field 1 announces 16 bytes; the frame holds 1.
            ("truncated message", frame(&[0x0a, 0x10, b'a'])),
            ("truncated frame", cut_frame),
        ];
        for (case, bytes) in cases {
            let (code, message) = raw_call(channel, path, bytes).await;
            eprintln!("{path}, {case}: {code:?}, message {} bytes", message.len());
            assert_eq!(
                code,
                Code::InvalidArgument,
                "{path}, {case}: answered {code:?} {message:?}"
            );
            assert!(
                message.len() < MAX_STATUS_MESSAGE,
                "{path}, {case}: {message}"
            );
        }
    }
    // The framing check is a layer of the router: it covers tonic's own services too (their
    // message decoding is tonic's codec, see docs/agency.md, "Rules the exchange enforces").
    let mut cut_frame = frame(&[0x0a, 0x05, b'a', b'b', b'c', b'd', b'e']);
    cut_frame.truncate(8);
    let (code, _) = raw_call(&c.agency, "/grpc.health.v1.Health/Check", cut_frame).await;
    assert_eq!(code, Code::InvalidArgument, "health check, truncated frame");
    // The server is still serving.
    let (code, _) = raw_call(
        &c.agency,
        "/puente.v1.ExchangeService/ListAgencies",
        frame(&[]),
    )
    .await;
    assert_eq!(code, Code::Ok);
}

/// No refusal echoes a 100 kB field back: every field a caller can fill with an id or a
/// reference is refused with a message under 200 bytes.
#[tokio::test]
async fn refusals_never_echo_more_than_a_few_dozen_characters_of_input() {
    let c = callers().await;
    let mut exchange = ExchangeServiceClient::new(c.agency.clone());
    let send = |edit: &dyn Fn(&mut SendMessageRequest)| {
        let mut request = message("echo-1", &["CO-DIJIN"]);
        edit(&mut request);
        request
    };
    let sends: [(&str, SendMessageRequest); 4] = [
        (
            "recipient",
            send(&|r: &mut SendMessageRequest| r.recipients = vec![huge()]),
        ),
        (
            "region",
            send(&|r: &mut SendMessageRequest| r.recipients = vec![format!("region:{}", huge())]),
        ),
        (
            "client_message_id",
            send(&|r: &mut SendMessageRequest| r.client_message_id = huge()),
        ),
        (
            "in_reply_to",
            send(&|r: &mut SendMessageRequest| r.in_reply_to = huge()),
        ),
    ];
    for (what, request) in sends {
        assert_short(
            what,
            exchange.send_message(request).await,
            Code::InvalidArgument,
        );
    }
    assert_short(
        "GetMessage",
        exchange
            .get_message(GetMessageRequest { message_id: huge() })
            .await,
        Code::InvalidArgument,
    );

    let mut h2 = message("echo-h2", &["CO-DIJIN"]);
    h2.handling = HandlingCode::H2 as i32;
    let sent = exchange
        .send_message(h2)
        .await
        .expect("send")
        .into_inner()
        .message_id;
    let mut co = ExchangeServiceClient::new(c.holder.clone());
    assert_short(
        "RequestConsent agency_id",
        co.request_consent(RequestConsentRequest {
            message_id: sent.clone(),
            agency_id: huge(),
            reason: "r".into(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert_short(
        "ForwardMessage recipients",
        co.forward_message(ForwardMessageRequest {
            client_message_id: "f-echo".into(),
            message_id: sent,
            recipients: vec![huge()],
            reason: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );

    let mut admin = AdminServiceClient::new(c.admin.clone());
    assert_short(
        "RegisterAgency agency_id",
        admin
            .register_agency(RegisterAgencyRequest {
                agency: Some(Agency {
                    agency_id: huge(),
                    name: "Hostile".into(),
                    country: "ES".into(),
                    region: Region::Eu as i32,
                    status: AgencyStatus::Active as i32,
                }),
            })
            .await,
        Code::InvalidArgument,
    );

    let mut audit = AuditServiceClient::new(c.agency.clone());
    assert_short(
        "ListAuditEntries agency_id",
        audit
            .list_audit_entries(ListAuditEntriesRequest {
                agency_id: huge(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );

    let mut matching = MatchServiceClient::new(c.agency.clone());
    assert_short(
        "Query case_reference",
        matching
            .query(QueryRequest {
                key_epoch: 1,
                identifiers: vec![BlindedIdentifier {
                    kind: IdentifierKind::Iban as i32,
                    blinded: vec![7; 32],
                }],
                case_reference: huge(),
                legal_basis: "Art. 7".into(),
            })
            .await,
        Code::InvalidArgument,
    );
}

/// The filters of an audit query are recorded in the permanent log: a 100 kB filter value must
/// not become a 100 kB entry. Every entry the calls of this test leave is under 2 kB.
#[tokio::test]
async fn audit_query_entries_record_only_the_start_of_oversized_filters() {
    let c = callers().await;
    let mut refused = AuditServiceClient::new(c.agency.clone());
    assert_code(
        refused
            .list_audit_entries(ListAuditEntriesRequest {
                agency_id: huge(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    let mut auditor = AuditServiceClient::new(c.auditor.clone());
    let mut listed = auditor
        .list_audit_entries(ListAuditEntriesRequest {
            message_id: huge(),
            ..Default::default()
        })
        .await
        .expect("auditor may list")
        .into_inner();
    while tokio::time::timeout(WAIT, listed.message())
        .await
        .expect("listing stalled")
        .expect("listing")
        .is_some()
    {}

    let mut all = auditor
        .list_audit_entries(ListAuditEntriesRequest::default())
        .await
        .expect("auditor may list")
        .into_inner();
    let (mut queries, mut largest) = (0, 0);
    while let Some(entry) = tokio::time::timeout(WAIT, all.message())
        .await
        .expect("listing stalled")
        .expect("listing")
    {
        assert!(
            entry.leaf.len() < 2_000,
            "entry {} is {} bytes",
            entry.index,
            entry.leaf.len()
        );
        largest = largest.max(entry.leaf.len());
        queries += usize::from(entry.event.is_some_and(|e| e.reason.contains("_id=")));
    }
    assert!(queries >= 2, "the two queries were not recorded");
    eprintln!("largest audit entry: {largest} bytes");
}
