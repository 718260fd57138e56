//! Valid requests to build tests from, and what the server must make of them (the content
//! digest, the delivered text).

use prost::Message as _;
use puente::pb::v1::{
    send_message_request, Evaluation, HandlingCode, InformationAccuracy, SendMessageRequest,
    SourceReliability, Topic,
};
use sha2::{Digest, Sha256};

/// A valid text message: topic firearms trafficking, handling H1, evaluation B2.
pub fn text_message(
    client_message_id: &str,
    recipients: &[&str],
    text: &str,
) -> SendMessageRequest {
    SendMessageRequest {
        client_message_id: client_message_id.to_string(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        topic: Topic::FirearmsTrafficking as i32,
        subject: "Seized pistol, serial number filed off".to_string(),
        handling: HandlingCode::H1 as i32,
        evaluation: Some(Evaluation {
            source_reliability: SourceReliability::B as i32,
            information_accuracy: InformationAccuracy::InformationAccuracy2 as i32,
        }),
        content: Some(send_message_request::Content::Text(text.to_string())),
        ..Default::default()
    }
}

/// A valid message with a fixed text.
pub fn message(client_message_id: &str, recipients: &[&str]) -> SendMessageRequest {
    text_message(
        client_message_id,
        recipients,
        "Glock 17 seized at the port of Algeciras; container from Cartagena.",
    )
}

/// The digest a stored message must carry: SHA-256 of the encoding of a `SendMessageRequest`
/// holding only the request's content and attachments, fields in field-number order (as the
/// protobuf libraries of other languages write them): text (9), attachments (10), or
/// attachments (10), structured report (11 to 14).
pub fn content_sha256(request: &SendMessageRequest) -> Vec<u8> {
    let content = SendMessageRequest {
        content: request.content.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let attachments = SendMessageRequest {
        attachments: request.attachments.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let text_or_nothing = matches!(
        request.content,
        None | Some(send_message_request::Content::Text(_))
    );
    let body = if text_or_nothing {
        [content, attachments].concat()
    } else {
        [attachments, content].concat()
    };
    Sha256::digest(body).to_vec()
}

/// The text of a delivered message, if it carries text.
pub fn text_of(message: &puente::pb::v1::Message) -> Option<&str> {
    match &message.content {
        Some(puente::pb::v1::message::Content::Text(text)) => Some(text),
        _ => None,
    }
}
