//! Agency client commands: send, inbox, ack, status, get, agencies.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tonic::transport::Channel;

use super::{
    format_time, print_acceptance, print_agencies, retryable_error, rpc_error, ConnectArgs,
};
use crate::pb::json;
use crate::pb::v1::exchange_service_client::ExchangeServiceClient;
use crate::pb::v1::{
    message, send_message_request, AcknowledgeMessageRequest, AlertType, Attachment, DeliveryState,
    Evaluation, FirearmRecord, FirearmStatus, FirearmType, GetDeliveryStatusRequest,
    GetMessageRequest, HandlingCode, InformationAccuracy, ListAgenciesRequest, Message,
    MessageKind, Priority, ReportCode, SendMessageRequest, Severity, SourceReliability,
    StreamInboxRequest, Topic,
};
use crate::text::{self, line};

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
///
/// A message is either given entirely by flags (`--to`, `--subject`, `--topic`, `--handling`,
/// `--evaluation` and `--text` or `--text-file`), or read from a JSON file with `--file`, in which
/// case every flag is optional and overrides the file.
#[derive(Debug, Args)]
#[command(after_long_help = SEND_FILE_HELP)]
pub struct SendArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Read the message from this file (`-` for standard input): a SendMessageRequest in the
    /// proto3 JSON mapping, such as examples/firearms-report.json. Flags given as well override
    /// its fields.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Recipient: an agency id (CO-DIJIN), region:EU, region:CELAC, region:INTERNATIONAL or *.
    /// Repeat for several. With --file, replaces the file's recipients.
    #[arg(long = "to", required_unless_present = "file")]
    to: Vec<String>,
    /// Subject line (at most 256 characters).
    #[arg(long, required_unless_present = "file")]
    subject: Option<String>,
    /// Subject matter.
    #[arg(long, value_enum, required_unless_present = "file")]
    topic: Option<TopicArg>,
    /// Handling code.
    #[arg(long, value_enum, required_unless_present = "file")]
    handling: Option<HandlingArg>,
    /// 4x4 evaluation: source reliability A/B/C/X and information accuracy 1-4, e.g. B2.
    #[arg(long, required_unless_present = "file")]
    evaluation: Option<String>,
    /// The message text. With --file, replaces the file's content.
    #[arg(
        long,
        conflicts_with = "text_file",
        required_unless_present_any = ["text_file", "file"]
    )]
    text: Option<String>,
    /// Read the message text from this file. With --file, replaces the file's content.
    #[arg(long)]
    text_file: Option<PathBuf>,
    /// Attach a file. Repeat for several. With --file, added to the file's attachments.
    #[arg(long = "attach")]
    attach: Vec<PathBuf>,
    /// Your case reference.
    #[arg(long)]
    case_reference: Option<String>,
    /// Id of the message this one answers.
    #[arg(long)]
    in_reply_to: Option<String>,
    /// Idempotency key; reuse the printed one to retry safely [default: the file's, else a new
    /// UUID].
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

/// The end of `puente send --help`: how `--file` and the flags combine.
const SEND_FILE_HELP: &str = "\
Sending a JSON file:
  --file takes the proto3 JSON mapping of a SendMessageRequest (field names in lowerCamelCase
  or as in the .proto, enums by name, dates as strings), with any kind of content: text,
  firearms, firearmTrace, financial or earlyWarning. The examples/ directory has one of each:

    puente send --profile es-cnp --file examples/firearms-report.json

  Flags override the file: --to replaces its recipients, --subject, --topic, --handling,
  --evaluation, --case-reference, --in-reply-to, --conditions, --priority and --respond-by
  replace those fields, --text or --text-file replaces its content, and --attach adds to its
  attachments. The idempotency key is --client-message-id, else the file's clientMessageId,
  else a new UUID (so sending the same file twice sends two messages unless it carries a key).
  Fields the server sets (serialNumberNormalized) are ignored.";

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
    /// Print the message as JSON (the proto3 JSON mapping of a GetMessageResponse), indented.
    #[arg(long)]
    json: bool,
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
    let mut request = match &args.file {
        Some(path) => read_request(path)?,
        None => SendMessageRequest::default(),
    };
    apply_flags(&args, &mut request)?;
    let client_message_id = request.client_message_id.clone();
    let response = client(&args.connect)
        .await?
        .send_message(request)
        .await
        .map_err(|status| retryable_error(status, "message", &client_message_id))?
        .into_inner();
    print_acceptance(
        &response.message_id,
        response.accepted_at.as_ref(),
        response.audit_index,
        &client_message_id,
    );
    Ok(())
}

