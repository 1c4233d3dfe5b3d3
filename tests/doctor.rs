//! `sluice doctor` against the emulator: its lines when all is well, and the failing line (with
//! its fix) for each kind of problem, over real TLS on loopback.

mod common;

use std::fs;
use std::process::Command;

use common::{Env, EnvBuilder, WatchSpec};
use sluice::doctor::{self, Class, Report, Status};
use sluice::emulator::{CertKind, Mode, TableSpec};

/// The report and its text.
async fn diagnose(env: &Env) -> (Report, String) {
    let mut out = Vec::new();
    let report = doctor::diagnose(&env.config(), &mut out).await.unwrap();
    (report, String::from_utf8(out).unwrap())
}

fn builder() -> EnvBuilder {
    EnvBuilder::new().watch(WatchSpec::new("t", 2))
}

fn edit_config(env: &Env, from: &str, to: &str) {
    let text = fs::read_to_string(&env.config_path).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    fs::write(&env.config_path, text.replace(from, to)).unwrap();
}

/// The one FAIL line, which must name `class` and contain each of `words`.
fn assert_fails(report: &Report, text: &str, name: &str, class: Class, words: &[&str]) {
    assert_eq!(report.first_failure(), Some(class), "{text}");
    let failed: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    let line = failed[0].to_string();
    assert_eq!(failed[0].name, name, "{text}");
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("; fix: "), "{line}");
    for word in words {
        assert!(line.contains(word), "`{word}` not in: {line}");
    }
    assert_eq!(
        text.lines().count(),
        report.checks.len(),
        "one line per check"
    );
}

