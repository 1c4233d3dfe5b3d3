//! The commands behind the CLI, each returning the process's exit status.
//!
//! Exit codes (also in the README): 0 every file loaded or duplicate (or a clean stop of `run`);
//! 1 an error stopped the command (bad config, ledger locked, unreachable setup); 2 bad command
//! line; 3 at least one file was rejected by the cluster; 4 at least one file is unfinished
//! (still retrying, indeterminate, or left in place by a local error). 4 wins over 3; 5 `ledger
//! verify` found the ledger altered or damaged.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tracing::{error, info};

use crate::cli::{Command, ConfigArg, LabelArgs, LedgerCommand, OnceArgs, ResolveArgs};
use crate::config::Config;
use crate::metrics::{self, OnceRun};
use crate::notify::Notifier;
use crate::service::{Decision, Service, Snapshot, Summary};
use crate::{audit, demo, doctor, emulator, label, progress};

/// How often `run` refreshes its `STATUS=` line for `systemctl status`.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Time allowed past `load.shutdown_grace` for the ledger flush and exit, asked of systemd
/// with `EXTEND_TIMEOUT_USEC` when the stop begins.
const STOP_SLACK: Duration = Duration::from_secs(15);

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
        Command::Doctor(args) => runtime()?.block_on(doctor(&args)),
        Command::Label(args) => print_label(&args),
        Command::Ledger(LedgerCommand::Resolve(args)) => resolve(&args),
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
    let config = Config::load_without_password(&args.config.config)?;
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

/// `sluice ledger ...` (see `audit`): 0, or `LedgerBroken` when `verify` found damage.
fn ledger(command: &LedgerCommand) -> anyhow::Result<Exit> {
    Ok(match audit::run_command(command)? {
        audit::Verdict::Done => Exit::Success,
        audit::Verdict::Broken => Exit::LedgerBroken,
    })
}

/// `sluice once`: progress while it works, the summary, and the metrics file when asked.
///
/// A metrics file that cannot be written is logged and turns a clean run's 0 into 1; a run
/// with rejected or unfinished files keeps its 3 or 4, which matter more.
async fn once(args: &OnceArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let config = load_config(&args.config)?;
    let service = Service::new(config)?;
    // A stop request (the timer unit stopped, Ctrl-C) takes no new files and lets running
    // attempts end at their next safe point; files not taken stay for the next run.
    let (stop, _) = shutdown_signal(None)?;
    let stopper = {
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            stop.await;
            service.begin_stop();
        })
    };

    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let shown = tokio::spawn(progress::show(
        Arc::clone(&service),
        progress::Style::for_stderr(),
        async {
            let _ = done_rx.await;
        },
    ));
    let result = service.once().await;
    stopper.abort();
    let _ = done_tx.send(());
    let _ = shown.await;

    let exit = match &result {
        Ok(summary) => Exit::of(summary),
        Err(_) => Exit::Failure,
    };
    let written = args.metrics_file.as_deref().map(|path| {
        let run = OnceRun {
            exit_code: exit as u8,
            elapsed: started.elapsed(),
        };
        let text = metrics::render_once(&service.snapshot(), SystemTime::now(), run);
        metrics::write_file(path, &text).map_err(|err| {
            error!(path = %path.display(), error = %err, "cannot write the metrics file");
        })
    });
    let summary = result?;
    if std::io::stdout().is_terminal() {
        print!("{}", progress::summary_table(&summary, started.elapsed()));
    } else {
        print_summary(&summary);
    }
    Ok(match written {
        Some(Err(())) if exit == Exit::Success => Exit::Failure,
        _ => exit,
    })
}

/// `sluice run`: the service, with systemd notifications and the metrics server around it.
async fn run(args: &ConfigArg) -> anyhow::Result<Exit> {
    let config = load_config(args)?;
    let grace = config.load.shutdown_grace;
    let watches = config.watches.len();
    // Bound before the service starts, so that a taken port fails the start-up, not later.
    let listener = match config.metrics.listen {
        Some(address) => Some(
            metrics::bind(address)
                .await
                .with_context(|| format!("failed to listen for metrics on `{address}`"))?,
        ),
        None => None,
    };
    let service = Service::new(config)?;
    let notifier = Arc::new(Notifier::from_env());
    let (stop, reload) = shutdown_signal(Some(args.config.clone()))?;

    let metrics_server = listener.map(|listener| {
        let service = Arc::clone(&service);
        tokio::spawn(metrics::serve(
            listener,
            move || metrics::render(&service.snapshot(), SystemTime::now()),
            std::future::pending(),
        ))
    });
    let reporter = tokio::spawn(report(Arc::clone(&service), Arc::clone(&notifier), watches));
    let stop = {
        let service = Arc::clone(&service);
        let notifier = Arc::clone(&notifier);
        async move {
            stop.await;
            let running = service.snapshot().loads_in_flight;
            notifier.stopping(
                &format!("stopping: {running} loads finishing"),
                Some(grace + STOP_SLACK),
            );
        }
    };
    let result = service.run(stop).await;
    reporter.abort();
    let _ = reporter.await;
    if let Some(server) = metrics_server {
        server.abort();
        let _ = server.await;
    }
    let summary = result?;
    if reload.load(Ordering::SeqCst) {
        // The ledger's lock goes with the last handle on the service; the new process takes it.
        drop(service);
        notifier.status("reloading: restarting with the configuration as it is now");
        return Err(restart_self());
    }
    info!(
        loaded = summary.loaded,
        duplicate = summary.duplicate,
        rejected = summary.rejected,
        "stopped"
    );
    Ok(Exit::Success)
}

