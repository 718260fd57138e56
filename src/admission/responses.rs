//! The response byte budget: bytes of answers encoded but not yet sent, per caller identity and
//! in total, reserved by handlers and held by the response body until it has left, through
//! [`ResponseBytesLayer`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use prost::bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::MAX_TRACKED_KEYS;
use crate::config::Limits;

/// How long a call waits for room in the response budgets before it is refused: long enough
/// to ride out a burst of large answers, short enough that a caller whose own answers sit
/// unread learns it at once.
pub const RESPONSE_WAIT: Duration = Duration::from_secs(1);
/// How long a client should wait before retrying a call refused for want of response budget.
pub const RESPONSE_RETRY: Duration = Duration::from_secs(1);
/// Largest piece of a budgeted response body handed to the transport at once. hyper asks for
/// the next piece only once the stream has send capacity again, and h2 queues whole pieces: so
/// the body, and the permit it holds, lives until all but about one piece and the client's
/// window has left the server.
pub const RESPONSE_CHUNK: usize = 64 * 1024;

/// Bytes of answers in flight: encoded (or about to be) but not yet sent, typically because the
/// client does not read. One budget for the whole exchange and one per caller identity, so a
/// caller that never reads its answers holds at most its own share, and all callers together
/// at most the total. A handler reserves before it reads the message it answers with; the
/// permit travels with the response (in its extensions) to [`ResponseBytesLayer`], which holds
/// it until the body is sent or dropped.
pub struct ResponseBudget {
    total: Arc<Semaphore>,
    total_kib: u32,
    per_caller_kib: u32,
    callers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Room reserved in the response budgets, given back when the last clone is dropped. Clone
/// only because response extensions must be.
#[derive(Clone)]
pub struct ResponsePermit {
    /// The caller's share and the total's, released together.
    _held: Arc<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// Whose response budget was spent.
#[derive(Debug)]
pub enum ResponseBudgetSpent {
    /// The caller's own.
    Caller {
        /// The caller identity.
        caller: String,
        /// Its budget, in MiB.
        mib: u64,
    },
    /// The exchange's, shared by every caller.
    Total {
        /// The budget, in MiB.
        mib: u64,
    },
}

impl std::fmt::Display for ResponseBudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBudgetSpent::Caller { caller, mib } => write!(
                f,
                "{caller} already has {mib} MiB of answers that its clients have not read yet, the most allowed; read or cancel those calls, then retry"
            ),
            ResponseBudgetSpent::Total { mib } => write!(
                f,
                "the exchange has {mib} MiB of answers in flight to slow readers, the most it holds; retry shortly"
            ),
        }
    }
}

impl ResponseBudget {
    /// The budgets of `limits`.
    #[must_use]
    pub fn new(limits: &Limits) -> Arc<ResponseBudget> {
        let kib = |bytes: u64| u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let total_kib = kib(limits.response_bytes_in_flight).max(1);
        Arc::new(ResponseBudget {
            total: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            per_caller_kib: kib(limits.response_bytes_per_caller).clamp(1, total_kib),
            callers: Mutex::new(HashMap::new()),
        })
    }

    /// Reserves room for an answer of about `bytes` bytes to `caller`, waiting up to
    /// [`RESPONSE_WAIT`]. An answer larger than the caller's budget takes all of it, and goes
    /// alone.
    ///
    /// # Errors
    /// No room came free in time, in the caller's budget or in the total.
    pub async fn reserve(
        &self,
        caller: &str,
        bytes: u64,
    ) -> Result<ResponsePermit, ResponseBudgetSpent> {
        let need = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.per_caller_kib);
        let own = self.caller_budget(caller);
        let deadline = tokio::time::Instant::now() + RESPONSE_WAIT;
        // The caller's own budget first: a caller over it waits without holding any of the
        // total that others need.
        let spent_own = || ResponseBudgetSpent::Caller {
            caller: caller.to_string(),
            mib: u64::from(self.per_caller_kib) / 1024,
        };
        let own = match tokio::time::timeout_at(deadline, own.acquire_many_owned(need)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(spent_own()),
        };
        let total = Arc::clone(&self.total);
        let spent_total = || ResponseBudgetSpent::Total {
            mib: u64::from(self.total_kib) / 1024,
        };
        let total = match tokio::time::timeout_at(deadline, total.acquire_many_owned(need)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(spent_total()),
        };
        Ok(ResponsePermit {
            _held: Arc::new((own, total)),
        })
    }

    /// The semaphore of `caller`'s budget. Budgets with nothing reserved are forgotten once
    /// many callers are tracked: they are the same as new ones.
    fn caller_budget(&self, caller: &str) -> Arc<Semaphore> {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if callers.len() >= MAX_TRACKED_KEYS && !callers.contains_key(caller) {
            let full = self.per_caller_kib as usize;
            callers.retain(|_, budget| budget.available_permits() < full);
        }
        Arc::clone(
            callers
                .entry(caller.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller_kib as usize))),
        )
    }
}

/// The tower layer that hands the data of every response body to the transport in pieces of at
/// most [`RESPONSE_CHUNK`] bytes (zero-copy), and holds the [`ResponsePermit`] a response
/// carries in its extensions until its body is sent or dropped. Streams hold the permits of
/// their items themselves (`exchange::inbox`); the pieces make those precise too.
#[derive(Clone, Copy, Default)]
pub struct ResponseBytesLayer;

