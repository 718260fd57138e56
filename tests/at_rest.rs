//! Messages at rest: subjects, content and attachments never reach the data directory in the
//! clear, keys rotate without re-encryption, and an unusable keyring stops the server.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use puente::pb::v1::{Attachment, GetMessageRequest, Region};
use puente::server::ServerError;
use puente::store::{DataKeys, SealingError};
use tonic::Code;

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

const MARKER: &str = "VESSEL-SANTA-MARTA-4471";

/// A message whose subject, text and two attachments (one small, one stored in its own file)
/// carry [`MARKER`].
fn marked_message(client_message_id: &str) -> puente::pb::v1::SendMessageRequest {
    let mut request = text_message(
        client_message_id,
        &["CO-DIJIN"],
        &format!("Container on {MARKER}, 40 kg declared as coffee."),
    );
    request.subject = format!("Cocaine in coffee sacks, {MARKER}");
    request.attachments = vec![
        Attachment {
            filename: "note.txt".into(),
            media_type: "text/plain".into(),
            data: MARKER.as_bytes().to_vec(),
        },
        Attachment {
            filename: "manifest.csv".into(),
            media_type: "text/csv".into(),
            data: MARKER.repeat(4096).into_bytes(),
        },
    ];
    request
}

async fn read(
    pki: &TestPki,
    server: &TestServer,
    id: &str,
) -> Result<puente::pb::v1::Message, tonic::Status> {
    let mut client = pki.agency_client("CO-DIJIN", server.addr).await;
    client
        .get_message(GetMessageRequest {
            message_id: id.to_string(),
        })
        .await
        .map(|response| response.into_inner().message.expect("message"))
}

/// Subjects, content and attachments never reach the disk in the clear.
#[tokio::test]
async fn subjects_content_and_attachments_are_never_on_disk_in_the_clear() {
    let pki = TestPki::new();
    // Outside the server's own temporary directory, which goes when it stops.
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let server = {
        let data_dir = data_dir.clone();
        TestServer::spawn_with(&pki, move |config| config.data_dir = data_dir).await
    };
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let request = marked_message("at-rest-1");
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let sent = es
        .send_message(request.clone())
        .await
        .expect("send")
        .into_inner();

    let entry = first_inbox_entry(&pki, &server, "CO-DIJIN").await;
    let delivered = entry.message.expect("message");
    assert_eq!(delivered.message_id, sent.message_id);
    assert_eq!(delivered.attachments, request.attachments);
    assert_eq!(delivered.subject, request.subject);
    assert_eq!(delivered.content_sha256, content_sha256(&request));
    assert_eq!(
        files_containing(&data_dir, MARKER.as_bytes()),
        Vec::<String>::new(),
        "plain content in the data directory while serving"
    );

    drop(es);
    server
        .stop(Duration::from_secs(1))
        .await
        .expect("clean stop");
    assert_eq!(
        files_containing(&data_dir, MARKER.as_bytes()),
        Vec::<String>::new(),
        "plain content in the data directory after the final flush"
    );
}

/// After a keyring rotation old bodies still open and new ones are sealed with the new key, each
/// record naming its key.
#[tokio::test]
async fn a_rotated_keyring_opens_old_bodies_and_seals_new_ones_with_the_new_key() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_dir, keyring) = (dir.path().join("data"), dir.path().join("data.keys"));
    DataKeys::add_new(&keyring).expect("first key");
    let start = |data_dir: std::path::PathBuf, keyring: std::path::PathBuf| {
        TestServer::spawn_with(&pki, move |config| {
            config.data_dir = data_dir;
            config.data_key = keyring;
        })
    };

    let server = start(data_dir.clone(), keyring.clone()).await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let old = es
        .send_message(marked_message("before-rotation"))
        .await
        .expect("send")
        .into_inner();
    drop(es);
    server.stop(Duration::from_secs(1)).await.expect("stop");

    let new_key = DataKeys::add_new(&keyring).expect("rotate");
    let server = start(data_dir.clone(), keyring.clone()).await;
    let mut es = pki.agency_client("ES-CNP", server.addr).await;
    let new = es
        .send_message(marked_message("after-rotation"))
        .await
        .expect("send")
        .into_inner();
    drop(es);
    for id in [&old.message_id, &new.message_id] {
        read(&pki, &server, id)
            .await
            .expect("readable after rotation");
    }
    server.stop(Duration::from_secs(1)).await.expect("stop");

    // With only the new key left, the new body opens and the old one cannot: each record
    // names the key that sealed it.
    let text = std::fs::read_to_string(&keyring).expect("keyring");
    let only_new: String = text
        .lines()
        .filter(|line| line.starts_with('#') || line.starts_with(&new_key))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&keyring, only_new).expect("write keyring");
    let server = start(data_dir, keyring).await;
    read(&pki, &server, &new.message_id)
        .await
        .expect("sealed with the new key");
    assert_code(read(&pki, &server, &old.message_id).await, Code::Internal);
}

