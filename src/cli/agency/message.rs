//! `puente status`, `get` and `export`: one message the agency sent or received.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use super::client;
use super::inbox::print_json;
use super::print::{print_message, short_name, state_name};
use crate::cli::{format_time, rpc_error, ConnectArgs};
use crate::pb::json;
use crate::pb::v1::{
    message, DeliveryState, GetDeliveryStatusRequest, GetMessageRequest, Message, MessageKind,
};
use crate::text::{self, line};

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

/// `puente status`.
///
/// # Errors
/// Connection failures or the exchange's refusal.
pub(crate) async fn status(args: MessageArgs) -> anyhow::Result<()> {
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
pub(crate) async fn get(args: GetArgs) -> anyhow::Result<()> {
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
pub(super) const MAX_NUMBERED_NAMES: usize = 1000;

/// Writes an attachment into `dir` under a name of its own and returns its path. The name the
/// sender gave is never trusted ([`text::file_name`]: one visible component, not hidden, not a
/// device), and nothing already in `dir` is replaced or followed: the file is created with
/// `create_new` (O_CREAT | O_EXCL), which fails on any existing entry — a file, a directory,
/// or a symbolic link, dangling or not, whose target is then never opened — and the next name
/// is tried: `report.txt`, `report (2).txt`, `report (3).txt`... The file is readable by its
/// owner only, as the message was.
pub(super) fn save_attachment(dir: &Path, sent_name: &str, data: &[u8]) -> anyhow::Result<PathBuf> {
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
pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<()> {
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
