//! `puente forward`, `consent`, `retract`, `correct` and `thread` as an agency uses them: the real
//! binary against a real `puente serve` with test certificates, agencies registered with
//! `puente admin agency add`.

mod common;

use std::process::{Command, Output};

use common::{admin_spiffe, agency_spiffe, puente_command, ServerProcess, TestPki};
use puente::pb::v1::{DeliveryState, GetDeliveryStatusRequest, MessageKind};

/// A running server and certificates for an administrator and four agencies, in one directory.
struct Exchange {
    pki: TestPki,
    server: ServerProcess,
    dir: tempfile::TempDir,
}

impl Exchange {
    fn start() -> Exchange {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |name: &str, contents: &str| {
            std::fs::write(dir.path().join(name), contents).expect("write test file");
        };
        pki.write_server_files(dir.path());
        let mut holders = vec![("admin".to_string(), admin_spiffe("root"))];
        for id in ["ES-CNP", "CO-DIJIN", "BE-FPJ", "MX-FGR"] {
            holders.push((id.to_lowercase(), agency_spiffe(id)));
        }
        for (who, spiffe) in holders {
            let (cert, key) = pki.issue(&spiffe);
            write(&format!("{who}.pem"), &cert);
            write(&format!("{who}.key"), &key);
        }
        let server = ServerProcess::start(dir.path());
        let exchange = Exchange { pki, server, dir };
        for (id, region) in [
            ("ES-CNP", "eu"),
            ("CO-DIJIN", "celac"),
            ("BE-FPJ", "eu"),
            ("MX-FGR", "celac"),
        ] {
            exchange.ok(
                "admin",
                &[
                    "admin",
                    "agency",
                    "add",
                    "--id",
                    id,
                    "--name",
                    id,
                    "--country",
                    &id[..2],
                    "--region",
                    region,
                ],
            );
        }
        exchange
    }

