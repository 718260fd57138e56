//! The verifiable audit log: every exchange event as a leaf of an RFC 9162 Merkle tree
//! ([`merkle`]), stored by the store's writer in the same atomic batch as the change it records,
//! and committed to by checkpoints signed as C2SP signed notes with the log's own Ed25519 key
//! ([`note`]). Served to auditors and agencies by [`service::AuditService`].

pub(crate) mod entry;
pub mod export;
pub mod merkle;
pub mod note;
pub(crate) mod service;
pub mod verify;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::store::{Store, StoreError};
pub use entry::{event, message_event, parties, EVENT_VERSION};
use merkle::{Hash, MerkleError};
use note::{Checkpoint, LogKey, NoteError, NoteVerifier};

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
    /// The stored hashes do not give a root for the size to check or sign.
    #[error("audit log integrity: {0}")]
    Hashes(#[source] MerkleError),
    /// The stored hashes give another root than the signed checkpoint.
    #[error(
        "audit log integrity: the stored hashes give root {} for size {size}, the signed checkpoint says {}",
        hex::encode(stored),
        hex::encode(signed)
    )]
    RootMismatch {
        /// The checkpoint's tree size.
        size: u64,
        /// The root the stored hashes give.
        stored: Hash,
        /// The root the checkpoint signs.
        signed: Hash,
    },
}

/// The log: its identity (origin and key) and the checkpoint signer.
pub struct AuditLog {
    store: Arc<dyn Store>,
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
    pub async fn open(
        store: Arc<dyn Store>,
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
        match log.verify_latest_checkpoint().await {
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

    async fn verify_latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let Some((_, note)) = self.store.latest_checkpoint().await? else {
            return Ok(None);
        };
        let verifier = NoteVerifier::parse(&self.key.verifier_key())?;
        let checkpoint = Checkpoint::parse(verifier.verify(&note)?)?;
        let root = self.store.audit_root(checkpoint.size).await?;
        if root != checkpoint.root {
            return Err(AuditError::RootMismatch {
                size: checkpoint.size,
                stored: root,
                signed: checkpoint.root,
            });
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
    pub fn store(&self) -> &Arc<dyn Store> {
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
        let size = self.store.audit_size().await?;
        if size <= last_signed.0 {
            return Ok(());
        }
        let root = self.store.audit_root(size).await?;
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