/// Reads a `SendMessageRequest` in proto3 JSON from `path`, or from standard input for `-`.
fn read_request(path: &Path) -> anyhow::Result<SendMessageRequest> {
    let text = super::read_file_arg(path)?;
    json::from_json(&text).with_context(|| {
        format!(
            "--file {} is not a SendMessageRequest in proto3 JSON (see examples/*.json)",
            path.display()
        )
    })
}

/// Sets the fields given by flags, over whatever `request` holds (nothing, or a `--file`).
fn apply_flags(args: &SendArgs, request: &mut SendMessageRequest) -> anyhow::Result<()> {
    match (&args.text, &args.text_file) {
        (Some(text), _) => {
            request.content = Some(send_message_request::Content::Text(text.clone()))
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --text-file {}", path.display()))?;
            request.content = Some(send_message_request::Content::Text(text));
        }
        (None, None) => {}
    }
    for path in &args.attach {
        let data = std::fs::read(path)
            .with_context(|| format!("cannot read --attach {}", path.display()))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("--attach {} names no file", path.display()))?;
        request.attachments.push(Attachment {
            filename,
            media_type: String::new(),
            data,
        });
    }
    if !args.to.is_empty() {
        request.recipients.clone_from(&args.to);
    }
    if let Some(subject) = &args.subject {
        request.subject.clone_from(subject);
    }
    if let Some(topic) = args.topic {
        request.topic = match topic {
            TopicArg::FirearmsTrafficking => Topic::FirearmsTrafficking,
            TopicArg::MoneyLaundering => Topic::MoneyLaundering,
            TopicArg::DrugEarlyWarning => Topic::DrugEarlyWarning,
            TopicArg::DrugTrafficking => Topic::DrugTrafficking,
            TopicArg::Other => Topic::Other,
        } as i32;
    }
    if let Some(handling) = args.handling {
        request.handling = match handling {
            HandlingArg::H0 => HandlingCode::H0,
            HandlingArg::H1 => HandlingCode::H1,
            HandlingArg::H2 => HandlingCode::H2,
            HandlingArg::H3 => HandlingCode::H3,
        } as i32;
    }
    if let Some(evaluation) = &args.evaluation {
        request.evaluation = Some(parse_evaluation(evaluation)?);
    }
    if let Some(id) = &args.in_reply_to {
        request.in_reply_to.clone_from(id);
    }
    if let Some(reference) = &args.case_reference {
        request.case_reference.clone_from(reference);
    }
    if let Some(conditions) = &args.conditions {
        request.handling_conditions.clone_from(conditions);
    }
    if let Some(priority) = args.priority {
        request.priority = match priority {
            PriorityArg::Routine => Priority::Routine,
            PriorityArg::Urgent => Priority::Urgent,
            PriorityArg::Immediate => Priority::Immediate,
        } as i32;
    }
    if let Some(respond_by) = args.respond_by {
        request.respond_by = Some(respond_by);
    }
    if let Some(id) = &args.client_message_id {
        request.client_message_id.clone_from(id);
    }
    if request.client_message_id.is_empty() {
        request.client_message_id = uuid::Uuid::new_v4().to_string();
    }
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
fn print_json(json: &str) -> anyhow::Result<bool> {
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
        line(&args.message_id),
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
    if let Some(due) = &response.respond_by {
        println!("answer due by {}", format_time(Some(due)));
    }
    println!(
        "{:<32} {:<10} {:<22} ANSWER",
        "RECIPIENT", "STATE", "UPDATED"
    );
    for recipient in &response.recipients {
        let answer = match (recipient.replied, recipient.overdue) {
            (true, _) => "replied",
            (false, true) => "OVERDUE",
            (false, false) => "-",
        };
        println!(
            "{:<32} {:<10} {:<22} {answer}",
            line(&recipient.agency_id),
            state_name(recipient.state),
            format_time(recipient.updated_at.as_ref())
        );
    }
    for notice in &response.notices {
        let kind =
            short_name::<MessageKind>(notice.kind, MessageKind::as_str_name, "MESSAGE_KIND_");
        println!("{kind} notice {}:", line(&notice.notice_message_id));
        for holder in &notice.recipients {
            let acknowledged = holder.state >= DeliveryState::Received as i32;
            println!(
                "  {:<30} {}",
                line(&holder.agency_id),
                if acknowledged {
                    "acknowledged"
                } else {
                    "NOT acknowledged"
                }
            );
        }
    }
    Ok(())
}

