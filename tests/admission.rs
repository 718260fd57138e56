//! Admission control over mutual TLS: a caller over its request rate, an agency over its inbox
//! stream limit, and connections over the server's limit are refused, and others keep their
//! share.

mod common;

use std::time::Duration;

use common::*;
use puente::pb::v1::{ListAgenciesRequest, Region};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_caller_over_its_rate_gets_resource_exhausted_with_a_retry_delay() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.limits.requests_per_second = 2;
        config.limits.request_burst = 3;
    })
    .await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut flooding = pki.agency_client("ES-CNP", server.addr).await;
    let mut other = pki.agency_client("CO-DIJIN", server.addr).await;

    for _ in 0..3 {
        flooding
            .list_agencies(ListAgenciesRequest {})
            .await
            .expect("within the burst");
    }
    let refused = assert_code(
        flooding.list_agencies(ListAgenciesRequest {}).await,
        Code::ResourceExhausted,
    );
    assert!(
        refused
            .message()
            .contains("spiffe://puente.local/agency/ES-CNP")
            && refused.message().contains("retry after"),
        "{}",
        refused.message()
    );
    let retry = refused
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo detail");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(500),
        "{retry:?}"
    );
    // Sends are refused the same way, and nothing is stored for them.
    assert_code(
        flooding
            .send_message(message("over-rate", &["CO-DIJIN"]))
            .await,
        Code::ResourceExhausted,
    );

    // The other agency has its own bucket.
    other
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("another caller is not limited");

    // After the delay the caller is served again.
    tokio::time::sleep(retry + Duration::from_millis(20)).await;
    flooding
        .send_message(message("after-the-wait", &["CO-DIJIN"]))
        .await
        .expect("served again after the retry delay");
    let inbox = first_inbox_entry(&pki, &server, "CO-DIJIN").await;
    assert_eq!(
        inbox.message.expect("message").subject,
        message("after-the-wait", &["CO-DIJIN"]).subject
    );
}

#[tokio::test]
async fn an_agency_over_its_stream_limit_must_close_one_first() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.limits.inbox_streams_per_agency = 2;
    })
    .await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    let mut reader = pki.agency_client("CO-DIJIN", server.addr).await;

    let first = open_inbox(&mut reader, 0).await;
    let _second = open_inbox(&mut reader, 0).await;
    let refused = assert_code(
        reader.stream_inbox(inbox_request(0)).await,
        Code::ResourceExhausted,
    );
    assert!(
        refused.message().contains("close one"),
        "{}",
        refused.message()
    );
    assert!(refused.get_details_retry_info().is_some());

    // Another agency is not affected.
    let mut other = pki.agency_client("ES-CNP", server.addr).await;
    let _others = open_inbox(&mut other, 0).await;

    // Closing a stream frees its slot.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match reader.stream_inbox(inbox_request(0)).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed stream's slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
    }
}

#[tokio::test]
async fn connections_over_the_server_limit_are_closed() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| config.max_connections = 2).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    let mut first = pki.agency_client("ES-CNP", server.addr).await;
    let mut second = pki.agency_client("ES-CNP", server.addr).await;
    first
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("first connection");
    second
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("second connection");

    let (cert, key) = pki.issue(&agency_spiffe("ES-CNP"));
    assert_refused(connect(&cert, &key, &pki.ca_pem, server.addr).await).await;

    // The held connections still work, and a place frees up when one goes.
    first
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("first connection still served");
    drop(second);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let attempt = connect(&cert, &key, &pki.ca_pem, server.addr).await;
        if let Ok(channel) = attempt {
            let mut client =
                puente::pb::v1::exchange_service_client::ExchangeServiceClient::new(channel);
            if client.list_agencies(ListAgenciesRequest {}).await.is_ok() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection was accepted after one closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
