//! The rules of a financial intelligence report: parties (persons, entities, accounts),
//! transactions with their amounts, indicators and the reason; IBANs are rewritten in their
//! electronic format.

use super::codes::{is_bic, is_currency, is_decimal_amount, normalize_iban};
use super::rules::{check_count, check_country, optional_enum, required_enum, Path, Rules, Text};
use super::{
    MAX_LABEL_CHARS, MAX_LIST_ENTRIES, MAX_NAME_CHARS, MAX_NUMBER_CHARS, MAX_PARTIES,
    MAX_REASON_CHARS,
};
use crate::exchange::ExchangeError;
use crate::pb::v1::{
    Account, Entity, FinancialIntelligenceReport, ReportCode, Transaction, TransactionMode,
};
use crate::text::excerpt;

impl Rules {
    /// A financial report: `report_code` set; at least one transaction for STR, SAR, CTR and
    /// EFT; at most 1000 each of valid `persons`, `entities`, `accounts` and `transactions`; at
    /// most 50 `indicators` of 1 to 100 characters; `reason` a narrative of at most 4000
    /// characters, required for STR and SAR (why it is suspicious).
    pub(super) fn financial(
        &self,
        path: &Path,
        report: &mut FinancialIntelligenceReport,
    ) -> Result<(), ExchangeError> {
        let code = required_enum::<ReportCode>(
            &path.field("report_code"),
            report.report_code,
            "REPORT_CODE",
        )?;
        let needs_transactions = matches!(
            code,
            ReportCode::Str | ReportCode::Sar | ReportCode::Ctr | ReportCode::Eft
        );
        self.persons(path, "persons", &report.persons)?;
        check_count(
            &path.field("entities"),
            report.entities.len(),
            MAX_PARTIES,
            false,
        )?;
        for (i, entity) in report.entities.iter().enumerate() {
            self.entity(&path.item("entities", i), entity)?;
        }
        check_count(
            &path.field("accounts"),
            report.accounts.len(),
            MAX_PARTIES,
            false,
        )?;
        for (i, account) in report.accounts.iter_mut().enumerate() {
            self.account(&path.item("accounts", i), account)?;
        }
        let transactions = path.field("transactions");
        if needs_transactions && report.transactions.is_empty() {
            return Err(transactions.invalid(format!(
                "{} requires at least one transaction",
                code.as_str_name()
            )));
        }
        check_count(&transactions, report.transactions.len(), MAX_PARTIES, false)?;
        for (i, transaction) in report.transactions.iter().enumerate() {
            self.transaction(&path.item("transactions", i), transaction)?;
        }
        check_count(
            &path.field("indicators"),
            report.indicators.len(),
            MAX_LIST_ENTRIES,
            false,
        )?;
        for (i, indicator) in report.indicators.iter().enumerate() {
            Text::line(MAX_LABEL_CHARS)
                .required()
                .check(&path.item("indicators", i), indicator)?;
        }
        let reason = Text::narrative(MAX_REASON_CHARS);
        let reason = if matches!(code, ReportCode::Str | ReportCode::Sar) {
            reason.required()
        } else {
            reason
        };
        reason.check(&path.field("reason"), &report.reason)
    }

    /// An entity: `name` required (at most 200 characters); `incorporation_number` at most 64;
    /// `incorporation_country_code` an alpha-2 code if set.
    fn entity(&self, path: &Path, entity: &Entity) -> Result<(), ExchangeError> {
        Text::line(MAX_NAME_CHARS)
            .required()
            .check(&path.field("name"), &entity.name)?;
        Text::line(MAX_NUMBER_CHARS).check(
            &path.field("incorporation_number"),
            &entity.incorporation_number,
        )?;
        check_country(
            &path.field("incorporation_country_code"),
            &entity.incorporation_country_code,
            false,
        )
    }

