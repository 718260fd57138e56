//! Identifiers as agencies match them: the canonical form of each [`IdentifierKind`], the shared
//! [`MatchingKey`], and [`blind`], which turns a canonical identifier into the HMAC the exchange
//! stores and compares. All of this runs at the agency: the exchange never sees a clear value
//! nor the key.
//!
//! Two agencies find each other only if they write an identifier the same way, so [`canonical`]
//! removes the differences that do not change what is identified (case, spacing, separators,
//! diacritics, the `00` international prefix) and refuses what it cannot make canonical rather
//! than guessing (a phone number without its country code).
//!
//! The kinds, as written (the CLI's name, then the input) and as made canonical:
//!
//! - **firearm** `MAKE|SERIAL`: the make keeps its letters and digits only, without diacritics;
//!   the serial loses spaces, `-`, `/`, `.` and `_`; both upper case.
//!   `Smith & Wesson|dkl-1234` → `SMITHWESSON|DKL1234`.
//! - **iban**: electronic format (upper case, no spaces), country length and mod-97 checked
//!   (ISO 13616). `de89 3704 0044 0532 0130 00` → `DE89370400440532013000`.
//! - **bank-account** `BIC|ACCOUNT`: the 8-character BIC (an 11-character one with branch `XXX`
//!   is the same institution); the account without spaces and `-`; upper case.
//!   `bcolcobmxxx|123-456789-01` → `BCOLCOBM|12345678901`.
//! - **passport** `CC|NUMBER`: ISO 3166-1 alpha-2 issuing country; number without spaces and
//!   `-`; upper case. `es|paa-123 456` → `ES|PAA123456`.
//! - **person** `FULL NAME|YYYY-MM-DD`: name upper case without diacritics (NFKD, combining
//!   marks dropped), apostrophes dropped, other punctuation and runs of spaces as one space;
//!   the date of birth must exist. `Jean-Pierre O'Brien|1975-01-02` →
//!   `JEAN PIERRE OBRIEN|1975-01-02`.
//! - **phone**: E.164, `+` then 8 to 15 digits; spaces, `-`, `(`, `)`, `.` dropped, a leading
//!   `00` read as `+`, no `+` refused. `0057 (300) 123-4567` → `+573001234567`.
//! - **crypto-wallet** `CHAIN|ADDRESS`: chain upper case; the address as given, except hex
//!   (`0x…`) and bech32 (`bc1…`, `tb1…`, `ltc1…`) addresses in lower case.
//!   `eth|0x5290…9EE7` → `ETH|0x5290…9ee7`.

use std::path::Path;

use base64::Engine as _;
use hmac::digest::Key;
use hmac::{Hmac, Mac};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use sha2::Sha256;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::exchange::content::{is_bic, is_country, normalize_iban, parse_date};
use crate::pb::v1::IdentifierKind;
use crate::pki::{write_private, PkiError};

/// Length of a matching key and of a blinded identifier, in bytes.
pub const KEY_LEN: usize = 32;

/// Longest value [`canonical`] accepts, in bytes: far above any real identifier, low enough that
/// a stray file column cannot become a huge HMAC input.
pub const MAX_VALUE_LEN: usize = 256;

