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

use time::{Date, Month};

use super::ExchangeError;
use crate::pb::v1::{
    message, send_message_request, Account, AlertType, EarlyWarningAlert, Entity, Evaluation,
    FinancialIntelligenceReport, FirearmMarkings, FirearmRecord, FirearmStatus,
    FirearmTraceRequest, FirearmType, FirearmsReport, Incident, InformationAccuracy, Person,
    ReportCode, Severity, SourceReliability, Substance, SubstanceForm, Transaction,
    TransactionMode,
};
use crate::text::{excerpt, Shape};

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

// === Code lists ===

/// ISO 3166-1 alpha-2 country codes: the 249 officially assigned codes, sorted. Exceptionally
/// reserved codes (`EU`, `UK`...) and user-assigned ones (`XX`, `XK`) are not countries and are
/// refused wherever a country is asked for.
const COUNTRIES: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// ISO 4217 currency codes, sorted: every active code (including fund codes such as `COU` and
/// precious metals such as `XAU`, which laundering schemes use), plus codes withdrawn since 2021
/// (`HRK`, `SLL`, `ZWL`, `CUC`...), because a report describes transactions that may predate the
/// withdrawal. `XTS` (testing) and `XXX` (no currency) are left out: neither can be an amount.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HRK", "HTG", "HUF", "IDR",
    "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW",
    "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA",
    "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD",
    "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG",
    "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE",
    "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP",
    "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED",
    "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG",
    "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

/// IBAN length by country, from the SWIFT IBAN registry, sorted. A country that uses IBANs
/// without being in the registry is held to the general bounds (15 to 34 characters). Kosovo's
/// user-assigned `XK` is listed because the registry uses it.
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16),
    ("BG", 22), ("BH", 22), ("BI", 27), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22),
    ("CY", 28), ("CZ", 24), ("DE", 22), ("DJ", 27), ("DK", 18), ("DO", 28), ("EE", 20),
    ("EG", 29), ("ES", 24), ("FI", 18), ("FK", 18), ("FO", 18), ("FR", 27), ("GB", 22),
    ("GE", 22), ("GI", 23), ("GL", 18), ("GR", 27), ("GT", 28), ("HN", 28), ("HR", 21),
    ("HU", 28), ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26), ("IT", 27), ("JO", 30),
    ("KW", 30), ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20),
    ("LV", 21), ("LY", 25), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19), ("MN", 20),
    ("MR", 27), ("MT", 31), ("MU", 30), ("NI", 28), ("NL", 18), ("NO", 15), ("OM", 23),
    ("PK", 24), ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22),
    ("RU", 33), ("SA", 24), ("SC", 31), ("SD", 18), ("SE", 24), ("SI", 19), ("SK", 24),
    ("SM", 27), ("SO", 23), ("ST", 25), ("SV", 28), ("TL", 23), ("TN", 24), ("TR", 26),
    ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20), ("YE", 30),
];

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

// === Field paths and text rules ===

/// The path of the field being checked, e.g. `firearms.records[2].incident`.
struct Path(String);

impl Path {
    fn root(name: &str) -> Path {
        Path(name.to_string())
    }

    /// A field of this message: `self.name`.
    fn field(&self, name: &str) -> Path {
        Path(format!("{}.{name}", self.0))
    }

    /// An element of a repeated field of this message: `self.name[index]`.
    fn item(&self, name: &str, index: usize) -> Path {
        Path(format!("{}.{name}[{index}]", self.0))
    }

    fn invalid(&self, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::InvalidField {
            field: self.0.clone(),
            reason: reason.into(),
        }
    }
}

/// How a string field is checked: its length in characters, whether it may be empty (or only
/// blank), and whether it is one line (no control characters at all) or a narrative (line
/// breaks and tabs allowed).
#[derive(Debug, Clone, Copy)]
struct Text {
    max_chars: usize,
    required: bool,
    narrative: bool,
}

impl Text {
    /// An optional one-line field of at most `max_chars` characters.
    const fn line(max_chars: usize) -> Text {
        Text {
            max_chars,
            required: false,
            narrative: false,
        }
    }

    /// An optional narrative of at most `max_chars` characters.
    const fn narrative(max_chars: usize) -> Text {
        Text {
            max_chars,
            required: false,
            narrative: true,
        }
    }

    /// The same rule, and the field must not be blank.
    const fn required(self) -> Text {
        Text {
            required: true,
            ..self
        }
    }

    fn check(self, path: &Path, value: &str) -> Result<(), ExchangeError> {
        if self.required && value.trim().is_empty() {
            return Err(path.invalid("is required"));
        }
        if value.chars().count() > self.max_chars {
            return Err(path.invalid(format!("must be at most {} characters", self.max_chars)));
        }
        let shape = if self.narrative {
            Shape::Lines
        } else {
            Shape::Line
        };
        crate::text::check(value, shape).map_err(|e| path.invalid(e.to_string()))
    }
}

/// A repeated field: at most `max` entries; at least one if `required`.
fn check_count(path: &Path, len: usize, max: usize, required: bool) -> Result<(), ExchangeError> {
    if required && len == 0 {
        return Err(path.invalid("at least one entry is required"));
    }
    if len > max {
        return Err(path.invalid(format!("at most {max} entries are allowed")));
    }
    Ok(())
}

/// An enum field that must be set to a known value other than its `UNSPECIFIED` zero.
fn required_enum<E>(path: &Path, value: i32, expected: &str) -> Result<E, ExchangeError>
where
    E: TryFrom<i32> + Default + PartialEq,
{
    match E::try_from(value) {
        Ok(known) if known != E::default() => Ok(known),
        _ => Err(path.invalid(format!("is required: one of the {expected}_* values"))),
    }
}

/// An enum field that may be unset, but not an unknown number.
fn optional_enum<E: TryFrom<i32>>(
    path: &Path,
    value: i32,
    expected: &str,
) -> Result<(), ExchangeError> {
    match E::try_from(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(path.invalid(format!("must be one of the {expected}_* values"))),
    }
}

// === Codes ===

/// Whether `code` is an ISO 3166-1 alpha-2 country code (upper case).
pub(crate) fn is_country(code: &str) -> bool {
    COUNTRIES.binary_search(&code).is_ok()
}

/// A country field: an ISO 3166-1 alpha-2 code; empty only if not `required`.
fn check_country(path: &Path, code: &str, required: bool) -> Result<(), ExchangeError> {
    if code.is_empty() && !required {
        return Ok(());
    }
    if code.is_empty() {
        return Err(
            path.invalid("is required: an ISO 3166-1 alpha-2 country code such as ES or CO")
        );
    }
    if !is_country(code) {
        return Err(path.invalid(format!(
            "{:?} is not an ISO 3166-1 alpha-2 country code (upper case, such as ES or CO)",
            excerpt(code)
        )));
    }
    Ok(())
}