/// `puente get`.
///
/// # Errors
/// Connection failures, the exchange's refusal, or attachments that cannot be saved.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let response = client(&args.connect)
        .await?
        .get_message(GetMessageRequest {
            message_id: args.message_id.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.json {
        print_json(&json::to_json_pretty(&response)?)?;
    }
    let message = response
        .message
        .context("the exchange answered without a message")?;
    if !args.json {
        print_message(0, &message);
    }
    if let Some(dir) = &args.save_attachments {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for attachment in &message.attachments {
            let path = save_attachment(dir, &attachment.filename, &attachment.data)?;
            let mut note = format!("saved {}", line(&path.display().to_string()));
            if path.file_name() != Some(std::ffi::OsStr::new(&attachment.filename)) {
                note.push_str(&format!(" (sent as \"{}\")", line(&attachment.filename)));
            }
            // Keep standard output pure JSON with --json.
            if args.json {
                eprintln!("{note}");
            } else {
                println!("{note}");
            }
        }
    }
    Ok(())
}

/// Most numbered names (`report (2).txt`...) tried for one attachment.
const MAX_NUMBERED_NAMES: usize = 1000;

/// Writes an attachment into `dir` under a name of its own and returns its path. The name the
/// sender gave is never trusted ([`text::file_name`]: one visible component, not hidden, not a
/// device), and nothing already in `dir` is replaced or followed: the file is created with
/// `create_new` (O_CREAT | O_EXCL), which fails on any existing entry — a file, a directory,
/// or a symbolic link, dangling or not, whose target is then never opened — and the next name
/// is tried: `report.txt`, `report (2).txt`, `report (3).txt`... The file is readable by its
/// owner only, as the message was.
fn save_attachment(dir: &Path, sent_name: &str, data: &[u8]) -> anyhow::Result<PathBuf> {
    let name = text::file_name(sent_name);
    for n in 1..=MAX_NUMBERED_NAMES {
        let path = match n {
            1 => dir.join(&name),
            n => dir.join(text::numbered(&name, n)),
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = match options.open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        };
        if let Err(e) = file.write_all(data).and_then(|()| file.sync_all()) {
            // Do not leave a truncated attachment behind under a plausible name.
            let _ = std::fs::remove_file(&path);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        return Ok(path);
    }
    bail!(
        "{} already holds {MAX_NUMBERED_NAMES} files named like {name}: save into an empty directory",
        dir.display()
    )
}

/// Flags of `puente export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The message id.
    message_id: String,
    /// Write a STIX 2.1 bundle (the only format so far; required).
    #[arg(long, required = true)]
    stix: bool,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `puente export --stix`: the message as a STIX 2.1 bundle, its handling code mapped to a
/// TLP 2.0 marking, structured content attached as `x_puente_content` (proto3 JSON).
///
/// # Errors
/// Connection failures, the exchange's refusal, or the file cannot be written.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
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
    let structured = !matches!(message.content, None | Some(message::Content::Text(_)));
    let content_json = if structured {
        let only_content = Message {
            content: message.content.clone(),
            ..Message::default()
        };
        let json =
            crate::pb::json::to_json(&only_content).context("cannot encode the content as JSON")?;
        Some(serde_json::from_str(&json).context("cannot re-read the content JSON")?)
    } else {
        None
    };
    let bundle = crate::stix::bundle(&message, content_json);
    let text = serde_json::to_string_pretty(&bundle).context("cannot encode the bundle")?;
    match &args.out {
        Some(path) => {
            crate::pki::write_public(path, &format!("{}\n", text::json(&text)))?;
            eprintln!("STIX bundle written to {}", path.display());
        }
        None => println!("{}", text::json(&text)),
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
        line(&message.message_id),
        line(&message.sender),
        format_time(message.created_at.as_ref())
    );
    println!("  to: {}", line(&message.recipients.join(", ")));
    let kind = short_name::<MessageKind>(message.kind, MessageKind::as_str_name, "MESSAGE_KIND_");
    if message.kind != MessageKind::Unspecified as i32 {
        let about = if message.related_message_id.is_empty() {
            &message.original_message_id
        } else {
            &message.related_message_id
        };
        println!("  kind: {kind}  about: {}", line(about));
    }
    if message.originator != message.sender && !message.originator.is_empty() {
        println!(
            "  originator: {}  original: {}",
            line(&message.originator),
            line(&message.original_message_id)
        );
    }
    for hop in &message.provenance {
        println!(
            "  forwarded: {} -> {} ({}, {})",
            line(&hop.from_agency),
            line(&hop.to_agency),
            line(&hop.message_id),
            format_time(hop.forwarded_at.as_ref())
        );
    }
    if !message.consent_agency.is_empty() {
        let decision = match MessageKind::try_from(message.kind) {
            Ok(MessageKind::ConsentDecision) if message.consent_granted => " (granted)",
            Ok(MessageKind::ConsentDecision) => " (denied)",
            _ => "",
        };
        println!("  consent for: {}{decision}", line(&message.consent_agency));
    }
    if !message.reason.is_empty() {
        print_text_field("reason", &message.reason);
    }
    if let Some(hit) = &message.match_hit {
        println!(
            "  match hit: {} asked about your {} (your reference \"{}\"); case {}, legal basis \"{}\"; match reference {}",
            line(&hit.querying_agency),
            short_name::<crate::pb::v1::IdentifierKind>(hit.kind, crate::pb::v1::IdentifierKind::as_str_name, "IDENTIFIER_KIND_").to_lowercase(),
            line(&hit.your_reference),
            line(&hit.case_reference),
            line(&hit.legal_basis),
            line(&hit.match_reference)
        );
    }
    println!(
        "  topic: {}  handling: {}  evaluation: {evaluation}",
        topic.trim_start_matches("TOPIC_"),
        handling.trim_start_matches("HANDLING_CODE_")
    );
    if !message.handling_conditions.is_empty() {
        print_text_field("conditions", &message.handling_conditions);
    }
    if message.priority > Priority::Routine as i32 || message.respond_by.is_some() {
        println!(
            "  priority: {}  respond by: {}",
            short_name::<Priority>(message.priority, Priority::as_str_name, "PRIORITY_"),
            format_time(message.respond_by.as_ref())
        );
    }
    if !message.case_reference.is_empty() {
        println!("  case: {}", line(&message.case_reference));
    }
    if !message.in_reply_to.is_empty() {
        println!("  in reply to: {}", line(&message.in_reply_to));
    }
    println!("  subject: {}", line(&message.subject));
    if let Some(content) = &message.content {
        print_content(content);
    }
    for attachment in &message.attachments {
        println!(
            "  attachment: {} ({} bytes)",
            line(&attachment.filename),
            attachment.data.len()
        );
    }
    println!("  content sha256: {}", hex::encode(&message.content_sha256));
}

/// The variant name of an enum value without its prefix (`FIREARM_TYPE_PISTOL` → `PISTOL`), or
/// `?` for a number this client does not know.
fn short_name<E: TryFrom<i32>>(
    value: i32,
    name: fn(&E) -> &'static str,
    prefix: &str,
) -> &'static str {
    E::try_from(value).map_or("?", |known| {
        let full = name(&known);
        full.strip_prefix(prefix).unwrap_or(full)
    })
}

