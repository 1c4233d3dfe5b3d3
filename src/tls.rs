//! The rustls client configuration for each `ssl_mode`, shared by every connection to the cluster.
//!
//! The ring provider is named explicitly rather than taken from a process-wide default, so the
//! choice cannot depend on which crate happened to install one first. Roots come from `ca_file`
//! or, without one, from the system store, so public chains (CelerData's Let's Encrypt) verify
//! out of the box. ALPN offers only `http/1.1`: Stream Load is an HTTP/1.1 protocol. A client
//! certificate (`client_cert`, `client_key`) is offered to clusters behind mutual TLS.
//! `inspect` keeps what a server presented and says which check refused it, for `sluice doctor`
//! and for clear handshake errors.

mod inspect;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

pub use inspect::{CertificateInfo, HandshakeFailure, PeerRecord, find_handshake_failure};

use crate::config::{ClusterConfig, SslMode};

/// Why the TLS configuration could not be built. Each names the file or source involved, never
/// the content of a key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate #{index} in `{path}` is not a usable CA: {cause}")]
    BadCaCertificate {
        path: PathBuf,
        index: usize,
        cause: rustls::Error,
    },
    #[error("`{host}` is not a valid TLS server name")]
    BadServerName { host: String },
    #[error("invalid PEM in `{path}`: {cause}")]
    ParseCaFile {
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },
    #[error("no certificates in `{path}`")]
    NoCertificates { path: PathBuf },
    #[error("no usable system root certificates ({detail}); set `cluster.ca_file`")]
    NoSystemRoots { detail: String },
    #[error("the TLS provider refused the configuration: {0}")]
    Provider(rustls::Error),
    #[error("cannot read CA file `{path}`: {cause}")]
    ReadCaFile { path: PathBuf, cause: io::Error },
    #[error("cannot read `{path}`: {cause}")]
    ReadClientFile { path: PathBuf, cause: io::Error },
    #[error("invalid PEM in `{path}`: {cause}")]
    ParseClientFile {
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },
    #[error("client certificate `{cert}` and key `{key}` do not go together: {cause}")]
    ClientIdentity {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(rustls::client::VerifierBuilderError),
}

/// The client configuration for `cluster.ssl_mode`, with `cluster.ca_file` or the system roots,
/// and the client certificate when `cluster.client_cert` is set.
///
/// - `VerifyIdentity`: chain and name (IP-address hosts are matched against IP SANs).
/// - `VerifyCa`: chain verified, a certificate issued for another name accepted.
/// - `Required`: encrypted, certificate not verified; handshake signatures still checked.
///
/// # Errors
///
/// An unreadable or empty `ca_file`, invalid PEM, a certificate that cannot be a trust anchor,
/// no usable system roots when `ca_file` is not set, or an unusable client certificate or key.
pub fn client_config(cluster: &ClusterConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = server_verifier(cluster, &provider)?;
    build_config(cluster, provider, verifier)
}

/// The same configuration as [`client_config`], with the server's certificates kept in the
/// returned [`PeerRecord`] whatever the verdict, so that `sluice doctor` can show what the
/// server presented and which check refused it.
///
/// # Errors
///
/// As [`client_config`].
pub fn inspecting_config(
    cluster: &ClusterConfig,
) -> Result<(Arc<ClientConfig>, Arc<PeerRecord>), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let record = Arc::new(PeerRecord::default());
    let verifier = Arc::new(inspect::Recording {
        inner: server_verifier(cluster, &provider)?,
        record: record.clone(),
    });
    Ok((build_config(cluster, provider, verifier)?, record))
}

/// Every mode goes through a custom verifier, the webpki one included, so that the recording
/// wrapper of `inspecting_config` can stand in front of any of them.
fn server_verifier(
    cluster: &ClusterConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let webpki = || -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        let roots = load_roots(cluster.ca_file.as_deref())?;
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(TlsError::Verifier)
    };
    Ok(match cluster.ssl_mode {
        SslMode::Required => Arc::new(NoCertificateCheck {
            algorithms: provider.signature_verification_algorithms,
        }),
        SslMode::VerifyCa => Arc::new(AnyNameVerifier { inner: webpki()? }),
        SslMode::VerifyIdentity => webpki()?,
    })
}

fn build_config(
    cluster: &ClusterConfig,
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&cluster.client_cert, &cluster.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_client_chain(cert)?;
            let key_der = load_client_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|cause| TlsError::ClientIdentity {
                    cert: cert.clone(),
                    key: key.clone(),
                    cause,
                })?
        }
        // Validation refuses one without the other, so this is "no client certificate".
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The rustls name of `host` as it appears in a URL: a DNS name, or an IP address (brackets of
/// an IPv6 literal removed), which rustls then checks against the certificate's IP SANs.
///
/// # Errors
///
/// `TlsError::BadServerName` when `host` is neither.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::BadServerName {
        host: host.to_owned(),
    })
}

