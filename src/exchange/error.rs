//! Why an exchange call fails, and its gRPC status: one exhaustive mapping.

use tonic::Status;

use super::validate::MessageId;
use crate::admission::ResponseBudgetSpent;
use crate::identity::{AgencyId, IdentityError};
use crate::pb::v1::HandlingCode;
use crate::rpc::InvalidField;
use crate::store::StoreError;

/// Why an exchange call failed. Mapped to a gRPC status in one place, below.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The caller presented no usable identity.
    #[error(transparent)]
    Unauthenticated(#[from] IdentityError),
    /// The caller is not an agency.
    #[error("this method needs an agency certificate (spiffe://<trust-domain>/agency/<ID>); this caller is {0}")]
    NotAnAgency(String),
    /// The caller's agency is not in the directory.
    #[error("agency {0} is not registered on this exchange; ask an administrator to register it")]
    UnregisteredAgency(AgencyId),
    /// The caller's agency is suspended.
    #[error("agency {0} is suspended and can neither send nor receive; contact the exchange administrators")]
    SuspendedAgency(AgencyId),
    /// A request field breaks a rule.
    #[error(transparent)]
    InvalidField(#[from] InvalidField),
    /// A named recipient is suspended.
    #[error("recipient {0} is suspended and cannot receive messages; remove it from recipients")]
    RecipientSuspended(String),
    /// No such message, or the caller may not see it (indistinguishable on purpose).
    #[error("no message {0} that this agency can access")]
    MessageNotFound(MessageId),
    /// The caller can read the message but this operation is for another party.
    #[error("{0}")]
    NotAllowed(PartyOnly),
    /// The originator's handling code forbids passing the message on without its consent
    /// (forwarding H2/H3).
    #[error("message {message_id} is {} and {originator} has not consented to {holder} passing it to {target}: ask with RequestConsent", handling.as_str_name())]
    NoConsent {
        /// The original message.
        message_id: String,
        /// Its handling code.
        handling: HandlingCode,
        /// The originator, whose consent it needs.
        originator: String,
        /// The agency passing it on.
        holder: AgencyId,
        /// The agency it would go to.
        target: String,
    },
    /// The originator retracted the message: it is not to be passed on any more.
    #[error("message {0} was retracted by its originator and cannot be forwarded")]
    Retracted(String),
    /// The holder's earlier request (named) to pass this message to this agency still awaits
    /// the originator's decision.
    #[error("consent to pass this message to that agency was already asked in request {0}, still pending: wait for the originator's decision")]
    ConsentPending(String),
    /// The originator already granted the holder's request (named) for this message and agency.
    #[error("consent to pass this message to that agency was already granted on request {0}: forward it")]
    ConsentGranted(String),
    /// The consent request was replaced by a later one of the same holder for the same agency.
    #[error(
        "this consent request was superseded by the holder's later request {0}; decide that one"
    )]
    ConsentSuperseded(String),
    /// The idempotency key was used for a different request.
    #[error("client_message_id {0:?} was already used for a different message; use a new key for new content")]
    IdempotencyConflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The agency has as many inbox streams open as it may.
    #[error("{agency} already has {limit} inbox streams open, the most allowed; close one (one stream per reader is enough: it replays the backlog, then follows)")]
    TooManyStreams {
        /// The agency.
        agency: String,
        /// Its stream limit.
        limit: usize,
    },
    /// The caller's (or the exchange's) budget of answers not yet read is spent.
    #[error("{0}")]
    ResponsesUnread(ResponseBudgetSpent),
    /// The server is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Which party alone may do what a caller that can read the message tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PartyOnly {
    /// Acknowledging is for recipients.
    #[error("only a recipient can acknowledge a message")]
    RecipientAcknowledges,
    /// Forwarding, and asking consent to, is for recipients.
    #[error("only a recipient can pass a message on or ask to")]
    RecipientPassesOn,
    /// Delivery status is for the sender.
    #[error("only the sender can see a message's delivery status")]
    SenderSeesDelivery,
    /// Retracting and correcting are for the originator.
    #[error("only the originator can retract or correct a message")]
    OriginatorAmends,
}

impl crate::rpc::Refusal for ExchangeError {
    fn is_refusal(&self) -> bool {
        // A spent response budget is load, not a decision about the caller: recording each
        // one would let a slow reader grow the permanent log.
        !matches!(
            self,
            ExchangeError::Store(_)
                | ExchangeError::ShuttingDown
                | ExchangeError::ResponsesUnread(_)
        )
    }
}

impl ExchangeError {
    /// An `InvalidField` error: `field` breaks a rule, `reason`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ExchangeError {
        InvalidField::new(field, reason).into()
    }
}

impl From<ExchangeError> for Status {
    fn from(err: ExchangeError) -> Self {
        match err {
            ExchangeError::Unauthenticated(e) => e.into(),
            ExchangeError::NotAnAgency(_)
            | ExchangeError::UnregisteredAgency(_)
            | ExchangeError::SuspendedAgency(_)
            | ExchangeError::NotAllowed(_)
            | ExchangeError::NoConsent { .. } => Status::permission_denied(err.to_string()),
            ExchangeError::InvalidField(invalid) => invalid.into(),
            ExchangeError::RecipientSuspended(_)
            | ExchangeError::Retracted(_)
            | ExchangeError::ConsentSuperseded(_) => Status::failed_precondition(err.to_string()),
            ExchangeError::MessageNotFound(_) => Status::not_found(err.to_string()),
            ExchangeError::IdempotencyConflict(_)
            | ExchangeError::ConsentPending(_)
            | ExchangeError::ConsentGranted(_) => Status::already_exists(err.to_string()),
            ExchangeError::TooManyStreams { .. } => {
                crate::admission::exhausted(err.to_string(), crate::admission::STREAM_RETRY)
            }
            ExchangeError::ResponsesUnread(_) => {
                crate::admission::exhausted(err.to_string(), crate::admission::RESPONSE_RETRY)
            }
            ExchangeError::ShuttingDown => crate::rpc::shutting_down(),
            ExchangeError::Store(e) => crate::rpc::store_failure(&e),
        }
    }
}

impl From<StoreError> for ExchangeError {
    fn from(err: StoreError) -> Self {
        ExchangeError::Store(err)
    }
}
