//! `SendMessageRequest` → a validated [`Draft`]: every field rule, each violation naming its
//! field. Recipient expansion needs the directory and happens in the service.

use prost::Message as _;
use sha2::{Digest, Sha256};

use super::ExchangeError;
use crate::config::Limits;
use crate::identity::AgencyId;
use crate::pb::v1::send_message_request::Content;
use crate::pb::v1::{
    Attachment, HandlingCode, InformationAccuracy, Priority, Region, SendMessageRequest,
    SourceReliability, Topic,
};
use crate::text::{self, excerpt, Shape};

/// Longest subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 256;
/// Longest `client_message_id` and `case_reference`, in characters.
pub const MAX_REFERENCE_CHARS: usize = 128;
/// Longest attachment file name, in characters.
pub const MAX_FILENAME_CHARS: usize = 255;

/// A recipient entry as written by the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// One agency.
    Agency(AgencyId),
    /// Every active agency of a region (`region:CELAC`).
    Region(Region),
    /// Every active agency (`*`).
    Everyone,
}

/// A message id: a UUID in its canonical lower-case hyphenated form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(String);

impl MessageId {
    /// A new time-ordered id (UUIDv7).
    pub fn generate() -> MessageId {
        MessageId(uuid::Uuid::now_v7().hyphenated().to_string())
    }

    /// Parses a message id given by a client; `field` names it in the error.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` if it is not a UUID.
    pub fn parse(field: &'static str, s: &str) -> Result<MessageId, ExchangeError> {
        match uuid::Uuid::try_parse(s) {
            Ok(id) => Ok(MessageId(id.hyphenated().to_string())),
            Err(_) if s.is_empty() => Err(ExchangeError::invalid(field, "is required")),
            Err(_) => Err(ExchangeError::invalid(
                field,
                "must be a message id (a UUID)",
            )),
        }
    }

    /// The id as stored and sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A send request whose fields all passed validation.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The sender's idempotency key.
    pub client_message_id: String,
    /// Recipient entries, in request order, duplicates removed.
    pub recipients: Vec<Recipient>,
    /// Topic.
    pub topic: Topic,
    /// Subject, trimmed.
    pub subject: String,
    /// Handling code.
    pub handling: HandlingCode,
    /// Source reliability.
    pub source_reliability: SourceReliability,
    /// Information accuracy.
    pub information_accuracy: InformationAccuracy,
    /// Message answered, if any (existence and access are checked by the service).
    pub in_reply_to: Option<MessageId>,
    /// Case reference, possibly empty.
    pub case_reference: String,
    /// Deterministic encoding of the content and attachments.
    pub body: Vec<u8>,
    /// SHA-256 of `body`.
    pub content_sha256: Vec<u8>,
    /// SHA-256 identifying the whole request apart from its idempotency key.
    pub request_sha256: Vec<u8>,
    /// The originator's conditions of use (required with H3).
    pub handling_conditions: String,
    /// Priority (routine when unset).
    pub priority: Priority,
    /// When an answer is due, microseconds since the Unix epoch; 0 if none is asked.
    pub respond_by_micros: i64,
}

/// Longest handling conditions, in characters.
pub const MAX_CONDITIONS_CHARS: usize = 1000;
/// Furthest deadline one may set, in days from now.
pub const MAX_RESPOND_BY_DAYS: i64 = 366;

/// Checks the handling conditions for `handling`.
///
/// # Errors
/// `InvalidField("handling_conditions")`.
pub fn check_conditions(handling: HandlingCode, conditions: &str) -> Result<String, ExchangeError> {
    let conditions = conditions.trim().to_string();
    if handling == HandlingCode::H3 && conditions.is_empty() {
        return Err(ExchangeError::invalid(
            "handling_conditions",
            "HANDLING_CODE_H3 requires the conditions of use (what recipients may and may not do)",
        ));
    }
    if conditions.chars().count() > MAX_CONDITIONS_CHARS {
        return Err(ExchangeError::invalid(
            "handling_conditions",
            "must be at most 1000 characters",
        ));
    }
    readable("handling_conditions", &conditions, Shape::Lines)?;
    Ok(conditions)
}

