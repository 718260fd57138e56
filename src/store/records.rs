//! The store's own canonical records and key layout. Records are protobuf-encoded (prost derive)
//! so fields can be added without rewriting stored data; they are not the public contract.

/// A stored message. The body is the deterministic protobuf encoding of a `SendMessageRequest`
/// holding only `content` and `attachments`; `content_sha256` is its SHA-256.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageRecord {
    /// Server-assigned UUIDv7.
    #[prost(string, tag = "1")]
    pub message_id: String,
    /// Sending agency id, from its certificate.
    #[prost(string, tag = "2")]
    pub sender: String,
    /// Recipient agency ids after expansion, sorted.
    #[prost(string, repeated, tag = "3")]
    pub recipients: Vec<String>,
    /// `puente.v1.Topic` value.
    #[prost(int32, tag = "4")]
    pub topic: i32,
    /// Subject line (sealed at rest: see `sealed_fields`).
    #[prost(string, tag = "5")]
    pub subject: String,
    /// `puente.v1.HandlingCode` value.
    #[prost(int32, tag = "6")]
    pub handling: i32,
    /// `puente.v1.SourceReliability` value.
    #[prost(int32, tag = "7")]
    pub source_reliability: i32,
    /// `puente.v1.InformationAccuracy` value.
    #[prost(int32, tag = "8")]
    pub information_accuracy: i32,
    /// Acceptance time, microseconds since the Unix epoch.
    #[prost(int64, tag = "9")]
    pub created_at_micros: i64,
    /// Message this one answers, or empty.
    #[prost(string, tag = "10")]
    pub in_reply_to: String,
    /// Sender's case reference, or empty.
    #[prost(string, tag = "11")]
    pub case_reference: String,
    /// SHA-256 of the body.
    #[prost(bytes = "vec", tag = "12")]
    pub content_sha256: Vec<u8>,
    /// Serial (hex) of the certificate the message was sent with.
    #[prost(string, tag = "13")]
    pub sender_serial: String,
    /// The body, sealed (see `store::sealing`), when small enough to keep inline and not in the
    /// embedded backend's bodies file (`body_file_len`); empty when `body_external`. Callers hand
    /// the store the plain body; `Store::body` opens it.
    #[prost(bytes = "vec", tag = "14")]
    pub body: Vec<u8>,
    /// The sealed body lives in the object directory under the message id.
    #[prost(bool, tag = "15")]
    pub body_external: bool,
    /// Length of the plain body in bytes.
    #[prost(uint64, tag = "16")]
    pub body_len: u64,
    /// The originator's conditions of use.
    #[prost(string, tag = "17")]
    pub handling_conditions: String,
    /// `puente.v1.Priority` value.
    #[prost(int32, tag = "18")]
    pub priority: i32,
    /// When an answer is due, microseconds since the Unix epoch; 0 if none is asked.
    #[prost(int64, tag = "19")]
    pub respond_by_micros: i64,
    /// `puente.v1.MessageKind` value.
    #[prost(int32, tag = "20")]
    pub kind: i32,
    /// Agency that first sent the intelligence (the sender, except for forwarded copies).
    #[prost(string, tag = "21")]
    pub originator: String,
    /// For forwarded copies: the originator's message.
    #[prost(string, tag = "22")]
    pub original_message_id: String,
    /// For forwarded copies: every step from the originator to this copy.
    #[prost(message, repeated, tag = "23")]
    pub provenance: Vec<ForwardHopRecord>,
    /// For consent requests and decisions and for notices: the message concerned.
    #[prost(string, tag = "24")]
    pub related_message_id: String,
    /// For consent requests and decisions: the prospective recipient.
    #[prost(string, tag = "25")]
    pub consent_agency: String,
    /// For consent decisions: granted or not.
    #[prost(bool, tag = "26")]
    pub consent_granted: bool,
    /// Reason given with a forward, consent request or decision, or notice.
    #[prost(string, tag = "27")]
    pub reason: String,
    /// For MATCH_HIT entries: the encoded `puente.v1.MatchHitNotice`.
    #[prost(bytes = "vec", tag = "28")]
    pub match_hit: Vec<u8>,
    /// Id of the data key that sealed the body and the sealed fields.
    #[prost(string, tag = "29")]
    pub body_key_id: String,
    /// Nonce the body was sealed with.
    #[prost(bytes = "vec", tag = "30")]
    pub body_nonce: Vec<u8>,
    /// `subject`, `reason`, `handling_conditions` and `match_hit`, sealed together as a
    /// `SealedFields`; those four are empty as stored and filled in by `Store::message`.
    #[prost(bytes = "vec", tag = "31")]
    pub sealed_fields: Vec<u8>,
    /// Nonce `sealed_fields` was sealed with.
    #[prost(bytes = "vec", tag = "32")]
    pub sealed_fields_nonce: Vec<u8>,
    /// Where the sealed body starts in the embedded backend's bodies file.
    #[prost(uint64, tag = "33")]
    pub body_offset: u64,
    /// Length of the sealed body in the bodies file; 0 when it is not there (a sealed body is
    /// never empty: it carries its tag).
    #[prost(uint64, tag = "34")]
    pub body_file_len: u64,
}

/// The free-text fields of a message, sealed at rest beside its body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealedFields {
    /// `MessageRecord::subject`.
    #[prost(string, tag = "1")]
    pub subject: String,
    /// `MessageRecord::reason`.
    #[prost(string, tag = "2")]
    pub reason: String,
    /// `MessageRecord::handling_conditions`.
    #[prost(string, tag = "3")]
    pub handling_conditions: String,
    /// `MessageRecord::match_hit`.
    #[prost(bytes = "vec", tag = "4")]
    pub match_hit: Vec<u8>,
}

