//! Identifiers as agencies match them: the canonical form of each
//! [`IdentifierKind`](crate::pb::v1::IdentifierKind), the shared [`MatchingKey`], and [`blind`],
//! which turns a canonical identifier into the HMAC the exchange stores and compares. All of this
//! runs at the agency: the exchange never sees a clear value nor the key.
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
//!
//! Layout: `canonical` holds the canonical form of each kind; `key` the matching key, its file,
//! and the blinding HMAC.

mod canonical;
mod key;

use crate::pki::PkiError;

pub use canonical::{canonical, expected_format, kind_label};
pub use key::{blind, MatchingKey};

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
