//! Logging and tracing. Logs: one line per event on stderr, human-readable by default or one
//! JSON object per line for log collectors (`--log-format json`), filtered like `RUST_LOG`
//! (`EnvFilter` directives). Tracing (cargo feature `otel`, switched on by `--otel`): the
//! per-call spans of [`crate::metrics::rpc`] and the handler spans under them, exported to an
//! OpenTelemetry collector over OTLP/gRPC, configured by the standard `OTEL_*` variables.
//! Whatever the output, log lines and spans carry identities, ids and counts, never message
//! content, subjects or key material.

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

/// Why logging and tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Tracing was asked for, but this binary was built without the `otel` feature.
    #[cfg(not(feature = "otel"))]
    #[error("--otel (or PUENTE_OTEL) asks for OpenTelemetry tracing, but this puente was built without the `otel` feature: rebuild it with `cargo build --release --features otel` (or `cargo install --path . --features otel`), or leave --otel out")]
    OtelNotBuilt,
    /// The `OTEL_EXPORTER_OTLP_*` variables do not make a usable OTLP/gRPC exporter (an invalid
    /// endpoint, an `https` endpoint, an unsupported compression...).
    #[cfg(feature = "otel")]
    #[error("cannot export spans: {0} (puente exports over plain OTLP/gRPC: give the http:// endpoint of a collector on this machine, e.g. http://localhost:4317, and let it forward over TLS)")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// What [`init`] started: [`Telemetry::shutdown`] exports the spans not yet exported.
#[must_use = "shut it down before exiting, or the last spans are lost"]
#[derive(Debug)]
pub struct Telemetry {
    /// The tracer provider, when spans are exported.
    #[cfg(feature = "otel")]
    exporting: Option<otel::Exporting>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter; when it cannot reach the
    /// collector, gives up after `OTEL_BSP_EXPORT_TIMEOUT` (30 s by default; a refused
    /// connection fails within a second) and logs why.
    /// Without `--otel` (or without the `otel` feature) there is nothing to do.
    pub async fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(exporting) = self.exporting {
            exporting.shutdown().await;
        }
    }
}

/// Installs the process's logger on stderr: `RUST_LOG` when it is set (and valid), otherwise
/// `default_filter`. Text is coloured only when stderr is a terminal, so files and journals get
/// no escape codes. With `export_spans`, spans are exported too (see the module
/// documentation); the exporter's tasks run on the tokio runtime this is called from.
///
/// # Errors
/// `export_spans` in a build without the `otel` feature; an OTLP exporter that the `OTEL_*`
/// variables do not configure correctly. Nothing is installed then.
pub fn init(
    format: LogFormat,
    default_filter: &str,
    export_spans: bool,
) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = layer(format, io::stderr, io::stderr().is_terminal());
    #[cfg(not(feature = "otel"))]
    {
        // Refused rather than ignored: an operator who asked for traces must not believe
        // they are being exported.
        if export_spans {
            return Err(TelemetryError::OtelNotBuilt);
        }
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .init();
        Ok(Telemetry {})
    }
    #[cfg(feature = "otel")]
    {
        use tracing_subscriber::filter::FilterExt as _;
        let exporting = export_spans.then(otel::Exporting::start).transpose()?;
        tracing_subscriber::registry()
            .with(logs.with_filter(
                filter.and(tracing_subscriber::filter::filter_fn(otel::not_a_call_span)),
            ))
            .with(exporting.as_ref().map(otel::Exporting::layer))
            .init();
        if exporting.is_some() {
            otel::report_endpoint();
        }
        Ok(Telemetry { exporting })
    }
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

/// OpenTelemetry export (feature `otel`).
#[cfg(feature = "otel")]
mod otel {
    use std::net::IpAddr;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
    use opentelemetry_sdk::runtime::Tokio;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing::{Level, Metadata};
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    use super::TelemetryError;
    use crate::metrics::rpc::LOG_TARGET;

    /// `service.version`: the crate version with the commit as build metadata
    /// (`0.1.0+1a2b3c4`), so a trace names exactly which code served it.
    const SERVICE_VERSION: &str =
        concat!(env!("CARGO_PKG_VERSION"), "+", env!("PUENTE_BUILD_COMMIT"));
    /// Where the exporter sends spans when no variable names an endpoint (its own default).
    const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

    /// Spans being exported.
    #[derive(Debug)]
    pub(super) struct Exporting {
        provider: SdkTracerProvider,
    }

