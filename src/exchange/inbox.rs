//! `StreamInbox`: the backlog after the client's resume point, then live messages, in sequence
//! order without gaps (but for messages erased at the end of their retention period).
//!
//! Each stream has its own task that follows the inbox's durable watermark and reads entries
//! from the store up to it. Nothing is pushed to readers, so a slow reader only delays itself:
//! its task waits on a small bounded buffer while senders and other readers go on.
//!
//! What a stalled stream (a client that stops reading) holds in the server, with `M` the
//! largest encoded response (about `limits.max_message_bytes`):
//! - this module's buffer: at most [`STREAM_BUFFER`] responses whose bodies, when there are
//!   two, fit in [`STREAM_BUFFER_BYTES`]: at most max(1 MiB, M). The reader task waits for
//!   room *before* it reads a message, so while it waits it holds none;
//! - hyper: one chunk that tonic encoded from the responses it took (it yields once 32 KiB are
//!   encoded: at most 32 KiB + M), held until the stream has send capacity, which it lacks once
//!   the client's stream window is used up. Meanwhile nothing polls tonic or this buffer;
//! - h2: the chunks handed over before, each accepted only while less than hyper's
//!   `max_send_buf_size` (400 KiB) was queued: at most 432 KiB + M.
//!
//! tonic encodes into a buffer that grows by doubling, so a chunk may pin twice its length.
//! Together max(1 MiB, M) + 2·(32 KiB + M) + 2·(432 KiB + M), about 5·M + 1 MiB per stalled
//! stream whatever its backlog: 81 MiB at the 16 MiB limit. Measured: 1.5, 3.2 and 5.8 MiB per
//! stream with 128 KiB, 512 KiB and 1 MiB messages (`tests/streams.rs`, RELIABILITY.md). The
//! client's windows decide how much more has left the server.
//!
//! Each message also takes room in its agency's budget of response bytes in flight
//! (`admission::ResponseBudget`, shared with its `GetMessage` answers) before it is read, kept
//! until tonic asks for the next response (see [`Holding`]). So all the stalled streams of an
//! agency together hold about `limits.response_bytes_per_caller` of messages (tonic's doubling
//! buffers aside), however many streams it opens: a stream whose agency's budget is spent waits,
//! holding nothing, until another stream or call of the agency gives room back.

use crate::admission::{ResponsePermit, StreamSlot};
use crate::metrics::InboxProgress;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{debug, warn};

use super::{ExchangeError, ExchangeService};
use std::sync::Arc;

use crate::audit;
use crate::identity::{AgencyId, Caller, IdentityError, Revocations};
use crate::pb::v1::AuditAction;
use crate::pb::v1::{DeliveryState, StreamInboxResponse};
use crate::store::records::MessageRecord;

/// Entries read from the store per round.
const READ_CHUNK: usize = 64;
/// Responses buffered per stream before the reader task waits for the client. Small, because a
/// message counts as DELIVERED once it is handed to this buffer.
const STREAM_BUFFER: usize = 2;
/// Body bytes the buffer of one stream holds: a response joins a non-empty buffer only if the
/// bodies in it stay within this; a larger one waits until the buffer is empty and goes alone.
/// Small messages keep the buffer's full depth; a stalled stream holds one large message here,
/// not two.
const STREAM_BUFFER_BYTES: u32 = 1024 * 1024;

/// A response in a stream's buffer with its share of the buffer's bytes, given back when the
/// transport takes the response. Boxed: the channel allocates its slots 32 at a time when it
/// is created, and a `StreamInboxResponse` is about 1 KiB, which every idle stream would pay.
type Buffered = Result<
    (
        Box<StreamInboxResponse>,
        OwnedSemaphorePermit,
        ResponsePermit,
    ),
    Status,
>;

/// The response stream of `StreamInbox`.
pub(super) type InboxStream =
    Pin<Box<dyn Stream<Item = Result<StreamInboxResponse, Status>> + Send>>;

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

/// Starts the reader task of one inbox stream.
/// With `backlog_only`, the stream ends once it has caught up with the durable inbox.
pub(super) fn spawn(
    service: ExchangeService,
    reader: Reader,
    after: u64,
    backlog_only: bool,
) -> InboxStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let bytes = Arc::new(Semaphore::new(STREAM_BUFFER_BYTES as usize));
    tokio::spawn(async move {
        if let Err(err) = follow(&service, &reader, after, backlog_only, &tx, &bytes).await {
            // The client may already be gone; then there is nobody to tell.
            let _ = tx.send(Err(err.into())).await;
        }
        debug!(agency = %reader.agency, "inbox stream closed");
    });
    Box::pin(Holding {
        inner: ReceiverStream::new(rx),
        held: None,
    })
}

