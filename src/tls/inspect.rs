//! What a server presented in a TLS handshake, and which check refused it.
//!
//! `Recording` stands in front of the verifier of any `ssl_mode` and keeps the chain it was
//! shown, so `sluice doctor` can print the certificate of a server it refused. `HandshakeFailure`
//! turns rustls' errors into the words an operator needs (unknown issuer, wrong name, expired)
//! and the fix for each; loads use the same words in their errors.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The certificates a server presented in the last handshake of an inspecting configuration.
#[derive(Debug, Default)]
pub struct PeerRecord {
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl PeerRecord {
    /// The server's own certificate, parsed; `None` before a handshake got that far, or when
    /// the certificate cannot be parsed.
    pub fn end_entity(&self) -> Option<CertificateInfo> {
        let chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        chain.first().and_then(|der| CertificateInfo::parse(der))
    }

    fn keep(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        chain.clear();
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
    }
}

/// A verifier that records the chain, then lets the mode's verifier decide.
#[derive(Debug)]
pub(super) struct Recording {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) record: Arc<PeerRecord>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.record.keep(end_entity, intermediates);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The facts of a certificate an operator checks: who it is for, who issued it, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's distinguished name, e.g. `CN=fe.example.com`.
    pub subject: String,
    /// The issuer's distinguished name, e.g. `C=US, O=Let's Encrypt, CN=R11`.
    pub issuer: String,
    /// The subject alternative names: DNS names as written, IP addresses in their usual form.
    pub names: Vec<String>,
    /// Start and end of validity, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertificateInfo {
    /// Parses a DER certificate; `None` when it is not one.
    pub fn parse(der: &[u8]) -> Option<CertificateInfo> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => names.push(format_ip(bytes)),
                    _ => {}
                }
            }
        }
        Some(CertificateInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Whole days from `now` to the end of validity; negative once expired.
    pub fn days_to_expiry(&self, now: SystemTime) -> i64 {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        };
        (self.not_after - now).div_euclid(86_400)
    }
}

fn format_ip(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ipv4Addr::from(v4).to_string()
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ipv6Addr::from(v6).to_string()
    } else {
        format!("(IP of {} bytes)", bytes.len())
    }
}

/// Which check of a TLS handshake failed, in an operator's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The chain does not lead to a trusted CA (`ca_file`, or the system roots).
    UnknownIssuer,
    /// The certificate is not issued for the host (or IP address) of the URL.
    WrongName,
    /// The certificate's validity ended.
    Expired,
    /// The certificate's validity has not begun (or a clock is wrong).
    NotYetValid,
    /// The server wants a client certificate and none was configured.
    ClientCertificateRequired,
    /// The server refused the client certificate; holds the alert.
    ClientCertificateRefused(String),
    /// Anything else, as rustls words it.
    Other(String),
}

impl HandshakeFailure {
    /// The failure a rustls error means.
    pub fn of(err: &rustls::Error) -> HandshakeFailure {
        use CertificateError as C;
        match err {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::UnknownIssuer => HandshakeFailure::UnknownIssuer,
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    HandshakeFailure::WrongName
                }
                C::Expired | C::ExpiredContext { .. } => HandshakeFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => HandshakeFailure::NotYetValid,
                other => HandshakeFailure::Other(format!("invalid peer certificate: {other:?}")),
            },
            rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
            ) => HandshakeFailure::ClientCertificateRequired,
            rustls::Error::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied),
            ) => HandshakeFailure::ClientCertificateRefused(format!("{alert:?}")),
            other => HandshakeFailure::Other(other.to_string()),
        }
    }

    /// What an operator can do about it, in words.
    pub fn fix(&self) -> &'static str {
        match self {
            HandshakeFailure::UnknownIssuer => {
                "set `cluster.ca_file` to the PEM of the CA that issued the server's certificate"
            }
            HandshakeFailure::WrongName => {
                "use a host name the certificate names in `cluster.endpoint` (or in \
                 `cluster.redirect_map`), or set `ssl_mode = \"verify_ca\"` to accept any name"
            }
            HandshakeFailure::Expired => "renew the server's certificate",
            HandshakeFailure::NotYetValid => "check the clocks of this host and of the server",
            HandshakeFailure::ClientCertificateRequired => {
                "set `cluster.client_cert` and `cluster.client_key` to a certificate the \
                 server trusts"
            }
            HandshakeFailure::ClientCertificateRefused(_) => {
                "use a client certificate issued by a CA the server trusts, and not expired"
            }
            HandshakeFailure::Other(_) => {
                "check that the endpoint speaks TLS on that port and that `ssl_mode` fits it"
            }
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::UnknownIssuer => {
                f.write_str("unknown issuer: the server's certificate is not from a trusted CA")
            }
            HandshakeFailure::WrongName => {
                f.write_str("wrong name: the server's certificate is not issued for this host")
            }
            HandshakeFailure::Expired => f.write_str("expired: the server's certificate expired"),
            HandshakeFailure::NotYetValid => {
                f.write_str("not yet valid: the server's certificate is not valid yet")
            }
            HandshakeFailure::ClientCertificateRequired => {
                f.write_str("the server requires a client certificate")
            }
            HandshakeFailure::ClientCertificateRefused(alert) => {
                write!(f, "the server refused the client certificate ({alert})")
            }
            HandshakeFailure::Other(text) => f.write_str(text),
        }
    }
}

/// The handshake failure somewhere in `err`'s chain of causes, looking inside `io::Error`s
/// (whose `source` skips the error they wrap).
pub fn find_handshake_failure(err: &(dyn StdError + 'static)) -> Option<HandshakeFailure> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(HandshakeFailure::of(tls));
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(found) = find_handshake_failure(inner)
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    #[test]
    fn reads_names_issuer_and_expiry() {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["fe.example.com".to_owned(), "10.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fe.example.com");
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        let info = CertificateInfo::parse(cert.der()).unwrap();
        assert_eq!(info.names, vec!["fe.example.com", "10.0.0.1"]);
        assert_eq!(info.subject, "CN=fe.example.com");
        assert_eq!(info.issuer, "CN=fe.example.com");
        let jan_1_2031 = UNIX_EPOCH + std::time::Duration::from_secs(1_924_992_000);
        assert_eq!(info.days_to_expiry(jan_1_2031), 1);
        let later = jan_1_2031 + std::time::Duration::from_secs(3 * 86_400);
        assert_eq!(info.days_to_expiry(later), -2);
    }

    #[test]
    fn io_errors_are_looked_into() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        assert_eq!(
            find_handshake_failure(&io),
            Some(HandshakeFailure::UnknownIssuer)
        );
        let plain = io::Error::other("nothing to do with tls");
        assert_eq!(find_handshake_failure(&plain), None);
    }
}
