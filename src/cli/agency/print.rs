//! How agency commands print a message and its content for people.

use crate::cli::format_time;
use crate::pb::v1::{
    message, AlertType, DeliveryState, FirearmRecord, FirearmStatus, FirearmType, HandlingCode,
    InformationAccuracy, Message, MessageKind, Priority, ReportCode, Severity, SourceReliability,
    Topic,
};
use crate::text::{self, line};

pub(super) fn state_name(state: i32) -> &'static str {
    DeliveryState::try_from(state).map_or("?", |s| {
        s.as_str_name().trim_start_matches("DELIVERY_STATE_")
    })
}

pub(super) fn print_message(sequence: u64, message: &Message) {
    let topic = Topic::try_from(message.topic).map_or("?", |t| t.as_str_name());
    let handling = HandlingCode::try_from(message.handling).map_or("?", |h| h.as_str_name());
    let evaluation = message.evaluation.map_or_else(String::new, |e| {
        let source = SourceReliability::try_from(e.source_reliability).map_or("?", |s| {
            s.as_str_name().trim_start_matches("SOURCE_RELIABILITY_")
        });
        let accuracy = InformationAccuracy::try_from(e.information_accuracy).map_or("?", |a| {
            a.as_str_name().trim_start_matches("INFORMATION_ACCURACY_")
        });
        format!("{source}{accuracy}")
    });
    if sequence > 0 {
        print!("#{sequence} ");
    }
    println!(
        "{}  from {}  {}",
        line(&message.message_id),
        line(&message.sender),
        format_time(message.created_at.as_ref())
    );
    println!("  to: {}", line(&message.recipients.join(", ")));
    let kind = short_name::<MessageKind>(message.kind, MessageKind::as_str_name, "MESSAGE_KIND_");
    if message.kind != MessageKind::Unspecified as i32 {
        let about = if message.related_message_id.is_empty() {
            &message.original_message_id
        } else {
            &message.related_message_id
        };
        println!("  kind: {kind}  about: {}", line(about));
    }
    if message.originator != message.sender && !message.originator.is_empty() {
        println!(
            "  originator: {}  original: {}",
            line(&message.originator),
            line(&message.original_message_id)
        );
    }
    for hop in &message.provenance {
        println!(
            "  forwarded: {} -> {} ({}, {})",
            line(&hop.from_agency),
            line(&hop.to_agency),
            line(&hop.message_id),
            format_time(hop.forwarded_at.as_ref())
        );
    }
    if !message.consent_agency.is_empty() {
        let decision = match MessageKind::try_from(message.kind) {
            Ok(MessageKind::ConsentDecision) if message.consent_granted => " (granted)",
            Ok(MessageKind::ConsentDecision) => " (denied)",
            _ => "",
        };
        println!("  consent for: {}{decision}", line(&message.consent_agency));
    }
    if !message.reason.is_empty() {
        print_text_field("reason", &message.reason);
    }
    if let Some(hit) = &message.match_hit {
        println!(
            "  match hit: {} asked about your {} (your reference \"{}\"); case {}, legal basis \"{}\"; match reference {}",
            line(&hit.querying_agency),
            short_name::<crate::pb::v1::IdentifierKind>(hit.kind, crate::pb::v1::IdentifierKind::as_str_name, "IDENTIFIER_KIND_").to_lowercase(),
            line(&hit.your_reference),
            line(&hit.case_reference),
            line(&hit.legal_basis),
            line(&hit.match_reference)
        );
    }
    println!(
        "  topic: {}  handling: {}  evaluation: {evaluation}",
        topic.trim_start_matches("TOPIC_"),
        handling.trim_start_matches("HANDLING_CODE_")
    );
    if !message.handling_conditions.is_empty() {
        print_text_field("conditions", &message.handling_conditions);
    }
    if message.priority > Priority::Routine as i32 || message.respond_by.is_some() {
        println!(
            "  priority: {}  respond by: {}",
            short_name::<Priority>(message.priority, Priority::as_str_name, "PRIORITY_"),
            format_time(message.respond_by.as_ref())
        );
    }
    if !message.case_reference.is_empty() {
        println!("  case: {}", line(&message.case_reference));
    }
    if !message.in_reply_to.is_empty() {
        println!("  in reply to: {}", line(&message.in_reply_to));
    }
    println!("  subject: {}", line(&message.subject));
    if let Some(content) = &message.content {
        print_content(content);
    }
    for attachment in &message.attachments {
        println!(
            "  attachment: {} ({} bytes)",
            line(&attachment.filename),
            attachment.data.len()
        );
    }
    println!("  content sha256: {}", hex::encode(&message.content_sha256));
}

