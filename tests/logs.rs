//! Logs of the real binary with `--log-format json`: every stderr line is a JSON object, each
//! call made has its one `puente::rpc` line with caller, method, status and latency, and
//! nothing of a message's subject or content appears in any line.

mod common;

use std::ffi::OsString;
use std::fs::File;
use std::process::Stdio;

use common::*;
use puente::pb::v1::{GetDeliveryStatusRequest, GetMessageRequest, Region, StreamInboxRequest};
use serde_json::Value;
use tonic::Code;

/// In the subject and the content of the message sent; must never reach a log line.
const MARKER: &str = "zq7-LOGCANARY-4c1e";

/// The `puente::rpc` lines of `lines` for `caller` calling `method`.
fn rpc_lines<'a>(lines: &'a [Value], caller: &str, method: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| {
            line["target"] == "puente::rpc" && line["caller"] == caller && line["method"] == method
        })
        .collect()
}

/// JSON logs have one line per call with its outcome, and never a subject, text or attachment.
#[tokio::test]
async fn json_logs_have_one_line_per_call_and_never_the_content() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestPki::new();
    pki.write_server_files(dir.path());
    let log_path = dir.path().join("stderr.log");
    let log = File::create(&log_path).expect("create the log file");
    let mut args = vec![OsString::from("--log-format"), OsString::from("json")];
    args.extend(ServerProcess::file_args(dir.path()));
    let server = ServerProcess::spawn(ServerProcess::command(args), "info", Stdio::from(log));
    register_agency(&pki, server.addr, "ES-CNP", Region::Eu).await;
    register_agency(&pki, server.addr, "CO-DIJIN", Region::Celac).await;

    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut request = text_message(
        "canary-1",
        &["CO-DIJIN"],
        &format!("Shipment details {MARKER} in the body"),
    );
    request.subject = format!("Subject {MARKER}");
    let message_id = sender
        .send_message(request)
        .await
        .expect("send")
        .into_inner()
        .message_id;

    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut inbox = recipient
        .stream_inbox(StreamInboxRequest {
            after_sequence: 0,
            backlog_only: true,
        })
        .await
        .expect("open the inbox")
        .into_inner();
    let entry = next_entry(&mut inbox).await;
    assert_eq!(
        entry.message.as_ref().and_then(text_of),
        Some(format!("Shipment details {MARKER} in the body").as_str())
    );
    assert!(inbox.message().await.expect("end of backlog").is_none());
    let read = recipient
        .get_message(GetMessageRequest {
            message_id: message_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(matches!(
        read.message.and_then(|m| m.content),
        Some(puente::pb::v1::message::Content::Text(text)) if text.contains(MARKER)
    ));
    sender
        .get_delivery_status(GetDeliveryStatusRequest {
            message_id: message_id.clone(),
        })
        .await
        .expect("status for the sender");
    assert_code(
        recipient
            .get_delivery_status(GetDeliveryStatusRequest { message_id })
            .await,
        Code::PermissionDenied,
    );
    drop((sender, recipient, inbox));
    // Waited for off the runtime, so that it can close the clients' connections meanwhile
    // and shutdown need not wait out its drain timeout for them.
    let exit = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("wait for the server");
    assert!(exit.success(), "clean exit: {exit:?}");

    let text = std::fs::read_to_string(&log_path).expect("read the log");
    assert!(
        !text.contains(MARKER),
        "the subject or content reached the log:\n{text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line["message"] == "message accepted"),
        "the handlers' own lines are JSON too:\n{text}"
    );

    let es = agency_spiffe("ES-CNP");
    let co = agency_spiffe("CO-DIJIN");
    let admin = admin_spiffe("root");
    let exchange = |method: &str| format!("/puente.v1.ExchangeService/{method}");
    let calls = [
        (
            admin.as_str(),
            "/puente.v1.AdminService/RegisterAgency".to_string(),
            "OK",
            2,
        ),
        (es.as_str(), exchange("SendMessage"), "OK", 1),
        (co.as_str(), exchange("StreamInbox"), "OK", 1),
        (co.as_str(), exchange("GetMessage"), "OK", 1),
        (es.as_str(), exchange("GetDeliveryStatus"), "OK", 1),
        (
            co.as_str(),
            exchange("GetDeliveryStatus"),
            "PERMISSION_DENIED",
            1,
        ),
    ];
    for (caller, method, status, count) in calls {
        let found = rpc_lines(&lines, caller, &method);
        let with_status: Vec<_> = found.iter().filter(|l| l["status"] == status).collect();
        assert_eq!(
            with_status.len(),
            count,
            "{caller} {method} {status}: {found:?}"
        );
        for line in with_status {
            assert_eq!(line["level"], "INFO");
            let latency = line["latency_ms"].as_f64().expect("latency_ms is a number");
            assert!(latency >= 0.0, "{line}");
            assert!(line["timestamp"].is_string(), "{line}");
        }
    }
    // One line per call: the two GetDeliveryStatus calls are one line each.
    assert_eq!(
        rpc_lines(&lines, &co, &exchange("GetDeliveryStatus")).len(),
        1
    );
    assert_eq!(rpc_lines(&lines, &es, &exchange("SendMessage")).len(), 1);
}
