//! `puente config check`: the effective configuration, checks of every file it names, and
//! errors that say what to fix — never key material in the output.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TestPki;

/// Runs `puente config check --config <dir>/puente.toml` in `dir`, with `env` set.
fn check(dir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_puente"));
    command
        .args(["config", "check", "--config", "puente.toml"])
        .current_dir(dir);
    for var in [
        "PUENTE_CONFIG",
        "PUENTE_TLS_CERT",
        "PUENTE_TLS_KEY",
        "PUENTE_CLIENT_CA",
        "PUENTE_CRL",
        "PUENTE_DATA_KEY",
    ] {
        command.env_remove(var);
    }
    for (var, value) in env {
        command.env(var, value);
    }
    command.output().expect("run puente")
}

/// A directory with the test PKI's server files and a configuration naming them.
fn workspace(pki: &TestPki, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    pki.write_server_files(dir.path());
    std::fs::write(
        dir.path().join("puente.toml"),
        format!(
            "listen = \"127.0.0.1:50999\"\ndata_dir = \"data\"\ntls_cert = \"server.pem\"\n\
             tls_key = \"server.key\"\nclient_ca = \"ca.pem\"\ndata_key = \"data.keys\"\n{extra}"
        ),
    )
    .expect("write config");
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `puente config check` prints a valid configuration and checks its files without ever printing
/// key material.
#[test]
fn a_valid_configuration_is_printed_and_its_files_checked_without_key_material() {
    let pki = TestPki::new();
    let dir = workspace(&pki, "[retention]\nmoney_laundering = \"5years\"\n");
    let output = check(dir.path(), &[]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "listen = \"127.0.0.1:50999\"",
        "money_laundering = \"5years\"",
        "sweep_interval = \"1m\"",
        "max_connections = 1024",
        "ok    tls_cert server.pem: certificate for localhost, 127.0.0.1",
        "ok    data_dir data: does not exist yet",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    let key_id = pki
        .data_keys
        .lines()
        .last()
        .and_then(|l| l.split(' ').next());
    let key = pki
        .data_keys
        .lines()
        .last()
        .and_then(|l| l.split(' ').nth(1));
    assert!(stdout.contains(&format!(
        "new bodies sealed with {}",
        key_id.expect("key id")
    )));
    for secret in [key.expect("key"), "PRIVATE KEY"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
    assert!(
        !dir.path().join("data").exists(),
        "the check creates nothing"
    );
}

/// Environment variables override the key paths of the configuration file.
#[test]
fn environment_variables_override_the_key_paths_of_the_file() {
    let pki = TestPki::new();
    let dir = workspace(&pki, "");
    let elsewhere = dir.path().join("rotated.keys");
    pki.write_data_keys(&elsewhere);
    let output = check(dir.path(), &[("PUENTE_DATA_KEY", &elsewhere)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains(&format!("data_key = \"{}\"", elsewhere.display())));
}

/// Each broken configuration or file fails `config check` with an error naming what to fix.
#[test]
fn a_broken_configuration_fails_naming_what_to_fix() {
    use std::os::unix::fs::PermissionsExt;
    let pki = TestPki::new();
    // (extra configuration, damage to the files, what the error must name)
    type Case = (&'static str, fn(&Path), &'static str);
    let cases: [Case; 6] = [
        ("listen_addr = \"0.0.0.0:1\"\n", |_| {}, "listen_addr"),
        (
            "[limits]\nmax_recipients = 0\n",
            |_| {},
            "limits.max_recipients",
        ),
        (
            "",
            |dir| {
                std::fs::set_permissions(
                    dir.join("data.keys"),
                    std::fs::Permissions::from_mode(0o644),
                )
                .expect("chmod")
            },
            "chmod 600",
        ),
        (
            "",
            |dir| {
                std::fs::set_permissions(
                    dir.join("server.key"),
                    std::fs::Permissions::from_mode(0o644),
                )
                .expect("chmod")
            },
            "chmod 600 server.key",
        ),
        (
            "",
            |dir| {
                std::fs::set_permissions(
                    dir.join("server.key"),
                    std::fs::Permissions::from_mode(0o620),
                )
                .expect("chmod")
            },
            "tls_key server.key",
        ),
        (
            "",
            |dir| std::fs::remove_file(dir.join("server.pem")).expect("rm"),
            "server.pem",
        ),
    ];
    for (extra, damage, named) in cases {
        let dir = workspace(&pki, extra);
        damage(dir.path());
        let output = check(dir.path(), &[]);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "accepted: {extra:?} / {named}");
        assert!(stderr.contains(named), "{named:?} not in: {stderr}");
    }
}
