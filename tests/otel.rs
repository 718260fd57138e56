//! OpenTelemetry tracing of the real binary built with the `otel` feature (`cargo test
//! --features otel --test otel`): `puente serve --otel` exports to an OTLP/gRPC collector run
//! by the test. A call made with a W3C `traceparent` gets a span in that trace, child of that
//! span, with the rpc attributes and the caller; its handler's span nests under it; a call
//! without one starts a new trace; the spans reach the collector when SIGTERM stops the server;
//! nothing of a message's subject or content is in any span; and log lines stay as they were.
#![cfg(feature = "otel")]

mod common;

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use puente::pb::v1::{GetDeliveryStatusRequest, ListAgenciesRequest, Region};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// The caller's trace (the W3C Trace Context specification's example ids).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The caller's span, parent of the server's.
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// The caller's vendor-specific trace state, carried along the trace.
const TRACE_STATE: &str = "congo=t61rcWkgMzE";
/// In the subject and the content of the message sent; must never reach a span.
const MARKER: &str = "zq7-OTELCANARY-91d2";

/// An OTLP/gRPC trace collector that keeps every export request it receives.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received
            .lock()
            .expect("the collector's lock")
            .push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A span as exported, with the attributes of its resource.
struct Exported {
    resource: Vec<KeyValue>,
    span: Span,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<AnyValue> {
        attribute(&self.span.attributes, key)
    }
}

/// The value of the attribute `key`, if there is one.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|value| value.value)
}

/// A string attribute value.
fn string(value: &str) -> Option<AnyValue> {
    Some(AnyValue::StringValue(value.to_string()))
}

/// Every span of every request, in the order received.
fn exported(requests: &[ExportTraceServiceRequest]) -> Vec<Exported> {
    let mut spans = Vec::new();
    for request in requests {
        for resource_spans in &request.resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|resource| resource.attributes.clone())
                .unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    spans.push(Exported {
                        resource: resource.clone(),
                        span: span.clone(),
                    });
                }
            }
        }
    }
    spans
}

/// The one call span of `caller` calling `method` (`<service>/<method>`).
fn call_span<'a>(spans: &'a [Exported], method: &str, caller: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.span.name == method && s.attribute("enduser.id") == string(caller))
        .collect();
    assert_eq!(found.len(), 1, "one span of {caller} calling {method}");
    found[0]
}

/// With --otel, calls are exported as spans in the caller's trace, or in a new one, with handler
/// spans nested.
#[tokio::test]
async fn calls_are_spans_in_the_callers_trace_or_in_a_new_one() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let collector_addr = listener.local_addr().expect("collector address");
    let collector = Collector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestPki::new();
    pki.write_server_files(dir.path());
    let mut args = vec![OsString::from("--otel")];
    args.extend(ServerProcess::file_args(dir.path()));
    let mut command = ServerProcess::command(args);
    // Only what this test sets: none of the environment's own OpenTelemetry settings.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{collector_addr}"),
    );
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("create the log file");
    let server = ServerProcess::spawn(command, "info", Stdio::from(log));
    register_agency(&pki, server.addr, "ES-CNP", Region::Eu).await;
    register_agency(&pki, server.addr, "CO-DIJIN", Region::Celac).await;

    let mut sender = pki.agency_client("ES-CNP", server.addr).await;
    let mut send = text_message(
        "otel-1",
        &["CO-DIJIN"],
        &format!("Shipment details {MARKER} in the body"),
    );
    send.subject = format!("Subject {MARKER}");
    let mut send = Request::new(send);
    send.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    send.metadata_mut()
        .insert("tracestate", TRACE_STATE.parse().unwrap());
    let message_id = sender
        .send_message(send)
        .await
        .expect("send")
        .into_inner()
        .message_id;
    sender
        .list_agencies(ListAgenciesRequest::default())
        .await
        .expect("list the agencies");
    let mut recipient = pki.agency_client("CO-DIJIN", server.addr).await;
    assert_code(
        recipient
            .get_delivery_status(GetDeliveryStatusRequest { message_id })
            .await,
        Code::PermissionDenied,
    );
    drop((sender, recipient));
    // Waited for off the runtime, which serves the collector the last spans go to meanwhile.
    let exit = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("wait for the server");
    assert!(exit.success(), "clean exit: {exit:?}");

    let requests = collector.received.lock().unwrap().clone();
    let spans = exported(&requests);
    let es = agency_spiffe("ES-CNP");

    // The call with a trace context: in the caller's trace, child of the caller's span.
    let send = call_span(&spans, "puente.v1.ExchangeService/SendMessage", &es);
    assert_eq!(hex::encode(&send.span.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&send.span.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(send.span.trace_state, TRACE_STATE);
    assert_eq!(send.span.kind, SpanKind::Server as i32);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "puente.v1.ExchangeService"),
        ("rpc.method", "SendMessage"),
    ] {
        assert_eq!(send.attribute(key), string(value), "{key}");
    }
    assert_eq!(
        send.attribute("rpc.grpc.status_code"),
        Some(AnyValue::IntValue(0))
    );
    assert_eq!(attribute(&send.resource, "service.name"), string("puente"));
    assert!(
        matches!(
            attribute(&send.resource, "service.version"),
            Some(AnyValue::StringValue(version))
                if version.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+"))
        ),
        "service.version names the commit"
    );

    // The handler's span nests under it.
    let handler: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.span.name == "send_message")
        .collect();
    assert_eq!(handler.len(), 1, "one send_message handler span");
    assert_eq!(hex::encode(&handler[0].span.trace_id), TRACE_ID);
    assert_eq!(handler[0].span.parent_span_id, send.span.span_id);

    // Without a trace context: the root of a new trace.
    let list = call_span(&spans, "puente.v1.ExchangeService/ListAgencies", &es);
    assert!(list.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(list.span.trace_id.len(), 16);
    assert!(
        list.span.trace_id.iter().any(|&b| b != 0),
        "a valid trace id"
    );
    assert_ne!(hex::encode(&list.span.trace_id), TRACE_ID);

    // A refused call carries its status code.
    let refused = call_span(
        &spans,
        "puente.v1.ExchangeService/GetDeliveryStatus",
        &agency_spiffe("CO-DIJIN"),
    );
    assert_eq!(
        refused.attribute("rpc.grpc.status_code"),
        Some(AnyValue::IntValue(Code::PermissionDenied as i64))
    );

    // Log lines are as without --otel: the handler's line names its own span only.
    let log = std::fs::read_to_string(&log_path).expect("read the log");
    assert!(
        log.lines()
            .any(|line| line.contains(" send_message: puente::exchange: message accepted ")),
        "the handler's line without the call's span:\n{log}"
    );

    // Nothing of the message in any span, event or attribute.
    let everything = format!("{requests:?}");
    assert!(
        !everything.contains(MARKER),
        "the subject or content reached a span"
    );
}
