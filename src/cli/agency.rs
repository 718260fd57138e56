//! Agency client commands: send, inbox, ack, status, get, agencies.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tonic::transport::Channel;

use super::{print_agencies, rpc_error, ConnectArgs};
use crate::pb::v1::exchange_service_client::ExchangeServiceClient;
use crate::pb::v1::{
    message, send_message_request, AcknowledgeMessageRequest, Attachment, DeliveryState,
    Evaluation, GetDeliveryStatusRequest, GetMessageRequest, HandlingCode, InformationAccuracy,
    ListAgenciesRequest, Message, Priority, SendMessageRequest, SourceReliability,
    StreamInboxRequest, Topic,
};

/// Topic of a message, as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TopicArg {
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
pub enum HandlingArg {
    /// H0: use for the purpose provided, under national law.
    H0,
    /// H1: not to be used as evidence without the originator's consent.
    H1,
    /// H2: not to be disseminated further without the originator's consent.
    H2,
    /// H3: other restrictions apply.
    H3,
}

/// Flags of `puente send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Recipient: an agency id (CO-DIJIN), region:EU, region:CELAC, region:INTERNATIONAL or *.
    /// Repeat for several.
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    /// Subject line (at most 256 characters).
    #[arg(long)]
    subject: String,
    /// Subject matter.
    #[arg(long, value_enum)]
    topic: TopicArg,
    /// Handling code.
    #[arg(long, value_enum)]
    handling: HandlingArg,
    /// 4x4 evaluation: source reliability A/B/C/X and information accuracy 1-4, e.g. B2.
    #[arg(long)]
    evaluation: String,
    /// The message text.
    #[arg(
        long,
        conflicts_with = "text_file",
        required_unless_present = "text_file"
    )]
    text: Option<String>,
    /// Read the message text from this file.
    #[arg(long)]
    text_file: Option<PathBuf>,
    /// Attach a file. Repeat for several.
    #[arg(long = "attach")]
    attach: Vec<PathBuf>,
    /// Your case reference.
    #[arg(long)]
    case_reference: Option<String>,
    /// Id of the message this one answers.
    #[arg(long)]
    in_reply_to: Option<String>,
    /// Idempotency key; reuse the printed one to retry safely [default: a new UUID].
    #[arg(long)]
    client_message_id: Option<String>,
    /// Conditions of use; required with --handling h3.
    #[arg(long)]
    conditions: Option<String>,
    /// How fast an answer is needed.
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// When an answer is due (RFC 3339, e.g. 2026-12-31T12:00:00Z).
    #[arg(long, value_parser = parse_deadline)]
    respond_by: Option<prost_types::Timestamp>,
}

/// Priority, as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PriorityArg {
    /// Routine.
    Routine,
    /// Urgent: within days.
    Urgent,
    /// Immediate: threat to life or of imminent loss of evidence.
    Immediate,
}

fn parse_deadline(s: &str) -> Result<prost_types::Timestamp, String> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-12-31T12:00:00Z: {e}"))?;
    Ok(prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: 0,
    })
}

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

/// Flags of commands that take one message id.
#[derive(Debug, Args)]
pub struct MessageArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The message id.
    message_id: String,
}

/// Flags of `puente get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The message id.
    message_id: String,
    /// Save the attachments into this directory.
    #[arg(long)]
    save_attachments: Option<PathBuf>,
}

/// Flags of `puente agencies`.
#[derive(Debug, Args)]
pub struct AgenciesArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

async fn client(connect: &ConnectArgs) -> anyhow::Result<ExchangeServiceClient<Channel>> {
    Ok(ExchangeServiceClient::new(connect.connect().await?).max_decoding_message_size(usize::MAX))
}

