//! ExchangeService end to end: sending, idempotency, inbox streams, acknowledgements, access to
//! messages, recipient expansion, validation and size limits.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    send_message_request, AcknowledgeMessageRequest, AgencyStatus, Attachment, DeliveryState,
    Evaluation, GetDeliveryStatusRequest, GetMessageRequest, HandlingCode, InformationAccuracy,
    ListAgenciesRequest, Message, Region, SendMessageRequest, SendMessageResponse,
    SourceReliability, Topic,
};
use rcgen::DnType;
use tonic::transport::Channel;
use tonic::Code;

type Client = ExchangeServiceClient<Channel>;

/// Sends `request` and expects it to be accepted.
async fn send(client: &mut Client, request: SendMessageRequest) -> SendMessageResponse {
    let key = request.client_message_id.clone();
    client
        .send_message(request)
        .await
        .unwrap_or_else(|s| panic!("send {key:?}: {s:?}"))
        .into_inner()
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

/// A server with ES-CNP and BE-FPJ (EU) and CO-DIJIN (CELAC).
async fn three_agencies(pki: &TestPki) -> TestServer {
    let server = TestServer::spawn(pki).await;
    server.register(pki, "ES-CNP", Region::Eu).await;
    server.register(pki, "CO-DIJIN", Region::Celac).await;
    server.register(pki, "BE-FPJ", Region::Eu).await;
    server
}

/// Deterministic bytes that are not a repeated pattern.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

// === Sending and receiving ===

/// A recipient streams a sent message as sequence 1 with every field as sent and the content
/// digest.
#[tokio::test]
async fn recipient_streams_a_sent_message_with_sequence_one() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut request = message("req-1", &["CO-DIJIN"]);
    request.case_reference = "ES-2025-0042".into();
    request.attachments = vec![Attachment {
        filename: "photo.jpg".into(),
        media_type: "image/jpeg".into(),
        data: vec![0xFF, 0xD8, 0xFF, 0xE0],
    }];
    let accepted = send(&mut sender, request.clone()).await;
    uuid::Uuid::try_parse(&accepted.message_id).expect("message id is a UUID");

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    let entry = next_entry(&mut inbox).await;
    assert_eq!(entry.sequence, 1);
    let message = entry.message.expect("message");
    assert_eq!(message.message_id, accepted.message_id);
    assert_eq!(message.sender, "ES-CNP");
    assert_eq!(message.recipients, ["CO-DIJIN"]);
    assert_eq!(message.topic, request.topic);
    assert_eq!(message.subject, request.subject);
    assert_eq!(message.handling, request.handling);
    assert_eq!(message.evaluation, request.evaluation);
    assert_eq!(message.case_reference, "ES-2025-0042");
    assert_eq!(message.in_reply_to, "");
    assert_eq!(message.created_at, accepted.accepted_at);
    assert_eq!(
        text_of(&message),
        Some("Glock 17 seized at the port of Algeciras; container from Cartagena.")
    );
    assert_eq!(message.attachments, request.attachments);
    assert_eq!(message.content_sha256, content_sha256(&request));
    assert_eq!(message.content_sha256.len(), 32);
}

/// The sender is the caller's SPIFFE ID, whatever the certificate's subject says.
#[tokio::test]
async fn sender_cannot_be_forged() {
    // The request has no sender field; the certificate's subject names another agency, but only
    // the SPIFFE ID counts.
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let (cert, key) = pki.issue_with(&agency_spiffe("ES-CNP"), |params| {
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "CO-DIJIN");
        params.distinguished_name.push(
            DnType::OrganizationName,
            "spiffe://puente.local/agency/CO-DIJIN",
        );
    });
    let channel = connect(&cert, &key, &pki.ca_pem, server.addr)
        .await
        .expect("connect");
    let mut sender = ExchangeServiceClient::new(channel);
    let accepted = send(&mut sender, message("forged-1", &["BE-FPJ"])).await;

    let entry = first_inbox_entry(&pki, &server, "BE-FPJ").await;
    assert_eq!(entry.message.expect("message").sender, "ES-CNP");
    let mut recipient = pki.agency_client("BE-FPJ", server.addr).await;
    assert_eq!(
        get(&mut recipient, &accepted.message_id).await.sender,
        "ES-CNP"
    );
}

