//! Why a TLS connection was refused, as the `reason` label of `puente_tls_handshake_failures`:
//! a fixed set, read from the rustls error of a failed handshake.

use std::io;

/// Why a TLS connection was refused: a fixed set, so the label cannot grow without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client certificate was not issued by a CA the exchange trusts: no trusted CA has its
    /// issuer name, or one has and did not sign it (a foreign CA with a trusted CA's name).
    UnknownCa,
    /// The client certificate has expired.
    Expired,
    /// The client certificate is not valid yet.
    NotYetValid,
    /// The client certificate is revoked by a CRL in force.
    Revoked,
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate verified but names no usable identity (no or several SPIFFE IDs,
    /// another trust domain, an unknown role) or lacks the clientAuth usage.
    BadIdentity,
    /// The certificate is unusable otherwise (malformed, unsupported algorithm or extension).
    BadCertificate,
    /// The client did not finish the handshake in time.
    Timeout,
    /// The connection limit was reached: closed as accepted.
    ConnectionLimit,
    /// Anything else: no TLS, an incompatible client, a connection closed mid-handshake.
    Protocol,
}

impl HandshakeFailure {
    pub(super) const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::Revoked,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::BadIdentity,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::ConnectionLimit,
        HandshakeFailure::Protocol,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::BadIdentity => "bad_identity",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ConnectionLimit => "connection_limit",
            HandshakeFailure::Protocol => "protocol",
        }
    }

    /// The reason of a failed `TlsAcceptor::accept`, from the rustls error inside it.
    pub fn of(error: &io::Error) -> HandshakeFailure {
        use rustls::CertificateError as Cert;
        let Some(error) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Protocol;
        };
        match error {
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            rustls::Error::InvalidCertificate(cert) => match cert {
                Cert::UnknownIssuer | Cert::BadSignature => HandshakeFailure::UnknownCa,
                Cert::Expired | Cert::ExpiredContext { .. } => HandshakeFailure::Expired,
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                    HandshakeFailure::NotYetValid
                }
                Cert::Revoked => HandshakeFailure::Revoked,
                Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => {
                    HandshakeFailure::BadIdentity
                }
                _ => HandshakeFailure::BadCertificate,
            },
            _ => HandshakeFailure::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_map_to_fixed_reasons() {
        use rustls::CertificateError as Cert;
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                tls(rustls::Error::InvalidCertificate(Cert::UnknownIssuer)),
                HandshakeFailure::UnknownCa,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::Expired)),
                HandshakeFailure::Expired,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::NotValidYet)),
                HandshakeFailure::NotYetValid,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::Revoked)),
                HandshakeFailure::Revoked,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::InvalidPurpose)),
                HandshakeFailure::BadIdentity,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::BadSignature)),
                HandshakeFailure::UnknownCa,
            ),
            (
                tls(rustls::Error::InvalidCertificate(Cert::BadEncoding)),
                HandshakeFailure::BadCertificate,
            ),
            (
                tls(rustls::Error::NoCertificatesPresented),
                HandshakeFailure::NoCertificate,
            ),
            (
                io::Error::from(io::ErrorKind::UnexpectedEof),
                HandshakeFailure::Protocol,
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(HandshakeFailure::of(&error), reason, "{error}");
        }
    }
}
