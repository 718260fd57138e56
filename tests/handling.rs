//! Handling rules end to end: H3 conditions, forwarding with provenance, consent for H2/H3,
//! retraction and correction notices to every holder, priority and `respond_by`, threads, and
//! that no other RPC reaches a message the handling rules keep from the caller.

mod common;

use std::time::Duration;

use common::*;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    correct_message_request, AcknowledgeMessageRequest, AuditAction, CorrectMessageRequest,
    DeliveryState, DenyConsentRequest, ForwardMessageRequest, GetDeliveryStatusRequest,
    GetDeliveryStatusResponse, GetMessageRequest, GrantConsentRequest, HandlingCode,
    ListAuditEntriesRequest, ListThreadRequest, Message, MessageKind, Priority, Region,
    RequestConsentRequest, RetractMessageRequest, SendMessageRequest, StreamInboxRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

type Client = ExchangeServiceClient<Channel>;

/// Conditions every H3 message of these tests carries.
const CONDITIONS: &str = "Not to be shared with customs; destroy after 12 months.";

/// A server with ES-CNP and BE-FPJ (EU), CO-DIJIN and MX-FGR (CELAC), and a client for each.
struct Exchange {
    es: Client,
    co: Client,
    be: Client,
    mx: Client,
    server: TestServer,
    pki: TestPki,
}

async fn exchange() -> Exchange {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    server.register(&pki, "BE-FPJ", Region::Eu).await;
    server.register(&pki, "MX-FGR", Region::Celac).await;
    Exchange {
        es: pki.agency_client("ES-CNP", server.addr).await,
        co: pki.agency_client("CO-DIJIN", server.addr).await,
        be: pki.agency_client("BE-FPJ", server.addr).await,
        mx: pki.agency_client("MX-FGR", server.addr).await,
        server,
        pki,
    }
}

/// A valid text message with `handling`; H3 carries [`CONDITIONS`].
fn with_handling(key: &str, recipients: &[&str], handling: HandlingCode) -> SendMessageRequest {
    let mut request = message(key, recipients);
    request.handling = handling as i32;
    if handling == HandlingCode::H3 {
        request.handling_conditions = CONDITIONS.into();
    }
    request
}

/// Sends `request` and expects it to be accepted; returns the message id.
async fn send(client: &mut Client, request: SendMessageRequest) -> String {
    let key = request.client_message_id.clone();
    client
        .send_message(request)
        .await
        .unwrap_or_else(|s| panic!("send {key:?}: {s:?}"))
        .into_inner()
        .message_id
}