/// A retry with the same client message id returns the same message and is delivered once.
#[tokio::test]
async fn idempotent_retry_returns_the_same_message_and_delivers_once() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let first = send(&mut sender, message("retry-1", &["CO-DIJIN"])).await;
    let retry = send(&mut sender, message("retry-1", &["CO-DIJIN"])).await;
    assert_eq!(retry.message_id, first.message_id);
    assert_eq!(retry.accepted_at, first.accepted_at);
    let next = send(&mut sender, message("retry-2", &["CO-DIJIN"])).await;
    assert_ne!(next.message_id, first.message_id);

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    let entries = next_entries(&mut inbox, 2).await;
    let got: Vec<(u64, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.sequence,
                e.message.as_ref().expect("message").message_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, first.message_id.as_str()),
            (2, next.message_id.as_str())
        ]
    );
}

/// Reusing a client message id for other content or recipients is ALREADY_EXISTS; keys are per
/// sender.
#[tokio::test]
async fn reusing_a_client_message_id_for_different_content_is_already_exists() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let first = send(
        &mut sender,
        text_message("key-1", &["CO-DIJIN"], "first text"),
    )
    .await;
    assert_code(
        sender
            .send_message(text_message("key-1", &["CO-DIJIN"], "second text"))
            .await,
        Code::AlreadyExists,
    );
    let mut other_recipients = message("key-1", &["BE-FPJ"]);
    other_recipients.content = Some(send_message_request::Content::Text("first text".into()));
    assert_code(
        sender.send_message(other_recipients).await,
        Code::AlreadyExists,
    );

    // Keys are per sender: another agency may use the same key.
    let mut other_sender = pki.agency_client("BE-FPJ", server.addr).await;
    let theirs = send(
        &mut other_sender,
        text_message("key-1", &["CO-DIJIN"], "second text"),
    )
    .await;
    assert_ne!(theirs.message_id, first.message_id);

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    let entries = next_entries(&mut inbox, 2).await;
    let texts: Vec<(u64, Option<&str>)> = entries
        .iter()
        .map(|e| (e.sequence, text_of(e.message.as_ref().expect("message"))))
        .collect();
    assert_eq!(texts, [(1, Some("first text")), (2, Some("second text"))]);
}

/// A retry of a committed send returns the original response even after a recipient was suspended.
#[tokio::test]
async fn retry_after_a_recipient_was_suspended_returns_the_original_response() {
    // The first response was lost; by the time the sender retries, the recipient is suspended.
    // The message is already committed, so the retry must still get the original response.
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let first = send(&mut sender, message("lost-1", &["CO-DIJIN"])).await;
    server.suspend(&pki, "CO-DIJIN").await;
    let retry = sender
        .send_message(message("lost-1", &["CO-DIJIN"]))
        .await
        .expect("a retry of a committed message returns the original response")
        .into_inner();
    assert_eq!(retry.message_id, first.message_id);
}

// === Inbox streams ===

/// An inbox stream resumes after a given sequence without gaps.
#[tokio::test]
async fn stream_resumes_after_sequence_without_gaps() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            send(&mut sender, message(&format!("m-{i}"), &["CO-DIJIN"]))
                .await
                .message_id,
        );
    }

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 2).await;
    let entries = next_entries(&mut inbox, 3).await;
    let got: Vec<(u64, String)> = entries
        .into_iter()
        .map(|e| (e.sequence, e.message.expect("message").message_id))
        .collect();
    let want: Vec<(u64, String)> = (3..=5).zip(ids[2..].iter().cloned()).collect();
    assert_eq!(got, want);
}

