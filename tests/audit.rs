//! The audit log through AuditService: what is recorded, who may see what, receipts
//! (inclusion proofs of one's own messages), consistency between checkpoints, and that
//! content never enters the log.

mod common;

use common::{
    agency_spiffe, assert_code, auditor_spiffe, connect, eventually, message, verify_checkpoint,
    TestPki, TestServer, WAIT,
};
use puente::audit::merkle::{hash_leaf, verify_consistency, verify_inclusion, Hash};
use puente::audit::note::Checkpoint;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    AcknowledgeMessageRequest, AuditAction, AuditEvent, DeliveryState, GetCheckpointRequest,
    GetConsistencyProofRequest, GetInclusionProofRequest, GetLogInfoRequest, GetMessageRequest,
    ListAuditEntriesRequest, ListAuditEntriesResponse, Region,
};
use tonic::transport::Channel;
use tonic::Code;

async fn server(pki: &TestPki) -> TestServer {
    let server = TestServer::spawn(pki).await;
    server.register(pki, "ES-CNP", Region::Eu).await;
    server.register(pki, "CO-DIJIN", Region::Celac).await;
    server.register(pki, "BE-FPJ", Region::Eu).await;
    server
}

async fn auditor(pki: &TestPki, server: &TestServer) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(pki.client_for(&auditor_spiffe("ana"), server.addr).await)
}

async fn agency_audit(pki: &TestPki, server: &TestServer, id: &str) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(pki.client_for(&agency_spiffe(id), server.addr).await)
}

async fn entries(
    client: &mut AuditServiceClient<Channel>,
    request: ListAuditEntriesRequest,
) -> Result<Vec<ListAuditEntriesResponse>, tonic::Status> {
    let mut stream = client.list_audit_entries(request).await?.into_inner();
    let mut all = Vec::new();
    while let Some(entry) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("listing stalled")?
    {
        all.push(entry);
    }
    Ok(all)
}

fn action(entry: &ListAuditEntriesResponse) -> AuditAction {
    AuditAction::try_from(entry.event.as_ref().expect("event").action).expect("known action")
}

/// The latest checkpoint, verified with the log's key.
async fn checkpoint(client: &mut AuditServiceClient<Channel>) -> Checkpoint {
    let info = client
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner();
    let response = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    let checkpoint = verify_checkpoint(&info.verifier_key, &response.checkpoint);
    assert_eq!(checkpoint.origin, info.origin);
    assert_eq!(checkpoint.size, response.tree_size);
    assert_eq!(checkpoint.root.to_vec(), response.root_hash);
    checkpoint
}

fn hashes(raw: Vec<Vec<u8>>) -> Vec<Hash> {
    raw.into_iter()
        .map(|h| h.try_into().expect("32-byte hash"))
        .collect()
}

/// A sender proves its message is in the audit log with the receipt it was given; a retry returns
/// the same receipt.
#[tokio::test]
async fn a_sender_proves_its_message_is_in_the_log_with_its_receipt() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let sent = sender
        .send_message(message("receipt-1", &["CO-DIJIN"]))
        .await
        .expect("send")
        .into_inner();
    let audit_index = sent
        .audit_index
        .expect("the response carries the audit index");

    let mut audit = agency_audit(&pki, &server, "ES-CNP").await;
    let checkpoint = checkpoint(&mut audit).await;
    let entry = entries(
        &mut audit,
        ListAuditEntriesRequest {
            start_index: audit_index,
            limit: 1,
            ..Default::default()
        },
    )
    .await
    .expect("list")
    .remove(0);
    assert_eq!(entry.index, audit_index);
    assert_eq!(action(&entry), AuditAction::MessageAccepted);
    let event = entry.event.as_ref().expect("event");
    assert_eq!(event.message_id, sent.message_id);
    assert_eq!(event.sender, "ES-CNP");
    assert_eq!(event.recipients, vec!["CO-DIJIN".to_string()]);
    assert_eq!(
        event.content_sha256,
        common::content_sha256(&message("receipt-1", &["CO-DIJIN"]))
    );

    let proof = audit
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf_index: audit_index,
            tree_size: checkpoint.size,
        })
        .await
        .expect("inclusion proof")
        .into_inner();
    verify_inclusion(
        &hash_leaf(&entry.leaf),
        audit_index,
        checkpoint.size,
        &hashes(proof.hashes),
        &checkpoint.root,
    )
    .expect("the receipt verifies against the signed checkpoint");

    // A retry returns the same receipt.
    let again = sender
        .send_message(message("receipt-1", &["CO-DIJIN"]))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.audit_index, Some(audit_index));
}

