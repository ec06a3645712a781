//! What a failed TLS session is called: a short reason for code and a message that says
//! what happened in the words an operator would search for.

use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};

/// A TLS failure, carried inside the `io::Error` that ends the session (the Python edge
/// turns it into `hamanet.TLSError` with this `reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    /// A short constant: `UNKNOWN_CA`, `CERT_EXPIRED`, `HOSTNAME_MISMATCH`,
    /// `PEER_CERT_REQUIRED`, `NO_COMMON_PROTOCOL`, `NO_ALPN`, `NOT_TLS`, `PEER_ALERT`,
    /// `EOF_IN_HANDSHAKE`, `TRUNCATED`, `BAD_CERTIFICATE` or `PROTOCOL`.
    pub reason: &'static str,
    /// What failed.
    pub message: String,
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsFailure {}

impl From<TlsFailure> for std::io::Error {
    fn from(failure: TlsFailure) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, failure)
    }
}

impl TlsFailure {
    fn new(reason: &'static str, message: impl Into<String>) -> TlsFailure {
        TlsFailure {
            reason,
            message: message.into(),
        }
    }

    /// The TCP connection ended without the peer's `close_notify`: what came before may
    /// be cut short, and nothing says whether it was.
    pub fn truncated() -> TlsFailure {
        TlsFailure::new(
            "TRUNCATED",
            "the peer closed the connection without a TLS close_notify: the data \
             received may be truncated",
        )
    }

    /// The TCP connection ended before the handshake finished.
    pub fn eof_in_handshake() -> TlsFailure {
        TlsFailure::new(
            "EOF_IN_HANDSHAKE",
            "the peer closed the connection during the TLS handshake",
        )
    }

    /// Names what rustls reported. `first_bytes` are the first the peer sent, which tell
    /// a peer that does not speak TLS at all (plain HTTP on a TLS port).
    pub fn from_rustls(err: &Error, first_bytes: &[u8]) -> TlsFailure {
        let not_tls = matches!(first_bytes.first(), Some(byte) if !(20..=24).contains(byte));
        if not_tls {
            let text: String = first_bytes
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            let looks_http = first_bytes.iter().take(3).all(u8::is_ascii_uppercase);
            let hint = if looks_http {
                " (it looks like plain HTTP: the client used http:// on a TLS port)"
            } else {
                ""
            };
            return TlsFailure::new(
                "NOT_TLS",
                format!("the peer does not speak TLS: it began with {text:?}{hint}"),
            );
        }
        match err {
            Error::InvalidCertificate(cert) => certificate(cert),
            Error::NoCertificatesPresented => TlsFailure::new(
                "PEER_CERT_REQUIRED",
                "the peer presented no certificate, and one is required",
            ),
            Error::PeerIncompatible(incompatible) => no_common_protocol(incompatible),
            Error::NoApplicationProtocol => TlsFailure::new(
                "NO_ALPN",
                "no application protocol (ALPN) in common with the peer",
            ),
            Error::AlertReceived(alert) => peer_alert(*alert),
            other => TlsFailure::new("PROTOCOL", format!("TLS protocol error: {other}")),
        }
    }
}

fn certificate(err: &CertificateError) -> TlsFailure {
    let (reason, what) = match err {
        CertificateError::UnknownIssuer => (
            "UNKNOWN_CA",
            "it is not signed by a trusted CA (unknown issuer)".to_string(),
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            ("CERT_EXPIRED", "it has expired".to_string())
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            ("CERT_NOT_YET_VALID", "it is not valid yet".to_string())
        }
        CertificateError::NotValidForName => (
            "HOSTNAME_MISMATCH",
            "it is not valid for the name asked for".to_string(),
        ),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => (
            "HOSTNAME_MISMATCH",
            format!(
                "it is not valid for {:?} (it names {})",
                expected.to_str(),
                presented.join(", ")
            ),
        ),
        other => ("BAD_CERTIFICATE", format!("{other:?}")),
    };
    TlsFailure::new(
        reason,
        format!("certificate verify failed: the peer's certificate was refused: {what}"),
    )
}

fn no_common_protocol(incompatible: &PeerIncompatible) -> TlsFailure {
    TlsFailure::new(
        "NO_COMMON_PROTOCOL",
        format!(
            "no TLS version, cipher suite or key exchange in common with the peer \
             ({incompatible:?})"
        ),
    )
}

fn peer_alert(alert: AlertDescription) -> TlsFailure {
    let why = match alert {
        AlertDescription::UnknownCA | AlertDescription::BadCertificate => {
            ": it does not trust this side's certificate"
        }
        AlertDescription::CertificateRequired => ": it requires a client certificate",
        AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
            ": nothing in common (versions, cipher suites or key exchange)"
        }
        AlertDescription::NoApplicationProtocol => ": no ALPN protocol in common",
        _ => "",
    };
    TlsFailure::new(
        "PEER_ALERT",
        format!("the peer ended the TLS session with alert {alert:?}{why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_named() {
        let failure = TlsFailure::from_rustls(&Error::DecryptError, b"GET / HT");
        assert_eq!(failure.reason, "NOT_TLS");
        assert!(
            failure.message.contains("plain HTTP"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_handshake_record_is_not_called_not_tls() {
        let err = Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let failure = TlsFailure::from_rustls(&err, &[22, 3, 1]);
        assert_eq!(failure.reason, "UNKNOWN_CA");
    }
}