fn names(report: &Report) -> Vec<&str> {
    report.checks.iter().map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_passes_every_check() {
    let env = builder().start().await;
    let (report, text) = diagnose(&env).await;
    assert_eq!(report.first_failure(), None, "{text}");
    assert_eq!(
        names(&report),
        [
            "resolve",
            "connect",
            "tls",
            "credentials",
            "database",
            "table",
            "redirect"
        ],
        "{text}"
    );
    assert!(
        report.checks.iter().all(|c| c.status == Status::Ok),
        "{text}"
    );
    let tls = &report.checks[2].detail;
    assert!(
        tls.starts_with("verify_identity: chain and name verified"),
        "{tls}"
    );
    assert!(tls.contains("issuer CN=sluice emulator CA"), "{tls}");
    assert!(tls.contains("subject CN=localhost"), "{tls}");
    assert!(tls.contains("names localhost, 127.0.0.1, ::1"), "{tls}");
    assert!(tls.contains("expires in "), "{tls}");
    assert!(
        report.checks[5].detail.contains("`db.t` exists, 2 columns"),
        "{text}"
    );
    let be = env.emulator.be_addr().port();
    assert!(
        report.checks[6]
            .detail
            .contains(&format!("https://127.0.0.1:{be}/")),
        "{text}"
    );
    assert!(
        report.checks[6]
            .detail
            .ends_with("reachable, TLS verify_identity"),
        "{text}"
    );
    assert!(
        env.emulator.stats().labels.is_empty(),
        "the doctor loaded nothing"
    );
    assert_eq!(env.commits("t"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_issuer_is_named_with_the_certificate() {
    let env = builder()
        .emulator(|o| o.cert = CertKind::UnknownIssuer)
        .start()
        .await;
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "tls",
        Class::Tls,
        &[
            "verify_identity refused",
            "unknown issuer",
            "issuer CN=sluice emulator stranger CA",
            "`cluster.ca_file`",
        ],
    );
    assert_eq!(
        names(&report),
        ["resolve", "connect", "tls"],
        "nothing past the handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_name_shows_the_names_the_certificate_holds() {
    let env = builder()
        .emulator(|o| o.cert = CertKind::WrongName)
        .start()
        .await;
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "tls",
        Class::Tls,
        &["wrong name", "names wrong.example", "verify_ca"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_says_since_when() {
    let env = builder()
        .emulator(|o| o.cert = CertKind::Expired)
        .start()
        .await;
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "tls",
        Class::Tls,
        &["expired: ", "days ago", "renew the server's certificate"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_passes_with_a_warning() {
    let env = builder()
        .cluster("ssl_mode = \"required\"")
        .emulator(|o| o.cert = CertKind::UnknownIssuer)
        .start()
        .await;
    let (report, text) = diagnose(&env).await;
    assert_eq!(report.first_failure(), None, "{text}");
    let tls = &report.checks[2];
    assert_eq!(tls.status, Status::Warn, "{text}");
    assert!(
        tls.to_string().contains("certificate not verified"),
        "{text}"
    );
    assert!(tls.to_string().contains("verify_identity"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_named() {
    let env = builder().emulator(|o| o.client_auth = true).start().await;
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "tls",
        Class::Tls,
        &["client certificate", "`cluster.client_cert`"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_credentials() {
    let env = builder().start().await;
    fs::write(env.dir.path().join("password"), "not-the-password").unwrap();
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "credentials",
        Class::Credentials,
        &[
            "refused user `root`",
            "Access denied for root@127.0.0.1",
            "password_file",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_and_a_missing_table_are_named() {
    let env = builder()
        .emulator(|o| o.tables = vec![TableSpec::parse("db.other:2").unwrap()])
        .start()
        .await;
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "table",
        Class::Target,
        &["`db.t`: Table [t] does not exists", "create table `db.t`"],
    );

    edit_config(&env, "database = \"db\"", "database = \"nodb\"");
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "database",
        Class::Target,
        &["unknown database, database=nodb", "create database `nodb`"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_to_http_redirect_is_refused_with_the_map_to_write() {
    let env = builder().mode(Mode::Redirect).start().await;
    let (report, text) = diagnose(&env).await;
    let be = format!("127.0.0.1:{}", env.emulator.be_addr().port());
    assert_fails(
        &report,
        &text,
        "redirect",
        Class::Redirect,
        &[
            "redirects to plain http",
            &format!("\"{be}\" = "),
            "[cluster.redirect_map]",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redirect_target_is_named() {
    let env = builder().start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let be = format!("127.0.0.1:{}", env.emulator.be_addr().port());
    edit_config(
        &env,
        "[ledger]",
        &format!("[cluster.redirect_map]\n\"{be}\" = \"127.0.0.1:{closed_port}\"\n\n[ledger]"),
    );
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "redirect",
        Class::Redirect,
        &[
            &format!("mapped to `https://127.0.0.1:{closed_port}/"),
            "cannot connect",
            "[cluster.redirect_map]",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_loads_itself_has_no_redirect_to_check() {
    let env = builder().mode(Mode::Proxy).start().await;
    let (report, text) = diagnose(&env).await;
    assert_eq!(report.first_failure(), None, "{text}");
    assert!(text.contains("the endpoint takes loads itself"), "{text}");
    assert!(
        env.emulator.stats().labels.is_empty(),
        "the probe began nothing: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_the_connection() {
    let env = builder().start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let fe = env.emulator.fe_addr().port();
    edit_config(
        &env,
        &format!("https://localhost:{fe}"),
        &format!("https://127.0.0.1:{port}"),
    );
    let (report, text) = diagnose(&env).await;
    assert_fails(
        &report,
        &text,
        "connect",
        Class::Network,
        &[
            &format!("`127.0.0.1:{port}`"),
            "refused",
            "the port in `cluster.endpoint`",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_exits_non_zero_on_a_failure() {
    let good = builder().start().await;
    let bad = builder()
        .emulator(|o| o.cert = CertKind::Expired)
        .start()
        .await;
    for (env, code, last) in [
        (&good, 0, "doctor: every check passed"),
        (&bad, 1, "doctor: failed (Tls)"),
    ] {
        let config = env.config_path.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["doctor", "--config"])
                .arg(config)
                .env_remove("RUST_LOG")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(code), "{stdout}");
        assert!(stdout.lines().last().unwrap().starts_with(last), "{stdout}");
    }
}