/// The audit log records every step of a message and of the directory, never the content, with
/// times that never go back.
#[tokio::test]
async fn the_log_records_every_step_of_a_message_and_never_its_content() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let secret = "Informant codename PELICANO, meeting at pier 4";
    let sent = sender
        .send_message(common::text_message("steps-1", &["CO-DIJIN"], secret))
        .await
        .expect("send")
        .into_inner();
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    common::first_inbox_entry(&pki, &server, "CO-DIJIN").await;
    recipient
        .acknowledge_message(AcknowledgeMessageRequest {
            message_id: sent.message_id.clone(),
            state: DeliveryState::Read as i32,
        })
        .await
        .expect("ack");
    recipient
        .get_message(GetMessageRequest {
            message_id: sent.message_id.clone(),
        })
        .await
        .expect("read");

    let mut audit = auditor(&pki, &server).await;
    let expected = [
        AuditAction::MessageAccepted,
        AuditAction::MessageDelivered,
        AuditAction::MessageAcknowledged,
        AuditAction::MessageRead,
    ];
    // DELIVERED is recorded without waiting for durability; poll until it is there.
    let about = eventually("an audit entry for each step of the message", async || {
        let about = entries(
            &mut audit,
            ListAuditEntriesRequest {
                message_id: sent.message_id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        if about.len() >= expected.len() {
            Ok(about)
        } else {
            Err(about)
        }
    })
    .await;
    let mut actions: Vec<AuditAction> = about.iter().map(action).collect();
    assert_eq!(actions[0], AuditAction::MessageAccepted);
    // Delivery is recorded by the stream without waiting, so it may land after the ack.
    actions.sort_by_key(|a| *a as i32);
    assert_eq!(actions, expected);
    let ack = about
        .iter()
        .find(|e| action(e) == AuditAction::MessageAcknowledged)
        .and_then(|e| e.event.as_ref())
        .expect("ack entry");
    assert_eq!(ack.actor_agency, "CO-DIJIN");
    assert_eq!(ack.delivery_state, DeliveryState::Read as i32);
    assert!(
        ack.actor.starts_with("spiffe://"),
        "the actor is the certificate's SPIFFE ID"
    );

    let everything = entries(&mut audit, ListAuditEntriesRequest::default())
        .await
        .expect("list all");
    for entry in &everything {
        assert!(
            !entry
                .leaf
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "entry {} contains message content",
            entry.index
        );
    }
    // Directory changes are in the log too, and times never go backwards.
    assert_eq!(
        everything
            .iter()
            .filter(|e| action(e) == AuditAction::AgencyRegistered)
            .count(),
        3
    );
    let times: Vec<i64> = everything
        .iter()
        .map(|e| e.event.as_ref().expect("event").time_unix_micros)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

/// Refused requests and handshakes, suspensions and the auditor's own queries are recorded in the
/// audit log.
#[tokio::test]
async fn refusals_suspensions_and_audit_queries_are_recorded() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut bad = message("refused-1", &["CO-DIJIN"]);
    bad.subject.clear();
    assert_code(sender.send_message(bad).await, Code::InvalidArgument);
    server.suspend(&pki, "BE-FPJ").await;
    // A handshake with a certificate from another CA.
    let stranger = TestPki::new();
    let (cert, key) = stranger.issue(&agency_spiffe("ES-CNP"));
    if let Ok(channel) = connect(&cert, &key, &pki.ca_pem, server.addr).await {
        let _ = ExchangeServiceClient::new(channel)
            .list_agencies(puente::pb::v1::ListAgenciesRequest {})
            .await;
    }

    let mut audit = auditor(&pki, &server).await;
    let all = eventually("the refused handshake's audit entry", async || {
        let all = entries(&mut audit, ListAuditEntriesRequest::default())
            .await
            .expect("list");
        if all
            .iter()
            .any(|e| action(e) == AuditAction::HandshakeRefused)
        {
            Ok(all)
        } else {
            Err(all)
        }
    })
    .await;
    let refused = all
        .iter()
        .find(|e| action(e) == AuditAction::RequestRefused)
        .expect("refusal recorded");
    let refused = refused.event.as_ref().expect("event");
    assert_eq!(refused.actor_agency, "ES-CNP");
    assert_eq!(refused.method, "/puente.v1.ExchangeService/SendMessage");
    assert!(refused.reason.contains("subject"));
    let suspended = all
        .iter()
        .find(|e| action(e) == AuditAction::AgencySuspended)
        .expect("suspension recorded");
    assert_eq!(
        suspended.event.as_ref().expect("event").subject_agency,
        "BE-FPJ"
    );
    let handshake = all
        .iter()
        .find(|e| action(e) == AuditAction::HandshakeRefused)
        .expect("handshake refusal recorded");
    assert!(!handshake
        .event
        .as_ref()
        .expect("event")
        .remote_address
        .is_empty());
    // The listing itself was recorded, with the auditor as actor.
    let queries: Vec<&ListAuditEntriesResponse> = all
        .iter()
        .filter(|e| action(e) == AuditAction::AuditQueried)
        .collect();
    assert!(queries
        .iter()
        .any(|q| q.event.as_ref().expect("event").actor == auditor_spiffe("ana")));
}

/// Agencies see and prove only the audit entries they are party to; administrators are no auditors;
/// auditors see all.
#[tokio::test]
async fn agencies_see_and_prove_only_entries_they_are_party_to() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let private = sender
        .send_message(message("private-1", &["CO-DIJIN"]))
        .await
        .expect("send")
        .into_inner();
    let index = private.audit_index.expect("audit index");

    // BE-FPJ is no party: it does not see the entry and cannot prove it.
    let mut outsider = agency_audit(&pki, &server, "BE-FPJ").await;
    let seen = entries(&mut outsider, ListAuditEntriesRequest::default())
        .await
        .expect("list own entries");
    assert!(seen.iter().all(|e| e
        .event
        .as_ref()
        .map(|ev| ev.message_id != private.message_id)
        .unwrap_or(true)));
    assert!(seen
        .iter()
        .all(|e| puente::audit::parties(e.event.as_ref().expect("event")).contains("BE-FPJ")));
    let size = checkpoint(&mut outsider).await.size;
    assert_code(
        outsider
            .get_inclusion_proof(GetInclusionProofRequest {
                leaf_index: index,
                tree_size: size,
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        entries(
            &mut outsider,
            ListAuditEntriesRequest {
                agency_id: "ES-CNP".into(),
                ..Default::default()
            },
        )
        .await,
        Code::PermissionDenied,
    );

    // The recipient is a party.
    let mut recipient = agency_audit(&pki, &server, "CO-DIJIN").await;
    let size = checkpoint(&mut recipient).await.size;
    recipient
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf_index: index,
            tree_size: size,
        })
        .await
        .expect("a recipient proves the entry");

    // Administrators are not auditors.
    let mut admin = AuditServiceClient::new(
        pki.client_for(&common::admin_spiffe("root"), server.addr)
            .await,
    );
    assert_code(
        admin.get_checkpoint(GetCheckpointRequest {}).await,
        Code::PermissionDenied,
    );
    // An auditor sees everything.
    let mut audit = auditor(&pki, &server).await;
    let all = entries(&mut audit, ListAuditEntriesRequest::default())
        .await
        .expect("list");
    assert!(all.iter().any(|e| e.index == index));
}