/// Whether `code` is an accepted ISO 4217 currency code (upper case).
fn is_currency(code: &str) -> bool {
    CURRENCIES.binary_search(&code).is_ok()
}

/// The refusal of a date field that does not parse.
fn not_a_date(value: &str) -> String {
    format!("{:?} is not a calendar date YYYY-MM-DD", excerpt(value))
}

/// Parses an ISO 8601 calendar date `YYYY-MM-DD` that exists (`2024-02-29` does, `2026-02-29`
/// does not).
pub(crate) fn parse_date(value: &str) -> Option<Date> {
    let bytes = value.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shaped {
        return None;
    }
    let number = |range: std::ops::Range<usize>| value.get(range)?.parse::<u16>().ok();
    let year = i32::from(number(0..4)?);
    let month = Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    let day = u8::try_from(number(8..10)?).ok()?;
    Date::from_calendar_date(year, month, day).ok()
}

/// Validates an IBAN (ISO 13616) and returns its electronic format: upper case, spaces removed.
/// The country code must be an ISO 3166-1 code (or `XK`), followed by two check digits and an
/// alphanumeric BBAN; the length must be the registry's for that country (15 to 34 for a country
/// outside the registry), and the whole must pass the mod-97 check (remainder 1).
pub(crate) fn normalize_iban(raw: &str) -> Result<String, &'static str> {
    let iban: String = raw
        .chars()
        .filter(|c| *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if !iban.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("must be letters and digits, optionally grouped with spaces");
    }
    let (country, rest) = iban.split_at(iban.len().min(2));
    if country.len() != 2 || !(is_country(country) || country == "XK") {
        return Err("must start with an ISO 3166-1 alpha-2 country code");
    }
    if !rest.bytes().take(2).all(|b| b.is_ascii_digit()) || rest.len() < 2 {
        return Err("must have two check digits after the country code");
    }
    let length_ok = match IBAN_LENGTHS.binary_search_by(|(code, _)| code.cmp(&country)) {
        Ok(i) => IBAN_LENGTHS
            .get(i)
            .is_some_and(|(_, len)| iban.len() == *len),
        Err(_) => (15..=34).contains(&iban.len()),
    };
    if !length_ok {
        return Err("has the wrong length for its country");
    }
    // ISO 13616-1 §6: move the first four characters to the end, replace letters by 10..35 and
    // take the number modulo 97, one digit at a time so it never overflows.
    let remainder = iban[4..]
        .bytes()
        .chain(iban[..4].bytes())
        .fold(0u32, |r, b| {
            if b.is_ascii_digit() {
                (r * 10 + u32::from(b - b'0')) % 97
            } else {
                (r * 100 + u32::from(b - b'A') + 10) % 97
            }
        });
    if remainder != 1 {
        return Err("fails the ISO 13616 check digits (mod 97): mistyped?");
    }
    Ok(iban)
}

/// Whether `bic` has the ISO 9362 shape: 4 letters (institution), a 2-letter ISO 3166-1 country
/// code (or `XK`), 2 letters or digits (location), and optionally 3 letters or digits (branch);
/// upper case.
pub(crate) fn is_bic(bic: &str) -> bool {
    let b = bic.as_bytes();
    let upper_alnum = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    (b.len() == 8 || b.len() == 11)
        && b[..4].iter().all(u8::is_ascii_uppercase)
        && bic.get(4..6).is_some_and(|c| is_country(c) || c == "XK")
        && b[6..].iter().all(upper_alnum)
}

/// Whether `value` is a decimal amount `^[0-9]{1,15}(\.[0-9]{1,4})?$`.
fn is_decimal_amount(value: &str) -> bool {
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    match value.split_once('.') {
        None => digits(value, 15),
        Some((units, decimals)) => digits(units, 15) && digits(decimals, 4),
    }
}

