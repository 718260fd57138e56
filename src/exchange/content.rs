//! Structured intelligence content: the field rules of each report type, and conversion between
//! the request and message forms of the `content` oneof.

use crate::pb::v1::{message, send_message_request};

use super::ExchangeError;

/// Validates (and normalises, where the contract says the server does) a message's content.
///
/// # Errors
/// `InvalidField` naming the field path, e.g. `firearms.records[2].serial_number`.
pub fn validate(content: &mut Option<send_message_request::Content>) -> Result<(), ExchangeError> {
    use send_message_request::Content;
    match content {
        None => Err(ExchangeError::invalid(
            "content",
            "is required: text, firearms, firearm_trace, financial or early_warning",
        )),
        Some(Content::Text(text)) if text.is_empty() => {
            Err(ExchangeError::invalid("text", "must not be empty"))
        }
        Some(Content::Text(_)) => Ok(()),
        Some(Content::Firearms(report)) if report.records.is_empty() => {
            Err(ExchangeError::invalid(
                "firearms.records",
                "at least one firearm record is required",
            ))
        }
        Some(
            Content::Firearms(_)
            | Content::FirearmTrace(_)
            | Content::Financial(_)
            | Content::EarlyWarning(_),
        ) => Ok(()),
    }
}

/// Bytes the content counts against the message size limit: the text, or the encoded report.
pub fn size(content: &send_message_request::Content) -> usize {
    use prost::Message as _;
    use send_message_request::Content;
    match content {
        Content::Text(text) => text.len(),
        Content::Firearms(report) => report.encoded_len(),
        Content::FirearmTrace(request) => request.encoded_len(),
        Content::Financial(report) => report.encoded_len(),
        Content::EarlyWarning(alert) => alert.encoded_len(),
    }
}

/// The message form of request content (the two oneofs have the same variants).
pub fn to_message_content(content: send_message_request::Content) -> message::Content {
    use send_message_request::Content as In;
    match content {
        In::Text(text) => message::Content::Text(text),
        In::Firearms(report) => message::Content::Firearms(report),
        In::FirearmTrace(request) => message::Content::FirearmTrace(request),
        In::Financial(report) => message::Content::Financial(report),
        In::EarlyWarning(alert) => message::Content::EarlyWarning(alert),
    }
}
