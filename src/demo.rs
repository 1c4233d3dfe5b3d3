//! `sluice demo`: the whole product on one machine, with no setup.
//!
//! Starts the emulator on loopback with a CA of its own, writes a real configuration file, runs
//! the real service (`Service::run`, with its watcher), drops sample nycflights13 files into the
//! landing folders the ways writers do (renamed into place, written in place, a second copy of
//! the same bytes), waits for every outcome, then prints the ledger and compares row counts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::audit;
use crate::commands::Exit;
use crate::config::Config;
use crate::emulator::{Emulator, EmulatorOptions, Mode, TableSpec};
use crate::service::Service;

/// The sample files: (table, file name, column count, bytes).
const SAMPLES: &[(&str, &str, usize, &str)] = &[
    (
        "airlines",
        "airlines.csv",
        2,
        include_str!("../tests/data/nycflights13/airlines.csv"),
    ),
    (
        "airports",
        "airports.csv",
        8,
        include_str!("../tests/data/nycflights13/airports.csv"),
    ),
    (
        "planes",
        "planes.csv",
        9,
        include_str!("../tests/data/nycflights13/planes.csv"),
    ),
    (
        "weather",
        "weather.csv",
        15,
        include_str!("../tests/data/nycflights13/weather.csv"),
    ),
    (
        "flights",
        "flights_jan1.csv",
        19,
        include_str!("../tests/data/nycflights13/flights_jan1.csv"),
    ),
    (
        "flights",
        "flights_jan2.csv",
        19,
        include_str!("../tests/data/nycflights13/flights_jan2.csv"),
    ),
];

const DATABASE: &str = "nyc";

/// How long the demo waits for every outcome before calling it a failure.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs the demo in `dir` (or a temporary folder) and reports whether every row arrived.
///
/// # Errors
///
/// The emulator, the service or the demo's own files could not be set up.
pub async fn run(dir: Option<&Path>) -> anyhow::Result<Exit> {
    let temp;
    let base = match dir {
        Some(dir) => {
            fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
            dir.to_path_buf()
        }
        None => {
            temp = tempfile::Builder::new().prefix("sluice-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };

    let mut tables: Vec<TableSpec> = Vec::new();
    for (table, _, columns, _) in SAMPLES {
        if !tables.iter().any(|t| t.table == *table) {
            tables.push(TableSpec {
                database: DATABASE.into(),
                table: (*table).into(),
                columns: *columns,
            });
        }
    }
    let options = EmulatorOptions {
        tables,
        mode: Mode::RedirectTlsBe,
        ..EmulatorOptions::default()
    };
    let password = options.password.clone();
    let user = options.user.clone();
    let emulator = Emulator::start(options).await?;
    println!(
        "emulator: {} (FE, https), BE at {} (https)",
        emulator.endpoint(),
        emulator.be_addr()
    );

    let config_path = write_setup(&base, &emulator, &user, &password)?;
    if dir.is_some() {
        println!("config:   {}", config_path.display());
    } else {
        println!(
            "config:   {} (removed at the end; `sluice demo --dir DIR` keeps it)",
            config_path.display()
        );
    }
    let config = Config::load(&config_path)?;
    let service = Service::new(config)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };

    // Let the watcher start first, so that renamed files show as renamed, not as settled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop_samples(&base).await?;
    let expected = SAMPLES.len() as u64 + 1;
    let started = Instant::now();
    loop {
        let summary = service.summary();
        let done = summary.loaded + summary.duplicate + summary.rejected + summary.local_errors;
        if done >= expected || started.elapsed() > DEADLINE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(());
    let summary = running.await??;

    println!();
    println!("ledger ({}):", base.join("ledger").display());
    audit::print_list(service.ledger(), &mut std::io::stdout().lock())?;
    println!();
    let counts_match = print_row_counts(&emulator);
    crate::commands::print_summary(&summary);
    emulator.shutdown().await;

    let all_in = summary.loaded == SAMPLES.len() as u64 && summary.duplicate == 1;
    Ok(if all_in && counts_match && summary.is_clean() {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// Writes the CA, the password file and the configuration; returns the configuration's path.
fn write_setup(
    base: &Path,
    emulator: &Emulator,
    user: &str,
    password: &str,
) -> anyhow::Result<std::path::PathBuf> {
    fs::write(base.join("ca.pem"), emulator.ca_pem())?;
    let password_path = base.join("password");
    fs::write(&password_path, password)?;
    fs::set_permissions(&password_path, fs::Permissions::from_mode(0o600))?;

    let mut config = format!(
        "# Written by `sluice demo`.\n\
         [cluster]\n\
         endpoint = \"{}\"\n\
         user = \"{user}\"\n\
         password_file = \"password\"\n\
         ca_file = \"ca.pem\"\n\n\
         [ledger]\n\
         path = \"ledger\"\n\n\
         [load]\n\
         max_in_flight = 4\n\
         settle = \"1s\"\n\
         rescan = \"5s\"\n",
        emulator.endpoint()
    );
    let mut seen = Vec::new();
    for (table, ..) in SAMPLES {
        if seen.contains(table) {
            continue;
        }
        seen.push(table);
        let dir = base.join("landing").join(table);
        fs::create_dir_all(&dir)?;
        config.push_str(&format!(
            "\n[[watch]]\ndir = \"landing/{table}\"\ndatabase = \"{DATABASE}\"\ntable = \"{table}\"\n\
             column_separator = \",\"\nafter_load = \"move\"\n\n[watch.headers]\nskip_header = \"1\"\n"
        ));
    }
    let path = base.join("sluice.toml");
    fs::write(&path, config)?;
    Ok(path)
}

/// Drops the samples as writers do: most renamed into place, one written in place in pieces,
/// and one file twice under two names (the second is a duplicate).
async fn drop_samples(base: &Path) -> anyhow::Result<()> {
    for (i, (table, name, _, text)) in SAMPLES.iter().enumerate() {
        let dir = base.join("landing").join(table);
        if i == SAMPLES.len() - 1 {
            let mut file = fs::File::create(dir.join(name))?;
            for chunk in text.as_bytes().chunks(64 * 1024) {
                file.write_all(chunk)?;
                file.flush()?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        let part = dir.join(format!(".{name}.part"));
        fs::write(&part, text)?;
        fs::rename(&part, dir.join(name))?;
    }
    // The same bytes again, later, under another name.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = base.join("landing/airlines/airlines-resent.csv");
    fs::write(base.join("landing/airlines/.resent.part"), SAMPLES[0].3)?;
    fs::rename(base.join("landing/airlines/.resent.part"), again)?;
    Ok(())
}

/// Prints rows per table in the source files and in the emulator; true when they all match.
fn print_row_counts(emulator: &Emulator) -> bool {
    let stats = emulator.stats();
    let mut all = true;
    println!(
        "{:<16} {:>12} {:>12}",
        "table", "source rows", "loaded rows"
    );
    let mut seen = Vec::new();
    for (table, ..) in SAMPLES {
        if seen.contains(table) {
            continue;
        }
        seen.push(table);
        let source: u64 = SAMPLES
            .iter()
            .filter(|s| s.0 == *table)
            .map(|s| s.3.lines().count() as u64 - 1)
            .sum();
        let key = format!("{DATABASE}.{table}");
        let loaded = stats.tables.get(&key).map_or(0, |t| t.rows);
        let ok = source == loaded;
        all &= ok;
        println!(
            "{key:<16} {source:>12} {loaded:>12}  {}",
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    all
}
