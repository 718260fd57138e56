//! `puente audit` as an auditor uses it: the real binary against a real `puente serve` on a
//! temporary data directory, with certificates from a test PKI written to files. Messages are
//! sent through the library's clients; every audit command runs as a child process.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{
    agency_spiffe, auditor_spiffe, message, puente_command, register_agency, ServerProcess, TestPki,
};
use prost::Message as _;
use puente::audit::note::LogKey;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::{AuditAction, AuditEvent, GetLogInfoRequest, Region, SendMessageResponse};

const AGENCIES: [(&str, Region); 3] = [
    ("ES-CNP", Region::Eu),
    ("CO-DIJIN", Region::Celac),
    ("BE-FPJ", Region::Eu),
];

/// A test PKI whose files sit in a temporary directory (server.pem, server.key, ca.pem, and
/// `<who>.pem`/`<who>.key` per client), a server on `dir/data`, and the CLI run in `dir`.
struct Workspace {
    pki: TestPki,
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().expect("temporary directory");
        let ws = Workspace { pki, dir };
        ws.pki.write_server_files(ws.dir.path());
        ws.identity("auditor", &auditor_spiffe("ana"));
        for (id, _) in AGENCIES {
            ws.identity(&id.to_ascii_lowercase(), &agency_spiffe(id));
        }
        ws
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn identity(&self, who: &str, spiffe: &str) {
        let (cert, key) = self.pki.issue(spiffe);
        std::fs::write(self.path(&format!("{who}.pem")), cert).expect("write certificate");
        std::fs::write(self.path(&format!("{who}.key")), key).expect("write key");
    }

    fn serve(&self) -> ServerProcess {
        ServerProcess::start(self.dir.path())
    }

    /// Runs `puente ARGS` in the workspace.
    fn run(&self, args: &[&str]) -> Output {
        puente_command(self.dir.path(), args)
            .output()
            .expect("run puente")
    }

    /// Runs `puente ARGS` connected to `addr` as the holder of `who.pem`.
    fn run_as(&self, addr: SocketAddr, who: &str, args: &[&str]) -> Output {
        let (addr, cert, key) = (addr.to_string(), format!("{who}.pem"), format!("{who}.key"));
        let connect = [
            "--addr", &addr, "--cert", &cert, "--key", &key, "--ca", "ca.pem",
        ];
        self.run(&[args, &connect[..]].concat())
    }

    /// As [`Workspace::run_as`]; the command must succeed. Returns (stdout, stderr).
    fn ok_as(&self, addr: SocketAddr, who: &str, args: &[&str]) -> (String, String) {
        let output = self.run_as(addr, who, args);
        assert!(
            output.status.success(),
            "`puente {}` as {who} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        texts(&output)
    }

    /// As [`Workspace::run_as`]; the command must fail. Returns stdout and stderr together.
    fn fails_as(&self, addr: SocketAddr, who: &str, args: &[&str]) -> String {
        fails(self.run_as(addr, who, args), args)
    }

    /// `puente ARGS` without a connection; must fail. Returns stdout and stderr together.
    fn fails(&self, args: &[&str]) -> String {
        fails(self.run(args), args)
    }

    /// Registers the agencies through AdminService.
    async fn register(&self, addr: SocketAddr) {
        for (id, region) in AGENCIES {
            register_agency(&self.pki, addr, id, region).await;
        }
    }

    /// `count` messages from `sender` to `recipient`.
    async fn send(
        &self,
        addr: SocketAddr,
        sender: &str,
        recipient: &str,
        count: usize,
    ) -> Vec<SendMessageResponse> {
        let mut client = self.pki.agency_client(sender, addr).await;
        let mut sent = Vec::new();
        for n in 0..count {
            let request = message(&uuid::Uuid::new_v4().to_string(), &[recipient]);
            let response = client.send_message(request).await;
            sent.push(
                response
                    .unwrap_or_else(|s| panic!("send #{n}: {s:?}"))
                    .into_inner(),
            );
        }
        sent
    }

    /// The log's verifier key, as its operators would publish it.
    async fn verifier_key(&self, addr: SocketAddr) -> String {
        let channel = self.pki.client_for(&auditor_spiffe("ana"), addr).await;
        AuditServiceClient::new(channel)
            .get_log_info(GetLogInfoRequest {})
            .await
            .expect("log info")
            .into_inner()
            .verifier_key
    }
}

fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn fails(output: Output, args: &[&str]) -> String {
    let (stdout, stderr) = texts(&output);
    assert!(
        !output.status.success(),
        "`puente {}` should have failed; it printed:\n{stdout}{stderr}",
        args.join(" ")
    );
    format!("{stdout}{stderr}")
}

fn audit_index(response: &SendMessageResponse) -> u64 {
    response
        .audit_index
        .expect("SendMessageResponse.audit_index")
}

fn state(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("state file")).expect("JSON state")
}

