//! Logging: one line per event on stderr, human-readable by default or one JSON object per line
//! for log collectors (`--log-format json`), filtered like `RUST_LOG` (`EnvFilter` directives).
//! Whatever the format, log lines carry identities, ids and counts, never message content,
//! subjects or key material.

use std::io::{self, IsTerminal as _};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: time, level, target, message, then `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and each field at
    /// the top level, with the enclosing span (e.g. the handler) under `span`.
    Json,
}

/// Installs the process's logger on stderr: `RUST_LOG` when it is set (and valid), otherwise
/// `default_filter`. Text is coloured only when stderr is a terminal, so files and journals get
/// no escape codes.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = io::stderr().is_terminal();
    tracing_subscriber::registry()
        .with(layer(format, io::stderr, ansi).with_filter(filter))
        .init();
}

/// The formatting layer of `format`, writing to `writer`; `ansi` colours text.
fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_span_list(false).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn log_one_line(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(layer(format, buffer.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "puente::rpc", caller = "spiffe://puente.local/agency/ES-CNP", status = "OK", latency_ms = 1.5, "rpc");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_carry_the_fields_at_the_top_level() {
        let output = log_one_line(LogFormat::Json);
        assert_eq!(output.lines().count(), 1, "{output}");
        let line: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "puente::rpc");
        assert_eq!(line["message"], "rpc");
        assert_eq!(line["caller"], "spiffe://puente.local/agency/ES-CNP");
        assert_eq!(line["status"], "OK");
        assert_eq!(line["latency_ms"], 1.5);
    }

    #[test]
    fn text_is_the_default_and_is_not_json() {
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let output = log_one_line(LogFormat::Text);
        assert!(serde_json::from_str::<serde_json::Value>(output.trim()).is_err());
        assert!(output.contains("status=\"OK\""), "{output}");
        assert!(output.contains("latency_ms=1.5"), "{output}");
    }
}
