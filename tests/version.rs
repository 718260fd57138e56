//! `puente --version` as an operator runs it: the real binary prints the package version and the
//! commit it was built from, so a deployed binary can be traced to its source.

use std::path::Path;
use std::process::Command;

/// What `puente ARGS` prints on stdout, after checking that it succeeded.
fn puente_stdout(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_puente"))
        .args(args)
        .output()
        .expect("run puente");
    assert!(
        output.status.success(),
        "puente {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The commit of a `puente X.Y.Z (commit C)` line, after checking the rest of its shape.
fn commit_of(version_line: &str) -> String {
    let rest = version_line
        .strip_prefix(concat!("puente ", env!("CARGO_PKG_VERSION"), " (commit "))
        .unwrap_or_else(|| panic!("unexpected version line {version_line:?}"));
    let commit = rest
        .strip_suffix(")\n")
        .unwrap_or_else(|| panic!("unexpected version line {version_line:?}"));
    commit.to_string()
}

/// `git ARGS` in the crate's directory, or `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `puente --version` names the package version and a commit.
#[test]
fn version_names_the_package_version_and_a_commit() {
    let commit = commit_of(&puente_stdout(&["--version"]));
    let hash = commit.strip_suffix("-dirty").unwrap_or(&commit);
    assert!(
        commit == "unknown"
            || ((7..=40).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit())),
        "the commit is neither a hash nor `unknown`: {commit:?}"
    );
}

/// Subcommands print the same version as `puente --version`.
#[test]
fn subcommands_print_the_same_version() {
    // clap names the subcommand (`puente-serve 0.1.0 (commit …)`); the rest is the same.
    let top = puente_stdout(&["--version"]);
    let serve = puente_stdout(&["serve", "--version"]);
    assert_eq!(
        serve
            .strip_prefix("puente-serve ")
            .expect("named puente-serve"),
        top.strip_prefix("puente ").expect("named puente")
    );
}

/// The commit `--version` names is the checkout's HEAD, or the one the builder gives.
#[test]
fn version_commit_is_the_checkouts_head() {
    let commit = commit_of(&puente_stdout(&["--version"]));
    let hash = commit.strip_suffix("-dirty").unwrap_or(&commit);
    // build.rs prefers a commit given by the builder (the Docker build passes one).
    if let Some(given) = std::env::var("PUENTE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
    {
        assert_eq!(commit, given);
        return;
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("crate directory");
    let is_checkout = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .is_some_and(|top| top == manifest_dir);
    if is_checkout {
        // Only the hash: the tree may have been edited since the build, which changes `-dirty`.
        let head = git(&["rev-parse", "--short=12", "HEAD"]).expect("git rev-parse HEAD");
        assert_eq!(hash, head);
    } else {
        assert_eq!(commit, "unknown");
    }
}