/// Live messages arrive on an open stream after its backlog, in sequence order.
#[tokio::test]
async fn live_messages_arrive_after_backlog_in_order() {
    const BACKLOG: usize = 20;
    const LIVE: usize = 20;
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut backlog = Vec::new();
    for i in 0..BACKLOG {
        backlog.push(
            send(&mut sender, message(&format!("backlog-{i}"), &["CO-DIJIN"]))
                .await
                .message_id,
        );
    }

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    let live_sender = sender.clone();
    let live = tokio::spawn(async move {
        futures::stream::iter(0..LIVE)
            .map(|i| {
                let mut client = live_sender.clone();
                async move {
                    send(&mut client, message(&format!("live-{i}"), &["CO-DIJIN"]))
                        .await
                        .message_id
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<String>>()
            .await
    });

    let entries = next_entries(&mut inbox, BACKLOG + LIVE).await;
    let live = tokio::time::timeout(WAIT, live)
        .await
        .expect("live sends finish")
        .expect("live sender task");

    let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
    let want: Vec<u64> = (1..=(BACKLOG + LIVE) as u64).collect();
    assert_eq!(sequences, want, "sequences must be consecutive from 1");
    let ids: Vec<String> = entries
        .into_iter()
        .map(|e| e.message.expect("message").message_id)
        .collect();
    assert_eq!(ids[..BACKLOG], backlog[..], "backlog first, in order");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicates");
    let live_got: HashSet<&String> = ids[BACKLOG..].iter().collect();
    let live_sent: HashSet<&String> = live.iter().collect();
    assert_eq!(live_got, live_sent);
}

/// A reader that does not read does not block senders, and later gets everything in sequence.
#[tokio::test]
async fn slow_reader_does_not_block_senders() {
    const SENDS: usize = 200;
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    // Opened and then left unread while every send completes.
    let mut inbox = open_inbox(&mut recipient, 0).await;

    let sender = pki.agency_client("ES-CNP", server.addr).await;
    let sends = futures::stream::iter(0..SENDS)
        .map(|i| {
            let mut client = sender.clone();
            async move {
                send(&mut client, message(&format!("bulk-{i}"), &["CO-DIJIN"]))
                    .await
                    .message_id
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<String>>();
    let sent = tokio::time::timeout(Duration::from_secs(30), sends)
        .await
        .expect("sends complete although the reader reads nothing");
    assert_eq!(sent.len(), SENDS);

    // The reader then gets everything, in sequence.
    let entries = next_entries(&mut inbox, SENDS).await;
    let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=SENDS as u64).collect::<Vec<_>>());
    let got: HashSet<String> = entries
        .into_iter()
        .map(|e| e.message.expect("message").message_id)
        .collect();
    assert_eq!(got, sent.into_iter().collect::<HashSet<_>>());
}

/// Concurrent senders share one gapless inbox sequence, seen alike by every stream of the
/// recipient.
#[tokio::test]
async fn concurrent_senders_share_one_gapless_sequence_seen_alike_by_every_stream() {
    const PER_SENDER: usize = 15;
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    server.register(&pki, "MX-FGR", Region::Celac).await;
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut first = open_inbox(&mut recipient, 0).await;
    let mut second = open_inbox(&mut recipient.clone(), 0).await;

    let mut senders = Vec::new();
    for agency in ["ES-CNP", "BE-FPJ", "MX-FGR"] {
        let client = pki.agency_client(agency, server.addr).await;
        senders.push(tokio::spawn(async move {
            futures::stream::iter(0..PER_SENDER)
                .map(|i| {
                    let mut client = client.clone();
                    async move {
                        send(&mut client, message(&format!("c-{i}"), &["CO-DIJIN"]))
                            .await
                            .message_id
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<String>>()
                .await
        }));
    }
    let total = 3 * PER_SENDER;
    let a = next_entries(&mut first, total).await;
    let b = next_entries(&mut second, total).await;
    let mut sent = HashSet::new();
    for task in senders {
        sent.extend(
            tokio::time::timeout(WAIT, task)
                .await
                .expect("senders finish")
                .expect("sender task"),
        );
    }

    let view = |entries: Vec<puente::pb::v1::StreamInboxResponse>| -> Vec<(u64, String)> {
        entries
            .into_iter()
            .map(|e| (e.sequence, e.message.expect("message").message_id))
            .collect()
    };
    let (a, b) = (view(a), view(b));
    assert_eq!(a, b, "both streams see the same sequence");
    let sequences: Vec<u64> = a.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, (1..=total as u64).collect::<Vec<_>>());
    let got: HashSet<String> = a.into_iter().map(|(_, id)| id).collect();
    assert_eq!(got, sent);
}

/// Open inbox streams end with UNAVAILABLE on shutdown and the server stops cleanly.
#[tokio::test]
async fn inbox_streams_end_with_unavailable_on_shutdown() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    send(&mut sender, message("before-shutdown", &["CO-DIJIN"])).await;
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    assert_eq!(next_entry(&mut inbox).await.sequence, 1);

    let stopped = tokio::spawn(server.stop(Duration::from_secs(10)));
    let ended = tokio::time::timeout(WAIT, inbox.message())
        .await
        .expect("the stream ends promptly on shutdown");
    assert_code(ended, Code::Unavailable);
    stopped
        .await
        .expect("stop task")
        .expect("the server stops cleanly");
}

// === Acknowledgements and delivery status ===

async fn ack(
    client: &mut Client,
    message_id: &str,
    state: DeliveryState,
) -> Result<i32, tonic::Status> {
    client
        .acknowledge_message(AcknowledgeMessageRequest {
            message_id: message_id.to_string(),
            state: state as i32,
        })
        .await
        .map(|r| r.into_inner().state)
}

/// Acknowledgements move a recipient's delivery state forward only, and the sender sees each step.
#[tokio::test]
async fn acknowledgements_move_delivery_state_forward() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let id = send(&mut sender, message("ack-1", &["CO-DIJIN", "BE-FPJ"]))
        .await
        .message_id;
    let pending = DeliveryState::Pending as i32;
    assert_eq!(
        delivery_states(&mut sender, &id).await,
        [
            ("BE-FPJ".to_string(), pending),
            ("CO-DIJIN".to_string(), pending)
        ]
    );

    use DeliveryState::{Read, Received};
    // (step, CO-DIJIN acknowledges, the state it is answered, CO-DIJIN's state as the sender
    // then sees it). States only move forward.
    let steps = [
        ("received", Received, Received, Received),
        ("read", Read, Read, Read),
        ("received after read", Received, Read, Read),
    ];
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    for (step, acknowledged, answered, seen) in steps {
        assert_eq!(
            ack(&mut recipient, &id, acknowledged)
                .await
                .unwrap_or_else(|s| panic!("{step}: ack refused: {s:?}")),
            answered as i32,
            "{step}: answered state"
        );
        assert_eq!(
            delivery_states(&mut sender, &id).await,
            [
                ("BE-FPJ".to_string(), pending),
                ("CO-DIJIN".to_string(), seen as i32)
            ],
            "{step}: states the sender sees"
        );
    }
}

/// A message handed to the recipient's stream is marked DELIVERED without the client's involvement.
#[tokio::test]
async fn streamed_message_is_marked_delivered() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let id = send(&mut sender, message("delivered-1", &["CO-DIJIN"]))
        .await
        .message_id;
    first_inbox_entry(&pki, &server, "CO-DIJIN").await;

    // DELIVERED is recorded after the entry is handed to the stream, without the client's
    // involvement: poll for it.
    eventually("CO-DIJIN's delivery to be marked DELIVERED", async || {
        let states = delivery_states(&mut sender, &id).await;
        if states == [("CO-DIJIN".to_string(), DeliveryState::Delivered as i32)] {
            Ok(())
        } else {
            Err(states)
        }
    })
    .await;
}

/// Only a recipient can acknowledge a message; refused acknowledgements change no state.
#[tokio::test]
async fn only_a_recipient_can_acknowledge() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let id = send(&mut sender, message("ack-2", &["CO-DIJIN"]))
        .await
        .message_id;

    let unknown = uuid::Uuid::now_v7().to_string();
    // (case, who acknowledges, which message, the refusal).
    let cases = [
        ("a third agency", "BE-FPJ", &id, Code::NotFound),
        ("the sender", "ES-CNP", &id, Code::PermissionDenied),
        (
            "the recipient, an unknown message",
            "CO-DIJIN",
            &unknown,
            Code::NotFound,
        ),
    ];
    for (case, agency, message_id, code) in cases {
        let mut client = pki.agency_client(agency, server.addr).await;
        assert_code_for(
            case,
            ack(&mut client, message_id, DeliveryState::Received).await,
            code,
        );
    }
    assert_eq!(
        delivery_states(&mut sender, &id).await,
        [("CO-DIJIN".to_string(), DeliveryState::Pending as i32)]
    );
}

/// Acknowledging with a state other than RECEIVED or READ, or a malformed id, is INVALID_ARGUMENT
/// and changes nothing.
#[tokio::test]
async fn acknowledging_with_a_state_other_than_received_or_read_is_invalid_argument() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let id = send(&mut sender, message("ack-3", &["CO-DIJIN"]))
        .await
        .message_id;
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    // (acknowledged state, message id, the field named as invalid).
    let cases = [
        (DeliveryState::Pending, id.as_str(), "state"),
        (DeliveryState::Delivered, &id, "state"),
        (DeliveryState::Unspecified, &id, "state"),
        (DeliveryState::Read, "not-a-uuid", "message_id"),
    ];
    for (state, message_id, field) in cases {
        assert_bad_field_for(
            &format!("{state:?} for {message_id}"),
            ack(&mut recipient, message_id, state).await,
            field,
        );
    }
    assert_eq!(
        delivery_states(&mut sender, &id).await,
        [("CO-DIJIN".to_string(), DeliveryState::Pending as i32)]
    );
}

// === Access to messages ===

/// Only the sender and recipients read a message; to others it is as absent as one that does not
/// exist.
#[tokio::test]
async fn only_the_sender_and_recipients_can_read_a_message() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let request = message("read-1", &["CO-DIJIN"]);
    let id = send(&mut sender, request.clone()).await.message_id;

    let as_sender = get(&mut sender, &id).await;
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let as_recipient = get(&mut recipient, &id).await;
    assert_eq!(as_sender, as_recipient);
    assert_eq!(as_sender.message_id, id);
    assert_eq!(as_sender.content_sha256, content_sha256(&request));

    let mut third = pki.agency_client("BE-FPJ", server.addr).await;
    // A third agency's read is indistinguishable from a read of a message that does not exist.
    let cases = [
        ("another agency's message", id.clone()),
        (
            "a message that does not exist",
            uuid::Uuid::now_v7().to_string(),
        ),
    ];
    for (case, message_id) in cases {
        assert_code_for(
            case,
            third.get_message(GetMessageRequest { message_id }).await,
            Code::NotFound,
        );
    }
    let malformed = third
        .get_message(GetMessageRequest {
            message_id: "42".into(),
        })
        .await;
    assert_bad_field(malformed, "message_id");
}

