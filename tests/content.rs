//! Structured content end to end: each file of `examples/`, parsed as `puente send --file` parses
//! it, is accepted by a real server and reads back intact (plus the fields the server sets)
//! through StreamInbox, GetMessage and their JSON form; broken reports are INVALID_ARGUMENT naming
//! the field; and the real binary sends a JSON file and prints the inbox as JSON lines.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    agency_spiffe, assert_bad_field, backlog, content_sha256, puente_command, register_agency,
    ServerProcess, TestPki, TestServer,
};
use puente::exchange::content::to_message_content;
use puente::pb::json::{from_json, to_json};
use puente::pb::v1::send_message_request::Content;
use puente::pb::v1::{
    correct_message_request, CorrectMessageRequest, GetMessageRequest, GetMessageResponse, Message,
    Region, SendMessageRequest, StreamInboxResponse,
};

const AGENCIES: [(&str, Region); 3] = [
    ("ES-CNP", Region::Eu),
    ("CO-DIJIN", Region::Celac),
    ("BE-FPJ", Region::Eu),
];

/// Each example and the agency that sends it.
const EXAMPLES: [(&str, &str); 4] = [
    ("firearms-report.json", "ES-CNP"),
    ("firearm-trace-request.json", "CO-DIJIN"),
    ("financial-report.json", "ES-CNP"),
    ("early-warning-alert.json", "ES-CNP"),
];

fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// An example as `puente send --file` reads it: the proto3 JSON of a SendMessageRequest, given a
/// fresh idempotency key when it carries none.
fn example(name: &str) -> SendMessageRequest {
    let text = std::fs::read_to_string(example_path(name)).expect("read example");
    let mut request: SendMessageRequest =
        from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        request.client_message_id.is_empty(),
        "{name} carries no key"
    );
    request.client_message_id = format!("example-{name}");
    request
}

/// The content of `request` as the server must store it: the client's, with the fields the
/// server sets, spelled out here rather than computed by the code under test.
fn normalised(name: &str, request: &SendMessageRequest) -> Content {
    let mut content = request.content.clone().expect("example has content");
    match (name, &mut content) {
        ("firearms-report.json", Content::Firearms(report)) => {
            report.records[0].serial_number_normalized = "BXK41729".into();
            report.records[1].serial_number_normalized = "T06202104578".into();
        }
        ("firearm-trace-request.json", Content::FirearmTrace(trace)) => {
            trace
                .firearm
                .as_mut()
                .expect("firearm")
                .serial_number_normalized = "386204117".into();
        }
        ("financial-report.json", Content::Financial(report)) => {
            report.accounts[0].iban = "ES0499910001110123456789".into();
        }
        ("early-warning-alert.json", Content::EarlyWarning(_)) => {}
        _ => panic!("{name} has unexpected content"),
    }
    content
}

async fn server_with_agencies(pki: &TestPki) -> TestServer {
    let server = TestServer::spawn(pki).await;
    for (id, region) in AGENCIES {
        server.register(pki, id, region).await;
    }
    server
}

/// Asserts that a stored message is the example as sent, with the server's normalisations.
#[track_caller]
fn assert_stored(name: &str, sender: &str, request: &SendMessageRequest, message: &Message) {
    let content = normalised(name, request);
    assert_eq!(message.sender, sender, "{name}");
    let mut recipients = request.recipients.clone();
    recipients.sort();
    assert_eq!(message.recipients, recipients, "{name}");
    assert_eq!(message.topic, request.topic, "{name}");
    assert_eq!(message.subject, request.subject, "{name}");
    assert_eq!(message.handling, request.handling, "{name}");
    assert_eq!(message.evaluation, request.evaluation, "{name}");
    assert_eq!(message.case_reference, request.case_reference, "{name}");
    assert_eq!(
        message.handling_conditions, request.handling_conditions,
        "{name}"
    );
    assert_eq!(message.priority, request.priority, "{name}");
    assert_eq!(
        message.content,
        Some(to_message_content(content.clone())),
        "{name}"
    );
    let stored = SendMessageRequest {
        content: Some(content),
        ..SendMessageRequest::default()
    };
    assert_eq!(message.content_sha256, content_sha256(&stored), "{name}");
}

