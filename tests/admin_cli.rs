//! `puente admin` as an administrator uses it: the real binary in a temporary directory, a CA
//! made with `ca init`, certificates from `cert issue`, a real `puente serve` trusting that CA,
//! and agency clients (`puente agencies`) that are refused once their certificate is revoked
//! and the CRL published, also after a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{puente_command, ServerProcess};
use puente::identity::{Caller, Role};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A temporary working directory in which commands run, as in an administrator's shell.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        puente_command(self.dir.path(), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run puente")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "`puente {}` failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs a command that must fail with a non-zero exit status.
    fn fails(&self, args: &[&str]) -> Output {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "`puente {}` should have failed; it printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        output
    }

    /// `puente admin cert issue --dir ca ... --out PREFIX` for `subject` flags; returns the
    /// serial it printed.
    fn issue(&self, subject: &[&str], out: &str) -> String {
        let args = [
            &["admin", "cert", "issue", "--dir", "ca"][..],
            subject,
            &["--out", out],
        ]
        .concat();
        let stdout = self.ok(&args);
        serial_of(&stdout)
    }

    /// `puente serve` on this directory's data, server certificate and CA.
    fn serve(&self) -> ServerProcess {
        let (data, cert, key, ca, data_key) = (
            self.path("data"),
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca/ca.pem"),
            self.path("data.keys"),
        );
        if !data_key.exists() {
            self.ok(&["data-key", "new", "--keyring", "data.keys"]);
        }
        ServerProcess::start_with([
            "--data-key".as_ref(),
            data_key.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
            "--client-ca".as_ref(),
            ca.as_os_str(),
        ])
    }

    /// `puente agencies` as the holder of `who.pem`/`who.key`.
    fn agencies_as(&self, server: &ServerProcess, who: &str) -> Output {
        let connect = connection(server, who);
        let args: Vec<&str> = std::iter::once("agencies")
            .chain(connect.iter().map(String::as_str))
            .collect();
        self.run(&args)
    }

    /// Runs an admin command against `server` with the administrator's certificate.
    fn admin_ok(&self, server: &ServerProcess, args: &[&str]) -> String {
        let connect = connection(server, "admin");
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(connect.iter().map(String::as_str))
            .collect();
        self.ok(&args)
    }
}

/// Connection flags for the holder of `who.pem`/`who.key`.
fn connection(server: &ServerProcess, who: &str) -> Vec<String> {
    vec![
        "--addr".into(),
        server.addr.to_string(),
        "--cert".into(),
        format!("{who}.pem"),
        "--key".into(),
        format!("{who}.key"),
        "--ca".into(),
        "ca/ca.pem".into(),
    ]
}

/// The serial in the output of `cert issue`.
fn serial_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("serial:"))
        .unwrap_or_else(|| panic!("no serial in {stdout:?}"))
        .trim()
        .to_string()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

/// A CA, a server certificate, an administrator, ES-CNP and CO-DIJIN; a running server with
/// both agencies registered through the CLI.
fn exchange() -> (Workspace, ServerProcess) {
    let ws = Workspace::new();
    ws.ok(&["admin", "ca", "init", "--dir", "ca"]);
    ws.issue(
        &["--server", "localhost", "--server", "127.0.0.1"],
        "server",
    );
    ws.issue(&["--admin", "root"], "admin");
    ws.issue(&["--agency", "ES-CNP"], "es-cnp");
    ws.issue(&["--agency", "CO-DIJIN"], "co-dijin");
    let server = ws.serve();
    for (id, name, country, region) in [
        ("ES-CNP", "Policía Nacional", "ES", "eu"),
        ("CO-DIJIN", "DIJIN", "CO", "celac"),
    ] {
        ws.admin_ok(
            &server,
            &[
                "admin",
                "agency",
                "add",
                "--id",
                id,
                "--name",
                name,
                "--country",
                country,
                "--region",
                region,
            ],
        );
    }
    (ws, server)
}

/// The row of agency `id` in `puente admin agency list`: id, country, region, status.
fn listed_agency(ws: &Workspace, server: &ServerProcess, id: &str) -> Vec<String> {
    let table = ws.admin_ok(server, &["admin", "agency", "list"]);
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("{id} not listed in\n{table}"))
        .split_whitespace()
        .take(4)
        .map(str::to_string)
        .collect()
}