/// Only the sender sees a message's delivery status: a recipient is denied, a third agency told it
/// does not exist.
#[tokio::test]
async fn only_the_sender_sees_delivery_status() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let id = send(&mut sender, message("status-1", &["CO-DIJIN"]))
        .await
        .message_id;
    let request = || GetDeliveryStatusRequest {
        message_id: id.clone(),
    };

    let status = sender
        .get_delivery_status(request())
        .await
        .expect("sender sees the status")
        .into_inner();
    assert_eq!(status.message_id, id);
    assert_eq!(status.recipients.len(), 1);
    assert!(status.recipients[0].updated_at.is_some());

    // (who asks, the refusal).
    let cases = [
        ("CO-DIJIN", Code::PermissionDenied),
        ("BE-FPJ", Code::NotFound),
    ];
    for (agency, code) in cases {
        let mut client = pki.agency_client(agency, server.addr).await;
        assert_code_for(agency, client.get_delivery_status(request()).await, code);
    }
}

/// A reply to a message the caller cannot read is INVALID_ARGUMENT; a party to the original may
/// answer it.
#[tokio::test]
async fn reply_to_a_message_the_caller_cannot_read_is_invalid_argument() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let original = send(&mut sender, message("orig-1", &["CO-DIJIN"]))
        .await
        .message_id;

    let mut third = pki.agency_client("BE-FPJ", server.addr).await;
    // (case, client message id, in_reply_to).
    let cases = [
        (
            "a message BE-FPJ is no party to",
            "reply-1",
            original.clone(),
        ),
        (
            "a message that does not exist",
            "reply-2",
            uuid::Uuid::now_v7().to_string(),
        ),
    ];
    for (case, key, in_reply_to) in cases {
        let mut reply = message(key, &["ES-CNP"]);
        reply.in_reply_to = in_reply_to;
        assert_bad_field_for(case, third.send_message(reply).await, "in_reply_to");
    }

    // A party to the original may answer it.
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut reply = message("reply-3", &["ES-CNP"]);
    reply.in_reply_to = original.clone();
    let answer = send(&mut recipient, reply).await.message_id;
    let entry = first_inbox_entry(&pki, &server, "ES-CNP").await;
    let delivered = entry.message.expect("message");
    assert_eq!(delivered.message_id, answer);
    assert_eq!(delivered.in_reply_to, original);
}

