//! The label formula is part of the outside interface: pinned here, forever.

use std::path::Path;
use std::process::Command;

const AIRLINES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/nycflights13/airlines.csv"
);

/// sha256sum of the file, then `printf '%s' nyc.airlines | sha256sum | cut -c1-16`.
const AIRLINES_LABEL: &str =
    "sluice_162551bd3401a12d63db3d92b7e66af3017d2e40d55919d6a678489323c10609-c00bfa58b7c9a956";

#[test]
fn a_known_file_has_its_known_label() {
    let (sha256, len) = sluice::label::digest_file(Path::new(AIRLINES)).unwrap();
    assert_eq!(len, 386);
    let label = sluice::label::label_for("sluice_", "nyc", "airlines", &sha256);
    assert_eq!(label, AIRLINES_LABEL);
}

#[test]
fn the_label_command_prints_the_same_label() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "label",
            AIRLINES,
            "--database",
            "nyc",
            "--table",
            "airlines",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), AIRLINES_LABEL);
}

#[test]
fn the_label_command_refuses_a_prefix_the_cluster_would_refuse() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "label",
            AIRLINES,
            "--database",
            "nyc",
            "--table",
            "airlines",
            "--prefix",
            "a.b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("label prefix `a.b`"));
}
