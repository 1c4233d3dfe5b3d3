//! SIGHUP: `sluice run` finishes its running loads, then starts itself again with the
//! configuration as it is now (new and removed watches), in the same process.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{EnvBuilder, WatchSpec, drop_sample, sample_rows, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_picks_up_a_new_watch_without_losing_the_running_one() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("planes", 9))
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    // Start with the planes watch only; the airlines watch is added before the SIGHUP.
    let full = fs::read_to_string(&env.config_path).unwrap();
    let cut = full.rfind("[[watch]]").unwrap();
    fs::write(&env.config_path, &full[..cut]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop_sample("planes.csv", &env.landing("planes"), "p.csv");
    assert!(wait_until(Duration::from_secs(20), || env.rows("planes") > 0).await);

    fs::write(&env.config_path, &full).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after the reload"
    );
    drop_sample("airlines.csv", &env.landing("airlines"), "a.csv");

    let loaded = wait_until(Duration::from_secs(20), || env.rows("airlines") == 16).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(loaded, "the new watch was not picked up");
    assert_eq!(status.code(), Some(0));
    assert_eq!(env.rows("planes"), sample_rows("planes.csv"));
    assert_eq!(env.commits("planes"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_configuration_keeps_the_service_running() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    let good = fs::read_to_string(&env.config_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    fs::write(&env.config_path, good.replace("settle", "setle")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a broken config stopped the service"
    );
    drop_sample("planes.csv", &env.landing("planes"), "p.csv");
    let loaded = wait_until(Duration::from_secs(20), || env.rows("planes") > 0).await;

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        loaded,
        "the service stopped loading after the refused reload"
    );
}
