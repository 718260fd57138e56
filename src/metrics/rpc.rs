//! The per-call observation layer of the gRPC router: every call, refused ones included, counts
//! in `puente_rpc_requests_total` by method and status code and in `puente_rpc_duration_seconds`
//! by method, and makes one log line (target `puente::rpc`) with the caller's SPIFFE ID, the
//! method, the status code and the latency. Neither the metrics nor the line ever hold anything
//! from the request or the response but the status code.
//!
//! A call's status is in the response headers when the answer has no body (a "trailers-only"
//! response: refused, rate-limited, invalid...) and in the trailers otherwise, so a call ends
//! with whichever of the two carries `grpc-status`. A response dropped before its trailers
//! (the client reset the stream or went away) ends the call as `CANCELLED`. Server-streaming
//! calls therefore end when the stream does: their latency is the life of the stream.
//!
//! With the cargo feature `otel`, each call is also a span (target `puente::rpc`, exported
//! when `--otel` is on): named `<service>/<method>`, kind server, with `rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code` and the caller's SPIFFE ID as
//! `enduser.id`, and as parent the W3C trace context (`traceparent`, `tracestate`) of the
//! request's metadata when it has one. The handler runs inside it (its `#[instrument]` span
//! nests under it), and it ends with the call. Without the feature none of this is compiled.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prost::Message as _;
use tonic::Code;
use tower::{Layer, Service};

use super::Metrics;
use crate::identity::{Caller, Peer};

/// Log target of the per-call lines, to filter them (`RUST_LOG=puente::rpc=off`).
pub(crate) const LOG_TARGET: &str = "puente::rpc";

/// Service and method of a call that names one the server serves.
#[derive(Debug)]
pub(crate) struct Method {
    service: String,
    name: String,
    /// `/<service>/<name>`, the request path.
    path: String,
}

/// Labels and log value of a call whose path names no served method: such paths come from the
/// client, so they must not become label values.
static UNKNOWN: LazyLock<Method> = LazyLock::new(|| Method {
    service: "unknown".into(),
    name: "unknown".into(),
    path: "unknown".into(),
});

/// Every method the exchange serves, by request path: from the descriptor sets of the contract,
/// health checking and both reflection versions. Built once per process; label values borrow
/// from it.
static METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| {
    let sets = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashMap::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            tracing::error!(
                "a built-in descriptor set does not decode; its methods are labelled unknown"
            );
            continue;
        };
        for file in set.file {
            for service in &file.service {
                let service_name = match file.package() {
                    "" => service.name().to_string(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    let path = format!("/{service_name}/{}", method.name());
                    methods.insert(
                        path.clone(),
                        Method {
                            service: service_name.clone(),
                            name: method.name().to_string(),
                            path,
                        },
                    );
                }
            }
        }
    }
    methods
});

impl Method {
    /// The method a request path names, or the `unknown` method.
    pub(crate) fn of_path(path: &str) -> &'static Method {
        METHODS.get(path).unwrap_or(&UNKNOWN)
    }

    /// The fully qualified service, e.g. `puente.v1.ExchangeService`.
    pub(crate) fn service(&'static self) -> &'static str {
        &self.service
    }

    /// The method name, e.g. `SendMessage`.
    pub(crate) fn name(&'static self) -> &'static str {
        &self.name
    }
}

/// The canonical name of a gRPC status code, as in the gRPC documentation.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// The tower layer that observes every call of the router it wraps.
#[derive(Clone)]
pub(crate) struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    /// Observes calls into `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> RpcLayer {
        RpcLayer { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The router wrapped by [`RpcLayer`].
#[derive(Clone)]
pub(crate) struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let caller = request
            .extensions()
            .get::<Peer>()
            .and_then(|peer| peer.caller.as_ref().ok())
            .map(Arc::clone);
        let method = Method::of_path(request.uri().path());
        let call = Call {
            metrics: Arc::clone(&self.metrics),
            #[cfg(feature = "otel")]
            span: otel::call_span(method, caller.as_deref(), request.headers()),
            method,
            caller,
            started: Instant::now(),
        };
        let inner = {
            #[cfg(feature = "otel")]
            let _entered = call.span.enter();
            self.inner.call(request)
        };
        RpcFuture {
            inner,
            call: Pending(Some(call)),
        }
    }
}

pin_project! {
    /// The response future of [`RpcService`].
    pub struct RpcFuture<F> {
        #[pin]
        inner: F,
        call: Pending,
    }
}

impl<F, ResBody, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<RpcBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            #[cfg(feature = "otel")]
            let _entered = this.call.enter();
            this.inner.poll(cx)
        };
        let response = match ready!(polled) {
            Ok(response) => response,
            Err(e) => {
                this.call.end(Code::Unknown);
                return Poll::Ready(Err(e));
            }
        };
        let mut call = this.call.take();
        if let Some(code) = status_of(response.headers()) {
            call.end(code);
        }
        Poll::Ready(Ok(response.map(|inner| RpcBody { inner, call })))
    }
}

pin_project! {
    /// A response body that ends its call when the trailers pass, or when dropped before.
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        call: Pending,
    }
}