impl<S> Layer<S> for ResponseBytesLayer {
    type Service = ResponseBytesService<S>;

    fn layer(&self, inner: S) -> ResponseBytesService<S> {
        ResponseBytesService { inner }
    }
}

/// The service of [`ResponseBytesLayer`].
#[derive(Clone)]
pub struct ResponseBytesService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ResponseBytesService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<HeldBody<ResBody>>;
    type Error = S::Error;
    type Future = futures::future::MapOk<
        S::Future,
        fn(http::Response<ResBody>) -> http::Response<HeldBody<ResBody>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        use futures::TryFutureExt as _;
        self.inner
            .call(request)
            .map_ok(hold_permit as fn(http::Response<ResBody>) -> _)
    }
}

fn hold_permit<B>(mut response: http::Response<B>) -> http::Response<HeldBody<B>> {
    let permit = response.extensions_mut().remove::<ResponsePermit>();
    response.map(|inner| HeldBody {
        inner,
        permit,
        pending: Bytes::new(),
    })
}

pin_project_lite::pin_project! {
    /// A response body handed over in pieces, holding the [`ResponsePermit`] of its response,
    /// if it has one, until the body ends or is dropped.
    pub struct HeldBody<B> {
        #[pin]
        inner: B,
        permit: Option<ResponsePermit>,
        // The rest of a data frame not yet handed over.
        pending: Bytes,
    }
}

impl<B: Body<Data = Bytes>> Body for HeldBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if !this.pending.is_empty() {
            let take = this.pending.len().min(RESPONSE_CHUNK);
            return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(take)))));
        }
        let frame = ready!(this.inner.poll_frame(cx));
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > RESPONSE_CHUNK {
                        *this.pending = data.split_off(RESPONSE_CHUNK);
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => {
                // Ended, or broke off: nothing more of it will be queued.
                *this.permit = None;
                Poll::Ready(other)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(pending));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total_mib: u64, per_caller_mib: u64) -> Arc<ResponseBudget> {
        ResponseBudget::new(&Limits {
            response_bytes_in_flight: total_mib << 20,
            response_bytes_per_caller: per_caller_mib << 20,
            ..Limits::default()
        })
    }

    /// A caller's answers in flight are bounded by its own budget, then by the total; room
    /// comes back when a permit is dropped.
    #[tokio::test]
    async fn response_budgets_bound_each_caller_and_the_total() {
        let responses = budget(3, 2);
        let first = responses
            .reserve("ES-CNP", 1 << 20)
            .await
            .expect("first MiB");
        let _second = responses
            .reserve("ES-CNP", 1 << 20)
            .await
            .expect("second MiB");
        let spent = responses
            .reserve("ES-CNP", 1)
            .await
            .err()
            .expect("own budget spent");
        assert!(
            matches!(spent, ResponseBudgetSpent::Caller { mib: 2, .. }),
            "{spent:?}"
        );
        let _other = responses
            .reserve("CO-DIJIN", 1 << 20)
            .await
            .expect("another caller");
        let spent = responses
            .reserve("FR-PJ", 1)
            .await
            .err()
            .expect("total spent");
        assert!(
            matches!(spent, ResponseBudgetSpent::Total { mib: 3 }),
            "{spent:?}"
        );
        drop(first);
        responses
            .reserve("ES-CNP", 1 << 20)
            .await
            .expect("room came back");
    }

    /// An answer larger than a caller's budget is admitted alone, not refused for ever.
    #[tokio::test]
    async fn an_answer_larger_than_the_budget_goes_alone() {
        let responses = budget(8, 2);
        let large = responses.reserve("ES-CNP", 100 << 20).await.expect("alone");
        assert!(
            responses.reserve("ES-CNP", 1).await.is_err(),
            "nothing beside it"
        );
        drop(large);
        responses.reserve("ES-CNP", 1).await.expect("after it");
    }

    /// A budgeted body is handed over in pieces of at most `RESPONSE_CHUNK` bytes, and keeps
    /// its permit until it ends.
    #[tokio::test]
    async fn a_budgeted_body_is_cut_into_chunks_and_holds_its_permit_until_it_ends() {
        use http_body_util::BodyExt as _;
        let responses = budget(1, 1);
        let permit = responses.reserve("ES-CNP", 1 << 20).await.expect("permit");
        let data = Bytes::from(vec![7u8; 3 * RESPONSE_CHUNK + 10]);
        let mut response = http::Response::new(http_body_util::Full::new(data));
        response.extensions_mut().insert(permit);
        let mut body = hold_permit(response).into_body();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            sizes.push(data.len());
            if sizes.len() < 4 {
                assert!(responses.reserve("CO-DIJIN", 1).await.is_err(), "held");
            }
        }
        assert_eq!(
            sizes,
            vec![RESPONSE_CHUNK, RESPONSE_CHUNK, RESPONSE_CHUNK, 10]
        );
        responses
            .reserve("CO-DIJIN", 1)
            .await
            .expect("released at the end");
    }
}
