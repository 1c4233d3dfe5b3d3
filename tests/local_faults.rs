//! Our own faults: a full disk under the ledger, an unreadable file. A clear error, the file
//! left where it was, and no record claiming what did not happen.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{EnvBuilder, WatchSpec, drop_sample, files_in};

/// Mounts a small tmpfs at `dir`; false (with the reason printed) where that is not allowed.
fn mount_small_tmpfs(dir: &Path, size: &str) -> bool {
    fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "skipped: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(err) => {
            eprintln!("skipped: no mount command: {err}");
            false
        }
    }
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_ledger_stops_the_start_clearly_and_loses_nothing() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    let ledger_dir = env.dir.path().join("ledger");
    if !mount_small_tmpfs(&ledger_dir, "4m") {
        return;
    }
    let _unmount = Unmount(&ledger_dir);
    let filler = ledger_dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    drop_sample("planes.csv", &env.landing("planes"), "planes.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["once", "--config"])
        .arg(&env.config_path)
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to open ledger at"), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(env.emulator.stats().labels.len(), 0, "nothing was sent");
    assert_eq!(
        files_in(&env.landing("planes")),
        vec!["planes.csv"],
        "file left where it was"
    );

    fs::remove_file(&filler).unwrap();
    let summary = env.once().await;
    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(env.commits("planes"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_file_is_left_in_place_with_its_reason_and_no_record() {
    use std::os::unix::fs::chown;

    let env = EnvBuilder::new()
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    let landing = env.landing("planes");
    drop_sample("planes.csv", &landing, "good.csv");
    let secret = landing.join("secret.csv");
    fs::write(&secret, "a,b,c,d,e,f,g,h,i\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Root reads every file, so as root run sluice as `nobody`, who cannot read this one.
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    if fs::read(&secret).is_ok() {
        let can_drop = Command::new("setpriv").arg("--version").output().is_ok();
        if !can_drop {
            eprintln!("skipped: running as root and no setpriv to drop to another user");
            return;
        }
        for dir in [
            env.dir.path().to_path_buf(),
            env.dir.path().join("landing"),
            landing.clone(),
        ] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        }
        chown(env.dir.path().join("password"), Some(65534), Some(65534)).unwrap();
        command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_sluice"));
    }
    let out = command
        .args(["once", "--config"])
        .arg(&env.config_path)
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("secret.csv") && stderr.contains("ermission denied"),
        "{stderr}"
    );
    assert_eq!(files_in(&landing), vec!["secret.csv"], "left where it was");
    assert_eq!(env.commits("planes"), 1, "the readable file was loaded");
    let export = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ledger", "export", "--config"])
        .arg(&env.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&export.stdout);
    assert_eq!(
        text.lines().count(),
        1,
        "no record for the unreadable file: {text}"
    );
    assert!(!text.contains("secret.csv"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_vanishes_while_being_digested_gets_no_record_and_is_not_sent() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    let landing = env.landing("planes");
    // Large and sparse: its digest takes long enough to delete it in the middle.
    let big = fs::File::create(landing.join("big.csv")).unwrap();
    big.set_len(96 << 20).unwrap();
    drop(big);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let service = env.service();
    let once = {
        let service = std::sync::Arc::clone(&service);
        tokio::spawn(async move { service.once().await.unwrap() })
    };
    let claimed = common::wait_until(Duration::from_secs(10), || {
        !common::working_files(&landing).is_empty()
    })
    .await;
    assert!(claimed);
    let work = fs::read_dir(landing.join(".sluice-work"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    fs::remove_file(work.path().join("big.csv")).unwrap();

    let summary = once.await.unwrap();

    assert_eq!(summary.local_errors, 1, "{summary:?}");
    assert_eq!(
        service.ledger().len(),
        0,
        "no record claims what did not happen"
    );
    assert!(env.emulator.stats().labels.is_empty(), "nothing was sent");
}
