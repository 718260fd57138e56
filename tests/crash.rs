//! Crash consistency: the `puente` binary is killed with SIGKILL while 32 clients send, then
//! restarted on the same data directory. Every acknowledged message must be there, streamed
//! exactly once and in order, retries of the sends that were in flight must not duplicate, and
//! the audit log after the restart must extend the checkpoint signed before the crash.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use common::{
    agency_spiffe, assert_log_extends, auditor_spiffe, backlog, connect, message, open_inbox,
    register_agency, signed_checkpoint, ServerProcess, TestPki, WAIT,
};
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{GetMessageRequest, Region, SendMessageRequest};
use tokio::sync::Mutex;
use tonic::transport::Channel;

const SENDERS: [&str; 4] = ["ES-CNP", "BE-FPJ", "FR-OCLCO", "PT-PJ"];
const RECIPIENTS: [&str; 2] = ["CO-DIJIN", "MX-FGR"];
const CLIENTS: usize = 32;
/// Acknowledged sends to wait for before killing the server.
const ACKED_BEFORE_KILL: usize = 400;

async fn agency(pki: &TestPki, id: &str, addr: SocketAddr) -> ExchangeServiceClient<Channel> {
    let (cert, key) = pki.issue(&agency_spiffe(id));
    let channel = connect(&cert, &key, &pki.ca_pem, addr)
        .await
        .expect("connect");
    ExchangeServiceClient::new(channel)
}

async fn auditor(pki: &TestPki, addr: SocketAddr) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(pki.client_for(&auditor_spiffe("ana"), addr).await)
}

/// What the clients learned before the crash.
#[derive(Default)]
struct Ledger {
    /// Acknowledged sends: client_message_id → (sender, message id, request).
    acked: HashMap<String, (String, String, SendMessageRequest)>,
    /// Sends that were in flight when the server died: (sender, request).
    in_flight: Vec<(String, SendMessageRequest)>,
}

fn request_for(client: usize, n: usize) -> SendMessageRequest {
    let recipients: Vec<&str> = if n % 3 == 0 {
        RECIPIENTS.to_vec()
    } else {
        vec![RECIPIENTS[n % 2]]
    };
    let mut request = message(&format!("c{client}-m{n}"), &recipients);
    request.subject = format!("report {n} of client {client}");
    request
}

/// A recipient's whole inbox as (sequence, message id) pairs.
async fn inbox_of(client: &mut ExchangeServiceClient<Channel>) -> Vec<(u64, String)> {
    backlog(client)
        .await
        .into_iter()
        .map(|item| (item.sequence, item.message.expect("message").message_id))
        .collect()
}