/// Signed checkpoints only grow, each consistent with the earlier ones, and sizes beyond the log
/// are refused.
#[tokio::test]
async fn checkpoints_only_grow_and_are_consistent() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let mut audit = auditor(&pki, &server).await;
    let first = checkpoint(&mut audit).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    for i in 0..5 {
        sender
            .send_message(message(&format!("grow-{i}"), &["CO-DIJIN"]))
            .await
            .expect("send");
    }
    let second = checkpoint(&mut audit).await;
    assert!(second.size > first.size);
    let proof = audit
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: first.size,
            to_size: second.size,
        })
        .await
        .expect("consistency proof")
        .into_inner();
    verify_consistency(
        first.size,
        second.size,
        &hashes(proof.hashes),
        &first.root,
        &second.root,
    )
    .expect("the later checkpoint extends the earlier one");

    // Sizes beyond the log are refused.
    assert_code(
        audit
            .get_consistency_proof(GetConsistencyProofRequest {
                from_size: 1,
                to_size: second.size + 1_000,
            })
            .await,
        Code::OutOfRange,
    );
    assert_code(
        audit
            .get_inclusion_proof(GetInclusionProofRequest {
                leaf_index: second.size,
                tree_size: second.size,
            })
            .await,
        Code::InvalidArgument,
    );
}

