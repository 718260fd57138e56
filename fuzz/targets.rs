//! What each fuzz target does with its input, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and by `tests/fuzz_regressions.rs`, which replays every committed input in
//! `fuzz/regressions/<target>/` under plain `cargo test`. Every function must return (never
//! panic) whatever the bytes.

use std::sync::{Arc, OnceLock};

use prost::Message as _;
use puente::audit::merkle::{self, Hash};
use puente::audit::note::{Checkpoint, NoteVerifier};
use puente::config::Limits;
use puente::identity::Caller;
use puente::matching::identifiers;
use puente::pb::v1::{IdentifierKind, SendMessageRequest};
use puente::pki::{self, CertificateAuthority, Subject};
use puente::store::records::{MessageRecord, SealedFields};
use puente::store::{DataKeys, Part, Sealed};
use puente::tls::{TlsFiles, TlsState};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as in `fuzz/Cargo.toml` and `fuzz/regressions/`.
pub const TARGETS: [(&str, Target); 9] = [
    ("send_request", send_request),
    ("client_certificate", client_certificate),
    ("csr", csr),
    ("crl", crl),
    ("merkle_proofs", merkle_proofs),
    ("signed_note", signed_note),
    ("identifier", identifier),
    ("journal", journal),
    ("stored_message", stored_message),
];

/// A `SendMessageRequest` as the wire carries it, through the exchange's validation and
/// content rules.
pub fn send_request(data: &[u8]) {
    if let Ok(request) = SendMessageRequest::decode(data) {
        let _ = puente::exchange::validate::validate(request, &Limits::default());
    }
}

/// A DER client certificate, as the TLS layer hands it over, parsed into a caller identity.
pub fn client_certificate(data: &[u8]) {
    let _ = Caller::from_certificate(data, "puente.local");
}

/// A PEM certificate signing request, as `puente admin issue --csr` reads it.
pub fn csr(data: &[u8]) {
    let _ = pki::csr_public_key(&String::from_utf8_lossy(data));
}

/// A PEM CRL applied to a running server's TLS state (as `PublishRevocationList` and the
/// watched `--crl` file do).
pub fn crl(data: &[u8]) {
    let _ = tls_state().apply_crl(data, false);
}

/// Inclusion and consistency proof verification with attacker-chosen sizes, indices and
/// hashes (as `puente audit` verifies what a server sends).
pub fn merkle_proofs(data: &[u8]) {
    let number = |at: usize| {
        data.get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let hashes: Vec<Hash> = data
        .get(16..)
        .unwrap_or_default()
        .chunks_exact(32)
        .map(|chunk| chunk.try_into().unwrap_or([0; 32]))
        .collect();
    let (first, rest) = hashes
        .split_first()
        .map_or(([0; 32], &[][..]), |(f, r)| (*f, r));
    let (second, proof) = rest
        .split_first()
        .map_or(([0; 32], &[][..]), |(s, p)| (*s, p));
    let (m, n) = (number(0), number(8));
    let _ = merkle::verify_inclusion(&first, m, n, proof, &second);
    let _ = merkle::verify_consistency(m, n, proof, &first, &second);
}

/// A signed note and checkpoint body, as an auditor's client checks them.
pub fn signed_note(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (key, note) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(verifier) = NoteVerifier::parse(key) {
        let _ = verifier.verify(note);
    }
    let _ = Checkpoint::parse(note);
}

/// An identifier canonicalised for hit/no-hit matching, for each kind.
pub fn identifier(data: &[u8]) {
    let Some((&kind, value)) = data.split_first() else {
        return;
    };
    let kind = IdentifierKind::try_from(i32::from(kind % 8)).unwrap_or(IdentifierKind::Firearm);
    let _ = identifiers::canonical(kind, &String::from_utf8_lossy(value));
}

/// A TLS state with a fresh CA, made once per process.
fn tls_state() -> &'static Arc<TlsState> {
    static STATE: OnceLock<(tempfile::TempDir, Arc<TlsState>)> = OnceLock::new();
    &STATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let ca = CertificateAuthority::generate("Fuzz CA", 30).expect("CA");
            let server = ca
                .issue(
                    &Subject::Server(vec!["localhost".into()]),
                    "puente.local",
                    30,
                    None,
                )
                .expect("server certificate");
            let path = |name: &str| dir.path().join(name);
            std::fs::write(path("ca.pem"), ca.cert_pem()).expect("write");
            std::fs::write(path("server.pem"), &server.cert_pem).expect("write");
            let key = server.key_pem.expect("a generated key");
            std::fs::write(path("server.key"), key).expect("write");
            let files = TlsFiles {
                cert: path("server.pem"),
                key: path("server.key"),
                client_ca: path("ca.pem"),
                crl: None,
            };
            let state = TlsState::load(files, dir.path()).expect("TLS state");
            (dir, state)
        })
        .1
}

/// The bytes of a commit-journal file, as a start replays them after a crash.
pub fn journal(data: &[u8]) {
    for group in puente::store::decode_journal_groups(data) {
        let _ = group;
    }
}

/// A stored message record as sled returns it, its sealed fields and body opened and decoded as
/// a read does (`Store::message`, `Store::body`).
pub fn stored_message(data: &[u8]) {
    let _ = open_stored_message(data);
}

/// The sealed fields and body of a stored record, if both open with the fixed key and decode.
pub fn open_stored_message(data: &[u8]) -> Option<(SealedFields, SendMessageRequest)> {
    let record = MessageRecord::decode(data).ok()?;
    let keys = fixed_data_keys();
    let fields = Sealed {
        key_id: record.body_key_id.clone(),
        nonce: record.sealed_fields_nonce,
        ciphertext: record.sealed_fields,
    };
    let fields = keys.open(&record.message_id, Part::Fields, fields).ok();
    let body = Sealed {
        key_id: record.body_key_id,
        nonce: record.body_nonce,
        ciphertext: record.body,
    };
    let body = keys.open(&record.message_id, Part::Body, body).ok();
    let fields = SealedFields::decode(fields?.as_slice()).ok();
    let body = SendMessageRequest::decode(body?.as_slice()).ok();
    Some((fields?, body?))
}

/// A keyring whose one key, `fuzz`, is 32 zero bytes: fixed, so that committed inputs can hold
/// bodies sealed with it.
fn fixed_data_keys() -> &'static DataKeys {
    static KEYS: OnceLock<(tempfile::TempDir, DataKeys)> = OnceLock::new();
    &KEYS
        .get_or_init(|| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let dir = tempfile::tempdir().expect("temporary directory");
            let path = dir.path().join("data.keys");
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| {
                    file.write_all(b"fuzz AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
                })
                .expect("write the fixed keyring");
            let keys = DataKeys::load(&path).expect("fixed keyring");
            (dir, keys)
        })
        .1
}
