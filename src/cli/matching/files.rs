//! Identifier files of `puente match publish` and `query`: CSV lines of kind and value (and
//! reference), made canonical and blinded as they are read.

use std::path::Path;

use anyhow::bail;
use clap::ValueEnum;

use super::{KeyArg, KindArg, MAX_LISTED_ERRORS, MAX_REFERENCE_CHARS};
use crate::matching::identifiers::{blind, canonical, MatchingKey, KEY_LEN};
use crate::pb::v1::{BlindedIdentifier, IdentifierKind};

/// One identifier: as typed, and as the exchange will see it.
pub(super) struct Entry {
    /// Line in the file, or 0 for --kind/--value.
    pub(super) line: u64,
    /// Its kind.
    pub(super) kind: IdentifierKind,
    /// The value as typed; never sent.
    pub(super) value: String,
    /// Its canonical form; never sent.
    pub(super) canonical: String,
    /// The publisher's reference, from the file's third column.
    pub(super) reference: String,
    /// HMAC of the canonical form: all the exchange gets.
    pub(super) blinded: [u8; KEY_LEN],
}

impl Entry {
    pub(super) fn blinded(&self) -> BlindedIdentifier {
        BlindedIdentifier {
            kind: self.kind as i32,
            blinded: self.blinded.to_vec(),
        }
    }
}

pub(super) fn load_key(arg: &KeyArg) -> anyhow::Result<MatchingKey> {
    Ok(MatchingKey::load(&arg.matching_key)?)
}

/// Makes one identifier canonical and blinds it.
pub(super) fn entry(
    key: &MatchingKey,
    line: u64,
    kind: KindArg,
    value: &str,
) -> anyhow::Result<Entry> {
    let kind = IdentifierKind::from(kind);
    let canonical = canonical(kind, value)?;
    Ok(Entry {
        line,
        kind,
        value: value.to_string(),
        blinded: blind(key, kind, &canonical),
        canonical,
        reference: String::new(),
    })
}

/// Reads an identifier file (`-`: standard input), blinding every line. Every line is checked
/// before anything is returned, so that nothing is sent from a file with a mistake in it; the
/// error lists the bad lines.
pub(super) fn read_file(path: &Path, key: &MatchingKey) -> anyhow::Result<Vec<Entry>> {
    let text = crate::cli::read_file_arg(path)?;
    let (entries, errors) = parse_identifiers(&text, key);
    if !errors.is_empty() {
        let mut listed: Vec<String> = errors.iter().take(MAX_LISTED_ERRORS).cloned().collect();
        if errors.len() > MAX_LISTED_ERRORS {
            listed.push(format!("... and {} more", errors.len() - MAX_LISTED_ERRORS));
        }
        bail!(
            "{}: {} invalid line(s); nothing was sent:\n  {}",
            path.display(),
            errors.len(),
            listed.join("\n  ")
        );
    }
    if entries.is_empty() {
        bail!("{}: no identifiers in the file", path.display());
    }
    Ok(entries)
}

/// Parses CSV `kind,value[,reference]` lines into blinded entries, and the errors of the lines
/// that are not, as `line N: reason`. Blank lines and `#` comments are skipped, and so is a first
/// line that starts with `kind` (a header).
pub(super) fn parse_identifiers(text: &str, key: &MatchingKey) -> (Vec<Entry>, Vec<String>) {
    // Spreadsheets often save UTF-8 with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (mut entries, mut errors) = (Vec::new(), Vec::new());
    let mut first = true;
    for (line, content) in (1u64..).zip(text.lines()) {
        let content = content.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let parsed = split_csv(content).and_then(|fields| {
            let is_header = first
                && fields
                    .first()
                    .is_some_and(|k| k.eq_ignore_ascii_case("kind"));
            if is_header {
                Ok(None)
            } else {
                parse_fields(key, line, &fields).map(Some)
            }
        });
        first = false;
        match parsed {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(e) => errors.push(format!("line {line}: {e:#}")),
        }
    }
    (entries, errors)
}

/// Splits one CSV line into fields (RFC 4180 quoting: a field in double quotes may hold commas,
/// and `""` inside it is one quote). Unquoted fields are trimmed, and spaces around a quoted
/// field are ignored, so `firearm, "Glock|X"` reads as written. Fields span no lines: no
/// identifier has a line break.
pub(super) fn split_csv(line: &str) -> anyhow::Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let field = rest.trim_start();
        let Some(quoted) = field.strip_prefix('"') else {
            match field.split_once(',') {
                Some((value, after)) => {
                    fields.push(value.trim().to_string());
                    rest = after;
                    continue;
                }
                None => {
                    fields.push(field.trim().to_string());
                    return Ok(fields);
                }
            }
        };
        let mut value = String::new();
        let mut chars = quoted.char_indices().peekable();
        let end = loop {
            match chars.next() {
                None => bail!("a quoted field has no closing quote"),
                Some((_, '"')) if chars.peek().is_some_and(|(_, c)| *c == '"') => {
                    chars.next();
                    value.push('"');
                }
                Some((i, '"')) => break i + 1,
                Some((_, c)) => value.push(c),
            }
        };
        fields.push(value);
        let after = quoted.get(end..).unwrap_or_default().trim_start();
        match after.strip_prefix(',') {
            Some(after) => rest = after,
            None if after.is_empty() => return Ok(fields),
            None => bail!("text after the closing quote of a field"),
        }
    }
}

