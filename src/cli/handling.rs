//! Handling commands: forward, consent (request, grant, deny), retract, correct and thread.
//! Each is one call to the exchange; the exchange enforces the handling rules and this module
//! only prints what it answered.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};

use super::agency::client;
use super::{format_time, print_acceptance, retryable_error, rpc_error, ConnectArgs};
use crate::pb::v1::{
    correct_message_request, CorrectMessageRequest, DenyConsentRequest, ForwardMessageRequest,
    GrantConsentRequest, HandlingCode, ListThreadRequest, Message, MessageKind,
    RequestConsentRequest, RetractMessageRequest,
};

/// Flags of `puente forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// A message you received, directly or as a forwarded copy.
    message_id: String,
    /// Agency id to pass it to (no regions, no *). Repeat for several. H2 and H3 messages need
    /// the originator's consent for each (`puente consent request`).
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    /// Why it is passed on; recorded with the copy.
    #[arg(long)]
    reason: Option<String>,
    /// Idempotency key; reuse the printed one to retry safely [default: a new UUID].
    #[arg(long)]
    client_message_id: Option<String>,
}

/// Flags of `puente consent`.
#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// What to do.
    #[command(subcommand)]
    command: ConsentCommand,
}

/// The consent subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum ConsentCommand {
    /// Ask the originator of an H2/H3 message you hold for consent to forward it to an agency.
    Request(ConsentRequestArgs),
    /// As originator, consent to a request (found in your inbox as a CONSENT_REQUEST).
    Grant(GrantArgs),
    /// As originator, refuse a request; the requester is told why.
    Deny(DenyArgs),
}

/// Flags of `puente consent request`.
#[derive(Debug, Args)]
pub(super) struct ConsentRequestArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The message (or forwarded copy) you hold.
    message_id: String,
    /// The agency you would forward it to.
    #[arg(long)]
    agency: String,
    /// Why; shown to the originator.
    #[arg(long)]
    reason: String,
}

/// Flags of `puente consent grant`.
#[derive(Debug, Args)]
pub(super) struct GrantArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The consent request's message id.
    consent_request_id: String,
    /// Conditions or remarks for the requester.
    #[arg(long)]
    reason: Option<String>,
}

/// Flags of `puente consent deny`.
#[derive(Debug, Args)]
pub(super) struct DenyArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The consent request's message id.
    consent_request_id: String,
    /// Why; shown to the requester.
    #[arg(long)]
    reason: String,
}

/// Flags of `puente retract`.
#[derive(Debug, Args)]
pub struct RetractArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// A message you sent.
    message_id: String,
    /// Why it is retracted; every holder sees it.
    #[arg(long)]
    reason: String,
}

/// Flags of `puente correct`.
#[derive(Debug, Args)]
pub struct CorrectArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// A message you sent.
    message_id: String,
    /// What was corrected; every holder sees it.
    #[arg(long)]
    reason: String,
    /// The corrected text.
    #[arg(
        long,
        conflicts_with = "text_file",
        required_unless_present = "text_file"
    )]
    text: Option<String>,
    /// Read the corrected text from this file.
    #[arg(long)]
    text_file: Option<PathBuf>,
}

/// Flags of `puente thread`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("what")
        .required(true)
        .args(["message_id", "case_reference"])
))]
pub struct ThreadArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Any message of the thread: its root and every reply are listed.
    message_id: Option<String>,
    /// List the messages carrying this case reference instead.
    #[arg(long)]
    case_reference: Option<String>,
}

/// `puente forward`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(super) async fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let client_message_id = args
        .client_message_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let response = client(&args.connect)
        .await?
        .forward_message(ForwardMessageRequest {
            client_message_id: client_message_id.clone(),
            message_id: args.message_id.clone(),
            recipients: args.to.clone(),
            reason: args.reason.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| retryable_error(status, "copy", &client_message_id))?
        .into_inner();
    print_acceptance(
        &response.message_id,
        response.accepted_at.as_ref(),
        response.audit_index,
        &client_message_id,
    );
    Ok(())
}

