//! The canonical form of each identifier kind (the rules listed in the module above), and the
//! CLI's names and input formats of the kinds.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::{IdentifierError, MAX_VALUE_LEN};
use crate::exchange::content::{is_bic, is_country, normalize_iban, parse_date};
use crate::pb::v1::IdentifierKind;

/// The name of `kind` as the CLI and CSV files spell it: `firearm`, `bank-account`...
pub fn kind_label(kind: IdentifierKind) -> &'static str {
    match kind {
        IdentifierKind::Unspecified => "unspecified",
        IdentifierKind::Firearm => "firearm",
        IdentifierKind::Iban => "iban",
        IdentifierKind::BankAccount => "bank-account",
        IdentifierKind::Passport => "passport",
        IdentifierKind::Person => "person",
        IdentifierKind::Phone => "phone",
        IdentifierKind::CryptoWallet => "crypto-wallet",
    }
}

/// The input format of `kind`, with an example, for error messages and help.
pub fn expected_format(kind: IdentifierKind) -> &'static str {
    match kind {
        IdentifierKind::Unspecified => "a kind",
        IdentifierKind::Firearm => "MAKE|SERIAL, e.g. Glock|BXR-4471",
        IdentifierKind::Iban => "an IBAN, e.g. DE89 3704 0044 0532 0130 00",
        IdentifierKind::BankAccount => "BIC|ACCOUNT, e.g. BCOLCOBM|123-456789-01",
        IdentifierKind::Passport => "COUNTRY|NUMBER with an ISO 3166-1 alpha-2 country, e.g. ES|PAA123456",
        IdentifierKind::Person => "FULL NAME|YYYY-MM-DD (date of birth), e.g. José Pérez|1980-04-30",
        IdentifierKind::Phone => "an international number with its country code, e.g. +57 300 123 4567 or 0034 612 345 678",
        IdentifierKind::CryptoWallet => "CHAIN|ADDRESS, e.g. ETH|0x52908400098527886E0F7030069857D2E4169EE7",
    }
}

/// The canonical form of an identifier of `kind` written as `value`: the string that is blinded,
/// so that two agencies that write the same identifier differently still match. Surrounding
/// whitespace is ignored; the rules of each kind are in the module documentation.
///
/// # Errors
/// [`IdentifierError::UnspecifiedKind`] for the unspecified kind, and
/// [`IdentifierError::Invalid`], saying what is wrong and what is expected, for a value that does
/// not have the shape of its kind.
pub fn canonical(kind: IdentifierKind, value: &str) -> Result<String, IdentifierError> {
    let rule: fn(&str) -> Result<String, String> = match kind {
        IdentifierKind::Unspecified => return Err(IdentifierError::UnspecifiedKind),
        IdentifierKind::Firearm => firearm,
        IdentifierKind::Iban => iban,
        IdentifierKind::BankAccount => bank_account,
        IdentifierKind::Passport => passport,
        IdentifierKind::Person => person,
        IdentifierKind::Phone => phone,
        IdentifierKind::CryptoWallet => crypto_wallet,
    };
    let value = value.trim();
    let invalid = |reason: String| IdentifierError::Invalid {
        kind: kind_label(kind),
        value: value.to_string(),
        reason,
        expected: expected_format(kind),
    };
    if value.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(invalid(format!("it is longer than {MAX_VALUE_LEN} bytes")));
    }
    rule(value).map_err(invalid)
}

/// Splits `value` at its one `|` into two non-empty, trimmed parts named `first` and `second`.
fn pair<'a>(value: &'a str, first: &str, second: &str) -> Result<(&'a str, &'a str), String> {
    let mut parts = value.split('|');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "it must be {first} and {second} separated by one '|'"
        ));
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Err(format!("the {first} is missing"));
    }
    if b.is_empty() {
        return Err(format!("the {second} is missing"));
    }
    Ok((a, b))
}

/// `s` upper-cased without the characters `drop` accepts; an error naming `what` if anything
/// but ASCII letters and digits remains, or nothing does.
fn compact(s: &str, drop: impl Fn(char) -> bool, what: &str) -> Result<String, String> {
    let out: String = s
        .chars()
        .filter(|c| !drop(*c))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if out.is_empty() {
        return Err(format!("the {what} has no letters or digits"));
    }
    match out.chars().find(|c| !c.is_ascii_alphanumeric()) {
        Some(c) => Err(format!(
            "the {what} contains {c:?}; use the letters A to Z and digits"
        )),
        None => Ok(out),
    }
}

