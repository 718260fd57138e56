//! Strings a person reads: which characters the server refuses in them ([`check`]), and how the
//! command line shows ([`line`], [`lines`], [`json`]) or stores ([`file_name`]) whatever a server
//! sends anyway; how much of a caller's input an error message repeats ([`excerpt`]).
//!
//! One classification, [`class_of`], serves both sides. A sender must not be able to act on the
//! reader's terminal (ESC, C1 controls: clear the screen, set the window title, move the cursor
//! back over the "from:" line the CLI just printed), reorder what the reader sees (bidirectional
//! overrides and isolates), break a line where the reader's tools do not expect it (U+2028,
//! U+2029), or make two strings that look the same differ (zero-width and other invisible
//! format characters). The server refuses these in every string a person reads; the CLI escapes
//! them because another server version, or a compromised one, might not.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Why a character is not allowed in a string a person reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A C0 or C1 control character or DEL (Unicode category Cc): ESC starts terminal escape
    /// sequences, U+009B is a one-character CSI, CR moves back over the line.
    Control,
    /// A bidirectional-text control: the embeddings and overrides U+202A–U+202E, the isolates
    /// U+2066–U+2069, and the marks U+200E, U+200F, U+061C. They reorder what is displayed.
    Bidi,
    /// The line and paragraph separators U+2028 and U+2029.
    Separator,
    /// Another invisible format character (Unicode category Cf): zero-width space, joiner and
    /// non-joiner, word joiner, byte-order mark, soft hyphen, tag characters...
    Invisible,
}

impl Class {
    fn describe(self) -> &'static str {
        match self {
            Class::Control => "a control character",
            Class::Bidi => "a bidirectional-text control",
            Class::Separator => "a line or paragraph separator",
            Class::Invisible => "an invisible format character",
        }
    }
}

/// The class of `c` if it is not allowed as such in a string a person reads, else `None`.
/// Tab and line feed are controls too: [`check`] lets them through in [`Shape::Lines`].
pub(crate) fn class_of(c: char) -> Option<Class> {
    // Most text is printable ASCII: answered before the tables (this runs on every character
    // of every message; it showed at ~3 % of the send path's CPU).
    if matches!(c, ' '..='~') {
        return None;
    }
    if c.is_control() {
        return Some(Class::Control);
    }
    match c {
        '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => Some(Class::Bidi),
        '\u{2028}' | '\u{2029}' => Some(Class::Separator),
        // The rest of Unicode 15.1 general category Cf (std has no table of it).
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{206A}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}' => Some(Class::Invisible),
        _ => None,
    }
}

// === Server side: refusing ===

/// The shape of a string a person reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One line: a subject, a name, a reference, a file name. No control character at all.
    Line,
    /// Free text that may run over several lines: a message text, a reason, conditions of use,
    /// a report's narrative. Line feed and tab are allowed, and carriage return only just
    /// before a line feed (CRLF line ends, as Windows editors write them): a lone CR returns
    /// the cursor to the start of the line, so the rest would overwrite what was printed.
    Lines,
}

/// A string that breaks the rule of its [`Shape`]. Its message names the character by code
/// point and position, never by the string itself, so refusals do not echo what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} U+{code:04X} ({}) at character {position}", rule(*.shape), .class.describe())]
pub(crate) struct Unreadable {
    /// Why the character is refused.
    pub class: Class,
    /// Its code point.
    pub code: u32,
    /// Its position in the string, counted in characters from 1.
    pub position: usize,
    /// The rule it breaks.
    pub shape: Shape,
}

fn rule(shape: Shape) -> &'static str {
    match shape {
        Shape::Line => "must be printable text on one line, without",
        Shape::Lines => "must be printable text (line breaks and tabs allowed), without",
    }
}

