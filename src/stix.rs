//! STIX 2.1 export: a message as a STIX bundle (a `report` by an `identity`), marked with the
//! TLP 2.0 marking definition that corresponds to its Europol handling code.
//!
//! | handling code | TLP 2.0 | why |
//! |---|---|---|
//! | H0 | TLP:GREEN | usable for the purpose it was provided, within the community |
//! | H1 | TLP:AMBER | not to be used as evidence without the originator's consent: limited disclosure |
//! | H2 | TLP:AMBER+STRICT | not to be disseminated further without consent: the recipient organisation only |
//! | H3 | TLP:RED | originator's own restrictions: named recipients only; the conditions are attached as a statement marking |

use serde_json::{json, Value};

use crate::pb::v1::{message, HandlingCode, Message, Topic};

/// The STIX extension that defines the TLP 2.0 marking definitions.
pub const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";

/// Namespace of the deterministic STIX ids Puente derives from its own ids.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a1c_4d3e_9b1f_4c5a_8e2d_7f30_b1c9_a4e1);

/// The TLP 2.0 level and the id of its standard marking definition.
pub fn tlp(handling: HandlingCode) -> (&'static str, &'static str) {
    match handling {
        HandlingCode::H0 => (
            "green",
            "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        ),
        HandlingCode::H1 => (
            "amber",
            "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        ),
        HandlingCode::H2 => (
            "amber+strict",
            "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        ),
        // Unspecified never reaches a stored message; treat it as the most restrictive.
        HandlingCode::H3 | HandlingCode::Unspecified => (
            "red",
            "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
        ),
    }
}

fn stix_id(kind: &str, name: &str) -> String {
    format!(
        "{kind}--{}",
        uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes())
    )
}

fn stix_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    let at = timestamp
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let millis = timestamp.map_or(0, |t| t.nanos / 1_000_000);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        millis
    )
}

/// A short description of the content for STIX consumers; structured reports are also
/// attached whole as `x_puente_content` by the caller.
fn describe(content: Option<&message::Content>) -> String {
    match content {
        Some(message::Content::Text(text)) => text.clone(),
        Some(message::Content::Firearms(report)) => {
            format!("Firearms report: {} record(s)", report.records.len())
        }
        Some(message::Content::FirearmTrace(_)) => "Firearm trace request".into(),
        Some(message::Content::Financial(report)) => format!(
            "Financial-intelligence report: {} transaction(s), {} account(s)",
            report.transactions.len(),
            report.accounts.len()
        ),
        Some(message::Content::EarlyWarning(alert)) => format!(
            "Early-warning alert: {}",
            alert.substance.as_ref().map_or("", |s| s.name.as_str())
        ),
        None => String::new(),
    }
}

