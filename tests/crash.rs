//! Crashes and neighbours: `sluice run` killed with SIGKILL at random moments during a backlog,
//! and two instances (two ledgers, as two hosts would have) sharing landing folders. Every
//! assertion is on the emulator's own counts: each label committed exactly once.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{Env, EnvBuilder, WatchSpec, files_in, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Writes `count` distinct small CSV files of flights rows into `dir`; returns their rows.
fn write_backlog(dir: &Path, count: usize, offset: usize) -> u64 {
    let text = fs::read_to_string(format!("{}/flights_jan1.csv", common::DATA)).unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let mut rows = 0;
    for i in 0..count {
        // Ten rows each, shifted per file so that every file's bytes differ.
        let start = (i * 7 + offset) % (lines.len() - 10);
        let mut body = String::from("header line\n");
        for line in &lines[start..start + 10] {
            body.push_str(line);
            body.push('\n');
        }
        body.push_str(&format!(
            "2013,1,1,0,0,0,0,0,0,XX,{i},N{offset},EWR,LGA,1,1,0,0,x\n"
        ));
        rows += 11;
        let tmp = dir.join(format!(".f{offset}-{i:04}.part"));
        fs::write(&tmp, body).unwrap();
        fs::rename(&tmp, dir.join(format!("f{offset}-{i:04}.csv"))).unwrap();
    }
    rows
}

fn spawn_run(config: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A pseudo-random delay in `[min, max)` ms, from the clock: enough spread for kill moments.
fn random_ms(min: u64, max: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    min + u64::from(nanos) % (max - min)
}

/// Every label the emulator saw was committed exactly once; returns how many labels.
fn assert_each_label_committed_once(env: &Env) -> usize {
    let stats = env.emulator.stats();
    for (label, s) in &stats.labels {
        assert_eq!(s.commits, 1, "label {label} committed {} times", s.commits);
    }
    stats.labels.len()
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn backlog_env() -> Env {
    EnvBuilder::new()
        .settle("200ms")
        .load("max_in_flight = 4")
        .load_delay(Duration::from_millis(20))
        .watch(WatchSpec::new("flights", 19))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_during_a_backlog_loses_nothing_and_loads_each_file_once() {
    const FILES: usize = 200;
    let env = backlog_env().await;
    let landing = env.landing("flights");
    let rows = write_backlog(&landing, FILES, 0);

    for round in 0..5 {
        let child = spawn_run(&env.config_path);
        let delay = random_ms(150, 900);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        kill(child);
        eprintln!(
            "round {round}: killed after {delay} ms, {} rows in",
            env.rows("flights")
        );
    }
    let summary = env.once().await;

    assert!(summary.is_clean(), "{summary:?}");
    assert_eq!(assert_each_label_committed_once(&env), FILES);
    assert_eq!(env.rows("flights"), rows);
    assert_eq!(files_in(&landing.join("done")).len(), FILES);
    assert!(files_in(&landing).is_empty());
    assert!(common::working_files(&landing).is_empty());
    let service = env.service();
    let loaded = service
        .ledger()
        .records()
        .filter(|r| r.as_ref().unwrap().status == sluice::ledger::Status::Loaded)
        .count();
    assert_eq!(loaded, FILES);
}

/// A second config on the same landing folders, with its own ledger: another host.
fn second_instance(env: &Env, landing_of: &str) -> std::path::PathBuf {
    let text = fs::read_to_string(&env.config_path).unwrap();
    let text = text
        .replace("path = \"ledger\"", "path = \"ledger-b\"")
        .replace(
            "dir = \"landing/flights\"",
            &format!("dir = \"landing/{landing_of}\""),
        );
    let path = env.dir.path().join("sluice-b.toml");
    fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_shared_landing_folder_load_each_file_once() {
    const FILES: usize = 120;
    let env = backlog_env().await;
    let landing = env.landing("flights");
    let other = second_instance(&env, "flights");
    let a = spawn_run(&env.config_path);
    let b = spawn_run(&other);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rows = write_backlog(&landing, FILES, 0);

    let all_in = wait_until(Duration::from_secs(60), || env.rows("flights") == rows).await;
    assert!(
        wait_until(Duration::from_secs(20), || files_in(&landing.join("done"))
            .len()
            == FILES)
        .await
    );
    kill(a);
    kill(b);
    assert!(all_in, "{} of {rows} rows", env.rows("flights"));
    assert_eq!(assert_each_label_committed_once(&env), FILES);
    assert!(files_in(&landing).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_fed_the_same_bytes_in_two_folders_load_them_once() {
    const FILES: usize = 60;
    let env = EnvBuilder::new()
        .settle("200ms")
        .watch(WatchSpec::new("flights", 19))
        .watch(WatchSpec {
            name: "flights-b".into(),
            ..WatchSpec::new("flights", 19)
        })
        .start()
        .await;
    // Instance A watches `flights`, instance B watches `flights-b`; both load into db.flights.
    let text = fs::read_to_string(&env.config_path).unwrap();
    let (a_text, b_text) = split_watches(&text);
    fs::write(&env.config_path, a_text).unwrap();
    let b_config = env.dir.path().join("sluice-b.toml");
    fs::write(
        &b_config,
        b_text.replace("path = \"ledger\"", "path = \"ledger-b\""),
    )
    .unwrap();
    let a = spawn_run(&env.config_path);
    let b = spawn_run(&b_config);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rows = write_backlog(&env.landing("flights"), FILES, 3);
    write_backlog(&env.landing("flights-b"), FILES, 3);

    let done = |name: &str| files_in(&env.landing(name).join("done")).len();
    let settled = wait_until(Duration::from_secs(60), || {
        done("flights") == FILES && done("flights-b") == FILES
    })
    .await;
    kill(a);
    kill(b);
    assert!(
        settled,
        "done: {} and {}",
        done("flights"),
        done("flights-b")
    );
    assert_eq!(assert_each_label_committed_once(&env), FILES);
    assert_eq!(env.rows("flights"), rows);
    let statuses: BTreeSet<String> = [&env.config_path, &b_config]
        .iter()
        .flat_map(|config| {
            let out = Command::new(BIN)
                .args(["ledger", "export", "--config"])
                .arg(config)
                .output();
            let out = out.unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["status"].to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(statuses.contains("\"duplicate\""), "{statuses:?}");
}

/// Splits a test config with two `[[watch]]` tables into two configs of one watch each.
fn split_watches(text: &str) -> (String, String) {
    let first = text.find("[[watch]]").unwrap();
    let second = first + 1 + text[first + 1..].find("[[watch]]").unwrap();
    let head = &text[..first];
    (
        format!("{head}{}", &text[first..second]),
        format!("{head}{}", &text[second..]),
    )
}
