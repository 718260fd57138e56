//! `puente match` end to end with the real binary: a matching key is made, one agency publishes
//! a CSV file of identifiers, another queries them written differently and finds the holder,
//! the holder's inbox tells it who asked, and withdrawn identifiers no longer match. The clear
//! values never reach the server's disk.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use common::{agency_spiffe, puente_command, register_agency, ServerProcess, TestPki};
use puente::pb::v1::Region;

const AGENCIES: [(&str, Region); 2] = [("ES-CNP", Region::Eu), ("CO-DIJIN", Region::Celac)];

/// What ES-CNP holds: a firearm and an IBAN, with its own references.
const PUBLISHED: &str = "\
kind,value,reference
firearm,Glock|BXR 4471,ES-2026-0001
iban,\"ES91 2100 0418 4502 0005 1332\",\"ES-2026-0002, account\"
";

/// A temporary directory with the test PKI's files (`server.pem`, `server.key`, `ca.pem`, and
/// `<ID>.pem`/`<ID>.key` per agency), where the binary runs.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(pki: &TestPki) -> Workspace {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ws = Workspace { dir };
        pki.write_server_files(ws.dir.path());
        for (id, _) in AGENCIES {
            let (cert, key) = pki.issue(&agency_spiffe(id));
            ws.write(&format!("{id}.pem"), &cert);
            ws.write(&format!("{id}.key"), &key);
        }
        ws
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(name), text).expect("write file");
    }

    /// Runs `puente ARGS` with no connection flags.
    fn run(&self, args: &[&str]) -> Output {
        puente_command(self.path(), args)
            .output()
            .expect("run puente")
    }

    /// Runs `puente ARGS` connected to `addr` as agency `id`.
    fn run_as(&self, addr: SocketAddr, id: &str, args: &[&str]) -> Output {
        let (addr, cert, key) = (addr.to_string(), format!("{id}.pem"), format!("{id}.key"));
        let mut all = args.to_vec();
        all.extend([
            "--addr", &addr, "--cert", &cert, "--key", &key, "--ca", "ca.pem",
        ]);
        self.run(&all)
    }

    /// As [`Workspace::run_as`]; the command must succeed. Returns its stdout.
    fn ok_as(&self, addr: SocketAddr, id: &str, args: &[&str]) -> String {
        ok(self.run_as(addr, id, args), args)
    }

    /// Queries one identifier as CO-DIJIN; returns the `--json` document.
    fn query(&self, addr: SocketAddr, kind: &str, value: &str) -> serde_json::Value {
        let printed = self.ok_as(
            addr,
            "CO-DIJIN",
            &[
                "match",
                "query",
                "--matching-key",
                "matching.key",
                "--kind",
                kind,
                "--value",
                value,
                "--case",
                "CO-2026-17",
                "--legal-basis",
                "Art. 7 Decision 2008/615/JHA",
                "--json",
            ],
        );
        serde_json::from_str(&printed).expect("query --json prints JSON")
    }
}

fn ok(output: Output, args: &[&str]) -> String {
    assert!(
        output.status.success(),
        "`puente {}` failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn failed(output: Output, args: &[&str]) -> String {
    assert!(
        !output.status.success(),
        "`puente {}` succeeded:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).expect("UTF-8 output")
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).expect("read dir").any(|entry| {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            any_file_contains(&path, needle)
        } else {
            let data = std::fs::read(&path).expect("read file");
            data.windows(needle.len()).any(|w| w == needle)
        }
    })
}