/// The server refuses to start with a data keyring that others can read, or none.
#[tokio::test]
async fn the_server_refuses_to_start_with_an_exposed_or_missing_keyring() {
    use std::os::unix::fs::PermissionsExt;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let exposed = dir.path().join("exposed.keys");
    DataKeys::add_new(&exposed).expect("key");
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let missing = dir.path().join("missing.keys");

    let server = TestServer::spawn_with(&pki, |config| config.data_key = exposed).await;
    assert!(matches!(
        server.stop(Duration::from_secs(1)).await,
        Err(ServerError::DataKeys(SealingError::Exposed(_)))
    ));
    let server = TestServer::spawn_with(&pki, |config| config.data_key = missing).await;
    assert!(matches!(
        server.stop(Duration::from_secs(1)).await,
        Err(ServerError::DataKeys(SealingError::Missing(_)))
    ));
}

/// Every directory under `dir` (itself included) whose mode is not `dir_mode`, and every file
/// whose mode is not `file_mode`, as `path mode` lines.
#[cfg(unix)]
fn wrong_modes(dir: &Path, dir_mode: u32, file_mode: u32) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| {
        std::fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    let mut wrong = Vec::new();
    if mode(dir) != dir_mode {
        wrong.push(format!("{} {:o}", dir.display(), mode(dir)));
    }
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            wrong.extend(wrong_modes(&path, dir_mode, file_mode));
        } else if mode(&path) != file_mode {
            wrong.push(format!("{} {:o}", path.display(), mode(&path)));
        }
    }
    wrong
}

/// Started under umask 022, the real server still creates its data directory 0700 and every
/// directory and file in it owner-only (0700 / 0600): the store, the journal, message bodies,
/// the persisted CRL and the audit signing key — while running and after a clean stop.
#[cfg(unix)]
// Multi-threaded: the dropped clients' connections must close while `terminate` blocks, or
// the server waits out its drain timeout for them.
/// The data directory and everything in it are private to the owner whatever the umask, also after
/// shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_whatever_the_umask() {
    use puente::pb::v1::admin_service_client::AdminServiceClient;
    use puente::pb::v1::PublishRevocationListRequest;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    pki.write_server_files(dir.path());
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "umask 022; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_puente"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(ServerProcess::file_args(dir.path()));
    let server = ServerProcess::spawn(command, "warn", std::process::Stdio::inherit());
    register_agency(&pki, server.addr, "ES-CNP", Region::Eu).await;
    register_agency(&pki, server.addr, "CO-DIJIN", Region::Celac).await;
    // A body large enough to go to objects/, and a CRL the server persists.
    pki.agency_client("ES-CNP", server.addr)
        .await
        .send_message(marked_message("private-modes"))
        .await
        .expect("send");
    AdminServiceClient::new(pki.client_for(&admin_spiffe("root"), server.addr).await)
        .publish_revocation_list(PublishRevocationListRequest {
            crl_pem: pki.crl(&[]),
            ..Default::default()
        })
        .await
        .expect("publish a CRL");
    let data = dir.path().join("data");
    for name in ["store", "journal", "objects", "crls.pem", "audit-log.key"] {
        assert!(data.join(name).exists(), "{name} not created");
    }
    assert_eq!(wrong_modes(&data, 0o700, 0o600), Vec::<String>::new());
    assert!(server.terminate().success());
    assert_eq!(wrong_modes(&data, 0o700, 0o600), Vec::<String>::new());
}