/// Reads a message the caller may see.
async fn get(client: &mut Client, message_id: &str) -> Message {
    client
        .get_message(GetMessageRequest {
            message_id: message_id.to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetMessage {message_id}: {s:?}"))
        .into_inner()
        .message
        .expect("message")
}

fn forward_request(key: &str, message_id: &str, to: &[&str]) -> ForwardMessageRequest {
    ForwardMessageRequest {
        client_message_id: key.to_string(),
        message_id: message_id.to_string(),
        recipients: to.iter().map(|r| r.to_string()).collect(),
        reason: "Same network operates in our jurisdiction".into(),
    }
}

/// Forwards `message_id` to `to`; returns the copy's id or the refusal.
async fn try_forward(
    client: &mut Client,
    key: &str,
    message_id: &str,
    to: &[&str],
) -> Result<String, Status> {
    client
        .forward_message(forward_request(key, message_id, to))
        .await
        .map(|r| r.into_inner().message_id)
}

/// Forwards and expects it to be accepted; returns the copy's id.
async fn forward(client: &mut Client, key: &str, message_id: &str, to: &[&str]) -> String {
    try_forward(client, key, message_id, to)
        .await
        .unwrap_or_else(|s| panic!("forward {message_id} to {to:?}: {s:?}"))
}

/// Asks the originator for consent to forward `message_id` to `agency`.
async fn try_request_consent(
    client: &mut Client,
    message_id: &str,
    agency: &str,
) -> Result<String, Status> {
    client
        .request_consent(RequestConsentRequest {
            message_id: message_id.to_string(),
            agency_id: agency.to_string(),
            reason: "Suspect moved to their jurisdiction".into(),
        })
        .await
        .map(|r| r.into_inner().consent_request_id)
}

async fn request_consent(client: &mut Client, message_id: &str, agency: &str) -> String {
    try_request_consent(client, message_id, agency)
        .await
        .unwrap_or_else(|s| panic!("RequestConsent {message_id} for {agency}: {s:?}"))
}

async fn try_grant(client: &mut Client, consent_request_id: &str) -> Result<String, Status> {
    client
        .grant_consent(GrantConsentRequest {
            consent_request_id: consent_request_id.to_string(),
            reason: "Granted for this investigation only".into(),
        })
        .await
        .map(|r| r.into_inner().decision_message_id)
}

async fn try_deny(client: &mut Client, consent_request_id: &str) -> Result<String, Status> {
    client
        .deny_consent(DenyConsentRequest {
            consent_request_id: consent_request_id.to_string(),
            reason: "Source would be exposed".into(),
        })
        .await
        .map(|r| r.into_inner().decision_message_id)
}

/// The caller's whole inbox as it is now (the backlog, without waiting for more).
async fn inbox(client: &mut Client) -> Vec<Message> {
    let mut stream = tokio::time::timeout(
        WAIT,
        client.stream_inbox(StreamInboxRequest {
            after_sequence: 0,
            backlog_only: true,
        }),
    )
    .await
    .expect("StreamInbox did not answer in time")
    .expect("StreamInbox refused")
    .into_inner();
    let mut messages = Vec::new();
    while let Some(entry) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("inbox stalled")
        .expect("inbox stream failed")
    {
        messages.push(entry.message.expect("message"));
    }
    messages
}

/// The entries of the caller's inbox of `kind`.
async fn inbox_of_kind(client: &mut Client, kind: MessageKind) -> Vec<Message> {
    inbox(client)
        .await
        .into_iter()
        .filter(|m| m.kind == kind as i32)
        .collect()
}

/// The one entry of the caller's inbox with this id.
async fn inbox_entry(client: &mut Client, message_id: &str) -> Message {
    let mut found: Vec<Message> = inbox(client)
        .await
        .into_iter()
        .filter(|m| m.message_id == message_id)
        .collect();
    assert_eq!(found.len(), 1, "inbox entries with id {message_id}");
    found.remove(0)
}

async fn status(client: &mut Client, message_id: &str) -> GetDeliveryStatusResponse {
    client
        .get_delivery_status(GetDeliveryStatusRequest {
            message_id: message_id.to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetDeliveryStatus {message_id}: {s:?}"))
        .into_inner()
}

async fn ack(client: &mut Client, message_id: &str) -> Result<i32, Status> {
    client
        .acknowledge_message(AcknowledgeMessageRequest {
            message_id: message_id.to_string(),
            state: DeliveryState::Received as i32,
        })
        .await
        .map(|r| r.into_inner().state)
}

async fn try_retract(
    client: &mut Client,
    message_id: &str,
    reason: &str,
) -> Result<String, Status> {
    client
        .retract_message(RetractMessageRequest {
            message_id: message_id.to_string(),
            reason: reason.to_string(),
        })
        .await
        .map(|r| r.into_inner().notice_message_id)
}

fn correction(message_id: &str, text: &str) -> CorrectMessageRequest {
    CorrectMessageRequest {
        message_id: message_id.to_string(),
        reason: "Serial number was mistyped".into(),
        content: Some(correct_message_request::Content::Text(text.to_string())),
    }
}

/// The ids ListThread gives for `request`, in order.
async fn try_thread(
    client: &mut Client,
    request: ListThreadRequest,
) -> Result<Vec<String>, Status> {
    client.list_thread(request).await.map(|r| {
        r.into_inner()
            .messages
            .into_iter()
            .map(|m| m.message_id)
            .collect()
    })
}

async fn thread_of(client: &mut Client, message_id: &str) -> Vec<String> {
    try_thread(
        client,
        ListThreadRequest {
            message_id: message_id.to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|s| panic!("ListThread {message_id}: {s:?}"))
}

async fn case_of(client: &mut Client, case_reference: &str) -> Vec<String> {
    try_thread(
        client,
        ListThreadRequest {
            case_reference: case_reference.to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|s| panic!("ListThread case {case_reference}: {s:?}"))
}

/// `(agency, state)` of each recipient of a status entry list.
fn states(recipients: &[puente::pb::v1::RecipientStatus]) -> Vec<(String, i32)> {
    recipients
        .iter()
        .map(|r| (r.agency_id.clone(), r.state))
        .collect()
}

// === H3 conditions ===

/// An H3 message without handling conditions is INVALID_ARGUMENT.
#[tokio::test]
async fn h3_without_handling_conditions_is_invalid_argument() {
    let mut x = exchange().await;
    let mut request = with_handling("h3-1", &["CO-DIJIN"], HandlingCode::H3);
    request.handling_conditions = "   ".into();
    assert_bad_field(x.es.send_message(request).await, "handling_conditions");
    assert!(inbox(&mut x.co).await.is_empty());
}

/// H3 handling conditions travel with every copy of the message.
#[tokio::test]
async fn h3_conditions_travel_with_every_copy() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("h3-2", &["CO-DIJIN"], HandlingCode::H3),
    )
    .await;
    let received = inbox_entry(&mut x.co, &original).await;
    assert_eq!(received.handling, HandlingCode::H3 as i32);
    assert_eq!(received.handling_conditions, CONDITIONS);
    assert_eq!(received.originator, "ES-CNP");
    assert_eq!(received.kind, MessageKind::Unspecified as i32);
    for client in [&mut x.es, &mut x.co] {
        assert_eq!(get(client, &original).await.handling_conditions, CONDITIONS);
    }

    let asked = request_consent(&mut x.co, &original, "MX-FGR").await;
    try_grant(&mut x.es, &asked).await.expect("grant");
    let copy = forward(&mut x.co, "fwd-h3-2", &original, &["MX-FGR"]).await;
    let forwarded = inbox_entry(&mut x.mx, &copy).await;
    assert_eq!(forwarded.handling, HandlingCode::H3 as i32);
    assert_eq!(forwarded.handling_conditions, CONDITIONS);
    let read = get(&mut x.mx, &copy).await;
    assert_eq!(read.handling, HandlingCode::H3 as i32);
    assert_eq!(read.handling_conditions, CONDITIONS);
    assert_eq!(read.originator, "ES-CNP");
}

// === Forwarding ===

/// A recipient forwards H0 and H1 messages as copies that name where they came from.
#[tokio::test]
async fn recipient_forwards_h0_and_h1_as_a_copy_with_provenance() {
    let mut x = exchange().await;
    let mut auditor = AuditServiceClient::new(
        x.pki
            .client_for(&auditor_spiffe("ana"), x.server.addr)
            .await,
    );
    for (i, handling) in [HandlingCode::H0, HandlingCode::H1].into_iter().enumerate() {
        let mut request = with_handling(&format!("fwd-{i}"), &["CO-DIJIN"], handling);
        request.case_reference = format!("ES-2026-{i}");
        let original = send(&mut x.es, request.clone()).await;
        let copy = forward(&mut x.co, &format!("fwd-{i}"), &original, &["MX-FGR"]).await;
        assert_ne!(copy, original);

        let forwarded = inbox_entry(&mut x.mx, &copy).await;
        assert_eq!(forwarded.kind, MessageKind::Forwarded as i32);
        assert_eq!(forwarded.sender, "CO-DIJIN");
        assert_eq!(forwarded.recipients, ["MX-FGR"]);
        assert_eq!(forwarded.originator, "ES-CNP");
        assert_eq!(forwarded.original_message_id, original);
        assert_eq!(forwarded.handling, handling as i32);
        assert_eq!(forwarded.evaluation, request.evaluation);
        assert_eq!(forwarded.topic, request.topic);
        assert_eq!(forwarded.subject, request.subject);
        assert_eq!(forwarded.case_reference, request.case_reference);
        assert_eq!(forwarded.content_sha256, content_sha256(&request));
        assert_eq!(forwarded.content, get(&mut x.co, &original).await.content);
        assert_eq!(
            forwarded.reason,
            "Same network operates in our jurisdiction"
        );
        let hops: Vec<(&str, &str, &str)> = forwarded
            .provenance
            .iter()
            .map(|h| {
                (
                    h.from_agency.as_str(),
                    h.to_agency.as_str(),
                    h.message_id.as_str(),
                )
            })
            .collect();
        assert_eq!(hops, [("CO-DIJIN", "MX-FGR", copy.as_str())]);
        assert!(forwarded.provenance[0].forwarded_at.is_some());
        assert_eq!(get(&mut x.mx, &copy).await, forwarded);

        let audited = auditor
            .list_audit_entries(ListAuditEntriesRequest {
                action: AuditAction::MessageForwarded as i32,
                message_id: copy.clone(),
                ..Default::default()
            })
            .await
            .expect("audit listing")
            .into_inner();
        let entries = collect(audited).await;
        assert_eq!(entries.len(), 1, "one MESSAGE_FORWARDED entry for {copy}");
        let event = entries[0].event.as_ref().expect("event");
        assert_eq!(event.actor_agency, "CO-DIJIN");
        assert_eq!(event.sender, "CO-DIJIN");
        assert_eq!(event.recipients, ["MX-FGR"]);
        assert_eq!(event.related_message_id, original);
        assert_eq!(event.content_sha256, content_sha256(&request));
    }
}

async fn collect(
    mut stream: tonic::Streaming<puente::pb::v1::ListAuditEntriesResponse>,
) -> Vec<puente::pb::v1::ListAuditEntriesResponse> {
    let mut all = Vec::new();
    while let Some(entry) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("audit listing stalled")
        .expect("audit listing failed")
    {
        all.push(entry);
    }
    all
}

/// Only a recipient can forward a message; the forwarder cannot forward its own copy again.
#[tokio::test]
async fn only_a_recipient_can_forward() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("only-1", &["CO-DIJIN"], HandlingCode::H0),
    )
    .await;
    assert_code(
        try_forward(&mut x.es, "f-1", &original, &["MX-FGR"]).await,
        Code::PermissionDenied,
    );
    assert_code(
        try_forward(&mut x.be, "f-1", &original, &["MX-FGR"]).await,
        Code::NotFound,
    );
    // The forwarder is the sender of its copy, not a recipient: it cannot forward that again.
    let copy = forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;
    assert_code(
        try_forward(&mut x.co, "f-2", &copy, &["BE-FPJ"]).await,
        Code::PermissionDenied,
    );
    assert!(inbox(&mut x.be).await.is_empty());
}

/// Forward recipients must be active registered agency ids; a refused forward stores nothing.
#[tokio::test]
async fn forward_recipients_must_be_active_registered_agency_ids() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("rcpt-1", &["CO-DIJIN"], HandlingCode::H0),
    )
    .await;
    for to in ["region:EU", "*", "be-fpj"] {
        assert_bad_field(
            try_forward(&mut x.co, "f-1", &original, &[to]).await,
            "recipients[0]",
        );
    }
    assert_bad_field(
        try_forward(&mut x.co, "f-1", &original, &["MX-FGR", "region:CELAC"]).await,
        "recipients[1]",
    );
    assert_bad_field(
        try_forward(&mut x.co, "f-1", &original, &["PT-PJ"]).await,
        "recipients[0]",
    );
    assert_bad_field(
        try_forward(&mut x.co, "f-1", &original, &["CO-DIJIN"]).await,
        "recipients[0]",
    );
    assert_bad_field(
        try_forward(&mut x.co, "f-1", &original, &[]).await,
        "recipients",
    );
    for key in ["", "has space", &"k".repeat(129)] {
        assert_bad_field(
            try_forward(&mut x.co, key, &original, &["BE-FPJ"]).await,
            "client_message_id",
        );
    }
    x.server.suspend(&x.pki, "MX-FGR").await;
    assert_code(
        try_forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await,
        Code::FailedPrecondition,
    );
    // Nothing was stored: the key is still free and BE-FPJ holds nothing.
    assert!(inbox(&mut x.be).await.is_empty());
    let copy = forward(&mut x.co, "f-1", &original, &["BE-FPJ"]).await;
    assert_eq!(
        inbox(&mut x.be)
            .await
            .iter()
            .map(|m| m.message_id.as_str())
            .collect::<Vec<_>>(),
        [copy.as_str()]
    );
}

