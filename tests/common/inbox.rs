//! Reading an agency's inbox and its messages' delivery states.

use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{GetDeliveryStatusRequest, StreamInboxRequest, StreamInboxResponse};
use tonic::transport::Channel;
use tonic::Streaming;

use super::{TestPki, TestServer, WAIT};

/// Each recipient's delivery state of a message, as its sender sees it: (agency id, state).
pub async fn delivery_states(
    client: &mut ExchangeServiceClient<Channel>,
    message_id: &str,
) -> Vec<(String, i32)> {
    client
        .get_delivery_status(GetDeliveryStatusRequest {
            message_id: message_id.to_string(),
        })
        .await
        .expect("GetDeliveryStatus")
        .into_inner()
        .recipients
        .into_iter()
        .map(|r| (r.agency_id, r.state))
        .collect()
}

/// Every entry of the caller's inbox from sequence 1, backlog only, in order.
pub async fn backlog(client: &mut ExchangeServiceClient<Channel>) -> Vec<StreamInboxResponse> {
    let mut stream = client
        .stream_inbox(StreamInboxRequest {
            after_sequence: 0,
            backlog_only: true,
        })
        .await
        .expect("StreamInbox")
        .into_inner();
    let mut entries = Vec::new();
    while let Some(entry) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("inbox stream stalled")
        .expect("inbox stream failed")
    {
        entries.push(entry);
    }
    entries
}

/// A `StreamInbox` request resuming after `after_sequence`.
pub fn inbox_request(after_sequence: u64) -> StreamInboxRequest {
    StreamInboxRequest {
        after_sequence,
        ..Default::default()
    }
}

/// Opens the caller's inbox stream after `after_sequence`; panics if the call is refused.
pub async fn open_inbox(
    client: &mut ExchangeServiceClient<Channel>,
    after_sequence: u64,
) -> Streaming<StreamInboxResponse> {
    tokio::time::timeout(WAIT, client.stream_inbox(inbox_request(after_sequence)))
        .await
        .expect("StreamInbox did not answer in time")
        .expect("StreamInbox refused")
        .into_inner()
}

/// The next entry of an inbox stream; panics on error, end of stream or timeout.
pub async fn next_entry(stream: &mut Streaming<StreamInboxResponse>) -> StreamInboxResponse {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Err(_) => panic!("no inbox entry within {WAIT:?}"),
        Ok(Err(status)) => panic!("inbox stream failed: {status:?}"),
        Ok(Ok(None)) => panic!("inbox stream ended"),
        Ok(Ok(Some(entry))) => entry,
    }
}

/// The next `n` entries of an inbox stream.
pub async fn next_entries(
    stream: &mut Streaming<StreamInboxResponse>,
    n: usize,
) -> Vec<StreamInboxResponse> {
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(next_entry(stream).await);
    }
    entries
}

/// The first entry of agency `id`'s inbox (sequence 1 onwards).
pub async fn first_inbox_entry(
    pki: &TestPki,
    server: &TestServer,
    id: &str,
) -> StreamInboxResponse {
    let mut client = pki.agency_client(id, server.addr).await;
    let mut stream = open_inbox(&mut client, 0).await;
    next_entry(&mut stream).await
}
