//! Retention: a message older than its topic's retention period is erased — NOT_FOUND to
//! everyone, its body file gone — while its audit entries stay and the erasure is logged.

mod common;

use std::time::Duration;

use common::*;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::{
    AcknowledgeMessageRequest, Attachment, AuditAction, DeliveryState, GetDeliveryStatusRequest,
    GetMessageRequest, ListAuditEntriesRequest, Region, Topic,
};
use tonic::Code;

/// Messages past their topic's retention period are erased everywhere, their sequence kept, and the
/// erasure audited.
#[tokio::test]
async fn messages_past_their_topics_retention_period_are_erased_and_the_erasure_audited() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.retention.other = Some(Duration::from_secs(2));
        config.retention.sweep_interval = Duration::from_secs(1);
    })
    .await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let mut co = pki.agency_client("CO-DIJIN", server.addr).await;

    let mut short_lived = message("short-lived", &["CO-DIJIN"]);
    short_lived.topic = Topic::Other as i32;
    short_lived.attachments = vec![Attachment {
        filename: "scan.bin".into(),
        media_type: String::new(),
        data: vec![7; 64 * 1024],
    }];
    let erased = es
        .send_message(short_lived.clone())
        .await
        .expect("send")
        .into_inner();
    let kept = es
        .send_message(message("kept", &["CO-DIJIN"]))
        .await
        .expect("send")
        .into_inner();
    let get = |id: &str| GetMessageRequest {
        message_id: id.to_string(),
    };
    co.get_message(get(&erased.message_id))
        .await
        .expect("readable before its period runs out");
    let body_file = server.data_dir.join("objects").join(&erased.message_id);
    assert!(
        body_file.exists(),
        "the attachment is stored in its own file"
    );

    eventually_within(
        "the message to be erased",
        WAIT,
        Duration::from_millis(200),
        async || match co.get_message(get(&erased.message_id)).await {
            Ok(_) => Err("still readable"),
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                Ok(())
            }
        },
    )
    .await;

    // Gone for the sender and the recipient alike, in every call; the other topic's stays.
    assert_code(
        es.get_message(get(&erased.message_id)).await,
        Code::NotFound,
    );
    assert_code(
        es.get_delivery_status(GetDeliveryStatusRequest {
            message_id: erased.message_id.clone(),
        })
        .await,
        Code::NotFound,
    );
    assert_code(
        co.acknowledge_message(AcknowledgeMessageRequest {
            message_id: erased.message_id.clone(),
            state: DeliveryState::Read as i32,
        })
        .await,
        Code::NotFound,
    );
    co.get_message(get(&kept.message_id))
        .await
        .expect("a topic without a period keeps its messages");
    assert!(!body_file.exists(), "the body file is removed");

    // The inbox passes over the erased message; the sequence numbers stay as they were.
    let listed: Vec<(u64, String)> = backlog(&mut co)
        .await
        .into_iter()
        .map(|entry| (entry.sequence, entry.message.expect("message").message_id))
        .collect();
    assert_eq!(listed, vec![(2, kept.message_id.clone())]);

    // A retry of the original send answers what was answered then; nothing is stored again.
    let retried = es
        .send_message(short_lived)
        .await
        .expect("idempotent retry")
        .into_inner();
    assert_eq!(retried.message_id, erased.message_id);
    assert_code(
        co.get_message(get(&erased.message_id)).await,
        Code::NotFound,
    );

    // The audit log keeps the acceptance and records the erasure, with the period.
    let mut auditor =
        AuditServiceClient::new(pki.client_for(&auditor_spiffe("ana"), server.addr).await);
    let mut entries = auditor
        .list_audit_entries(ListAuditEntriesRequest {
            message_id: erased.message_id.clone(),
            ..Default::default()
        })
        .await
        .expect("audit entries")
        .into_inner();
    let mut events = Vec::new();
    while let Some(entry) = entries.message().await.expect("audit entry") {
        events.push(entry.event.expect("event"));
    }
    let actions: Vec<AuditAction> = events
        .iter()
        .map(|e| AuditAction::try_from(e.action).expect("action"))
        .collect();
    assert_eq!(actions.first(), Some(&AuditAction::MessageAccepted));
    let erasures: Vec<_> = events
        .iter()
        .filter(|e| e.action == AuditAction::MessageErased as i32)
        .collect();
    assert_eq!(erasures.len(), 1, "{actions:?}");
    assert!(
        erasures[0].reason.contains("TOPIC_OTHER"),
        "{:?}",
        erasures[0].reason
    );
    assert_eq!(erasures[0].sender, "ES-CNP");
    assert_eq!(erasures[0].content_sha256, events[0].content_sha256);
    assert!(erasures[0].actor.is_empty(), "the exchange itself erases");
}
