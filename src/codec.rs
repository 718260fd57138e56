//! How requests come off the wire. A request that cannot be decoded is the caller's fault, so it
//! answers `INVALID_ARGUMENT` with a short fixed message, where tonic answers `INTERNAL` with
//! prost's description of the bytes: [`ServerCodec`] (the protobuf codec of the served
//! `puente.v1` services, chosen in `build.rs`) for a message that does not decode (invalid
//! UTF-8 in a string, nesting past the recursion limit, a field cut short), and
//! [`FramingLayer`] (on the router) for a request body that ends inside a gRPC frame.
//!
//! The generated clients keep tonic's own codec: an answer that does not decode is the server's
//! fault, and `INTERNAL` is right for it.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::Bytes;
use tonic::Status;
use tonic_prost::ProstEncoder;
use tower::{Layer, Service};

/// The status of a request message that does not decode. Fixed: prost's description names
/// fields and can quote what the caller sent.
fn undecodable() -> Status {
    Status::invalid_argument(
        "the request is not a valid protobuf encoding of this method's request message",
    )
}

/// The status of a request whose body ends inside a gRPC frame.
fn truncated() -> Status {
    Status::invalid_argument(
        "the request ended inside a gRPC message frame (fewer bytes than its length prefix)",
    )
}

// === impl ServerCodec ===

/// prost's codec for the served services, except that a request that does not decode is
/// `INVALID_ARGUMENT`. `T` is the response, encoded as tonic-prost does; `U` the request.
#[derive(Debug, Clone)]
pub(crate) struct ServerCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        ServerCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Decodes one request message with prost; see [`ServerCodec`].
#[derive(Debug, Clone)]
pub(crate) struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            tracing::debug!(%error, "undecodable request");
            undecodable()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

// === impl FramingLayer ===

/// Length of a gRPC message frame's header: a compression flag and a big-endian `u32` length.
const FRAME_HEADER: usize = 5;

/// Router layer that makes a request body ending inside a gRPC frame fail with
/// `INVALID_ARGUMENT` (tonic's decoder would answer `INTERNAL` "Unexpected EOF"). It follows
/// the frame headers as the body passes, without holding any of its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FramingLayer;

impl<S> Layer<S> for FramingLayer {
    type Service = FramingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FramingService { inner }
    }
}

/// The service [`FramingLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub(crate) struct FramingService<S> {
    inner: S,
}

impl<S> Service<http::Request<tonic::body::Body>> for FramingService<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let request = request.map(|body| tonic::body::Body::new(FramedBody::new(body)));
        self.inner.call(request)
    }
}

pin_project! {
    /// A request body whose end is checked against the gRPC frames it carried.
    struct FramedBody<B> {
        #[pin]
        inner: B,
        // Bytes of the current frame's header seen so far (0 between frames).
        header: [u8; FRAME_HEADER],
        header_len: usize,
        // Bytes of the current frame's message still to come.
        remaining: u64,
        // The truncation was reported: the body is over.
        failed: bool,
    }
}

impl<B> FramedBody<B> {
    fn new(inner: B) -> Self {
        FramedBody {
            inner,
            header: [0; FRAME_HEADER],
            header_len: 0,
            remaining: 0,
            failed: false,
        }
    }
}

/// Advances the frame position over `data`: `(header, header_len, remaining)` as in
/// [`FramedBody`].
fn follow(
    header: &mut [u8; FRAME_HEADER],
    header_len: &mut usize,
    remaining: &mut u64,
    data: &[u8],
) {
    let mut data = data;
    while !data.is_empty() {
        if *remaining > 0 {
            let step = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
            *remaining -= step as u64;
            data = &data[step..];
            continue;
        }
        let step = (FRAME_HEADER - *header_len).min(data.len());
        header[*header_len..*header_len + step].copy_from_slice(&data[..step]);
        *header_len += step;
        data = &data[step..];
        if *header_len == FRAME_HEADER {
            *header_len = 0;
            *remaining = u64::from(u32::from_be_bytes([
                header[1], header[2], header[3], header[4],
            ]));
        }
    }
}

impl<B> Body for FramedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let in_frame = |header_len: usize, remaining: u64| header_len > 0 || remaining > 0;
        match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    follow(this.header, this.header_len, this.remaining, data);
                } else if in_frame(*this.header_len, *this.remaining) {
                    // Trailers end the body too.
                    *this.failed = true;
                    return Poll::Ready(Some(Err(truncated())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(Status::from_error(error.into())))),
            None if in_frame(*this.header_len, *this.remaining) => {
                *this.failed = true;
                Poll::Ready(Some(Err(truncated())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.inner.is_end_stream() && self.header_len == 0 && self.remaining == 0)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame positions after feeding `chunks`: whether a frame is unfinished.
    fn unfinished(chunks: &[&[u8]]) -> bool {
        let (mut header, mut header_len, mut remaining) = ([0; FRAME_HEADER], 0, 0);
        for chunk in chunks {
            follow(&mut header, &mut header_len, &mut remaining, chunk);
        }
        header_len > 0 || remaining > 0
    }

    #[test]
    fn follows_frames_across_chunk_boundaries() {
        let cases: [(&[&[u8]], bool); 7] = [
            (&[], false),
            (&[&[0, 0, 0, 0, 0]], false),
            (&[&[0, 0, 0, 0, 2, 7, 7]], false),
            (&[&[0, 0], &[0, 0, 2, 7], &[7, 0, 0, 0, 0, 1, 9]], false),
            (&[&[0, 0, 0]], true),
            (&[&[0, 0, 0, 0, 3, 7, 7]], true),
            (&[&[0, 0, 0, 0, 1, 7, 0]], true),
        ];
        for (chunks, want) in cases {
            assert_eq!(unfinished(chunks), want, "{chunks:?}");
        }
    }
}
