//! Test fixtures of the content rules: a valid report of each kind, the date the rules are
//! checked on, and the table runner the per-report tests use.

use time::{Date, Month};

use super::validate_on;
use crate::exchange::ExchangeError;
use crate::pb::v1::send_message_request::Content;
use crate::pb::v1::{
    Account, AlertType, Amount, EarlyWarningAlert, Entity, Evaluation, FinancialIntelligenceReport,
    FirearmMarkings, FirearmRecord, FirearmStatus, FirearmTraceRequest, FirearmType,
    FirearmsReport, Incident, InformationAccuracy, Person, ReportCode, Severity, SourceReliability,
    Substance, SubstanceForm, Transaction, TransactionMode,
};

/// The date the rules are checked on in these tests.
pub(super) fn today() -> Date {
    Date::from_calendar_date(2026, Month::March, 15).unwrap()
}

pub(super) fn evaluation() -> Evaluation {
    Evaluation {
        source_reliability: SourceReliability::B as i32,
        information_accuracy: InformationAccuracy::InformationAccuracy2 as i32,
    }
}

pub(super) fn firearm() -> FirearmRecord {
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

pub(super) fn firearms() -> Content {
    Content::Firearms(FirearmsReport {
        records: vec![firearm(), firearm(), firearm()],
    })
}

pub(super) fn trace() -> Content {
    Content::FirearmTrace(FirearmTraceRequest {
        firearm: Some(firearm()),
        requested_country: "AT".into(),
        question: "Last lawful owner and date of transfer.".into(),
        respond_by_date: "2026-04-30".into(),
    })
}

pub(super) fn transaction(value: &str, currency: &str) -> Transaction {
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

pub(super) fn financial() -> Content {
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

pub(super) fn early_warning() -> Content {
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

pub(super) fn field_of(content: Content) -> Option<String> {
    match validate_on(&mut Some(content), today()) {
        Ok(()) => None,
        Err(ExchangeError::InvalidField(crate::rpc::InvalidField { field, .. })) => Some(field),
        Err(other) => panic!("unexpected error {other}"),
    }
}

pub(super) type Edit<T> = fn(&mut T);

/// Applies each edit to `base()` and checks which field, if any, is refused.
pub(super) fn run_table<T>(
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
