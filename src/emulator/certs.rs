//! The emulator's own CA and server certificate, made fresh at every start, and the rustls
//! server configuration built from them (ring, HTTP/1.1 only).
//!
//! The CA whose PEM the emulator hands out is always the same one; [`CertKind`] picks which
//! server certificate is presented with it, so tests can show every `ssl_mode` each kind of
//! certificate a cluster may have. With client authentication on, a second CA issues a client
//! certificate and the server refuses connections without it (mutual TLS).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::EmulatorError;

/// Which server certificate the emulator presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CertKind {
    /// Issued by the emulator's CA for `localhost`, `127.0.0.1` and `::1`.
    #[default]
    Good,
    /// The same names, issued by a CA that is never handed out.
    UnknownIssuer,
    /// Issued by the emulator's CA for `wrong.example` only.
    WrongName,
    /// Issued by the emulator's CA for the right names, valid only during 2020.
    Expired,
    /// Issued by the emulator's CA for `127.0.0.1` and `::1` only, no DNS name.
    IpOnly,
}

pub(crate) struct Certs {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) ca_pem: String,
    /// Certificate and key PEM of a client the server accepts, when client auth is on.
    pub(crate) client: Option<ClientIdentity>,
}

/// A client certificate and its key, both PEM.
#[derive(Clone)]
pub(crate) struct ClientIdentity {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// The CA, the server certificate of `kind`, and the acceptor that presents the chain (and, with
/// `client_auth`, demands a client certificate from the client CA).
pub(crate) fn generate(kind: CertKind, client_auth: bool) -> Result<Certs, EmulatorError> {
    let (ca_cert, issuer) = make_ca("sluice emulator CA")?;
    let stranger;
    let (signer_cert, signer) = if kind == CertKind::UnknownIssuer {
        stranger = make_ca("sluice emulator stranger CA")?;
        (&stranger.0, &stranger.1)
    } else {
        (&ca_cert, &issuer)
    };

    let loopback = ["localhost", "127.0.0.1", "::1"];
    let names: &[&str] = match kind {
        CertKind::Good | CertKind::UnknownIssuer | CertKind::Expired => &loopback,
        CertKind::WrongName => &["wrong.example"],
        CertKind::IpOnly => &["127.0.0.1", "::1"],
    };
    let server_key = KeyPair::generate()?;
    let mut server_params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, names[0]);
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    if kind == CertKind::Expired {
        server_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        server_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let server_cert = server_params.signed_by(&server_key, signer)?;

    let chain = vec![server_cert.der().clone(), signer_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;

    let (mut config, client) = if client_auth {
        let (client_ca, client_issuer) = make_ca("sluice emulator client CA")?;
        let mut roots = RootCertStore::empty();
        roots.add(client_ca.der().clone())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| EmulatorError::Tls(rustls::Error::General(e.to_string())))?;
        let config = builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        (config, Some(make_client(&client_issuer)?))
    } else {
        (
            builder.with_no_client_auth().with_single_cert(chain, key)?,
            None,
        )
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Certs {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem: ca_cert.pem(),
        client,
    })
}

fn make_ca(name: &str) -> Result<(Certificate, Issuer<'static, KeyPair>), EmulatorError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert, Issuer::new(params, key)))
}

fn make_client(issuer: &Issuer<'static, KeyPair>) -> Result<ClientIdentity, EmulatorError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sluice emulator client");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    Ok(ClientIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