/// Why an identifier could not be made canonical, or a matching key could not be made, read or
/// written.
#[derive(Debug, thiserror::Error)]
pub enum IdentifierError {
    /// The kind is `IDENTIFIER_KIND_UNSPECIFIED`, which identifies nothing.
    #[error("the identifier kind is not set")]
    UnspecifiedKind,
    /// The value does not have the shape its kind requires.
    #[error("invalid {kind} {value:?}: {reason} (expected {expected})")]
    Invalid {
        /// The kind, in the CLI's spelling (`firearm`, `bank-account`...).
        kind: &'static str,
        /// The value as given, trimmed.
        value: String,
        /// What is wrong with it.
        reason: String,
        /// The format the kind expects, with an example.
        expected: &'static str,
    },
    /// A key file does not hold a valid matching key.
    #[error("invalid matching key file {path}: {reason}")]
    BadKeyFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file already exists; keys are never overwritten, since identifiers published under
    /// a lost key can no longer be withdrawn or matched.
    #[error("{path} already exists; a matching key is never overwritten")]
    KeyExists {
        /// The file.
        path: String,
    },
    /// Epoch 0 is the wire's "not set".
    #[error("the key epoch must be at least 1")]
    ZeroEpoch,
    /// No randomness for a new key.
    #[error("the system random number generator failed")]
    Random,
    /// A key file could not be read.
    #[error("cannot read matching key file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key file could not be written.
    #[error("cannot write matching key file")]
    Write(#[from] PkiError),
}

// === Canonical forms ===

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

// === impl MatchingKey ===

/// The exchange-wide matching key of one epoch: 32 random bytes that every agency holds and the
/// exchange's operators never do. Agencies rotate it by agreeing on a new key under the next
/// epoch and publishing again.
///
/// On disk it is a TOML file, mode 0600:
///
/// ```toml
/// epoch = 3
/// key = "<32 bytes, base64>"
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct MatchingKey {
    /// The epoch the key belongs to; sent with every request so the exchange compares only
    /// identifiers blinded under the same key.
    epoch: u32,
    /// The HMAC key.
    key: [u8; KEY_LEN],
}

/// The file form of a [`MatchingKey`], as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    epoch: u32,
    key: String,
}

/// The first lines of a key file, so whoever finds one knows what it is and where it must not go.
const KEY_FILE_HEADER: &str = "\
# Puente matching key. Every agency of the exchange holds the same key, handed over out of band.
# Never give it to the exchange's operators: with it, blinded identifiers can be tested.
";

impl MatchingKey {
    /// A new random key for `epoch`.
    ///
    /// # Errors
    /// [`IdentifierError::ZeroEpoch`] for epoch 0 (the wire's "not set"), or
    /// [`IdentifierError::Random`] if the system has no randomness.
    pub fn generate(epoch: u32) -> Result<MatchingKey, IdentifierError> {
        if epoch == 0 {
            return Err(IdentifierError::ZeroEpoch);
        }
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| IdentifierError::Random)?;
        Ok(MatchingKey { epoch, key })
    }

    /// The epoch of the key.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Reads a key file written by [`MatchingKey::save`].
    ///
    /// # Errors
    /// [`IdentifierError::Read`] if the file cannot be read, [`IdentifierError::BadKeyFile`] if it
    /// is not a key file with a non-zero epoch and 32 base64 bytes.
    pub fn load(path: &Path) -> Result<MatchingKey, IdentifierError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentifierError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let bad = |reason: String| IdentifierError::BadKeyFile {
            path: path.display().to_string(),
            reason,
        };
        let file: KeyFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
        if file.epoch == 0 {
            return Err(bad("the epoch must be at least 1".into()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(file.key.trim())
            .map_err(|_| bad("the key is not base64".into()))?;
        let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
            bad(format!(
                "the key must be {KEY_LEN} bytes, not {}",
                bytes.len()
            ))
        })?;
        Ok(MatchingKey {
            epoch: file.epoch,
            key,
        })
    }

    /// Writes the key to a new file, readable only by its owner (0600).
    ///
    /// # Errors
    /// [`IdentifierError::KeyExists`] if `path` exists: a key is never overwritten.
    /// [`IdentifierError::Write`] if the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), IdentifierError> {
        if path.exists() {
            return Err(IdentifierError::KeyExists {
                path: path.display().to_string(),
            });
        }
        // Two plain fields (a number and base64, which needs no escaping), written by hand so
        // that the file can open with the comment saying what it is.
        let text = format!(
            "{KEY_FILE_HEADER}epoch = {}\nkey = \"{}\"\n",
            self.epoch,
            base64::engine::general_purpose::STANDARD.encode(self.key)
        );
        write_private(path, &text)?;
        Ok(())
    }
}

impl std::fmt::Debug for MatchingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchingKey")
            .field("epoch", &self.epoch)
            .field("key", &"<redacted>")
            .finish()
    }
}

// === Blinding ===

