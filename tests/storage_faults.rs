//! Storage that stops taking writes: the `puente` binary runs with a file size limit
//! (RLIMIT_FSIZE, set on the running process with `prlimit`) so that every write past the first
//! byte of a file fails with EFBIG, as a full or failing disk would. Sends must fail with
//! UNAVAILABLE, nothing unacknowledged may appear, the server must stop by itself (so that a
//! supervisor restarts it), and a restart once writes work again must hold everything that
//! was acknowledged, once, with the audit log extending the checkpoint signed before.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::Region;
use tonic::transport::Channel;
use tonic::Code;

const ACKED: usize = 20;
const REFUSED: usize = 8;

/// The message ids of CO-DIJIN's inbox, in sequence order; every sequence must be there.
async fn inbox(pki: &TestPki, addr: SocketAddr) -> Vec<String> {
    let mut client = pki.agency_client("CO-DIJIN", addr).await;
    let entries = backlog(&mut client).await;
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.sequence, i as u64 + 1, "inbox gap");
    }
    entries
        .into_iter()
        .map(|entry| entry.message.expect("message").message_id)
        .collect()
}

async fn auditor(pki: &TestPki, addr: SocketAddr) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(pki.client_for(&auditor_spiffe("ana"), addr).await)
}

/// A store that cannot write refuses sends, and a restart recovers everything acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_write_refuses_sends_and_a_restart_recovers_everything_acknowledged() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    pki.write_server_files(dir.path());
    // A shell that ignores SIGXFSZ (ignored signals stay ignored across exec), so writes past
    // the limit fail with EFBIG instead of killing the process, then runs the server in its
    // place.
    let mut command = Command::new("sh");
    command
        .args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_puente"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(ServerProcess::file_args(dir.path()));
    let server = ServerProcess::spawn(command, "warn", std::process::Stdio::inherit());
    register_agency(&pki, server.addr, "ES-CNP", Region::Eu).await;
    register_agency(&pki, server.addr, "CO-DIJIN", Region::Celac).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let mut acked = Vec::new();
    for i in 0..ACKED {
        let sent = es
            .send_message(message(&format!("before-{i}"), &["CO-DIJIN"]))
            .await
            .expect("send while writes work")
            .into_inner();
        acked.push(sent.message_id);
    }
    let (key_before, before) = signed_checkpoint(&mut auditor(&pki, server.addr).await).await;

    let limited = Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--fsize=1:")
        .status()
        .expect("run prlimit");
    assert!(limited.success(), "prlimit failed");

    let mut refused = Vec::new();
    for i in 0..REFUSED {
        let request = message(&format!("during-{i}"), &["CO-DIJIN"]);
        match es.send_message(request.clone()).await {
            Ok(sent) => panic!("a send was acknowledged while writes fail: {sent:?}"),
            Err(status) => assert!(
                status.code() == Code::Unavailable || is_transport_failure(&status),
                "expected UNAVAILABLE, got {status:?}"
            ),
        }
        refused.push(request);
    }
    drop(es);
    let status = server.wait_for_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "the server must exit with an error status: {status}"
    );

    // Writes work again: a restart replays the journal.
    let server = ServerProcess::start(dir.path());
    assert_eq!(
        inbox(&pki, server.addr).await,
        acked,
        "exactly the acknowledged sends, in order"
    );
    let mut audit = auditor(&pki, server.addr).await;
    let (key_after, after) = signed_checkpoint(&mut audit).await;
    assert_eq!(key_after, key_before);
    assert_log_extends(&mut audit, &before, &after).await;

    // The refused sends, retried with their keys, are stored now, once.
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    for request in &refused {
        let first = es
            .send_message(request.clone())
            .await
            .expect("retry")
            .into_inner();
        let again = es
            .send_message(request.clone())
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(first.message_id, again.message_id);
        acked.push(first.message_id);
    }
    assert_eq!(inbox(&pki, server.addr).await, acked);
}