/// `puente admin ca init` never overwrites an existing CA, and a refused issue is not in the
/// ledger.
#[test]
fn ca_init_refuses_to_overwrite() {
    let ws = Workspace::new();
    ws.ok(&["admin", "ca", "init", "--dir", "ca"]);
    let ca_pem = std::fs::read(ws.path("ca/ca.pem")).unwrap();
    let ca_key = std::fs::read(ws.path("ca/ca.key")).unwrap();
    ws.fails(&["admin", "ca", "init", "--dir", "ca"]);
    assert_eq!(std::fs::read(ws.path("ca/ca.pem")).unwrap(), ca_pem);
    assert_eq!(std::fs::read(ws.path("ca/ca.key")).unwrap(), ca_key);
    #[cfg(unix)]
    assert_eq!(mode(&ws.path("ca/ca.key")), 0o600);

    ws.issue(&["--agency", "ES-CNP"], "es-cnp");
    #[cfg(unix)]
    assert_eq!(mode(&ws.path("es-cnp.key")), 0o600);
    let cert = std::fs::read(ws.path("es-cnp.pem")).unwrap();
    ws.fails(&[
        "admin", "cert", "issue", "--dir", "ca", "--agency", "ES-CNP", "--out", "es-cnp",
    ]);
    assert_eq!(std::fs::read(ws.path("es-cnp.pem")).unwrap(), cert);
    // A refused issue is not recorded in the ledger.
    let listed = ws.ok(&["admin", "cert", "list", "--dir", "ca", "--json"]);
    assert_eq!(listed.lines().count(), 1);
}

/// `cert issue` never issues a certificate that outlives its CA.
#[test]
fn issued_certificates_do_not_outlive_the_ca() {
    let ws = Workspace::new();
    ws.ok(&["admin", "ca", "init", "--dir", "ca", "--days", "30"]);
    ws.fails(&[
        "admin", "cert", "issue", "--dir", "ca", "--agency", "ES-CNP", "--out", "long",
    ]);
    assert!(!ws.path("long.pem").exists());
    ws.issue(&["--agency", "ES-CNP", "--days", "29"], "short");
}

