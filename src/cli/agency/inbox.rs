//! `puente inbox` and `puente ack`: the agency's inbox stream and acknowledgements.

use std::io::Write as _;

use anyhow::Context;
use clap::Args;

use super::client;
use super::print::{print_message, state_name};
use crate::cli::{format_time, rpc_error, ConnectArgs};
use crate::pb::json;
use crate::pb::v1::{AcknowledgeMessageRequest, DeliveryState, StreamInboxRequest};
use crate::text::{self, line};

/// Flags of `puente inbox`.
#[derive(Debug, Args)]
pub struct InboxArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print only messages after this sequence number (your last processed one).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Keep waiting for new messages instead of stopping at the end of the inbox.
    #[arg(long)]
    follow: bool,
    /// Acknowledge each printed message as received.
    #[arg(long)]
    ack: bool,
    /// Print each entry as one line of JSON (the proto3 JSON mapping of a
    /// StreamInboxResponse: sequence and message, with structured content in full).
    #[arg(long)]
    json: bool,
}

/// Flags of `puente ack`.
#[derive(Debug, Args)]
pub struct AckArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The message id.
    message_id: String,
    /// Acknowledge as read, not only received.
    #[arg(long)]
    read: bool,
}

/// `puente inbox`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(crate) async fn inbox(args: InboxArgs) -> anyhow::Result<()> {
    let mut client = client(&args.connect).await?;
    let mut stream = client
        .stream_inbox(StreamInboxRequest {
            after_sequence: args.after,
            backlog_only: !args.follow,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut count = 0usize;
    while let Some(item) = stream.message().await.map_err(rpc_error)? {
        // Stop, without acknowledging more, once the reader (`| head -1`) has had enough.
        if args.json && !print_json(&json::to_json(&item)?)? {
            break;
        }
        let Some(message) = item.message else {
            continue;
        };
        if !args.json {
            print_message(item.sequence, &message);
        }
        if args.ack {
            client
                .acknowledge_message(AcknowledgeMessageRequest {
                    message_id: message.message_id.clone(),
                    state: DeliveryState::Received as i32,
                })
                .await
                .map_err(rpc_error)?;
        }
        count += 1;
    }
    eprintln!("{count} message(s)");
    Ok(())
}

/// Prints JSON output on its own line, with what the exchange sent made safe for a terminal
/// ([`text::json`]: same document). Returns false if standard output is a pipe whose reader
/// has gone (`| head`), which ends the output quietly instead of with a panic.
pub(super) fn print_json(json: &str) -> anyhow::Result<bool> {
    match writeln!(std::io::stdout(), "{}", text::json(json)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}

/// `puente ack`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(crate) async fn ack(args: AckArgs) -> anyhow::Result<()> {
    let state = if args.read {
        DeliveryState::Read
    } else {
        DeliveryState::Received
    };
    let response = client(&args.connect)
        .await?
        .acknowledge_message(AcknowledgeMessageRequest {
            message_id: args.message_id.clone(),
            state: state as i32,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!(
        "{} {} at {}",
        line(&args.message_id),
        state_name(response.state),
        format_time(response.updated_at.as_ref())
    );
    Ok(())
}