/// The blinded form of an identifier:
/// HMAC-SHA-256(key, kind name || 0x00 || canonical), where the kind name is the proto enum name
/// (`IDENTIFIER_KIND_FIREARM`), so that equal strings of different kinds never match. The
/// 0x00 cannot occur in a kind name, so the split between name and value is unambiguous.
///
/// `canonical` should come from [`canonical`]; anything else blinds to a value no other agency
/// produces.
pub fn blind(key: &MatchingKey, kind: IdentifierKind, canonical: &str) -> [u8; KEY_LEN] {
    // HMAC pads a key shorter than the hash's block to the block size with zeros (RFC 2104 §2);
    // doing so here gives the same MAC through the infallible constructor, instead of one that
    // checks a length that cannot be wrong.
    let mut block = Key::<Hmac<Sha256>>::default();
    block[..KEY_LEN].copy_from_slice(&key.key);
    let mut mac = <Hmac<Sha256> as Mac>::new(&block);
    mac.update(kind.as_str_name().as_bytes());
    mac.update(&[0]);
    mac.update(canonical.as_bytes());
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentifierKind::*;

    fn key(epoch: u32, byte: u8) -> MatchingKey {
        MatchingKey {
            epoch,
            key: [byte; KEY_LEN],
        }
    }

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

    #[test]
    fn blinding_is_stable_and_separates_kinds_keys_and_epochs() {
        let k = key(1, 7);
        let a = blind(&k, Firearm, "GLOCK|BXR4471");
        assert_eq!(a, blind(&k.clone(), Firearm, "GLOCK|BXR4471"));
        let differs: &[(&str, [u8; KEY_LEN])] = &[
            ("other value", blind(&k, Firearm, "GLOCK|BXR4472")),
            ("other kind", blind(&k, Passport, "GLOCK|BXR4471")),
            ("other key", blind(&key(1, 8), Firearm, "GLOCK|BXR4471")),
            (
                "other epoch's key",
                blind(&key(2, 9), Firearm, "GLOCK|BXR4471"),
            ),
        ];
        for (what, other) in differs {
            assert_ne!(&a, other, "{what}");
        }
    }

    #[test]
    fn blinding_is_the_documented_hmac() {
        // An independent HMAC-SHA-256 (ring's) over kind name || 0x00 || canonical.
        let k = MatchingKey {
            epoch: 3,
            key: std::array::from_fn(|i| i as u8),
        };
        let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k.key);
        let tag = ring::hmac::sign(&ring_key, b"IDENTIFIER_KIND_IBAN\0DE89370400440532013000");
        assert_eq!(
            blind(&k, Iban, "DE89370400440532013000").as_slice(),
            tag.as_ref()
        );
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("matching.key");
        let k = MatchingKey::generate(3).unwrap();
        k.save(&path).unwrap();
        assert_eq!(MatchingKey::load(&path).unwrap(), k);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            MatchingKey::generate(3).unwrap().save(&path),
            Err(IdentifierError::KeyExists { .. })
        ));
        assert_eq!(MatchingKey::load(&path).unwrap(), k, "not overwritten");
        assert_ne!(MatchingKey::generate(3).unwrap(), k, "keys are random");
        assert!(matches!(
            MatchingKey::generate(0),
            Err(IdentifierError::ZeroEpoch)
        ));
    }

    #[test]
    fn bad_key_files_are_refused() {
        let good = base64::engine::general_purpose::STANDARD.encode([1u8; KEY_LEN]);
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let cases = [
            format!("epoch = 0\nkey = \"{good}\"\n"),
            format!("key = \"{good}\"\n"),
            "epoch = 1\nkey = \"not base64!\"\n".to_string(),
            format!("epoch = 1\nkey = \"{short}\"\n"),
            format!("epoch = 1\nkey = \"{good}\"\nextra = 1\n"),
            "epoch = -1\n".to_string(),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, text) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}.key"));
            std::fs::write(&path, text).unwrap();
            assert!(
                matches!(
                    MatchingKey::load(&path),
                    Err(IdentifierError::BadKeyFile { .. })
                ),
                "{text}"
            );
        }
        assert!(matches!(
            MatchingKey::load(&dir.path().join("missing.key")),
            Err(IdentifierError::Read { .. })
        ));
    }

    #[test]
    fn debug_redacts_the_key() {
        let printed = format!("{:?}", key(4, 0xAB));
        assert!(
            printed.contains("<redacted>") && printed.contains('4'),
            "{printed}"
        );
        assert!(!printed.contains("171"), "{printed}");
    }
}