/// A forward retried with the same key returns the same copy.
#[tokio::test]
async fn forward_retry_with_the_same_key_returns_the_same_copy() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("idem-1", &["CO-DIJIN"], HandlingCode::H1),
    )
    .await;
    let first =
        x.co.forward_message(forward_request("fwd-key", &original, &["MX-FGR"]))
            .await
            .expect("forward")
            .into_inner();
    let retry =
        x.co.forward_message(forward_request("fwd-key", &original, &["MX-FGR"]))
            .await
            .expect("retry")
            .into_inner();
    assert_eq!(retry, first);
    assert_code(
        try_forward(&mut x.co, "fwd-key", &original, &["BE-FPJ"]).await,
        Code::AlreadyExists,
    );
    assert_eq!(inbox(&mut x.mx).await.len(), 1);
    assert!(inbox(&mut x.be).await.is_empty());
}

// === Consent ===

/// Forwarding H2 or H3 needs the originator's consent for that one agency, refused while the
/// request is open.
#[tokio::test]
async fn forwarding_h2_or_h3_needs_the_originators_consent_for_that_agency() {
    let mut x = exchange().await;
    for (i, handling) in [HandlingCode::H2, HandlingCode::H3].into_iter().enumerate() {
        let original = send(
            &mut x.es,
            with_handling(&format!("consent-{i}"), &["CO-DIJIN"], handling),
        )
        .await;
        assert_code(
            try_forward(&mut x.co, &format!("f-{i}-a"), &original, &["MX-FGR"]).await,
            Code::PermissionDenied,
        );

        let asked = request_consent(&mut x.co, &original, "MX-FGR").await;
        let request = inbox_entry(&mut x.es, &asked).await;
        assert_eq!(request.kind, MessageKind::ConsentRequest as i32);
        assert_eq!(request.sender, "CO-DIJIN");
        assert_eq!(request.recipients, ["ES-CNP"]);
        assert_eq!(request.related_message_id, original);
        assert_eq!(request.consent_agency, "MX-FGR");
        assert_eq!(request.reason, "Suspect moved to their jurisdiction");
        // Still refused while the request is open.
        assert_code(
            try_forward(&mut x.co, &format!("f-{i}-b"), &original, &["MX-FGR"]).await,
            Code::PermissionDenied,
        );

        let decision = try_grant(&mut x.es, &asked).await.expect("grant");
        let told = inbox_entry(&mut x.co, &decision).await;
        assert_eq!(told.kind, MessageKind::ConsentDecision as i32);
        assert_eq!(told.sender, "ES-CNP");
        assert!(told.consent_granted);
        assert_eq!(told.related_message_id, original);
        assert_eq!(told.consent_agency, "MX-FGR");
        assert_eq!(told.reason, "Granted for this investigation only");

        let copy = forward(&mut x.co, &format!("f-{i}-c"), &original, &["MX-FGR"]).await;
        assert_eq!(get(&mut x.mx, &copy).await.handling, handling as i32);
        // Consent names one agency: any other is still refused, alone or alongside.
        assert_code(
            try_forward(&mut x.co, &format!("f-{i}-d"), &original, &["BE-FPJ"]).await,
            Code::PermissionDenied,
        );
        assert_code(
            try_forward(
                &mut x.co,
                &format!("f-{i}-e"),
                &original,
                &["MX-FGR", "BE-FPJ"],
            )
            .await,
            Code::PermissionDenied,
        );
    }
    assert!(inbox(&mut x.be).await.is_empty());
}