// === Recipients ===

/// A broadcast reaches every other active agency, never the sender or a suspended agency.
#[tokio::test]
async fn broadcast_reaches_every_other_active_agency() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    server
        .register(&pki, "INT-UNODC", Region::International)
        .await;
    server.register(&pki, "PE-PNP", Region::Celac).await;
    server.suspend(&pki, "PE-PNP").await;

    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let id = send(&mut sender, message("all-1", &["*"])).await.message_id;
    assert_eq!(
        get(&mut sender, &id).await.recipients,
        ["BE-FPJ", "CO-DIJIN", "INT-UNODC"]
    );
    for agency in ["BE-FPJ", "CO-DIJIN", "INT-UNODC"] {
        let entry = first_inbox_entry(&pki, &server, agency).await;
        assert_eq!(entry.sequence, 1, "{agency}");
        assert_eq!(entry.message.expect("message").message_id, id, "{agency}");
    }

    // Neither the sender nor the suspended agency got an inbox entry: the first entry of each
    // is a message sent to it afterwards.
    server
        .set_status(&pki, "PE-PNP", AgencyStatus::Active)
        .await;
    let mut other = pki.agency_client("CO-DIJIN", server.addr).await;
    for agency in ["ES-CNP", "PE-PNP"] {
        let later = send(&mut other, message(&format!("later-{agency}"), &[agency])).await;
        let entry = first_inbox_entry(&pki, &server, agency).await;
        assert_eq!(entry.sequence, 1, "{agency}");
        assert_eq!(
            entry.message.expect("message").message_id,
            later.message_id,
            "{agency}"
        );
    }
}

