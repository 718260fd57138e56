//! How `puente audit log` and `prove` print entries: the table row and the JSON line.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Serialize;

use crate::pb::v1::{AuditAction, AuditEvent, DeliveryState, HandlingCode, Topic};

/// `AUDIT_ACTION_MESSAGE_ACCEPTED` → `message-accepted`: the spelling of `--action`.
fn kebab(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

pub(super) fn action_name(action: i32) -> String {
    AuditAction::try_from(action).map_or_else(
        |_| action.to_string(),
        |a| kebab(a.as_str_name(), "AUDIT_ACTION_"),
    )
}

fn topic_name(topic: i32) -> String {
    Topic::try_from(topic).map_or_else(|_| topic.to_string(), |t| kebab(t.as_str_name(), "TOPIC_"))
}

fn handling_name(handling: i32) -> String {
    HandlingCode::try_from(handling).map_or_else(
        |_| handling.to_string(),
        |h| kebab(h.as_str_name(), "HANDLING_CODE_"),
    )
}

fn state_name(state: i32) -> String {
    DeliveryState::try_from(state).map_or_else(
        |_| state.to_string(),
        |s| kebab(s.as_str_name(), "DELIVERY_STATE_"),
    )
}

pub(super) fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

/// To the second, for the table.
pub(super) fn short_time(micros: i64) -> String {
    rfc3339(micros.div_euclid(1_000_000) * 1_000_000)
}

/// The agency id of the actor, else its SPIFFE ID without the trust domain (`auditor/ana`).
fn actor_name(event: &AuditEvent) -> &str {
    if !event.actor_agency.is_empty() {
        return &event.actor_agency;
    }
    let path = event
        .actor
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or(event.actor.as_str(), |(_, path)| path);
    if path.is_empty() {
        "-"
    } else {
        path
    }
}

/// The fields an action sets, beyond time, action, actor and message.
fn details(event: &AuditEvent) -> String {
    let mut parts = Vec::new();
    if !event.sender.is_empty() {
        parts.push(format!("from {}", event.sender));
    }
    if !event.recipients.is_empty() {
        parts.push(format!("to {}", event.recipients.join(",")));
    }
    if event.topic != 0 {
        parts.push(format!("topic {}", topic_name(event.topic)));
    }
    if event.handling != 0 {
        parts.push(format!("handling {}", handling_name(event.handling)));
    }
    if !event.content_sha256.is_empty() {
        parts.push(format!("{} bytes", event.content_size));
    }
    if event.delivery_state != 0 {
        parts.push(format!("state {}", state_name(event.delivery_state)));
    }
    if !event.subject_agency.is_empty() {
        parts.push(format!("agency {}", event.subject_agency));
    }
    if event.crl_number != 0 {
        parts.push(format!("crl {}", event.crl_number));
    }
    if !event.remote_address.is_empty() {
        parts.push(format!("address {}", event.remote_address));
    }
    if !event.method.is_empty() {
        parts.push(event.method.clone());
    }
    // Free text, so last.
    if !event.reason.is_empty() {
        parts.push(format!("reason: {}", event.reason));
    }
    parts.join("  ")
}

pub(super) fn header() -> String {
    format!(
        "{:<7} {:<20} {:<20} {:<20} {:<36} DETAILS",
        "INDEX", "TIME", "ACTION", "ACTOR", "MESSAGE"
    )
}

pub(super) fn row(index: u64, event: &AuditEvent) -> String {
    let message = if event.message_id.is_empty() {
        "-"
    } else {
        &event.message_id
    };
    let row = format!(
        "{:<7} {:<20} {:<20} {:<20} {:<36} {}",
        index,
        short_time(event.time_unix_micros),
        action_name(event.action),
        actor_name(event),
        message,
        details(event)
    );
    // Reasons, agencies and ids come from the log as served: one line, shown, never obeyed.
    crate::text::line(&row).into_owned()
}

/// A line of `puente audit log --json`. A struct rather than `json!` so that the fields keep
/// this order: index first, the event's fields in field-number order.
#[derive(Serialize)]
struct JsonEntry<'a> {
    index: u64,
    /// Base64.
    leaf: String,
    event: JsonEvent<'a>,
}

/// The decoded event of a [`JsonEntry`], enums by their `--action`-style names.
#[derive(Serialize)]
struct JsonEvent<'a> {
    version: u32,
    time: String,
    time_unix_micros: i64,
    action: String,
    actor: &'a str,
    actor_serial: &'a str,
    actor_agency: &'a str,
    message_id: &'a str,
    sender: &'a str,
    recipients: &'a [String],
    topic: String,
    handling: String,
    /// Hex.
    content_sha256: String,
    content_size: u64,
    delivery_state: String,
    method: &'a str,
    reason: &'a str,
    subject_agency: &'a str,
    remote_address: &'a str,
    crl_number: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    related_message_id: &'a str,
}

pub(super) fn entry_json(index: u64, leaf: &[u8], event: &AuditEvent) -> anyhow::Result<String> {
    let entry = JsonEntry {
        index,
        leaf: BASE64.encode(leaf),
        event: JsonEvent {
            version: event.version,
            time: rfc3339(event.time_unix_micros),
            time_unix_micros: event.time_unix_micros,
            action: action_name(event.action),
            actor: &event.actor,
            actor_serial: &event.actor_serial,
            actor_agency: &event.actor_agency,
            message_id: &event.message_id,
            sender: &event.sender,
            recipients: &event.recipients,
            topic: topic_name(event.topic),
            handling: handling_name(event.handling),
            content_sha256: hex::encode(&event.content_sha256),
            content_size: event.content_size,
            delivery_state: state_name(event.delivery_state),
            method: &event.method,
            reason: &event.reason,
            subject_agency: &event.subject_agency,
            remote_address: &event.remote_address,
            crl_number: event.crl_number,
            related_message_id: &event.related_message_id,
        },
    };
    let json = serde_json::to_string(&entry).context("cannot encode an entry as JSON")?;
    // The entry's strings come from the log as served: safe for a terminal, same JSON.
    Ok(crate::text::json(&json).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_print_as_agency_or_role_and_name() {
        let mut event = AuditEvent {
            actor: "spiffe://puente.local/auditor/ana".into(),
            ..Default::default()
        };
        assert_eq!(actor_name(&event), "auditor/ana");
        event.actor_agency = "ES-CNP".into();
        assert_eq!(actor_name(&event), "ES-CNP");
        assert_eq!(actor_name(&AuditEvent::default()), "-");
    }
}
