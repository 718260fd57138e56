//! The rules of the firearms reports: a firearms report (records with markings and incident) and
//! a firearm trace request, and the normalised serial number the server sets on each record.

use super::rules::{check_count, check_country, required_enum, Path, Rules, Text};
use super::{
    EARLIEST_YEAR_OF_MANUFACTURE, MAX_CALIBRE_CHARS, MAX_FIREARM_RECORDS, MAX_LABEL_CHARS,
    MAX_LIST_ENTRIES, MAX_MARKING_CHARS, MAX_NAME_CHARS, MAX_NARRATIVE_CHARS, MAX_NUMBER_CHARS,
    MAX_QUESTION_CHARS,
};
use crate::exchange::ExchangeError;
use crate::pb::v1::{
    FirearmMarkings, FirearmRecord, FirearmStatus, FirearmTraceRequest, FirearmType,
    FirearmsReport, Incident,
};

impl Rules {
    /// A firearms report: 1 to 1000 records, each valid.
    pub(super) fn firearms(
        &self,
        path: &Path,
        report: &mut FirearmsReport,
    ) -> Result<(), ExchangeError> {
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
    pub(super) fn trace(
        &self,
        path: &Path,
        request: &mut FirearmTraceRequest,
    ) -> Result<(), ExchangeError> {
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
    use super::super::fixtures::{firearm, firearms, run_table, trace, Edit};
    use super::super::MAX_FIREARM_RECORDS;
    use super::*;
    use crate::pb::v1::send_message_request::Content;
    use crate::pb::v1::{Evaluation, SourceReliability};

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
}