    /// Runs `puente ARGS` as the holder of `who.pem` against the server.
    fn run(&self, who: &str, args: &[&str]) -> Output {
        puente_command(self.dir.path(), args)
            .args(["--addr", &self.server.addr.to_string()])
            .args([
                "--cert",
                &format!("{who}.pem"),
                "--key",
                &format!("{who}.key"),
            ])
            .args(["--ca", "ca.pem"])
            .output()
            .expect("run puente")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, who: &str, args: &[&str]) -> String {
        let output = self.run(who, args);
        assert!(
            output.status.success(),
            "`puente {}` as {who} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs a command that the exchange must refuse with gRPC `code` (as the CLI names it).
    fn refused(&self, who: &str, args: &[&str], code: tonic::Code) {
        let output = self.run(who, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "`puente {}` as {who} should have failed; it printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(
            stderr.contains(&format!("({code:?})")),
            "`puente {}` as {who}: expected {code:?}, got:\n{stderr}",
            args.join(" ")
        );
    }
}

/// The value of `name: value` in a command's output.
fn field(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {stdout:?}"))
        .trim()
        .to_string()
}

/// The rows of `puente thread` below its header, split on whitespace.
fn thread_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn send_h2(exchange: &Exchange, case_reference: &str) -> String {
    let stdout = exchange.ok(
        "es-cnp",
        &[
            "send",
            "--to",
            "CO-DIJIN",
            "--topic",
            "firearms-trafficking",
            "--handling",
            "h2",
            "--evaluation",
            "B2",
            "--subject",
            "Glock 17 seized in Algeciras",
            "--text",
            "Serial BXR-4471 on a pistol found in a container from Cartagena.",
            "--case-reference",
            case_reference,
        ],
    );
    field(&stdout, "message_id")
}

/// Every handling command of the CLI prints its help.
#[test]
fn every_handling_command_has_help() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for command in [
        &["forward"][..],
        &["consent"],
        &["consent", "request"],
        &["consent", "grant"],
        &["consent", "deny"],
        &["retract"],
        &["correct"],
        &["thread"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_puente"))
            .args(command)
            .arg("--help")
            .current_dir(dir.path())
            .output()
            .expect("run puente");
        assert!(output.status.success(), "puente {command:?} --help");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: puente"));
    }
}

/// Consent, forwarding, retries and retraction work end to end through the CLI.
#[tokio::test]
async fn forward_with_consent_then_retract_through_the_cli() {
    let x = Exchange::start();
    let original = send_h2(&x, "ES-2026-0042");

    // H2: no forwarding without the originator's consent.
    x.refused(
        "co-dijin",
        &["forward", &original, "--to", "MX-FGR"],
        tonic::Code::PermissionDenied,
    );
    let asked = field(
        &x.ok(
            "co-dijin",
            &[
                "consent",
                "request",
                &original,
                "--agency",
                "MX-FGR",
                "--reason",
                "Suspect moved to Mexico",
            ],
        ),
        "consent_request_id",
    );
    // The originator finds the request in its inbox; nobody else can decide it.
    assert!(x.ok("es-cnp", &["inbox"]).contains(&asked));
    x.refused(
        "be-fpj",
        &["consent", "grant", &asked],
        tonic::Code::NotFound,
    );
    let decision = field(
        &x.ok(
            "es-cnp",
            &["consent", "grant", &asked, "--reason", "For this case only"],
        ),
        "decision_message_id",
    );
    assert!(x.ok("co-dijin", &["inbox"]).contains(&decision));

    let forwarded = x.ok(
        "co-dijin",
        &[
            "forward",
            &original,
            "--to",
            "MX-FGR",
            "--reason",
            "Same network",
            "--client-message-id",
            "fwd-1",
        ],
    );
    let copy = field(&forwarded, "message_id");
    assert_eq!(field(&forwarded, "client_message_id"), "fwd-1");
    field(&forwarded, "audit_index");
    // A retry with the key gives the same copy.
    let retry = x.ok(
        "co-dijin",
        &[
            "forward",
            &original,
            "--to",
            "MX-FGR",
            "--reason",
            "Same network",
            "--client-message-id",
            "fwd-1",
        ],
    );
    assert_eq!(field(&retry, "message_id"), copy);
    // Consent was for MX-FGR only.
    x.refused(
        "co-dijin",
        &["forward", &original, "--to", "BE-FPJ"],
        tonic::Code::PermissionDenied,
    );
    x.refused(
        "co-dijin",
        &["forward", &original, "--to", "region:EU"],
        tonic::Code::InvalidArgument,
    );

    // MX-FGR reads its copy; its thread view shows the forwarded copy only.
    assert!(x.ok("mx-fgr", &["get", &copy]).contains(&copy));
    let rows = thread_rows(&x.ok("mx-fgr", &["thread", &copy]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], copy);
    assert_eq!(rows[0][3], "H2");
    assert_eq!(rows[0][4], "FORWARDED");
    let rows = thread_rows(&x.ok("mx-fgr", &["thread", "--case-reference", "ES-2026-0042"]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], copy);

    // Only the originator retracts; every holder gets the notice and acknowledges it.
    x.refused(
        "co-dijin",
        &["retract", &original, "--reason", "Not ours to retract"],
        tonic::Code::PermissionDenied,
    );
    let notice = field(
        &x.ok(
            "es-cnp",
            &["retract", &original, "--reason", "Identification was wrong"],
        ),
        "notice_message_id",
    );
    for holder in ["co-dijin", "mx-fgr"] {
        assert!(x.ok(holder, &["inbox"]).contains(&notice), "{holder}");
    }
    x.ok("co-dijin", &["ack", &notice]);
    // A retracted message is not passed on any more.
    x.refused(
        "mx-fgr",
        &["forward", &copy, "--to", "BE-FPJ"],
        tonic::Code::FailedPrecondition,
    );

    // The originator sees who has acknowledged the retraction.
    let mut es = x.pki.agency_client("ES-CNP", x.server.addr).await;
    let status = es
        .get_delivery_status(GetDeliveryStatusRequest {
            message_id: original.clone(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.notices.len(), 1);
    assert_eq!(status.notices[0].notice_message_id, notice);
    assert_eq!(status.notices[0].kind, MessageKind::Retraction as i32);
    let acknowledged: Vec<(&str, bool)> = status.notices[0]
        .recipients
        .iter()
        .map(|r| {
            (
                r.agency_id.as_str(),
                r.state >= DeliveryState::Received as i32,
            )
        })
        .collect();
    assert_eq!(acknowledged, [("CO-DIJIN", true), ("MX-FGR", false)]);
}

/// Corrections and threads work end to end through the CLI.
#[test]
fn correct_and_thread_through_the_cli() {
    let x = Exchange::start();
    let original = send_h2(&x, "ES-2026-0043");
    let reply = field(
        &x.ok(
            "co-dijin",
            &[
                "send",
                "--to",
                "ES-CNP",
                "--topic",
                "firearms-trafficking",
                "--handling",
                "h1",
                "--evaluation",
                "A1",
                "--subject",
                "Trace result",
                "--text",
                "Sold in Bogotá in 2019.",
                "--in-reply-to",
                &original,
            ],
        ),
        "message_id",
    );
    let rows = thread_rows(&x.ok("es-cnp", &["thread", &reply]));
    let ids: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(ids, [original.as_str(), reply.as_str()]);
    assert_eq!(rows[1][2], original, "IN_REPLY_TO column");
    assert_eq!(rows[0][4], "MESSAGE");
    x.refused("be-fpj", &["thread", &original], tonic::Code::NotFound);
    let both = x.run(
        "es-cnp",
        &["thread", &original, "--case-reference", "ES-2026-0043"],
    );
    assert!(
        !both.status.success(),
        "message id and case reference together"
    );

    x.refused(
        "es-cnp",
        &["correct", &original, "--reason", "Typo", "--text", ""],
        tonic::Code::InvalidArgument,
    );
    let notice = field(
        &x.ok(
            "es-cnp",
            &[
                "correct",
                &original,
                "--reason",
                "Serial number was mistyped",
                "--text",
                "Serial BXR-4472.",
            ],
        ),
        "notice_message_id",
    );
    assert!(x.ok("co-dijin", &["inbox"]).contains(&notice));
    // The notice carries the corrected text.
    assert!(x
        .ok("co-dijin", &["get", &notice])
        .contains("Serial BXR-4472."));
}