/// `puente match keygen` writes an owner-only key, never overwrites one, and refuses epoch 0.
#[test]
fn keygen_writes_a_private_key_and_never_overwrites_it() {
    let pki = TestPki::new();
    let ws = Workspace::new(&pki);
    let args = ["match", "keygen", "--out", "matching.key", "--epoch", "3"];
    let printed = ok(ws.run(&args), &args);
    assert!(printed.contains("out of band"), "{printed}");
    let written = std::fs::read_to_string(ws.path().join("matching.key")).expect("key file");
    assert!(written.contains("epoch = 3"), "{written}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ws.path().join("matching.key"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    failed(ws.run(&args), &args);
    let after = std::fs::read_to_string(ws.path().join("matching.key")).expect("key file");
    assert_eq!(after, written, "the key is not overwritten");

    let zero = ["match", "keygen", "--out", "zero.key", "--epoch", "0"];
    failed(ws.run(&zero), &zero);
    assert!(!ws.path().join("zero.key").exists());
}

/// A publication file with invalid lines is refused before connecting, each bad line named.
#[test]
fn a_file_with_an_invalid_line_is_refused_before_connecting() {
    let pki = TestPki::new();
    let ws = Workspace::new(&pki);
    let keygen = ["match", "keygen", "--out", "matching.key"];
    ok(ws.run(&keygen), &keygen);
    ws.write(
        "ids.csv",
        "firearm,Glock|BXR4471\nphone,300 123 4567\nknife,K-1\n",
    );
    // Nothing listens on port 9: the file is refused before any connection is tried.
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let args = [
        "match",
        "publish",
        "--matching-key",
        "matching.key",
        "--file",
        "ids.csv",
    ];
    let stderr = failed(ws.run_as(addr, "ES-CNP", &args), &args);
    assert!(
        stderr.contains("2 invalid line(s); nothing was sent"),
        "{stderr}"
    );
    assert!(stderr.contains("line 2: invalid phone"), "{stderr}");
    assert!(
        stderr.contains("line 3: unknown kind \"knife\""),
        "{stderr}"
    );
}

/// Registers [`AGENCIES`] with an administrator's connection, closed on return: an open one would
/// hold up the server's shutdown until its drain timeout.
fn register_agencies(pki: &TestPki, addr: SocketAddr) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        for (id, region) in AGENCIES {
            register_agency(pki, addr, id, region).await;
        }
    });
}

