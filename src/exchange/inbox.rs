//! `StreamInbox`: the backlog after the client's resume point, then live messages, in sequence
//! order without gaps (but for messages erased at the end of their retention period).
//!
//! Each stream has its own task that follows the inbox's durable watermark and reads entries
//! from the store up to it. Nothing is pushed to readers, so a slow reader only delays itself:
//! its task waits on a small bounded channel while senders and other readers go on.

use crate::admission::StreamSlot;
use crate::metrics::InboxProgress;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{debug, warn};

use super::{ExchangeError, ExchangeService};
use std::sync::Arc;

use crate::audit;
use crate::identity::{AgencyId, Caller, IdentityError, Revocations};
use crate::pb::v1::AuditAction;
use crate::pb::v1::{DeliveryState, StreamInboxResponse};

/// Entries read from the store per round.
const READ_CHUNK: usize = 64;
/// Responses buffered per stream before the reader task waits for the client. Small, because a
/// message counts as DELIVERED once it is handed to this buffer.
const STREAM_BUFFER: usize = 2;

/// The response stream of `StreamInbox`.
pub type InboxStream = Pin<Box<dyn Stream<Item = Result<StreamInboxResponse, Status>> + Send>>;

/// Starts the reader task of one inbox stream.
/// With `backlog_only`, the stream ends once it has caught up with the durable inbox.
/// Whose inbox a stream reads, and what ends it early.
pub(super) struct Reader {
    /// The agency.
    pub agency: AgencyId,
    /// The caller that opened the stream.
    pub caller: Arc<Caller>,
    /// Revocations in force; the stream ends when its certificate is revoked.
    pub revocations: Arc<Revocations>,
    /// The agency's stream slot, held while the stream lives.
    pub _slot: StreamSlot,
    /// What the stream delivered, for the delivered counter and the backlog gauge.
    pub progress: InboxProgress,
}

pub(super) fn spawn(
    service: ExchangeService,
    reader: Reader,
    after: u64,
    backlog_only: bool,
) -> InboxStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        if let Err(err) = follow(&service, &reader, after, backlog_only, &tx).await {
            // The client may already be gone; then there is nobody to tell.
            let _ = tx.send(Err(err.into())).await;
        }
        debug!(agency = %reader.agency, "inbox stream closed");
    });
    Box::pin(ReceiverStream::new(rx))
}

async fn follow(
    service: &ExchangeService,
    reader: &Reader,
    mut last: u64,
    backlog_only: bool,
    tx: &mpsc::Sender<Result<StreamInboxResponse, Status>>,
) -> Result<(), ExchangeError> {
    let agency = &reader.agency;
    let mut watermark = service.store.subscribe_inbox(agency.as_str());
    let mut shutdown = service.shutdown.clone();
    let mut revocations = reader.revocations.subscribe();
    let mut directory = service.directory.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            return Err(ExchangeError::ShuttingDown);
        }
        revocations.borrow_and_update();
        directory.borrow_and_update();
        if reader.revocations.is_revoked(&reader.caller.serial) {
            warn!(agency = %agency, serial = %reader.caller.serial, "inbox stream ended: certificate revoked");
            return Err(ExchangeError::Unauthenticated(IdentityError::Revoked));
        }
        service.check_active(agency)?;
        let durable = *watermark.borrow_and_update();
        let entries = service
            .store
            .inbox_range(agency.as_str(), last, durable, READ_CHUNK)?;
        if entries.is_empty() {
            if backlog_only {
                return Ok(());
            }
            tokio::select! {
                changed = watermark.changed() => if changed.is_err() { return Err(ExchangeError::ShuttingDown) },
                _ = shutdown.changed() => {}
                _ = revocations.changed() => {}
                _ = directory.changed() => {}
                _ = tx.closed() => return Ok(()),
            }
            continue;
        }
        for (sequence, message_id) in entries {
            // Inbox entries and messages commit together; a message missing now was erased
            // when its retention period ran out, and is passed over.
            let Some(record) = service.store.message(&message_id)? else {
                debug!(agency = %agency, sequence, message_id, "inbox entry of an erased message skipped");
                reader.progress.skipped(sequence);
                last = sequence;
                continue;
            };
            let event =
                audit::message_event(AuditAction::MessageDelivered, Some(&reader.caller), &record);
            let message = service.to_message(record)?;
            let response = StreamInboxResponse {
                sequence,
                message: Some(message),
            };
            if tx.send(Ok(response)).await.is_err() {
                return Ok(());
            }
            reader.progress.delivered(sequence);
            service
                .store
                .advance_delivery_later(
                    &message_id,
                    agency.as_str(),
                    DeliveryState::Delivered as i32,
                    event,
                )
                .await?;
            last = sequence;
        }
    }
}
