//! Running the `puente` binary as a client (an agency's, administrator's or auditor's shell)
//! in CLI tests.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// Every environment variable the `puente` binary reads as a client: the connection profile and
/// identity files, the CA passphrase, the matching key and the global logging flags. CLI tests
/// clear them all, so that the shell running the tests cannot change what a command does.
pub const CLIENT_ENV: [&str; 11] = [
    "PUENTE_PROFILE",
    "PUENTE_PROFILES",
    "PUENTE_ADDR",
    "PUENTE_CERT",
    "PUENTE_KEY",
    "PUENTE_CA",
    "PUENTE_SERVER_NAME",
    "PUENTE_CA_PASSPHRASE",
    "PUENTE_MATCHING_KEY",
    "PUENTE_LOG_FORMAT",
    "PUENTE_OTEL",
];

/// `puente ARGS` run in `dir` as from a client's shell: `RUST_LOG=warn` and none of
/// [`CLIENT_ENV`] (a test sets what it needs on the returned command).
pub fn puente_command<I, S>(dir: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_puente"));
    command.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for var in CLIENT_ENV {
        command.env_remove(var);
    }
    command
}