/// Checks a sender's idempotency key (SendMessage and ForwardMessage share the rule and the
/// key space).
///
/// # Errors
/// `InvalidField("client_message_id")`.
pub fn check_client_message_id(key: &str) -> Result<(), ExchangeError> {
    if key.is_empty() {
        return Err(ExchangeError::invalid(
            "client_message_id",
            "is required: a unique key chosen by the sender, used to make retries safe",
        ));
    }
    if key.len() > MAX_REFERENCE_CHARS
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(ExchangeError::invalid(
            "client_message_id",
            "must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
        ));
    }
    Ok(())
}

/// Checks `value`, a string a person reads, by the rule of [`text::check`] for its `shape`.
///
/// # Errors
/// `InvalidField(field)` naming the refused character (never echoing the value).
pub fn readable(field: &str, value: &str, shape: Shape) -> Result<(), ExchangeError> {
    text::check(value, shape).map_err(|e| ExchangeError::invalid(field, e.to_string()))
}

/// Validates a request against the field rules and `limits`.
///
/// # Errors
/// `ExchangeError::Invalid` naming the first field that breaks a rule.
pub fn validate(mut request: SendMessageRequest, limits: &Limits) -> Result<Draft, ExchangeError> {
    let invalid = ExchangeError::invalid;

    let client_message_id = std::mem::take(&mut request.client_message_id);
    check_client_message_id(&client_message_id)?;

    if request.recipients.is_empty() {
        return Err(invalid(
            "recipients",
            "at least one recipient is required (an agency id, region:<REGION> or *)",
        ));
    }
    let mut recipients = Vec::new();
    for (i, entry) in request.recipients.iter().enumerate() {
        let recipient = parse_recipient(entry)
            .map_err(|reason| ExchangeError::invalid(format!("recipients[{i}]"), reason))?;
        if !recipients.contains(&recipient) {
            recipients.push(recipient);
        }
        if recipients.len() > limits.max_recipients {
            return Err(invalid(
                "recipients",
                &format!(
                    "at most {} distinct entries are allowed",
                    limits.max_recipients
                ),
            ));
        }
    }

    let topic = match Topic::try_from(request.topic) {
        Ok(Topic::Unspecified) | Err(_) => {
            return Err(invalid("topic", "is required: one of the TOPIC_* values"))
        }
        Ok(topic) => topic,
    };
    let subject = request.subject.trim().to_string();
    if subject.is_empty() {
        return Err(invalid("subject", "is required"));
    }
    if subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(invalid("subject", "must be at most 256 characters"));
    }
    readable("subject", &subject, Shape::Line)?;
    let handling = match HandlingCode::try_from(request.handling) {
        Ok(HandlingCode::Unspecified) | Err(_) => {
            return Err(invalid(
                "handling",
                "is required: HANDLING_CODE_H0 to HANDLING_CODE_H3",
            ))
        }
        Ok(code) => code,
    };
    let evaluation = request.evaluation.ok_or_else(|| {
        invalid(
            "evaluation",
            "is required: source_reliability and information_accuracy",
        )
    })?;
    let source_reliability = match SourceReliability::try_from(evaluation.source_reliability) {
        Ok(SourceReliability::Unspecified) | Err(_) => {
            return Err(invalid(
                "evaluation.source_reliability",
                "is required: SOURCE_RELIABILITY_A, _B, _C or _X",
            ))
        }
        Ok(value) => value,
    };
    let information_accuracy = match InformationAccuracy::try_from(evaluation.information_accuracy)
    {
        Ok(InformationAccuracy::Unspecified) | Err(_) => {
            return Err(invalid(
                "evaluation.information_accuracy",
                "is required: INFORMATION_ACCURACY_1 to _4",
            ))
        }
        Ok(value) => value,
    };
    let in_reply_to = match request.in_reply_to.as_str() {
        "" => None,
        id => Some(MessageId::parse("in_reply_to", id)?),
    };
    let case_reference = request.case_reference.trim().to_string();
    if case_reference.chars().count() > MAX_REFERENCE_CHARS {
        return Err(invalid("case_reference", "must be at most 128 characters"));
    }
    readable("case_reference", &case_reference, Shape::Line)?;

    let handling_conditions = check_conditions(handling, &request.handling_conditions)?;
    let priority = match Priority::try_from(request.priority) {
        Ok(priority) => priority,
        Err(_) => return Err(invalid("priority", "unknown priority")),
    };
    let respond_by_micros = match &request.respond_by {
        None => 0,
        Some(at) => {
            let micros = at.seconds.saturating_mul(1_000_000) + i64::from(at.nanos) / 1_000;
            let now = crate::time::now_micros();
            if micros <= now || micros > now + MAX_RESPOND_BY_DAYS * 86_400_000_000 {
                return Err(invalid(
                    "respond_by",
                    "must be in the future, within a year",
                ));
            }
            micros
        }
    };
    super::content::validate(&mut request.content)?;

    let mut size = 0usize;
    if let Some(content) = &request.content {
        size += super::content::size(content);
    }
    if request.attachments.len() > limits.max_attachments {
        return Err(invalid(
            "attachments",
            &format!("at most {} attachments are allowed", limits.max_attachments),
        ));
    }
    for (i, attachment) in request.attachments.iter().enumerate() {
        let name = &attachment.filename;
        let name_field = format!("attachments[{i}].filename");
        // One file name, not a path, and not a hidden file (`.bashrc`, `..`) either.
        if name.is_empty()
            || name.chars().count() > MAX_FILENAME_CHARS
            || name.starts_with('.')
            || name.contains(['/', '\\'])
        {
            return Err(ExchangeError::invalid(
                name_field,
                "must be 1 to 255 characters, without '/' or '\\', not starting with '.'",
            ));
        }
        readable(&name_field, name, Shape::Line)?;
        let media_type = &attachment.media_type;
        if !media_type.is_empty() {
            let field = format!("attachments[{i}].media_type");
            if !is_media_type(media_type) {
                return Err(ExchangeError::invalid(
                    field,
                    "must be a media type such as application/pdf",
                ));
            }
            readable(&field, media_type, Shape::Line)?;
        }
        size = size.saturating_add(attachment.data.len());
    }
    if size > limits.max_message_bytes {
        return Err(invalid(
            "content",
            &format!(
                "content and attachments are {size} bytes; the limit is {} bytes",
                limits.max_message_bytes
            ),
        ));
    }

    // The request digest covers every other field too, plus the body digest.
    let body = encode_body(
        request.content.take(),
        std::mem::take(&mut request.attachments),
    );
    let content_sha256 = Sha256::digest(&body).to_vec();
    let mut request_digest = Sha256::new();
    request_digest.update(request.encode_to_vec());
    request_digest.update(&content_sha256);

    Ok(Draft {
        client_message_id,
        recipients,
        topic,
        subject,
        handling,
        source_reliability,
        information_accuracy,
        in_reply_to,
        case_reference,
        body,
        content_sha256,
        request_sha256: request_digest.finalize().to_vec(),
        handling_conditions,
        priority,
        respond_by_micros,
    })
}