/// Drops diacritics: compatibility decomposition (NFKD), then combining marks removed, so `É`
/// becomes `E` and the ligature `ﬁ` becomes `fi`. A few Latin letters are distinct letters
/// rather than a letter with a mark, and do not decompose; they are spelled as their usual
/// transliteration (the one ICAO Doc 9303 uses in passports).
fn fold(s: &str) -> String {
    s.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_uppercase)
        .flat_map(|c| {
            let spelled: &[char] = match c {
                'Ø' => &['O'],
                'Ł' => &['L'],
                'Đ' => &['D'],
                'Ħ' => &['H'],
                'Æ' => &['A', 'E'],
                'Œ' => &['O', 'E'],
                'Þ' => &['T', 'H'],
                _ => return vec![c],
            };
            spelled.to_vec()
        })
        .collect()
}

/// `MAKE|SERIAL`: the make keeps only its letters and digits ("Smith & Wesson" is
/// `SMITHWESSON`), the serial loses the spaces and separators that markings and records add.
fn firearm(value: &str) -> Result<String, String> {
    let (make, serial) = pair(value, "make", "serial number")?;
    let make = compact(&fold(make), |c| !c.is_alphanumeric(), "make")?;
    let serial = compact(
        serial,
        |c| c.is_whitespace() || matches!(c, '-' | '/' | '.' | '_'),
        "serial number",
    )?;
    Ok(format!("{make}|{serial}"))
}

/// An IBAN in electronic format, checked as the exchange checks IBANs in reports.
fn iban(value: &str) -> Result<String, String> {
    normalize_iban(value).map_err(|reason| format!("it {reason}"))
}

/// `BIC|ACCOUNT`. A BIC without branch and the same BIC with branch `XXX` (the primary office)
/// are one institution, so both become the 8-character form.
fn bank_account(value: &str) -> Result<String, String> {
    let (bic, account) = pair(value, "BIC", "account number")?;
    let mut bic = bic.to_ascii_uppercase();
    if !is_bic(&bic) {
        return Err("the BIC must be 8 or 11 letters and digits (ISO 9362), e.g. BCOLCOBM".into());
    }
    if bic.ends_with("XXX") {
        bic.truncate(8);
    }
    let account = compact(account, |c| c.is_whitespace() || c == '-', "account number")?;
    if account.len() > 34 {
        return Err("the account number is longer than 34 characters".into());
    }
    Ok(format!("{bic}|{account}"))
}

/// `CC|NUMBER`: issuing country (ISO 3166-1 alpha-2, or `XK`) and document number.
fn passport(value: &str) -> Result<String, String> {
    let (country, number) = pair(value, "country", "passport number")?;
    let country = country.to_ascii_uppercase();
    if !(is_country(&country) || country == "XK") {
        return Err(format!(
            "{country:?} is not an ISO 3166-1 alpha-2 country code"
        ));
    }
    let number = compact(number, |c| c.is_whitespace() || c == '-', "passport number")?;
    if number.len() > 20 {
        return Err("the passport number is longer than 20 characters".into());
    }
    Ok(format!("{country}|{number}"))
}

/// `FULL NAME|YYYY-MM-DD`. As in a passport's machine-readable zone (ICAO Doc 9303),
/// apostrophes are dropped (O'Brien is `OBRIEN`) while hyphens and other punctuation separate
/// name parts (Jean-Pierre is `JEAN PIERRE`). Names in other scripts are kept in their script,
/// upper-cased; transliterating them is not attempted, as it has no single answer.
fn person(value: &str) -> Result<String, String> {
    let (name, date) = pair(value, "full name", "date of birth")?;
    let folded: String = fold(name)
        .chars()
        .filter(|c| !matches!(c, '\'' | '’' | 'ʼ' | '`' | '´'))
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let name = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    if !name.chars().any(char::is_alphabetic) {
        return Err("the name has no letters".into());
    }
    if parse_date(date).is_none() {
        return Err(format!(
            "the date of birth {date:?} is not a calendar date YYYY-MM-DD"
        ));
    }
    Ok(format!("{name}|{date}"))
}

