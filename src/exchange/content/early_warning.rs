//! The rules of an early-warning alert: the substance (with its CAS number), the countries
//! concerned, severity, evidence and recommended actions.

use super::codes::{is_cas_number, COUNTRIES};
use super::rules::{check_count, check_country, optional_enum, required_enum, Path, Rules, Text};
use super::{MAX_LIST_ENTRIES, MAX_NAME_CHARS, MAX_NARRATIVE_CHARS, MAX_QUESTION_CHARS};
use crate::exchange::ExchangeError;
use crate::pb::v1::{AlertType, EarlyWarningAlert, Severity, Substance, SubstanceForm};

impl Rules {
    /// An early-warning alert: `alert_type` and `severity` set; a valid `substance` (required);
    /// each of at most 249 `countries` an alpha-2 code; `evidence` a narrative of at most 10000
    /// characters; at most 50 `recommended_actions` of 1 to 1000; valid `evaluation` if present.
    pub(super) fn early_warning(
        &self,
        path: &Path,
        alert: &EarlyWarningAlert,
    ) -> Result<(), ExchangeError> {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{early_warning, run_table, Edit};
    use super::*;
    use crate::pb::v1::send_message_request::Content;
    use crate::pb::v1::{Evaluation, SourceReliability};

    fn as_alert(content: &mut Content) -> &mut EarlyWarningAlert {
        match content {
            Content::EarlyWarning(alert) => alert,
            _ => unreachable!(),
        }
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
}