/// Checks that `value` holds nothing a reader would not see as written, for its `shape`.
///
/// # Errors
/// [`Unreadable`] naming the first refused character.
pub(crate) fn check(value: &str, shape: Shape) -> Result<(), Unreadable> {
    let mut chars = value.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        let Some(class) = class_of(c) else { continue };
        let allowed = shape == Shape::Lines
            && match c {
                '\n' | '\t' => true,
                '\r' => matches!(chars.peek(), Some((_, '\n'))),
                _ => false,
            };
        if !allowed {
            return Err(Unreadable {
                class,
                code: u32::from(c),
                position: i + 1,
                shape,
            });
        }
    }
    Ok(())
}

// === Client side: showing ===

/// `value` for printing on one line of a terminal: every character of a [`Class`] (line breaks
/// and tabs included) is written as a visible escape — `\n`, `\r`, `\t`, `\x1b` for the other
/// ASCII controls, `\u{202e}` for the rest — so that it can neither act on the terminal nor
/// start a line that looks like the CLI's own. Backslashes are left alone: a literal `\x1b` in
/// the text reads the same as an escaped ESC, which is harmless.
pub(crate) fn line(value: &str) -> Cow<'_, str> {
    if !value.chars().any(|c| class_of(c).is_some()) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match (c, class_of(c)) {
            (_, None) => out.push(c),
            ('\n', _) => out.push_str("\\n"),
            ('\r', _) => out.push_str("\\r"),
            ('\t', _) => out.push_str("\\t"),
            (c, Some(_)) if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            (c, Some(_)) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// The lines of a multi-line `value`, each made safe as by [`line`] (a CRLF line end counts as
/// one line end, a lone CR is escaped). The caller prints each behind its own prefix (the
/// CLI's `  | `), so that no line of a text can pass for a header line.
pub(crate) fn lines(value: &str) -> impl Iterator<Item = Cow<'_, str>> {
    value.lines().map(line)
}

/// JSON text made safe for a terminal: characters of a [`Class`] still raw in it (a JSON
/// encoder escapes only the ASCII controls inside strings) are written as `\uXXXX` escapes,
/// UTF-16 surrogate pairs above U+FFFF. Outside strings, JSON holds only ASCII punctuation,
/// digits, letters and whitespace, so the document means exactly what it meant. Line feeds
/// and tabs (indentation) are kept.
pub(crate) fn json(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| class_of(c).is_some() && !matches!(c, '\n' | '\t');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut units = [0u16; 2];
    for c in text.chars() {
        if unsafe_char(c) {
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

// === Client side: storing ===

/// Longest file name [`file_name`] returns, in bytes: below the 255 of common file systems,
/// with room for a ` (NNN)` suffix.
pub(crate) const MAX_FILE_NAME_BYTES: usize = 200;

/// Names Windows reserves for devices, with or without an extension.
const RESERVED_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// A file name to save an attachment under, made from the name its sender gave: one path
/// component, never hidden, never a device. Path separators, characters of a [`Class`] and the
/// characters Windows refuses (`<>:"|?*`) become `_`; leading dots become `_` (no `..`, no
/// `.bashrc`); trailing dots and spaces are dropped; a device name (`CON`, `nul.txt`) gets a
/// leading `_`; the name is cut to [`MAX_FILE_NAME_BYTES`], keeping a short extension; an
/// empty result is `attachment`. A name that needs none of this comes back unchanged.
pub(crate) fn file_name(sent: &str) -> String {
    let mut name: String = sent
        .chars()
        .map(|c| {
            if class_of(c).is_some()
                || matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*')
            {
                '_'
            } else {
                c
            }
        })
        .collect();
    let dots = name.len() - name.trim_start_matches('.').len();
    if dots > 0 {
        name.replace_range(..dots, &"_".repeat(dots));
    }
    name.truncate(name.trim_end_matches(['.', ' ']).len());
    if name.trim().is_empty() {
        return "attachment".into();
    }
    let stem = name.split('.').next().unwrap_or_default().trim_end();
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        name.insert(0, '_');
    }
    if name.len() > MAX_FILE_NAME_BYTES {
        let (stem, extension) = split_extension(&name);
        let extension = if extension.len() <= 16 { extension } else { "" };
        let mut cut = MAX_FILE_NAME_BYTES - extension.len();
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}{extension}", &stem[..cut]);
    }
    name
}

/// `name` with ` (n)` before its extension: `report.txt` → `report (2).txt`.
pub(crate) fn numbered(name: &str, n: usize) -> String {
    let (stem, extension) = split_extension(name);
    format!("{stem} ({n}){extension}")
}

/// (stem, extension with its dot); a name whose only dot leads has no extension.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    }
}

