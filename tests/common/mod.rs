//! Test environment: an emulator on loopback, landing folders in a temp dir, a real config file.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part"
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::emulator::{Emulator, EmulatorOptions, Mode, TableSpec};
use sluice::service::{Service, Summary};

pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nycflights13");

/// One landing folder of the environment.
#[derive(Clone)]
pub struct WatchSpec {
    pub name: String,
    pub table: String,
    pub columns: usize,
    pub column_separator: String,
    pub after_load: String,
    pub headers: Vec<(String, String)>,
}

impl WatchSpec {
    pub fn new(table: &str, columns: usize) -> WatchSpec {
        WatchSpec {
            name: table.to_owned(),
            table: table.to_owned(),
            columns,
            column_separator: ",".into(),
            after_load: "move".into(),
            headers: vec![("skip_header".into(), "1".into())],
        }
    }

    pub fn separator(mut self, sep: &str) -> WatchSpec {
        self.column_separator = sep.to_owned();
        self
    }

    pub fn after_load(mut self, mode: &str) -> WatchSpec {
        self.after_load = mode.to_owned();
        self
    }

    pub fn headers(mut self, headers: &[(&str, &str)]) -> WatchSpec {
        self.headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self
    }
}

/// A change to the emulator's options, made before it starts.
type EmulatorTweak = Box<dyn FnOnce(&mut EmulatorOptions)>;

pub struct EnvBuilder {
    mode: Mode,
    watches: Vec<WatchSpec>,
    settle: String,
    extra_cluster: String,
    extra_load: String,
    empty_load_as_error: bool,
    load_delay: Duration,
    timeout: String,
    label_keep: String,
    emulator_tweaks: Vec<EmulatorTweak>,
}

impl EnvBuilder {
    pub fn new() -> EnvBuilder {
        EnvBuilder {
            mode: Mode::RedirectTlsBe,
            watches: Vec::new(),
            settle: "300ms".into(),
            extra_cluster: String::new(),
            extra_load: String::new(),
            empty_load_as_error: true,
            load_delay: Duration::ZERO,
            timeout: "20s".into(),
            label_keep: "3d".into(),
            emulator_tweaks: Vec::new(),
        }
    }

    /// `cluster.timeout`, the longest one attempt may take.
    pub fn timeout(mut self, timeout: &str) -> EnvBuilder {
        timeout.clone_into(&mut self.timeout);
        self
    }

    /// `cluster.label_keep`, sluice's idea of the label window.
    pub fn label_keep(mut self, keep: &str) -> EnvBuilder {
        keep.clone_into(&mut self.label_keep);
        self
    }

    /// Changes the emulator's options (certificate, password, tables, ...) before it starts.
    pub fn emulator(mut self, tweak: impl FnOnce(&mut EmulatorOptions) + 'static) -> EnvBuilder {
        self.emulator_tweaks.push(Box::new(tweak));
        self
    }

    /// Makes every load take at least this long on the emulator, so that loads overlap.
    pub fn load_delay(mut self, delay: Duration) -> EnvBuilder {
        self.load_delay = delay;
        self
    }

    pub fn mode(mut self, mode: Mode) -> EnvBuilder {
        self.mode = mode;
        self
    }

    pub fn watch(mut self, spec: WatchSpec) -> EnvBuilder {
        self.watches.push(spec);
        self
    }

    pub fn settle(mut self, settle: &str) -> EnvBuilder {
        settle.clone_into(&mut self.settle);
        self
    }

    /// Extra lines for `[cluster]`.
    pub fn cluster(mut self, lines: &str) -> EnvBuilder {
        self.extra_cluster.push_str(lines);
        self.extra_cluster.push('\n');
        self
    }

    /// Extra lines for `[load]`.
    pub fn load(mut self, lines: &str) -> EnvBuilder {
        self.extra_load.push_str(lines);
        self.extra_load.push('\n');
        self
    }

    pub fn empty_load_as_error(mut self, on: bool) -> EnvBuilder {
        self.empty_load_as_error = on;
        self
    }

