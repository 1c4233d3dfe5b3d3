//! TLS modes, certificates, mutual TLS, plain http and redirects, against the emulator over
//! real TLS on loopback: every `ssl_mode` meets every kind of certificate.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{Env, EnvBuilder, WatchSpec};
use sluice::config::{Config, SslMode};
use sluice::emulator::{CertKind, Emulator, EmulatorOptions, Mode, TableSpec};
use sluice::upload::{LoadRequest, UploadError, Uploader, Verdict};

const ROWS: &[u8] = b"1,one\n2,two\n3,three\n";

/// An emulator presenting `cert` in `mode`, and a config for it at `ssl_mode`, reached as
/// `host` (`localhost` or `127.0.0.1`).
async fn env(cert: CertKind, mode: Mode, ssl_mode: &str, host: &str) -> Env {
    let env = EnvBuilder::new()
        .mode(mode)
        .watch(WatchSpec::new("t", 2))
        .cluster(&format!("ssl_mode = \"{ssl_mode}\""))
        .emulator(move |o| o.cert = cert)
        .start()
        .await;
    let text = fs::read_to_string(&env.config_path).unwrap();
    let text = text.replace("https://localhost:", &format!("https://{host}:"));
    fs::write(&env.config_path, text).unwrap();
    env
}

/// One load of three rows into `db.t` through `uploader`; the verdict, or the error's text.
async fn load(uploader: &Uploader, label: &str) -> Result<Verdict, (String, UploadError)> {
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, ROWS).unwrap();
    let headers = vec![("column_separator".to_owned(), ",".to_owned())];
    let request = LoadRequest {
        database: "db",
        table: "t",
        label,
        headers: &headers,
        file: Arc::new(file),
        len: ROWS.len() as u64,
        sha256: None,
    };
    match tokio::time::timeout(Duration::from_secs(30), uploader.load(&request))
        .await
        .expect("load timed out")
    {
        Ok(reply) => Ok(reply.verdict()),
        Err(err) => Err((err.to_string(), err)),
    }
}

/// `None` for "accepted and loaded", or the words the refusal must contain.
async fn outcome(cert: CertKind, ssl_mode: &str, host: &str) -> Option<String> {
    let env = env(cert, Mode::RedirectTlsBe, ssl_mode, host).await;
    let uploader = Uploader::new(&env.config().cluster).unwrap();
    match load(&uploader, "tls_matrix").await {
        Ok(verdict) => {
            assert_eq!(
                verdict,
                Verdict::Loaded {
                    publish_pending: false
                }
            );
            assert_eq!(env.rows("t"), 3);
            None
        }
        Err((text, err)) => {
            assert!(matches!(err, UploadError::Tls { .. }), "{text}");
            assert!(!err.body_may_have_been_sent(), "{text}");
            assert_eq!(env.rows("t"), 0);
            assert!(
                env.emulator.stats().labels.is_empty(),
                "a refused handshake loads nothing"
            );
            Some(text)
        }
    }
}

/// Every mode against every certificate: accepted (`None`) or refused with these words.
const MATRIX: &[(&str, CertKind, &str, Option<&str>)] = &[
    ("verify_identity", CertKind::Good, "localhost", None),
    ("verify_identity", CertKind::Good, "127.0.0.1", None),
    (
        "verify_identity",
        CertKind::UnknownIssuer,
        "localhost",
        Some("unknown issuer"),
    ),
    (
        "verify_identity",
        CertKind::WrongName,
        "localhost",
        Some("wrong name"),
    ),
    (
        "verify_identity",
        CertKind::Expired,
        "localhost",
        Some("expired"),
    ),
    (
        "verify_identity",
        CertKind::IpOnly,
        "localhost",
        Some("wrong name"),
    ),
    ("verify_identity", CertKind::IpOnly, "127.0.0.1", None),
    ("verify_ca", CertKind::Good, "localhost", None),
    (
        "verify_ca",
        CertKind::UnknownIssuer,
        "localhost",
        Some("unknown issuer"),
    ),
    ("verify_ca", CertKind::WrongName, "localhost", None),
    ("verify_ca", CertKind::Expired, "localhost", Some("expired")),
    ("verify_ca", CertKind::IpOnly, "localhost", None),
    ("required", CertKind::Good, "localhost", None),
    ("required", CertKind::UnknownIssuer, "localhost", None),
    ("required", CertKind::WrongName, "localhost", None),
    ("required", CertKind::Expired, "localhost", None),
    ("required", CertKind::IpOnly, "localhost", None),
];

