//! The server side of `puente bench`: the echo service its bare-tonic bound is measured with.
//! [`server::run_echo`](crate::server::run_echo) serves it with the exchange's own TLS; the
//! harness that calls it is the rest of [`bench`](super).

use tonic::{Request, Response, Status};

use crate::pb::bench::v1::echo_service_server::EchoService;
use crate::pb::bench::v1::{EchoRequest, EchoResponse};

/// Answers every request with its payload: no identity check, no storage, no logging, so that
/// what it costs is gRPC over mutual TLS alone.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}