    impl Exporting {
        /// The OTLP/gRPC exporter the `OTEL_EXPORTER_OTLP_*` variables describe, behind a batch
        /// span processor that runs on the tokio runtime (an export is a tonic call, which
        /// needs that runtime); the sampler comes from `OTEL_TRACES_SAMPLER` (parent-based
        /// always-on by default) and the batching from `OTEL_BSP_*`.
        pub(super) fn start() -> Result<Exporting, TelemetryError> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
                .with_resource(resource())
                .build();
            Ok(Exporting { provider })
        }

        /// The layer that turns `tracing` spans into exported spans: those of Puente's own
        /// code at `INFO` and above (the call spans, the handler spans and the events in
        /// them), whatever `RUST_LOG` says about logs. The dependencies' spans stay out; the
        /// exporter's own gRPC client among them, which would otherwise trace its exports.
        /// Source locations and thread ids are left out: the span name and `target` say
        /// where it comes from.
        pub(super) fn layer<S>(&self) -> impl Layer<S>
        where
            S: tracing::Subscriber + for<'span> LookupSpan<'span>,
        {
            tracing_opentelemetry::layer()
                .with_tracer(self.provider.tracer("puente"))
                .with_location(false)
                .with_threads(false)
                .with_filter(Targets::new().with_target("puente", Level::INFO))
        }

        /// Exports what is buffered and stops. The SDK blocks the calling thread until the
        /// batch task, which runs on the runtime's workers, is done: so it waits on a blocking
        /// thread, never on a worker.
        pub(super) async fn shutdown(self) {
            let provider = self.provider;
            match tokio::task::spawn_blocking(move || provider.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "OpenTelemetry: the last spans may not have been exported");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "OpenTelemetry: the exporter's shutdown failed");
                }
            }
        }
    }

    /// `service.name=puente` and `service.version`, unless `OTEL_SERVICE_NAME` or
    /// `OTEL_RESOURCE_ATTRIBUTES` say otherwise; and the SDK's `telemetry.sdk.*`.
    fn resource() -> Resource {
        let builder = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "puente"),
                KeyValue::new("service.version", SERVICE_VERSION),
            ])
            .with_detectors(&[
                Box::new(TelemetryResourceDetector),
                Box::new(EnvResourceDetector::new()),
            ]);
        match std::env::var("OTEL_SERVICE_NAME") {
            Ok(name) if !name.is_empty() => builder.with_service_name(name),
            _ => builder,
        }
        .build()
    }

    /// Whether log lines show this span or event: all but the call spans. A call already has
    /// its one `puente::rpc` line, and showing its span as the context of the handler's lines
    /// would change every line with `--otel` on.
    pub(super) fn not_a_call_span(metadata: &Metadata<'_>) -> bool {
        !(metadata.is_span() && metadata.target() == LOG_TARGET)
    }

    /// Logs where spans go, as the exporter resolves it (the traces endpoint, then the
    /// general one, then its default), and warns when that is beyond loopback: the export is
    /// not encrypted, and spans name the agencies and show who called what, when.
    pub(super) fn report_endpoint() {
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let Ok(uri) = endpoint.parse::<http::Uri>() else {
            // The exporter accepted it, so it parses; nothing to report otherwise.
            return;
        };
        // Only host and port: a URL's user-info part may hold a credential.
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or_default();
        if is_loopback(host) {
            tracing::info!(host, port, "exporting spans over OTLP/gRPC");
        } else {
            tracing::warn!(
                host,
                port,
                "exporting spans over OTLP/gRPC without TLS beyond loopback: spans name agencies and show who called which method when, so send them to a collector on this machine (an agent that forwards them over TLS)"
            );
        }
    }

    /// `localhost` or a loopback address (IPv6 in brackets, as in a URL).
    fn is_loopback(host: &str) -> bool {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn loopback_hosts_are_recognised() {
            for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "[::1]"] {
                assert!(is_loopback(host), "{host}");
            }
            for host in ["collector.example", "10.0.0.5", "[2001:db8::1]", ""] {
                assert!(!is_loopback(host), "{host}");
            }
        }
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

    #[cfg(not(feature = "otel"))]
    #[test]
    fn otel_is_refused_by_a_build_without_the_feature() {
        assert!(matches!(
            init(LogFormat::Text, "info", true),
            Err(TelemetryError::OtelNotBuilt)
        ));
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
