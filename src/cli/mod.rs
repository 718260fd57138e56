//! The `puente` command line: `serve` runs the exchange; `send`, `inbox`, `ack`, `status`, `get`
//! and `agencies` are thin agency clients over the generated tonic client; `admin` runs the
//! certificate authority and manages the agency directory.

mod admin;
mod agency;
mod connect;
mod serve;

use clap::{Parser, Subcommand};

pub use connect::ConnectArgs;

/// Puente: a mutual-TLS exchange of intelligence between law-enforcement and
/// financial-intelligence agencies.
#[derive(Debug, Parser)]
#[command(name = "puente", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the exchange server.
    Serve(serve::ServeArgs),
    /// Send a message to one or more agencies.
    Send(agency::SendArgs),
    /// Print your agency's inbox (backlog, then new messages with --follow).
    Inbox(agency::InboxArgs),
    /// Acknowledge a message you received (as received, or as read with --read).
    Ack(agency::AckArgs),
    /// Show each recipient's delivery state of a message you sent.
    Status(agency::MessageArgs),
    /// Print one message you sent or received.
    Get(agency::GetArgs),
    /// List the agencies of the directory.
    Agencies(agency::AgenciesArgs),
    /// Administer the exchange: its certificate authority, revocation lists and agency directory.
    Admin(admin::AdminArgs),
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command failed with, worded for the person at the terminal.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Send(args) => agency::send(args).await,
        Command::Inbox(args) => agency::inbox(args).await,
        Command::Ack(args) => agency::ack(args).await,
        Command::Status(args) => agency::status(args).await,
        Command::Get(args) => agency::get(args).await,
        Command::Agencies(args) => agency::agencies(args).await,
        Command::Admin(args) => admin::run(args).await,
    }
}