/// Prints the lines of a text as a quoted block: each behind `  | `, so that no line of a
/// sender's text can pass for one of the header lines printed above it, and each made safe for
/// the terminal by [`text::lines`].
fn print_block(value: &str) {
    for line in text::lines(value) {
        println!("  | {line}");
    }
}

/// Prints a free-text header field: on the label's line when it is one line, else as a
/// quoted block below the label.
fn print_text_field(label: &str, value: &str) {
    if value.contains('\n') {
        println!("  {label}:");
        print_block(value);
    } else {
        println!("  {label}: {}", line(value));
    }
}

/// A one-line summary of a firearm record.
fn firearm_line(record: &FirearmRecord) -> String {
    let mut line = format!(
        "{} {} {}",
        short_name(
            record.firearm_type,
            FirearmType::as_str_name,
            "FIREARM_TYPE_"
        ),
        record.make,
        record.model
    );
    if !record.calibre.is_empty() {
        line.push_str(&format!(", {}", record.calibre));
    }
    if record.serial_number.is_empty() {
        line.push_str(", no serial number");
    } else {
        line.push_str(&format!(
            ", serial {} ({})",
            record.serial_number, record.serial_number_normalized
        ));
    }
    line.push_str(&format!(
        ", {}",
        short_name(record.status, FirearmStatus::as_str_name, "FIREARM_STATUS_")
    ));
    if let Some(incident) = &record.incident {
        line.push_str(&format!(
            ", {} {} {}",
            incident.date, incident.country, incident.place
        ));
    }
    text::line(&line).into_owned()
}

