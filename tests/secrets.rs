//! The password never shows: every log line of real loads at trace level (and of refusals,
//! the doctor and the warnings of weak transports) is searched for it, in clear and in the
//! base64 of the Authorization header; so are errors, `Debug` output and the ledger export.
//!
//! The subscriber is global for this test binary, because the service's tasks run on other
//! threads; every test here writes into the same buffer, which only makes the search wider.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use common::{EnvBuilder, WatchSpec, drop_sample};
use sluice::emulator::Mode;

const PASSWORD: &str = "Zq9-very-secret-4711";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line written so far by any test of this binary.
fn log_lines() -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    text.lines().map(str::to_owned).collect()
}

fn logs() -> &'static Buffer {
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        buffer
    })
}

/// The forms the password could leak in.
fn forbidden() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        PASSWORD.to_owned(),
        b64.encode(format!("root:{PASSWORD}")),
        b64.encode(PASSWORD),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for secret in forbidden() {
        assert!(!text.contains(&secret), "{what} shows the password: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_in_no_log_line_error_debug_or_ledger() {
    logs();
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .emulator(|o| o.password = PASSWORD.to_owned())
        .start()
        .await;
    drop_sample("airlines.csv", &env.landing("airlines"), "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let summary = env.once().await;
    assert_eq!(summary.loaded, 1, "{summary:?}");

    let config = env.config();
    assert_eq!(
        config.cluster.password.expose(),
        PASSWORD,
        "the test loads for real"
    );
    assert_clean("Config's Debug", &format!("{config:?}"));
    let service = env.service();
    let mut export = Vec::new();
    sluice::audit::export_jsonl(service.ledger(), &mut export).unwrap();
    assert_clean("the ledger export", &String::from_utf8_lossy(&export));
    let uploader = sluice::upload::Uploader::new(&config.cluster).unwrap();
    assert_clean("Uploader's Debug", &format!("{uploader:?}"));

    let mut report = Vec::new();
    sluice::doctor::diagnose(&config, &mut report)
        .await
        .unwrap();
    assert_clean("the doctor's report", &String::from_utf8_lossy(&report));

    // A refused password: the errors and the lines about it.
    let mut wrong = config.cluster.clone();
    wrong.password = sluice::config::Secret::new(format!("{PASSWORD}-wrong"));
    let uploader = sluice::upload::Uploader::new(&wrong).unwrap();
    let err = uploader.label_state("db", "x").await.unwrap_err();
    assert_clean("an auth error", &format!("{err} {err:?}"));

    let lines = log_lines();
    assert!(
        lines.len() > 50,
        "trace logging is on: {} lines",
        lines.len()
    );
    assert!(lines.iter().any(|l| l.contains("TRACE")), "no trace line");
    for line in &lines {
        assert_clean("a log line", line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_transports_are_warned_of_at_every_start() {
    logs();
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .mode(Mode::Redirect)
        .cluster("ssl_mode = \"required\"\nallow_insecure_http = true")
        .start()
        .await;
    let port = env.emulator.fe_addr().port();
    let warnings = |needle: &str| {
        log_lines()
            .iter()
            .filter(|l| l.contains("WARN") && l.contains(needle) && l.contains(&port.to_string()))
            .count()
    };
    for _ in 0..2 {
        drop(env.service());
    }
    assert_eq!(warnings("ssl_mode = \"required\""), 2);
    assert_eq!(warnings("allow_insecure_http = true"), 2);

    // And the load they warn about works, through the plain-http BE.
    drop_sample("airlines.csv", &env.landing("airlines"), "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(env.once().await.loaded, 1);
}