/// A denial needs a reason, is told to the requester, and keeps forwarding refused; the latest
/// decision counts.
#[tokio::test]
async fn denied_consent_is_told_to_the_requester_and_forwarding_stays_refused() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("deny-1", &["CO-DIJIN"], HandlingCode::H2),
    )
    .await;
    let asked = request_consent(&mut x.co, &original, "MX-FGR").await;
    let decision = try_deny(&mut x.es, &asked).await.expect("deny");
    let told = inbox_entry(&mut x.co, &decision).await;
    assert_eq!(told.kind, MessageKind::ConsentDecision as i32);
    assert!(!told.consent_granted);
    assert_eq!(told.related_message_id, original);
    assert_eq!(told.consent_agency, "MX-FGR");
    assert_eq!(told.reason, "Source would be exposed");
    assert_code(
        try_forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await,
        Code::PermissionDenied,
    );

    // A denial needs a reason.
    let status =
        x.es.deny_consent(DenyConsentRequest {
            consent_request_id: asked.clone(),
            reason: " ".into(),
        })
        .await;
    assert_bad_field(status, "reason");

    // The originator may change its mind; the latest decision counts.
    try_grant(&mut x.es, &asked).await.expect("grant");
    forward(&mut x.co, "f-2", &original, &["MX-FGR"]).await;
    try_deny(&mut x.es, &asked).await.expect("deny again");
    assert_code(
        try_forward(&mut x.co, "f-3", &original, &["MX-FGR"]).await,
        Code::PermissionDenied,
    );
    assert_eq!(inbox(&mut x.mx).await.len(), 1);
}

/// Consent can be asked only for H2 and H3 messages.
#[tokio::test]
async fn consent_is_asked_only_for_h2_and_h3() {
    let mut x = exchange().await;
    for (i, handling) in [HandlingCode::H0, HandlingCode::H1].into_iter().enumerate() {
        let original = send(
            &mut x.es,
            with_handling(&format!("free-{i}"), &["CO-DIJIN"], handling),
        )
        .await;
        assert_bad_field(
            try_request_consent(&mut x.co, &original, "MX-FGR").await,
            "message_id",
        );
    }
    assert!(inbox_of_kind(&mut x.es, MessageKind::ConsentRequest)
        .await
        .is_empty());
}

/// A consent request needs a reason and a registered agency.
#[tokio::test]
async fn consent_request_needs_a_reason_and_a_registered_agency() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("ask-1", &["CO-DIJIN"], HandlingCode::H2),
    )
    .await;
    let mut request = RequestConsentRequest {
        message_id: original.clone(),
        agency_id: "MX-FGR".into(),
        reason: String::new(),
    };
    assert_bad_field(x.co.request_consent(request.clone()).await, "reason");
    request.reason = "Suspect moved".into();
    request.agency_id = "PT-PJ".into();
    assert_bad_field(x.co.request_consent(request.clone()).await, "agency_id");
    request.agency_id = "region:CELAC".into();
    assert_bad_field(x.co.request_consent(request).await, "agency_id");
    assert!(inbox(&mut x.es).await.is_empty());
}

/// Only the addressee of a consent request can decide it; others cannot tell it exists.
#[tokio::test]
async fn only_the_addressee_of_a_consent_request_can_decide_it() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("who-1", &["CO-DIJIN"], HandlingCode::H2),
    )
    .await;
    let asked = request_consent(&mut x.co, &original, "MX-FGR").await;
    // The requester can read its own request but it is not addressed to it: a bad argument,
    // not a way to consent to itself.
    assert_bad_field(try_grant(&mut x.co, &asked).await, "consent_request_id");
    assert_bad_field(try_deny(&mut x.co, &asked).await, "consent_request_id");
    // An agency that is not party to the request cannot tell it exists.
    assert_code(try_grant(&mut x.be, &asked).await, Code::NotFound);
    assert_code(try_grant(&mut x.mx, &asked).await, Code::NotFound);
    // The originator can only decide consent requests, not any message id.
    assert_bad_field(try_grant(&mut x.es, &original).await, "consent_request_id");
    assert_code(
        try_forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await,
        Code::PermissionDenied,
    );
    assert!(inbox_of_kind(&mut x.co, MessageKind::ConsentDecision)
        .await
        .is_empty());
}

// === Chains of forwards ===

/// Forwarding a forwarded copy keeps the provenance chain and the original's handling code.
#[tokio::test]
async fn forwarding_a_forwarded_copy_keeps_the_chain_and_the_original_handling() {
    let mut x = exchange().await;
    let request = with_handling("chain-1", &["CO-DIJIN"], HandlingCode::H0);
    let original = send(&mut x.es, request.clone()).await;
    let first = forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;
    let second = forward(&mut x.mx, "f-2", &first, &["BE-FPJ"]).await;

    let copy = inbox_entry(&mut x.be, &second).await;
    assert_eq!(copy.kind, MessageKind::Forwarded as i32);
    assert_eq!(copy.sender, "MX-FGR");
    assert_eq!(copy.originator, "ES-CNP");
    assert_eq!(copy.original_message_id, original);
    assert_eq!(copy.handling, HandlingCode::H0 as i32);
    assert_eq!(copy.content_sha256, content_sha256(&request));
    let hops: Vec<(&str, &str, &str)> = copy
        .provenance
        .iter()
        .map(|h| {
            (
                h.from_agency.as_str(),
                h.to_agency.as_str(),
                h.message_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        hops,
        [
            ("CO-DIJIN", "MX-FGR", first.as_str()),
            ("MX-FGR", "BE-FPJ", second.as_str()),
        ]
    );
}

/// Consent for an onward forward is the originator's, for that forwarder and agency only.
#[tokio::test]
async fn consent_for_an_onward_forward_is_checked_against_the_original() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("onward-1", &["CO-DIJIN"], HandlingCode::H2),
    )
    .await;
    let asked = request_consent(&mut x.co, &original, "MX-FGR").await;
    try_grant(&mut x.es, &asked).await.expect("grant");
    let first = forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;

    // MX-FGR holds an H2 copy: passing it on needs the originator's consent too.
    assert_code(
        try_forward(&mut x.mx, "f-2", &first, &["BE-FPJ"]).await,
        Code::PermissionDenied,
    );
    let onward = request_consent(&mut x.mx, &first, "BE-FPJ").await;
    let request = inbox_entry(&mut x.es, &onward).await;
    assert_eq!(request.sender, "MX-FGR");
    assert_eq!(
        request.related_message_id, original,
        "asks about the original"
    );
    assert_eq!(request.consent_agency, "BE-FPJ");
    // Consent given by the forwarder is not the originator's.
    assert_code(try_grant(&mut x.co, &onward).await, Code::NotFound);
    try_grant(&mut x.es, &onward).await.expect("grant");

    let second = forward(&mut x.mx, "f-2", &first, &["BE-FPJ"]).await;
    let copy = get(&mut x.be, &second).await;
    assert_eq!(copy.handling, HandlingCode::H2 as i32);
    assert_eq!(copy.original_message_id, original);
    assert_eq!(copy.provenance.len(), 2);
    // The consent MX-FGR obtained for BE-FPJ is MX-FGR's: CO-DIJIN must ask for itself.
    assert_code(
        try_forward(&mut x.co, "f-3", &original, &["BE-FPJ"]).await,
        Code::PermissionDenied,
    );
}