    /// An account: an `iban` (ISO 13616, rewritten in electronic format) or, for accounts
    /// without one, an `account` number (at most 64 characters); `swift` a BIC (ISO 9362) if
    /// set; `institution_name` and `holder_name` at most 200.
    fn account(&self, path: &Path, account: &mut Account) -> Result<(), ExchangeError> {
        if account.iban.is_empty() && account.account.trim().is_empty() {
            return Err(path
                .field("iban")
                .invalid("an IBAN or, for an account without one, an account number is required"));
        }
        if !account.iban.is_empty() {
            account.iban = normalize_iban(&account.iban)
                .map_err(|reason| path.field("iban").invalid(reason))?;
        }
        if !account.swift.is_empty() && !is_bic(&account.swift) {
            return Err(path.field("swift").invalid(
                "must be a BIC (ISO 9362): 4 letters, a country code, 2 letters or digits, and optionally a 3-character branch, e.g. DEUTDEFF or DEUTDEFF500",
            ));
        }
        Text::line(MAX_NUMBER_CHARS).check(&path.field("account"), &account.account)?;
        Text::line(MAX_NAME_CHARS)
            .check(&path.field("institution_name"), &account.institution_name)?;
        Text::line(MAX_NAME_CHARS).check(&path.field("holder_name"), &account.holder_name)
    }