/// The trusted CAs: every certificate of `ca_file`, or the system store without one.
fn load_roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsError> {
    match ca_file {
        Some(path) => load_ca_file(path),
        None => load_system_roots(),
    }
}

fn load_ca_file(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let certs = read_certificates(path, PemFile::Ca)?;

    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|cause| TlsError::BadCaCertificate {
                path: path.to_owned(),
                index: i + 1,
                cause,
            })?;
    }
    Ok(Arc::new(roots))
}

fn load_system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let mut detail = format!("{ignored} unparsable");
        for err in &found.errors {
            detail.push_str(&format!("; {err}"));
        }
        return Err(TlsError::NoSystemRoots { detail });
    }
    if !found.errors.is_empty() || ignored > 0 {
        // Some stores carry a few odd certificates; the usable rest is still a good store.
        tracing::debug!(
            added,
            ignored,
            errors = found.errors.len(),
            "system roots partly loaded"
        );
    }
    Ok(Arc::new(roots))
}

/// The client certificate chain of `cluster.client_cert`: the certificate first, then any
/// intermediates, as the server needs them.
fn load_client_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_certificates(path, PemFile::Client)
}

/// Which PEM file a certificate list comes from, so that its errors say so.
#[derive(Clone, Copy)]
enum PemFile {
    Ca,
    Client,
}

/// Every certificate of the PEM file at `path`; at least one.
fn read_certificates(
    path: &Path,
    which: PemFile,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path_buf = || path.to_owned();
    let pem = fs::read(path).map_err(|cause| match which {
        PemFile::Ca => TlsError::ReadCaFile {
            path: path_buf(),
            cause,
        },
        PemFile::Client => TlsError::ReadClientFile {
            path: path_buf(),
            cause,
        },
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| match which {
            PemFile::Ca => TlsError::ParseCaFile {
                path: path_buf(),
                cause,
            },
            PemFile::Client => TlsError::ParseClientFile {
                path: path_buf(),
                cause,
            },
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { path: path_buf() });
    }
    Ok(certs)
}

/// The private key of `cluster.client_key` (PKCS#8, PKCS#1 or SEC1 PEM). Its bytes never reach
/// a message: the PEM error names the file and the kind of problem only.
fn load_client_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(|cause| TlsError::ReadClientFile {
        path: path.to_owned(),
        cause,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|cause| TlsError::ParseClientFile {
        path: path.to_owned(),
        cause,
    })
}

/// `verify_ca`: the webpki chain check, with a certificate for another name accepted.
///
/// webpki checks the chain before the name, so a name error means the chain was good; every
/// other error (unknown issuer, expired, bad signature) is still a refusal.
#[derive(Debug)]
struct AnyNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(err) => Err(err),
        }
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

