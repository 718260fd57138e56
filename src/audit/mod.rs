//! The verifiable audit log: every exchange event as a leaf of an RFC 9162 Merkle tree
//! ([`merkle`]), stored by the store's writer in the same atomic batch as the change it records,
//! and committed to by checkpoints signed as C2SP signed notes with the log's own Ed25519 key
//! ([`note`]). Served to auditors and agencies by [`service::AuditService`].

pub mod export;
pub mod merkle;
pub mod note;
pub mod service;
pub mod verify;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::identity::{Caller, Peer, Role};
use crate::pb::v1::{AuditAction, AuditEvent};
use crate::store::records::MessageRecord;
use crate::store::{now_micros, Store, StoreError};
use merkle::Hash;
use note::{Checkpoint, LogKey, NoteError, NoteVerifier};

/// Encoding version written in every entry.
pub const EVENT_VERSION: u32 = 1;
/// How often the signer looks for growth to sign.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// File name of the log's signing key in the data directory.
pub const LOG_KEY_FILE: &str = "audit-log.key";

/// Why the audit log cannot be opened or signed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key or a checkpoint is unusable.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The stored hashes do not give the root of a signed checkpoint.
    #[error("audit log integrity: {0}")]
    Integrity(String),
}

/// Every agency an entry concerns: actor, sender, recipients, subject.
pub fn parties(event: &AuditEvent) -> BTreeSet<&str> {
    [&event.actor_agency, &event.sender, &event.subject_agency]
        .into_iter()
        .chain(event.recipients.iter())
        .map(String::as_str)
        .filter(|party| !party.is_empty())
        .collect()
}

/// An entry for `action` by `caller` (if any); the writer fixes the time and version.
pub fn event(action: AuditAction, caller: Option<&Caller>) -> AuditEvent {
    let mut event = AuditEvent {
        version: EVENT_VERSION,
        time_unix_micros: now_micros(),
        action: action as i32,
        ..AuditEvent::default()
    };
    if let Some(caller) = caller {
        event.actor = caller.id.to_string();
        event.actor_serial = caller.serial.clone();
        if let Role::Agency(agency) = &caller.role {
            event.actor_agency = agency.to_string();
        }
    }
    event
}

/// An entry about a message: who, which message, sender, recipients, topic, handling, digest
/// and size of the content — never the content.
pub fn message_event(
    action: AuditAction,
    caller: Option<&Caller>,
    record: &MessageRecord,
) -> AuditEvent {
    AuditEvent {
        message_id: record.message_id.clone(),
        sender: record.sender.clone(),
        recipients: record.recipients.clone(),
        topic: record.topic,
        handling: record.handling,
        content_sha256: record.content_sha256.clone(),
        content_size: record.body_len,
        ..event(action, caller)
    }
}

/// An entry for a refused call: who (as far as the connection says), which method, why.
pub fn refusal_event(peer: Option<&Peer>, method: &str, reason: &str) -> AuditEvent {
    let caller = peer.and_then(|p| p.caller.as_ref().ok());
    let mut event = event(AuditAction::RequestRefused, caller.map(|c| c.as_ref()));
    event.method = method.to_string();
    event.reason = reason.to_string();
    if let Some(addr) = peer.and_then(|p| p.remote_addr) {
        event.remote_address = addr.to_string();
    }
    event
}

/// An error that says whether it refuses the caller (authentication, authorisation,
/// validation: recorded as REQUEST_REFUSED) or is the server's own failure (not recorded).
pub trait Refusal: std::fmt::Display {
    /// Whether this error refuses the caller.
    fn is_refusal(&self) -> bool;
}

/// Answers a call of `service` (e.g. `puente.v1.ExchangeService`); a refused call is recorded
/// in the audit log first: who (as far as the connection says), which method, why — within
/// the caller's budget of audited calls, else the answer is `RESOURCE_EXHAUSTED` instead.
pub async fn answer<T, E: Refusal + Into<tonic::Status>>(
    store: &Store,
    service: &str,
    method: &str,
    peer: Option<Peer>,
    result: Result<T, E>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let err = match result {
        Ok(value) => return Ok(tonic::Response::new(value)),
        Err(err) => err,
    };
    if err.is_refusal() {
        // Over the caller's budget of audited calls: refused for that instead, not recorded.
        crate::admission::records::charge(peer.as_ref())?;
        let event = refusal_event(
            peer.as_ref(),
            &format!("/{service}/{method}"),
            &err.to_string(),
        );
        if let Err(e) = store.record(vec![event]).await {
            error!(error = %e, "cannot record a refused request in the audit log");
        }
    }
    Err(err.into())
}

