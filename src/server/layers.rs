//! The router's glue between a connection's [`Peer`] and admission control: the layer that
//! counts each connection's open calls for its idle timeout ([`IdleLayer`]), and the
//! interceptor that takes each call from its caller's request rate ([`RateInterceptor`]).
//! Admission itself (`crate::admission`) knows nothing of `Peer`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tower::{Layer, Service};

use crate::admission::connections::CallGuard;
use crate::admission::{exhausted, RateLimits};
use crate::identity::Peer;

/// The tower layer that counts each call of a connection in its [`Activity`](crate::admission::connections::Activity) (from the
/// [`Peer`] of the request) until its response body ends or is dropped.
#[derive(Clone, Copy, Default)]
pub(super) struct IdleLayer;

impl<S> Layer<S> for IdleLayer {
    type Service = IdleService<S>;

    fn layer(&self, inner: S) -> IdleService<S> {
        IdleService { inner }
    }
}

/// The router wrapped by [`IdleLayer`].
#[derive(Clone)]
pub(super) struct IdleService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for IdleService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CallBody<ResBody>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<Peer>()
            .map(|peer| peer.activity.call());
        CallFuture {
            inner: self.inner.call(request),
            guard,
        }
    }
}

pin_project! {
    /// The response future of [`IdleService`].
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, ResBody, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<CallBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| CallBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that keeps its call counted until it is dropped.
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        _guard: Option<CallGuard>,
    }
}

impl<B: Body> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The tonic interceptor of [`RateLimits`]: each call of an authenticated caller takes a token
/// from its bucket. Calls without a usable identity pass: the services refuse them.
#[derive(Clone)]
pub(super) struct RateInterceptor(pub(super) Arc<RateLimits>);

impl Interceptor for RateInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let caller = request
            .extensions()
            .get::<Peer>()
            .and_then(|peer| peer.caller.as_ref().ok())
            .map(|caller| caller.id.to_string());
        if let Some(caller) = caller {
            if let Err(wait) = self.0.admit(&caller) {
                return Err(exhausted(
                    format!(
                        "{caller} is over its limit of {} calls per second; retry after {} ms",
                        self.0.per_second(),
                        wait.as_millis().max(1)
                    ),
                    wait,
                ));
            }
        }
        Ok(request)
    }
}