/// Whether `cas` is a CAS Registry Number `^\d{2,7}-\d{2}-\d$` whose last digit is the check
/// digit: the other digits, each multiplied by its position counted from the right (1, 2, ...),
/// summed, modulo 10.
fn is_cas_number(cas: &str) -> bool {
    let mut parts = cas.split('-');
    let (Some(first), Some(second), Some(check), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !(2..=7).contains(&first.len())
        || second.len() != 2
        || check.len() != 1
        || !(digits(first) && digits(second) && digits(check))
    {
        return false;
    }
    let sum: u32 = first
        .bytes()
        .chain(second.bytes())
        .rev()
        .zip(1u32..)
        .map(|(b, position)| u32::from(b - b'0') * position)
        .sum();
    check.bytes().all(|b| u32::from(b - b'0') == sum % 10)
}

// === The rules ===

/// The field rules, with the date they are checked on.
struct Rules {
    today: Date,
}

impl Rules {
    /// A required date: `YYYY-MM-DD`, a real calendar date, not in the future.
    fn past_date(&self, path: &Path, value: &str) -> Result<(), ExchangeError> {
        if value.is_empty() {
            return Err(path.invalid("is required: a date YYYY-MM-DD"));
        }
        self.optional_past_date(path, value)
    }

    /// An optional date: if set, `YYYY-MM-DD`, a real calendar date, not in the future.
    fn optional_past_date(&self, path: &Path, value: &str) -> Result<(), ExchangeError> {
        if value.is_empty() {
            return Ok(());
        }
        let date = parse_date(value).ok_or_else(|| path.invalid(not_a_date(value)))?;
        if self
            .today
            .next_day()
            .is_some_and(|tomorrow| date > tomorrow)
        {
            return Err(path.invalid(format!("{value} is in the future")));
        }
        Ok(())
    }

    /// An optional date: if set, `YYYY-MM-DD`, a real calendar date.
    fn optional_date(&self, path: &Path, value: &str) -> Result<(), ExchangeError> {
        if !value.is_empty() && parse_date(value).is_none() {
            return Err(path.invalid(not_a_date(value)));
        }
        Ok(())
    }

    /// A record's own evaluation is optional; when present, both of its parts are set.
    fn evaluation(
        &self,
        path: &Path,
        evaluation: Option<&Evaluation>,
    ) -> Result<(), ExchangeError> {
        let Some(evaluation) = evaluation else {
            return Ok(());
        };
        required_enum::<SourceReliability>(
            &path.field("source_reliability"),
            evaluation.source_reliability,
            "SOURCE_RELIABILITY",
        )?;
        required_enum::<InformationAccuracy>(
            &path.field("information_accuracy"),
            evaluation.information_accuracy,
            "INFORMATION_ACCURACY",
        )?;
        Ok(())
    }

    /// A person: `full_name` required (at most 200 characters); `date_of_birth` a past
    /// calendar date if set; `nationality` an alpha-2 code if set; `role` at most 100.
    fn person(&self, path: &Path, person: &Person) -> Result<(), ExchangeError> {
        Text::line(MAX_NAME_CHARS)
            .required()
            .check(&path.field("full_name"), &person.full_name)?;
        self.optional_past_date(&path.field("date_of_birth"), &person.date_of_birth)?;
        check_country(&path.field("nationality"), &person.nationality, false)?;
        Text::line(MAX_LABEL_CHARS).check(&path.field("role"), &person.role)
    }

    /// A list of persons: at most 1000, each valid.
    fn persons(&self, path: &Path, name: &str, persons: &[Person]) -> Result<(), ExchangeError> {
        check_count(&path.field(name), persons.len(), MAX_PARTIES, false)?;
        for (i, person) in persons.iter().enumerate() {
            self.person(&path.item(name, i), person)?;
        }
        Ok(())
    }

    // --- Firearms ---

    /// A firearms report: 1 to 1000 records, each valid.
    fn firearms(&self, path: &Path, report: &mut FirearmsReport) -> Result<(), ExchangeError> {
        check_count(
            &path.field("records"),
            report.records.len(),
            MAX_FIREARM_RECORDS,
            true,
        )?;
        for (i, record) in report.records.iter_mut().enumerate() {
            self.firearm(&path.item("records", i), record)?;
        }
        Ok(())
    }

    /// One firearm: `firearm_type` and `status` set; `make` required (at most 100 characters);
    /// `model` at most 100; `calibre` at most 50; `serial_number` at most 64 printable
    /// characters, from which the server sets `serial_number_normalized`; valid `markings`,
    /// `incident` and `evaluation` if present.
    fn firearm(&self, path: &Path, record: &mut FirearmRecord) -> Result<(), ExchangeError> {
        required_enum::<FirearmType>(
            &path.field("firearm_type"),
            record.firearm_type,
            "FIREARM_TYPE",
        )?;
        Text::line(MAX_LABEL_CHARS)
            .required()
            .check(&path.field("make"), &record.make)?;
        Text::line(MAX_LABEL_CHARS).check(&path.field("model"), &record.model)?;
        Text::line(MAX_CALIBRE_CHARS).check(&path.field("calibre"), &record.calibre)?;
        Text::line(MAX_NUMBER_CHARS).check(&path.field("serial_number"), &record.serial_number)?;
        record.serial_number_normalized = normalize_serial(&record.serial_number);
        if let Some(markings) = &record.markings {
            self.markings(&path.field("markings"), markings)?;
        }
        required_enum::<FirearmStatus>(&path.field("status"), record.status, "FIREARM_STATUS")?;
        if let Some(incident) = &record.incident {
            self.incident(&path.field("incident"), incident)?;
        }
        self.evaluation(&path.field("evaluation"), record.evaluation.as_ref())
    }

    /// Markings: `manufacturer` at most 100 characters; `country_of_manufacture` an alpha-2
    /// code if known; `year_of_manufacture` 0 (unknown) or 1800 to this year; `import_marking`
    /// and each of at most 50 `other_markings` at most 200.
    fn markings(&self, path: &Path, markings: &FirearmMarkings) -> Result<(), ExchangeError> {
        Text::line(MAX_LABEL_CHARS).check(&path.field("manufacturer"), &markings.manufacturer)?;
        check_country(
            &path.field("country_of_manufacture"),
            &markings.country_of_manufacture,
            false,
        )?;
        let year = markings.year_of_manufacture;
        let this_year = u32::try_from(self.today.year()).unwrap_or(u32::MAX);
        if year != 0 && !(EARLIEST_YEAR_OF_MANUFACTURE..=this_year).contains(&year) {
            return Err(path.field("year_of_manufacture").invalid(format!(
                "must be {EARLIEST_YEAR_OF_MANUFACTURE} to {this_year}, or 0 if unknown"
            )));
        }
        Text::line(MAX_MARKING_CHARS)
            .check(&path.field("import_marking"), &markings.import_marking)?;
        check_count(
            &path.field("other_markings"),
            markings.other_markings.len(),
            MAX_LIST_ENTRIES,
            false,
        )?;
        for (i, marking) in markings.other_markings.iter().enumerate() {
            Text::line(MAX_MARKING_CHARS)
                .required()
                .check(&path.item("other_markings", i), marking)?;
        }
        Ok(())
    }

    /// An incident: when and where are required (`date` a past calendar date, `country` an
    /// alpha-2 code); `place` at most 200 characters; at most 1000 valid `persons`;
    /// `circumstances` a narrative of at most 10000.
    fn incident(&self, path: &Path, incident: &Incident) -> Result<(), ExchangeError> {
        self.past_date(&path.field("date"), &incident.date)?;
        check_country(&path.field("country"), &incident.country, true)?;
        Text::line(MAX_NAME_CHARS).check(&path.field("place"), &incident.place)?;
        self.persons(path, "persons", &incident.persons)?;
        Text::narrative(MAX_NARRATIVE_CHARS)
            .check(&path.field("circumstances"), &incident.circumstances)
    }

    /// A trace request: a valid `firearm` (required); `requested_country` a required alpha-2
    /// code; `question` required (a narrative of at most 1000 characters); `respond_by_date` a
    /// calendar date if set (informative: the message's `respond_by` is the enforced deadline).
    fn trace(&self, path: &Path, request: &mut FirearmTraceRequest) -> Result<(), ExchangeError> {
        let firearm_path = path.field("firearm");
        let firearm = request
            .firearm
            .as_mut()
            .ok_or_else(|| firearm_path.invalid("is required: the firearm to trace"))?;
        self.firearm(&firearm_path, firearm)?;
        check_country(
            &path.field("requested_country"),
            &request.requested_country,
            true,
        )?;
        Text::narrative(MAX_QUESTION_CHARS)
            .required()
            .check(&path.field("question"), &request.question)?;
        self.optional_date(&path.field("respond_by_date"), &request.respond_by_date)
    }

    // --- Financial intelligence ---

    /// A financial report: `report_code` set; at least one transaction for STR, SAR, CTR and
    /// EFT; at most 1000 each of valid `persons`, `entities`, `accounts` and `transactions`; at
    /// most 50 `indicators` of 1 to 100 characters; `reason` a narrative of at most 4000
    /// characters, required for STR and SAR (why it is suspicious).
    fn financial(
        &self,
        path: &Path,
        report: &mut FinancialIntelligenceReport,
    ) -> Result<(), ExchangeError> {
        let code = required_enum::<ReportCode>(
            &path.field("report_code"),
            report.report_code,
            "REPORT_CODE",
        )?;
        let needs_transactions = matches!(
            code,
            ReportCode::Str | ReportCode::Sar | ReportCode::Ctr | ReportCode::Eft
        );
        self.persons(path, "persons", &report.persons)?;
        check_count(
            &path.field("entities"),
            report.entities.len(),
            MAX_PARTIES,
            false,
        )?;
        for (i, entity) in report.entities.iter().enumerate() {
            self.entity(&path.item("entities", i), entity)?;
        }
        check_count(
            &path.field("accounts"),
            report.accounts.len(),
            MAX_PARTIES,
            false,
        )?;
        for (i, account) in report.accounts.iter_mut().enumerate() {
            self.account(&path.item("accounts", i), account)?;
        }
        let transactions = path.field("transactions");
        if needs_transactions && report.transactions.is_empty() {
            return Err(transactions.invalid(format!(
                "{} requires at least one transaction",
                code.as_str_name()
            )));
        }
        check_count(&transactions, report.transactions.len(), MAX_PARTIES, false)?;
        for (i, transaction) in report.transactions.iter().enumerate() {
            self.transaction(&path.item("transactions", i), transaction)?;
        }
        check_count(
            &path.field("indicators"),
            report.indicators.len(),
            MAX_LIST_ENTRIES,
            false,
        )?;
        for (i, indicator) in report.indicators.iter().enumerate() {
            Text::line(MAX_LABEL_CHARS)
                .required()
                .check(&path.item("indicators", i), indicator)?;
        }
        let reason = Text::narrative(MAX_REASON_CHARS);
        let reason = if matches!(code, ReportCode::Str | ReportCode::Sar) {
            reason.required()
        } else {
            reason
        };
        reason.check(&path.field("reason"), &report.reason)
    }

    /// An entity: `name` required (at most 200 characters); `incorporation_number` at most 64;
    /// `incorporation_country_code` an alpha-2 code if set.
    fn entity(&self, path: &Path, entity: &Entity) -> Result<(), ExchangeError> {
        Text::line(MAX_NAME_CHARS)
            .required()
            .check(&path.field("name"), &entity.name)?;
        Text::line(MAX_NUMBER_CHARS).check(
            &path.field("incorporation_number"),
            &entity.incorporation_number,
        )?;
        check_country(
            &path.field("incorporation_country_code"),
            &entity.incorporation_country_code,
            false,
        )
    }

    /// An account: an `iban` (ISO 13616, rewritten in electronic format) or, for accounts
    /// without one, an `account` number (at most 64 characters); `swift` a BIC (ISO 9362) if
    /// set; `institution_name` and `holder_name` at most 200.
    fn account(&self, path: &Path, account: &mut Account) -> Result<(), ExchangeError> {
        if account.iban.is_empty() && account.account.trim().is_empty() {
            return Err(path
                .field("iban")
                .invalid("an IBAN or, for an account without one, an account number is required"));
        }
        if !account.iban.is_empty() {
            account.iban = normalize_iban(&account.iban)
                .map_err(|reason| path.field("iban").invalid(reason))?;
        }
        if !account.swift.is_empty() && !is_bic(&account.swift) {
            return Err(path.field("swift").invalid(
                "must be a BIC (ISO 9362): 4 letters, a country code, 2 letters or digits, and optionally a 3-character branch, e.g. DEUTDEFF or DEUTDEFF500",
            ));
        }
        Text::line(MAX_NUMBER_CHARS).check(&path.field("account"), &account.account)?;
        Text::line(MAX_NAME_CHARS)
            .check(&path.field("institution_name"), &account.institution_name)?;
        Text::line(MAX_NAME_CHARS).check(&path.field("holder_name"), &account.holder_name)
    }

    /// A transaction: `transaction_number` at most 64 characters; `date_transaction` a required
    /// past calendar date; `amount_local` required, its `value` a positive decimal
    /// (`^[0-9]{1,15}(\.[0-9]{1,4})?$`) and its `currency_code` ISO 4217; `from_party` and
    /// `to_party` at most 200; `transmode` a known value if set; valid `evaluation` if present.
    fn transaction(&self, path: &Path, transaction: &Transaction) -> Result<(), ExchangeError> {
        Text::line(MAX_NUMBER_CHARS).check(
            &path.field("transaction_number"),
            &transaction.transaction_number,
        )?;
        self.past_date(
            &path.field("date_transaction"),
            &transaction.date_transaction,
        )?;
        let amount_path = path.field("amount_local");
        let amount = transaction
            .amount_local
            .as_ref()
            .ok_or_else(|| amount_path.invalid("is required: value and currency_code"))?;
        if !is_decimal_amount(&amount.value) {
            return Err(amount_path.field("value").invalid(
                "must be a decimal such as 15000.50: 1 to 15 digits, optionally '.' and 1 to 4 decimals",
            ));
        }
        if amount.value.bytes().all(|b| b == b'0' || b == b'.') {
            return Err(amount_path
                .field("value")
                .invalid("must be greater than zero"));
        }
        if !is_currency(&amount.currency_code) {
            return Err(amount_path.field("currency_code").invalid(format!(
                "{:?} is not an ISO 4217 currency code (upper case, such as EUR, COP or USD)",
                excerpt(&amount.currency_code)
            )));
        }
        Text::line(MAX_NAME_CHARS).check(&path.field("from_party"), &transaction.from_party)?;
        Text::line(MAX_NAME_CHARS).check(&path.field("to_party"), &transaction.to_party)?;
        optional_enum::<TransactionMode>(
            &path.field("transmode"),
            transaction.transmode,
            "TRANSACTION_MODE",
        )?;
        self.evaluation(&path.field("evaluation"), transaction.evaluation.as_ref())
    }

    // --- Early warning ---

    /// An early-warning alert: `alert_type` and `severity` set; a valid `substance` (required);
    /// each of at most 249 `countries` an alpha-2 code; `evidence` a narrative of at most 10000
    /// characters; at most 50 `recommended_actions` of 1 to 1000; valid `evaluation` if present.
    fn early_warning(&self, path: &Path, alert: &EarlyWarningAlert) -> Result<(), ExchangeError> {
        required_enum::<AlertType>(&path.field("alert_type"), alert.alert_type, "ALERT_TYPE")?;
        let substance_path = path.field("substance");
        let substance = alert
            .substance
            .as_ref()
            .ok_or_else(|| substance_path.invalid("is required: at least its name"))?;
        self.substance(&substance_path, substance)?;
        check_count(
            &path.field("countries"),
            alert.countries.len(),
            COUNTRIES.len(),
            false,
        )?;
        for (i, country) in alert.countries.iter().enumerate() {
            check_country(&path.item("countries", i), country, true)?;
        }
        required_enum::<Severity>(&path.field("severity"), alert.severity, "SEVERITY")?;
        Text::narrative(MAX_NARRATIVE_CHARS).check(&path.field("evidence"), &alert.evidence)?;
        check_count(
            &path.field("recommended_actions"),
            alert.recommended_actions.len(),
            MAX_LIST_ENTRIES,
            false,
        )?;
        for (i, action) in alert.recommended_actions.iter().enumerate() {
            Text::narrative(MAX_QUESTION_CHARS)
                .required()
                .check(&path.item("recommended_actions", i), action)?;
        }
        self.evaluation(&path.field("evaluation"), alert.evaluation.as_ref())
    }

    /// A substance: `name` required (at most 200 characters); `cas_number` a CAS Registry
    /// Number with a valid check digit if set; `form` a known value if set.
    fn substance(&self, path: &Path, substance: &Substance) -> Result<(), ExchangeError> {
        Text::line(MAX_NAME_CHARS)
            .required()
            .check(&path.field("name"), &substance.name)?;
        if !substance.cas_number.is_empty() && !is_cas_number(&substance.cas_number) {
            return Err(path.field("cas_number").invalid(
                "must be a CAS Registry Number such as 50-00-0 with a valid check digit",
            ));
        }
        optional_enum::<SubstanceForm>(&path.field("form"), substance.form, "SUBSTANCE_FORM")
    }
}

/// The normalised form of a serial number, for matching across agencies: upper case, without
/// spaces and the separators `-`, `/` and `.`.
fn normalize_serial(serial: &str) -> String {
    serial
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '/' | '.')))
        .flat_map(char::to_uppercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::Amount;
    use send_message_request::Content;

    /// The date the rules are checked on in these tests.
    fn today() -> Date {
        Date::from_calendar_date(2026, Month::March, 15).unwrap()
    }

    fn evaluation() -> Evaluation {
        Evaluation {
            source_reliability: SourceReliability::B as i32,
            information_accuracy: InformationAccuracy::InformationAccuracy2 as i32,
        }
    }

    fn firearm() -> FirearmRecord {
        FirearmRecord {
            firearm_type: FirearmType::Pistol as i32,
            make: "Glock".into(),
            model: "17 Gen4".into(),
            calibre: "9 mm Luger".into(),
            serial_number: "bkr-123 / 4.5".into(),
            serial_number_normalized: "whatever the client says".into(),
            markings: Some(FirearmMarkings {
                manufacturer: "Glock GmbH".into(),
                country_of_manufacture: "AT".into(),
                year_of_manufacture: 2016,
                import_marking: String::new(),
                other_markings: vec!["proof mark".into()],
            }),
            status: FirearmStatus::Seized as i32,
            incident: Some(Incident {
                date: "2026-03-02".into(),
                country: "ES".into(),
                place: "Port of Algeciras".into(),
                persons: vec![Person {
                    full_name: "Juan Pérez".into(),
                    date_of_birth: "1988-07-14".into(),
                    nationality: "CO".into(),
                    role: "suspect".into(),
                }],
                circumstances: "Found in a container.\nDeclared as machine parts.".into(),
            }),
            evaluation: Some(evaluation()),
        }
    }

    fn firearms() -> Content {
        Content::Firearms(FirearmsReport {
            records: vec![firearm(), firearm(), firearm()],
        })
    }

    fn trace() -> Content {
        Content::FirearmTrace(FirearmTraceRequest {
            firearm: Some(firearm()),
            requested_country: "AT".into(),
            question: "Last lawful owner and date of transfer.".into(),
            respond_by_date: "2026-04-30".into(),
        })
    }

    fn transaction(value: &str, currency: &str) -> Transaction {
        Transaction {
            transaction_number: "TX-1".into(),
            date_transaction: "2026-01-20".into(),
            amount_local: Some(Amount {
                value: value.into(),
                currency_code: currency.into(),
            }),
            from_party: "ES9121000418450200051332".into(),
            to_party: "Importadora Andina S.A.S.".into(),
            transmode: TransactionMode::Wire as i32,
            evaluation: Some(evaluation()),
        }
    }

    fn financial() -> Content {
        Content::Financial(FinancialIntelligenceReport {
            report_code: ReportCode::Str as i32,
            persons: vec![Person {
                full_name: "Ana Gómez".into(),
                ..Person::default()
            }],
            entities: vec![Entity {
                name: "Importadora Andina S.A.S.".into(),
                incorporation_number: "900123456-7".into(),
                incorporation_country_code: "CO".into(),
            }],
            accounts: vec![
                Account {
                    iban: "GB82 WEST 1234 5698 7654 32".into(),
                    swift: "DEUTDEFF".into(),
                    ..Account::default()
                },
                Account {
                    account: "001-234567-89".into(),
                    swift: "DEUTDEFF500".into(),
                    institution_name: "Banco de Ejemplo".into(),
                    holder_name: "Importadora Andina S.A.S.".into(),
                    ..Account::default()
                },
            ],
            transactions: vec![
                transaction("15000.50", "EUR"),
                transaction("60000000", "COP"),
            ],
            indicators: vec!["structuring".into(), "trade-based".into()],
            reason: "Repeated transfers just under the reporting threshold.".into(),
        })
    }

    fn early_warning() -> Content {
        Content::EarlyWarning(EarlyWarningAlert {
            alert_type: AlertType::Alert as i32,
            substance: Some(Substance {
                name: "Formaldehyde".into(),
                cas_number: "50-00-0".into(),
                form: SubstanceForm::Liquid as i32,
            }),
            countries: vec!["ES".into(), "CO".into()],
            severity: Severity::High as i32,
            evidence: "Three seizures.".into(),
            recommended_actions: vec!["Inform emergency departments.".into()],
            evaluation: Some(evaluation()),
        })
    }

    fn field_of(content: Content) -> Option<String> {
        match validate_on(&mut Some(content), today()) {
            Ok(()) => None,
            Err(ExchangeError::InvalidField { field, .. }) => Some(field),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    type Edit<T> = fn(&mut T);

    /// Applies each edit to `base()` and checks which field, if any, is refused.
    fn run_table<T>(
        base: fn() -> Content,
        unwrap: fn(&mut Content) -> &mut T,
        cases: &[(Edit<T>, Option<&str>)],
    ) {
        for (i, (edit, want)) in cases.iter().enumerate() {
            let mut content = base();
            edit(unwrap(&mut content));
            assert_eq!(field_of(content).as_deref(), *want, "case {i}");
        }
    }

    fn as_firearms(content: &mut Content) -> &mut FirearmsReport {
        match content {
            Content::Firearms(report) => report,
            _ => unreachable!(),
        }
    }

    fn as_trace(content: &mut Content) -> &mut FirearmTraceRequest {
        match content {
            Content::FirearmTrace(request) => request,
            _ => unreachable!(),
        }
    }

    fn as_financial(content: &mut Content) -> &mut FinancialIntelligenceReport {
        match content {
            Content::Financial(report) => report,
            _ => unreachable!(),
        }
    }

    fn as_alert(content: &mut Content) -> &mut EarlyWarningAlert {
        match content {
            Content::EarlyWarning(alert) => alert,
            _ => unreachable!(),
        }
    }

    fn record(report: &mut FirearmsReport) -> &mut FirearmRecord {
        &mut report.records[2]
    }

    fn markings(report: &mut FirearmsReport) -> &mut FirearmMarkings {
        record(report).markings.as_mut().unwrap()
    }

    fn incident(report: &mut FirearmsReport) -> &mut Incident {
        record(report).incident.as_mut().unwrap()
    }

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
    fn each_firearms_rule_names_its_field() {
        let cases: &[(Edit<FirearmsReport>, Option<&str>)] = &[
            (|_| {}, None),
            (|r| r.records.clear(), Some("firearms.records")),
            (
                |r| r.records = vec![firearm(); MAX_FIREARM_RECORDS + 1],
                Some("firearms.records"),
            ),
            (
                |r| record(r).firearm_type = 0,
                Some("firearms.records[2].firearm_type"),
            ),
            (
                |r| record(r).firearm_type = 99,
                Some("firearms.records[2].firearm_type"),
            ),
            (
                |r| record(r).make = " ".into(),
                Some("firearms.records[2].make"),
            ),
            (
                |r| record(r).make = "m".repeat(101),
                Some("firearms.records[2].make"),
            ),
            (|r| record(r).make = "m".repeat(100), None),
            (
                |r| record(r).model = "m".repeat(101),
                Some("firearms.records[2].model"),
            ),
            (
                |r| record(r).calibre = "c".repeat(51),
                Some("firearms.records[2].calibre"),
            ),
            (|r| record(r).serial_number = String::new(), None),
            (|r| record(r).serial_number = "s".repeat(64), None),
            (
                |r| record(r).serial_number = "s".repeat(65),
                Some("firearms.records[2].serial_number"),
            ),
            (
                |r| record(r).serial_number = "AB\u{7}12".into(),
                Some("firearms.records[2].serial_number"),
            ),
            (|r| record(r).status = 0, Some("firearms.records[2].status")),
            (|r| record(r).markings = None, None),
            (|r| markings(r).country_of_manufacture = String::new(), None),
            (
                |r| markings(r).country_of_manufacture = "EU".into(),
                Some("firearms.records[2].markings.country_of_manufacture"),
            ),
            (
                |r| markings(r).country_of_manufacture = "XX".into(),
                Some("firearms.records[2].markings.country_of_manufacture"),
            ),
            (
                |r| markings(r).country_of_manufacture = "at".into(),
                Some("firearms.records[2].markings.country_of_manufacture"),
            ),
            (
                |r| markings(r).country_of_manufacture = "AUT".into(),
                Some("firearms.records[2].markings.country_of_manufacture"),
            ),
            (|r| markings(r).year_of_manufacture = 0, None),
            (|r| markings(r).year_of_manufacture = 1800, None),
            (|r| markings(r).year_of_manufacture = 2026, None),
            (
                |r| markings(r).year_of_manufacture = 1799,
                Some("firearms.records[2].markings.year_of_manufacture"),
            ),
            (
                |r| markings(r).year_of_manufacture = 2027,
                Some("firearms.records[2].markings.year_of_manufacture"),
            ),
            (
                |r| markings(r).manufacturer = "m".repeat(101),
                Some("firearms.records[2].markings.manufacturer"),
            ),
            (
                |r| markings(r).other_markings = vec!["proof".into(), String::new()],
                Some("firearms.records[2].markings.other_markings[1]"),
            ),
            (
                |r| markings(r).other_markings = vec!["m".into(); 51],
                Some("firearms.records[2].markings.other_markings"),
            ),
            (|r| record(r).incident = None, None),
            (|r| incident(r).date = "2024-02-29".into(), None),
            (|r| incident(r).date = "2026-03-16".into(), None),
            (
                |r| incident(r).date = "2026-02-29".into(),
                Some("firearms.records[2].incident.date"),
            ),
            (
                |r| incident(r).date = "2026-3-2".into(),
                Some("firearms.records[2].incident.date"),
            ),
            (
                |r| incident(r).date = "2026-03-17".into(),
                Some("firearms.records[2].incident.date"),
            ),
            (
                |r| incident(r).date = String::new(),
                Some("firearms.records[2].incident.date"),
            ),
            (
                |r| incident(r).country = String::new(),
                Some("firearms.records[2].incident.country"),
            ),
            (
                |r| incident(r).country = "XK".into(),
                Some("firearms.records[2].incident.country"),
            ),
            (
                |r| incident(r).place = "p".repeat(201),
                Some("firearms.records[2].incident.place"),
            ),
            (
                |r| incident(r).circumstances = "line\u{0}".into(),
                Some("firearms.records[2].incident.circumstances"),
            ),
            (
                |r| incident(r).persons[0].full_name = String::new(),
                Some("firearms.records[2].incident.persons[0].full_name"),
            ),
            (
                |r| incident(r).persons[0].full_name = "n".repeat(201),
                Some("firearms.records[2].incident.persons[0].full_name"),
            ),
            (
                |r| incident(r).persons[0].date_of_birth = String::new(),
                None,
            ),
            (
                |r| incident(r).persons[0].date_of_birth = "1988-13-01".into(),
                Some("firearms.records[2].incident.persons[0].date_of_birth"),
            ),
            (
                |r| incident(r).persons[0].date_of_birth = "14/07/1988".into(),
                Some("firearms.records[2].incident.persons[0].date_of_birth"),
            ),
            (|r| incident(r).persons[0].nationality = String::new(), None),
            (
                |r| incident(r).persons[0].nationality = "Colombian".into(),
                Some("firearms.records[2].incident.persons[0].nationality"),
            ),
            (|r| record(r).evaluation = None, None),
            (
                |r| record(r).evaluation = Some(Evaluation::default()),
                Some("firearms.records[2].evaluation.source_reliability"),
            ),
            (
                |r| {
                    record(r).evaluation = Some(Evaluation {
                        source_reliability: SourceReliability::A as i32,
                        information_accuracy: 0,
                    })
                },
                Some("firearms.records[2].evaluation.information_accuracy"),
            ),
        ];
        run_table(firearms, as_firearms, cases);
    }

    #[test]
    fn each_trace_request_rule_names_its_field() {
        let cases: &[(Edit<FirearmTraceRequest>, Option<&str>)] = &[
            (|_| {}, None),
            (|t| t.firearm = None, Some("firearm_trace.firearm")),
            (
                |t| t.firearm.as_mut().unwrap().serial_number = "s".repeat(65),
                Some("firearm_trace.firearm.serial_number"),
            ),
            (
                |t| {
                    t.firearm
                        .as_mut()
                        .unwrap()
                        .markings
                        .as_mut()
                        .unwrap()
                        .country_of_manufacture = "ZZ".into()
                },
                Some("firearm_trace.firearm.markings.country_of_manufacture"),
            ),
            (
                |t| t.requested_country = String::new(),
                Some("firearm_trace.requested_country"),
            ),
            (
                |t| t.requested_country = "EU".into(),
                Some("firearm_trace.requested_country"),
            ),
            (|t| t.question = "  ".into(), Some("firearm_trace.question")),
            (
                |t| t.question = "q".repeat(1001),
                Some("firearm_trace.question"),
            ),
            (|t| t.question = "Who?\nWhen?".into(), None),
            (|t| t.respond_by_date = String::new(), None),
            (|t| t.respond_by_date = "2024-02-29".into(), None),
            (
                |t| t.respond_by_date = "2026-02-29".into(),
                Some("firearm_trace.respond_by_date"),
            ),
            (
                |t| t.respond_by_date = "2026-04-31".into(),
                Some("firearm_trace.respond_by_date"),
            ),
        ];
        run_table(trace, as_trace, cases);
    }

    #[test]
    fn each_financial_rule_names_its_field() {
        let cases: &[(Edit<FinancialIntelligenceReport>, Option<&str>)] = &[
            (|_| {}, None),
            (|f| f.report_code = 0, Some("financial.report_code")),
            (|f| f.transactions.clear(), Some("financial.transactions")),
            (
                |f| {
                    f.report_code = ReportCode::Ctr as i32;
                    f.transactions.clear();
                },
                Some("financial.transactions"),
            ),
            (
                |f| {
                    f.report_code = ReportCode::Iri as i32;
                    f.transactions.clear();
                    f.reason.clear();
                },
                None,
            ),
            (|f| f.reason = String::new(), Some("financial.reason")),
            (|f| f.reason = "r".repeat(4001), Some("financial.reason")),
            (|f| f.reason = "r".repeat(4000), None),
            (
                |f| f.persons[0].nationality = "eu".into(),
                Some("financial.persons[0].nationality"),
            ),
            (
                |f| f.entities[0].name = String::new(),
                Some("financial.entities[0].name"),
            ),
            (
                |f| f.entities[0].incorporation_country_code = String::new(),
                None,
            ),
            (
                |f| f.entities[0].incorporation_country_code = "XX".into(),
                Some("financial.entities[0].incorporation_country_code"),
            ),
            (
                |f| f.accounts[0].iban = "DE89370400440532013000".into(),
                None,
            ),
            (
                |f| f.accounts[0].iban = "de89 3704 0044 0532 0130 00".into(),
                None,
            ),
            (
                |f| f.accounts[0].iban = "DE88370400440532013000".into(),
                Some("financial.accounts[0].iban"),
            ),
            (
                |f| f.accounts[0].iban = String::new(),
                Some("financial.accounts[0].iban"),
            ),
            (
                |f| {
                    f.accounts[0].iban = String::new();
                    f.accounts[0].account = "12345".into();
                },
                None,
            ),
            (|f| f.accounts[1].swift = String::new(), None),
            (
                |f| f.accounts[1].swift = "DEUTDEF".into(),
                Some("financial.accounts[1].swift"),
            ),
            (
                |f| f.accounts[1].account = "a".repeat(65),
                Some("financial.accounts[1].account"),
            ),
            (
                |f| f.accounts[1].holder_name = "h".repeat(201),
                Some("financial.accounts[1].holder_name"),
            ),
            (
                |f| f.transactions[1].date_transaction = "2026-02-29".into(),
                Some("financial.transactions[1].date_transaction"),
            ),
            (
                |f| f.transactions[1].date_transaction = String::new(),
                Some("financial.transactions[1].date_transaction"),
            ),
            (
                |f| f.transactions[1].amount_local = None,
                Some("financial.transactions[1].amount_local"),
            ),
            (
                |f| f.transactions[1] = transaction("1,000.00", "COP"),
                Some("financial.transactions[1].amount_local.value"),
            ),
            (
                |f| f.transactions[1] = transaction("0.00", "COP"),
                Some("financial.transactions[1].amount_local.value"),
            ),
            (
                |f| f.transactions[1] = transaction("999999999999999.9999", "COP"),
                None,
            ),
            (
                |f| f.transactions[1] = transaction("10", "EURO"),
                Some("financial.transactions[1].amount_local.currency_code"),
            ),
            (
                |f| f.transactions[1] = transaction("10", "XXY"),
                Some("financial.transactions[1].amount_local.currency_code"),
            ),
            (
                |f| f.transactions[1] = transaction("10", "usd"),
                Some("financial.transactions[1].amount_local.currency_code"),
            ),
            (|f| f.transactions[1] = transaction("10", "USD"), None),
            (
                |f| f.transactions[1].from_party = "p".repeat(201),
                Some("financial.transactions[1].from_party"),
            ),
            (
                |f| f.transactions[1].to_party = "p".repeat(201),
                Some("financial.transactions[1].to_party"),
            ),
            (|f| f.transactions[1].transmode = 0, None),
            (
                |f| f.transactions[1].transmode = 42,
                Some("financial.transactions[1].transmode"),
            ),
            (
                |f| f.transactions[1].evaluation = Some(Evaluation::default()),
                Some("financial.transactions[1].evaluation.source_reliability"),
            ),
            (
                |f| f.indicators = vec!["i".into(); 51],
                Some("financial.indicators"),
            ),
            (
                |f| f.indicators = vec!["i".repeat(101)],
                Some("financial.indicators[0]"),
            ),
            (
                |f| f.indicators = vec![String::new()],
                Some("financial.indicators[0]"),
            ),
        ];
        run_table(financial, as_financial, cases);
    }

    #[test]
    fn each_early_warning_rule_names_its_field() {
        fn substance(a: &mut EarlyWarningAlert) -> &mut Substance {
            a.substance.as_mut().unwrap()
        }
        let cases: &[(Edit<EarlyWarningAlert>, Option<&str>)] = &[
            (|_| {}, None),
            (|a| a.alert_type = 0, Some("early_warning.alert_type")),
            (|a| a.substance = None, Some("early_warning.substance")),
            (
                |a| substance(a).name = String::new(),
                Some("early_warning.substance.name"),
            ),
            (
                |a| substance(a).name = "n".repeat(201),
                Some("early_warning.substance.name"),
            ),
            (|a| substance(a).cas_number = String::new(), None),
            (|a| substance(a).cas_number = "7732-18-5".into(), None),
            (
                |a| substance(a).cas_number = "7732-18-4".into(),
                Some("early_warning.substance.cas_number"),
            ),
            (
                |a| substance(a).form = 77,
                Some("early_warning.substance.form"),
            ),
            (
                |a| a.countries = vec!["ES".into(), "EU".into()],
                Some("early_warning.countries[1]"),
            ),
            (|a| a.countries.clear(), None),
            (|a| a.severity = 0, Some("early_warning.severity")),
            (
                |a| a.evidence = "e".repeat(10_001),
                Some("early_warning.evidence"),
            ),
            (
                |a| a.recommended_actions = vec!["a".into(); 51],
                Some("early_warning.recommended_actions"),
            ),
            (
                |a| a.recommended_actions = vec!["ok".into(), "a".repeat(1001)],
                Some("early_warning.recommended_actions[1]"),
            ),
            (|a| a.evaluation = None, None),
            (
                |a| {
                    a.evaluation = Some(Evaluation {
                        source_reliability: SourceReliability::X as i32,
                        information_accuracy: 0,
                    })
                },
                Some("early_warning.evaluation.information_accuracy"),
            ),
        ];
        run_table(early_warning, as_alert, cases);
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

    #[test]
    fn serial_numbers_normalise_case_spaces_and_separators() {
        let cases = [
            ("ABC123", "ABC123"),
            ("abc 123", "ABC123"),
            ("AB-12/34.5", "AB12345"),
            (" x\u{a0}y ", "XY"),
            ("", ""),
            ("ä-1", "Ä1"),
        ];
        for (serial, want) in cases {
            assert_eq!(normalize_serial(serial), want, "{serial:?}");
        }
    }

    #[test]
    fn ibans_are_checked_by_iso_13616() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "GB82 WEST 1234 5698 7654 32",
                Some("GB82WEST12345698765432"),
            ),
            ("GB82WEST12345698765432", Some("GB82WEST12345698765432")),
            ("DE89370400440532013000", Some("DE89370400440532013000")),
            (
                "de89 3704 0044 0532 0130 00",
                Some("DE89370400440532013000"),
            ),
            (
                "ES91 2100 0418 4502 0005 1332",
                Some("ES9121000418450200051332"),
            ),
            ("NL91ABNA0417164300", Some("NL91ABNA0417164300")),
            ("NO9386011117947", Some("NO9386011117947")),
            (
                "FR1420041010050500013M02606",
                Some("FR1420041010050500013M02606"),
            ),
            ("GB83 WEST 1234 5698 7654 32", None),
            ("DE88370400440532013000", None),
            ("DE8937040044053201300", None),
            ("DE893704004405320130000", None),
            ("XX89370400440532013000", None),
            ("GBAB WEST 1234 5698 7654 32", None),
            ("GB82-WEST-1234-5698-7654-32", None),
            ("GB82", None),
            ("G", None),
            ("", None),
        ];
        for (iban, want) in cases {
            assert_eq!(normalize_iban(iban).ok().as_deref(), *want, "{iban:?}");
        }
    }

    #[test]
    fn bics_have_the_iso_9362_shape() {
        let cases = [
            ("DEUTDEFF", true),
            ("DEUTDEFF500", true),
            ("BSCHESMMXXX", true),
            ("COLOCOBM", true),
            ("DEUTDEF", false),
            ("DEUTDEFF50", false),
            ("DEUTDEFF5000", false),
            ("deutdeff", false),
            ("DEU1DEFF", false),
            ("DEUTXXFF", false),
            ("DEUTEUFF", false),
            ("DEUTDEF-", false),
            ("", false),
        ];
        for (bic, want) in cases {
            assert_eq!(is_bic(bic), want, "{bic:?}");
        }
    }

    #[test]
    fn cas_numbers_carry_a_check_digit() {
        let cases = [
            ("50-00-0", true),      // formaldehyde
            ("7732-18-5", true),    // water
            ("64-17-5", true),      // ethanol
            ("14188-81-9", true),   // isotonitazene
            ("2785346-75-8", true), // etonitazepyne
            ("50-00-1", false),
            ("7732-18-4", false),
            ("64-17-6", false),
            ("5-00-0", false),
            ("12345678-00-0", false),
            ("50-0-0", false),
            ("50-00-00", false),
            ("5000-0", false),
            ("50-00-0-0", false),
            ("a0-00-0", false),
            ("", false),
        ];
        for (cas, want) in cases {
            assert_eq!(is_cas_number(cas), want, "{cas:?}");
        }
    }

    #[test]
    fn currencies_are_iso_4217_codes() {
        let cases = [
            ("EUR", true),
            ("COP", true),
            ("USD", true),
            ("XAU", true),
            ("HRK", true),
            ("EURO", false),
            ("XXY", false),
            ("XXX", false),
            ("XTS", false),
            ("eur", false),
            ("", false),
        ];
        for (code, want) in cases {
            assert_eq!(is_currency(code), want, "{code:?}");
        }
    }

    #[test]
    fn amounts_are_decimal_strings() {
        let cases = [
            ("0", true),
            ("15000.50", true),
            ("999999999999999", true),
            ("1.2345", true),
            ("1000000000000000", false),
            ("1.23456", false),
            ("1.", false),
            (".5", false),
            ("-5", false),
            ("1e3", false),
            ("1,5", false),
            ("", false),
        ];
        for (value, want) in cases {
            assert_eq!(is_decimal_amount(value), want, "{value:?}");
        }
    }

    #[test]
    fn dates_are_real_calendar_dates() {
        let cases = [
            ("2024-02-29", true),
            ("2026-02-28", true),
            ("1900-01-01", true),
            ("2026-02-29", false),
            ("2026-04-31", false),
            ("2026-13-01", false),
            ("2026-00-10", false),
            ("2026-1-10", false),
            ("2026/01/10", false),
            ("20260110", false),
            ("2026-01-10T00:00:00Z", false),
            ("+026-01-10", false),
            ("", false),
        ];
        for (value, want) in cases {
            assert_eq!(parse_date(value).is_some(), want, "{value:?}");
        }
    }

    #[test]
    fn code_lists_are_sorted_and_complete() {
        for list in [COUNTRIES, CURRENCIES] {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "sorted, no duplicates"
            );
        }
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(IBAN_LENGTHS
            .iter()
            .all(|(code, len)| (is_country(code) || *code == "XK") && (15..=34).contains(len)));
        assert_eq!(COUNTRIES.len(), 249);
        assert!(COUNTRIES
            .iter()
            .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())));
        assert!(CURRENCIES
            .iter()
            .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        for code in ["EU", "XX", "UK", "XK"] {
            assert!(!is_country(code), "{code}");
        }
    }
}