/// The JSON lines of `puente audit log --json`.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// A key of the same name as the log's, from another data directory's log.
fn foreign_verifier_key() -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    LogKey::load_or_generate(
        &dir.path().join("audit-log.key"),
        "puente.local/puente-audit",
    )
    .expect("another log key")
    .verifier_key()
}

/// `puente audit verify` pins the log key on first use, then checks consistency across runs and
/// refuses another log's key.
#[tokio::test]
async fn verify_pins_the_key_and_checks_consistency_across_runs() {
    let ws = Workspace::new();
    let server = ws.serve();
    ws.register(server.addr).await;
    ws.send(server.addr, "ES-CNP", "CO-DIJIN", 3).await;
    let key = ws.verifier_key(server.addr).await;

    // First run: trust on first use, said loudly, and pinned.
    let verify = ["audit", "verify", "--state", "state.json"];
    let (_, stderr) = ws.ok_as(server.addr, "auditor", &verify);
    assert!(
        stderr.contains("WARNING") && stderr.contains(&key),
        "{stderr}"
    );
    let first = state(&ws.path("state.json"));
    assert_eq!(first["verifier_key"], key.as_str());
    let first_size = first["size"].as_u64().expect("size");
    assert!(first_size >= 3 + AGENCIES.len() as u64);

    // Second run: the pinned key, and a proof that the log only grew.
    ws.send(server.addr, "CO-DIJIN", "ES-CNP", 3).await;
    let (stdout, stderr) = ws.ok_as(server.addr, "auditor", &verify);
    assert!(!stderr.contains("WARNING"), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "consistent with the checkpoint of {first_size} entries"
        )),
        "{stdout}"
    );
    let second = state(&ws.path("state.json"));
    assert!(second["size"].as_u64().expect("size") > first_size);

    // An agency may check checkpoints too, pinning the key it was given.
    ws.ok_as(
        server.addr,
        "es-cnp",
        &[
            "audit",
            "verify",
            "--state",
            "agency.json",
            "--verifier-key",
            &key,
        ],
    );

    // Another log's key: refused, against the pinned one and on its own.
    let other = foreign_verifier_key();
    ws.fails_as(
        server.addr,
        "auditor",
        &[&verify[..], &["--verifier-key", &other]].concat(),
    );
    let output = ws.fails_as(
        server.addr,
        "auditor",
        &[
            "audit",
            "verify",
            "--state",
            "fresh.json",
            "--verifier-key",
            &other,
        ],
    );
    assert!(output.contains("not the pinned key"), "{output}");
    assert!(!ws.path("fresh.json").exists());

    // A remembered checkpoint the log does not extend: a rewritten or a shrunk log.
    let mut rewritten = second.clone();
    rewritten["root"] = serde_json::Value::from("00".repeat(32));
    std::fs::write(ws.path("rewritten.json"), rewritten.to_string()).expect("write state");
    let output = ws.fails_as(
        server.addr,
        "auditor",
        &["audit", "verify", "--state", "rewritten.json"],
    );
    assert!(output.contains("NOT consistent"), "{output}");
    let mut shrunk = second.clone();
    shrunk["size"] = serde_json::Value::from(1_000_000u64);
    std::fs::write(ws.path("shrunk.json"), shrunk.to_string()).expect("write state");
    let output = ws.fails_as(
        server.addr,
        "auditor",
        &["audit", "verify", "--state", "shrunk.json"],
    );
    assert!(output.contains("SHRANK"), "{output}");
    // A failed run leaves the state as it was.
    assert_eq!(state(&ws.path("shrunk.json")), shrunk);
}