/// Addressing a region reaches its active members only, never the sender itself.
#[tokio::test]
async fn region_addressing_reaches_only_that_region() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    server.register(&pki, "MX-FGR", Region::Celac).await;
    server
        .register(&pki, "INT-UNODC", Region::International)
        .await;
    server.register(&pki, "PE-PNP", Region::Celac).await;
    server.suspend(&pki, "PE-PNP").await;

    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let celac = send(&mut sender, message("celac-1", &["region:CELAC"]))
        .await
        .message_id;
    assert_eq!(
        get(&mut sender, &celac).await.recipients,
        ["CO-DIJIN", "MX-FGR"]
    );
    for agency in ["CO-DIJIN", "MX-FGR"] {
        let entry = first_inbox_entry(&pki, &server, agency).await;
        assert_eq!(
            entry.message.expect("message").message_id,
            celac,
            "{agency}"
        );
    }
    let intl = send(&mut sender, message("intl-1", &["region:INTERNATIONAL"]))
        .await
        .message_id;
    assert_eq!(get(&mut sender, &intl).await.recipients, ["INT-UNODC"]);

    // A region member addressing its own region does not receive its own message.
    let mut colombia = pki.agency_client("CO-DIJIN", server.addr).await;
    let own = send(
        &mut colombia,
        message("celac-2", &["region:CELAC", "BE-FPJ"]),
    )
    .await
    .message_id;
    assert_eq!(
        get(&mut colombia, &own).await.recipients,
        ["BE-FPJ", "MX-FGR"]
    );

    // BE-FPJ (EU) got nothing from the CELAC broadcast: its first entry is CO-DIJIN's message.
    let entry = first_inbox_entry(&pki, &server, "BE-FPJ").await;
    assert_eq!(entry.sequence, 1);
    assert_eq!(entry.message.expect("message").message_id, own);
}

/// An unknown recipient or region is INVALID_ARGUMENT naming it, and nothing is delivered.
#[tokio::test]
async fn unknown_recipient_is_invalid_argument() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    // (client message id, recipients, the field named as invalid).
    let cases: [(&str, &[&str], &str); 4] = [
        ("u-1", &["FR-PN"], "recipients[0]"),
        ("u-2", &["CO-DIJIN", "FR-PN"], "recipients[1]"),
        ("u-3", &["co-dijin"], "recipients[0]"),
        ("u-4", &["region:ASIA"], "recipients[0]"),
    ];
    for (key, recipients, field) in cases {
        assert_bad_field_for(
            &format!("recipients {recipients:?}"),
            sender.send_message(message(key, recipients)).await,
            field,
        );
    }
    // Nothing was delivered to the valid recipient of the refused request.
    let ok = send(&mut sender, message("u-5", &["CO-DIJIN"]))
        .await
        .message_id;
    let entry = first_inbox_entry(&pki, &server, "CO-DIJIN").await;
    assert_eq!(entry.message.expect("message").message_id, ok);
}

/// Naming a suspended recipient is FAILED_PRECONDITION, and nothing is delivered.
#[tokio::test]
async fn suspended_recipient_named_explicitly_is_failed_precondition() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    server.suspend(&pki, "CO-DIJIN").await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let cases: [(&str, &[&str]); 2] = [("s-1", &["CO-DIJIN"]), ("s-2", &["BE-FPJ", "CO-DIJIN"])];
    for (key, recipients) in cases {
        assert_code_for(
            &format!("recipients {recipients:?}"),
            sender.send_message(message(key, recipients)).await,
            Code::FailedPrecondition,
        );
    }
    // Nothing reached the active recipient of the refused request.
    let ok = send(&mut sender, message("s-3", &["BE-FPJ"]))
        .await
        .message_id;
    let entry = first_inbox_entry(&pki, &server, "BE-FPJ").await;
    assert_eq!(entry.message.expect("message").message_id, ok);
}

