//! [`ServerProcess`]: the `puente serve` binary as a child process, for what only a real process
//! shows (signals, exit status, memory, logs on stderr).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::eventually_within;

/// A `puente serve` child process on `127.0.0.1:<ephemeral>`, with its metrics endpoint on
/// another ephemeral loopback port. Killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its metrics endpoint listens.
    pub metrics_addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the binary with the files [`TestPki::write_server_files`] wrote to `dir` and data
    /// directory `dir/data` (see [`ServerProcess::file_args`]).
    pub fn start(dir: &Path) -> ServerProcess {
        ServerProcess::start_with(ServerProcess::file_args(dir))
    }

    /// The flags naming the files [`TestPki::write_server_files`] wrote to `dir` (`server.pem`,
    /// `server.key`, client CA `ca.pem`, data keyring `data.keys`) and data directory `dir/data`.
    pub fn file_args(dir: &Path) -> Vec<OsString> {
        [
            ("--data-dir", "data"),
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
            ("--client-ca", "ca.pem"),
            ("--data-key", "data.keys"),
        ]
        .into_iter()
        .flat_map(|(flag, name)| [OsString::from(flag), dir.join(name).into_os_string()])
        .collect()
    }

    /// Starts `puente serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0` with these
    /// further arguments, logging warnings to the test's stderr; see [`ServerProcess::spawn`].
    pub fn start_with<I, S>(args: I) -> ServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        ServerProcess::spawn(ServerProcess::command(args), "warn", Stdio::inherit())
    }

    /// `puente serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0` with these further
    /// arguments.
    pub fn command<I, S>(args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_puente"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(args);
        command
    }

    /// Starts `command`, which must end up running `puente serve` with both listeners on port 0
    /// in the same process (e.g. [`ServerProcess::command`], or a shell that `exec`s it), with
    /// `RUST_LOG=rust_log` and its stderr to `stderr`, and reads the bound addresses from the
    /// first two lines of its stdout.
    pub fn spawn(mut command: Command, rust_log: &str, stderr: Stdio) -> ServerProcess {
        let mut child = command
            .env("RUST_LOG", rust_log)
            .env_remove("PUENTE_CONFIG")
            .env_remove("PUENTE_CRL")
            .env_remove("PUENTE_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start puente serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut read_addr = |prefix: &str| -> SocketAddr {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read an address line");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got the line {line:?}"))
                .parse()
                .expect("socket address")
        };
        let addr = read_addr("listening on ");
        let metrics_addr = read_addr("metrics on ");
        ServerProcess {
            child,
            addr,
            metrics_addr,
        }
    }

    /// The process id (to read its memory from `/proc/<pid>/status`, or limit it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself within `within`; its exit status.
    pub async fn wait_for_exit(mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        eventually_within(
            "the server to exit by itself",
            within,
            Duration::from_millis(50),
            async || child.try_wait().expect("try_wait").ok_or("still running"),
        )
        .await
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for exit")
    }

    /// Sends a signal by name (`HUP`, ...) and leaves the process running.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
