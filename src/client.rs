//! How a client reaches the exchange: a mutual-TLS channel as a [`ClientProfile`] describes it
//! (used by the CLI's client commands and by `puente bench`).

use std::path::PathBuf;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::ClientProfile;

/// Why a channel to the exchange could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// A certificate or key file of the profile could not be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// Which file: `CA certificate`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address is a URL, not `host:port`.
    #[error("--addr takes host:port, not a URL: {addr}")]
    Url {
        /// The address given.
        addr: String,
    },
    /// The address does not make a URI.
    #[error("invalid server address {addr}")]
    Address {
        /// The address given.
        addr: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The certificates and key do not make a TLS configuration.
    #[error("invalid TLS configuration")]
    Tls(#[source] tonic::transport::Error),
    /// The server could not be reached, or refused the handshake.
    #[error("cannot connect to the exchange at {addr} (is `puente serve` running there, and is your certificate issued by its CA?)")]
    Unreachable {
        /// The address given.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Opens a mutual-TLS channel as described by `profile`.
///
/// # Errors
/// Files cannot be read, or the server cannot be reached or refuses the certificate.
pub(crate) async fn connect(profile: &ClientProfile) -> Result<Channel, ConnectError> {
    let read = |path: &PathBuf, what: &'static str| {
        std::fs::read(path).map_err(|source| ConnectError::Read {
            what,
            path: path.clone(),
            source,
        })
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&profile.ca, "CA certificate")?))
        .identity(Identity::from_pem(
            read(&profile.cert, "client certificate")?,
            read(&profile.key, "client key")?,
        ))
        .domain_name(profile.server_name.clone());
    let addr = || profile.addr.clone();
    if profile.addr.contains("://") {
        return Err(ConnectError::Url { addr: addr() });
    }
    let endpoint = Channel::from_shared(format!("https://{}", profile.addr))
        .map_err(|source| ConnectError::Address {
            addr: addr(),
            source,
        })?
        .tls_config(tls)
        .map_err(ConnectError::Tls)?;
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            addr: addr(),
            source,
        })
}