// === Validation and limits ===

/// Each invalid send is INVALID_ARGUMENT naming the offending field, and none is stored.
#[tokio::test]
async fn invalid_requests_name_the_offending_field() {
    type Edit = fn(&mut SendMessageRequest);
    let cases: &[(&str, Edit)] = &[
        ("client_message_id", |r| r.client_message_id.clear()),
        ("client_message_id", |r| {
            r.client_message_id = "has space".into()
        }),
        ("client_message_id", |r| {
            r.client_message_id = "k".repeat(129)
        }),
        ("recipients", |r| r.recipients.clear()),
        ("recipients[0]", |r| r.recipients = vec!["ES-CNP".into()]),
        ("topic", |r| r.topic = Topic::Unspecified as i32),
        ("subject", |r| r.subject.clear()),
        ("subject", |r| r.subject = "   ".into()),
        ("subject", |r| r.subject = "s".repeat(257)),
        ("handling", |r| {
            r.handling = HandlingCode::Unspecified as i32
        }),
        ("evaluation", |r| r.evaluation = None),
        ("evaluation.source_reliability", |r| {
            r.evaluation = Some(Evaluation {
                source_reliability: SourceReliability::Unspecified as i32,
                information_accuracy: InformationAccuracy::InformationAccuracy1 as i32,
            })
        }),
        ("evaluation.information_accuracy", |r| {
            r.evaluation = Some(Evaluation {
                source_reliability: SourceReliability::A as i32,
                information_accuracy: InformationAccuracy::Unspecified as i32,
            })
        }),
        ("in_reply_to", |r| r.in_reply_to = "not-a-uuid".into()),
        ("case_reference", |r| r.case_reference = "c".repeat(129)),
        ("content", |r| r.content = None),
        ("attachments[0].filename", |r| {
            r.attachments = vec![Attachment {
                filename: "../passwd".into(),
                media_type: String::new(),
                data: vec![1],
            }]
        }),
    ];
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    for (i, (field, edit)) in cases.iter().enumerate() {
        let key = format!("invalid-{i}");
        let mut request = message(&key, &["CO-DIJIN"]);
        edit(&mut request);
        assert_bad_field_for(
            &format!("case {key} (bad {field})"),
            sender.send_message(request).await,
            field,
        );
    }
    // None of them was stored: the recipient's first entry is the next valid message.
    let ok = send(&mut sender, message("valid", &["CO-DIJIN"]))
        .await
        .message_id;
    let entry = first_inbox_entry(&pki, &server, "CO-DIJIN").await;
    assert_eq!(entry.sequence, 1);
    assert_eq!(entry.message.expect("message").message_id, ok);
}

/// More recipients than the limit, as named or after expansion, is INVALID_ARGUMENT.
#[tokio::test]
async fn too_many_recipients_is_invalid_argument() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| config.limits.max_recipients = 2).await;
    for (id, region) in [
        ("ES-CNP", Region::Eu),
        ("BE-FPJ", Region::Eu),
        ("CO-DIJIN", Region::Celac),
        ("MX-FGR", Region::Celac),
    ] {
        server.register(&pki, id, region).await;
    }
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    // Counted as named, and after expansion too.
    let cases: [(&str, &[&str]); 2] = [
        ("many-1", &["BE-FPJ", "CO-DIJIN", "MX-FGR"]),
        ("many-2", &["*"]),
    ];
    for (key, recipients) in cases {
        assert_bad_field_for(
            &format!("recipients {recipients:?}"),
            sender.send_message(message(key, recipients)).await,
            "recipients",
        );
    }
    let ok = send(&mut sender, message("many-3", &["region:CELAC"]))
        .await
        .message_id;
    assert_eq!(
        get(&mut sender, &ok).await.recipients,
        ["CO-DIJIN", "MX-FGR"]
    );
}