impl<B: Body> Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = {
            #[cfg(feature = "otel")]
            let _entered = this.call.enter();
            ready!(this.inner.poll_frame(cx))
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    this.call.end(code);
                }
            }
            // The response broke off: the client sees no status.
            Some(Err(_)) => this.call.end(Code::Unknown),
            // A gRPC response always ends with a status; a body that ends without one
            // (a plain HTTP answer to a request that was not gRPC) has none to count.
            None => this.call.end(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A call not yet ended; dropping it ends it as `CANCELLED`.
struct Pending(Option<Call>);

impl Pending {
    fn end(&mut self, code: Code) {
        if let Some(call) = self.0.take() {
            call.end(code);
        }
    }

    fn take(&mut self) -> Pending {
        Pending(self.0.take())
    }

    /// Enters the call's span, if the call has not ended.
    #[cfg(feature = "otel")]
    fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.0.as_ref().map(|call| call.span.enter())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

/// What is known of a call from its request.
struct Call {
    metrics: Arc<Metrics>,
    method: &'static Method,
    caller: Option<Arc<Caller>>,
    started: Instant,
    /// The call's span; it closes when the call ends and this is dropped.
    #[cfg(feature = "otel")]
    span: tracing::Span,
}

impl Call {
    fn end(self, code: Code) {
        let elapsed = self.started.elapsed();
        let status = code_name(code);
        #[cfg(feature = "otel")]
        otel::record_status(&self.span, code);
        self.metrics.observe_call(self.method, status, elapsed);
        tracing::info!(
            target: LOG_TARGET,
            caller = %CallerId(self.caller.as_deref()),
            method = %self.method.path,
            status,
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "rpc"
        );
    }
}

/// The caller's SPIFFE ID, or `-` for a connection whose certificate names no usable identity.
struct CallerId<'a>(Option<&'a Caller>);

impl fmt::Display for CallerId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(caller) => caller.id.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The call spans (feature `otel`).
#[cfg(feature = "otel")]
mod otel {
    use http::header::HeaderName;
    use http::HeaderMap;
    use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tonic::Code;
    use tracing::field::{self, Empty};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::{Method, LOG_TARGET};
    use crate::identity::Caller;

    /// The span of a call to `method` by `caller`: a child of the W3C trace context in
    /// `headers` when they carry a valid one, else the root of a new trace (never a child of
    /// whatever span happens to be current). A disabled span (no `--otel`) costs one check.
    pub(super) fn call_span(
        method: &'static Method,
        caller: Option<&Caller>,
        headers: &HeaderMap,
    ) -> tracing::Span {
        // Nothing from the request but its method (one the server serves, or `unknown`) and
        // the identity of its certificate: never a field of the message.
        let span = tracing::info_span!(
            target: LOG_TARGET,
            parent: None,
            "rpc",
            otel.name = method.path.strip_prefix('/').unwrap_or(&method.path),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = method.service(),
            rpc.method = method.name(),
            rpc.grpc.status_code = Empty,
            enduser.id = caller.map(|caller| field::display(&caller.id)),
        );
        if !span.is_disabled() {
            let parent = TraceContextPropagator::new().extract(&Metadata(headers));
            // It fails only when no OpenTelemetry layer sees the span (then nothing is
            // exported and a parent is of no use) or once the span has started, which it
            // has not: it has never been entered.
            let _ = span.set_parent(parent);
        }
        span
    }

    /// Records the call's status code on its span; the server-side errors of the gRPC
    /// semantic conventions (the server failed, not the request) also mark it as an error.
    pub(super) fn record_status(span: &tracing::Span, code: Code) {
        span.record("rpc.grpc.status_code", i64::from(i32::from(code)));
        if matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ) {
            span.record("otel.status_code", "error");
        }
    }

    /// The request's metadata (its HTTP/2 headers), read by the W3C propagator.
    struct Metadata<'a>(&'a HeaderMap);

    impl Extractor for Metadata<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_known_and_other_paths_are_not() {
        let send = Method::of_path("/puente.v1.ExchangeService/SendMessage");
        assert_eq!(
            (send.service(), send.name()),
            ("puente.v1.ExchangeService", "SendMessage")
        );
        let health = Method::of_path("/grpc.health.v1.Health/Check");
        assert_eq!(health.service(), "grpc.health.v1.Health");
        let reflection =
            Method::of_path("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
        assert_eq!(reflection.name(), "ServerReflectionInfo");
        for path in ["/puente.v1.ExchangeService/Nope", "/", "/metrics"] {
            let method = Method::of_path(path);
            assert_eq!((method.service(), method.name()), ("unknown", "unknown"));
        }
    }

    #[test]
    fn status_codes_have_their_canonical_names() {
        let cases = [
            ("0", "OK"),
            ("7", "PERMISSION_DENIED"),
            ("8", "RESOURCE_EXHAUSTED"),
            ("16", "UNAUTHENTICATED"),
            ("99", "UNKNOWN"),
        ];
        for (value, name) in cases {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", value.parse().unwrap());
            assert_eq!(status_of(&headers).map(code_name), Some(name), "{value}");
        }
        assert_eq!(status_of(&HeaderMap::new()), None);
    }
}