/// An encrypted CA key is used only with its passphrase (file, named variable or
/// PUENTE_CA_PASSPHRASE); listing needs none.
#[test]
fn encrypted_ca_needs_its_passphrase() {
    const PASSPHRASE: &str = "correct horse battery staple";
    let ws = Workspace::new();
    let init = ws
        .command(&[
            "admin",
            "ca",
            "init",
            "--dir",
            "ca",
            "--passphrase-env",
            "CA_PASS",
        ])
        .env("CA_PASS", PASSPHRASE)
        .output()
        .unwrap();
    assert!(init.status.success());
    let key = std::fs::read_to_string(ws.path("ca/ca.key")).unwrap();
    assert!(key.contains("ENCRYPTED PRIVATE KEY"));

    let issue = [
        "admin", "cert", "issue", "--dir", "ca", "--agency", "ES-CNP",
    ];
    let without = ws.fails(&[&issue[..], &["--out", "a"]].concat());
    assert!(!ws.path("a.pem").exists() && !ws.path("a.key").exists());
    std::fs::write(ws.path("wrong"), "not it\n").unwrap();
    ws.fails(&[&issue[..], &["--out", "b", "--passphrase-file", "wrong"]].concat());
    // --passphrase-env naming a variable that is not set is an error, not "no passphrase".
    ws.fails(&[&issue[..], &["--out", "c", "--passphrase-env", "UNSET_VAR"]].concat());

    let mut outputs = vec![without];
    outputs.push(
        ws.command(&[&issue[..], &["--out", "d", "--passphrase-env", "CA_PASS"]].concat())
            .env("CA_PASS", PASSPHRASE)
            .output()
            .unwrap(),
    );
    outputs.push(
        ws.command(&[&issue[..], &["--out", "e"]].concat())
            .env("PUENTE_CA_PASSPHRASE", PASSPHRASE)
            .output()
            .unwrap(),
    );
    std::fs::write(ws.path("pass"), format!("{PASSPHRASE}\n")).unwrap();
    outputs.push(
        ws.command(&[&issue[..], &["--out", "f", "--passphrase-file", "pass"]].concat())
            .output()
            .unwrap(),
    );
    for (i, output) in outputs.iter().enumerate().skip(1) {
        assert!(
            output.status.success(),
            "issue #{i} with the passphrase failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for name in ["d", "e", "f"] {
        assert!(ws.path(&format!("{name}.pem")).exists());
    }
    for output in outputs.iter().chain([&init]) {
        for stream in [&output.stdout, &output.stderr] {
            assert!(
                !String::from_utf8_lossy(stream).contains(PASSPHRASE),
                "the passphrase was printed"
            );
        }
    }
    // Listing reads only the ledger: no passphrase needed.
    let listed = ws.ok(&["admin", "cert", "list", "--dir", "ca", "--json"]);
    assert_eq!(listed.lines().count(), 3);
}

/// A certificate issued by the CLI connects, is refused once revoked and the CRL published, also
/// after a restart without --crl.
#[test]
fn issue_connect_revoke_refused() {
    let (ws, server) = exchange();
    assert!(ws.agencies_as(&server, "es-cnp").status.success());
    assert!(ws.agencies_as(&server, "co-dijin").status.success());

    let revoked = ws.ok(&[
        "admin", "cert", "revoke", "--dir", "ca", "--agency", "ES-CNP",
    ]);
    assert_eq!(revoked.lines().count(), 1, "one certificate revoked");
    // Recorded, not enforced yet.
    assert!(ws.agencies_as(&server, "es-cnp").status.success());

    ws.admin_ok(
        &server,
        &[
            "admin",
            "crl",
            "--dir",
            "ca",
            "--out",
            "crl.pem",
            "--publish",
        ],
    );
    assert!(std::fs::read_to_string(ws.path("crl.pem"))
        .unwrap()
        .contains("BEGIN X509 CRL"));
    assert!(!ws.agencies_as(&server, "es-cnp").status.success());
    assert!(ws.agencies_as(&server, "co-dijin").status.success());

    // The server kept the CRL: restarted without --crl, it still refuses ES-CNP.
    assert!(server.terminate().success());
    let server = ws.serve();
    assert!(!ws.agencies_as(&server, "es-cnp").status.success());
    assert!(ws.agencies_as(&server, "co-dijin").status.success());

    // A new certificate for the agency works.
    ws.issue(&["--agency", "ES-CNP"], "es-cnp-2");
    assert!(ws.agencies_as(&server, "es-cnp-2").status.success());
}

/// Signing a CSR takes only its public key (never the CA or role it asks for), and a tampered CSR
/// is refused.
#[test]
fn csr_only_public_key_is_used() {
    let ws = Workspace::new();
    ws.ok(&["admin", "ca", "init", "--dir", "ca"]);
    // The requester asks to be a CA and an administrator.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(common::uri_san("spiffe://puente.local/admin/root"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    std::fs::write(ws.path("req.pem"), csr).unwrap();

    let serial = ws.issue(&["--agency", "CO-DIJIN", "--csr", "req.pem"], "x");
    assert!(ws.path("x.pem").exists());
    assert!(!ws.path("x.key").exists(), "no key is made for a CSR");

    let pem = std::fs::read(ws.path("x.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let caller = Caller::from_certificate(&der, "puente.local").unwrap();
    assert!(matches!(caller.role, Role::Agency(ref id) if id.as_str() == "CO-DIJIN"));
    assert_eq!(caller.serial, serial);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(!cert.is_ca());
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice()
    );

    // The requester's own key next to the output prefix is left alone.
    std::fs::write(ws.path("y.key"), key.serialize_pem()).unwrap();
    ws.issue(&["--agency", "CO-DIJIN", "--csr", "req.pem"], "y");
    assert_eq!(
        std::fs::read_to_string(ws.path("y.key")).unwrap(),
        key.serialize_pem()
    );
    // A tampered CSR is refused.
    std::fs::write(
        ws.path("bad.pem"),
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    ws.fails(&[
        "admin", "cert", "issue", "--dir", "ca", "--agency", "CO-DIJIN", "--csr", "bad.pem",
        "--out", "z",
    ]);
    assert!(!ws.path("z.pem").exists());
}

/// `cert list` flags expiring and revoked certificates; revoking again changes nothing and is no
/// error.
#[test]
fn cert_list_flags_expiring_and_revoked() {
    let ws = Workspace::new();
    ws.ok(&["admin", "ca", "init", "--dir", "ca"]);
    let valid = ws.issue(&["--agency", "ES-CNP"], "es-cnp");
    let soon = ws.issue(&["--agency", "CO-DIJIN", "--days", "10"], "co-dijin");
    let revoked = ws.issue(&["--agency", "BE-FPJ"], "be-fpj");
    ws.ok(&[
        "admin",
        "cert",
        "revoke",
        "--dir",
        "ca",
        "--serial",
        &revoked.to_uppercase(),
        "--reason",
        "key-compromise",
    ]);
    // Revoking again changes nothing and is no error.
    ws.ok(&[
        "admin", "cert", "revoke", "--dir", "ca", "--agency", "BE-FPJ",
    ]);
    ws.fails(&[
        "admin", "cert", "revoke", "--dir", "ca", "--agency", "PT-PJ",
    ]);

    let json = ws.ok(&["admin", "cert", "list", "--dir", "ca", "--json"]);
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 3);
    let row = |serial: &str| {
        rows.iter()
            .find(|row| row["serial"] == serial)
            .unwrap_or_else(|| panic!("{serial} not listed"))
    };
    let valid = row(&valid);
    assert_eq!(valid["status"], "valid");
    assert_eq!(valid["identity"], "spiffe://puente.local/agency/ES-CNP");
    assert_eq!(valid["expires_soon"], false);
    assert_eq!(valid["revoked"], false);
    assert_eq!(valid["revocation_reason"], serde_json::Value::Null);
    assert!((364..=365).contains(&valid["days_left"].as_i64().unwrap()));
    let soon = row(&soon);
    assert_eq!(soon["status"], "expires-soon");
    assert_eq!(soon["expires_soon"], true);
    assert!((9..=10).contains(&soon["days_left"].as_i64().unwrap()));
    let revoked = row(&revoked);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["revocation_reason"], "key-compromise");
    for row in &rows {
        let not_after = row["not_after"].as_str().unwrap();
        time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("not_after {not_after:?} is not RFC 3339: {e}"));
    }

    let table = ws.ok(&["admin", "cert", "list", "--dir", "ca"]);
    let line_of = |serial: &serde_json::Value| {
        let serial = serial.as_str().unwrap();
        table
            .lines()
            .find(|line| line.starts_with(serial))
            .unwrap_or_else(|| panic!("{serial} not in\n{table}"))
            .to_string()
    };
    assert!(table.starts_with("SERIAL"));
    assert!(line_of(&soon["serial"]).ends_with("EXPIRES SOON"));
    assert!(line_of(&revoked["serial"]).ends_with("revoked (key-compromise)"));
    assert!(line_of(&valid["serial"]).ends_with("valid"));
}