/// A message over the size limit is refused and not stored; one at the limit is accepted on the
/// same connection.
#[tokio::test]
async fn oversized_message_is_refused_and_nothing_is_stored() {
    const LIMIT: usize = 64 * 1024;
    let pki = TestPki::new();
    let server =
        TestServer::spawn_with(&pki, |config| config.limits.max_message_bytes = LIMIT).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let with_attachment = |key: &str, text: &str, size: usize| {
        let mut request = text_message(key, &["CO-DIJIN"], text);
        request.attachments = vec![Attachment {
            filename: "scan.bin".into(),
            media_type: "application/octet-stream".into(),
            data: pseudo_random_bytes(size),
        }];
        request
    };

    // Over the limit but within the frame headroom: refused by validation.
    let over = with_attachment("over", "x", LIMIT);
    assert_bad_field(sender.send_message(over).await, "content");
    // Far over: refused from the frame's length prefix.
    let huge = with_attachment("huge", "x", LIMIT + 1024 * 1024);
    let status = sender
        .send_message(huge)
        .await
        .expect_err("a frame far over the limit is refused");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "unexpected status {status:?}"
    );

    // Exactly at the limit is accepted, and the connection is still usable.
    let at_limit = send(&mut sender, with_attachment("at-limit", "x", LIMIT - 1)).await;
    let normal = send(&mut sender, message("normal", &["CO-DIJIN"])).await;
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    let entries = next_entries(&mut inbox, 2).await;
    let got: Vec<(u64, String)> = entries
        .into_iter()
        .map(|e| (e.sequence, e.message.expect("message").message_id))
        .collect();
    assert_eq!(got, [(1, at_limit.message_id), (2, normal.message_id)]);
}

/// A 1 MiB attachment and an empty one round-trip intact, streamed and read alike.
#[tokio::test]
async fn large_message_round_trips_intact() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut request = text_message("large-1", &["CO-DIJIN"], &"informe ".repeat(1000));
    request.attachments = vec![
        Attachment {
            filename: "evidence.bin".into(),
            media_type: "application/octet-stream".into(),
            data: pseudo_random_bytes(1024 * 1024),
        },
        Attachment {
            filename: "empty.txt".into(),
            media_type: String::new(),
            data: Vec::new(),
        },
    ];
    let id = send(&mut sender, request.clone()).await.message_id;

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    let streamed = next_entry(&mut inbox).await.message.expect("message");
    assert_eq!(streamed.message_id, id);
    assert_eq!(text_of(&streamed), Some("informe ".repeat(1000).as_str()));
    assert_eq!(streamed.attachments, request.attachments);
    assert_eq!(streamed.content_sha256, content_sha256(&request));

    assert_eq!(get(&mut recipient, &id).await, streamed);
    assert_eq!(get(&mut sender, &id).await, streamed);
}

// === Directory ===

/// ListAgencies returns the whole directory, suspended agencies included, in id order.
#[tokio::test]
async fn list_agencies_returns_the_directory() {
    let pki = TestPki::new();
    let server = three_agencies(&pki).await;
    server
        .register(&pki, "INT-UNODC", Region::International)
        .await;
    server.suspend(&pki, "BE-FPJ").await;
    let mut client = pki.agency_client("CO-DIJIN", server.addr).await;
    let agencies = client
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("ListAgencies")
        .into_inner()
        .agencies;
    let got: Vec<(&str, &str, &str, i32, i32)> = agencies
        .iter()
        .map(|a| {
            (
                a.agency_id.as_str(),
                a.name.as_str(),
                a.country.as_str(),
                a.region,
                a.status,
            )
        })
        .collect();
    let active = AgencyStatus::Active as i32;
    assert_eq!(
        got,
        [
            (
                "BE-FPJ",
                "Agency BE-FPJ",
                "BE",
                Region::Eu as i32,
                AgencyStatus::Suspended as i32
            ),
            (
                "CO-DIJIN",
                "Agency CO-DIJIN",
                "CO",
                Region::Celac as i32,
                active
            ),
            ("ES-CNP", "Agency ES-CNP", "ES", Region::Eu as i32, active),
            (
                "INT-UNODC",
                "Agency INT-UNODC",
                "XX",
                Region::International as i32,
                active
            ),
        ]
    );
}

/// Suspending an agency ends its open inbox stream with PERMISSION_DENIED.
#[tokio::test]
async fn suspending_an_agency_ends_its_open_inbox_stream() {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut stream = open_inbox(&mut recipient, 0).await;

    server.suspend(&pki, "CO-DIJIN").await;

    let ended = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream of a suspended agency must end, not stay open");
    assert_code(ended, Code::PermissionDenied);
}
