//! The toolkit every report's rules are written with: the path of the field being checked (so a
//! refusal names it), text and list-length rules, enum and country fields, and the [`Rules`]
//! checks shared by several report kinds (dates against today, evaluations, persons).

use time::Date;

use super::codes::{is_country, not_a_date, parse_date};
use super::{MAX_LABEL_CHARS, MAX_NAME_CHARS, MAX_PARTIES};
use crate::exchange::ExchangeError;
use crate::pb::v1::{Evaluation, InformationAccuracy, Person, SourceReliability};
use crate::text::excerpt;
use crate::text::Shape;

// === Field paths and text rules ===

/// The path of the field being checked, e.g. `firearms.records[2].incident`.
pub(super) struct Path(String);

impl Path {
    pub(super) fn root(name: &str) -> Path {
        Path(name.to_string())
    }

    /// A field of this message: `self.name`.
    pub(super) fn field(&self, name: &str) -> Path {
        Path(format!("{}.{name}", self.0))
    }

    /// An element of a repeated field of this message: `self.name[index]`.
    pub(super) fn item(&self, name: &str, index: usize) -> Path {
        Path(format!("{}.{name}[{index}]", self.0))
    }

    pub(super) fn invalid(&self, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::invalid(self.0.clone(), reason)
    }
}

/// How a string field is checked: its length in characters, whether it may be empty (or only
/// blank), and whether it is one line (no control characters at all) or a narrative (line
/// breaks and tabs allowed).
#[derive(Debug, Clone, Copy)]
pub(super) struct Text {
    max_chars: usize,
    required: bool,
    narrative: bool,
}

impl Text {
    /// An optional one-line field of at most `max_chars` characters.
    pub(super) const fn line(max_chars: usize) -> Text {
        Text {
            max_chars,
            required: false,
            narrative: false,
        }
    }

    /// An optional narrative of at most `max_chars` characters.
    pub(super) const fn narrative(max_chars: usize) -> Text {
        Text {
            max_chars,
            required: false,
            narrative: true,
        }
    }

    /// The same rule, and the field must not be blank.
    pub(super) const fn required(self) -> Text {
        Text {
            required: true,
            ..self
        }
    }

    pub(super) fn check(self, path: &Path, value: &str) -> Result<(), ExchangeError> {
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
pub(super) fn check_count(
    path: &Path,
    len: usize,
    max: usize,
    required: bool,
) -> Result<(), ExchangeError> {
    if required && len == 0 {
        return Err(path.invalid("at least one entry is required"));
    }
    if len > max {
        return Err(path.invalid(format!("at most {max} entries are allowed")));
    }
    Ok(())
}

/// An enum field that must be set to a known value other than its `UNSPECIFIED` zero.
pub(super) fn required_enum<E>(path: &Path, value: i32, expected: &str) -> Result<E, ExchangeError>
where
    E: TryFrom<i32> + Default + PartialEq,
{
    match E::try_from(value) {
        Ok(known) if known != E::default() => Ok(known),
        _ => Err(path.invalid(format!("is required: one of the {expected}_* values"))),
    }
}

/// An enum field that may be unset, but not an unknown number.
pub(super) fn optional_enum<E: TryFrom<i32>>(
    path: &Path,
    value: i32,
    expected: &str,
) -> Result<(), ExchangeError> {
    match E::try_from(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(path.invalid(format!("must be one of the {expected}_* values"))),
    }
}

/// A country field: an ISO 3166-1 alpha-2 code; empty only if not `required`.
pub(super) fn check_country(path: &Path, code: &str, required: bool) -> Result<(), ExchangeError> {
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

// === Rules shared by several reports ===

/// The field rules, with the date they are checked on.
pub(super) struct Rules {
    pub(super) today: Date,
}

impl Rules {
    /// A required date: `YYYY-MM-DD`, a real calendar date, not in the future.
    pub(super) fn past_date(&self, path: &Path, value: &str) -> Result<(), ExchangeError> {
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
    pub(super) fn optional_date(&self, path: &Path, value: &str) -> Result<(), ExchangeError> {
        if !value.is_empty() && parse_date(value).is_none() {
            return Err(path.invalid(not_a_date(value)));
        }
        Ok(())
    }

    /// A record's own evaluation is optional; when present, both of its parts are set.
    pub(super) fn evaluation(
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
    pub(super) fn persons(
        &self,
        path: &Path,
        name: &str,
        persons: &[Person],
    ) -> Result<(), ExchangeError> {
        check_count(&path.field(name), persons.len(), MAX_PARTIES, false)?;
        for (i, person) in persons.iter().enumerate() {
            self.person(&path.item(name, i), person)?;
        }
        Ok(())
    }
}