    pub async fn start(self) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut tables: Vec<TableSpec> = Vec::new();
        for w in &self.watches {
            if !tables.iter().any(|t| t.table == w.table) {
                tables.push(TableSpec {
                    database: "db".into(),
                    table: w.table.clone(),
                    columns: w.columns,
                });
            }
        }
        let mut options = EmulatorOptions {
            tables,
            mode: self.mode,
            empty_load_as_error: self.empty_load_as_error,
            load_delay: self.load_delay,
            ..EmulatorOptions::default()
        };
        for tweak in self.emulator_tweaks {
            tweak(&mut options);
        }
        let password = options.password.clone();
        let user = options.user.clone();
        let emulator = Emulator::start(options).await.unwrap();

        fs::write(dir.path().join("ca.pem"), emulator.ca_pem()).unwrap();
        fs::write(dir.path().join("password"), &password).unwrap();
        fs::set_permissions(
            dir.path().join("password"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut text = format!(
            "[cluster]\nendpoint = \"{}\"\nuser = \"{user}\"\npassword_file = \"password\"\n\
             ca_file = \"ca.pem\"\ntimeout = \"{}\"\nlabel_keep = \"{}\"\n{}\n[ledger]\npath = \"ledger\"\n\n\
             [load]\nsettle = \"{}\"\nrescan = \"1s\"\nretry_initial = \"100ms\"\n\
             retry_max = \"500ms\"\nmax_attempts = 4\n{}\n",
            emulator.endpoint(),
            self.timeout,
            self.label_keep,
            self.extra_cluster,
            self.settle,
            self.extra_load,
        );
        for w in &self.watches {
            fs::create_dir_all(dir.path().join("landing").join(&w.name)).unwrap();
            text.push_str(&format!(
                "[[watch]]\ndir = \"landing/{}\"\ndatabase = \"db\"\ntable = \"{}\"\n\
                 column_separator = {}\nafter_load = \"{}\"\n[watch.headers]\n",
                w.name,
                w.table,
                toml_string(&w.column_separator),
                w.after_load
            ));
            for (k, v) in &w.headers {
                text.push_str(&format!("{k} = {}\n", toml_string(v)));
            }
            text.push('\n');
        }
        let config_path = dir.path().join("sluice.toml");
        fs::write(&config_path, &text).unwrap();
        Env {
            dir,
            emulator,
            config_path,
        }
    }
}

/// A TOML basic string with the value exactly as given.
fn toml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub emulator: Emulator,
    pub config_path: PathBuf,
}

impl Env {
    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap()
    }

    pub fn landing(&self, watch: &str) -> PathBuf {
        self.dir.path().join("landing").join(watch)
    }

    pub fn service(&self) -> Arc<Service> {
        Service::new(self.config()).unwrap()
    }

    pub async fn once(&self) -> Summary {
        let service = self.service();
        service.once().await.unwrap()
    }

    /// Table rows the emulator holds.
    pub fn rows(&self, table: &str) -> u64 {
        self.emulator
            .stats()
            .tables
            .get(&format!("db.{table}"))
            .map_or(0, |t| t.rows)
    }

    pub fn commits(&self, table: &str) -> u64 {
        self.emulator
            .stats()
            .tables
            .get(&format!("db.{table}"))
            .map_or(0, |t| t.commits)
    }
}

/// Rows of a sample file, without its header.
pub fn sample_rows(name: &str) -> u64 {
    fs::read_to_string(Path::new(DATA).join(name))
        .unwrap()
        .lines()
        .count() as u64
        - 1
}

pub fn copy_sample(name: &str, to: &Path) {
    fs::copy(Path::new(DATA).join(name), to).unwrap();
}

/// Puts a sample file into place the way careful writers do: write elsewhere, rename in.
pub fn drop_sample(name: &str, dir: &Path, as_name: &str) {
    let tmp = dir.join(format!(".{as_name}.part"));
    copy_sample(name, &tmp);
    fs::rename(&tmp, dir.join(as_name)).unwrap();
}

/// Polls `cond` until it holds or `timeout` passes; true when it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Files claimed into the working folders of a landing folder (every instance's).
pub fn working_files(landing: &Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = fs::read_dir(landing.join(".sluice-work")) {
        for entry in entries.flatten() {
            names.extend(files_in(&entry.path()));
        }
    }
    names.sort();
    names
}

/// Runs `service.run` in the background; the returned sender stops it.
pub fn spawn_run(
    service: &Arc<Service>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<sluice::service::Summary>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = Arc::clone(service);
    let handle = tokio::spawn(async move {
        service
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap()
    });
    (tx, handle)
}