/// Tells systemd we are ready once every folder is watched, keeps `STATUS=` current, and pings
/// the watchdog when `WatchdogSec=` is set. Runs until aborted.
///
/// The watchdog ping follows a `snapshot()`, which takes the service's locks, so a wedged
/// runtime or a stuck lock stops the pings and systemd restarts the service.
async fn report(service: Arc<Service>, notifier: Arc<Notifier>, watches: usize) {
    let mut ready = service.ready();
    if ready.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    notifier.ready(&format!("watching {}", folders(watches)));

    let ping = notifier.watchdog().map(|timeout| timeout / 2);
    let tick = ping.map_or(STATUS_EVERY, |ping| ping.min(STATUS_EVERY));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    loop {
        interval.tick().await;
        let status = status_line(&service.snapshot(), watches);
        if ping.is_some() {
            notifier.watchdog_ping();
        }
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
    }
}

/// `watching 3 folders; 2 loading, 5 waiting; since start: 120 loaded, 1 rejected`.
fn status_line(snapshot: &Snapshot, watches: usize) -> String {
    let summary = &snapshot.summary;
    let mut line = format!(
        "watching {}; {} loading, {} waiting; since start: {} loaded, {} \
         duplicate, {} rejected",
        folders(watches),
        snapshot.loads_in_flight,
        snapshot.files_waiting,
        summary.loaded,
        summary.duplicate,
        summary.rejected,
    );
    let unfinished = summary.retrying + summary.indeterminate + summary.local_errors;
    if unfinished > 0 {
        line.push_str(&format!(", {unfinished} unfinished"));
    }
    line
}

/// `1 folder`, `3 folders`.
fn folders(count: usize) -> String {
    if count == 1 {
        "1 folder".to_owned()
    } else {
        format!("{count} folders")
    }
}

/// Resolves on the first SIGTERM, SIGINT or SIGHUP; a second signal ends the process at once.
/// Nothing is lost by that: every step the ledger depends on was flushed when it happened.
/// The flag says whether the stop was a SIGHUP, after which `run` starts itself again.
///
/// With `config`, a SIGHUP first checks that file: a configuration with problems is refused
/// with its errors logged, and the service goes on with the one it has.
fn shutdown_signal(
    config: Option<std::path::PathBuf>,
) -> anyhow::Result<(impl std::future::Future<Output = ()>, Arc<AtomicBool>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("failed to install signal handlers")?;
    let reload = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let flag = Arc::clone(&reload);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for signal in signals.forever() {
            match tx.take() {
                Some(sender) if signal == SIGHUP => {
                    if let Some(path) = &config
                        && let Err(err) = Config::load(path)
                    {
                        error!(error = %err,
                            "reload refused: the configuration has problems; running on with the old one");
                        tx = Some(sender);
                        continue;
                    }
                    info!("reload requested: finishing running loads, then restarting");
                    flag.store(true, Ordering::SeqCst);
                    let _ = sender.send(());
                }
                Some(tx) => {
                    info!(signal, "stop requested; a second signal stops at once");
                    let _ = tx.send(());
                }
                None => std::process::exit(130),
            }
        }
    });
    let stopped = async move {
        let _ = rx.await;
    };
    Ok((stopped, reload))
}

/// Replaces this process with a fresh `sluice` of the same arguments, which reads the
/// configuration again. Only returns on failure.
fn restart_self() -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;

    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => return anyhow::Error::new(err).context("cannot find the sluice binary"),
    };
    let err = std::process::Command::new(&exe).args(args).exec();
    anyhow::Error::new(err).context(format!("failed to restart `{}`", exe.display()))
}

/// The end-of-run table of `once`.
pub fn print_summary(summary: &Summary) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "loaded {} ({} rows, {} bytes), duplicate {}, rejected {}, unfinished {}; {} files read",
        summary.loaded,
        summary.rows,
        summary.bytes,
        summary.duplicate,
        summary.rejected,
        summary.retrying + summary.indeterminate + summary.local_errors,
        summary.digested,
    );
}