/// Consent binds the holder that asked: after the originator granted CO-DIJIN's request to
/// pass an H2 message to BE-FPJ, MX-FGR (another recipient of the same message) cannot use
/// that consent to forward it to BE-FPJ without asking.
#[tokio::test]
async fn consent_granted_to_one_holder_does_not_let_another_holder_forward() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("bind-1", &["CO-DIJIN", "MX-FGR"], HandlingCode::H2),
    )
    .await;
    let asked = request_consent(&mut x.co, &original, "BE-FPJ").await;
    try_grant(&mut x.es, &asked).await.expect("grant");

    assert_code(
        try_forward(&mut x.mx, "f-mx", &original, &["BE-FPJ"]).await,
        Code::PermissionDenied,
    );
    assert!(inbox(&mut x.be).await.is_empty(), "BE-FPJ got a copy");
    // The holder that asked may use it; the forward's audit entry names the granted request.
    let copy = forward(&mut x.co, "f-co", &original, &["BE-FPJ"]).await;
    let mut auditor = AuditServiceClient::new(
        x.pki
            .client_for(&auditor_spiffe("ana"), x.server.addr)
            .await,
    );
    let audited = auditor
        .list_audit_entries(ListAuditEntriesRequest {
            action: AuditAction::MessageForwarded as i32,
            message_id: copy.clone(),
            ..Default::default()
        })
        .await
        .expect("audit listing")
        .into_inner();
    let entries = collect(audited).await;
    assert_eq!(entries.len(), 1, "one MESSAGE_FORWARDED entry for {copy}");
    let event = entries[0].event.as_ref().expect("event");
    assert_eq!(event.actor_agency, "CO-DIJIN");
    assert_eq!(event.reason, format!("under consent requests {asked}"));
}

/// A forwarded copy never inherits consent: BE-FPJ, holding only the copy CO-DIJIN passed on
/// with consent, cannot forward it to an agency the originator consented to for CO-DIJIN.
#[tokio::test]
async fn a_forwarded_copy_does_not_inherit_the_consent_it_was_passed_on_with() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("inherit-1", &["CO-DIJIN"], HandlingCode::H3),
    )
    .await;
    for agency in ["BE-FPJ", "MX-FGR"] {
        let asked = request_consent(&mut x.co, &original, agency).await;
        try_grant(&mut x.es, &asked).await.expect("grant");
    }
    let copy = forward(&mut x.co, "f-1", &original, &["BE-FPJ"]).await;

    assert_code(
        try_forward(&mut x.be, "f-2", &copy, &["MX-FGR"]).await,
        Code::PermissionDenied,
    );
    assert!(inbox(&mut x.mx).await.is_empty(), "MX-FGR got a copy");
    // BE-FPJ asks for itself; once granted, it may pass its copy on.
    let own = request_consent(&mut x.be, &copy, "MX-FGR").await;
    try_grant(&mut x.es, &own).await.expect("grant");
    forward(&mut x.be, "f-3", &copy, &["MX-FGR"]).await;
}

/// Asking consent to pass a message to oneself or back to its originator makes no sense and
/// would only fill the originator's inbox: both are INVALID_ARGUMENT on `agency_id`.
#[tokio::test]
async fn consent_cannot_be_asked_for_oneself_or_for_the_originator() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("self-1", &["CO-DIJIN"], HandlingCode::H2),
    )
    .await;
    for agency in ["CO-DIJIN", "ES-CNP"] {
        assert_bad_field(
            try_request_consent(&mut x.co, &original, agency).await,
            "agency_id",
        );
    }
    assert!(inbox_of_kind(&mut x.es, MessageKind::ConsentRequest)
        .await
        .is_empty());
}

/// A holder cannot flood the originator with the same question: while its request (same
/// message, same prospective recipient) is pending, or once it is granted, another one is
/// ALREADY_EXISTS; after a denial it may ask again. Another holder's request is its own.
#[tokio::test]
async fn a_repeated_consent_request_is_already_exists_while_one_is_pending_or_granted() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("again-1", &["CO-DIJIN", "BE-FPJ"], HandlingCode::H2),
    )
    .await;
    let first = request_consent(&mut x.co, &original, "MX-FGR").await;
    for _ in 0..3 {
        assert_code(
            try_request_consent(&mut x.co, &original, "MX-FGR").await,
            Code::AlreadyExists,
        );
    }
    // Another holder, or another prospective recipient, is another question.
    request_consent(&mut x.be, &original, "MX-FGR").await;
    request_consent(&mut x.co, &original, "BE-FPJ").await;
    assert_eq!(
        inbox_of_kind(&mut x.es, MessageKind::ConsentRequest)
            .await
            .len(),
        3
    );

    try_deny(&mut x.es, &first).await.expect("deny");
    let second = request_consent(&mut x.co, &original, "MX-FGR").await;
    // The superseded request can no longer be decided.
    assert_code(try_grant(&mut x.es, &first).await, Code::FailedPrecondition);
    try_grant(&mut x.es, &second).await.expect("grant");
    assert_code(
        try_request_consent(&mut x.co, &original, "MX-FGR").await,
        Code::AlreadyExists,
    );
    forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;
}

// === Retraction and correction ===

