//! Agency client commands: send, inbox, ack, status, get, export, agencies; one file per
//! command group, and [`print`] for how a message is shown.

mod inbox;
mod message;
mod print;
mod send;

use clap::{Args, ValueEnum};
use tonic::transport::Channel;

pub(super) use inbox::{ack, inbox, AckArgs, InboxArgs};
pub(super) use message::{export, get, status, ExportArgs, GetArgs, MessageArgs};
pub(super) use send::{send, SendArgs};

use super::{print_agencies, rpc_error, ConnectArgs};
use crate::pb::v1::exchange_service_client::ExchangeServiceClient;
use crate::pb::v1::ListAgenciesRequest;

/// Topic of a message, as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum TopicArg {
    /// Firearms trafficking.
    FirearmsTrafficking,
    /// Money laundering.
    MoneyLaundering,
    /// Drug early warning.
    DrugEarlyWarning,
    /// Drug trafficking.
    DrugTrafficking,
    /// Anything else.
    Other,
}

/// Europol handling code, as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum HandlingArg {
    /// H0: use for the purpose provided, under national law.
    H0,
    /// H1: not to be used as evidence without the originator's consent.
    H1,
    /// H2: not to be disseminated further without the originator's consent.
    H2,
    /// H3: other restrictions apply.
    H3,
}

/// Flags of `puente agencies`.
#[derive(Debug, Args)]
pub struct AgenciesArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

/// An ExchangeService client over a mutual-TLS channel, accepting messages of any size.
pub(super) async fn client(
    connect: &ConnectArgs,
) -> anyhow::Result<ExchangeServiceClient<Channel>> {
    Ok(ExchangeServiceClient::new(connect.connect().await?).max_decoding_message_size(usize::MAX))
}

/// `puente agencies`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(super) async fn agencies(args: AgenciesArgs) -> anyhow::Result<()> {
    let response = client(&args.connect)
        .await?
        .list_agencies(ListAgenciesRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_agencies(&response.agencies);
    Ok(())
}
