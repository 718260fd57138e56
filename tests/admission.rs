//! Admission control over mutual TLS: a caller over its request rate, an agency over its inbox
//! stream limit, and connections over the server's limit are refused, and others keep their
//! share.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{ListAgenciesRequest, Region};
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;
use tonic::Code;
use tonic_types::StatusExt;

/// A caller over its call rate is RESOURCE_EXHAUSTED with a retry delay, stores nothing, leaves
/// others unaffected, and is served after the delay.
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

/// An agency at its inbox-stream limit is refused another stream until it closes one; other
/// agencies are unaffected.
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
    eventually(
        "the closed stream's slot to be freed",
        async || match reader.stream_inbox(inbox_request(0)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::ResourceExhausted => Err(status),
            Err(status) => panic!("unexpected refusal: {status:?}"),
        },
    )
    .await;
}

/// Connections over the server's limit are refused while held ones keep working, and a place frees
/// up when one closes.
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
    eventually_within(
        "a connection to be accepted after one closed",
        WAIT,
        Duration::from_millis(50),
        async || {
            let channel = connect(&cert, &key, &pki.ca_pem, server.addr)
                .await
                .map_err(|e| e.to_string())?;
            puente::pb::v1::exchange_service_client::ExchangeServiceClient::new(channel)
                .list_agencies(ListAgenciesRequest {})
                .await
                .map(drop)
                .map_err(|status| status.to_string())
        },
    )
    .await;
}

/// Keeps one silent TCP connection from `from` to `to` open at a time until `stop`: never sends
/// a byte, and opens another as soon as the server closes the last one. Returns how many it
/// opened.
async fn silent_sockets(from: IpAddr, to: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let mut opened = 0;
    while !stop.load(Ordering::Relaxed) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind 127.0.0.N");
        let Ok(mut tcp) = socket.connect(to).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        opened += 1;
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                read = tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if stop.load(Ordering::Relaxed) {
                        return opened;
                    }
                }
            }
        }
        // Reopen at once, as an attacker would (a short pause keeps the test from spinning).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    opened
}

/// Connects as `agency` with a fresh certificate and makes one call: whether both succeeded.
async fn fresh_agency_call(pki: &TestPki, addr: SocketAddr, agency: &str) -> Result<(), String> {
    let (cert, key) = pki.issue(&agency_spiffe(agency));
    let channel = connect(&cert, &key, &pki.ca_pem, addr)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    ExchangeServiceClient::new(channel)
        .list_agencies(ListAgenciesRequest {})
        .await
        .map(drop)
        .map_err(|status| format!("call: {status:?}"))
}

/// Outsiders holding more silent TCP sockets than the server has places for (connections and
/// handshakes), from twelve addresses and reopened as soon as they are closed, never keep a
/// fresh agency connection out: each one connects and is answered during the attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_never_keep_a_fresh_agency_out() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.max_connections = 16;
        config.handshake_timeout_ms = 1_000;
        // 72 silent sockets for 64 handshake places; each address gets 4 at most, the rest
        // churn within it.
        config.max_handshakes = 64;
        config.max_handshakes_per_address = 4;
    })
    .await;
    server.register(&pki, "ES-CNP", Region::Eu).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = JoinSet::new();
    // 12 outsider addresses × 6 sockets = 72 silent sockets; the agency is on 127.0.0.1.
    for host in 2..14u8 {
        for _ in 0..6 {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
            attackers.spawn(silent_sockets(from, server.addr, Arc::clone(&stop)));
        }
    }
    // Let the sockets take every place they can.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Over more than two handshake timeouts, so the attackers reopen what the server closed.
    let mut failures = Vec::new();
    for attempt in 0..8 {
        if let Err(e) = fresh_agency_call(&pki, server.addr, "ES-CNP").await {
            failures.push(format!("attempt {attempt}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    while let Some(count) = attackers.join_next().await {
        opened += count.expect("attacker task");
    }
    eprintln!(
        "{opened} silent sockets opened; {} of 8 fresh agency connections failed",
        failures.len()
    );
    assert!(opened > 72, "the attack opened only {opened} sockets");
    assert!(
        failures.is_empty(),
        "fresh agency connections failed during the attack ({opened} silent sockets opened): {failures:#?}"
    );
}

/// One identity holding idle authenticated connections (any certificate of the CA will do)
/// cannot fill the server's connection limit: it gets at most its own cap, another agency still
/// connects, and idle connections are closed after the idle timeout, freeing their places.
#[tokio::test]
async fn idle_connections_of_one_identity_leave_room_for_others_and_are_closed() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.max_connections = 4;
        config.max_connections_per_identity = 2;
        config.idle_timeout_ms = 1_000;
    })
    .await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        let (cert, key) = pki.issue(&agency_spiffe("ES-CNP"));
        if let Ok(channel) = connect(&cert, &key, &pki.ca_pem, server.addr).await {
            let mut client = ExchangeServiceClient::new(channel);
            if client.list_agencies(ListAgenciesRequest {}).await.is_ok() {
                held.push(client);
            }
        }
    }
    assert!(held.len() <= 2, "ES-CNP holds {} connections", held.len());
    fresh_agency_call(&pki, server.addr, "CO-DIJIN")
        .await
        .expect("another agency connects while ES-CNP holds its connections");

    // Once idle past the timeout, ES-CNP's connections are closed: two fresh ones fit again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut fresh = Vec::new();
    for _ in 0..2 {
        let (cert, key) = pki.issue(&agency_spiffe("ES-CNP"));
        let channel = connect(&cert, &key, &pki.ca_pem, server.addr)
            .await
            .expect("connect after the idle timeout");
        let mut client = ExchangeServiceClient::new(channel);
        client
            .list_agencies(ListAgenciesRequest {})
            .await
            .expect("a place freed by the idle timeout");
        fresh.push(client);
    }
}

/// An open inbox stream is a call: its connection is not closed by the idle timeout, and a
/// message sent long after the timeout still arrives on it.
#[tokio::test]
async fn a_connection_with_an_open_inbox_stream_is_not_idle() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| config.idle_timeout_ms = 300).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut reader = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut stream = open_inbox(&mut reader, 0).await;

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    sender
        .send_message(message("after-the-idle-timeout", &["CO-DIJIN"]))
        .await
        .expect("send");
    let entry = next_entry(&mut stream).await;
    assert_eq!(
        entry.message.expect("message").subject,
        message("after-the-idle-timeout", &["CO-DIJIN"]).subject
    );
}