fn parse_recipient(entry: &str) -> Result<Recipient, String> {
    if entry == "*" {
        return Ok(Recipient::Everyone);
    }
    if let Some(region) = entry.strip_prefix("region:") {
        return match region {
            "EU" => Ok(Recipient::Region(Region::Eu)),
            "CELAC" => Ok(Recipient::Region(Region::Celac)),
            "INTERNATIONAL" => Ok(Recipient::Region(Region::International)),
            _ => Err(format!(
                "unknown region {:?}: use region:EU, region:CELAC or region:INTERNATIONAL",
                excerpt(region)
            )),
        };
    }
    AgencyId::parse(entry).map(Recipient::Agency).map_err(|_| {
        format!(
            "{:?} is not an agency id (such as CO-DIJIN), region:<REGION> or *",
            excerpt(entry)
        )
    })
}

fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let essence = s.split(';').next().unwrap_or_default().trim();
    matches!(essence.split_once('/'), Some((kind, sub)) if token(kind) && token(sub))
        && s.len() <= 255
}

/// The stored body of a message: a `SendMessageRequest` holding only `content` and
/// `attachments`, with its fields in field-number order — as protobuf's deterministic
/// serialisation writes them in the other languages' libraries — so that any client can
/// recompute `content_sha256`. (prost writes a oneof after the other fields, which would put
/// a structured report, fields 11 to 14, after the attachments, field 10.)
pub(crate) fn encode_body(content: Option<Content>, attachments: Vec<Attachment>) -> Vec<u8> {
    let content_first = match &content {
        None | Some(Content::Text(_)) => true,
        Some(
            Content::Firearms(_)
            | Content::FirearmTrace(_)
            | Content::Financial(_)
            | Content::EarlyWarning(_),
        ) => false,
    };
    let content = SendMessageRequest {
        content,
        ..Default::default()
    };
    let attachments = SendMessageRequest {
        attachments,
        ..Default::default()
    };
    let (first, second) = if content_first {
        (&content, &attachments)
    } else {
        (&attachments, &content)
    };
    // One buffer for both halves: a body may be megabytes, so it is written once, not copied.
    let mut body = Vec::with_capacity(first.encoded_len() + second.encoded_len());
    first.encode_raw(&mut body);
    second.encode_raw(&mut body);
    body
}