/// Every acknowledged message survives kill -9 under load, streams exactly once in order, and the
/// log extends a checkpoint signed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_kill_9_and_stream_in_order() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    pki.write_server_files(dir.path());

    let server = ServerProcess::start(dir.path());
    for (id, region) in SENDERS
        .iter()
        .map(|id| (*id, Region::Eu))
        .chain(RECIPIENTS.iter().map(|id| (*id, Region::Celac)))
    {
        register_agency(&pki, server.addr, id, region).await;
    }

    // 32 clients send until the server dies under them.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (enough_tx, mut enough) = tokio::sync::watch::channel(0usize);
    let enough_tx = Arc::new(enough_tx);
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let sender = SENDERS[client_no % SENDERS.len()];
        let mut client = agency(&pki, sender, server.addr).await;
        let (ledger, enough_tx) = (Arc::clone(&ledger), Arc::clone(&enough_tx));
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let request = request_for(client_no, n);
                match client.send_message(request.clone()).await {
                    Ok(response) => {
                        let id = response.into_inner().message_id;
                        let mut ledger = ledger.lock().await;
                        ledger.acked.insert(
                            request.client_message_id.clone(),
                            (sender.to_string(), id, request),
                        );
                        enough_tx.send_replace(ledger.acked.len());
                    }
                    Err(_) => {
                        ledger
                            .lock()
                            .await
                            .in_flight
                            .push((sender.to_string(), request));
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::timeout(
        WAIT * 3,
        enough.wait_for(|acked| *acked >= ACKED_BEFORE_KILL),
    )
    .await
    .expect("clients made no progress")
    .expect("watch");
    // A checkpoint signed while the load runs: the log after the crash must extend it.
    let (key_before, before) = signed_checkpoint(&mut auditor(&pki, server.addr).await).await;
    assert!(
        before.size >= ACKED_BEFORE_KILL as u64,
        "every acknowledged send is in the log, so in the checkpoint signed after it"
    );
    server.kill();
    for task in tasks {
        task.await.expect("client task");
    }
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("tasks done")
        .into_inner();
    assert!(ledger.acked.len() >= ACKED_BEFORE_KILL);
    assert_eq!(
        ledger.in_flight.len(),
        CLIENTS,
        "every client stops at the crash"
    );

    let server = ServerProcess::start(dir.path());

    let mut audit = auditor(&pki, server.addr).await;
    let (key_after, after) = signed_checkpoint(&mut audit).await;
    assert_eq!(
        key_after, key_before,
        "the log's key changed across the restart"
    );
    assert_log_extends(&mut audit, &before, &after).await;

    // Retries of the in-flight sends: committed ones return their original id, the others are
    // accepted now; either way each must end up in the inboxes exactly once.
    let mut retried = HashMap::new();
    for (sender, request) in &ledger.in_flight {
        let mut client = agency(&pki, sender, server.addr).await;
        let response = client
            .send_message(request.clone())
            .await
            .expect("retry after restart")
            .into_inner();
        retried.insert(
            request.client_message_id.clone(),
            (response.message_id, request.clone()),
        );
    }
    // A retry of an acknowledged send returns the original id and writes nothing new.
    let (cmid, (sender, original_id, request)) = ledger.acked.iter().next().expect("one acked");
    let again = agency(&pki, sender, server.addr)
        .await
        .send_message(request.clone())
        .await
        .expect("idempotent retry")
        .into_inner();
    assert_eq!(&again.message_id, original_id, "retry of {cmid}");

    for recipient in RECIPIENTS {
        let mut client = agency(&pki, recipient, server.addr).await;
        let entries = inbox_of(&mut client).await;
        let sequences: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = (1..=entries.len() as u64).collect();
        assert_eq!(
            sequences, expected,
            "{recipient}: sequences must be 1..=n without gaps"
        );
        let ids: Vec<&String> = entries.iter().map(|(_, id)| id).collect();
        let unique: HashSet<&String> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{recipient}: a message streamed twice"
        );

        let addressed =
            |request: &SendMessageRequest| request.recipients.iter().any(|r| r == recipient);
        let must_have = ledger
            .acked
            .values()
            .filter(|(_, _, request)| addressed(request))
            .map(|(_, id, _)| id)
            .chain(
                retried
                    .values()
                    .filter(|(_, request)| addressed(request))
                    .map(|(id, _)| id),
            );
        let mut wanted = 0;
        for id in must_have {
            assert!(
                unique.contains(id),
                "{recipient}: acknowledged message {id} is missing"
            );
            wanted += 1;
        }
        assert_eq!(
            unique.len(),
            wanted,
            "{recipient}: inbox holds messages nobody was told about"
        );

        // One client sends one message at a time, so its messages must be streamed in the order
        // it sent them.
        let position: HashMap<&String, u64> = entries.iter().map(|(seq, id)| (id, *seq)).collect();
        for client_no in 0..CLIENTS {
            let mut last = 0;
            for n in 0.. {
                let Some((_, id, request)) = ledger.acked.get(&format!("c{client_no}-m{n}")) else {
                    break;
                };
                if addressed(request) {
                    let seq = position[id];
                    assert!(
                        seq > last,
                        "{recipient}: client {client_no}'s message {n} streamed out of order"
                    );
                    last = seq;
                }
            }
        }

        // Every streamed message is the one its sender sent.
        let sent: HashMap<&String, &SendMessageRequest> = ledger
            .acked
            .values()
            .map(|(_, id, request)| (id, request))
            .chain(retried.values().map(|(id, request)| (id, request)))
            .collect();
        for (_, id) in entries.iter().step_by(37) {
            let stored = client
                .get_message(GetMessageRequest {
                    message_id: id.clone(),
                })
                .await
                .expect("get message")
                .into_inner()
                .message
                .expect("message");
            assert_eq!(
                stored.subject, sent[id].subject,
                "{recipient}: message {id}"
            );
            assert_eq!(
                stored.content,
                sent[id]
                    .content
                    .clone()
                    .map(puente::exchange::content::to_message_content)
            );
        }
    }
}

/// SIGTERM ends open inbox streams and the server exits with status 0.
#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_zero() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    pki.write_server_files(dir.path());
    let server = ServerProcess::start(dir.path());
    register_agency(&pki, server.addr, "CO-DIJIN", Region::Celac).await;
    let mut client = agency(&pki, "CO-DIJIN", server.addr).await;
    let mut stream = open_inbox(&mut client, 0).await;

    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(
        status.success(),
        "puente serve must exit 0 after SIGTERM, got {status}"
    );
    let ended = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream must end, not hang");
    assert!(
        ended.is_err() || matches!(ended, Ok(None)),
        "no message was expected"
    );
}
