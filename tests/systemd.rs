//! sluice under systemd, as far as a test can go without systemd as PID 1: the unit files
//! verify and score (where `systemd-analyze` exists), the real binary talks the notify protocol
//! to a socket of ours, stops on SIGTERM within the unit's stop timeout without losing a file,
//! and `once` run with the timer unit's command line exits with the truth.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, EnvBuilder, WatchSpec, files_in, wait_until};
use sluice::ledger::{Ledger, Status};
use tokio::net::UnixDatagram;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");

/// A `sluice` child process, killed on drop if a test fails before it exits.
struct Sluice(Child);

impl Sluice {
    fn spawn(command: &mut Command) -> Sluice {
        Sluice(command.spawn().unwrap())
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit at most `limit`; the exit code and how long it took.
    async fn wait(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.0.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sluice did not exit within {limit:?}");
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn systemd_analyze() -> Option<PathBuf> {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    if found.status.success() && !path.is_empty() {
        Some(PathBuf::from(path))
    } else {
        eprintln!("skipped: systemd-analyze is not installed");
        None
    }
}

/// The units with `/usr/bin/sluice` replaced by the binary under test, so that `verify` can
/// check the command exists.
fn units_for_test(dir: &Path) -> Vec<PathBuf> {
    let mut written = Vec::new();
    for name in ["sluice.service", "sluice-once.service", "sluice-once.timer"] {
        let text = fs::read_to_string(Path::new(UNITS).join(name)).unwrap();
        let path = dir.join(name);
        fs::write(&path, text.replace("/usr/bin/sluice", BIN)).unwrap();
        written.push(path);
    }
    written
}

/// The value of `key=` in a unit file (the last one wins, as in systemd).
fn unit_setting(unit: &str, key: &str) -> String {
    let text = fs::read_to_string(Path::new(UNITS).join(unit)).unwrap();
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{unit} has no {key}="))
        .to_owned()
}

fn stop_timeout() -> Duration {
    humantime::parse_duration(&unit_setting("sluice.service", "TimeoutStopSec")).unwrap()
}

#[test]
fn the_units_verify_cleanly() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_test(dir.path());
    let out = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.trim().is_empty() && stdout.trim().is_empty(),
        "{stdout}{stderr}"
    );
}

#[test]
fn the_services_are_rated_2_or_lower_by_systemd_analyze_security() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    for unit in ["sluice.service", "sluice-once.service"] {
        let out = Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(Path::new(UNITS).join(unit))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let overall = text
            .lines()
            .find_map(|line| line.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_once(": "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|score| score.parse::<f64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no score for {unit}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!("{unit}: exposure {overall}");
        assert!(overall <= 2.0, "{unit} scores {overall}:\n{text}");
    }
}

#[test]
fn the_packaged_configuration_is_valid_once_its_folder_and_credential_exist() {
    let dir = tempfile::tempdir().unwrap();
    let landing = dir.path().join("orders");
    fs::create_dir(&landing).unwrap();
    fs::write(dir.path().join("sluice-password"), "pw\n").unwrap();
    let text = fs::read_to_string(Path::new(UNITS).join("sluice.toml"))
        .unwrap()
        .replace("/srv/landing/orders", landing.to_str().unwrap());
    let credentials = dir.path().to_str().unwrap().to_owned();
    let config = sluice::config::Config::parse(&text, &dir.path().join("sluice.toml"), &|name| {
        (name == "CREDENTIALS_DIRECTORY").then(|| credentials.clone())
    })
    .unwrap();
    assert_eq!(config.cluster.password.expose(), "pw");
    assert_eq!(
        config.ledger.path,
        Path::new("/var/lib/sluice/ledger"),
        "the ledger is in StateDirectory=sluice"
    );
    assert!(config.load.shutdown_grace < stop_timeout());
}

/// Receives notify datagrams until one satisfies `want` or `limit` passes.
async fn receive_until(
    socket: &UnixDatagram,
    limit: Duration,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await else {
            return false;
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let hit = want(&message);
        seen.push(message);
        if hit {
            return true;
        }
    }
}

fn run_command(env: &Env) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["run", "--config"])
        .arg(&env.config_path)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Files for the `airlines` table (two columns), each with distinct bytes.
fn drop_airlines(dir: &Path, count: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for i in 0..count {
        let name = format!("part{i:02}.csv");
        let tmp = dir.join(format!(".{name}.part"));
        fs::write(
            &tmp,
            format!("carrier,name\nC{i},Carrier {i}\nD{i},Other {i}\n"),
        )
        .unwrap();
        fs::rename(&tmp, dir.join(&name)).unwrap();
        names.insert(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_ready_status_watchdog_and_stopping_through_the_notify_socket() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let socket_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();

    let mut child = Sluice::spawn(
        run_command(&env)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "1000000"),
    );
    let mut seen = Vec::new();
    let ready = receive_until(&socket, Duration::from_secs(20), &mut seen, |m| {
        m.lines().any(|l| l == "READY=1")
    })
    .await;
    assert!(ready, "no READY=1: {seen:?}");
    let first = seen.last().unwrap().clone();
    assert!(first.contains("STATUS=watching 1 folder"), "{first}");

    // A file that arrives after READY=1 is seen: the folders were watched before it was sent.
    drop_airlines(&env.landing("airlines"), 1);
    let done = env.landing("airlines").join("done");
    assert!(wait_until(Duration::from_secs(20), || files_in(&done).len() == 1).await);

    // Pings at half the watchdog timeout, and a status that counts the load.
    let pings = receive_until(&socket, Duration::from_secs(10), &mut seen, |_| false).await;
    assert!(!pings);
    let watchdog = seen.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!(watchdog >= 10, "{watchdog} pings in 10s: {seen:?}");
    assert!(
        seen.iter()
            .any(|m| m.starts_with("STATUS=") && m.contains("1 loaded")),
        "{seen:?}"
    );

    child.terminate();
    let stopping = receive_until(&socket, Duration::from_secs(10), &mut seen, |m| {
        m.lines().any(|l| l == "STOPPING=1")
    })
    .await;
    assert!(stopping, "no STOPPING=1: {seen:?}");
    let message = seen.last().unwrap();
    assert!(message.contains("EXTEND_TIMEOUT_USEC="), "{message}");
    let (code, _) = child.wait(stop_timeout()).await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_without_ready_when_a_landing_folder_is_missing() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let socket_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // The configuration is valid; the folder goes away before the service starts.
    fs::remove_dir_all(env.landing("airlines")).unwrap();

    let mut child = Sluice::spawn(run_command(&env).env("NOTIFY_SOCKET", &socket_path));
    let (code, _) = child.wait(Duration::from_secs(20)).await;
    assert_ne!(code, Some(0));
    let mut seen = Vec::new();
    let ready = receive_until(&socket, Duration::from_millis(300), &mut seen, |m| {
        m.contains("READY=1")
    })
    .await;
    assert!(!ready, "READY=1 from a service that failed: {seen:?}");
}

/// Every dropped file is in `done/` with a loaded record, or still in the landing or working
/// folder; nothing is anywhere else, and nothing is missing.
fn assert_nothing_lost(env: &Env, dropped: &BTreeSet<String>) -> (usize, usize) {
    let landing = env.landing("airlines");
    let done: BTreeSet<String> = files_in(&landing.join("done")).into_iter().collect();
    let waiting: BTreeSet<String> = files_in(&landing)
        .into_iter()
        .chain(common::working_files(&landing))
        .collect();
    assert!(done.is_disjoint(&waiting), "{done:?} {waiting:?}");
    let all: BTreeSet<String> = done.union(&waiting).cloned().collect();
    assert_eq!(&all, dropped, "done {done:?}, waiting {waiting:?}");
    assert!(files_in(&landing.join("failed")).is_empty());

    let ledger = Ledger::open(&env.config().ledger.path).unwrap();
    for name in &done {
        let record = ledger
            .records()
            .map(Result::unwrap)
            .find(|r| r.path.file_name().is_some_and(|n| n == name.as_str()))
            .unwrap_or_else(|| panic!("no record for {name}"));
        assert_eq!(record.status, Status::Loaded, "{name}: {record:?}");
    }
    (done.len(), waiting.len())
}

/// After a restart, each file is loaded exactly once: one commit per label, all rows in.
async fn assert_restart_loads_each_once(env: &Env, dropped: &BTreeSet<String>) {
    let summary = env.once().await;
    assert!(summary.is_clean(), "{summary:?}");
    let done = files_in(&env.landing("airlines").join("done"));
    assert_eq!(done.len(), dropped.len());
    let stats = env.emulator.stats();
    let committed: Vec<_> = stats.labels.values().filter(|l| l.commits > 0).collect();
    assert_eq!(committed.len(), dropped.len(), "{:?}", stats.labels);
    for label in stats.labels.values() {
        assert!(label.commits <= 1, "{:?}", stats.labels);
    }
    assert_eq!(env.rows("airlines"), 2 * dropped.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_loads_lets_them_finish_within_the_stop_timeout() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        // Long enough for the loads in flight at SIGTERM, too short for all six.
        .load("max_in_flight = 2\nshutdown_grace = \"3s\"")
        .load_delay(Duration::from_secs(2))
        .start()
        .await;
    let dropped = drop_airlines(&env.landing("airlines"), 6);
    let mut child = Sluice::spawn(&mut run_command(&env));
    let started = wait_until(Duration::from_secs(20), || {
        !env.emulator.stats().labels.is_empty()
    })
    .await;
    assert!(started, "no load started");

    child.terminate();
    let (code, took) = child.wait(stop_timeout()).await;
    assert_eq!(code, Some(0));
    assert!(took < stop_timeout(), "{took:?}");

    let (done, waiting) = assert_nothing_lost(&env, &dropped);
    assert!(done >= 1, "the loads in flight finished: {done} done");
    assert!(
        waiting >= 1,
        "the rest stayed for the next start: {waiting} waiting"
    );
    assert_restart_loads_each_once(&env, &dropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_cuts_loads_and_a_restart_resolves_them_once() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .load("max_in_flight = 2\nshutdown_grace = \"300ms\"")
        .load_delay(Duration::from_secs(3))
        .start()
        .await;
    let dropped = drop_airlines(&env.landing("airlines"), 4);
    let mut child = Sluice::spawn(&mut run_command(&env));
    let started = wait_until(Duration::from_secs(20), || {
        !env.emulator.stats().labels.is_empty()
    })
    .await;
    assert!(started, "no load started");

    child.terminate();
    let (code, took) = child.wait(stop_timeout()).await;
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(3),
        "the grace bounds the stop: {took:?}"
    );

    let (_, waiting) = assert_nothing_lost(&env, &dropped);
    assert!(waiting >= 2, "cut loads stay in the working folder");
    // Let the cut loads end on the emulator's side before the restart asks about them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_restart_loads_each_once(&env, &dropped).await;
}

/// The command line of `ExecStart=` in the timer's service, with the binary under test and
/// the test's configuration in place of the installed ones.
fn timer_command(env: &Env) -> Command {
    let exec = unit_setting("sluice-once.service", "ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/sluice"));
    let mut command = Command::new(BIN);
    for word in words {
        if word == "/etc/sluice/sluice.toml" {
            command.arg(&env.config_path);
        } else {
            command.arg(word);
        }
    }
    command
}

/// Rewrites the test config to take the password as the units do: a credential.
fn use_credential(env: &Env) -> PathBuf {
    let text = fs::read_to_string(&env.config_path).unwrap();
    let password = fs::read_to_string(env.dir.path().join("password")).unwrap();
    let credentials = env.dir.path().join("credentials");
    fs::create_dir(&credentials).unwrap();
    fs::write(credentials.join("sluice-password"), password).unwrap();
    let credential = unit_setting("sluice-once.service", "LoadCredential");
    let name = credential.split(':').next().unwrap();
    let text = text.replace(
        "password_file = \"password\"",
        &format!("password_credential = \"{name}\""),
    );
    fs::write(&env.config_path, text).unwrap();
    credentials
}

/// Runs the timer's command as systemd would: credentials, stderr on a "journal" stream
/// (a file whose device and inode `JOURNAL_STREAM` names), no terminal.
fn run_as_timer(env: &Env, credentials: &Path, metrics: &Path) -> (Option<i32>, String, String) {
    let stderr_path = env.dir.path().join("journal.txt");
    let stderr = fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    let out = timer_command(env)
        .env("CREDENTIALS_DIRECTORY", credentials)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("SLUICE_METRICS_FILE", metrics)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        fs::read_to_string(&stderr_path).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_under_the_timer_units_command_line_exits_with_the_truth() {
    let env = EnvBuilder::new()
        .watch(
            WatchSpec::new("airlines", 2)
                .headers(&[("skip_header", "1"), ("max_filter_ratio", "0")]),
        )
        .start()
        .await;
    let credentials = use_credential(&env);
    let metrics = env.dir.path().join("sluice.prom");
    let landing = env.landing("airlines");
    drop_airlines(&landing, 2);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let (code, stdout, journal) =
        tokio::task::block_in_place(|| run_as_timer(&env, &credentials, &metrics));
    assert_eq!(code, Some(0), "{journal}");
    assert!(stdout.contains("loaded 2 (4 rows"), "{stdout}");
    // Journal lines: a priority each, no timestamps, no colours.
    assert!(!journal.is_empty());
    for line in journal.lines() {
        assert!(line.starts_with('<'), "{line}");
        assert!(!line.contains('\x1b'), "{line}");
    }
    assert!(
        journal.lines().any(|l| l.starts_with("<6> INFO ")),
        "{journal}"
    );
    let text = fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("sluice_once_exit_code 0\n"), "{text}");
    assert!(
        text.contains("sluice_files_total{outcome=\"loaded\"} 2\n"),
        "{text}"
    );

    // A file the cluster refuses: exit 3, and the metrics say so too.
    fs::write(landing.join("bad.csv"), "carrier,name\nAA,x,y\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, stdout, journal) =
        tokio::task::block_in_place(|| run_as_timer(&env, &credentials, &metrics));
    assert_eq!(code, Some(3), "{stdout}{journal}");
    assert!(stdout.contains("rejected 1"), "{stdout}");
    assert!(landing.join("failed/bad.csv").exists());
    let text = fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("sluice_once_exit_code 3\n"), "{text}");
    assert!(
        text.contains("sluice_files_total{outcome=\"rejected\"} 1\n"),
        "{text}"
    );

    // The cluster is gone: the file is unfinished, exit 4.
    let (_, stdout, _) = {
        drop_airlines(&landing, 3);
        let text = fs::read_to_string(&env.config_path)
            .unwrap()
            .replace(&env.emulator.endpoint(), "https://127.0.0.1:9")
            .replace("max_attempts = 4", "max_attempts = 1");
        fs::write(&env.config_path, text).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let result = tokio::task::block_in_place(|| run_as_timer(&env, &credentials, &metrics));
        assert_eq!(result.0, Some(4), "{}{}", result.1, result.2);
        result
    };
    assert!(stdout.contains("unfinished 1"), "{stdout}");
}
