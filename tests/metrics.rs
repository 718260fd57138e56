//! The Prometheus endpoint of the real binary: after sends, an inbox stream, an
//! acknowledgement, refused calls and a handshake with a certificate from a foreign CA over
//! mutual TLS, `GET /metrics` on the loopback listener shows each family with the values those
//! calls imply; other paths are 404.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use puente::pb::v1::{
    AcknowledgeMessageRequest, DeliveryState, GetDeliveryStatusRequest, Region, SendMessageRequest,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

/// An HTTP response read from the metrics listener.
struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `method path` over a new plain TCP connection to `addr`, read until the server closes it.
async fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics listener");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut raw = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut raw))
        .await
        .expect("the metrics endpoint answers in time")
        .expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The samples of one scrape: `name{labels} value` lines, labels sorted by name.
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("name and value");
                let value: f64 = value.parse().expect("a number");
                let (name, labels) = match series.split_once('{') {
                    None => (series.to_string(), BTreeMap::new()),
                    Some((name, labels)) => {
                        let labels = labels
                            .trim_end_matches('}')
                            .split("\",")
                            .filter(|pair| !pair.is_empty())
                            .map(|pair| {
                                let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                                (key.to_string(), value.trim_end_matches('"').to_string())
                            })
                            .collect();
                        (name.to_string(), labels)
                    }
                };
                (name, labels, value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of the one sample of `name` whose labels include `labels`, if any.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(key, value)| l.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|(_, _, value)| *value)
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches several samples"
        );
        matching.first().copied()
    }

    /// As [`Scrape::get`], panicking with the whole scrape when it is absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }

    fn has_help(&self, name: &str) -> bool {
        self.text.contains(&format!("# HELP {name} "))
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let response = http(addr, "GET", "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(response.body)
}

/// Scrapes until `ready` holds for a scrape (what it waits for happens on the server after the
/// client has its answer), failing after [`WAIT`].
async fn scrape_until(addr: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    eventually_within(
        "the metrics to reach the expected state",
        WAIT,
        Duration::from_millis(50),
        async || {
            let scraped = scrape(addr).await;
            if ready(&scraped) {
                Ok(scraped)
            } else {
                Err(scraped.text)
            }
        },
    )
    .await
}

fn exchange_call(method: &'static str, code: &'static str) -> [(&'static str, &'static str); 3] {
    [
        ("service", "puente.v1.ExchangeService"),
        ("method", method),
        ("code", code),
    ]
}

/// The binary on a fresh directory, with ES-CNP, CO-DIJIN and BE-FPJ registered.
async fn start_with_agencies() -> (tempfile::TempDir, TestPki, ServerProcess) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestPki::new();
    pki.write_server_files(dir.path());
    let server = ServerProcess::start(dir.path());
    register_agency(&pki, server.addr, "ES-CNP", Region::Eu).await;
    register_agency(&pki, server.addr, "CO-DIJIN", Region::Celac).await;
    register_agency(&pki, server.addr, "BE-FPJ", Region::Eu).await;
    (dir, pki, server)
}

