//! Structured intelligence content: the field rules of each report type, the normalisations the
//! exchange applies (serial numbers, IBANs), and conversion between the request and message forms
//! of the `content` oneof.
//!
//! Every violation is an [`ExchangeError::InvalidField`] whose `field` is the path of the
//! offending field inside the request, e.g. `firearms.records[2].serial_number` or
//! `financial.transactions[1].amount_local.currency_code`, so a client can point at it.
//!
//! Dates are checked against today's date in UTC, with one day of slack so that a date
//! written in any time zone passes: "not in the future" means not after tomorrow (UTC).
//!
//! Layout: `codes` holds the code tables and checks every report shares (ISO 3166 countries,
//! ISO 4217 currencies, IBAN, BIC, CAS numbers, calendar dates); `rules` the field paths, text
//! rules and the checks common to several reports (dates, evaluations, persons); then one file
//! per report kind: `firearms` (firearms reports and trace requests), `financial` and
//! `early_warning`.

mod codes;
mod early_warning;
mod financial;
mod firearms;
mod rules;

#[cfg(test)]
mod fixtures;

use time::Date;

use super::ExchangeError;
use crate::pb::v1::{message, send_message_request};
use crate::text::Shape;
pub(crate) use codes::{is_bic, is_country, normalize_iban, parse_date};
use rules::{Path, Rules};

// === Limits ===

/// Most firearm records in one firearms report.
pub const MAX_FIREARM_RECORDS: usize = 1000;
/// Most persons, entities, accounts or transactions in one financial report, and most persons in
/// one incident.
pub const MAX_PARTIES: usize = 1000;
/// Most entries of a short list: indicators, recommended actions, other markings.
pub const MAX_LIST_ENTRIES: usize = 50;
/// Longest make, model, manufacturer, role or indicator, in characters.
pub const MAX_LABEL_CHARS: usize = 100;
/// Longest calibre, in characters.
pub const MAX_CALIBRE_CHARS: usize = 50;
/// Longest serial number, account number, registration or transaction number, in characters.
pub const MAX_NUMBER_CHARS: usize = 64;
/// Longest name (person, entity, institution, holder, substance, party) or place, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest marking, in characters.
pub const MAX_MARKING_CHARS: usize = 200;
/// Longest trace question or recommended action, in characters.
pub const MAX_QUESTION_CHARS: usize = 1000;
/// Longest reason of a financial report, in characters.
pub const MAX_REASON_CHARS: usize = 4000;
/// Longest free-text narrative (incident circumstances, alert evidence), in characters.
pub const MAX_NARRATIVE_CHARS: usize = 10_000;
/// Earliest year of manufacture a firearm may carry (0 means unknown).
pub const EARLIEST_YEAR_OF_MANUFACTURE: u32 = 1800;

// === Entry points ===

/// Validates (and normalises, where the contract says the server does) a message's content.
///
/// Normalisations: each firearm's `serial_number_normalized` is set from its `serial_number`
/// (whatever the client sent in it is replaced), and each IBAN is rewritten in its electronic
/// format (upper case, no spaces).
///
/// # Errors
/// `InvalidField` naming the field path, e.g. `firearms.records[2].serial_number`.
pub fn validate(content: &mut Option<send_message_request::Content>) -> Result<(), ExchangeError> {
    let today = time::OffsetDateTime::now_utc().date();
    validate_on(content, today)
}

/// [`validate`] with today's date given, so the date rules can be tested.
fn validate_on(
    content: &mut Option<send_message_request::Content>,
    today: Date,
) -> Result<(), ExchangeError> {
    use send_message_request::Content;
    let rules = Rules { today };
    match content {
        None => Err(ExchangeError::invalid(
            "content",
            "is required: text, firearms, firearm_trace, financial or early_warning",
        )),
        Some(Content::Text(text)) if text.is_empty() => {
            Err(ExchangeError::invalid("text", "must not be empty"))
        }
        Some(Content::Text(text)) => super::validate::readable("text", text, Shape::Lines),
        Some(Content::Firearms(report)) => rules.firearms(&Path::root("firearms"), report),
        Some(Content::FirearmTrace(request)) => rules.trace(&Path::root("firearm_trace"), request),
        Some(Content::Financial(report)) => rules.financial(&Path::root("financial"), report),
        Some(Content::EarlyWarning(alert)) => {
            rules.early_warning(&Path::root("early_warning"), alert)
        }
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

#[cfg(test)]
mod tests {
    use super::fixtures::{field_of, financial, firearms, today};
    use super::*;
    use send_message_request::Content;

    #[test]
    fn content_is_required_and_text_must_not_be_empty() {
        assert_eq!(
            validate_on(&mut None, today()).err().map(|e| e.to_string()),
            Some(
                "content: is required: text, firearms, firearm_trace, financial or early_warning"
                    .into()
            )
        );
        assert_eq!(
            field_of(Content::Text(String::new())).as_deref(),
            Some("text")
        );
        assert_eq!(field_of(Content::Text("x".into())), None);
    }

    #[test]
    fn the_server_sets_normalised_serial_numbers_and_ibans() {
        let mut content = Some(firearms());
        validate_on(&mut content, today()).unwrap();
        let Some(Content::Firearms(report)) = content else {
            unreachable!()
        };
        assert!(report.records.iter().all(
            |r| r.serial_number == "bkr-123 / 4.5" && r.serial_number_normalized == "BKR12345"
        ));

        let mut content = Some(financial());
        validate_on(&mut content, today()).unwrap();
        let Some(Content::Financial(report)) = content else {
            unreachable!()
        };
        assert_eq!(report.accounts[0].iban, "GB82WEST12345698765432");
    }
}