#[cfg(test)]
mod tests {
    /// Field keys in order: attachments (10, key 0x52) before a structured report (11, key
    /// 0x5a); text (9, key 0x4a) before attachments. The bytes decode to the same request.
    #[test]
    fn bodies_are_encoded_in_field_number_order() {
        let attachment = || {
            vec![Attachment {
                filename: "a.txt".into(),
                media_type: String::new(),
                data: vec![1],
            }]
        };
        let report = Some(Content::Firearms(crate::pb::v1::FirearmsReport::default()));
        let body = encode_body(report.clone(), attachment());
        assert_eq!((body[0], body[body.len() - 2]), (0x52, 0x5a));
        let decoded = SendMessageRequest::decode(body.as_slice()).expect("decode");
        assert_eq!(
            (decoded.content, decoded.attachments),
            (report, attachment())
        );
        let body = encode_body(Some(Content::Text("t".into())), attachment());
        assert_eq!(body[0], 0x4a);
        assert_eq!(body[3], 0x52);
    }

    use super::*;
    use crate::pb::v1::{send_message_request, Attachment, Evaluation};

    fn valid() -> SendMessageRequest {
        SendMessageRequest {
            client_message_id: "req-1".into(),
            recipients: vec!["CO-DIJIN".into()],
            topic: Topic::FirearmsTrafficking as i32,
            subject: "Seized pistol".into(),
            handling: HandlingCode::H1 as i32,
            evaluation: Some(Evaluation {
                source_reliability: SourceReliability::B as i32,
                information_accuracy: InformationAccuracy::InformationAccuracy2 as i32,
            }),
            content: Some(send_message_request::Content::Text("serial 123".into())),
            ..Default::default()
        }
    }