/// Agencies are suspended and resumed from the CLI, other changes keep a suspension, and only
/// administrators may.
#[test]
fn agency_suspend_and_resume_from_the_cli() {
    let (ws, server) = exchange();
    assert!(ws.agencies_as(&server, "co-dijin").status.success());

    ws.admin_ok(&server, &["admin", "agency", "suspend", "CO-DIJIN"]);
    assert_eq!(listed_agency(&ws, &server, "CO-DIJIN")[3], "SUSPENDED");
    assert!(!ws.agencies_as(&server, "co-dijin").status.success());
    assert!(ws.agencies_as(&server, "es-cnp").status.success());

    // Changing other fields keeps the suspension.
    ws.admin_ok(
        &server,
        &[
            "admin",
            "agency",
            "update",
            "--id",
            "CO-DIJIN",
            "--country",
            "co",
            "--region",
            "international",
        ],
    );
    assert_eq!(
        listed_agency(&ws, &server, "CO-DIJIN"),
        ["CO-DIJIN", "CO", "INTERNATIONAL", "SUSPENDED"]
    );

    ws.admin_ok(&server, &["admin", "agency", "resume", "CO-DIJIN"]);
    assert_eq!(listed_agency(&ws, &server, "CO-DIJIN")[3], "ACTIVE");
    assert!(ws.agencies_as(&server, "co-dijin").status.success());

    // Only administrators administer.
    let connect = connection(&server, "es-cnp");
    let as_agency: Vec<&str> = ["admin", "agency", "suspend", "CO-DIJIN"]
        .into_iter()
        .chain(connect.iter().map(String::as_str))
        .collect();
    ws.fails(&as_agency);
    assert_eq!(listed_agency(&ws, &server, "CO-DIJIN")[3], "ACTIVE");
}

/// Every `puente admin` subcommand prints its help.
#[test]
fn every_subcommand_has_help() {
    let ws = Workspace::new();
    let paths: [&[&str]; 15] = [
        &[],
        &["admin"],
        &["admin", "ca"],
        &["admin", "ca", "init"],
        &["admin", "cert"],
        &["admin", "cert", "issue"],
        &["admin", "cert", "list"],
        &["admin", "cert", "revoke"],
        &["admin", "crl"],
        &["admin", "agency"],
        &["admin", "agency", "add"],
        &["admin", "agency", "update"],
        &["admin", "agency", "suspend"],
        &["admin", "agency", "resume"],
        &["admin", "agency", "list"],
    ];
    for path in paths {
        let stdout = ws.ok(&[path, &["--help"]].concat());
        assert!(stdout.contains("Usage:"), "{path:?}: {stdout}");
    }
}

