//! What can stop a bench run: [`BenchError`].

use std::path::PathBuf;

use crate::client::ConnectError;
use crate::directory::DirectoryError;
use crate::identity::IdentityError;
use crate::pki::PkiError;
use crate::server::ServerError;
use crate::store::{SealingError, StoreError};

use super::STALL_TIMEOUT;

/// Why a bench run stopped before its report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// An option no run can measure.
    #[error("--{option} must be {requirement}")]
    Option {
        /// The option (the flag without its dashes).
        option: &'static str,
        /// What it must be.
        requirement: String,
    },
    /// The data directory given holds something already.
    #[error("--data-dir {} is not empty: give a new or empty directory, the bench needs a fresh store", dir.display())]
    DataDirNotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// A file or directory of the run could not be created, written, read or removed.
    #[error("{what}")]
    Io {
        /// What failed, and on which path.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The run's CA, certificates or CRL could not be made or written.
    #[error("{what}")]
    Pki {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// The CA issued a certificate without generating its key.
    #[error("the CA issued a certificate without generating its key ({stem})")]
    MissingKey {
        /// The certificate's file stem.
        stem: String,
    },
    /// The run's own identities (agency ids, certificates) do not parse.
    #[error("{what}")]
    Identity {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: IdentityError,
    },
    /// The run's own certificate is not PEM.
    #[error("the bench's own certificate does not parse")]
    Certificate(#[source] rustls_pki_types::pem::Error),
    /// The run's data keyring could not be made or loaded.
    #[error("{what}")]
    DataKeys {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: SealingError,
    },
    /// The store could not be opened outside the server.
    #[error("{what}")]
    Store {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The directory could not be loaded, or an agency registered.
    #[error("{what}")]
    Directory {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: DirectoryError,
    },
    /// A listening socket for a server could not be opened.
    #[error("{what}")]
    Listen {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server of the run stopped with an error.
    #[error("the server failed")]
    Server(#[source] ServerError),
    /// A connection failed because the server had stopped with this error.
    #[error("the server stopped")]
    ServerStopped(#[source] ServerError),
    /// A connection failed because the server had stopped, without an error.
    #[error("the server stopped")]
    ServerExited(#[source] ConnectError),
    /// A connection to a running server failed.
    #[error(transparent)]
    Connect(ConnectError),
    /// The server did not start again after its stop.
    #[error("the server failed to restart")]
    Restart(#[source] Box<BenchError>),
    /// A call was refused or failed.
    #[error("{what}")]
    Call {
        /// Which call.
        what: String,
        /// The answer.
        #[source]
        status: tonic::Status,
    },
    /// A reader stopped receiving the messages it was owed.
    #[error("{agency} received {received} of its {owed} messages, then nothing for {:?}: the server stopped delivering", STALL_TIMEOUT)]
    Stalled {
        /// The reading agency.
        agency: String,
        /// Messages it received.
        received: u64,
        /// Messages sent to it.
        owed: u64,
    },
    /// An inbox stream ended, or delivered something else than a bench message.
    #[error("{0}")]
    Delivery(String),
    /// The run was abandoned while a reader waited for its count.
    #[error("the bench stopped before its senders were done")]
    Abandoned,
    /// The audit log holds nothing to prove.
    #[error("the audit log is empty: nothing to prove")]
    EmptyAuditLog,
    /// A proof could not be computed from the stored hashes.
    #[error("a proof could not be computed")]
    Proof(#[source] crate::store::StoreError),
    /// A task of the run panicked.
    #[error("{what} panicked")]
    Panicked {
        /// Which task.
        what: &'static str,
        /// The panic.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl BenchError {
    /// What `map_err` takes for a failed call: `what` names the call (made into a `String` only
    /// if it fails).
    pub(super) fn call(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> BenchError {
        move |status| BenchError::Call {
            what: what.into(),
            status,
        }
    }
}
