//! `puente audit log`: lists entries, as a table or JSON lines.

use std::io::Write;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::format::{entry_json, header, row};
use super::{decode, rpc_error, ConnectArgs};
use crate::pb::v1::audit_service_client::AuditServiceClient;
use crate::pb::v1::{AuditAction, ListAuditEntriesRequest};

/// An audit action, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum ActionArg {
    /// A message was accepted.
    MessageAccepted,
    /// A message was sent on a recipient's inbox stream.
    MessageDelivered,
    /// A recipient acknowledged a message.
    MessageAcknowledged,
    /// A party read a message.
    MessageRead,
    /// A call was refused.
    RequestRefused,
    /// A TLS handshake was refused.
    HandshakeRefused,
    /// An agency was registered.
    AgencyRegistered,
    /// An agency was changed.
    AgencyUpdated,
    /// An agency was suspended.
    AgencySuspended,
    /// A suspended agency was resumed.
    AgencyResumed,
    /// A certificate revocation list was applied.
    CrlApplied,
    /// Someone queried the audit log.
    AuditQueried,
    /// A recipient forwarded a message.
    MessageForwarded,
    /// A holder asked the originator for consent to forward.
    ConsentRequested,
    /// The originator granted consent.
    ConsentGranted,
    /// The originator denied consent.
    ConsentDenied,
    /// The originator retracted a message.
    MessageRetracted,
    /// The originator corrected a message.
    MessageCorrected,
    /// An agency published blinded identifiers.
    IdentifiersPublished,
    /// An agency withdrew blinded identifiers.
    IdentifiersWithdrawn,
    /// An agency queried identifiers.
    MatchQueried,
    /// A query matched another agency's identifier.
    MatchHit,
    /// The exchange erased a message whose retention period ran out.
    MessageErased,
}

impl From<ActionArg> for AuditAction {
    fn from(action: ActionArg) -> AuditAction {
        match action {
            ActionArg::MessageAccepted => AuditAction::MessageAccepted,
            ActionArg::MessageDelivered => AuditAction::MessageDelivered,
            ActionArg::MessageAcknowledged => AuditAction::MessageAcknowledged,
            ActionArg::MessageRead => AuditAction::MessageRead,
            ActionArg::RequestRefused => AuditAction::RequestRefused,
            ActionArg::HandshakeRefused => AuditAction::HandshakeRefused,
            ActionArg::AgencyRegistered => AuditAction::AgencyRegistered,
            ActionArg::AgencyUpdated => AuditAction::AgencyUpdated,
            ActionArg::AgencySuspended => AuditAction::AgencySuspended,
            ActionArg::AgencyResumed => AuditAction::AgencyResumed,
            ActionArg::CrlApplied => AuditAction::CrlApplied,
            ActionArg::MessageForwarded => AuditAction::MessageForwarded,
            ActionArg::ConsentRequested => AuditAction::ConsentRequested,
            ActionArg::ConsentGranted => AuditAction::ConsentGranted,
            ActionArg::ConsentDenied => AuditAction::ConsentDenied,
            ActionArg::MessageRetracted => AuditAction::MessageRetracted,
            ActionArg::MessageCorrected => AuditAction::MessageCorrected,
            ActionArg::IdentifiersPublished => AuditAction::IdentifiersPublished,
            ActionArg::IdentifiersWithdrawn => AuditAction::IdentifiersWithdrawn,
            ActionArg::MatchQueried => AuditAction::MatchQueried,
            ActionArg::MatchHit => AuditAction::MatchHit,
            ActionArg::MessageErased => AuditAction::MessageErased,
            ActionArg::AuditQueried => AuditAction::AuditQueried,
        }
    }
}

/// Flags of `puente audit log`.
#[derive(Debug, Args)]
pub(super) struct LogArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// First index to list.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Only entries this agency is party to (as actor, sender, recipient or subject). Agencies
    /// may give only their own id.
    #[arg(long, value_name = "ID")]
    agency: Option<String>,
    /// Only entries of this action.
    #[arg(long, value_enum)]
    action: Option<ActionArg>,
    /// Only entries at or after this time: RFC 3339 (2025-03-01T12:00:00Z) or a date (UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<prost_types::Timestamp>,
    /// Only entries before this time: RFC 3339 (2025-03-01T12:00:00Z) or a date (UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<prost_types::Timestamp>,
    /// Only entries about this message.
    #[arg(long, value_name = "ID")]
    message_id: Option<String>,
    /// At most this many entries.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// One JSON object per line: index, leaf (base64, the exact bytes hashed into the log) and
    /// the decoded event.
    #[arg(long)]
    json: bool,
}

fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not a time: give RFC 3339 such as 2025-03-01T12:00:00Z, or a date such as 2025-03-01")
    })
}

pub(super) async fn log(args: LogArgs) -> anyhow::Result<()> {
    let mut client = AuditServiceClient::new(args.connect.connect().await?);
    let request = ListAuditEntriesRequest {
        start_index: args.start,
        agency_id: args.agency.clone().unwrap_or_default(),
        action: args.action.map_or(0, |a| AuditAction::from(a) as i32),
        since: args.since,
        until: args.until,
        message_id: args.message_id.clone().unwrap_or_default(),
        limit: args.limit.unwrap_or(0),
    };
    let mut stream = client
        .list_audit_entries(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    if !args.json && !emit(&header())? {
        return Ok(());
    }
    let mut count = 0u64;
    while let Some(entry) = stream.message().await.map_err(rpc_error)? {
        // Show what was hashed into the log, not the server's decoding of it.
        let event = decode(entry.index, &entry.leaf)?;
        let line = if args.json {
            entry_json(entry.index, &entry.leaf, &event)?
        } else {
            row(entry.index, &event)
        };
        if !emit(&line)? {
            return Ok(());
        }
        count += 1;
    }
    if !args.json {
        eprintln!("{count} entries");
    }
    Ok(())
}

/// Writes a line to stdout; false once the reader has gone (`| head`), which ends a listing
/// quietly instead of with a panic.
fn emit(line: &str) -> anyhow::Result<bool> {
    match writeln!(std::io::stdout(), "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{action_name, rfc3339, short_time};
    use super::*;

    #[test]
    fn every_action_has_a_flag_value_spelled_as_it_is_printed() {
        let values = ActionArg::value_variants();
        // Every action but UNSPECIFIED.
        assert_eq!(
            values.len(),
            (1..)
                .take_while(|&n| AuditAction::try_from(n).is_ok())
                .count()
        );
        for value in values {
            let name = value.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(action_name(AuditAction::from(*value) as i32), name);
        }
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(
            parse_time("2025-03-01T12:00:00Z").unwrap().seconds,
            1_740_830_400
        );
        assert_eq!(
            parse_time("2025-03-01T13:00:00+01:00").unwrap().seconds,
            1_740_830_400
        );
        assert_eq!(parse_time("2025-03-01").unwrap().seconds, 1_740_787_200);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(rfc3339(1_740_830_400_000_000), "2025-03-01T12:00:00Z");
        assert_eq!(short_time(1_740_830_400_123_456), "2025-03-01T12:00:00Z");
    }
}