/// Copies a directory of plain files (a CA directory), as an administrator's backup would.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the CA directory") {
        let entry = entry.expect("directory entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
    }
}

/// The CRL number the ledger of CA directory `dir` records.
fn ledger_crl_number(ws: &Workspace, dir: &str) -> u64 {
    let ledger: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path(&format!("{dir}/ledger.json"))).expect("read ledger"),
    )
    .expect("ledger is JSON");
    ledger["crl_number"].as_u64().expect("crl_number")
}

/// The issue 14 attack: a copy of the CA directory taken before a key-compromise revocation
/// publishes again and again; the server refuses every attempt (its CRL would drop a revoked
/// certificate that has not expired), the CLI never says to retry, the stale copy's CRL number
/// does not climb, and the compromised agency stays locked out.
#[test]
fn a_stale_ca_directory_cannot_unrevoke_a_compromised_certificate() {
    let (ws, server) = exchange();
    copy_dir(&ws.path("ca"), &ws.path("ca-old"));
    ws.ok(&[
        "admin",
        "cert",
        "revoke",
        "--dir",
        "ca",
        "--agency",
        "ES-CNP",
        "--reason",
        "key-compromise",
    ]);
    ws.admin_ok(
        &server,
        &[
            "admin",
            "crl",
            "--dir",
            "ca",
            "--out",
            "crl.pem",
            "--publish",
        ],
    );
    assert!(!ws.agencies_as(&server, "es-cnp").status.success());

    let connect = connection(&server, "admin");
    let stale: Vec<&str> = [
        "admin",
        "crl",
        "--dir",
        "ca-old",
        "--out",
        "old.pem",
        "--publish",
    ]
    .into_iter()
    .chain(connect.iter().map(String::as_str))
    .collect();
    for attempt in 0..10 {
        if attempt == 5 {
            // Writing a CRL file from the copy puts its number in force there: the next
            // publication carries a number above the server's and still drops the revocation.
            ws.ok(&["admin", "crl", "--dir", "ca-old", "--out", "old-file.pem"]);
        }
        let output = ws.fails(&stale);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("again"),
            "attempt {attempt}: the CLI told the administrator to retry:\n{stderr}"
        );
        assert!(
            stderr.contains("ca-old") || stderr.contains("restore"),
            "attempt {attempt}: the refusal does not say what to do:\n{stderr}"
        );
        assert!(!ws.agencies_as(&server, "es-cnp").status.success());
    }
    assert_eq!(
        ledger_crl_number(&ws, "ca-old"),
        1,
        "refused publications advanced the stale copy's CRL number"
    );
    assert!(!ws.agencies_as(&server, "es-cnp").status.success());
    assert!(ws.agencies_as(&server, "co-dijin").status.success());

    // After a restart too.
    assert!(server.terminate().success());
    let server = ws.serve();
    assert!(!ws.agencies_as(&server, "es-cnp").status.success());
}

/// Un-revoking on purpose works from the same copy, only with --allow-unrevoke and a reason.
#[test]
fn allow_unrevoke_with_a_reason_makes_a_revoked_certificate_valid_again() {
    let (ws, server) = exchange();
    copy_dir(&ws.path("ca"), &ws.path("ca-old"));
    ws.ok(&[
        "admin",
        "cert",
        "revoke",
        "--dir",
        "ca",
        "--agency",
        "ES-CNP",
        "--reason",
        "superseded",
    ]);
    ws.admin_ok(
        &server,
        &[
            "admin",
            "crl",
            "--dir",
            "ca",
            "--out",
            "crl.pem",
            "--publish",
        ],
    );
    assert!(!ws.agencies_as(&server, "es-cnp").status.success());
    // Without a reason the flag is refused by the CLI itself.
    ws.fails(&[
        "admin",
        "crl",
        "--dir",
        "ca-old",
        "--out",
        "old.pem",
        "--publish",
        "--allow-unrevoke",
    ]);
    ws.ok(&["admin", "crl", "--dir", "ca-old", "--out", "old.pem"]);
    ws.admin_ok(
        &server,
        &[
            "admin",
            "crl",
            "--dir",
            "ca-old",
            "--out",
            "old.pem",
            "--publish",
            "--allow-unrevoke",
            "--reason",
            "revoked the wrong agency",
        ],
    );
    assert!(ws.agencies_as(&server, "es-cnp").status.success());
}