/// E.164: `+`, country code and number, 8 to 15 digits. The usual grouping characters are
/// dropped and the international prefix `00` is read as `+`; a national number is refused, since
/// its country would be a guess.
fn phone(value: &str) -> Result<String, String> {
    let compacted: String = value
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '(' | ')' | '.')))
        .collect();
    let digits = if let Some(rest) = compacted.strip_prefix('+') {
        rest
    } else if let Some(rest) = compacted.strip_prefix("00") {
        rest
    } else {
        return Err("it has no country code: start it with + or 00".into());
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("after the + it must be digits only".into());
    }
    if digits.starts_with('0') {
        return Err("no country code starts with 0".into());
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(format!(
            "it has {} digits; E.164 numbers have 8 to 15",
            digits.len()
        ));
    }
    Ok(format!("+{digits}"))
}

/// `CHAIN|ADDRESS`. Most addresses are case-sensitive (base58) and kept as given. Two families
/// are not: hex addresses (`0x…`, Ethereum and other EVM chains), whose mixed case is only an
/// EIP-55 checksum, and bech32 (`bc1…`, `tb1…`, `ltc1…`), which is all lower or all upper
/// case; both become lower case.
fn crypto_wallet(value: &str) -> Result<String, String> {
    let (chain, address) = pair(value, "chain", "address")?;
    let chain = chain.to_ascii_uppercase();
    if !(2..=10).contains(&chain.len()) || !chain.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "the chain {chain:?} must be a ticker of 2 to 10 letters or digits, e.g. BTC or ETH"
        ));
    }
    if let Some(c) = address
        .chars()
        .find(|c| !(c.is_ascii_graphic() && *c != '|'))
    {
        return Err(format!("the address contains {c:?}"));
    }
    let lower = address.to_ascii_lowercase();
    let hex = lower
        .strip_prefix("0x")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    let bech32 = ["bc1", "tb1", "ltc1"].iter().any(|p| lower.starts_with(p));
    let address = if hex || bech32 {
        lower
    } else {
        address.to_string()
    };
    Ok(format!("{chain}|{address}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentifierKind::*;

    #[test]
    fn canonical_forms() {
        let cases: &[(IdentifierKind, &str, &str)] = &[
            (Firearm, "Glock|BXR4471", "GLOCK|BXR4471"),
            (Firearm, "  glock | bxr-4471 ", "GLOCK|BXR4471"),
            (Firearm, "GLOCK|B.X.R/44_71", "GLOCK|BXR4471"),
            (Firearm, "Smith & Wesson|dkl 1234", "SMITHWESSON|DKL1234"),
            (Firearm, "Česká zbrojovka|A-123", "CESKAZBROJOVKA|A123"),
            (Iban, "DE89370400440532013000", "DE89370400440532013000"),
            (
                Iban,
                "de89 3704 0044 0532 0130 00",
                "DE89370400440532013000",
            ),
            (
                BankAccount,
                "BCOLCOBM|123-456789-01",
                "BCOLCOBM|12345678901",
            ),
            (
                BankAccount,
                "bcolcobmxxx|123 456789 01",
                "BCOLCOBM|12345678901",
            ),
            (BankAccount, "BCOLCOBM001|ab-12", "BCOLCOBM001|AB12"),
            (Passport, "es|paa-123 456", "ES|PAA123456"),
            (Passport, "XK|P0123", "XK|P0123"),
            (Person, "José  Pérez|1980-04-30", "JOSE PEREZ|1980-04-30"),
            (Person, " jose PEREZ |1980-04-30", "JOSE PEREZ|1980-04-30"),
            (
                Person,
                "Jean-Pierre O'Brien|1975-01-02",
                "JEAN PIERRE OBRIEN|1975-01-02",
            ),
            (
                Person,
                "Jean Pierre O’Brien|1975-01-02",
                "JEAN PIERRE OBRIEN|1975-01-02",
            ),
            (
                Person,
                "Søren Łukasz Müller|1990-12-31",
                "SOREN LUKASZ MULLER|1990-12-31",
            ),
            (
                Person,
                "Straße, Ægir|2000-02-29",
                "STRASSE AEGIR|2000-02-29",
            ),
            (Person, "Иван Петров|1970-01-01", "ИВАН ПЕТРОВ|1970-01-01"),
            (Phone, "+57 300 123 4567", "+573001234567"),
            (Phone, "0057 (300) 123-4567", "+573001234567"),
            (Phone, "+34.612.345.678", "+34612345678"),
            (
                CryptoWallet,
                "eth|0x52908400098527886E0F7030069857D2E4169EE7",
                "ETH|0x52908400098527886e0f7030069857d2e4169ee7",
            ),
            (
                CryptoWallet,
                "BTC|BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ",
                "BTC|bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
            ),
            (
                CryptoWallet,
                "btc| 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2 ",
                "BTC|1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
            ),
        ];
        for (kind, input, want) in cases {
            match canonical(*kind, input) {
                Ok(got) => assert_eq!(&got, want, "{kind:?} {input:?}"),
                Err(e) => panic!("{kind:?} {input:?}: {e}"),
            }
        }
    }

    #[test]
    fn invalid_values_are_refused_with_a_reason() {
        // (kind, input, part of the reason)
        let cases: &[(IdentifierKind, &str, &str)] = &[
            (Firearm, "", "empty"),
            (Firearm, "BXR4471", "separated by one '|'"),
            (Firearm, "Glock|BXR|4471", "separated by one '|'"),
            (Firearm, "|BXR4471", "make is missing"),
            (Firearm, "Glock| ", "serial number is missing"),
            (Firearm, "Glock|--", "no letters or digits"),
            (Firearm, "Glock|BXR#4471", "contains '#'"),
            (Firearm, "&|BXR4471", "make has no letters"),
            (Iban, "DE88370400440532013000", "mod 97"),
            (Iban, "DE8937040044053201300", "wrong length"),
            (Iban, "ZZ89370400440532013000", "country code"),
            (BankAccount, "BCOLCOB|123", "BIC"),
            (BankAccount, "BCOL12BM|123", "BIC"),
            (BankAccount, "BCOLCOBM|12.3", "contains '.'"),
            (
                BankAccount,
                "BCOLCOBM|1234567890123456789012345678901234567",
                "longer than 34",
            ),
            (Passport, "ESP|PAA123456", "alpha-2"),
            (Passport, "QQ|PAA123456", "alpha-2"),
            (Passport, "ES|PAA/123", "contains '/'"),
            (Person, "José Pérez", "separated by one '|'"),
            (Person, "José Pérez|30/04/1980", "YYYY-MM-DD"),
            (Person, "José Pérez|2023-02-29", "YYYY-MM-DD"),
            (Person, "-- ' --|1980-04-30", "no letters"),
            (Phone, "300 123 4567", "no country code"),
            (Phone, "+57 300 123 456x", "digits only"),
            (Phone, "+0 300 123 4567", "starts with 0"),
            (Phone, "+57 1234", "8 to 15"),
            (Phone, "+57 3001234567890123", "8 to 15"),
            (
                CryptoWallet,
                "0x52908400098527886E0F7030069857D2E4169EE7",
                "separated by one '|'",
            ),
            (CryptoWallet, "E|0x5290", "ticker"),
            (CryptoWallet, "ETH|0x5290 8400", "contains ' '"),
        ];
        for (kind, input, reason) in cases {
            match canonical(*kind, input) {
                Ok(got) => panic!("{kind:?} {input:?} was accepted as {got:?}"),
                Err(IdentifierError::Invalid {
                    reason: got,
                    expected,
                    ..
                }) => {
                    assert!(got.contains(reason), "{kind:?} {input:?}: {got:?}");
                    assert_eq!(expected, expected_format(*kind));
                }
                Err(e) => panic!("{kind:?} {input:?}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn unspecified_kind_and_overlong_values_are_refused() {
        for value in ["x", ""] {
            assert!(matches!(
                canonical(Unspecified, value),
                Err(IdentifierError::UnspecifiedKind)
            ));
        }
        let long = format!("Glock|{}", "1".repeat(MAX_VALUE_LEN));
        assert!(matches!(
            canonical(Firearm, &long),
            Err(IdentifierError::Invalid { .. })
        ));
    }
}