/// The message as a STIX 2.1 bundle. `content_json`, if given, is attached to the report as
/// `x_puente_content` (the proto3 JSON of a structured report).
pub fn bundle(message: &Message, content_json: Option<Value>) -> Value {
    let handling = HandlingCode::try_from(message.handling).unwrap_or(HandlingCode::H3);
    let (level, marking_id) = tlp(handling);
    let created = stix_time(message.created_at.as_ref());
    let identity_id = stix_id("identity", &format!("puente:agency:{}", message.originator));
    let mut markings = vec![json!(marking_id)];
    let mut objects = vec![
        json!({
            "type": "marking-definition",
            "spec_version": "2.1",
            "id": marking_id,
            "created": "2022-10-01T00:00:00.000Z",
            "name": format!("TLP:{}", level.to_uppercase()),
            "extensions": {
                TLP2_EXTENSION: { "extension_type": "property-extension", "tlp_2_0": level }
            }
        }),
        json!({
            "type": "identity",
            "spec_version": "2.1",
            "id": identity_id,
            "created": created,
            "modified": created,
            "name": message.originator,
            "identity_class": "organization",
            "sectors": ["government-law-enforcement"]
        }),
    ];
    if !message.handling_conditions.is_empty() {
        let statement_id = stix_id(
            "marking-definition",
            &format!("puente:conditions:{}", message.message_id),
        );
        objects.push(json!({
            "type": "marking-definition",
            "spec_version": "2.1",
            "id": statement_id,
            "created": created,
            "definition_type": "statement",
            "definition": { "statement": message.handling_conditions }
        }));
        markings.push(json!(statement_id));
    }
    let topic = Topic::try_from(message.topic).map_or("TOPIC_OTHER", |t| t.as_str_name());
    let handling_name = handling.as_str_name().trim_start_matches("HANDLING_CODE_");
    let mut report = json!({
        "type": "report",
        "spec_version": "2.1",
        "id": stix_id("report", &message.message_id),
        "created": created,
        "modified": created,
        "published": created,
        "created_by_ref": identity_id,
        "name": message.subject,
        "description": describe(message.content.as_ref()),
        "report_types": ["threat-report"],
        "labels": [topic.trim_start_matches("TOPIC_").to_lowercase().replace('_', "-"), format!("handling-{}", handling_name.to_lowercase())],
        "object_refs": [identity_id],
        "object_marking_refs": markings,
        "external_references": [{
            "source_name": "puente",
            "external_id": message.message_id,
            "description": format!("sha256 of content: {}", hex::encode(&message.content_sha256))
        }]
    });
    if let (Some(content), Some(report)) = (content_json, report.as_object_mut()) {
        report.insert("x_puente_content".into(), content);
    }
    objects.push(report);
    json!({
        "type": "bundle",
        "id": stix_id("bundle", &format!("puente:bundle:{}", message.message_id)),
        "objects": objects
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(handling: HandlingCode, conditions: &str) -> Message {
        Message {
            message_id: "01a21fd6-a545-733b-ab17-f4f14c16ab9a".into(),
            sender: "ES-CNP".into(),
            originator: "ES-CNP".into(),
            subject: "Glock 17 seized".into(),
            topic: Topic::FirearmsTrafficking as i32,
            handling: handling as i32,
            handling_conditions: conditions.into(),
            content: Some(message::Content::Text("Serial BXR-4471".into())),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_795_000_000,
                nanos: 123_000_000,
            }),
            ..Message::default()
        }
    }

    fn marking_levels(bundle: &Value) -> Vec<String> {
        bundle["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| {
                o["extensions"][TLP2_EXTENSION]["tlp_2_0"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    }

    #[test]
    fn handling_codes_map_to_tlp_levels() {
        let cases = [
            (HandlingCode::H0, "green"),
            (HandlingCode::H1, "amber"),
            (HandlingCode::H2, "amber+strict"),
            (HandlingCode::H3, "red"),
        ];
        for (handling, level) in cases {
            let bundle = bundle(&message(handling, "no onward use"), None);
            assert_eq!(
                marking_levels(&bundle),
                vec![level.to_string()],
                "{handling:?}"
            );
            let report = bundle["objects"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["type"] == "report")
                .unwrap();
            assert_eq!(report["object_marking_refs"][0], tlp(handling).1);
        }
    }

    #[test]
    fn the_bundle_is_stix_2_1_with_deterministic_ids() {
        let first = bundle(&message(HandlingCode::H3, "Not for court use"), None);
        let second = bundle(&message(HandlingCode::H3, "Not for court use"), None);
        assert_eq!(first, second);
        assert_eq!(first["type"], "bundle");
        let report = first["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["type"] == "report")
            .unwrap();
        assert_eq!(report["spec_version"], "2.1");
        assert_eq!(report["created"], "2026-11-18T11:06:40.123Z");
        assert_eq!(report["name"], "Glock 17 seized");
        assert_eq!(
            report["external_references"][0]["external_id"],
            "01a21fd6-a545-733b-ab17-f4f14c16ab9a"
        );
        // H3's conditions travel as a statement marking.
        let statement = first["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["definition_type"] == "statement")
            .unwrap();
        assert_eq!(statement["definition"]["statement"], "Not for court use");
        assert_eq!(report["object_marking_refs"].as_array().unwrap().len(), 2);
        for object in first["objects"].as_array().unwrap() {
            let id = object["id"].as_str().unwrap();
            assert!(
                id.starts_with(&format!("{}--", object["type"].as_str().unwrap())),
                "{id}"
            );
        }
    }
}