/// An entry altered on disk is found and named by `audit verify --full` and has no inclusion proof.
#[tokio::test]
async fn tamper_evidence_names_the_altered_entry() {
    let ws = Workspace::new();
    let server = ws.serve();
    ws.register(server.addr).await;
    let sent = ws.send(server.addr, "ES-CNP", "CO-DIJIN", 20).await;
    let altered = audit_index(&sent[9]);
    let verify = ["audit", "verify", "--full", "--state", "state.json"];
    let (stdout, _) = ws.ok_as(server.addr, "auditor", &verify);
    assert!(
        stdout.contains("entries rebuild the checkpoint's root"),
        "{stdout}"
    );

    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "puente serve exited with {status}");

    // Someone with access to the data directory rewrites who a message went to, in place (the
    // leaves file holds the leaves one after the other; `ends` says where each one ends).
    {
        use std::os::unix::fs::FileExt as _;
        let ends = std::fs::read(ws.path("data/audit/ends")).expect("read ends");
        let end_of = |index: u64| {
            let at = usize::try_from(index * 8).expect("offset");
            u64::from_be_bytes(ends[at..at + 8].try_into().expect("8 bytes"))
        };
        let (start, end) = (end_of(altered - 1), end_of(altered));
        let leaves = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(ws.path("data/audit/leaves"))
            .expect("open leaves");
        let mut leaf = vec![0u8; usize::try_from(end - start).expect("length")];
        leaves.read_exact_at(&mut leaf, start).expect("read leaf");
        let mut event = AuditEvent::decode(leaf.as_slice()).expect("audit event");
        assert_eq!(event.action, AuditAction::MessageAccepted as i32);
        assert_eq!(event.message_id, sent[9].message_id);
        assert_eq!(event.recipients, vec!["CO-DIJIN".to_string()]);
        event.recipients = vec!["BE-FPJ01".into()];
        let rewritten = event.encode_to_vec();
        assert_eq!(rewritten.len(), leaf.len(), "rewritten in place");
        leaves.write_all_at(&rewritten, start).expect("write");
        leaves.sync_all().expect("sync");
    }

    // The server still starts: its stored hashes, which it checks, are untouched.
    let server = ws.serve();
    let output = ws.fails_as(server.addr, "auditor", &verify);
    assert!(
        output.contains(&format!(
            "entry {altered} does not match the log's signed checkpoint"
        )),
        "{output}"
    );
    // Without --full the checkpoints are still consistent: only the entry changed.
    ws.ok_as(
        server.addr,
        "auditor",
        &["audit", "verify", "--state", "state.json"],
    );
    // The altered entry has no proof; its neighbour has.
    let index = altered.to_string();
    let output = ws.fails_as(
        server.addr,
        "auditor",
        &["audit", "prove", "--index", &index],
    );
    assert!(
        output.contains("NOT in the log's signed checkpoint"),
        "{output}"
    );
    let before = (altered - 1).to_string();
    ws.ok_as(
        server.addr,
        "auditor",
        &["audit", "prove", "--index", &before],
    );
}

