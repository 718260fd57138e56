//! The proto3 JSON mapping of the contract's messages, for people and scripts: what
//! `puente send --file` reads and what `--json` prints.
//!
//! The generated types carry no serde code; instead each message is converted to a
//! [`DynamicMessage`] described by the embedded [`FILE_DESCRIPTOR_SET`](super::FILE_DESCRIPTOR_SET),
//! which implements the canonical mapping: lowerCamelCase names on output (the proto names are
//! accepted on input too), enums by name, 64-bit integers and `bytes` as strings (base64),
//! `Timestamp` as RFC 3339, default values left out. Unknown fields are refused, so a misspelt
//! field name is an error rather than silently dropped data.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// Why a message could not be converted to or from JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The embedded descriptor set does not decode (a build defect).
    #[error("the embedded protobuf descriptors are unusable: {0}")]
    Descriptors(String),
    /// The descriptor set lacks the message type (a build defect).
    #[error("the embedded protobuf descriptors have no message {0}")]
    UnknownMessage(String),
    /// The text is not the JSON form of the message: bad syntax, an unknown field, a wrong type.
    #[error("not the proto3 JSON form of {message}: {source}")]
    Parse {
        /// Full name of the expected message type.
        message: String,
        /// What the parser found, with its line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The message could not be written as JSON.
    #[error("cannot write {message} as JSON: {source}")]
    Write {
        /// Full name of the message type.
        message: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// Conversion between the generated and the reflected form of the message failed.
    #[error("cannot convert {message}: {source}")]
    Convert {
        /// Full name of the message type.
        message: String,
        /// The protobuf decoder's error.
        #[source]
        source: prost::DecodeError,
    },
}

/// The contract's descriptors, decoded once.
fn pool() -> Result<&'static DescriptorPool, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(super::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| JsonError::Descriptors(e.clone()))
}

fn descriptor<M: prost::Name>() -> Result<MessageDescriptor, JsonError> {
    let name = M::full_name();
    pool()?
        .get_message_by_name(&name)
        .ok_or(JsonError::UnknownMessage(name))
}

fn reflect<M: prost::Message + prost::Name>(message: &M) -> Result<DynamicMessage, JsonError> {
    DynamicMessage::decode(descriptor::<M>()?, message.encode_to_vec().as_slice()).map_err(
        |source| JsonError::Convert {
            message: M::full_name(),
            source,
        },
    )
}

/// `message` in the proto3 JSON mapping, on one line.
///
/// # Errors
/// Only on a build defect (descriptors that do not match the generated code).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> Result<String, JsonError> {
    serde_json::to_string(&reflect(message)?).map_err(|source| JsonError::Write {
        message: M::full_name(),
        source,
    })
}

/// `message` in the proto3 JSON mapping, indented for reading.
///
/// # Errors
/// As [`to_json`].
pub fn to_json_pretty<M: prost::Message + prost::Name>(message: &M) -> Result<String, JsonError> {
    serde_json::to_string_pretty(&reflect(message)?).map_err(|source| JsonError::Write {
        message: M::full_name(),
        source,
    })
}

/// Parses the proto3 JSON mapping of an `M`.
///
/// # Errors
/// [`JsonError::Parse`] naming the line and column of the first problem: invalid JSON, an
/// unknown field or enum name, a value of the wrong type, or trailing text.
pub fn from_json<M: prost::Message + prost::Name + Default>(json: &str) -> Result<M, JsonError> {
    let parse_error = |source| JsonError::Parse {
        message: M::full_name(),
        source,
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let dynamic =
        DynamicMessage::deserialize(descriptor::<M>()?, &mut deserializer).map_err(parse_error)?;
    deserializer.end().map_err(parse_error)?;
    dynamic
        .transcode_to::<M>()
        .map_err(|source| JsonError::Convert {
            message: M::full_name(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::{
        message, Evaluation, HandlingCode, Message, SendMessageRequest, SourceReliability,
        StreamInboxResponse, Topic,
    };

    #[test]
    fn messages_round_trip_through_their_json_form() {
        let entry = StreamInboxResponse {
            sequence: 7,
            message: Some(Message {
                message_id: "0190f5c2-7a1e-7000-8000-000000000001".into(),
                topic: Topic::MoneyLaundering as i32,
                created_at: Some(prost_types::Timestamp {
                    seconds: 1_767_225_600,
                    nanos: 0,
                }),
                content: Some(message::Content::Text("hola".into())),
                content_sha256: vec![0xde, 0xad],
                ..Message::default()
            }),
        };
        let json = to_json(&entry).unwrap();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["sequence"], "7");
        assert_eq!(value["message"]["topic"], "TOPIC_MONEY_LAUNDERING");
        assert_eq!(value["message"]["createdAt"], "2026-01-01T00:00:00Z");
        assert_eq!(value["message"]["contentSha256"], "3q0=");
        assert_eq!(from_json::<StreamInboxResponse>(&json).unwrap(), entry);
        assert_eq!(
            from_json::<StreamInboxResponse>(&to_json_pretty(&entry).unwrap()).unwrap(),
            entry
        );
    }

    #[test]
    fn input_accepts_proto_and_json_names_and_refuses_unknown_fields() {
        let want = SendMessageRequest {
            recipients: vec!["CO-DIJIN".into()],
            handling: HandlingCode::H2 as i32,
            evaluation: Some(Evaluation {
                source_reliability: SourceReliability::B as i32,
                information_accuracy: 2,
            }),
            client_message_id: "k-1".into(),
            ..SendMessageRequest::default()
        };
        let cases: &[(&str, bool)] = &[
            (
                r#"{"recipients":["CO-DIJIN"],"handling":"HANDLING_CODE_H2","clientMessageId":"k-1",
                   "evaluation":{"sourceReliability":"SOURCE_RELIABILITY_B","informationAccuracy":"INFORMATION_ACCURACY_2"}}"#,
                true,
            ),
            (
                r#"{"recipients":["CO-DIJIN"],"handling":"HANDLING_CODE_H2","client_message_id":"k-1",
                   "evaluation":{"source_reliability":"SOURCE_RELIABILITY_B","information_accuracy":2}}"#,
                true,
            ),
            (r#"{"recipient":["CO-DIJIN"]}"#, false),
            (r#"{"handling":"H2"}"#, false),
            (r#"{"recipients":"CO-DIJIN"}"#, false),
            (r#"{"recipients":[]} trailing"#, false),
            ("", false),
        ];
        for (i, (json, ok)) in cases.iter().enumerate() {
            match from_json::<SendMessageRequest>(json) {
                Ok(request) => {
                    assert!(ok, "case {i} parsed");
                    assert_eq!(request, want, "case {i}");
                }
                Err(error) => {
                    assert!(!ok, "case {i}: {error}");
                    assert!(
                        matches!(error, JsonError::Parse { .. }),
                        "case {i}: {error}"
                    );
                }
            }
        }
    }
}