/// The log: its identity (origin and key) and the checkpoint signer.
pub struct AuditLog {
    store: Arc<Store>,
    key: LogKey,
    origin: String,
    /// Size and root of the last signed checkpoint. Held across a whole signing, so two
    /// signers can never interleave and sign sizes out of order.
    last_signed: tokio::sync::Mutex<(u64, Hash)>,
    /// False after an integrity failure: nothing more is signed.
    signing: AtomicBool,
}

impl AuditLog {
    /// Opens the log of `store`: loads (or creates) the signing key in `data_dir`, and checks
    /// that the stored hashes still give the root of the latest checkpoint. If they do not,
    /// the log is served read-only and no checkpoint is signed again: a new checkpoint would
    /// hide the tampering.
    ///
    /// # Errors
    /// The key cannot be loaded or created, or the store fails.
    pub fn open(
        store: Arc<Store>,
        data_dir: &Path,
        trust_domain: &str,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let origin = format!("{trust_domain}/puente-audit");
        let key = LogKey::load_or_generate(&data_dir.join(LOG_KEY_FILE), &origin)?;
        let mut log = AuditLog {
            store,
            key,
            origin,
            last_signed: tokio::sync::Mutex::new((0, merkle::empty_root())),
            signing: AtomicBool::new(true),
        };
        match log.verify_latest_checkpoint() {
            Ok(Some(latest)) => {
                *log.last_signed.get_mut() = (latest.size, latest.root);
            }
            Ok(None) => {}
            Err(e) => {
                error!(error = %e, "AUDIT LOG INTEGRITY FAILURE: serving read-only, no more checkpoints will be signed");
                log.signing.store(false, Ordering::Release);
            }
        }
        Ok(Arc::new(log))
    }

    fn verify_latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let Some((_, note)) = self.store.latest_checkpoint()? else {
            return Ok(None);
        };
        let verifier = NoteVerifier::parse(&self.key.verifier_key())?;
        let checkpoint = Checkpoint::parse(verifier.verify(&note)?)?;
        let root = merkle::root(&self.store.audit_hashes(), checkpoint.size)
            .map_err(|e| AuditError::Integrity(e.to_string()))?;
        if root != checkpoint.root {
            return Err(AuditError::Integrity(format!(
                "the stored hashes give root {} for size {}, the signed checkpoint says {}",
                hex::encode(root),
                checkpoint.size,
                hex::encode(checkpoint.root)
            )));
        }
        Ok(Some(checkpoint))
    }

    /// The checkpoint origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verifier key of the log's signing key.
    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    /// The store holding the entries.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Signs and stores a checkpoint for the durable size if the log grew since the last one.
    /// Never signs a smaller size, nor a second root for a size already signed.
    ///
    /// # Errors
    /// Reading hashes or storing the checkpoint failed.
    pub async fn sign_if_grown(&self) -> Result<(), AuditError> {
        if !self.signing.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut last_signed = self.last_signed.lock().await;
        let size = self.store.audit_size();
        if size <= last_signed.0 {
            return Ok(());
        }
        let root = merkle::root(&self.store.audit_hashes(), size)
            .map_err(|e| AuditError::Integrity(e.to_string()))?;
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
        };
        self.store
            .put_checkpoint(size, self.key.sign(&checkpoint.body()))
            .await?;
        *last_signed = (size, root);
        Ok(())
    }

    /// Signs checkpoints every [`CHECKPOINT_INTERVAL`] while the log grows, until `stopping`.
    pub fn spawn_signer(self: &Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let log = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopping.changed() => return,
                }
                if let Err(e) = log.sign_if_grown().await {
                    error!(error = %e, "cannot sign an audit checkpoint");
                }
            }
        });
        info!(origin = %self.origin, verifier_key = %self.verifier_key(), "audit log open");
    }
}
