//! The product as users run it: `sluice emulate` in one process, `sluice check` and
//! `sluice once` in others, with a config file pointing at the emulator.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nycflights13");

/// `sluice emulate` for at most a minute; killed on drop.
struct Emulate {
    child: Child,
    endpoint: String,
}

impl Drop for Emulate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn emulate(dir: &Path) -> Emulate {
    fs::write(dir.join("password"), "s3cret-pw").unwrap();
    fs::set_permissions(dir.join("password"), fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = Command::new(BIN)
        .args(["emulate", "--mode", "redirect-tls-be", "--for", "60s"])
        .args([
            "--table",
            "nyc.airlines:2",
            "--table",
            "nyc.planes:9",
            "--table",
            "nyc.weather:15",
        ])
        .arg("--password-file")
        .arg(dir.join("password"))
        .arg("--ca-out")
        .arg(dir.join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut endpoint = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(value) = line.strip_prefix("endpoint=") {
            endpoint = Some(value.to_owned());
        }
        if line.starts_with("mode=") {
            break;
        }
    }
    Emulate {
        child,
        endpoint: endpoint.expect("emulate printed no endpoint"),
    }
}

fn write_config(dir: &Path, endpoint: &str) -> std::path::PathBuf {
    let mut text = format!(
        "[cluster]\nendpoint = \"{endpoint}\"\nuser = \"root\"\npassword_file = \"password\"\n\
         ca_file = \"ca.pem\"\n\n[ledger]\npath = \"ledger\"\n\n[load]\nsettle = \"100ms\"\n"
    );
    for table in ["airlines", "planes", "weather"] {
        fs::create_dir_all(dir.join("landing").join(table)).unwrap();
        text.push_str(&format!(
            "\n[[watch]]\ndir = \"landing/{table}\"\ndatabase = \"nyc\"\ntable = \"{table}\"\n\
             column_separator = \",\"\n[watch.headers]\nskip_header = \"1\"\n"
        ));
    }
    let path = dir.join("sluice.toml");
    fs::write(&path, text).unwrap();
    path
}

fn copy_in(dir: &Path, suffix: &str) {
    for table in ["airlines", "planes", "weather"] {
        let to = dir
            .join("landing")
            .join(table)
            .join(format!("{table}{suffix}.csv"));
        fs::copy(Path::new(DATA).join(format!("{table}.csv")), to).unwrap();
    }
}

fn sluice(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// The emulator's own counts, from its test-only endpoint over HTTPS.
fn stats(emulate: &Emulate, dir: &Path) -> serde_json::Value {
    let url = format!("{}/_emulator/stats", emulate.endpoint);
    let ca = fs::read(dir.join("ca.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cert = reqwest::Certificate::from_pem(&ca).unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tls_certs_only([cert])
            .build()
            .unwrap();
        client
            .get(url)
            .basic_auth("root", Some("s3cret-pw"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    })
}

#[test]
fn check_accepts_a_good_config_and_names_the_line_of_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("password"), "pw").unwrap();
    fs::set_permissions(
        dir.path().join("password"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    let config = write_config(dir.path(), "https://localhost:9");
    let out = sluice(&["check"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("[load]\n", "[load]\nsettel = \"1s\"\n");
    fs::write(&config, text).unwrap();
    let out = sluice(&["check"], &config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sluice.toml:11:"), "{stderr}");
    assert!(stderr.contains("settel"), "{stderr}");
}

#[test]
fn once_loads_a_folder_and_a_second_once_over_the_same_files_loads_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let emulate = emulate(dir.path());
    let config = write_config(dir.path(), &emulate.endpoint);
    copy_in(dir.path(), "");
    std::thread::sleep(std::time::Duration::from_millis(200));

    let first = sluice(&["once"], &config);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("loaded 3 (1516 rows"), "{stdout}");

    copy_in(dir.path(), "-again");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = sluice(&["once"], &config);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("loaded 0") && stdout.contains("duplicate 3"),
        "{stdout}"
    );

    let stats = stats(&emulate, dir.path());
    assert_eq!(stats["tables"]["nyc.airlines"]["rows"], 16);
    assert_eq!(stats["tables"]["nyc.planes"]["rows"], 500);
    assert_eq!(stats["tables"]["nyc.weather"]["rows"], 1000);
    for table in ["airlines", "planes", "weather"] {
        assert_eq!(
            stats["tables"][format!("nyc.{table}")]["commits"],
            1,
            "{table}"
        );
    }

    let export = sluice(&["ledger", "export"], &config);
    assert!(export.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines.iter().filter(|l| l["status"] == "loaded").count(), 3);
    assert_eq!(
        lines.iter().filter(|l| l["status"] == "duplicate").count(),
        3
    );
}

#[test]
fn once_exits_3_when_a_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let emulate = emulate(dir.path());
    let config = write_config(dir.path(), &emulate.endpoint);
    fs::write(
        dir.path().join("landing/airlines/bad.csv"),
        "carrier,name\nAA,x,y\n",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = sluice(&["once"], &config);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("landing/airlines/failed/bad.csv").exists());
}