/// A retraction reaches every holder of the message and its copies, and its status shows who
/// acknowledged it.
#[tokio::test]
async fn retraction_reaches_every_holder_and_status_shows_who_has_acknowledged() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("retract-1", &["CO-DIJIN", "BE-FPJ"], HandlingCode::H0),
    )
    .await;
    let copy = forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;
    assert!(status(&mut x.es, &original).await.notices.is_empty());

    let notice = try_retract(&mut x.es, &original, "Identification was wrong")
        .await
        .expect("retract");
    for holder in [&mut x.co, &mut x.be, &mut x.mx] {
        let retraction = inbox_entry(holder, &notice).await;
        assert_eq!(retraction.kind, MessageKind::Retraction as i32);
        assert_eq!(retraction.sender, "ES-CNP");
        assert_eq!(retraction.related_message_id, original);
        assert_eq!(retraction.reason, "Identification was wrong");
        assert_eq!(retraction.content, None);
    }
    assert!(inbox_of_kind(&mut x.es, MessageKind::Retraction)
        .await
        .is_empty());
    // The forwarder's copy names the original: retracting it is the originator's business.
    assert_eq!(get(&mut x.mx, &copy).await.original_message_id, original);

    let notices = status(&mut x.es, &original).await.notices;
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].notice_message_id, notice);
    assert_eq!(notices[0].kind, MessageKind::Retraction as i32);
    let holders: Vec<String> = notices[0]
        .recipients
        .iter()
        .map(|r| r.agency_id.clone())
        .collect();
    assert_eq!(holders, ["BE-FPJ", "CO-DIJIN", "MX-FGR"]);

    let received = DeliveryState::Received as i32;
    assert_eq!(ack(&mut x.co, &notice).await.expect("ack"), received);
    assert_eq!(ack(&mut x.mx, &notice).await.expect("ack"), received);
    let notices = status(&mut x.es, &original).await.notices;
    let acknowledged = states(&notices[0].recipients);
    assert_eq!(acknowledged[1], ("CO-DIJIN".to_string(), received));
    assert_eq!(acknowledged[2], ("MX-FGR".to_string(), received));
    assert_eq!(acknowledged[0].0, "BE-FPJ");
    assert!(
        acknowledged[0].1 < received,
        "BE-FPJ has not acknowledged: {acknowledged:?}"
    );
    // The original's own delivery states are unaffected by the notice's.
    assert_eq!(
        status(&mut x.es, &original)
            .await
            .recipients
            .iter()
            .map(|r| r.agency_id.as_str())
            .collect::<Vec<_>>(),
        ["BE-FPJ", "CO-DIJIN"]
    );
}

/// A retracted message and its copies cannot be forwarded any more; an earlier forward's retry
/// keeps its answer.
#[tokio::test]
async fn a_retracted_message_cannot_be_forwarded_any_more() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("retract-3", &["CO-DIJIN"], HandlingCode::H0),
    )
    .await;
    let copy = forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;
    try_retract(&mut x.es, &original, "Identification was wrong")
        .await
        .expect("retract");
    // Neither the original nor a copy of it: a new holder would never see the notice.
    assert_code(
        try_forward(&mut x.co, "f-2", &original, &["BE-FPJ"]).await,
        Code::FailedPrecondition,
    );
    assert_code(
        try_forward(&mut x.mx, "f-3", &copy, &["BE-FPJ"]).await,
        Code::FailedPrecondition,
    );
    assert!(inbox(&mut x.be).await.is_empty());
    // A retry of a forward made before the retraction still gets its original answer.
    assert_eq!(
        forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await,
        copy
    );
}

/// Only the originator can retract a message, and a reason is required.
#[tokio::test]
async fn only_the_originator_can_retract_and_a_reason_is_required() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("retract-2", &["CO-DIJIN"], HandlingCode::H1),
    )
    .await;
    let copy = forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;
    assert_code(
        try_retract(&mut x.co, &original, "Not ours").await,
        Code::PermissionDenied,
    );
    assert_code(
        try_retract(&mut x.co, &copy, "Our copy").await,
        Code::PermissionDenied,
    );
    assert_code(
        try_retract(&mut x.be, &original, "Not ours").await,
        Code::NotFound,
    );
    for reason in ["", "  \n "] {
        assert_bad_field(try_retract(&mut x.es, &original, reason).await, "reason");
    }
    assert_code(
        x.co.correct_message(correction(&original, "Serial BXR-4472"))
            .await,
        Code::PermissionDenied,
    );
    assert!(status(&mut x.es, &original).await.notices.is_empty());
    assert!(inbox_of_kind(&mut x.co, MessageKind::Retraction)
        .await
        .is_empty());
}

/// A correction carries the corrected content to every holder, cannot be forwarded, and leaves the
/// original as it was.
#[tokio::test]
async fn correction_carries_the_corrected_content_to_every_holder() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("correct-1", &["CO-DIJIN"], HandlingCode::H2),
    )
    .await;
    let asked = request_consent(&mut x.co, &original, "MX-FGR").await;
    try_grant(&mut x.es, &asked).await.expect("grant");
    forward(&mut x.co, "f-1", &original, &["MX-FGR"]).await;

    let notice =
        x.es.correct_message(correction(&original, "Serial BXR-4472, not BXR-4471."))
            .await
            .expect("correct")
            .into_inner()
            .notice_message_id;
    let corrected = SendMessageRequest {
        content: Some(puente::pb::v1::send_message_request::Content::Text(
            "Serial BXR-4472, not BXR-4471.".into(),
        )),
        ..Default::default()
    };
    for holder in [&mut x.co, &mut x.mx] {
        let entry = inbox_entry(holder, &notice).await;
        assert_eq!(entry.kind, MessageKind::Correction as i32);
        assert_eq!(entry.related_message_id, original);
        assert_eq!(entry.reason, "Serial number was mistyped");
        assert_eq!(text_of(&entry), Some("Serial BXR-4472, not BXR-4471."));
        assert_eq!(entry.content_sha256, content_sha256(&corrected));
        assert_eq!(entry.handling, HandlingCode::H2 as i32);
        // A notice is not intelligence to pass on: the corrected content stays with holders.
        assert_bad_field(
            try_forward(holder, "f-notice", &notice, &["BE-FPJ"]).await,
            "message_id",
        );
    }
    assert!(inbox(&mut x.be).await.is_empty());
    let notices = status(&mut x.es, &original).await.notices;
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].kind, MessageKind::Correction as i32);
    assert_eq!(notices[0].notice_message_id, notice);
    // The original keeps its content.
    assert_eq!(
        get(&mut x.co, &original).await.content_sha256,
        content_sha256(&message("x", &[]))
    );
}

