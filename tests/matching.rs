//! Hit/no-hit matching through MatchService: blinded identifiers published, withdrawn and
//! queried; hits name only the holder and an opaque reference; the holder is notified; quotas,
//! validation and the audit trail.

mod common;

use common::{assert_bad_field, assert_code, auditor_spiffe, TestPki, TestServer, WAIT};
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::match_service_client::MatchServiceClient;
use puente::pb::v1::{
    AuditAction, BlindedIdentifier, IdentifierKind, ListAuditEntriesRequest, MessageKind,
    PublishIdentifiersRequest, PublishedIdentifier, QueryRequest, Region,
    WithdrawIdentifiersRequest,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

/// A stand-in for an HMAC output: the server only ever sees 32 opaque bytes.
fn blinded(kind: IdentifierKind, value: &str) -> BlindedIdentifier {
    BlindedIdentifier {
        kind: kind as i32,
        blinded: Sha256::digest(value.as_bytes()).to_vec(),
    }
}

fn firearm(serial: &str) -> BlindedIdentifier {
    blinded(IdentifierKind::Firearm, &format!("GLOCK|{serial}"))
}

async fn server(pki: &TestPki, quota: u64) -> TestServer {
    let server =
        TestServer::spawn_with(pki, |config| config.match_query_quota_per_hour = quota).await;
    server.register(pki, "ES-CNP", Region::Eu).await;
    server.register(pki, "CO-DIJIN", Region::Celac).await;
    server.register(pki, "BE-FPJ", Region::Eu).await;
    server
}

async fn matching(pki: &TestPki, server: &TestServer, id: &str) -> MatchServiceClient<Channel> {
    MatchServiceClient::new(
        pki.client_for(&common::agency_spiffe(id), server.addr)
            .await,
    )
}

async fn publish(
    client: &mut MatchServiceClient<Channel>,
    epoch: u32,
    items: &[(BlindedIdentifier, &str)],
) -> (u64, u64) {
    let response = client
        .publish_identifiers(PublishIdentifiersRequest {
            key_epoch: epoch,
            identifiers: items
                .iter()
                .map(|(identifier, reference)| PublishedIdentifier {
                    identifier: Some(identifier.clone()),
                    reference: reference.to_string(),
                })
                .collect(),
            case_reference: "ES-2026-0042".into(),
            source_message_id: String::new(),
        })
        .await
        .expect("publish")
        .into_inner();
    (response.added, response.updated)
}

fn query(epoch: u32, identifiers: Vec<BlindedIdentifier>) -> QueryRequest {
    QueryRequest {
        key_epoch: epoch,
        identifiers,
        case_reference: "CO-2026-771".into(),
        legal_basis: "Art. 16 of the EU-CELAC cooperation arrangement".into(),
    }
}

/// A blinded query hits another agency's identifier, the holder is told who asked and why, and the
/// log never holds the identifier.
#[tokio::test]
async fn a_query_hits_another_agencys_identifier_and_the_holder_is_told() {
    let pki = TestPki::new();
    let server = server(&pki, 10_000).await;
    let mut holder = matching(&pki, &server, "ES-CNP").await;
    assert_eq!(
        publish(
            &mut holder,
            1,
            &[
                (firearm("BXR4471"), "UDYCO record 17"),
                (firearm("AAA111"), "record 18")
            ]
        )
        .await,
        (2, 0)
    );

    let mut querier = matching(&pki, &server, "CO-DIJIN").await;
    let response = querier
        .query(query(1, vec![firearm("BXR4471"), firearm("ZZZ999")]))
        .await
        .expect("query")
        .into_inner();
    assert_eq!(response.results.len(), 2);
    let hit = &response.results[0];
    assert!(hit.hit);
    assert_eq!(hit.holders.len(), 1);
    assert_eq!(hit.holders[0].agency_id, "ES-CNP");
    assert!(hit.holders[0].match_reference.starts_with("m-"));
    assert!(!response.results[1].hit);
    assert!(response.results[1].holders.is_empty());
    assert_eq!(response.remaining_quota, 10_000 - 2);

    // The holder learns who asked, for which case and on which basis, and its own reference.
    let entry = common::first_inbox_entry(&pki, &server, "ES-CNP").await;
    let message = entry.message.expect("message");
    assert_eq!(message.kind, MessageKind::MatchHit as i32);
    assert_eq!(message.sender, "CO-DIJIN");
    let notice = message.match_hit.expect("match hit notice");
    assert_eq!(notice.querying_agency, "CO-DIJIN");
    assert_eq!(notice.case_reference, "CO-2026-771");
    assert!(notice.legal_basis.starts_with("Art. 16"));
    assert_eq!(notice.your_reference, "UDYCO record 17");
    assert_eq!(notice.match_reference, hit.holders[0].match_reference);
    assert_eq!(notice.kind, IdentifierKind::Firearm as i32);

    // The audit log has the publication, the query and the hit, never the identifier.
    let mut audit =
        AuditServiceClient::new(pki.client_for(&auditor_spiffe("ana"), server.addr).await);
    let mut stream = audit
        .list_audit_entries(ListAuditEntriesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let mut actions = Vec::new();
    while let Some(entry) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stalled")
        .expect("entry")
    {
        let blinded_value = &firearm("BXR4471").blinded;
        assert!(
            !entry
                .leaf
                .windows(32)
                .any(|w| w == blinded_value.as_slice()),
            "blinded value in the log"
        );
        actions.push(entry.event.expect("event").action);
    }
    for action in [
        AuditAction::IdentifiersPublished,
        AuditAction::MatchQueried,
        AuditAction::MatchHit,
    ] {
        assert!(
            actions.contains(&(action as i32)),
            "{action:?} not recorded"
        );
    }
}

/// An agency never hits its own identifiers, and identifiers of other kinds or epochs never match.
#[tokio::test]
async fn an_agency_never_hits_itself_and_kinds_and_epochs_do_not_mix() {
    let pki = TestPki::new();
    let server = server(&pki, 10_000).await;
    let mut es = matching(&pki, &server, "ES-CNP").await;
    publish(&mut es, 1, &[(firearm("BXR4471"), "r")]).await;
    let own = es
        .query(query(1, vec![firearm("BXR4471")]))
        .await
        .expect("query")
        .into_inner();
    assert!(
        !own.results[0].hit,
        "an agency's own identifiers are not hits"
    );

    let mut co = matching(&pki, &server, "CO-DIJIN").await;
    let other_epoch = co
        .query(query(2, vec![firearm("BXR4471")]))
        .await
        .expect("query")
        .into_inner();
    assert!(
        !other_epoch.results[0].hit,
        "another key epoch never matches"
    );
    let mut other_kind = firearm("BXR4471");
    other_kind.kind = IdentifierKind::Passport as i32;
    let other_kind = co
        .query(query(1, vec![other_kind]))
        .await
        .expect("query")
        .into_inner();
    assert!(!other_kind.results[0].hit, "another kind never matches");
}

/// Publishing an identifier again is idempotent, and withdrawing it removes the hit.
#[tokio::test]
async fn publishing_is_idempotent_and_withdrawing_removes_the_hit() {
    let pki = TestPki::new();
    let server = server(&pki, 10_000).await;
    let mut es = matching(&pki, &server, "ES-CNP").await;
    assert_eq!(
        publish(&mut es, 1, &[(firearm("BXR4471"), "r1")]).await,
        (1, 0)
    );
    let mut co = matching(&pki, &server, "CO-DIJIN").await;
    let first = co
        .query(query(1, vec![firearm("BXR4471")]))
        .await
        .expect("query")
        .into_inner();
    assert_eq!(
        publish(&mut es, 1, &[(firearm("BXR4471"), "r1 updated")]).await,
        (0, 1)
    );
    let second = co
        .query(query(1, vec![firearm("BXR4471")]))
        .await
        .expect("query")
        .into_inner();
    assert_eq!(
        first.results[0].holders, second.results[0].holders,
        "the match reference is stable"
    );

    let withdrawn = es
        .withdraw_identifiers(WithdrawIdentifiersRequest {
            key_epoch: 1,
            identifiers: vec![firearm("BXR4471"), firearm("NEVER-PUBLISHED")],
        })
        .await
        .expect("withdraw")
        .into_inner();
    assert_eq!(withdrawn.withdrawn, 1);
    let after = co
        .query(query(1, vec![firearm("BXR4471")]))
        .await
        .expect("query")
        .into_inner();
    assert!(!after.results[0].hit);
}

/// Match queries are validated (blinded length, kind, count) and need a case reference and a legal
/// basis.
#[tokio::test]
async fn queries_are_validated_and_need_a_purpose() {
    let pki = TestPki::new();
    let server = server(&pki, 10_000).await;
    let mut co = matching(&pki, &server, "CO-DIJIN").await;
    let mut prefix = firearm("BXR4471");
    prefix.blinded.truncate(8);
    assert_bad_field(
        co.query(query(1, vec![prefix])).await,
        "identifiers[0].blinded",
    );
    let clear = BlindedIdentifier {
        kind: IdentifierKind::Iban as i32,
        blinded: b"ES9121000418450200051332".to_vec(),
    };
    assert_bad_field(
        co.query(query(1, vec![clear])).await,
        "identifiers[0].blinded",
    );
    let mut no_kind = firearm("BXR4471");
    no_kind.kind = 0;
    assert_bad_field(
        co.query(query(1, vec![no_kind])).await,
        "identifiers[0].kind",
    );
    let mut no_case = query(1, vec![firearm("BXR4471")]);
    no_case.case_reference.clear();
    assert_bad_field(co.query(no_case).await, "case_reference");
    let mut no_basis = query(1, vec![firearm("BXR4471")]);
    no_basis.legal_basis = "  ".into();
    assert_bad_field(co.query(no_basis).await, "legal_basis");
    assert_bad_field(co.query(query(1, Vec::new())).await, "identifiers");
    let too_many = (0..1001).map(|i| firearm(&format!("S{i}"))).collect();
    assert_bad_field(co.query(query(1, too_many)).await, "identifiers");
}

/// The match-query quota is enforced with retry advice, per agency.
#[tokio::test]
async fn the_query_quota_is_enforced_with_retry_advice() {
    let pki = TestPki::new();
    let server = server(&pki, 5).await;
    let mut co = matching(&pki, &server, "CO-DIJIN").await;
    let three = || {
        (0..3)
            .map(|i| firearm(&format!("Q{i}")))
            .collect::<Vec<_>>()
    };
    let first = co
        .query(query(1, three()))
        .await
        .expect("within quota")
        .into_inner();
    assert_eq!(first.remaining_quota, 2);
    let refused = assert_code(co.query(query(1, three())).await, Code::ResourceExhausted);
    let retry = refused.get_details_retry_info().expect("retry advice");
    assert!(retry.retry_delay.is_some_and(|d| d.as_secs() > 0));
    // Another agency has its own quota.
    let mut be = matching(&pki, &server, "BE-FPJ").await;
    be.query(query(1, three())).await.expect("own quota");
}

/// A restart (same data directory) does not hand an agency a fresh quota: the window and what
/// was used of it are in the store.
#[tokio::test]
async fn the_query_quota_survives_a_restart() {
    let pki = TestPki::new();
    let data = tempfile::tempdir().expect("data dir");
    let data_dir = data.path().join("data");
    let start = |dir: std::path::PathBuf| {
        TestServer::spawn_with(&pki, move |config| {
            config.match_query_quota_per_hour = 5;
            config.data_dir = dir;
        })
    };
    let server = start(data_dir.clone()).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut co = matching(&pki, &server, "CO-DIJIN").await;
    let four = (0..4)
        .map(|i| firearm(&format!("R{i}")))
        .collect::<Vec<_>>();
    let used = co
        .query(query(1, four.clone()))
        .await
        .expect("within quota")
        .into_inner();
    assert_eq!(used.remaining_quota, 1);
    drop(co);
    server
        .stop(std::time::Duration::from_secs(1))
        .await
        .expect("clean stop");

    let restarted = start(data_dir.clone()).await;
    let mut co = matching(&pki, &restarted, "CO-DIJIN").await;
    assert_code(co.query(query(1, four)).await, Code::ResourceExhausted);
    let last = co
        .query(query(1, vec![firearm("R9")]))
        .await
        .expect("what is left of the quota")
        .into_inner();
    assert_eq!(last.remaining_quota, 0);
}

/// Only active agencies may query identifiers: an auditor and a suspended agency are
/// PERMISSION_DENIED.
#[tokio::test]
async fn only_active_agencies_may_match() {
    let pki = TestPki::new();
    let server = server(&pki, 10_000).await;
    let mut auditor =
        MatchServiceClient::new(pki.client_for(&auditor_spiffe("ana"), server.addr).await);
    assert_code(
        auditor.query(query(1, vec![firearm("X")])).await,
        Code::PermissionDenied,
    );
    server.suspend(&pki, "BE-FPJ").await;
    let mut suspended = matching(&pki, &server, "BE-FPJ").await;
    assert_code(
        suspended.query(query(1, vec![firearm("X")])).await,
        Code::PermissionDenied,
    );
}