/// An audit event, version included, decodes back to itself from its encoding.
#[test]
fn leaves_decode_as_versioned_events() {
    use prost::Message as _;
    let event = AuditEvent {
        version: 1,
        action: AuditAction::MessageRead as i32,
        ..Default::default()
    };
    let bytes = event.encode_to_vec();
    assert_eq!(AuditEvent::decode(bytes.as_slice()).expect("decode"), event);
}

/// Refused handshakes from one address are recorded one by one up to its burst; the ones left
/// out are counted in an aggregate entry, written once the global budget allows it.
#[tokio::test]
async fn a_flood_of_refused_handshakes_is_recorded_up_to_a_rate_then_counted() {
    let pki = TestPki::new();
    let server = server(&pki).await;
    let stranger = TestPki::new();
    let (cert, key) = stranger.issue(&agency_spiffe("ES-CNP"));
    let bad_handshake = || async {
        if let Ok(channel) = connect(&cert, &key, &pki.ca_pem, server.addr).await {
            let _ = ExchangeServiceClient::new(channel)
                .list_agencies(puente::pb::v1::ListAgenciesRequest {})
                .await;
        }
    };
    let burst = puente::admission::HANDSHAKE_RECORD_BURST as usize;
    for _ in 0..burst + 10 {
        bad_handshake().await;
    }
    // The aggregate entry is written within a second or so.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let mut audit = auditor(&pki, &server).await;
    let refused = eventually("the entry counting the unrecorded refusals", async || {
        let refused: Vec<AuditEvent> = entries(&mut audit, ListAuditEntriesRequest::default())
            .await
            .expect("list")
            .into_iter()
            .filter(|e| action(e) == AuditAction::HandshakeRefused)
            .map(|e| e.event.expect("event"))
            .collect();
        if refused
            .iter()
            .any(|e| e.reason.contains("not recorded one by one"))
        {
            Ok(refused)
        } else {
            Err(refused)
        }
    })
    .await;
    // The burst one by one, then the one entry that counts the refusals left out.
    assert_eq!(refused.len(), burst + 1, "{refused:#?}");
    let summary = refused.last().expect("an entry");
    assert!(
        summary
            .reason
            .starts_with("10 refused TLS handshakes from 1 address were not recorded one by one"),
        "{}",
        summary.reason
    );
}
