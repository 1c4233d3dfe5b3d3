//! What operators see: the metrics `run` serves (a strict parse of the text format, and its
//! counters against the ledger), the `[metrics]` rules, and the progress of `once` on a
//! pseudo-terminal and off one.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{EnvBuilder, WatchSpec, files_in, wait_until};
use sluice::config::Config;
use sluice::ledger::{Ledger, Status};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// One sample of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format strictly: every sample belongs to a family whose `TYPE`
/// came first, counters end in `_total`, no sample repeats, label values are well escaped.
fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let is_name = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    for (number, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: `{line}`", number + 1);
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| at("bad TYPE"))?;
            if !is_name(name) || !["counter", "gauge", "untyped"].contains(&kind) {
                return Err(at("bad TYPE"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("counter without _total"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(at("TYPE twice"));
            }
            if samples.iter().any(|s| s.name == name) {
                return Err(at("TYPE after samples"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').ok_or_else(|| at("bad HELP"))?;
            if !is_name(name) {
                return Err(at("bad HELP"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(at("unexpected line"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = value.parse().map_err(|_| at("bad value"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                (name, parse_labels(body).map_err(|why| at(&why))?)
            }
        };
        if !is_name(name) {
            return Err(at("bad name"));
        }
        if !types.contains_key(name) {
            return Err(at("sample before its TYPE"));
        }
        if samples.iter().any(|s| s.name == name && s.labels == labels) {
            return Err(at("sample twice"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn parse_labels(body: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return Err("label value not quoted".into());
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    _ => return Err("bad escape".into()),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            Some(',') | None => {}
            Some(_) => return Err("junk after label".into()),
        }
    }
    Ok(labels)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn drop_file(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.part"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn the_parser_refuses_what_prometheus_refuses() {
    assert!(
        parse_metrics("# TYPE a counter\na 1\n").is_err(),
        "counter without _total"
    );
    assert!(parse_metrics("a 1\n").is_err(), "no TYPE");
    assert!(parse_metrics("# TYPE a gauge\na{x=\"1} 1\n").is_err());
    assert!(parse_metrics("# TYPE a gauge\na 1\na 2\n").is_err());
    assert!(parse_metrics("# TYPE a gauge\na one\n").is_err());
    let ok = parse_metrics("# TYPE a gauge\na{x=\"q\\\"\",y=\"2\"} 1.5\n").unwrap();
    assert_eq!(ok[0].labels["x"], "q\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_metrics_whose_counters_match_the_ledger() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut text = fs::read_to_string(&env.config_path).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten = \"{address}\"\n"));
    fs::write(&env.config_path, text).unwrap();

    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&env.config_path)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let landing = env.landing("airlines");
    for i in 0..3 {
        drop_file(
            &landing,
            &format!("f{i}.csv"),
            &format!("carrier,name\nC{i},N {i}\n"),
        );
    }
    drop_file(&landing, "copy.csv", "carrier,name\nC0,N 0\n");
    let done = landing.join("done");
    let all_done = wait_until(Duration::from_secs(30), || files_in(&done).len() == 4).await;
    let answer = tokio::task::block_in_place(|| http_get(address, "/metrics"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(all_done, "{:?}", files_in(&done));
    assert!(status.success());

    let answer = answer.expect("metrics answered");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let samples = parse_metrics(body).unwrap_or_else(|why| panic!("{why}\n{body}"));

    let ledger = Ledger::open(&env.config().ledger.path).unwrap();
    let records: Vec<_> = ledger.records().map(Result::unwrap).collect();
    let loaded: Vec<_> = records
        .iter()
        .filter(|r| r.status == Status::Loaded)
        .collect();
    let duplicates = records
        .iter()
        .filter(|r| r.status == Status::Duplicate)
        .count();
    assert_eq!((loaded.len(), duplicates), (3, 1));
    let files = "sluice_files_total";
    assert_eq!(value(&samples, files, &[("outcome", "loaded")]), 3.0);
    assert_eq!(value(&samples, files, &[("outcome", "duplicate")]), 1.0);
    assert_eq!(value(&samples, files, &[("outcome", "rejected")]), 0.0);
    assert_eq!(
        value(&samples, "sluice_ledger_records", &[]),
        records.len() as f64
    );
    let rows: u64 = loaded.iter().map(|r| r.rows_loaded.unwrap()).sum();
    assert_eq!(
        value(&samples, "sluice_loaded_rows_total", &[]),
        rows as f64
    );
    assert_eq!(rows, env.rows("airlines"));
    let bytes: u64 = loaded.iter().map(|r| r.bytes).sum();
    assert_eq!(
        value(&samples, "sluice_loaded_bytes_total", &[]),
        bytes as f64
    );
    let attempts: usize = records.iter().map(|r| r.attempts.len()).sum();
    let counted: f64 = samples
        .iter()
        .filter(|s| s.name == "sluice_attempts_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(counted, attempts as f64);
    assert_eq!(value(&samples, "sluice_loads_in_flight", &[]), 0.0);
    assert_eq!(value(&samples, "sluice_files_waiting", &[]), 0.0);
    let last = value(&samples, "sluice_last_success_timestamp_seconds", &[]);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - last < 60.0 && last <= now, "{last} vs {now}");
}

#[test]
fn metrics_listen_is_a_loopback_address_with_a_port() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("in")).unwrap();
    let parse = |listen: &str| {
        let text = format!(
            "[cluster]\nendpoint = \"https://fe.example.com\"\nuser = \"u\"\n\
             password_env = \"PW\"\n\n[metrics]\nlisten = \"{listen}\"\n\n\
             [[watch]]\ndir = \"in\"\ndatabase = \"d\"\ntable = \"t\"\n"
        );
        Config::parse(&text, &dir.path().join("sluice.toml"), &|_| {
            Some("pw".into())
        })
    };
    for (listen, want) in [
        ("127.0.0.1:9833", "127.0.0.1:9833"),
        ("[::1]:9833", "[::1]:9833"),
        ("localhost:9833", "127.0.0.1:9833"),
    ] {
        let config = parse(listen).unwrap();
        assert_eq!(
            config.metrics.listen,
            Some(want.parse().unwrap()),
            "{listen}"
        );
    }
    for (listen, why) in [
        ("0.0.0.0:9833", "not a loopback address"),
        ("192.0.2.1:9833", "not a loopback address"),
        ("127.0.0.1", "not an address and port"),
        ("127.0.0.1:0", "port other than 0"),
    ] {
        let message = parse(listen).unwrap_err().to_string();
        assert!(message.contains("metrics.listen"), "{message}");
        assert!(message.contains(why), "{listen}: {message}");
    }
}

fn has_script() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!("skipped: `script` (util-linux) is not installed, no pseudo-terminal");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_on_a_terminal_draws_a_bar_and_a_table_and_plain_lines_elsewhere() {
    if !has_script() {
        return;
    }
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .load("max_in_flight = 1")
        .load_delay(Duration::from_millis(400))
        .start()
        .await;
    let landing = env.landing("airlines");
    for i in 0..4 {
        drop_file(
            &landing,
            &format!("t{i}.csv"),
            &format!("carrier,name\nT{i},N {i}\n"),
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    // `script` runs the command on a new pseudo-terminal and copies what it shows.
    let command = format!("{BIN} once --config {}", env.config_path.display());
    let out = tokio::task::block_in_place(|| {
        Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(screen.contains("\r\x1b[2K["), "no bar: {screen:?}");
    assert!(screen.contains("/4 files"), "{screen:?}");
    assert!(screen.contains("/s"), "{screen:?}");
    assert!(
        screen.contains(" left") || screen.contains("estimating"),
        "{screen:?}"
    );
    assert!(
        screen.contains("outcome           files"),
        "no table: {screen:?}"
    );
    assert!(screen.contains("loaded                4"), "{screen:?}");
    assert!(screen.contains("all done"), "{screen:?}");

    // Off a terminal: no escape codes, the one-line summary.
    for i in 4..6 {
        drop_file(
            &landing,
            &format!("t{i}.csv"),
            &format!("carrier,name\nT{i},N {i}\n"),
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .args(["once", "--config"])
            .arg(&env.config_path)
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stdout.contains('\x1b'),
        "{stderr}"
    );
    assert!(stdout.starts_with("loaded 2 (2 rows"), "{stdout}");
}