/// Most characters of a caller's input that an error message repeats: enough to recognise the
/// value, never enough to turn a refusal into an amplifier of what was sent.
pub(crate) const MAX_ECHO_CHARS: usize = 40;

/// The start of a caller's input, as much of it as an error message (or an audit entry) may
/// repeat: at most [`MAX_ECHO_CHARS`] characters, followed by `…` when cut. Quote it with
/// `{:?}` so that control and bidi characters show escaped.
pub(crate) fn excerpt(input: &str) -> String {
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", &input[..end]),
        None => input.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each class is refused in both shapes, with its code point and position; tab, line feed
    /// and CRLF pass only in free text; ordinary accented, Arabic and CJK text passes.
    #[test]
    fn check_refuses_each_class_and_allows_line_breaks_only_in_free_text() {
        /// The refused character: its class, code point and position.
        type Refused = Option<(Class, u32, usize)>;
        let cases: &[(&str, Shape, Refused)] = &[
            ("Pistola incautada en Cúcuta", Shape::Line, None),
            ("تقرير 東京", Shape::Line, None),
            ("a\u{1b}[2J", Shape::Line, Some((Class::Control, 0x1b, 2))),
            ("a\u{1b}[2J", Shape::Lines, Some((Class::Control, 0x1b, 2))),
            ("\u{9b}31m", Shape::Lines, Some((Class::Control, 0x9b, 1))),
            ("\u{7f}", Shape::Line, Some((Class::Control, 0x7f, 1))),
            ("a\tb", Shape::Line, Some((Class::Control, 9, 2))),
            ("a\nb", Shape::Line, Some((Class::Control, 10, 2))),
            ("a\tb\nc\r\nd", Shape::Lines, None),
            ("a\rfrom: X", Shape::Lines, Some((Class::Control, 13, 2))),
            ("a\r", Shape::Lines, Some((Class::Control, 13, 2))),
            (
                "txt.exe\u{202e}",
                Shape::Line,
                Some((Class::Bidi, 0x202e, 8)),
            ),
            (
                "\u{2066}x\u{2069}",
                Shape::Lines,
                Some((Class::Bidi, 0x2066, 1)),
            ),
            ("\u{200f}", Shape::Line, Some((Class::Bidi, 0x200f, 1))),
            (
                "a\u{2028}b",
                Shape::Lines,
                Some((Class::Separator, 0x2028, 2)),
            ),
            (
                "a\u{2029}b",
                Shape::Line,
                Some((Class::Separator, 0x2029, 2)),
            ),
            (
                "ES\u{200b}-CNP",
                Shape::Line,
                Some((Class::Invisible, 0x200b, 3)),
            ),
            (
                "\u{feff}x",
                Shape::Lines,
                Some((Class::Invisible, 0xfeff, 1)),
            ),
            (
                "x\u{e0041}",
                Shape::Line,
                Some((Class::Invisible, 0xe0041, 2)),
            ),
        ];
        for (value, shape, want) in cases {
            let got = check(value, *shape)
                .err()
                .map(|e| (e.class, e.code, e.position));
            assert_eq!(got, *want, "{value:?} as {shape:?}");
        }
    }

    /// The refusal names the character, not the string.
    #[test]
    fn a_refusal_does_not_echo_the_value() {
        let err = check("secret\u{1b}]0;title\u{7}", Shape::Line).expect_err("refused");
        let message = err.to_string();
        assert!(
            !message.contains("secret") && !message.contains('\u{1b}'),
            "{message}"
        );
        assert!(message.contains("U+001B"), "{message}");
    }

    /// Nothing of a class survives [`line`]; ordinary text is returned as it is.
    #[test]
    fn line_escapes_every_class_visibly() {
        let cases = [
            ("plain: ñ 東", "plain: ñ 東"),
            ("\u{1b}]0;pwned\u{7}", "\\x1b]0;pwned\\x07"),
            ("a\nsubject: forged", "a\\nsubject: forged"),
            ("a\rb\tc", "a\\rb\\tc"),
            ("\u{9b}2J", "\\u{9b}2J"),
            ("fdp.\u{202e}txt.exe", "fdp.\\u{202e}txt.exe"),
            ("a\u{2028}b\u{200b}", "a\\u{2028}b\\u{200b}"),
        ];
        for (raw, shown) in cases {
            assert_eq!(line(raw), shown);
        }
    }

    /// CRLF and LF end lines; a lone CR and other controls are escaped within a line.
    #[test]
    fn lines_split_on_line_feeds_and_escape_the_rest() {
        let got: Vec<_> = lines("one\r\ntwo\rthree\n\u{1b}[Hfour\n").collect();
        assert_eq!(got, ["one", "two\\rthree", "\\x1b[Hfour"]);
        let got: Vec<_> = lines("a\n\nb").collect();
        assert_eq!(got, ["a", "", "b"]);
    }

    /// The escaped JSON parses to the same value and holds no raw character of a class.
    #[test]
    fn json_escapes_keep_the_document_equal() {
        let value = serde_json::json!({"subject": "a\u{9b}b\u{202e}c\u{e0041}\u{1b}", "n": [1]});
        let text = serde_json::to_string_pretty(&value).expect("encode");
        assert!(
            text.contains('\u{202e}'),
            "precondition: serde_json leaves it raw"
        );
        let safe = json(&text);
        assert!(!safe.chars().any(|c| class_of(c).is_some() && c != '\n'));
        let back: serde_json::Value = serde_json::from_str(&safe).expect("decode");
        assert_eq!(back, value);
    }

    /// Every trick of a hostile name ends as one plain, visible, non-device component.
    #[test]
    fn file_names_are_one_visible_component() {
        let cases = [
            ("report.txt", "report.txt"),
            ("../escaped.txt", "___escaped.txt"),
            ("/etc/passwd", "_etc_passwd"),
            ("..\\..\\boot.ini", "___.._boot.ini"),
            (".bashrc", "_bashrc"),
            ("..", "__"),
            ("", "attachment"),
            ("   ", "attachment"),
            ("notes. ", "notes"),
            ("CON", "_CON"),
            ("nul.txt", "_nul.txt"),
            ("com1.tar.gz", "_com1.tar.gz"),
            ("console.txt", "console.txt"),
            ("a\u{1b}[2Jb.txt", "a_[2Jb.txt"),
            ("invoice\u{202e}fdp.exe", "invoice_fdp.exe"),
            ("a:b*c?.txt", "a_b_c_.txt"),
        ];
        for (sent, saved) in cases {
            assert_eq!(file_name(sent), saved, "{sent:?}");
        }
        let long = file_name(&format!("{}.pdf", "é".repeat(300)));
        assert!(
            long.len() <= MAX_FILE_NAME_BYTES && long.ends_with("é.pdf"),
            "{long}"
        );
        assert_eq!(numbered("report.txt", 2), "report (2).txt");
        assert_eq!(numbered("README", 3), "README (3)");
        assert_eq!(numbered("_bashrc", 2), "_bashrc (2)");
    }

    #[test]
    fn excerpt_keeps_short_input_and_cuts_long_input_on_a_character_boundary() {
        assert_eq!(excerpt(""), "");
        assert_eq!(excerpt("ES-CNP"), "ES-CNP");
        let exact = "x".repeat(MAX_ECHO_CHARS);
        assert_eq!(excerpt(&exact), exact);
        let long = "é".repeat(100_000);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(cut.ends_with('…'));
        // Quoted, control and bidi characters show escaped.
        assert_eq!(
            format!("{:?}", excerpt("a\u{1b}[2J\u{202e}")),
            r#""a\u{1b}[2J\u{202e}""#
        );
    }
}
