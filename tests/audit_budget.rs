//! What a caller or an outsider can add to the permanent audit log and to the server's log: a
//! flood of refused handshakes from many addresses, and an agency hammering calls that are
//! refused or audited, each add at most their budget of entries and log lines.

mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::{GetCheckpointRequest, GetMessageRequest, Region};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;
use tonic_types::StatusExt;

/// The size of the log once the signer has caught up (it signs every 500 ms while the log
/// grows); the two queries it takes are entries too.
async fn log_size(auditor: &mut AuditServiceClient<Channel>) -> u64 {
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    signed_checkpoint(auditor).await.1.size
}

/// Lines of `text` logged at WARN level.
fn warn_lines(text: &str) -> usize {
    text.lines().filter(|line| line.contains("WARN")).count()
}

/// A mutual-TLS connection attempt from source address `from` with a certificate the server
/// does not trust; the server refuses the handshake.
async fn refused_handshake(
    from: IpAddr,
    cert: &str,
    key: &str,
    ca: &str,
    addr: std::net::SocketAddr,
) {
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .expect("valid URL")
        .connect_timeout(WAIT)
        .local_address(Some(from))
        .tls_config(tls)
        .expect("TLS configuration");
    let _ = endpoint.connect().await;
}

/// 1,000 refused handshakes from 40 loopback addresses (127.0.0.2–41), against the real
/// binary: at most the global budget of refused-handshake entries reach the audit log (the
/// rest are counted in aggregate entries), and at most the warning budget of WARN lines reach
/// the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_many_addresses_adds_a_bounded_number_of_entries_and_lines() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    pki.write_server_files(dir.path());
    let log_path = dir.path().join("server.log");
    let log = File::create(&log_path).expect("log file");
    let server = ServerProcess::spawn(
        ServerProcess::command(ServerProcess::file_args(dir.path())),
        "warn",
        Stdio::from(log),
    );
    let mut auditor =
        AuditServiceClient::new(pki.client_for(&auditor_spiffe("flood"), server.addr).await);
    let before = log_size(&mut auditor).await;
    let lines_before = warn_lines(&std::fs::read_to_string(&log_path).expect("read log"));

    let foreign = TestPki::new();
    let (cert, key) = foreign.issue(&agency_spiffe("ES-CNP"));
    let started = Instant::now();
    for _ in 0..25 {
        for host in 2..42u8 {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
            refused_handshake(from, &cert, &key, &pki.ca_pem, server.addr).await;
        }
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let after = log_size(&mut auditor).await;
    let lines = warn_lines(&std::fs::read_to_string(&log_path).expect("read log")) - lines_before;

    // Defaults: 100 entries one by one, then 6 a minute, aggregates included; the auditor's
    // own two queries of the second measurement are entries too.
    let entries = after - before - 2;
    eprintln!(
        "1000 refused handshakes from 40 addresses in {:.1} s: {entries} audit entries, {lines} WARN lines",
        minutes * 60.0
    );
    let entry_bound = 100 + (6.0 * minutes).ceil() as u64 + 1;
    assert!(
        entries <= entry_bound,
        "{entries} audit entries (and {lines} WARN lines) for 1000 refused handshakes in {:.1} s (bound {entry_bound})",
        minutes * 60.0
    );
    // Defaults: 50 warnings, then 12 a minute.
    let line_bound = 50 + (12.0 * minutes).ceil() as usize + 1;
    assert!(
        lines <= line_bound,
        "{lines} WARN lines for 1000 refused handshakes in {:.1} s (bound {line_bound})",
        minutes * 60.0
    );
}

/// A registered agency hammering GetMessage for messages it may not read (each refused) and
/// GetCheckpoint (each an audited query) adds at most its budget of audited calls to the log;
/// calls over the budget are answered RESOURCE_EXHAUSTED with a retry delay.
#[tokio::test]
async fn an_agency_hammering_refused_and_audited_calls_adds_at_most_its_budget() {
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.limits.audited_calls_per_minute = 60;
        config.limits.audited_call_burst = 20;
    })
    .await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    let mut auditor =
        AuditServiceClient::new(pki.client_for(&auditor_spiffe("watch"), server.addr).await);
    let channel = pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await;
    let mut exchange =
        puente::pb::v1::exchange_service_client::ExchangeServiceClient::new(channel.clone());
    let mut audit = AuditServiceClient::new(channel);
    let before = log_size(&mut auditor).await;

    let started = Instant::now();
    let mut exhausted = None;
    for n in 0..300u32 {
        let missing = format!("00000000-0000-4000-8000-{n:012}");
        let answers = [
            exchange
                .get_message(GetMessageRequest {
                    message_id: missing,
                })
                .await
                .map(drop),
            audit
                .get_checkpoint(GetCheckpointRequest {})
                .await
                .map(drop),
        ];
        for answer in answers {
            if let Err(status) = answer {
                if status.code() == Code::ResourceExhausted {
                    exhausted = Some(status);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = log_size(&mut auditor).await;

    let entries = after - before - 2;
    eprintln!("600 refused reads and audited queries in {seconds:.1} s: {entries} audit entries");
    let bound = 20 + seconds.ceil() as u64;
    assert!(
        entries <= bound,
        "600 refused reads and audited queries in {seconds:.1} s added {entries} entries (bound {bound})"
    );
    let exhausted = exhausted.expect("calls over the budget are refused");
    assert!(
        exhausted.message().contains("audited") && exhausted.message().contains("retry after"),
        "{}",
        exhausted.message()
    );
    assert!(exhausted.get_details_retry_info().is_some());
}