/// Invalid corrected content is INVALID_ARGUMENT.
#[tokio::test]
async fn invalid_corrected_content_is_invalid_argument() {
    let mut x = exchange().await;
    let original = send(
        &mut x.es,
        with_handling("correct-2", &["CO-DIJIN"], HandlingCode::H1),
    )
    .await;
    assert_code(
        x.es.correct_message(correction(&original, "")).await,
        Code::InvalidArgument,
    );
    let mut without = correction(&original, "unused");
    without.content = None;
    assert_code(x.es.correct_message(without).await, Code::InvalidArgument);
    let mut no_reason = correction(&original, "Serial BXR-4472");
    no_reason.reason.clear();
    assert_bad_field(x.es.correct_message(no_reason).await, "reason");
    assert!(status(&mut x.es, &original).await.notices.is_empty());
    assert!(inbox_of_kind(&mut x.co, MessageKind::Correction)
        .await
        .is_empty());
}

// === Priority and respond_by ===

fn in_seconds(seconds: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    prost_types::Timestamp {
        seconds: now.as_secs() as i64 + seconds,
        nanos: now.subsec_nanos() as i32,
    }
}

/// A respond-by time must be in the future and within a year.
#[tokio::test]
async fn respond_by_must_be_in_the_future_within_a_year() {
    let mut x = exchange().await;
    for at in [in_seconds(-5), in_seconds(400 * 86_400)] {
        let mut request = message("due-1", &["CO-DIJIN"]);
        request.respond_by = Some(at);
        assert_bad_field(x.es.send_message(request).await, "respond_by");
    }
    let mut request = message("due-1", &["CO-DIJIN"]);
    request.priority = 99;
    assert_bad_field(x.es.send_message(request).await, "priority");
    assert!(inbox(&mut x.co).await.is_empty());
}

/// Recipients that have not replied are overdue after the respond-by time, until they reply, even
/// late.
#[tokio::test]
async fn recipients_are_overdue_after_respond_by_until_they_reply() {
    let mut x = exchange().await;
    let due = in_seconds(2);
    let mut request = message("due-2", &["CO-DIJIN", "BE-FPJ"]);
    request.priority = Priority::Urgent as i32;
    request.respond_by = Some(due);
    let asked = send(&mut x.es, request).await;
    let received = get(&mut x.co, &asked).await;
    assert_eq!(received.priority, Priority::Urgent as i32);
    assert_eq!(received.respond_by.map(|t| t.seconds), Some(due.seconds));

    let before = status(&mut x.es, &asked).await;
    assert_eq!(before.respond_by.map(|t| t.seconds), Some(due.seconds));
    assert!(before.recipients.iter().all(|r| !r.overdue && !r.replied));

    // BE-FPJ answers in time.
    let mut answer = message("answer-be", &["ES-CNP"]);
    answer.in_reply_to = asked.clone();
    send(&mut x.be, answer).await;

    // Poll until respond_by has passed.
    let after = eventually_within(
        "a recipient to be overdue",
        WAIT,
        Duration::from_millis(100),
        async || {
            let now = status(&mut x.es, &asked).await;
            if now.recipients.iter().any(|r| r.overdue) {
                Ok(now)
            } else {
                Err(now)
            }
        },
    )
    .await;
    let flags = |s: &GetDeliveryStatusResponse| -> Vec<(String, bool, bool)> {
        s.recipients
            .iter()
            .map(|r| (r.agency_id.clone(), r.replied, r.overdue))
            .collect()
    };
    assert_eq!(
        flags(&after),
        [
            ("BE-FPJ".to_string(), true, false),
            ("CO-DIJIN".to_string(), false, true)
        ]
    );

    // A late answer still counts as the reply; it is no longer overdue.
    let mut late = message("answer-co", &["ES-CNP"]);
    late.in_reply_to = asked.clone();
    send(&mut x.co, late).await;
    assert_eq!(
        flags(&status(&mut x.es, &asked).await),
        [
            ("BE-FPJ".to_string(), true, false),
            ("CO-DIJIN".to_string(), true, false)
        ]
    );
}

/// `replied` tells the sender only of answers it may read: a recipient that answered only to
/// other agencies has not replied as far as the sender can see (and stays overdue).
#[tokio::test]
async fn replied_counts_only_replies_the_sender_can_read() {
    let mut x = exchange().await;
    let asked = send(&mut x.es, message("asked-1", &["CO-DIJIN", "BE-FPJ"])).await;

    let mut aside = message("aside-co", &["MX-FGR"]);
    aside.in_reply_to = asked.clone();
    send(&mut x.co, aside).await;
    let mut answer = message("answer-be", &["MX-FGR", "ES-CNP"]);
    answer.in_reply_to = asked.clone();
    send(&mut x.be, answer).await;

    let replied: Vec<(String, bool)> = status(&mut x.es, &asked)
        .await
        .recipients
        .iter()
        .map(|r| (r.agency_id.clone(), r.replied))
        .collect();
    assert_eq!(
        replied,
        [
            ("BE-FPJ".to_string(), true),
            ("CO-DIJIN".to_string(), false)
        ]
    );
}

// === Threads ===

/// R: ES-CNP → CO-DIJIN, BE-FPJ (case CASE-1). A: CO-DIJIN → ES-CNP, reply to R.
/// B: BE-FPJ → ES-CNP, CO-DIJIN, reply to R. C: ES-CNP → CO-DIJIN, BE-FPJ, reply to A (case CASE-1).
/// BE-FPJ is party to R, B and C but not to A.
async fn thread_fixture(x: &mut Exchange) -> [String; 4] {
    let mut root = message("root", &["CO-DIJIN", "BE-FPJ"]);
    root.case_reference = "CASE-1".into();
    let r = send(&mut x.es, root).await;
    let mut reply = message("a", &["ES-CNP"]);
    reply.in_reply_to = r.clone();
    let a = send(&mut x.co, reply).await;
    let mut reply = message("b", &["ES-CNP", "CO-DIJIN"]);
    reply.in_reply_to = r.clone();
    let b = send(&mut x.be, reply).await;
    let mut reply = message("c", &["CO-DIJIN", "BE-FPJ"]);
    reply.in_reply_to = a.clone();
    reply.case_reference = "CASE-1".into();
    let c = send(&mut x.es, reply).await;
    [r, a, b, c]
}

