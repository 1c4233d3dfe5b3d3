//! The commands behind the CLI, each returning the process's exit status.
//!
//! Exit codes (also in the README): 0 every file loaded or duplicate (or a clean stop of `run`);
//! 1 an error stopped the command (bad config, ledger locked, unreachable setup); 2 bad command
//! line; 3 at least one file was rejected by the cluster; 4 at least one file is unfinished
//! (still retrying, indeterminate, or left in place by a local error). 4 wins over 3; 5 `ledger
//! verify` found the ledger altered or damaged.

use std::io::Write;

use anyhow::Context as _;
use tracing::info;

use crate::cli::{Command, ConfigArg, LabelArgs, LedgerCommand};
use crate::config::Config;
use crate::service::{Service, Summary};
use crate::{audit, demo, emulator, label};

/// The process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    Rejected = 3,
    Unfinished = 4,
    /// `sluice ledger verify` found the ledger altered or damaged.
    LedgerBroken = 5,
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
        Command::Label(args) => print_label(&args),
        Command::Ledger(command) => ledger(&command),
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

/// `sluice ledger ...` (see `audit`): 0, or `LedgerBroken` when `verify` found damage.
fn ledger(command: &LedgerCommand) -> anyhow::Result<Exit> {
    Ok(match audit::run_command(command)? {
        audit::Verdict::Done => Exit::Success,
        audit::Verdict::Broken => Exit::LedgerBroken,
    })
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