fn parse_evaluation(s: &str) -> anyhow::Result<Evaluation> {
    let mut chars = s.chars();
    let (Some(source), Some(accuracy), None) = (chars.next(), chars.next(), chars.next()) else {
        bail!("--evaluation takes two characters such as B2: source reliability A, B, C or X, then information accuracy 1 to 4");
    };
    let source_reliability = match source.to_ascii_uppercase() {
        'A' => SourceReliability::A,
        'B' => SourceReliability::B,
        'C' => SourceReliability::C,
        'X' => SourceReliability::X,
        _ => bail!("--evaluation: source reliability must be A, B, C or X, not {source:?}"),
    };
    let information_accuracy = match accuracy {
        '1' => InformationAccuracy::InformationAccuracy1,
        '2' => InformationAccuracy::InformationAccuracy2,
        '3' => InformationAccuracy::InformationAccuracy3,
        '4' => InformationAccuracy::InformationAccuracy4,
        _ => bail!("--evaluation: information accuracy must be 1 to 4, not {accuracy:?}"),
    };
    Ok(Evaluation {
        source_reliability: source_reliability as i32,
        information_accuracy: information_accuracy as i32,
    })
}

/// `puente send`.
///
/// # Errors
/// Unreadable files, bad flags, or the exchange's refusal.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let text = match (&args.text, &args.text_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --text-file {}", path.display()))?,
        (None, None) => bail!("give the message with --text or --text-file"),
    };
    let mut attachments = Vec::new();
    for path in &args.attach {
        let data = std::fs::read(path)
            .with_context(|| format!("cannot read --attach {}", path.display()))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("--attach {} names no file", path.display()))?;
        attachments.push(Attachment {
            filename,
            media_type: String::new(),
            data,
        });
    }
    let client_message_id = args
        .client_message_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let topic = match args.topic {
        TopicArg::FirearmsTrafficking => Topic::FirearmsTrafficking,
        TopicArg::MoneyLaundering => Topic::MoneyLaundering,
        TopicArg::DrugEarlyWarning => Topic::DrugEarlyWarning,
        TopicArg::DrugTrafficking => Topic::DrugTrafficking,
        TopicArg::Other => Topic::Other,
    };
    let handling = match args.handling {
        HandlingArg::H0 => HandlingCode::H0,
        HandlingArg::H1 => HandlingCode::H1,
        HandlingArg::H2 => HandlingCode::H2,
        HandlingArg::H3 => HandlingCode::H3,
    };
    let request = SendMessageRequest {
        client_message_id: client_message_id.clone(),
        recipients: args.to.clone(),
        topic: topic as i32,
        subject: args.subject.clone(),
        handling: handling as i32,
        evaluation: Some(parse_evaluation(&args.evaluation)?),
        in_reply_to: args.in_reply_to.clone().unwrap_or_default(),
        case_reference: args.case_reference.clone().unwrap_or_default(),
        content: Some(send_message_request::Content::Text(text)),
        attachments,
        handling_conditions: args.conditions.clone().unwrap_or_default(),
        priority: match args.priority {
            None => Priority::Unspecified,
            Some(PriorityArg::Routine) => Priority::Routine,
            Some(PriorityArg::Urgent) => Priority::Urgent,
            Some(PriorityArg::Immediate) => Priority::Immediate,
        } as i32,
        respond_by: args.respond_by,
    };
    let response = client(&args.connect)
        .await?
        .send_message(request)
        .await
        .map_err(|status| {
            // Only when the outcome is unknown is a retry useful; the key makes it safe.
            let unsure = matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Internal
            );
            let error = rpc_error(status);
            if unsure {
                anyhow::anyhow!("{error}\n(the message may or may not have been accepted: repeat the command with --client-message-id {client_message_id} to retry safely)")
            } else {
                error
            }
        })?
        .into_inner();
    println!("message_id: {}", response.message_id);
    println!(
        "accepted_at: {}",
        format_time(response.accepted_at.as_ref())
    );
    if let Some(index) = response.audit_index {
        // The receipt: `puente audit prove --index N` proves the entry is in the log.
        println!("audit_index: {index}");
    }
    println!("client_message_id: {client_message_id}");
    Ok(())
}