/// `puente audit prove` verifies one entry for its parties, says what an unpinned proof is worth,
/// and refuses a foreign key.
#[tokio::test]
async fn prove_verifies_one_entry() {
    let ws = Workspace::new();
    let server = ws.serve();
    ws.register(server.addr).await;
    let sent = ws.send(server.addr, "ES-CNP", "CO-DIJIN", 5).await;
    let key = ws.verifier_key(server.addr).await;
    let receipt = &sent[2];
    let index = audit_index(receipt).to_string();

    let (stdout, _) = ws.ok_as(
        server.addr,
        "auditor",
        &["audit", "prove", "--index", &index, "--verifier-key", &key],
    );
    assert!(
        stdout.contains(&format!(
            "entry {index} is included in the checkpoint of size"
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&receipt.message_id), "{stdout}");

    // Sender and recipient can prove the acceptance by message id.
    for who in ["es-cnp", "co-dijin"] {
        let (stdout, _) = ws.ok_as(
            server.addr,
            who,
            &[
                "audit",
                "prove",
                "--message-id",
                &receipt.message_id,
                "--verifier-key",
                &key,
            ],
        );
        assert!(
            stdout.contains(&format!("entry {index} is included")),
            "{who}: {stdout}"
        );
    }

    // Unpinned, it still proves, but says what the proof is worth.
    let (_, stderr) = ws.ok_as(
        server.addr,
        "auditor",
        &["audit", "prove", "--index", &index],
    );
    assert!(stderr.contains("WARNING"), "{stderr}");
    // A pinned key of another log is refused.
    ws.fails_as(
        server.addr,
        "auditor",
        &[
            "audit",
            "prove",
            "--index",
            &index,
            "--verifier-key",
            &foreign_verifier_key(),
        ],
    );
    // An entry beyond the log.
    ws.fails_as(
        server.addr,
        "auditor",
        &["audit", "prove", "--index", "1000000"],
    );
    // One of --index and --message-id is needed.
    ws.fails_as(server.addr, "auditor", &["audit", "prove"]);
}

/// An agency cannot prove an audit entry it is not party to; the parties can.
#[tokio::test]
async fn an_agency_cannot_prove_an_entry_it_is_not_party_to() {
    let ws = Workspace::new();
    let server = ws.serve();
    ws.register(server.addr).await;
    let sent = ws.send(server.addr, "ES-CNP", "CO-DIJIN", 1).await;
    let index = audit_index(&sent[0]).to_string();

    let output = ws.fails_as(
        server.addr,
        "be-fpj",
        &["audit", "prove", "--index", &index],
    );
    assert!(output.contains("NotFound"), "{output}");
    ws.fails_as(
        server.addr,
        "be-fpj",
        &["audit", "prove", "--message-id", &sent[0].message_id],
    );
    // The parties can.
    ws.ok_as(
        server.addr,
        "es-cnp",
        &["audit", "prove", "--index", &index],
    );
}

/// An audit export never overwrites a file, holds only the agency's own entries, and verifies
/// offline against the pinned key.
#[tokio::test]
async fn export_and_verify_offline() {
    let ws = Workspace::new();
    let server = ws.serve();
    ws.register(server.addr).await;
    ws.send(server.addr, "ES-CNP", "CO-DIJIN", 6).await;
    ws.send(server.addr, "CO-DIJIN", "BE-FPJ", 4).await;
    let key = ws.verifier_key(server.addr).await;

    let (stdout, _) = ws.ok_as(
        server.addr,
        "auditor",
        &[
            "audit",
            "export",
            "--out",
            "log.jsonl",
            "--verifier-key",
            &key,
        ],
    );
    assert!(stdout.contains("log.jsonl"), "{stdout}");
    // An existing file is never overwritten.
    ws.fails_as(
        server.addr,
        "auditor",
        &["audit", "export", "--out", "log.jsonl"],
    );
    // An agency's export holds only its own entries.
    let (_, stderr) = ws.ok_as(
        server.addr,
        "es-cnp",
        &["audit", "export", "--out", "es-cnp.jsonl"],
    );
    assert!(stderr.contains("partial"), "{stderr}");
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(status.success());

    // Offline, with the pinned key.
    let (stdout, stderr) = {
        let output = ws.run(&[
            "audit",
            "verify",
            "--export",
            "log.jsonl",
            "--verifier-key",
            &key,
        ]);
        assert!(output.status.success(), "{:?}", texts(&output));
        texts(&output)
    };
    assert!(stdout.starts_with("OK"), "{stdout}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    // Without a pinned key it trusts the file's own key, loudly.
    let output = ws.run(&["audit", "verify", "--export", "log.jsonl"]);
    assert!(output.status.success());
    assert!(texts(&output).1.contains("WARNING"));
    // Another log's key.
    ws.fails(&[
        "audit",
        "verify",
        "--export",
        "log.jsonl",
        "--verifier-key",
        &foreign_verifier_key(),
    ]);
    // The agency's partial export cannot be checked against the root.
    let output = ws.fails(&[
        "audit",
        "verify",
        "--export",
        "es-cnp.jsonl",
        "--verifier-key",
        &key,
    ]);
    assert!(output.contains("partial"), "{output}");
    // Offline means no connection flags.
    ws.fails(&[
        "audit",
        "verify",
        "--export",
        "log.jsonl",
        "--addr",
        "127.0.0.1:1",
    ]);

    // One byte of one leaf flipped.
    let text = std::fs::read_to_string(ws.path("log.jsonl")).expect("export");
    let mut lines: Vec<serde_json::Value> = json_lines(&text);
    let altered = 7usize;
    let entry = &mut lines[altered + 1];
    assert_eq!(entry["index"], altered as u64);
    let mut leaf = BASE64
        .decode(entry["leaf"].as_str().expect("leaf"))
        .expect("base64");
    leaf[5] ^= 0x01;
    entry["leaf"] = BASE64.encode(&leaf).into();
    let tampered: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(ws.path("tampered.jsonl"), tampered).expect("write");
    let output = ws.fails(&[
        "audit",
        "verify",
        "--export",
        "tampered.jsonl",
        "--verifier-key",
        &key,
    ]);
    assert!(
        output.contains(&format!(
            "entry {altered} does not match the log's signed checkpoint"
        )),
        "{output}"
    );
}

/// `puente audit log` lists and filters entries as a table or JSON, an agency only what it is party
/// to.
#[tokio::test]
async fn log_lists_and_filters() {
    let ws = Workspace::new();
    let server = ws.serve();
    ws.register(server.addr).await;
    let from_spain = ws.send(server.addr, "ES-CNP", "CO-DIJIN", 2).await;
    let from_belgium = ws.send(server.addr, "BE-FPJ", "CO-DIJIN", 1).await;

    // Everything, as JSON: contiguous indices, and each leaf is the event shown.
    let (stdout, _) = ws.ok_as(server.addr, "auditor", &["audit", "log", "--json"]);
    let all = json_lines(&stdout);
    assert!(all.len() >= 6, "{stdout}");
    for (n, entry) in all.iter().enumerate() {
        assert_eq!(entry["index"], n as u64);
        let leaf = BASE64
            .decode(entry["leaf"].as_str().expect("leaf"))
            .expect("base64");
        let event = AuditEvent::decode(leaf.as_slice()).expect("leaf is an event");
        assert_eq!(entry["event"]["message_id"], event.message_id.as_str());
        assert_eq!(entry["event"]["actor"], event.actor.as_str());
    }

    let accepted = ["audit", "log", "--json", "--action", "message-accepted"];
    let (stdout, _) = ws.ok_as(server.addr, "auditor", &accepted);
    let entries = json_lines(&stdout);
    let indices: Vec<u64> = entries
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    let expected: Vec<u64> = from_spain
        .iter()
        .chain(&from_belgium)
        .map(audit_index)
        .collect();
    assert_eq!(indices, expected);
    assert!(entries
        .iter()
        .all(|e| e["event"]["action"] == "message-accepted"));

    let (stdout, _) = ws.ok_as(
        server.addr,
        "auditor",
        &[&accepted[..], &["--agency", "BE-FPJ"]].concat(),
    );
    let entries = json_lines(&stdout);
    assert_eq!(entries.len(), 1, "{stdout}");
    assert_eq!(entries[0]["event"]["sender"], "BE-FPJ");
    assert_eq!(entries[0]["event"]["recipients"][0], "CO-DIJIN");

    let id = &from_spain[1].message_id;
    let (stdout, _) = ws.ok_as(
        server.addr,
        "auditor",
        &["audit", "log", "--json", "--message-id", id],
    );
    let entries = json_lines(&stdout);
    assert!(!entries.is_empty());
    assert!(entries
        .iter()
        .all(|e| e["event"]["message_id"] == id.as_str()));

    let (stdout, _) = ws.ok_as(
        server.addr,
        "auditor",
        &["audit", "log", "--json", "--limit", "2", "--start", "1"],
    );
    let indices: Vec<u64> = json_lines(&stdout)
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indices, [1, 2]);
    let (stdout, _) = ws.ok_as(
        server.addr,
        "auditor",
        &["audit", "log", "--json", "--since", "2999-01-01"],
    );
    assert_eq!(stdout, "");
    ws.fails_as(
        server.addr,
        "auditor",
        &["audit", "log", "--since", "last tuesday"],
    );
    ws.fails_as(
        server.addr,
        "auditor",
        &["audit", "log", "--action", "sent"],
    );

    // The table.
    let (stdout, _) = ws.ok_as(server.addr, "auditor", &["audit", "log"]);
    let mut rows = stdout.lines();
    assert!(rows.next().expect("header").starts_with("INDEX"));
    let row = rows
        .find(|row| row.contains(from_belgium[0].message_id.as_str()))
        .expect("the Belgian message");
    assert!(
        row.contains("message-accepted") && row.contains("BE-FPJ"),
        "{row}"
    );

    // An agency sees only what it is party to, and may not ask for another agency's entries.
    let (stdout, _) = ws.ok_as(server.addr, "es-cnp", &["audit", "log", "--json"]);
    let entries = json_lines(&stdout);
    assert!(!entries.is_empty());
    for entry in &entries {
        let event = &entry["event"];
        let party = ["actor_agency", "sender", "subject_agency"]
            .iter()
            .any(|field| event[*field] == "ES-CNP")
            || event["recipients"]
                .as_array()
                .expect("recipients")
                .iter()
                .any(|r| r == "ES-CNP");
        assert!(party, "ES-CNP sees an entry it is not party to: {entry}");
    }
    assert!(!stdout.contains(from_belgium[0].message_id.as_str()));
    let output = ws.fails_as(
        server.addr,
        "es-cnp",
        &["audit", "log", "--agency", "CO-DIJIN"],
    );
    assert!(output.contains("PermissionDenied"), "{output}");
}

/// Every `puente audit` subcommand prints its help.
#[test]
fn every_audit_subcommand_has_help() {
    let ws = Workspace::new();
    for sub in ["log", "verify", "prove", "export"] {
        let output = ws.run(&["audit", sub, "--help"]);
        let (stdout, stderr) = texts(&output);
        assert!(output.status.success(), "audit {sub} --help: {stderr}");
        assert!(
            stdout.contains(&format!("Usage: puente audit {sub}")),
            "{stdout}"
        );
        assert!(
            stdout.contains("Example"),
            "audit {sub} --help has no example"
        );
    }
    let output = ws.run(&["audit", "--help"]);
    assert!(output.status.success());
    for sub in ["log", "verify", "prove", "export"] {
        assert!(texts(&output).0.contains(sub));
    }
}
