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
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    let path = env.landing("planes").join("secret.csv");
    fs::write(&path, "a,b\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::read(&path).is_ok() {
        eprintln!("skipped: this user reads files whatever their mode (root)");
        return;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.local_errors, 1, "{summary:?}");
    assert_eq!(files_in(&env.landing("planes")), vec!["secret.csv"]);
    assert_eq!(env.service().ledger().len(), 0);
}