/// The metrics endpoint counts calls, messages, streams, refused handshakes, the audit log and
/// storage.
#[tokio::test]
async fn metrics_endpoint_shows_calls_messages_streams_handshakes_and_storage() {
    let (_dir, pki, server) = start_with_agencies().await;

    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        let accepted = sender
            .send_message(message(&format!("to-co-{n}"), &["CO-DIJIN"]))
            .await
            .expect("send to CO-DIJIN")
            .into_inner();
        sent.push(accepted.message_id);
    }
    for n in 0..2 {
        sender
            .send_message(message(&format!("to-be-{n}"), &["BE-FPJ"]))
            .await
            .expect("send to BE-FPJ");
    }
    // Refused before anything is stored: no recipients.
    assert_code(
        sender
            .send_message(SendMessageRequest {
                recipients: Vec::new(),
                ..message("no-recipients", &["CO-DIJIN"])
            })
            .await,
        Code::InvalidArgument,
    );

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    let entries = next_entries(&mut inbox, 3).await;
    assert_eq!(
        entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    recipient
        .acknowledge_message(AcknowledgeMessageRequest {
            message_id: sent[0].clone(),
            state: DeliveryState::Received as i32,
        })
        .await
        .expect("acknowledge");
    // Only the sender may see a message's delivery status.
    assert_code(
        recipient
            .get_delivery_status(GetDeliveryStatusRequest {
                message_id: sent[0].clone(),
            })
            .await,
        Code::PermissionDenied,
    );

    let foreign = TestPki::new();
    let (cert, key) = foreign.issue(&agency_spiffe("ES-CNP"));
    assert_refused(connect(&cert, &key, &pki.ca_pem, server.addr).await).await;

    // The signer signs the grown audit log within a second; the refused handshake is counted
    // after the client sees the refusal.
    let scraped = scrape_until(server.metrics_addr, |s| {
        s.get("puente_audit_checkpoint_size", &[]).is_some()
            && s.get(
                "puente_tls_handshake_failures_total",
                &[("reason", "unknown_ca")],
            )
            .is_some_and(|n| n >= 1.0)
    })
    .await;

    // Calls by method and code, counted once each, refusals included.
    let calls = "puente_rpc_requests_total";
    assert_eq!(
        scraped.value(calls, &exchange_call("SendMessage", "OK")),
        5.0
    );
    assert_eq!(
        scraped.value(calls, &exchange_call("SendMessage", "INVALID_ARGUMENT")),
        1.0
    );
    assert_eq!(
        scraped.value(calls, &exchange_call("AcknowledgeMessage", "OK")),
        1.0
    );
    assert_eq!(
        scraped.value(
            calls,
            &exchange_call("GetDeliveryStatus", "PERMISSION_DENIED")
        ),
        1.0
    );
    assert_eq!(
        scraped.value(
            calls,
            &[
                ("service", "puente.v1.AdminService"),
                ("method", "RegisterAgency"),
                ("code", "OK"),
            ]
        ),
        3.0
    );
    // The open stream is not counted until it ends.
    assert_eq!(
        scraped.get(calls, &exchange_call("StreamInbox", "OK")),
        None
    );
    assert_eq!(
        scraped.value(
            "puente_rpc_duration_seconds_count",
            &[("method", "SendMessage")]
        ),
        6.0
    );
    assert!(
        scraped.value(
            "puente_rpc_duration_seconds_sum",
            &[("method", "SendMessage")]
        ) > 0.0
    );
    assert_eq!(
        scraped.value(
            "puente_rpc_duration_seconds_bucket",
            &[("method", "SendMessage"), ("le", "+Inf")]
        ),
        6.0
    );

    // Messages and inboxes.
    assert_eq!(
        scraped.value(
            "puente_messages_accepted_total",
            &[("action", "MESSAGE_ACCEPTED")]
        ),
        5.0
    );
    assert_eq!(scraped.value("puente_messages_delivered_total", &[]), 3.0);
    assert_eq!(
        scraped.value("puente_inbox_streams_open", &[("agency", "CO-DIJIN")]),
        1.0
    );
    let backlog = "puente_inbox_backlog_messages";
    assert_eq!(scraped.value(backlog, &[("agency", "BE-FPJ")]), 2.0);
    assert_eq!(scraped.value(backlog, &[("agency", "CO-DIJIN")]), 0.0);
    assert_eq!(scraped.value(backlog, &[("agency", "ES-CNP")]), 0.0);

    // Handshakes: the foreign CA's certificate, and every other reason at zero.
    assert!(
        scraped.value(
            "puente_tls_handshake_failures_total",
            &[("reason", "unknown_ca")]
        ) >= 1.0
    );
    assert_eq!(
        scraped.value(
            "puente_tls_handshake_failures_total",
            &[("reason", "revoked")]
        ),
        0.0
    );

    // The test certificates expire 30 days after they were issued, moments ago.
    let expiry = scraped.value(
        "puente_agency_certificate_expiry_seconds",
        &[("agency", "CO-DIJIN")],
    );
    let thirty_days = 30.0 * 86_400.0;
    assert!(
        (thirty_days - 600.0..=thirty_days).contains(&expiry),
        "{expiry}"
    );
    assert!(scraped
        .get(
            "puente_agency_certificate_expiry_seconds",
            &[("agency", "BE-FPJ")]
        )
        .is_none());

    // Group commit: every send, registration and audit record went through it.
    let groups = scraped.value("puente_store_group_commit_operations_count", &[]);
    let operations = scraped.value("puente_store_group_commit_operations_sum", &[]);
    assert!(
        groups >= 1.0 && operations >= groups,
        "{groups} groups, {operations} operations"
    );
    assert_eq!(
        scraped.value("puente_store_group_commit_flush_seconds_count", &[]),
        groups
    );
    assert!(scraped.has_help("puente_store_group_commit_flush_seconds"));

    // The audit log: entries for the registrations, sends, deliveries, the acknowledgement and
    // the refusals, all covered by a recent checkpoint once it is signed.
    let entries = scraped.value("puente_audit_log_entries", &[]);
    assert!(entries >= 3.0 + 5.0 + 1.0, "{entries}");
    let checkpoint = scraped.value("puente_audit_checkpoint_size", &[]);
    assert!(
        checkpoint >= 1.0 && checkpoint <= entries,
        "{checkpoint} of {entries}"
    );
    let age = scraped.value("puente_audit_checkpoint_age_seconds", &[]);
    assert!((0.0..60.0).contains(&age), "{age}");

    let size = scraped.value("puente_store_size_bytes", &[]);
    assert!(size > 0.0, "{size}");

    // The stream ends when the client drops it: counted then, as CANCELLED, and no longer
    // open; with its connection closed, the agency's certificate is no longer shown.
    drop(inbox);
    drop(recipient);
    let scraped = scrape_until(server.metrics_addr, |s| {
        s.get(calls, &exchange_call("StreamInbox", "CANCELLED")) == Some(1.0)
            && s.get("puente_inbox_streams_open", &[("agency", "CO-DIJIN")]) == Some(0.0)
            && s.get(
                "puente_agency_certificate_expiry_seconds",
                &[("agency", "CO-DIJIN")],
            )
            .is_none()
    })
    .await;
    assert!(scraped
        .get(
            "puente_agency_certificate_expiry_seconds",
            &[("agency", "ES-CNP")]
        )
        .is_some());
    assert_eq!(scraped.value("puente_messages_delivered_total", &[]), 3.0);
}