    /// A transaction: `transaction_number` at most 64 characters; `date_transaction` a required
    /// past calendar date; `amount_local` required, its `value` a positive decimal
    /// (`^[0-9]{1,15}(\.[0-9]{1,4})?$`) and its `currency_code` ISO 4217; `from_party` and
    /// `to_party` at most 200; `transmode` a known value if set; valid `evaluation` if present.
    fn transaction(&self, path: &Path, transaction: &Transaction) -> Result<(), ExchangeError> {
        Text::line(MAX_NUMBER_CHARS).check(
            &path.field("transaction_number"),
            &transaction.transaction_number,
        )?;
        self.past_date(
            &path.field("date_transaction"),
            &transaction.date_transaction,
        )?;
        let amount_path = path.field("amount_local");
        let amount = transaction
            .amount_local
            .as_ref()
            .ok_or_else(|| amount_path.invalid("is required: value and currency_code"))?;
        if !is_decimal_amount(&amount.value) {
            return Err(amount_path.field("value").invalid(
                "must be a decimal such as 15000.50: 1 to 15 digits, optionally '.' and 1 to 4 decimals",
            ));
        }
        if amount.value.bytes().all(|b| b == b'0' || b == b'.') {
            return Err(amount_path
                .field("value")
                .invalid("must be greater than zero"));
        }
        if !is_currency(&amount.currency_code) {
            return Err(amount_path.field("currency_code").invalid(format!(
                "{:?} is not an ISO 4217 currency code (upper case, such as EUR, COP or USD)",
                excerpt(&amount.currency_code)
            )));
        }
        Text::line(MAX_NAME_CHARS).check(&path.field("from_party"), &transaction.from_party)?;
        Text::line(MAX_NAME_CHARS).check(&path.field("to_party"), &transaction.to_party)?;
        optional_enum::<TransactionMode>(
            &path.field("transmode"),
            transaction.transmode,
            "TRANSACTION_MODE",
        )?;
        self.evaluation(&path.field("evaluation"), transaction.evaluation.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{financial, run_table, transaction, Edit};
    use super::*;
    use crate::pb::v1::send_message_request::Content;
    use crate::pb::v1::Evaluation;

    fn as_financial(content: &mut Content) -> &mut FinancialIntelligenceReport {
        match content {
            Content::Financial(report) => report,
            _ => unreachable!(),
        }
    }

    #[test]
    fn each_financial_rule_names_its_field() {
        let cases: &[(Edit<FinancialIntelligenceReport>, Option<&str>)] = &[
            (|_| {}, None),
            (|f| f.report_code = 0, Some("financial.report_code")),
            (|f| f.transactions.clear(), Some("financial.transactions")),
            (
                |f| {
                    f.report_code = ReportCode::Ctr as i32;
                    f.transactions.clear();
                },
                Some("financial.transactions"),
            ),
            (
                |f| {
                    f.report_code = ReportCode::Iri as i32;
                    f.transactions.clear();
                    f.reason.clear();
                },
                None,
            ),
            (|f| f.reason = String::new(), Some("financial.reason")),
            (|f| f.reason = "r".repeat(4001), Some("financial.reason")),
            (|f| f.reason = "r".repeat(4000), None),
            (
                |f| f.persons[0].nationality = "eu".into(),
                Some("financial.persons[0].nationality"),
            ),
            (
                |f| f.entities[0].name = String::new(),
                Some("financial.entities[0].name"),
            ),
            (
                |f| f.entities[0].incorporation_country_code = String::new(),
                None,
            ),
            (
                |f| f.entities[0].incorporation_country_code = "XX".into(),
                Some("financial.entities[0].incorporation_country_code"),
            ),
            (
                |f| f.accounts[0].iban = "DE89370400440532013000".into(),
                None,
            ),
            (
                |f| f.accounts[0].iban = "de89 3704 0044 0532 0130 00".into(),
                None,
            ),
            (
                |f| f.accounts[0].iban = "DE88370400440532013000".into(),
                Some("financial.accounts[0].iban"),
            ),
            (
                |f| f.accounts[0].iban = String::new(),
                Some("financial.accounts[0].iban"),
            ),
            (
                |f| {
                    f.accounts[0].iban = String::new();
                    f.accounts[0].account = "12345".into();
                },
                None,
            ),
            (|f| f.accounts[1].swift = String::new(), None),
            (
                |f| f.accounts[1].swift = "DEUTDEF".into(),
                Some("financial.accounts[1].swift"),
            ),
            (
                |f| f.accounts[1].account = "a".repeat(65),
                Some("financial.accounts[1].account"),
            ),
            (
                |f| f.accounts[1].holder_name = "h".repeat(201),
                Some("financial.accounts[1].holder_name"),
            ),
            (
                |f| f.transactions[1].date_transaction = "2026-02-29".into(),
                Some("financial.transactions[1].date_transaction"),
            ),
            (
                |f| f.transactions[1].date_transaction = String::new(),
                Some("financial.transactions[1].date_transaction"),
            ),
            (
                |f| f.transactions[1].amount_local = None,
                Some("financial.transactions[1].amount_local"),
            ),
            (
                |f| f.transactions[1] = transaction("1,000.00", "COP"),
                Some("financial.transactions[1].amount_local.value"),
            ),
            (
                |f| f.transactions[1] = transaction("0.00", "COP"),
                Some("financial.transactions[1].amount_local.value"),
            ),
            (
                |f| f.transactions[1] = transaction("999999999999999.9999", "COP"),
                None,
            ),
            (
                |f| f.transactions[1] = transaction("10", "EURO"),
                Some("financial.transactions[1].amount_local.currency_code"),
            ),
            (
                |f| f.transactions[1] = transaction("10", "XXY"),
                Some("financial.transactions[1].amount_local.currency_code"),
            ),
            (
                |f| f.transactions[1] = transaction("10", "usd"),
                Some("financial.transactions[1].amount_local.currency_code"),
            ),
            (|f| f.transactions[1] = transaction("10", "USD"), None),
            (
                |f| f.transactions[1].from_party = "p".repeat(201),
                Some("financial.transactions[1].from_party"),
            ),
            (
                |f| f.transactions[1].to_party = "p".repeat(201),
                Some("financial.transactions[1].to_party"),
            ),
            (|f| f.transactions[1].transmode = 0, None),
            (
                |f| f.transactions[1].transmode = 42,
                Some("financial.transactions[1].transmode"),
            ),
            (
                |f| f.transactions[1].evaluation = Some(Evaluation::default()),
                Some("financial.transactions[1].evaluation.source_reliability"),
            ),
            (
                |f| f.indicators = vec!["i".into(); 51],
                Some("financial.indicators"),
            ),
            (
                |f| f.indicators = vec!["i".repeat(101)],
                Some("financial.indicators[0]"),
            ),
            (
                |f| f.indicators = vec![String::new()],
                Some("financial.indicators[0]"),
            ),
        ];
        run_table(financial, as_financial, cases);
    }
}