/// `required`: any certificate. The handshake signatures are still verified, so the peer must
/// hold the key of the certificate it shows, and the session keys are not forgeable by a
/// passive observer.
#[derive(Debug)]
struct NoCertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::{Endpoint, Scheme, Secret};

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn make_ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, signed by `ca`, as a rustls server config.
    fn server_config(ca: &Ca, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca.issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn cluster(mode: SslMode, ca_file: Option<PathBuf>) -> ClusterConfig {
        ClusterConfig {
            allow_insecure_http: false,
            ca_file,
            client_cert: None,
            client_key: None,
            endpoint: Endpoint {
                scheme: Scheme::Https,
                host: "localhost".into(),
                port: 443,
            },
            label_keep: Duration::from_secs(3 * 24 * 3600),
            password: Secret::new("pw"),
            redirect_map: BTreeMap::new(),
            ssl_mode: mode,
            timeout: Duration::from_secs(10),
            user: "loader".into(),
        }
    }

    fn write_ca(dir: &tempfile::TempDir, ca: &Ca) -> PathBuf {
        let path = dir.path().join("ca.pem");
        fs::write(&path, &ca.pem).unwrap();
        path
    }

    /// Serves one TLS handshake on loopback and says whether the client accepted it, by
    /// exchanging one byte each way.
    async fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        name: &str,
    ) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serve = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut byte = [0u8; 1];
                if tls.read_exact(&mut byte).await.is_ok() {
                    let _ = tls.write_all(b"y").await;
                    let _ = tls.flush().await;
                }
            }
        });

        let attempt = async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let connector = tokio_rustls::TlsConnector::from(client);
            let mut tls = connector.connect(server_name(name).ok()?, tcp).await.ok()?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            tls.write_all(b"x").await.ok()?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.ok()?;
            Some(())
        };
        let accepted = tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .expect("handshake test timed out")
            .is_some();
        serve.abort();
        accepted
    }

    struct Certs {
        _dir: tempfile::TempDir,
        ca_file: PathBuf,
        good: Arc<rustls::ServerConfig>,
        wrong_name: Arc<rustls::ServerConfig>,
        unknown_issuer: Arc<rustls::ServerConfig>,
    }

    fn certs() -> Certs {
        let ca = make_ca("sluice test ca");
        let stranger = make_ca("someone else");
        let dir = tempfile::tempdir().unwrap();
        Certs {
            ca_file: write_ca(&dir, &ca),
            good: server_config(&ca, &["localhost", "127.0.0.1"]),
            wrong_name: server_config(&ca, &["other.example"]),
            unknown_issuer: server_config(&stranger, &["localhost", "127.0.0.1"]),
            _dir: dir,
        }
    }

    async fn outcomes(mode: SslMode, name: &str) -> (bool, bool, bool) {
        let c = certs();
        let client = client_config(&cluster(mode, Some(c.ca_file.clone()))).unwrap();
        (
            handshake(client.clone(), c.good, name).await,
            handshake(client.clone(), c.wrong_name, name).await,
            handshake(client, c.unknown_issuer, name).await,
        )
    }

    #[tokio::test]
    async fn verify_identity_accepts_only_the_right_name_from_a_known_ca() {
        assert_eq!(
            outcomes(SslMode::VerifyIdentity, "localhost").await,
            (true, false, false)
        );
    }

    #[tokio::test]
    async fn verify_identity_checks_ip_addresses_against_ip_sans() {
        assert_eq!(
            outcomes(SslMode::VerifyIdentity, "127.0.0.1").await,
            (true, false, false)
        );
    }

    #[tokio::test]
    async fn verify_ca_accepts_any_name_from_a_known_ca() {
        assert_eq!(
            outcomes(SslMode::VerifyCa, "localhost").await,
            (true, true, false)
        );
    }

    #[tokio::test]
    async fn required_accepts_any_certificate() {
        let c = certs();
        let client = client_config(&cluster(SslMode::Required, None)).unwrap();
        assert!(handshake(client.clone(), c.good, "localhost").await);
        assert!(handshake(client.clone(), c.wrong_name, "localhost").await);
        assert!(handshake(client, c.unknown_issuer, "localhost").await);
    }

    #[test]
    fn a_bundle_of_several_cas_trusts_each() {
        let (a, b) = (make_ca("a"), make_ca("b"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        fs::write(&path, format!("{}\n{}", a.pem, b.pem)).unwrap();
        let roots = load_ca_file(&path).unwrap();
        assert_eq!(roots.len(), 2);
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.pem");
        let err = client_config(&cluster(SslMode::VerifyIdentity, Some(path))).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("cannot read CA file `"), "{text}");
        assert!(text.contains("absent.pem`"), "{text}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pem");
        fs::write(&path, "just some text\n").unwrap();
        let err = client_config(&cluster(SslMode::VerifyCa, Some(path))).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { .. }));
        assert!(err.to_string().starts_with("no certificates in `"), "{err}");
        assert!(err.to_string().ends_with("x.pem`"), "{err}");
    }

    #[test]
    fn a_ca_file_with_broken_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pem");
        fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(&cluster(SslMode::VerifyIdentity, Some(path))).unwrap_err();
        assert!(err.to_string().starts_with("invalid PEM in `"), "{err}");
    }

    #[test]
    fn a_ca_file_holding_a_non_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.pem");
        fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(&cluster(SslMode::VerifyIdentity, Some(path))).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("certificate #1 in `"), "{text}");
        assert!(text.contains("junk.pem` is not a usable CA"), "{text}");
    }

    #[test]
    fn required_needs_no_roots() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.pem");
        assert!(client_config(&cluster(SslMode::Required, Some(absent))).is_ok());
    }

    #[test]
    fn system_roots_include_lets_encrypt() {
        // CelerData's endpoints use Let's Encrypt chains; they must verify without a ca_file.
        let roots = load_system_roots().unwrap();
        let isrg = roots.roots.iter().any(|ta| {
            ta.subject
                .as_ref()
                .windows(12)
                .any(|w| w == b"ISRG Root X1")
        });
        assert!(isrg, "ISRG Root X1 not among {} system roots", roots.len());
        assert!(client_config(&cluster(SslMode::VerifyIdentity, None)).is_ok());
    }

    #[test]
    fn server_names_accept_hosts_and_ip_literals() {
        assert!(matches!(
            server_name("fe.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("10.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("not a host").is_err());
    }
}