impl SealedFields {
    /// Moves the free-text fields out of `record`, leaving them empty.
    pub fn take(record: &mut MessageRecord) -> SealedFields {
        SealedFields {
            subject: std::mem::take(&mut record.subject),
            reason: std::mem::take(&mut record.reason),
            handling_conditions: std::mem::take(&mut record.handling_conditions),
            match_hit: std::mem::take(&mut record.match_hit),
        }
    }

    /// Puts the fields back into `record`.
    pub fn restore(self, record: &mut MessageRecord) {
        record.subject = self.subject;
        record.reason = self.reason;
        record.handling_conditions = self.handling_conditions;
        record.match_hit = self.match_hit;
    }
}

/// One published blinded identifier of one agency.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishedRecord {
    /// The publisher's own reference.
    #[prost(string, tag = "1")]
    pub reference: String,
    /// The opaque reference a querier receives on a hit.
    #[prost(string, tag = "2")]
    pub match_reference: String,
    /// The message the identifier came from, if given.
    #[prost(string, tag = "3")]
    pub source_message_id: String,
    /// The publisher's case reference, if given.
    #[prost(string, tag = "4")]
    pub case_reference: String,
    /// When it was (last) published, microseconds since the Unix epoch.
    #[prost(int64, tag = "5")]
    pub published_at_micros: i64,
}

/// One step of a forwarded copy's path.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardHopRecord {
    /// Agency that passed the message on.
    #[prost(string, tag = "1")]
    pub from_agency: String,
    /// Agency it was passed to.
    #[prost(string, tag = "2")]
    pub to_agency: String,
    /// The copy created by that step.
    #[prost(string, tag = "3")]
    pub message_id: String,
    /// When, microseconds since the Unix epoch.
    #[prost(int64, tag = "4")]
    pub forwarded_at_micros: i64,
}

/// What an idempotency key (sender + `client_message_id`) is bound to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdempotencyRecord {
    /// The message the key created.
    #[prost(string, tag = "1")]
    pub message_id: String,
    /// SHA-256 of the request that created it, without its `client_message_id`.
    #[prost(bytes = "vec", tag = "2")]
    pub request_sha256: Vec<u8>,
    /// Acceptance time of that message, microseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    pub accepted_at_micros: i64,
    /// Index of the message's MESSAGE_ACCEPTED audit entry.
    #[prost(uint64, tag = "4")]
    pub audit_index: u64,
}

/// Delivery state of one message for one recipient.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct DeliveryRecord {
    /// `puente.v1.DeliveryState` value; only ever moves forward.
    #[prost(int32, tag = "1")]
    pub state: i32,
    /// When that state was reached, microseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub updated_at_micros: i64,
}

impl DeliveryRecord {
    /// The state of a recipient with no stored delivery record: PENDING since the message was
    /// accepted (sends do not store it, to keep a send's batch small).
    #[must_use]
    pub fn pending(message: &MessageRecord) -> DeliveryRecord {
        DeliveryRecord {
            state: crate::pb::v1::DeliveryState::Pending as i32,
            updated_at_micros: message.created_at_micros,
        }
    }
}

/// One holder's question to an originator — may `holder` pass `original` to `agency`? — and
/// the answer: the state behind `keys::consent`. Consent belongs to the holder that asked, for
/// that agency, and to nobody else: not to another holder, not to the agency a copy went to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConsentRecord {
    /// The latest CONSENT_REQUEST message of this holder for this agency (it carries the
    /// holder's reason); a decision on any other request of theirs is refused as superseded.
    #[prost(string, tag = "1")]
    pub consent_request_id: String,
    /// The originator decided that request.
    #[prost(bool, tag = "2")]
    pub decided: bool,
    /// The decision was to grant (meaningful once `decided`).
    #[prost(bool, tag = "3")]
    pub granted: bool,
}

impl ConsentRecord {
    /// Whether the holder may forward under it.
    #[must_use]
    pub fn is_granted(&self) -> bool {
        self.decided && self.granted
    }
}

/// A directory entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AgencyRecord {
    /// Agency id.
    #[prost(string, tag = "1")]
    pub agency_id: String,
    /// Display name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// ISO 3166-1 alpha-2 country (or `EU`/`XX`).
    #[prost(string, tag = "3")]
    pub country: String,
    /// `puente.v1.Region` value.
    #[prost(int32, tag = "4")]
    pub region: i32,
    /// `puente.v1.AgencyStatus` value.
    #[prost(int32, tag = "5")]
    pub status: i32,
    /// When the agency was registered, microseconds since the Unix epoch.
    #[prost(int64, tag = "6")]
    pub created_at_micros: i64,
    /// When the record last changed, microseconds since the Unix epoch.
    #[prost(int64, tag = "7")]
    pub updated_at_micros: i64,
}

/// An agency's match query quota window: when it started and how many identifiers it queried
/// in it. Kept so that a restart does not hand the agency a fresh quota.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct QuotaRecord {
    /// Start of the window, Unix seconds.
    #[prost(uint64, tag = "1")]
    pub window_start_unix_secs: u64,
    /// Identifiers queried in the window.
    #[prost(uint64, tag = "2")]
    pub used: u64,
}

/// Where a publication is filed: a blinded matching identifier, its key epoch and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    /// The blinding key epoch.
    pub key_epoch: u32,
    /// The identifier kind (`IdentifierKind`).
    pub kind: i32,
    /// HMAC-SHA-256 of the canonical identifier under the epoch's key.
    pub blinded: Vec<u8>,
}