/// `puente consent`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(super) async fn consent(args: ConsentArgs) -> anyhow::Result<()> {
    match args.command {
        ConsentCommand::Request(args) => {
            let response = client(&args.connect)
                .await?
                .request_consent(RequestConsentRequest {
                    message_id: args.message_id,
                    agency_id: args.agency,
                    reason: args.reason,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "consent_request_id: {}",
                crate::text::line(&response.consent_request_id)
            );
        }
        ConsentCommand::Grant(args) => {
            let response = client(&args.connect)
                .await?
                .grant_consent(GrantConsentRequest {
                    consent_request_id: args.consent_request_id,
                    reason: args.reason.unwrap_or_default(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "decision_message_id: {}",
                crate::text::line(&response.decision_message_id)
            );
        }
        ConsentCommand::Deny(args) => {
            let response = client(&args.connect)
                .await?
                .deny_consent(DenyConsentRequest {
                    consent_request_id: args.consent_request_id,
                    reason: args.reason,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "decision_message_id: {}",
                crate::text::line(&response.decision_message_id)
            );
        }
    }
    Ok(())
}

/// `puente retract`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(super) async fn retract(args: RetractArgs) -> anyhow::Result<()> {
    let response = client(&args.connect)
        .await?
        .retract_message(RetractMessageRequest {
            message_id: args.message_id,
            reason: args.reason,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!(
        "notice_message_id: {}",
        crate::text::line(&response.notice_message_id)
    );
    Ok(())
}

/// `puente correct`.
///
/// # Errors
/// An unreadable --text-file, connection failures or the exchange's refusal.
pub(super) async fn correct(args: CorrectArgs) -> anyhow::Result<()> {
    let text = match (args.text, &args.text_file) {
        (Some(text), _) => text,
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --text-file {}", path.display()))?,
        (None, None) => bail!("give the corrected text with --text or --text-file"),
    };
    let response = client(&args.connect)
        .await?
        .correct_message(CorrectMessageRequest {
            message_id: args.message_id,
            reason: args.reason,
            content: Some(correct_message_request::Content::Text(text)),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!(
        "notice_message_id: {}",
        crate::text::line(&response.notice_message_id)
    );
    Ok(())
}

/// `puente thread`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(super) async fn thread(args: ThreadArgs) -> anyhow::Result<()> {
    let response = client(&args.connect)
        .await?
        .list_thread(ListThreadRequest {
            message_id: args.message_id.unwrap_or_default(),
            case_reference: args.case_reference.unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_thread(&response.messages);
    eprintln!("{} message(s)", response.messages.len());
    Ok(())
}

/// One line per message, oldest first: when, id, the message it answers, handling, kind,
/// sender and recipients, subject.
fn print_thread(messages: &[Message]) {
    use crate::text::line;
    println!(
        "{:<20} {:<36} {:<36} {:<2} {:<15} {:<24} SUBJECT",
        "CREATED", "MESSAGE_ID", "IN_REPLY_TO", "H", "KIND", "FROM -> TO"
    );
    for message in messages {
        let handling = HandlingCode::try_from(message.handling).map_or("?", |h| {
            h.as_str_name().trim_start_matches("HANDLING_CODE_")
        });
        let route = format!("{} -> {}", message.sender, message.recipients.join(","));
        println!(
            "{:<20} {:<36} {:<36} {:<2} {:<15} {:<24} {}",
            format_time(message.created_at.as_ref()),
            line(&message.message_id),
            if message.in_reply_to.is_empty() {
                "-".into()
            } else {
                line(&message.in_reply_to)
            },
            handling,
            kind_name(message.kind),
            line(&route),
            line(&message.subject)
        );
    }
}

fn kind_name(kind: i32) -> &'static str {
    match MessageKind::try_from(kind) {
        Ok(MessageKind::Unspecified) => "MESSAGE",
        Ok(kind) => kind.as_str_name().trim_start_matches("MESSAGE_KIND_"),
        Err(_) => "?",
    }
}
