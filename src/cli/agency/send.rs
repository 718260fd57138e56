//! `puente send`: a message from flags or a JSON file, with attachments.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::{client, HandlingArg, TopicArg};
use crate::cli::{print_acceptance, retryable_error, ConnectArgs};
use crate::pb::json;
use crate::pb::v1::{
    send_message_request, Attachment, Evaluation, HandlingCode, InformationAccuracy, Priority,
    SendMessageRequest, SourceReliability, Topic,
};

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
pub(super) const SEND_FILE_HELP: &str = "\
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
pub(super) enum PriorityArg {
    /// Routine.
    Routine,
    /// Urgent: within days.
    Urgent,
    /// Immediate: threat to life or of imminent loss of evidence.
    Immediate,
}

pub(super) fn parse_deadline(s: &str) -> Result<prost_types::Timestamp, String> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-12-31T12:00:00Z: {e}"))?;
    Ok(prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: 0,
    })
}

pub(super) fn parse_evaluation(s: &str) -> anyhow::Result<Evaluation> {
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
pub(crate) async fn send(args: SendArgs) -> anyhow::Result<()> {
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
pub(super) fn read_request(path: &Path) -> anyhow::Result<SendMessageRequest> {
    let text = crate::cli::read_file_arg(path)?;
    json::from_json(&text).with_context(|| {
        format!(
            "--file {} is not a SendMessageRequest in proto3 JSON (see examples/*.json)",
            path.display()
        )
    })
}

/// Sets the fields given by flags, over whatever `request` holds (nothing, or a `--file`).
pub(super) fn apply_flags(args: &SendArgs, request: &mut SendMessageRequest) -> anyhow::Result<()> {
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
