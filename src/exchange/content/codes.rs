//! The code tables and format checks the report rules share: ISO 3166-1 countries, ISO 4217
//! currencies, IBANs (ISO 13616) and BICs (ISO 9362), CAS Registry Numbers, decimal amounts and
//! calendar dates. Pure functions over strings; the field paths of refusals are the caller's.

use time::{Date, Month};

use crate::text::excerpt;

// === Code lists ===

/// ISO 3166-1 alpha-2 country codes: the 249 officially assigned codes, sorted. Exceptionally
/// reserved codes (`EU`, `UK`...) and user-assigned ones (`XX`, `XK`) are not countries and are
/// refused wherever a country is asked for.
pub(super) const COUNTRIES: &[&str] = &[
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

// === Checks ===

/// Whether `code` is an ISO 3166-1 alpha-2 country code (upper case).
pub(crate) fn is_country(code: &str) -> bool {
    COUNTRIES.binary_search(&code).is_ok()
}

/// Whether `code` is an accepted ISO 4217 currency code (upper case).
pub(super) fn is_currency(code: &str) -> bool {
    CURRENCIES.binary_search(&code).is_ok()
}

/// The refusal of a date field that does not parse.
pub(super) fn not_a_date(value: &str) -> String {
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
pub(super) fn is_decimal_amount(value: &str) -> bool {
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
pub(super) fn is_cas_number(cas: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