/// Through the CLI an agency finds who holds a firearm written differently, and the holder is told.
#[test]
fn an_agency_finds_who_holds_a_firearm_written_differently_and_the_holder_is_told() {
    let pki = TestPki::new();
    let ws = Workspace::new(&pki);
    let server = ServerProcess::start(ws.path());
    register_agencies(&pki, server.addr);
    let keygen = ["match", "keygen", "--out", "matching.key"];
    ok(ws.run(&keygen), &keygen);

    // ES-CNP publishes a firearm and an IBAN.
    ws.write("seized.csv", PUBLISHED);
    let publish = [
        "match",
        "publish",
        "--matching-key",
        "matching.key",
        "--file",
        "seized.csv",
        "--case-reference",
        "ES-OP-PUENTE",
    ];
    let printed = ws.ok_as(server.addr, "ES-CNP", &publish);
    assert!(printed.contains("published 2 identifier(s)"), "{printed}");
    assert!(printed.contains("2 new"), "{printed}");
    // Publishing again is idempotent.
    let printed = ws.ok_as(server.addr, "ES-CNP", &publish);
    assert!(printed.contains("0 new, 2 already published"), "{printed}");

    // CO-DIJIN writes the serial in lower case with dashes: the same firearm.
    let answer = ws.query(server.addr, "firearm", "glock|bxr-4471");
    let result = &answer["results"][0];
    assert_eq!(result["hit"], true, "{answer}");
    assert_eq!(result["value"], "glock|bxr-4471", "the value as typed");
    assert_eq!(result["canonical"], "GLOCK|BXR4471");
    assert_eq!(result["holders"][0]["agencyId"], "ES-CNP", "{answer}");
    let match_reference = result["holders"][0]["matchReference"]
        .as_str()
        .expect("a match reference")
        .to_string();
    assert!(!match_reference.is_empty());
    assert!(answer["remainingQuota"].is_u64(), "{answer}");

    // Another serial is no hit.
    let answer = ws.query(server.addr, "firearm", "Glock|BXR-4472");
    assert_eq!(answer["results"][0]["hit"], false, "{answer}");
    assert_eq!(answer["results"][0]["holders"], serde_json::json!([]));

    // The table form, from a file: the IBAN grouped differently hits, the phone does not.
    ws.write(
        "asked.csv",
        "iban,es9121000418450200051332\nphone,+57 300 123 4567\n",
    );
    let table = ws.ok_as(
        server.addr,
        "CO-DIJIN",
        &[
            "match",
            "query",
            "--matching-key",
            "matching.key",
            "--file",
            "asked.csv",
            "--case",
            "CO-2026-17",
            "--legal-basis",
            "Art. 7 Decision 2008/615/JHA",
        ],
    );
    let row = |value: &str| {
        table
            .lines()
            .find(|l| l.contains(value))
            .unwrap_or_else(|| panic!("no row for {value}:\n{table}"))
            .to_string()
    };
    assert!(row("es9121000418450200051332").contains("HIT"), "{table}");
    assert!(
        row("es9121000418450200051332").contains("ES-CNP"),
        "{table}"
    );
    assert!(row("+57 300 123 4567").contains("no hit"), "{table}");
    assert!(table.contains("remaining query quota:"), "{table}");

    // ES-CNP's inbox says who matched its firearm, why, and under which of its references.
    let inbox = ws.ok_as(server.addr, "ES-CNP", &["inbox", "--json"]);
    let hits: Vec<serde_json::Value> = inbox
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|e| e["message"]["kind"] == "MESSAGE_KIND_MATCH_HIT")
        .collect();
    let firearm_hit = hits
        .iter()
        .map(|e| &e["message"]["matchHit"])
        .find(|n| n["matchReference"] == match_reference.as_str())
        .unwrap_or_else(|| panic!("no MATCH_HIT entry for the firearm:\n{inbox}"));
    assert_eq!(firearm_hit["queryingAgency"], "CO-DIJIN");
    assert_eq!(firearm_hit["caseReference"], "CO-2026-17");
    assert_eq!(firearm_hit["legalBasis"], "Art. 7 Decision 2008/615/JHA");
    assert_eq!(firearm_hit["yourReference"], "ES-2026-0001");
    assert_eq!(firearm_hit["kind"], "IDENTIFIER_KIND_FIREARM");
    assert!(
        hits.iter()
            .any(|e| e["message"]["matchHit"]["yourReference"] == "ES-2026-0002, account"),
        "the IBAN hit too:\n{inbox}"
    );
    // The querier is not told anything of the kind.
    let inbox = ws.ok_as(server.addr, "CO-DIJIN", &["inbox", "--json"]);
    assert!(!inbox.contains("MESSAGE_KIND_MATCH_HIT"), "{inbox}");

    // Withdrawn, the firearm no longer matches.
    ws.write("withdrawn.csv", "firearm,GLOCK|BXR4471\n");
    let printed = ws.ok_as(
        server.addr,
        "ES-CNP",
        &[
            "match",
            "withdraw",
            "--matching-key",
            "matching.key",
            "--file",
            "withdrawn.csv",
        ],
    );
    assert!(printed.contains("withdrew 1 of 1"), "{printed}");
    let answer = ws.query(server.addr, "firearm", "glock|bxr-4471");
    assert_eq!(answer["results"][0]["hit"], false, "{answer}");

    server.terminate();
    // Only blinded values reached the server: no clear value is anywhere in its data.
    for clear in [
        "BXR4471",
        "BXR 4471",
        "bxr-4471",
        "ES9121000418450200051332",
    ] {
        assert!(
            !any_file_contains(&ws.path().join("data"), clear.as_bytes()),
            "{clear} is in the server's data"
        );
    }
}