/// The variant name of an enum value without its prefix (`FIREARM_TYPE_PISTOL` → `PISTOL`), or
/// `?` for a number this client does not know.
pub(super) fn short_name<E: TryFrom<i32>>(
    value: i32,
    name: fn(&E) -> &'static str,
    prefix: &str,
) -> &'static str {
    E::try_from(value).map_or("?", |known| {
        let full = name(&known);
        full.strip_prefix(prefix).unwrap_or(full)
    })
}

/// Prints the lines of a text as a quoted block: each behind `  | `, so that no line of a
/// sender's text can pass for one of the header lines printed above it, and each made safe for
/// the terminal by [`text::lines`].
pub(super) fn print_block(value: &str) {
    for line in text::lines(value) {
        println!("  | {line}");
    }
}

/// Prints a free-text header field: on the label's line when it is one line, else as a
/// quoted block below the label.
pub(super) fn print_text_field(label: &str, value: &str) {
    if value.contains('\n') {
        println!("  {label}:");
        print_block(value);
    } else {
        println!("  {label}: {}", line(value));
    }
}

/// A one-line summary of a firearm record.
pub(super) fn firearm_line(record: &FirearmRecord) -> String {
    let mut line = format!(
        "{} {} {}",
        short_name(
            record.firearm_type,
            FirearmType::as_str_name,
            "FIREARM_TYPE_"
        ),
        record.make,
        record.model
    );
    if !record.calibre.is_empty() {
        line.push_str(&format!(", {}", record.calibre));
    }
    if record.serial_number.is_empty() {
        line.push_str(", no serial number");
    } else {
        line.push_str(&format!(
            ", serial {} ({})",
            record.serial_number, record.serial_number_normalized
        ));
    }
    line.push_str(&format!(
        ", {}",
        short_name(record.status, FirearmStatus::as_str_name, "FIREARM_STATUS_")
    ));
    if let Some(incident) = &record.incident {
        line.push_str(&format!(
            ", {} {} {}",
            incident.date, incident.country, incident.place
        ));
    }
    text::line(&line).into_owned()
}

/// Prints message content: text in full, structured reports as a summary.
pub(super) fn print_content(content: &message::Content) {
    match content {
        message::Content::Text(text) => print_block(text),
        message::Content::Firearms(report) => {
            println!("  firearms report: {} record(s)", report.records.len());
            for (i, record) in report.records.iter().enumerate() {
                println!("  [{i}] {}", firearm_line(record));
            }
        }
        message::Content::FirearmTrace(trace) => {
            print!(
                "  firearm trace request to {}",
                line(&trace.requested_country)
            );
            if !trace.respond_by_date.is_empty() {
                print!(", answer by {}", line(&trace.respond_by_date));
            }
            println!();
            if let Some(firearm) = &trace.firearm {
                println!("  firearm: {}", firearm_line(firearm));
            }
            print_block(&trace.question);
        }
        message::Content::Financial(report) => {
            println!(
                "  financial report {}: {} person(s), {} entit(ies), {} account(s), {} transaction(s)",
                short_name(report.report_code, ReportCode::as_str_name, "REPORT_CODE_"),
                report.persons.len(),
                report.entities.len(),
                report.accounts.len(),
                report.transactions.len()
            );
            for transaction in &report.transactions {
                let (value, currency) = transaction
                    .amount_local
                    .as_ref()
                    .map_or(("?", ""), |a| (a.value.as_str(), a.currency_code.as_str()));
                let row = format!(
                    "{} {value} {currency}  {} -> {}",
                    transaction.date_transaction, transaction.from_party, transaction.to_party
                );
                println!("  {}", line(&row));
            }
            if !report.indicators.is_empty() {
                println!("  indicators: {}", line(&report.indicators.join(", ")));
            }
            print_block(&report.reason);
        }
        message::Content::EarlyWarning(alert) => {
            let substance = alert.substance.as_ref();
            let name = substance.map_or("?", |s| s.name.as_str());
            print!(
                "  early warning {} ({}): {}",
                short_name(alert.alert_type, AlertType::as_str_name, "ALERT_TYPE_"),
                short_name(alert.severity, Severity::as_str_name, "SEVERITY_"),
                line(name)
            );
            match substance.map(|s| s.cas_number.as_str()) {
                Some(cas) if !cas.is_empty() => println!(", CAS {}", line(cas)),
                _ => println!(),
            }
            if !alert.countries.is_empty() {
                println!("  countries: {}", line(&alert.countries.join(", ")));
            }
            print_block(&alert.evidence);
            for action in &alert.recommended_actions {
                println!("  - {}", line(action));
            }
        }
    }
    if !matches!(content, message::Content::Text(_)) {
        println!("  (--json prints the full report)");
    }
}
