//! The tonic trait of `puente.v1.ExchangeService`: each method calls its handler and answers
//! through [`crate::rpc::answer`], which records refusals in the audit log.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{inbox, with_permit, ExchangeError, ExchangeService};
use crate::directory::to_wire;
use crate::identity::{peer_of, Peer};
use crate::pb::v1::exchange_service_server::ExchangeService as ExchangeApi;
use crate::pb::v1::{
    AcknowledgeMessageRequest, AcknowledgeMessageResponse, CorrectMessageRequest,
    CorrectMessageResponse, DenyConsentRequest, DenyConsentResponse, ForwardMessageRequest,
    ForwardMessageResponse, GetDeliveryStatusRequest, GetDeliveryStatusResponse, GetMessageRequest,
    GetMessageResponse, GrantConsentRequest, GrantConsentResponse, ListAgenciesRequest,
    ListAgenciesResponse, ListThreadRequest, ListThreadResponse, RequestConsentRequest,
    RequestConsentResponse, RetractMessageRequest, RetractMessageResponse, SendMessageRequest,
    SendMessageResponse, StreamInboxRequest,
};

impl ExchangeService {
    /// Answers `method` of `puente.v1.ExchangeService` (see [`crate::rpc::answer`]).
    async fn answer<T>(
        &self,
        method: &str,
        peer: Option<Peer>,
        result: Result<T, ExchangeError>,
    ) -> Result<Response<T>, Status> {
        crate::rpc::answer(self.store.as_ref(), SERVICE, method, peer, result).await
    }
}

/// The service's full name, as in the methods' paths.
const SERVICE: &str = "puente.v1.ExchangeService";

#[tonic::async_trait]
impl ExchangeApi for ExchangeService {
    #[instrument(skip(self, request))]
    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.send(request).await;
        self.answer("SendMessage", peer, result).await
    }

    type StreamInboxStream = inbox::InboxStream;

    #[instrument(skip(self, request))]
    async fn stream_inbox(
        &self,
        request: Request<StreamInboxRequest>,
    ) -> Result<Response<Self::StreamInboxStream>, Status> {
        let peer = peer_of(&request);
        let result = self.open_inbox(request);
        self.answer("StreamInbox", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn acknowledge_message(
        &self,
        request: Request<AcknowledgeMessageRequest>,
    ) -> Result<Response<AcknowledgeMessageResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.acknowledge(request).await;
        self.answer("AcknowledgeMessage", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<GetMessageResponse>, Status> {
        let peer = peer_of(&request);
        // Every read is an entry: charged to the caller before anything is read.
        crate::rpc::charge_audited(peer.as_ref())?;
        let result = self.get(request).await;
        let answer = self.answer("GetMessage", peer, result).await?;
        Ok(with_permit(answer))
    }

    #[instrument(skip(self, request))]
    async fn get_delivery_status(
        &self,
        request: Request<GetDeliveryStatusRequest>,
    ) -> Result<Response<GetDeliveryStatusResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.delivery_status(request).await;
        self.answer("GetDeliveryStatus", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn list_agencies(
        &self,
        request: Request<ListAgenciesRequest>,
    ) -> Result<Response<ListAgenciesResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.require_agency(&request).map(|_| ListAgenciesResponse {
            agencies: self.directory.list().iter().map(to_wire).collect(),
        });
        self.answer("ListAgencies", peer, result).await
    }
    #[instrument(skip(self, request))]
    async fn forward_message(
        &self,
        request: Request<ForwardMessageRequest>,
    ) -> Result<Response<ForwardMessageResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.forward(request).await;
        self.answer("ForwardMessage", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn request_consent(
        &self,
        request: Request<RequestConsentRequest>,
    ) -> Result<Response<RequestConsentResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.ask_consent(request).await;
        self.answer("RequestConsent", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn grant_consent(
        &self,
        request: Request<GrantConsentRequest>,
    ) -> Result<Response<GrantConsentResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.grant(request).await;
        self.answer("GrantConsent", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn deny_consent(
        &self,
        request: Request<DenyConsentRequest>,
    ) -> Result<Response<DenyConsentResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.deny(request).await;
        self.answer("DenyConsent", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn retract_message(
        &self,
        request: Request<RetractMessageRequest>,
    ) -> Result<Response<RetractMessageResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.retract(request).await;
        self.answer("RetractMessage", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn correct_message(
        &self,
        request: Request<CorrectMessageRequest>,
    ) -> Result<Response<CorrectMessageResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.correct(request).await;
        self.answer("CorrectMessage", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn list_thread(
        &self,
        request: Request<ListThreadRequest>,
    ) -> Result<Response<ListThreadResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.thread(request).await;
        let answer = self.answer("ListThread", peer, result).await?;
        Ok(with_permit(answer))
    }
}