/// Every example report is accepted and reads back intact, also through the JSON form `puente inbox
/// --json` prints.
#[tokio::test]
async fn every_example_is_accepted_and_reads_back_intact() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    for (name, sender) in EXAMPLES {
        let request = example(name);
        let message_id = pki
            .agency_client(sender, server.addr)
            .await
            .send_message(request.clone())
            .await
            .unwrap_or_else(|s| panic!("{name} refused: {s:?}"))
            .into_inner()
            .message_id;

        for recipient in &request.recipients {
            let mut client = pki.agency_client(recipient, server.addr).await;
            let entries = backlog(&mut client).await;
            let entry = entries
                .iter()
                .find(|e| e.message.as_ref().map(|m| &m.message_id) == Some(&message_id))
                .unwrap_or_else(|| panic!("{name} is not in {recipient}'s inbox"));
            let message = entry.message.as_ref().expect("message");
            assert_stored(name, sender, &request, message);

            // The JSON form that `puente inbox --json` prints parses back to the same entry.
            let line = to_json(entry).expect("JSON");
            assert!(!line.contains('\n'));
            assert_eq!(&from_json::<StreamInboxResponse>(&line).unwrap(), entry);

            let got = client
                .get_message(GetMessageRequest {
                    message_id: message_id.clone(),
                })
                .await
                .expect("GetMessage as recipient")
                .into_inner();
            assert_eq!(got.message.as_ref(), Some(message), "{name}");
        }
        let got = pki
            .agency_client(sender, server.addr)
            .await
            .get_message(GetMessageRequest {
                message_id: message_id.clone(),
            })
            .await
            .expect("GetMessage as sender")
            .into_inner();
        assert_stored(
            name,
            sender,
            &request,
            got.message.as_ref().expect("message"),
        );
    }
}

/// The server computes normalised serials itself and ignores one a client supplies.
#[tokio::test]
async fn the_server_ignores_a_client_supplied_normalised_serial() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let mut request = example("firearms-report.json");
    if let Some(Content::Firearms(report)) = &mut request.content {
        report.records[0].serial_number_normalized = "FORGED".into();
    }
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let message_id = es
        .send_message(request)
        .await
        .expect("accepted")
        .into_inner()
        .message_id;
    let message = es
        .get_message(GetMessageRequest { message_id })
        .await
        .expect("GetMessage")
        .into_inner()
        .message
        .expect("message");
    let Some(puente::pb::v1::message::Content::Firearms(report)) = message.content else {
        panic!("firearms content expected");
    };
    assert_eq!(report.records[0].serial_number_normalized, "BXK41729");
}