/// `puente inbox`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub async fn inbox(args: InboxArgs) -> anyhow::Result<()> {
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
        let Some(message) = item.message else {
            continue;
        };
        print_message(item.sequence, &message);
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

/// `puente ack`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub async fn ack(args: AckArgs) -> anyhow::Result<()> {
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
        args.message_id,
        state_name(response.state),
        format_time(response.updated_at.as_ref())
    );
    Ok(())
}

/// `puente status`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub async fn status(args: MessageArgs) -> anyhow::Result<()> {
    let response = client(&args.connect)
        .await?
        .get_delivery_status(GetDeliveryStatusRequest {
            message_id: args.message_id.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{:<32} {:<10} UPDATED", "RECIPIENT", "STATE");
    for recipient in response.recipients {
        println!(
            "{:<32} {:<10} {}",
            recipient.agency_id,
            state_name(recipient.state),
            format_time(recipient.updated_at.as_ref())
        );
    }
    Ok(())
}

/// `puente get`.
///
/// # Errors
/// Connection failures, the exchange's refusal, or attachments that cannot be saved.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let message = client(&args.connect)
        .await?
        .get_message(GetMessageRequest {
            message_id: args.message_id.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .message
        .context("the exchange answered without a message")?;
    print_message(0, &message);
    if let Some(dir) = &args.save_attachments {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for attachment in &message.attachments {
            // The server refuses names with path separators; join is safe.
            let path = dir.join(&attachment.filename);
            std::fs::write(&path, &attachment.data)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("saved {}", path.display());
        }
    }
    Ok(())
}

/// `puente agencies`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub async fn agencies(args: AgenciesArgs) -> anyhow::Result<()> {
    let response = client(&args.connect)
        .await?
        .list_agencies(ListAgenciesRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_agencies(&response.agencies);
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    DeliveryState::try_from(state).map_or("?", |s| {
        s.as_str_name().trim_start_matches("DELIVERY_STATE_")
    })
}

fn format_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn print_message(sequence: u64, message: &Message) {
    let topic = Topic::try_from(message.topic).map_or("?", |t| t.as_str_name());
    let handling = HandlingCode::try_from(message.handling).map_or("?", |h| h.as_str_name());
    let evaluation = message.evaluation.map_or_else(String::new, |e| {
        let source = SourceReliability::try_from(e.source_reliability).map_or("?", |s| {
            s.as_str_name().trim_start_matches("SOURCE_RELIABILITY_")
        });
        let accuracy = InformationAccuracy::try_from(e.information_accuracy).map_or("?", |a| {
            a.as_str_name().trim_start_matches("INFORMATION_ACCURACY_")
        });
        format!("{source}{accuracy}")
    });
    if sequence > 0 {
        print!("#{sequence} ");
    }
    println!(
        "{}  from {}  {}",
        message.message_id,
        message.sender,
        format_time(message.created_at.as_ref())
    );
    println!("  to: {}", message.recipients.join(", "));
    println!(
        "  topic: {}  handling: {}  evaluation: {evaluation}",
        topic.trim_start_matches("TOPIC_"),
        handling.trim_start_matches("HANDLING_CODE_")
    );
    if !message.case_reference.is_empty() {
        println!("  case: {}", message.case_reference);
    }
    if !message.in_reply_to.is_empty() {
        println!("  in reply to: {}", message.in_reply_to);
    }
    println!("  subject: {}", message.subject);
    if let Some(message::Content::Text(text)) = &message.content {
        for line in text.lines() {
            println!("  | {line}");
        }
    }
    for attachment in &message.attachments {
        println!(
            "  attachment: {} ({} bytes)",
            attachment.filename,
            attachment.data.len()
        );
    }
    println!("  content sha256: {}", hex::encode(&message.content_sha256));
}