/// The metrics endpoint has its own loopback port and serves only GET /metrics, with the store's
/// figures before any call.
#[tokio::test]
async fn metrics_endpoint_serves_only_get_metrics() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestPki::new();
    pki.write_server_files(dir.path());
    let server = ServerProcess::start(dir.path());
    assert!(server.metrics_addr.ip().is_loopback());
    assert_ne!(server.metrics_addr.port(), server.addr.port());

    assert_eq!(http(server.metrics_addr, "GET", "/").await.status, 404);
    assert_eq!(
        http(server.metrics_addr, "GET", "/metrics/x").await.status,
        404
    );
    let post = http(server.metrics_addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers.get("allow").map(String::as_str), Some("GET"));
    let scraped = scrape(server.metrics_addr).await;
    // Before any call: the store's own figures are there already.
    assert!(scraped.has_help("puente_store_size_bytes"));
    assert_eq!(scraped.value("puente_audit_log_entries", &[]), 0.0);
}

/// After a restart the inbox backlog is measured from stored delivery states, and counters start
/// again.
#[tokio::test]
async fn inbox_backlog_after_a_restart_is_measured_from_stored_delivery_states() {
    let (dir, pki, server) = start_with_agencies().await;
    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    for n in 0..3 {
        sender
            .send_message(message(&format!("delivered-{n}"), &["CO-DIJIN"]))
            .await
            .expect("send");
    }
    for n in 0..2 {
        sender
            .send_message(message(&format!("never-read-{n}"), &["BE-FPJ"]))
            .await
            .expect("send");
    }
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = open_inbox(&mut recipient, 0).await;
    next_entries(&mut inbox, 3).await;
    drop(inbox);
    // Once the stream is gone, nothing more is handed to it.
    scrape_until(server.metrics_addr, |s| {
        s.get("puente_inbox_streams_open", &[("agency", "CO-DIJIN")]) == Some(0.0)
    })
    .await;
    sender
        .send_message(message("after-the-stream", &["CO-DIJIN"]))
        .await
        .expect("send");
    drop((sender, recipient));
    let exit = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("wait for the server");
    assert!(exit.success(), "{exit:?}");

    let server = ServerProcess::start(dir.path());
    // The cursors are read from the store in the background after start.
    let scraped = scrape_until(server.metrics_addr, |s| {
        s.get("puente_inbox_backlog_messages", &[("agency", "CO-DIJIN")]) == Some(1.0)
    })
    .await;
    let backlog = "puente_inbox_backlog_messages";
    assert_eq!(scraped.value(backlog, &[("agency", "BE-FPJ")]), 2.0);
    assert_eq!(scraped.value(backlog, &[("agency", "ES-CNP")]), 0.0);
    // Counters start again with the process.
    assert_eq!(
        scraped.get("puente_messages_delivered_total", &[]),
        Some(0.0)
    );
}