/// Prints message content: text in full, structured reports as a summary.
fn print_content(content: &message::Content) {
    match content {
        message::Content::Text(text) => print_block(text),
        message::Content::Firearms(report) => {
            println!("  firearms report: {} record(s)", report.records.len());
            for (i, record) in report.records.iter().enumerate() {
                println!("  [{i}] {}", firearm_line(record));
            }
        }
        message::Content::FirearmTrace(trace) => {
            print!(
                "  firearm trace request to {}",
                line(&trace.requested_country)
            );
            if !trace.respond_by_date.is_empty() {
                print!(", answer by {}", line(&trace.respond_by_date));
            }
            println!();
            if let Some(firearm) = &trace.firearm {
                println!("  firearm: {}", firearm_line(firearm));
            }
            print_block(&trace.question);
        }
        message::Content::Financial(report) => {
            println!(
                "  financial report {}: {} person(s), {} entit(ies), {} account(s), {} transaction(s)",
                short_name(report.report_code, ReportCode::as_str_name, "REPORT_CODE_"),
                report.persons.len(),
                report.entities.len(),
                report.accounts.len(),
                report.transactions.len()
            );
            for transaction in &report.transactions {
                let (value, currency) = transaction
                    .amount_local
                    .as_ref()
                    .map_or(("?", ""), |a| (a.value.as_str(), a.currency_code.as_str()));
                let row = format!(
                    "{} {value} {currency}  {} -> {}",
                    transaction.date_transaction, transaction.from_party, transaction.to_party
                );
                println!("  {}", line(&row));
            }
            if !report.indicators.is_empty() {
                println!("  indicators: {}", line(&report.indicators.join(", ")));
            }
            print_block(&report.reason);
        }
        message::Content::EarlyWarning(alert) => {
            let substance = alert.substance.as_ref();
            let name = substance.map_or("?", |s| s.name.as_str());
            print!(
                "  early warning {} ({}): {}",
                short_name(alert.alert_type, AlertType::as_str_name, "ALERT_TYPE_"),
                short_name(alert.severity, Severity::as_str_name, "SEVERITY_"),
                line(name)
            );
            match substance.map(|s| s.cas_number.as_str()) {
                Some(cas) if !cas.is_empty() => println!(", CAS {}", line(cas)),
                _ => println!(),
            }
            if !alert.countries.is_empty() {
                println!("  countries: {}", line(&alert.countries.join(", ")));
            }
            print_block(&alert.evidence);
            for action in &alert.recommended_actions {
                println!("  - {}", line(action));
            }
        }
    }
    if !matches!(content, message::Content::Text(_)) {
        println!("  (--json prints the full report)");
    }
}