    fn field_of(result: Result<Draft, ExchangeError>) -> Option<String> {
        match result {
            Ok(_) => None,
            Err(ExchangeError::InvalidField(crate::rpc::InvalidField { field, .. })) => Some(field),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn each_field_rule_names_its_field() {
        type Edit = fn(&mut SendMessageRequest);
        let cases: &[(Edit, Option<&str>)] = &[
            (|_| {}, None),
            (|r| r.client_message_id.clear(), Some("client_message_id")),
            (
                |r| r.client_message_id = "a b".into(),
                Some("client_message_id"),
            ),
            (
                |r| r.client_message_id = "x".repeat(129),
                Some("client_message_id"),
            ),
            (|r| r.recipients.clear(), Some("recipients")),
            (
                |r| r.recipients = vec!["CO-DIJIN".into(), "co-dijin".into()],
                Some("recipients[1]"),
            ),
            (
                |r| r.recipients = vec!["region:ASIA".into()],
                Some("recipients[0]"),
            ),
            (
                |r| r.recipients = vec!["*".into(), "region:EU".into()],
                None,
            ),
            (|r| r.topic = 0, Some("topic")),
            (|r| r.topic = 99, Some("topic")),
            (|r| r.subject = "  ".into(), Some("subject")),
            (|r| r.subject = "a\nb".into(), Some("subject")),
            (|r| r.subject = "s".repeat(257), Some("subject")),
            (|r| r.subject = "exe.\u{202e}fdp".into(), Some("subject")),
            (|r| r.subject = "a\u{200b}b".into(), Some("subject")),
            (
                |r| r.content = Some(send_message_request::Content::Text("\u{1b}[2J".into())),
                Some("text"),
            ),
            (
                |r| r.content = Some(send_message_request::Content::Text("a\r\n\tb\n".into())),
                None,
            ),
            (
                |r| r.content = Some(send_message_request::Content::Text("a\rb".into())),
                Some("text"),
            ),
            (
                |r| r.case_reference = "CASE\u{2028}1".into(),
                Some("case_reference"),
            ),
            (
                |r| {
                    r.handling = HandlingCode::H3 as i32;
                    r.handling_conditions = "Ask first.\u{9b}".into();
                },
                Some("handling_conditions"),
            ),
            (|r| r.handling = 0, Some("handling")),
            (|r| r.evaluation = None, Some("evaluation")),
            (
                |r| {
                    r.evaluation = Some(Evaluation {
                        source_reliability: 1,
                        information_accuracy: 0,
                    })
                },
                Some("evaluation.information_accuracy"),
            ),
            (
                |r| {
                    r.evaluation = Some(Evaluation {
                        source_reliability: 0,
                        information_accuracy: 1,
                    })
                },
                Some("evaluation.source_reliability"),
            ),
            (|r| r.in_reply_to = "not-a-uuid".into(), Some("in_reply_to")),
            (
                |r| r.case_reference = "c".repeat(129),
                Some("case_reference"),
            ),
            (|r| r.content = None, Some("content")),
            (
                |r| r.content = Some(send_message_request::Content::Text(String::new())),
                Some("text"),
            ),
            (
                |r| {
                    r.attachments = vec![Attachment {
                        filename: "../etc/passwd".into(),
                        ..Default::default()
                    }]
                },
                Some("attachments[0].filename"),
            ),
            (
                |r| {
                    r.attachments = vec![Attachment {
                        filename: ".bashrc".into(),
                        ..Default::default()
                    }]
                },
                Some("attachments[0].filename"),
            ),
            (
                |r| {
                    r.attachments = vec![Attachment {
                        filename: "a.pdf".into(),
                        media_type: "text/plain; x=\u{2066}".into(),
                        data: vec![],
                    }]
                },
                Some("attachments[0].media_type"),
            ),
            (
                |r| {
                    r.attachments = vec![Attachment {
                        filename: "a.pdf".into(),
                        media_type: "pdf".into(),
                        data: vec![],
                    }]
                },
                Some("attachments[0].media_type"),
            ),
            (
                |r| {
                    r.attachments = vec![Attachment {
                        filename: "a.pdf".into(),
                        media_type: "application/pdf".into(),
                        data: vec![1],
                    }]
                },
                None,
            ),
            (
                |r| r.content = Some(send_message_request::Content::Text("x".repeat(2048))),
                Some("content"),
            ),
        ];
        let limits = Limits {
            max_message_bytes: 1024,
            ..Limits::default()
        };
        for (i, (edit, want)) in cases.iter().enumerate() {
            let mut request = valid();
            edit(&mut request);
            assert_eq!(
                field_of(validate(request, &limits)).as_deref(),
                *want,
                "case {i}"
            );
        }
    }

    #[test]
    fn digests_ignore_the_idempotency_key_but_not_the_content() {
        let limits = Limits::default();
        let a = validate(valid(), &limits).unwrap();
        let mut other_key = valid();
        other_key.client_message_id = "req-2".into();
        let b = validate(other_key, &limits).unwrap();
        assert_eq!(a.request_sha256, b.request_sha256);
        let mut other_text = valid();
        other_text.content = Some(send_message_request::Content::Text("serial 124".into()));
        let c = validate(other_text, &limits).unwrap();
        assert_ne!(a.request_sha256, c.request_sha256);
        assert_ne!(a.content_sha256, c.content_sha256);
        let mut other_subject = valid();
        other_subject.subject = "Another".into();
        let d = validate(other_subject, &limits).unwrap();
        assert_eq!(a.content_sha256, d.content_sha256);
        assert_ne!(a.request_sha256, d.request_sha256);
    }

    #[test]
    fn duplicate_recipients_collapse() {
        let mut request = valid();
        request.recipients = vec!["CO-DIJIN".into(), "CO-DIJIN".into()];
        assert_eq!(
            validate(request, &Limits::default())
                .unwrap()
                .recipients
                .len(),
            1
        );
    }
}
