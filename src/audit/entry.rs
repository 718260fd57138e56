//! What an audit entry says: the event vocabulary (`AuditEvent`, `AuditAction`), which agencies
//! an entry concerns, and the builders every service uses to write one. An event becomes a
//! [`LogEntry`] (the store's unit of the log) filed under its parties.

use std::collections::BTreeSet;

use crate::identity::{Caller, Peer, Role};
use crate::pb::v1::{AuditAction, AuditEvent};
use crate::store::records::MessageRecord;
use crate::store::LogEntry;
use crate::time::now_micros;

/// Encoding version written in every entry.
pub const EVENT_VERSION: u32 = 1;

/// Every agency an entry concerns: actor, sender, recipients, subject.
pub fn parties(event: &AuditEvent) -> BTreeSet<&str> {
    [&event.actor_agency, &event.sender, &event.subject_agency]
        .into_iter()
        .chain(event.recipients.iter())
        .map(String::as_str)
        .filter(|party| !party.is_empty())
        .collect()
}

/// The entry as the log stores it: at this encoding version, filed under its parties.
impl From<AuditEvent> for LogEntry {
    fn from(mut event: AuditEvent) -> LogEntry {
        event.version = EVENT_VERSION;
        let parties = parties(&event).into_iter().map(str::to_string).collect();
        LogEntry::new(event, parties)
    }
}

/// An entry for `action` by `caller` (if any); the writer fixes the time.
pub fn event(action: AuditAction, caller: Option<&Caller>) -> AuditEvent {
    let mut event = AuditEvent {
        version: EVENT_VERSION,
        time_unix_micros: now_micros(),
        action: action as i32,
        ..AuditEvent::default()
    };
    if let Some(caller) = caller {
        event.actor = caller.id.to_string();
        event.actor_serial = caller.serial.clone();
        if let Role::Agency(agency) = &caller.role {
            event.actor_agency = agency.to_string();
        }
    }
    event
}

/// An entry about a message: who, which message, sender, recipients, topic, handling, digest
/// and size of the content — never the content.
pub fn message_event(
    action: AuditAction,
    caller: Option<&Caller>,
    record: &MessageRecord,
) -> AuditEvent {
    AuditEvent {
        message_id: record.message_id.clone(),
        sender: record.sender.clone(),
        recipients: record.recipients.clone(),
        topic: record.topic,
        handling: record.handling,
        content_sha256: record.content_sha256.clone(),
        content_size: record.body_len,
        ..event(action, caller)
    }
}

/// An entry for a refused call: who (as far as the connection says), which method, why.
pub(crate) fn refusal_event(peer: Option<&Peer>, method: &str, reason: &str) -> AuditEvent {
    let caller = peer.and_then(|p| p.caller.as_ref().ok());
    let mut event = event(AuditAction::RequestRefused, caller.map(|c| c.as_ref()));
    event.method = method.to_string();
    event.reason = reason.to_string();
    if let Some(addr) = peer.and_then(|p| p.remote_addr) {
        event.remote_address = addr.to_string();
    }
    event
}