/// ListThread returns the whole thread the caller may see, oldest first, from any of its messages.
#[tokio::test]
async fn list_thread_returns_the_whole_thread_from_any_message_oldest_first() {
    let mut x = exchange().await;
    let [r, a, b, c] = thread_fixture(&mut x).await;
    let all = [r.clone(), a.clone(), b.clone(), c.clone()];
    for id in &all {
        assert_eq!(thread_of(&mut x.es, id).await, all, "ES-CNP from {id}");
        assert_eq!(thread_of(&mut x.co, id).await, all, "CO-DIJIN from {id}");
    }
    // BE-FPJ sees the thread without A, from wherever it enters it.
    let visible = [r.clone(), b.clone(), c.clone()];
    for id in &visible {
        assert_eq!(thread_of(&mut x.be, id).await, visible, "BE-FPJ from {id}");
    }
    assert_code(
        try_thread(
            &mut x.be,
            ListThreadRequest {
                message_id: a.clone(),
                ..Default::default()
            },
        )
        .await,
        Code::NotFound,
    );
    assert_code(
        try_thread(
            &mut x.mx,
            ListThreadRequest {
                message_id: r.clone(),
                ..Default::default()
            },
        )
        .await,
        Code::NotFound,
    );
}

/// ListThread by case reference lists the caller's messages carrying it, forwarded copies for their
/// holders only.
#[tokio::test]
async fn list_thread_by_case_reference_lists_the_messages_carrying_it() {
    let mut x = exchange().await;
    let [r, _, _, c] = thread_fixture(&mut x).await;
    let mut other = message("other", &["CO-DIJIN"]);
    other.case_reference = "CASE-2".into();
    let other = send(&mut x.es, other).await;

    assert_eq!(case_of(&mut x.es, "CASE-1").await, [r.clone(), c.clone()]);
    assert_eq!(case_of(&mut x.co, " CASE-1 ").await, [r.clone(), c.clone()]);
    assert_eq!(case_of(&mut x.co, "CASE-2").await, [other]);
    assert!(case_of(&mut x.be, "CASE-2").await.is_empty());
    assert!(case_of(&mut x.mx, "CASE-1").await.is_empty());
    assert!(case_of(&mut x.es, "CASE-3").await.is_empty());

    // A forwarded copy carries the originator's case reference, and is listed under it for
    // its holder, not for anyone else.
    let copy = forward(&mut x.co, "f-1", &r, &["MX-FGR"]).await;
    assert_eq!(case_of(&mut x.mx, "CASE-1").await, [copy.as_str()]);
    assert_eq!(case_of(&mut x.es, "CASE-1").await, [r, c]);
}

/// ListThread needs exactly one of message id and case reference.
#[tokio::test]
async fn list_thread_needs_exactly_one_of_message_id_and_case_reference() {
    let mut x = exchange().await;
    let [r, ..] = thread_fixture(&mut x).await;
    for request in [
        ListThreadRequest::default(),
        ListThreadRequest {
            message_id: r.clone(),
            case_reference: "CASE-1".into(),
        },
        ListThreadRequest {
            message_id: String::new(),
            case_reference: "   ".into(),
        },
    ] {
        assert_code(try_thread(&mut x.es, request).await, Code::InvalidArgument);
    }
    assert_bad_field(
        try_thread(
            &mut x.es,
            ListThreadRequest {
                message_id: "not-a-uuid".into(),
                ..Default::default()
            },
        )
        .await,
        "message_id",
    );
}

// === Nothing bypasses the handling rules ===

/// An agency not party to an H3 message cannot reach it through any RPC: reads, replies, forwards,
/// consent or threads.
#[tokio::test]
async fn an_agency_not_party_to_an_h3_message_cannot_reach_it_through_any_rpc() {
    let mut x = exchange().await;
    let mut request = with_handling("secret", &["CO-DIJIN"], HandlingCode::H3);
    request.case_reference = "CASE-H3".into();
    let secret = send(&mut x.es, request).await;

    assert_code(
        x.be.get_message(GetMessageRequest {
            message_id: secret.clone(),
        })
        .await,
        Code::NotFound,
    );
    let mut reply = message("reply", &["CO-DIJIN"]);
    reply.in_reply_to = secret.clone();
    assert_bad_field(x.be.send_message(reply).await, "in_reply_to");
    assert_code(
        try_thread(
            &mut x.be,
            ListThreadRequest {
                message_id: secret.clone(),
                ..Default::default()
            },
        )
        .await,
        Code::NotFound,
    );
    assert!(case_of(&mut x.be, "CASE-H3").await.is_empty());
    assert_code(
        try_request_consent(&mut x.be, &secret, "BE-FPJ").await,
        Code::NotFound,
    );
    assert_code(
        try_forward(&mut x.be, "f-1", &secret, &["MX-FGR"]).await,
        Code::NotFound,
    );
    assert_code(ack(&mut x.be, &secret).await, Code::NotFound);
    assert_code(
        x.be.get_delivery_status(GetDeliveryStatusRequest {
            message_id: secret.clone(),
        })
        .await,
        Code::NotFound,
    );
    assert_code(
        try_retract(&mut x.be, &secret, "mine now").await,
        Code::NotFound,
    );

    // The sender cannot ask consent for its own message (it is no holder of it).
    assert_code(
        try_request_consent(&mut x.es, &secret, "BE-FPJ").await,
        Code::PermissionDenied,
    );

    // CO-DIJIN answers and copies BE-FPJ: BE-FPJ reads the answer, never the H3 root.
    let mut answer = message("answer", &["ES-CNP", "BE-FPJ"]);
    answer.in_reply_to = secret.clone();
    let answer = send(&mut x.co, answer).await;
    assert_eq!(thread_of(&mut x.be, &answer).await, [answer.as_str()]);
    assert_eq!(
        thread_of(&mut x.es, &answer).await,
        [secret.clone(), answer]
    );

    // A holder of a forwarded copy reads the copy, not the original.
    let asked = request_consent(&mut x.co, &secret, "MX-FGR").await;
    try_grant(&mut x.es, &asked).await.expect("grant");
    let copy = forward(&mut x.co, "f-2", &secret, &["MX-FGR"]).await;
    assert_code(
        x.mx.get_message(GetMessageRequest {
            message_id: secret.clone(),
        })
        .await,
        Code::NotFound,
    );
    assert_eq!(thread_of(&mut x.mx, &copy).await, [copy.as_str()]);
    let mut reply = message("mx-reply", &["ES-CNP"]);
    reply.in_reply_to = secret.clone();
    assert_bad_field(x.mx.send_message(reply).await, "in_reply_to");
    // Consent messages are not intelligence either: they cannot be forwarded.
    assert_bad_field(
        try_forward(&mut x.es, "f-3", &asked, &["BE-FPJ"]).await,
        "message_id",
    );
    assert!(inbox(&mut x.be)
        .await
        .iter()
        .all(|m| m.message_id != secret && m.original_message_id != secret));
}