pub(super) fn parse_fields(
    key: &MatchingKey,
    line: u64,
    fields: &[String],
) -> anyhow::Result<Entry> {
    let (Some(kind), Some(value)) = (fields.first(), fields.get(1)) else {
        bail!("expected kind,value[,reference]");
    };
    if fields.len() > 3 {
        bail!(
            "{} columns; expected kind,value[,reference] (quote a value that contains a comma)",
            fields.len()
        );
    }
    let kind = KindArg::from_str(kind, true).map_err(|_| {
        let kinds: Vec<String> = KindArg::value_variants()
            .iter()
            .filter_map(|k| k.to_possible_value().map(|v| v.get_name().to_string()))
            .collect();
        anyhow::anyhow!("unknown kind {kind:?}; one of {}", kinds.join(", "))
    })?;
    let reference = fields.get(2).map_or("", String::as_str);
    if reference.chars().count() > MAX_REFERENCE_CHARS {
        bail!("the reference is longer than {MAX_REFERENCE_CHARS} characters");
    }
    let mut entry = entry(key, line, kind, value)?;
    entry.reference = reference.to_string();
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MatchingKey {
        MatchingKey::generate(1).unwrap()
    }

    /// An entry as the tests compare it: line, kind, canonical form and reference.
    type Parsed<'a> = (u64, IdentifierKind, &'a str, &'a str);

    #[test]
    fn identifier_files_parse_with_or_without_header_comments_and_quotes() {
        let key = key();
        // (file, [(line, kind, canonical, reference)])
        let cases: &[(&str, &[Parsed])] = &[
            (
                "kind,value,reference\nfirearm,Glock|BXR-4471,R-1\niban,DE89 3704 0044 0532 0130 00\n",
                &[
                    (2, IdentifierKind::Firearm, "GLOCK|BXR4471", "R-1"),
                    (3, IdentifierKind::Iban, "DE89370400440532013000", ""),
                ],
            ),
            (
                "\u{feff}# seized 2026-03\n\nFirearm, glock|bxr 4471 , R-1\nperson, \"Pérez, José|1980-04-30\" ,\"a, b\"\r\n",
                &[
                    (3, IdentifierKind::Firearm, "GLOCK|BXR4471", "R-1"),
                    (4, IdentifierKind::Person, "PEREZ JOSE|1980-04-30", "a, b"),
                ],
            ),
            (
                "crypto-wallet,ETH|0xAB\nbank-account,BCOLCOBMXXX|1-2\nphone,0057 300 123 4567\npassport,es|x1\n",
                &[
                    (1, IdentifierKind::CryptoWallet, "ETH|0xab", ""),
                    (2, IdentifierKind::BankAccount, "BCOLCOBM|12", ""),
                    (3, IdentifierKind::Phone, "+573001234567", ""),
                    (4, IdentifierKind::Passport, "ES|X1", ""),
                ],
            ),
        ];
        for (text, want) in cases {
            let (entries, errors) = parse_identifiers(text, &key);
            assert!(errors.is_empty(), "{text:?}: {errors:?}");
            let got: Vec<_> = entries
                .iter()
                .map(|e| (e.line, e.kind, e.canonical.as_str(), e.reference.as_str()))
                .collect();
            assert_eq!(&got, want, "{text:?}");
            for e in &entries {
                assert_eq!(e.blinded, blind(&key, e.kind, &e.canonical));
            }
        }
    }

    #[test]
    fn csv_lines_split_with_quotes() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("a,b,c", Some(&["a", "b", "c"])),
            (" a , b ,", Some(&["a", "b", ""])),
            ("a,\"b, c\",d", Some(&["a", "b, c", "d"])),
            ("a, \"b \"\"x\"\"\" , d", Some(&["a", "b \"x\"", "d"])),
            ("a,\"\"", Some(&["a", ""])),
            ("a,b\"c", Some(&["a", "b\"c"])),
            ("a,\"b", None),
            ("a,\"b\"c", None),
        ];
        for (line, want) in cases {
            match (split_csv(line), want) {
                (Ok(got), Some(want)) => assert_eq!(&got, want, "{line:?}"),
                (Err(_), None) => {}
                (got, want) => panic!("{line:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        let key = key();
        let long = "r".repeat(MAX_REFERENCE_CHARS + 1);
        let cases: &[(String, &[&str])] = &[
            (
                "firearm,Glock|BXR4471\nknife,K-1\niban,DE88370400440532013000\n".into(),
                &["line 2: unknown kind \"knife\"", "line 3: invalid iban"],
            ),
            ("firearm\n".into(), &["line 1: expected kind,value"]),
            ("phone,+57 1,ref,extra\n".into(), &["line 1: 4 columns"]),
            ("\n# c\nphone,\"+57 1\n".into(), &["line 3: a quoted field"]),
            (
                format!("phone,+57 300 123 4567,{long}\n"),
                &["line 1: the reference is longer"],
            ),
            ("kind,value\nkind,value\n".into(), &["line 2: unknown kind"]),
        ];
        for (text, want) in cases {
            let (_, errors) = parse_identifiers(text, &key);
            assert_eq!(errors.len(), want.len(), "{text:?}: {errors:?}");
            for (error, want) in errors.iter().zip(want.iter()) {
                assert!(error.starts_with(want), "{text:?}: {error:?}");
            }
        }
    }
}