/// Each invalid structured report is INVALID_ARGUMENT naming the offending field.
#[tokio::test]
async fn invalid_reports_are_refused_naming_the_field() {
    type Edit = fn(&mut Content);
    let cases: [(&str, &str, Edit, &str); 8] = [
        (
            "firearms-report.json",
            "ES-CNP",
            |c| {
                if let Content::Firearms(r) = c {
                    r.records[1].serial_number = "T0620\u{7}".into();
                }
            },
            "firearms.records[1].serial_number",
        ),
        (
            "firearms-report.json",
            "ES-CNP",
            |c| {
                if let Content::Firearms(r) = c {
                    r.records[0]
                        .markings
                        .as_mut()
                        .expect("markings")
                        .country_of_manufacture = "EU".into();
                }
            },
            "firearms.records[0].markings.country_of_manufacture",
        ),
        (
            "firearm-trace-request.json",
            "CO-DIJIN",
            |c| {
                if let Content::FirearmTrace(t) = c {
                    t.firearm
                        .as_mut()
                        .expect("firearm")
                        .incident
                        .as_mut()
                        .expect("incident")
                        .date = "2026-02-29".into();
                }
            },
            "firearm_trace.firearm.incident.date",
        ),
        (
            "firearm-trace-request.json",
            "CO-DIJIN",
            |c| {
                if let Content::FirearmTrace(t) = c {
                    t.requested_country = "XX".into();
                }
            },
            "firearm_trace.requested_country",
        ),
        (
            "financial-report.json",
            "ES-CNP",
            |c| {
                if let Content::Financial(r) = c {
                    r.accounts[1].iban = "ES3299920202219876543210".into();
                }
            },
            "financial.accounts[1].iban",
        ),
        (
            "financial-report.json",
            "ES-CNP",
            |c| {
                if let Content::Financial(r) = c {
                    r.transactions[3]
                        .amount_local
                        .as_mut()
                        .expect("amount")
                        .currency_code = "XXY".into();
                }
            },
            "financial.transactions[3].amount_local.currency_code",
        ),
        (
            "financial-report.json",
            "ES-CNP",
            |c| {
                if let Content::Financial(r) = c {
                    r.accounts[2].swift = "BAEJ-COBB".into();
                }
            },
            "financial.accounts[2].swift",
        ),
        (
            "early-warning-alert.json",
            "ES-CNP",
            |c| {
                if let Content::EarlyWarning(a) = c {
                    a.substance.as_mut().expect("substance").cas_number = "2785346-75-9".into();
                }
            },
            "early_warning.substance.cas_number",
        ),
    ];
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    for (name, sender, edit, field) in cases {
        let mut request = example(name);
        edit(request.content.as_mut().expect("content"));
        let result = pki
            .agency_client(sender, server.addr)
            .await
            .send_message(request)
            .await;
        assert_bad_field(result, field);
    }
}

/// Corrected content is held to the same rules as a report when first sent.
#[tokio::test]
async fn a_correction_is_held_to_the_same_rules() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let request = example("financial-report.json");
    let message_id = es
        .send_message(request.clone())
        .await
        .expect("accepted")
        .into_inner()
        .message_id;
    let Some(Content::Financial(mut report)) = request.content else {
        panic!("financial content expected");
    };
    report.accounts[0].iban = "ES05 9991 0001 1101 2345 6789".into();
    let result = es
        .correct_message(CorrectMessageRequest {
            message_id,
            reason: "Corrected the first account".into(),
            content: Some(correct_message_request::Content::Financial(report)),
        })
        .await;
    assert_bad_field(result, "financial.accounts[0].iban");
}

// === The binary ===