async fn run_matrix(mode: &str) {
    for &(ssl_mode, cert, host, expected) in MATRIX.iter().filter(|row| row.0 == mode) {
        let got = outcome(cert, ssl_mode, host).await;
        match (expected, &got) {
            (None, None) => {}
            (Some(words), Some(text)) => {
                assert!(
                    text.contains(words),
                    "{ssl_mode} / {cert:?} / {host}: `{text}` lacks `{words}`"
                );
                assert!(text.contains("fix") || text.contains("set ") || text.contains("renew"));
            }
            _ => panic!("{ssl_mode} / {cert:?} / {host}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_identity_checks_issuer_name_and_dates() {
    run_matrix("verify_identity").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_checks_issuer_and_dates_but_not_the_name() {
    run_matrix("verify_ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_accepts_every_certificate() {
    run_matrix("required").await;
}

#[test]
fn the_matrix_covers_every_mode_and_certificate() {
    let kinds = [
        CertKind::Good,
        CertKind::UnknownIssuer,
        CertKind::WrongName,
        CertKind::Expired,
        CertKind::IpOnly,
    ];
    for mode in ["verify_identity", "verify_ca", "required"] {
        for kind in kinds {
            assert!(
                MATRIX.iter().any(|row| row.0 == mode && row.1 == kind),
                "{mode} / {kind:?} missing"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_fails_the_file_through_the_service_without_loading() {
    let env = env(
        CertKind::UnknownIssuer,
        Mode::RedirectTlsBe,
        "verify_identity",
        "localhost",
    )
    .await;
    common::drop_sample("airlines.csv", &env.landing("t"), "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let summary = env.once().await;
    assert_eq!(summary.loaded, 0, "{summary:?}");
    assert!(!summary.is_clean(), "{summary:?}");
    assert_eq!(env.commits("t"), 0);
}

#[test]
fn a_plain_http_endpoint_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[cluster]\nendpoint = \"http://127.0.0.1:8030\"\nuser = \"u\"\n\
                password_env = \"PW\"\n[[watch]]\ndir = \".\"\ndatabase = \"d\"\ntable = \"t\"\n";
    let env = |name: &str| (name == "PW").then(|| "pw".to_owned());
    let err = Config::parse(text, &dir.path().join("s.toml"), &env).unwrap_err();
    let text_err = err.to_string();
    assert!(text_err.contains("plain http endpoint"), "{text_err}");
    assert!(
        text_err.contains("allow_insecure_http = true"),
        "{text_err}"
    );

    let allowed = text.replace("[cluster]\n", "[cluster]\nallow_insecure_http = true\n");
    let config = Config::parse(&allowed, &dir.path().join("s.toml"), &env).unwrap();
    assert!(config.cluster.allow_insecure_http);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_to_http_redirect_is_refused_unless_allowed() {
    let env = env(
        CertKind::Good,
        Mode::Redirect,
        "verify_identity",
        "localhost",
    )
    .await;
    let uploader = Uploader::new(&env.config().cluster).unwrap();
    let (text, err) = load(&uploader, "to_http").await.unwrap_err();
    assert!(
        matches!(err, UploadError::InsecureRedirect { .. }),
        "{text}"
    );
    assert!(!err.body_may_have_been_sent());
    assert!(text.contains(&format!(
        "http://127.0.0.1:{}/",
        env.emulator.be_addr().port()
    )));
    assert!(
        text.contains("allow_insecure_http") && text.contains("redirect_map"),
        "{text}"
    );
    assert!(env.emulator.stats().labels.is_empty(), "the BE saw nothing");

    let mut cluster = env.config().cluster;
    cluster.allow_insecure_http = true;
    let uploader = Uploader::new(&cluster).unwrap();
    assert_eq!(
        load(&uploader, "to_http").await.unwrap(),
        Verdict::Loaded {
            publish_pending: false
        }
    );
    assert_eq!(env.rows("t"), 3);
}

/// The advertised plain-http BE of one cluster is mapped to a TLS BE that this host reaches:
/// here the TLS BE of a second emulator, whose CA joins the first's in one `ca_file` bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_map_points_an_advertised_be_at_a_reachable_tls_one() {
    let env = env(
        CertKind::Good,
        Mode::Redirect,
        "verify_identity",
        "localhost",
    )
    .await;
    let tls_be = Emulator::start(EmulatorOptions {
        mode: Mode::RedirectTlsBe,
        tables: vec![TableSpec::parse("db.t:2").unwrap()],
        ..EmulatorOptions::default()
    })
    .await
    .unwrap();
    let bundle = format!("{}\n{}", env.emulator.ca_pem(), tls_be.ca_pem());
    fs::write(env.dir.path().join("ca.pem"), bundle).unwrap();
    let advertised = format!("127.0.0.1:{}", env.emulator.be_addr().port());
    let reachable = format!("localhost:{}", tls_be.be_addr().port());
    let mut text = fs::read_to_string(&env.config_path).unwrap();
    text = text.replace(
        "[ledger]",
        &format!("[cluster.redirect_map]\n\"{advertised}\" = \"{reachable}\"\n\n[ledger]"),
    );
    fs::write(&env.config_path, text).unwrap();

    let uploader = Uploader::new(&env.config().cluster).unwrap();
    assert_eq!(
        load(&uploader, "mapped").await.unwrap(),
        Verdict::Loaded {
            publish_pending: false
        }
    );
    assert_eq!(
        env.rows("t"),
        0,
        "nothing went to the advertised plain-http BE"
    );
    assert_eq!(tls_be.stats().tables["db.t"].rows, 3);
    tls_be.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_mutual_tls_needs_the_client_certificate() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("t", 2))
        .emulator(|o| o.client_auth = true)
        .start()
        .await;
    let uploader = Uploader::new(&env.config().cluster).unwrap();
    let (text, err) = load(&uploader, "mtls").await.unwrap_err();
    assert!(text.contains("client certificate"), "{text}");
    assert!(!err.body_may_have_been_sent(), "{text}");
    assert_eq!(env.rows("t"), 0);

    let (cert, key) = env.emulator.client_identity().unwrap();
    fs::write(env.dir.path().join("client.pem"), cert).unwrap();
    let key_path = env.dir.path().join("client.key");
    fs::write(&key_path, key).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    let text = fs::read_to_string(&env.config_path).unwrap().replace(
        "[cluster]\n",
        "[cluster]\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\n",
    );
    fs::write(&env.config_path, text).unwrap();
    let uploader = Uploader::new(&env.config().cluster).unwrap();
    assert_eq!(
        load(&uploader, "mtls").await.unwrap(),
        Verdict::Loaded {
            publish_pending: false
        }
    );
    assert_eq!(env.rows("t"), 3);
}

#[tokio::test]
async fn secret_files_readable_by_others_are_refused() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("t", 2))
        .start()
        .await;
    let password = env.dir.path().join("password");
    fs::set_permissions(&password, fs::Permissions::from_mode(0o640)).unwrap();
    let err = Config::load(&env.config_path).unwrap_err().to_string();
    assert!(err.contains("cluster.password_file"), "{err}");
    assert!(
        err.contains("readable by group or others (mode 640)"),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
    fs::set_permissions(&password, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(Config::load(&env.config_path).is_ok());

    let key_path = env.dir.path().join("client.key");
    fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(env.dir.path().join("client.pem"), env.emulator.ca_pem()).unwrap();
    let text = fs::read_to_string(&env.config_path).unwrap().replace(
        "[cluster]\n",
        "[cluster]\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\n",
    );
    fs::write(&env.config_path, &text).unwrap();
    let err = Config::load(&env.config_path).unwrap_err().to_string();
    assert!(err.contains("cluster.client_key"), "{err}");
    assert!(
        err.contains("client key") && err.contains("chmod 600"),
        "{err}"
    );

    let half = text.replace("client_key = \"client.key\"\n", "");
    fs::write(&env.config_path, half).unwrap();
    let err = Config::load(&env.config_path).unwrap_err().to_string();
    assert!(err.contains("`client_cert` needs `client_key`"), "{err}");
}

#[test]
fn ssl_mode_defaults_to_verify_identity() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[cluster]\nendpoint = \"https://fe.example.com\"\nuser = \"u\"\n\
                password_env = \"PW\"\n[[watch]]\ndir = \".\"\ndatabase = \"d\"\ntable = \"t\"\n";
    let env = |name: &str| (name == "PW").then(|| "pw".to_owned());
    let config = Config::parse(text, &dir.path().join("s.toml"), &env).unwrap();
    assert_eq!(config.cluster.ssl_mode, SslMode::VerifyIdentity);
}
