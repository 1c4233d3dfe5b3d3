//! Exactly once under injected faults: each test asserts on the emulator's own count of commits
//! per label and rows per table, not on what sluice believes.

mod common;

use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Env, EnvBuilder, WatchSpec, drop_sample, files_in, sample_rows};
use sluice::emulator::Fault;
use sluice::ledger::{Record, Status};
use sluice::service::Service;

const WAIT: Duration = Duration::from_secs(30);

async fn env() -> Env {
    EnvBuilder::new()
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await
}

async fn drop_planes(env: &Env) {
    drop_sample("planes.csv", &env.landing("planes"), "planes.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
}

fn records(env: &Env) -> Vec<Record> {
    env.service()
        .ledger()
        .records()
        .map(Result::unwrap)
        .collect()
}

/// The one label the emulator saw, with its commits and attempts.
fn only_label(env: &Env) -> sluice::emulator::LabelStats {
    let stats = env.emulator.stats();
    assert_eq!(stats.labels.len(), 1, "{:?}", stats.labels.keys());
    stats.labels.into_values().next().unwrap()
}

/// Loads `planes.csv` once with `fault` injected and checks it landed exactly once.
async fn loads_once_despite(fault: Fault) -> (Env, Record) {
    let env = env().await;
    env.emulator.inject(fault);
    drop_planes(&env).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(env.rows("planes"), sample_rows("planes.csv"));
    assert_eq!(only_label(&env).commits, 1);
    let record = records(&env).pop().unwrap();
    assert_eq!(record.status, Status::Loaded);

    // A restart after the fault: nothing is sent again, nothing changes in the cluster.
    let before = only_label(&env);
    let again = env.once().await;
    assert_eq!(
        again.loaded + again.duplicate + again.retrying,
        0,
        "{again:?}"
    );
    assert_eq!(only_label(&env), before);
    (env, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_500_is_retried_under_the_same_label() {
    let (_env, record) = loads_once_despite(Fault::Http500).await;
    assert_eq!(record.attempts.len(), 2);
    assert_eq!(record.attempts[0].outcome.as_deref(), Some("unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_commit_is_resent() {
    let (env, record) = loads_once_despite(Fault::CloseBeforeCommit).await;
    assert_eq!(record.attempts.len(), 2);
    assert_eq!(only_label(&env).attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_is_resolved_by_label_without_resending() {
    let (env, record) = loads_once_despite(Fault::CommitThenClose).await;
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(only_label(&env).attempts, 1, "the file was not sent again");
    assert!(record.message.unwrap().contains("answer was lost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_timeout_is_resolved_by_label() {
    let env = EnvBuilder::new()
        .timeout("1s")
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    env.emulator
        .inject(Fault::SlowAnswer(Duration::from_secs(3)));
    drop_planes(&env).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(only_label(&env).commits, 1);
    assert_eq!(env.rows("planes"), sample_rows("planes.csv"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_timeout_counts_as_loaded() {
    let (env, record) = loads_once_despite(Fault::PublishTimeout).await;
    assert_eq!(record.attempts.len(), 1);
    assert!(record.message.unwrap().contains("visible later"));
    assert_eq!(only_label(&env).attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_failure_is_retried() {
    let (_env, record) = loads_once_despite(Fault::MemLimit).await;
    assert_eq!(record.attempts.len(), 2);
    assert_eq!(record.attempts[0].outcome.as_deref(), Some("transient"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_versions_is_retried() {
    let (_env, record) = loads_once_despite(Fault::TooManyVersions).await;
    assert_eq!(record.attempts.len(), 2);
    assert_eq!(record.attempts[0].outcome.as_deref(), Some("transient"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_polled_until_it_finishes() {
    // The client gives up after 1 s; the job commits after 3 s: its label reads PREPARE first.
    let env = EnvBuilder::new()
        .timeout("1s")
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    env.emulator
        .inject(Fault::RunningFor(Duration::from_secs(3)));
    drop_planes(&env).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(only_label(&env).commits, 1);
    assert_eq!(only_label(&env).attempts, 1);
}

/// Runs `service.run` until it has started an attempt, then stops it with a short grace.
async fn cut_short_during_a_slow_load(env: &Env) {
    env.emulator
        .inject(Fault::SlowAnswer(Duration::from_secs(3)));
    let service = env.service();
    let (tx, running) = common::spawn_run(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop_planes(env).await;
    assert!(common::wait_until(WAIT, || service.snapshot().loads_in_flight == 1).await);
    tx.send(()).unwrap();
    let summary = running.await.unwrap();
    assert_eq!(summary.loaded, 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_short_by_shutdown_is_resolved_at_the_next_start() {
    let env = EnvBuilder::new()
        .load("shutdown_grace = \"200ms\"")
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    cut_short_during_a_slow_load(&env).await;
    let record = records(&env).pop().unwrap();
    assert_eq!(record.status, Status::Submitting);
    assert_eq!(record.attempts[0].outcome.as_deref(), Some("cut_short"));
    assert_eq!(
        common::working_files(&env.landing("planes")),
        vec!["planes.csv"]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(only_label(&env).commits, 1);
    assert_eq!(
        only_label(&env).attempts,
        1,
        "resolved by label, not sent again"
    );
    assert_eq!(
        files_in(&env.landing("planes").join("done")),
        vec!["planes.csv"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_past_the_label_window_becomes_indeterminate_until_an_operator_decides()
{
    let env = EnvBuilder::new()
        .label_keep("2s")
        .load("shutdown_grace = \"200ms\"")
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    cut_short_during_a_slow_load(&env).await;
    // The outage outlasts the window; the cluster has forgotten the label.
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.emulator
        .advance_clock(Duration::from_secs(4 * 24 * 3600));

    let summary = env.once().await;

    assert_eq!(summary.indeterminate, 1, "{summary:?}");
    assert_eq!(
        only_label(&env).attempts,
        1,
        "never resubmitted automatically"
    );
    let record = records(&env).pop().unwrap();
    assert_eq!(record.status, Status::Indeterminate);
    let failed = env.landing("planes").join("failed");
    assert_eq!(
        files_in(&failed),
        vec!["planes.csv", "planes.csv.indeterminate.txt"]
    );
    let again = env.once().await;
    assert_eq!(only_label(&env).attempts, 1, "{again:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "ledger",
            "resolve",
            &record.label,
            "--loaded",
            "--reason",
            "checked in SQL",
        ])
        .arg("--config")
        .arg(&env.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = records(&env).pop().unwrap();
    assert_eq!(record.status, Status::Loaded);
    assert_eq!(record.actions.len(), 1);
    assert_eq!(record.actions[0].decision, "loaded");
    assert_eq!(record.actions[0].reason, "checked in SQL");
    assert_eq!(record.actions[0].from_status, Status::Indeterminate);
    assert_eq!(
        files_in(&env.landing("planes").join("done")),
        vec!["planes.csv"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_decision_sends_the_file_again() {
    let env = EnvBuilder::new()
        .label_keep("2s")
        .load("shutdown_grace = \"200ms\"")
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    cut_short_during_a_slow_load(&env).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.emulator
        .advance_clock(Duration::from_secs(4 * 24 * 3600));
    assert_eq!(env.once().await.indeterminate, 1);
    let label = records(&env).pop().unwrap().label;

    let resolve = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ledger", "resolve", &label])
            .args(args)
            .arg("--config")
            .arg(&env.config_path)
            .output()
            .unwrap()
    };
    let refused = resolve(&["--reload"]);
    assert_eq!(refused.status.code(), Some(2), "a reload needs a reason");
    let out = resolve(&["--reload", "--reason", "rows not found in SQL"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files_in(&env.landing("planes")), vec!["planes.csv"]);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 1, "{summary:?}");
    // The forgotten first commit and the reload: the operator chose this knowingly.
    assert_eq!(only_label(&env).commits, 2);
    let record = records(&env).pop().unwrap();
    assert_eq!(record.status, Status::Loaded);
    assert_eq!(record.actions[0].decision, "reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_forgets_nor_hurries_a_scheduled_retry() {
    let env = EnvBuilder::new()
        .load("shutdown_grace = \"200ms\"")
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    let text = fs::read_to_string(&env.config_path).unwrap();
    let text = text.replace("retry_initial = \"100ms\"", "retry_initial = \"2s\"");
    fs::write(
        &env.config_path,
        text.replace("retry_max = \"500ms\"", "retry_max = \"2s\""),
    )
    .unwrap();
    env.emulator.inject(Fault::MemLimit);
    let service = env.service();
    let (tx, running) = common::spawn_run(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop_planes(&env).await;
    let retrying = || {
        service
            .ledger()
            .records()
            .any(|r| r.unwrap().status == Status::Retrying)
    };
    assert!(common::wait_until(WAIT, retrying).await);
    tx.send(()).unwrap();
    running.await.unwrap();
    drop(service);
    let due = records(&env)
        .pop()
        .unwrap()
        .next_attempt_at
        .expect("the next attempt is stored");

    let summary = env.once().await;

    assert_eq!(summary.loaded, 1, "{summary:?}");
    let record = records(&env).pop().unwrap();
    assert_eq!(record.attempts.len(), 2);
    assert!(
        record.attempts[1].started_at >= due,
        "the restart hurried the retry"
    );
    assert_eq!(only_label(&env).commits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_loaded_longer_ago_than_the_window_is_refused_by_the_ledger() {
    let env = env().await;
    drop_planes(&env).await;
    assert_eq!(env.once().await.loaded, 1);
    // The cluster forgets the label; only the ledger remembers.
    env.emulator
        .advance_clock(Duration::from_secs(4 * 24 * 3600));
    drop_sample("planes.csv", &env.landing("planes"), "planes-again.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.duplicate, 1, "{summary:?}");
    assert_eq!(
        only_label(&env).attempts,
        1,
        "never sent to the cluster again"
    );
    assert_eq!(env.rows("planes"), sample_rows("planes.csv"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_loads_and_mark_no_file_rejected() {
    let env = env().await;
    fs::write(env.dir.path().join("password"), "wrong-password").unwrap();
    drop_planes(&env).await;

    let summary = env.once().await;

    assert_eq!(summary.rejected, 0, "{summary:?}");
    assert_eq!(summary.retrying, 1, "{summary:?}");
    assert_eq!(env.rows("planes"), 0);
    let record = records(&env).pop().unwrap();
    assert_eq!(record.status, Status::Retrying);
    assert_eq!(
        common::working_files(&env.landing("planes")),
        vec!["planes.csv"]
    );

    fs::write(env.dir.path().join("password"), "sluice-emulator").unwrap();
    let summary = env.once().await;
    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(only_label(&env).commits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_out_refused_credentials_and_resumes() {
    let env = env().await;
    env.emulator.set_password("rotated-on-the-cluster");
    let service: Arc<Service> = env.service();
    let (tx, running) = common::spawn_run(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop_planes(&env).await;
    let refused = || {
        service.ledger().records().any(|r| {
            r.unwrap()
                .message
                .is_some_and(|m| m.contains("credentials refused"))
        })
    };
    assert!(common::wait_until(WAIT, refused).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.rows("planes"), 0);

    // The operator puts the password back on the cluster; the slow re-check notices.
    env.emulator.set_password("sluice-emulator");
    assert!(common::wait_until(WAIT, || env.rows("planes") == sample_rows("planes.csv")).await);
    tx.send(()).unwrap();
    let summary = running.await.unwrap();
    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(summary.rejected, 0);
    assert_eq!(only_label(&env).commits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_service_on_a_ledger_in_use_refuses_with_a_clear_message() {
    let env = env().await;
    let service = env.service();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("once")
        .arg("--config")
        .arg(&env.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another sluice process"),
        "{stderr}"
    );
    drop(service);
}
