//! The commands behind the CLI, each returning the process's exit status.
//!
//! Exit codes (also in the README): 0 every file loaded or duplicate (or a clean stop of `run`);
//! 1 an error stopped the command (bad config, ledger locked, unreachable setup); 2 bad command
//! line; 3 at least one file was rejected by the cluster; 4 at least one file is unfinished
//! (still retrying, indeterminate, or left in place by a local error). 4 wins over 3.

use std::io::Write;

use anyhow::Context as _;
use tracing::info;

use crate::cli::{Command, ConfigArg, LabelArgs, LedgerCommand, ResolveArgs};
use crate::config::Config;
use crate::ledger::Ledger;
use crate::service::{Decision, Service, Summary};
use crate::{audit, demo, doctor, emulator, label};

/// The process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    Rejected = 3,
    Unfinished = 4,
}

impl Exit {
    /// The status of a `once` run with this summary.
    pub fn of(summary: &Summary) -> Exit {
        if summary.retrying > 0 || summary.indeterminate > 0 || summary.local_errors > 0 {
            Exit::Unfinished
        } else if summary.rejected > 0 {
            Exit::Rejected
        } else {
            Exit::Success
        }
    }
}

/// Runs one command to completion.
///
/// # Errors
///
/// Whatever stopped the command, with context naming the file, key or address involved.
pub fn dispatch(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Check(args) => check(&args),
        Command::Doctor(args) => runtime()?.block_on(doctor(&args)),
        Command::Label(args) => print_label(&args),
        Command::Ledger(LedgerCommand::List(args)) => {
            audit::print_list(&open_ledger(&args)?, &mut std::io::stdout().lock())?;
            Ok(Exit::Success)
        }
        Command::Ledger(LedgerCommand::Export(args)) => {
            audit::export_jsonl(&open_ledger(&args)?, &mut std::io::stdout().lock())?;
            Ok(Exit::Success)
        }
        Command::Ledger(LedgerCommand::Resolve(args)) => resolve(&args),
        Command::Run(args) => runtime()?.block_on(run(&args)),
        Command::Once(args) => runtime()?.block_on(once(&args)),
        Command::Demo(args) => runtime()?.block_on(demo::run(args.dir.as_deref())),
        Command::Emulate(args) => {
            runtime()?.block_on(emulator::run_cli(args))?;
            Ok(Exit::Success)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

fn load_config(args: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&args.config)?)
}

fn check(args: &ConfigArg) -> anyhow::Result<Exit> {
    let config = load_config(args)?;
    println!(
        "{}: ok ({} watch{}, endpoint {}://{}:{})",
        args.config.display(),
        config.watches.len(),
        if config.watches.len() == 1 { "" } else { "es" },
        match config.cluster.endpoint.scheme {
            crate::config::Scheme::Http => "http",
            crate::config::Scheme::Https => "https",
        },
        config.cluster.endpoint.host,
        config.cluster.endpoint.port,
    );
    Ok(Exit::Success)
}

/// `sluice doctor`: one line per check on stdout, then a verdict; exits 1 when a check failed.
async fn doctor(args: &ConfigArg) -> anyhow::Result<Exit> {
    let config = load_config(args)?;
    let mut out = std::io::stdout().lock();
    let report = doctor::diagnose(&config, &mut out)
        .await
        .context("failed to write the report")?;
    match report.first_failure() {
        None => {
            writeln!(out, "doctor: every check passed")?;
            Ok(Exit::Success)
        }
        Some(class) => {
            writeln!(
                out,
                "doctor: failed ({class:?}); the first FAIL line says how to fix it"
            )?;
            Ok(Exit::Failure)
        }
    }
}

fn print_label(args: &LabelArgs) -> anyhow::Result<Exit> {
    anyhow::ensure!(
        args.prefix.len() <= label::max_prefix_len()
            && label::is_valid_label(&format!("{}x", args.prefix)),
        "label prefix `{}` must be at most {} of ASCII letters, digits, `_` and `-`",
        args.prefix,
        label::max_prefix_len()
    );
    let (sha256, _) = label::digest_file(&args.file)
        .with_context(|| format!("failed to read `{}`", args.file.display()))?;
    println!(
        "{}",
        label::label_for(&args.prefix, &args.database, &args.table, &sha256)
    );
    Ok(Exit::Success)
}

fn resolve(args: &ResolveArgs) -> anyhow::Result<Exit> {
    let config = load_config(&args.config)?;
    let decision = if args.reload {
        Decision::Reload
    } else {
        Decision::Loaded
    };
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| "no reason given".into());
    let (record, file) = crate::service::resolve(&config, &args.label, decision, &reason)?;
    println!(
        "{}: now {}{}",
        record.label,
        record.status.as_str(),
        file.map(|f| format!(", file at `{}`", f.display()))
            .unwrap_or_default()
    );
    Ok(Exit::Success)
}

fn open_ledger(args: &ConfigArg) -> anyhow::Result<Ledger> {
    let config = load_config(args)?;
    Ok(Ledger::open(&config.ledger.path)?)
}

async fn once(args: &ConfigArg) -> anyhow::Result<Exit> {
    let config = load_config(args)?;
    let service = Service::new(config)?;
    let summary = service.once().await?;
    print_summary(&summary);
    Ok(Exit::of(&summary))
}

async fn run(args: &ConfigArg) -> anyhow::Result<Exit> {
    let config = load_config(args)?;
    let service = Service::new(config)?;
    let stop = shutdown_signal()?;
    let summary = service.run(stop).await?;
    info!(
        loaded = summary.loaded,
        duplicate = summary.duplicate,
        rejected = summary.rejected,
        "stopped"
    );
    Ok(Exit::Success)
}

/// Resolves on the first SIGTERM or SIGINT; a second one ends the process at once. Nothing is
/// lost by that: every step the ledger depends on was flushed when it happened.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("failed to install signal handlers")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for signal in signals.forever() {
            match tx.take() {
                Some(tx) => {
                    info!(signal, "stop requested; a second signal stops at once");
                    let _ = tx.send(());
                }
                None => std::process::exit(130),
            }
        }
    });
    Ok(async move {
        let _ = rx.await;
    })
}

/// The end-of-run table of `once`.
pub fn print_summary(summary: &Summary) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "loaded {} ({} rows, {} bytes), duplicate {}, rejected {}, unfinished {}",
        summary.loaded,
        summary.rows,
        summary.bytes,
        summary.duplicate,
        summary.rejected,
        summary.retrying + summary.indeterminate + summary.local_errors,
    );
}