/// A temporary directory holding the test PKI's files (`server.pem`, `server.key`, `ca.pem`,
/// `<agency>.pem`/`.key`), in which `puente` runs.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(pki: &TestPki) -> Workspace {
        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write file");
        };
        pki.write_server_files(dir.path());
        for (id, _) in AGENCIES {
            let (cert, key) = pki.issue(&agency_spiffe(id));
            write(&format!("{id}.pem"), &cert);
            write(&format!("{id}.key"), &key);
        }
        Workspace { dir }
    }

    /// Runs `puente ARGS` connected to `addr` as agency `id`.
    fn run_as(&self, addr: SocketAddr, id: &str, args: &[&str]) -> Output {
        let (addr, cert, key) = (addr.to_string(), format!("{id}.pem"), format!("{id}.key"));
        puente_command(self.dir.path(), args)
            .args([
                "--addr", &addr, "--cert", &cert, "--key", &key, "--ca", "ca.pem",
            ])
            .output()
            .expect("run puente")
    }

    /// As [`Workspace::run_as`]; the command must succeed. Returns its stdout.
    fn ok_as(&self, addr: SocketAddr, id: &str, args: &[&str]) -> String {
        let output = self.run_as(addr, id, args);
        assert!(
            output.status.success(),
            "`puente {}` as {id} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }
}

/// The CLI sends a JSON request file (flags overriding it), prints the inbox as JSON lines and
/// exports STIX 2.1.
#[tokio::test]
async fn the_cli_sends_a_json_file_and_prints_the_inbox_as_json_lines() {
    let pki = TestPki::new();
    let ws = Workspace::new(&pki);
    let server = ServerProcess::start(ws.dir.path());
    for (id, region) in AGENCIES {
        register_agency(&pki, server.addr, id, region).await;
    }

    let file = example_path("financial-report.json");
    let file = file.to_str().expect("UTF-8 path");
    let sent = ws.ok_as(server.addr, "ES-CNP", &["send", "--file", file]);
    let message_id = sent
        .lines()
        .find_map(|l| l.strip_prefix("message_id: "))
        .expect("message_id line")
        .to_string();

    let printed = ws.ok_as(server.addr, "CO-DIJIN", &["inbox", "--json"]);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line per entry:\n{printed}");
    let entry: StreamInboxResponse = from_json(lines[0]).expect("a StreamInboxResponse");
    assert_eq!(entry.sequence, 1);
    let message = entry.message.expect("message");
    assert_eq!(message.message_id, message_id);
    let request = example("financial-report.json");
    assert_stored("financial-report.json", "ES-CNP", &request, &message);
    // Scripts read the canonical names (lowerCamelCase, enums by name).
    let value: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(
        value["message"]["financial"]["accounts"][0]["iban"],
        "ES0499910001110123456789"
    );
    assert_eq!(
        value["message"]["financial"]["reportCode"],
        "REPORT_CODE_STR"
    );

    let got = ws.ok_as(server.addr, "ES-CNP", &["get", &message_id, "--json"]);
    let got: GetMessageResponse = from_json(&got).expect("a GetMessageResponse");
    assert_eq!(got.message, Some(message));

    // Flags override the file: here the subject.
    let sent = ws.ok_as(
        server.addr,
        "ES-CNP",
        &["send", "--file", file, "--subject", "STR, updated subject"],
    );
    assert!(sent.contains("message_id: "));
    let printed = ws.ok_as(
        server.addr,
        "CO-DIJIN",
        &["inbox", "--json", "--after", "1"],
    );
    let entry: StreamInboxResponse = from_json(printed.trim()).expect("one entry");
    assert_eq!(
        entry.message.expect("message").subject,
        "STR, updated subject"
    );

    // The recipient exports the H3 report as STIX 2.1: TLP:RED, the H3 conditions as a
    // statement marking, the structured report attached.
    let stix = ws.ok_as(server.addr, "CO-DIJIN", &["export", "--stix", &message_id]);
    let bundle: serde_json::Value = serde_json::from_str(&stix).expect("a JSON bundle");
    assert_eq!(bundle["type"], "bundle");
    let objects = bundle["objects"].as_array().expect("objects");
    let report = objects
        .iter()
        .find(|o| o["type"] == "report")
        .expect("a report");
    assert_eq!(report["spec_version"], "2.1");
    assert_eq!(report["name"], request.subject);
    assert_eq!(
        report["object_marking_refs"][0],
        puente::stix::tlp(puente::pb::v1::HandlingCode::H3).1
    );
    assert!(objects
        .iter()
        .any(|o| o["extensions"][puente::stix::TLP2_EXTENSION]["tlp_2_0"] == "red"));
    assert!(objects.iter().any(|o| o["definition_type"] == "statement"
        && o["definition"]["statement"] == request.handling_conditions.as_str()));
    assert_eq!(
        report["x_puente_content"]["financial"]["reportCode"],
        "REPORT_CODE_STR"
    );
    // Nobody else can export it.
    assert!(!ws
        .run_as(server.addr, "BE-FPJ", &["export", "--stix", &message_id])
        .status
        .success());
    drop(server);
}

/// The CLI refuses a file that is not a SendMessageRequest before connecting.
#[test]
fn the_cli_refuses_a_file_that_is_not_a_send_message_request() {
    let pki = TestPki::new();
    let ws = Workspace::new(&pki);
    std::fs::write(
        ws.dir.path().join("typo.json"),
        r#"{"recipients":["CO-DIJIN"],"subjet":"misspelt"}"#,
    )
    .expect("write file");
    // Nothing listens on port 9: the file is refused before any connection is tried.
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let output = ws.run_as(addr, "ES-CNP", &["send", "--file", "typo.json"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("typo.json"), "{stderr}");
    assert!(stderr.contains("subjet"), "{stderr}");
}

// === Strings a person reads ===

/// What a hostile sender slips into a string, one per class the server refuses: terminal
/// controls (ESC sequences, the one-byte C1 CSI, DEL, a CR that returns over the line),
/// bidirectional overrides and isolates, line and paragraph separators, invisible characters.
const HOSTILE: [(&str, &str); 12] = [
    ("ESC: clear the screen", "\u{1b}[2J"),
    ("ESC: set the window title", "\u{1b}]0;pwned\u{7}"),
    ("C1 CSI", "\u{9b}2J"),
    ("DEL", "\u{7f}"),
    ("a lone CR over the line", "\rfrom: XX-FAKE"),
    ("right-to-left override", "\u{202e}"),
    ("first-strong isolate", "\u{2068}"),
    ("line separator", "\u{2028}"),
    ("paragraph separator", "\u{2029}"),
    ("zero-width space", "\u{200b}"),
    ("zero-width joiner", "\u{200d}"),
    ("byte-order mark", "\u{feff}"),
];

/// Checks that `result` is INVALID_ARGUMENT naming `field`, with a message that does not echo
/// `hostile`; an accepted request is added to `accepted` (so that one run lists them all).
#[track_caller]
fn expect_refused<T>(
    accepted: &mut Vec<String>,
    result: Result<T, tonic::Status>,
    field: &str,
    hostile: &str,
    what: &str,
) {
    let status = match result {
        Ok(_) => return accepted.push(format!("{what} in {field}")),
        Err(status) => status,
    };
    assert!(
        !status.message().contains(hostile),
        "{field}: the refusal echoes the value: {status:?}"
    );
    assert_bad_field(Err::<(), _>(status), field);
}

/// Every string of a SendMessageRequest that a recipient reads — subject, text, case reference,
/// conditions of use, attachment name and media type, and the strings of structured reports —
/// refuses each class of hostile character, naming the field and not echoing the value.
#[tokio::test]
async fn every_string_a_recipient_reads_refuses_controls_bidi_separators_and_invisibles() {
    type Edit = fn(&mut SendMessageRequest, &str);
    fn attachment(filename: String, media_type: String) -> puente::pb::v1::Attachment {
        puente::pb::v1::Attachment {
            filename,
            media_type,
            data: b"x".to_vec(),
        }
    }
    let fields: [(&str, &str, Edit); 10] = [
        ("financial-report.json", "subject", |r, h| {
            r.subject = format!("Cuentas {h} mulas")
        }),
        ("financial-report.json", "text", |r, h| {
            r.content = Some(Content::Text(format!("line one\nline {h} two")))
        }),
        ("financial-report.json", "case_reference", |r, h| {
            r.case_reference = format!("CASE-{h}-1")
        }),
        ("financial-report.json", "handling_conditions", |r, h| {
            r.handling = puente::pb::v1::HandlingCode::H3 as i32;
            r.handling_conditions = format!("Not for court.\nAsk {h} first.");
        }),
        (
            "financial-report.json",
            "attachments[0].filename",
            |r, h| r.attachments = vec![attachment(format!("invoice{h}.pdf"), String::new())],
        ),
        (
            "financial-report.json",
            "attachments[0].media_type",
            |r, h| {
                r.attachments = vec![attachment(
                    "a.txt".into(),
                    format!("text/plain; charset=\"{h}\""),
                )]
            },
        ),
        ("financial-report.json", "financial.reason", |r, h| {
            if let Some(Content::Financial(f)) = &mut r.content {
                f.reason = format!("Structuring.\n{h}Deposits under the threshold.");
            }
        }),
        (
            "firearms-report.json",
            "firearms.records[0].make",
            |r, h| {
                if let Some(Content::Firearms(f)) = &mut r.content {
                    f.records[0].make = format!("Glock{h}");
                }
            },
        ),
        (
            "early-warning-alert.json",
            "early_warning.evidence",
            |r, h| {
                if let Some(Content::EarlyWarning(a)) = &mut r.content {
                    a.evidence = format!("Seized in Rotterdam.\n{h}");
                }
            },
        ),
        (
            "firearm-trace-request.json",
            "firearm_trace.question",
            |r, h| {
                if let Some(Content::FirearmTrace(t)) = &mut r.content {
                    t.question = format!("Who bought it?{h}");
                }
            },
        ),
    ];
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let mut co = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut accepted = Vec::new();
    for (f, (example_name, field, edit)) in fields.into_iter().enumerate() {
        // The unedited request is accepted: the refusal below is the hostile character's.
        let sender = if example_name == "firearm-trace-request.json" {
            &mut co
        } else {
            &mut es
        };
        let mut request = example(example_name);
        request.client_message_id = format!("clean-{f}");
        edit(&mut request, "plain");
        sender
            .send_message(request)
            .await
            .unwrap_or_else(|s| panic!("{field} with plain text: {s:?}"));
        for (h, (what, hostile)) in HOSTILE.into_iter().enumerate() {
            let mut request = example(example_name);
            request.client_message_id = format!("hostile-{f}-{h}");
            edit(&mut request, hostile);
            let result = sender.send_message(request).await;
            expect_refused(&mut accepted, result, field, hostile, what);
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
}

/// Free text keeps its line breaks and tabs, with LF or CRLF line ends; an attachment name that
/// would be a hidden file (`.bashrc`) is refused like one with a path separator.
#[tokio::test]
async fn free_text_keeps_line_breaks_and_tabs_and_attachment_names_no_leading_dot() {
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let mut request = example("financial-report.json");
    request.content = Some(Content::Text(
        "Dear colleagues,\r\n\tplease find\nthe accounts below.\n".into(),
    ));
    es.send_message(request).await.expect("CRLF, LF and tab");
    let mut accepted = Vec::new();
    for name in [".bashrc", "..", "../escaped.txt", "/etc/passwd", "a\\b"] {
        let mut request = example("financial-report.json");
        request.client_message_id = format!("named-{}", name.len());
        request.attachments = vec![puente::pb::v1::Attachment {
            filename: name.into(),
            media_type: String::new(),
            data: b"x".to_vec(),
        }];
        let result = es.send_message(request).await;
        expect_refused(&mut accepted, result, "attachments[0].filename", name, name);
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
}

/// The other strings people read refuse the same characters: the reason of a forward,
/// retraction and consent request, an agency's name in the directory (register and update),
/// and the case reference, legal basis and references of hit/no-hit matching that end up in
/// hit notices.
#[tokio::test]
async fn reasons_agency_names_and_matching_references_refuse_the_same_characters() {
    use puente::pb::v1::{
        Agency, AgencyStatus, BlindedIdentifier, ForwardMessageRequest, IdentifierKind,
        PublishIdentifiersRequest, PublishedIdentifier, QueryRequest, RegisterAgencyRequest,
        RequestConsentRequest, RetractMessageRequest, UpdateAgencyRequest,
    };
    let pki = TestPki::new();
    let server = server_with_agencies(&pki).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let mut co = pki.agency_client("CO-DIJIN", server.addr).await;
    let mut admin = pki.admin_client("root", server.addr).await;
    let mut matching = puente::pb::v1::match_service_client::MatchServiceClient::new(
        pki.client_for(&agency_spiffe("ES-CNP"), server.addr).await,
    );
    let mut request = example("financial-report.json");
    request.handling = puente::pb::v1::HandlingCode::H1 as i32;
    request.handling_conditions.clear();
    let h1 = es
        .send_message(request.clone())
        .await
        .expect("sent")
        .into_inner()
        .message_id;
    request.client_message_id = "h2-original".into();
    request.handling = puente::pb::v1::HandlingCode::H2 as i32;
    let h2 = es
        .send_message(request)
        .await
        .expect("sent")
        .into_inner()
        .message_id;
    let agency = |name: String| Agency {
        agency_id: "PT-PJ".into(),
        name,
        country: "PT".into(),
        region: Region::Eu as i32,
        status: AgencyStatus::Unspecified as i32,
    };
    let identifier = || BlindedIdentifier {
        kind: IdentifierKind::Firearm as i32,
        blinded: vec![7; 32],
    };
    admin
        .register_agency(RegisterAgencyRequest {
            agency: Some(agency("Polícia Judiciária".into())),
        })
        .await
        .expect("a plain name is accepted");

    let mut accepted = Vec::new();
    for (h, (what, hostile)) in HOSTILE.into_iter().enumerate() {
        let text = |prefix: &str| format!("{prefix} {hostile} end");
        let result = co
            .forward_message(ForwardMessageRequest {
                client_message_id: format!("fwd-{h}"),
                message_id: h1.clone(),
                recipients: vec!["BE-FPJ".into()],
                reason: text("Related case"),
            })
            .await;
        expect_refused(
            &mut accepted,
            result,
            "reason",
            hostile,
            &format!("{what} (ForwardMessage)"),
        );
        let result = co
            .request_consent(RequestConsentRequest {
                message_id: h2.clone(),
                agency_id: "BE-FPJ".into(),
                reason: text("Needed for"),
            })
            .await;
        expect_refused(
            &mut accepted,
            result,
            "reason",
            hostile,
            &format!("{what} (RequestConsent)"),
        );
        // Its own message, as an accepted retraction would stop the forwards above.
        let mut request = example("financial-report.json");
        request.client_message_id = format!("to-retract-{h}");
        let to_retract = es
            .send_message(request)
            .await
            .expect("sent")
            .into_inner()
            .message_id;
        let result = es
            .retract_message(RetractMessageRequest {
                message_id: to_retract,
                reason: text("Sent in error"),
            })
            .await;
        expect_refused(
            &mut accepted,
            result,
            "reason",
            hostile,
            &format!("{what} (RetractMessage)"),
        );
        let result = admin
            .register_agency(RegisterAgencyRequest {
                agency: Some(Agency {
                    agency_id: format!("IT-DCSA{}", char::from(b'A' + h as u8)),
                    country: "IT".into(),
                    ..agency(text("Direzione"))
                }),
            })
            .await;
        expect_refused(
            &mut accepted,
            result,
            "agency.name",
            hostile,
            &format!("{what} (RegisterAgency)"),
        );
        let result = admin
            .update_agency(UpdateAgencyRequest {
                agency: Some(agency(text("Polícia"))),
            })
            .await;
        expect_refused(
            &mut accepted,
            result,
            "agency.name",
            hostile,
            &format!("{what} (UpdateAgency)"),
        );
        let result = matching
            .query(QueryRequest {
                key_epoch: 1,
                identifiers: vec![identifier()],
                case_reference: "CASE-1".into(),
                legal_basis: text("Art. 5"),
            })
            .await;
        expect_refused(&mut accepted, result, "legal_basis", hostile, what);
        let result = matching
            .publish_identifiers(PublishIdentifiersRequest {
                key_epoch: 1,
                identifiers: vec![PublishedIdentifier {
                    identifier: Some(identifier()),
                    reference: text("REF"),
                }],
                ..Default::default()
            })
            .await;
        expect_refused(
            &mut accepted,
            result,
            "identifiers[0].reference",
            hostile,
            what,
        );
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
}