/// The buffered responses of a stream, each handed to tonic with its share of the stream's
/// buffer given back, and its room in the caller's response budget kept until tonic asks for
/// the next one: tonic encodes a large response into a chunk of its own, and hyper asks for more
/// only once that chunk, handed to h2 in pieces (`admission::ResponseBytesLayer`), has all but
/// left the server. So what a stalled stream holds counts against its agency's budget of
/// response bytes in flight, with its `GetMessage` answers.
struct Holding {
    inner: ReceiverStream<Buffered>,
    held: Option<ResponsePermit>,
}

impl Stream for Holding {
    type Item = Result<StreamInboxResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.held = None;
        let buffered = ready!(Pin::new(&mut self.inner).poll_next(cx));
        Poll::Ready(buffered.map(|buffered| {
            buffered.map(|(response, _share, permit)| {
                self.held = Some(permit);
                *response
            })
        }))
    }
}

/// Room in the caller's response budget for an answer of `bytes` bytes, waiting as long as it
/// takes; `None` once the client is gone, the server stops or the certificate is revoked.
async fn reserve(
    service: &ExchangeService,
    reader: &Reader,
    bytes: u64,
    tx: &mpsc::Sender<Buffered>,
) -> Option<ResponsePermit> {
    let caller = reader.caller.id.to_string();
    loop {
        if tx.is_closed()
            || *service.shutdown.borrow()
            || reader.revocations.is_revoked(&reader.caller.serial)
        {
            return None;
        }
        // Each attempt waits up to `admission::RESPONSE_WAIT`; a stream has no caller to refuse.
        if let Ok(permit) = service.responses.reserve(&caller, bytes).await {
            return Some(permit);
        }
    }
}

/// The share of a stream's buffer bytes that a message takes: its body's length (the decoded
/// response is about that size), at most all of them.
fn buffer_share(record: &MessageRecord) -> u32 {
    u32::try_from(record.body_len).map_or(STREAM_BUFFER_BYTES, |len| len.min(STREAM_BUFFER_BYTES))
}

async fn follow(
    service: &ExchangeService,
    reader: &Reader,
    mut last: u64,
    backlog_only: bool,
    tx: &mpsc::Sender<Buffered>,
    bytes: &Arc<Semaphore>,
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
            .inbox_range(agency.as_str(), last, durable, READ_CHUNK)
            .await?;
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
            let Some(record) = service.store.message(&message_id).await? else {
                debug!(agency = %agency, sequence, message_id, "inbox entry of an erased message skipped");
                reader.progress.skipped(sequence);
                last = sequence;
                continue;
            };
            // Room in the caller's budget and in the buffer first, the body after: a task
            // waiting on a stalled client holds no message.
            let answer = record.body_len.saturating_add(super::ANSWER_OVERHEAD);
            let permit = reserve(service, reader, answer, tx).await;
            // The wait may have been long: a certificate revoked meanwhile gets nothing more.
            if reader.revocations.is_revoked(&reader.caller.serial) {
                warn!(agency = %agency, serial = %reader.caller.serial, "inbox stream ended: certificate revoked");
                return Err(ExchangeError::Unauthenticated(IdentityError::Revoked));
            }
            let Some(permit) = permit else {
                return Ok(());
            };
            let Ok(share) = Arc::clone(bytes)
                .acquire_many_owned(buffer_share(&record))
                .await
            else {
                // Never closed; the semaphore lives as long as this task.
                return Ok(());
            };
            let Ok(slot) = tx.reserve().await else {
                return Ok(());
            };
            let event =
                audit::message_event(AuditAction::MessageDelivered, Some(&reader.caller), &record);
            let message = service.to_message(record).await?;
            let response = StreamInboxResponse {
                sequence,
                message: Some(message),
            };
            slot.send(Ok((Box::new(response), share, permit)));
            reader.progress.delivered(sequence);
            service
                .store
                .advance_delivery_later(
                    &message_id,
                    agency.as_str(),
                    DeliveryState::Delivered as i32,
                    event.into(),
                )
                .await?;
            last = sequence;
        }
    }
}
