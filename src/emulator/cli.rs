//! `sluice emulate`: runs the emulator alone until a deadline or a signal, and prints where it
//! listens, one fact per line, for scripts to read.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;

use super::{CertKind, Emulator, EmulatorOptions, Mode, TableSpec};

/// Options of `sluice emulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulateArgs {
    /// Accept loads that contain no row (the FE's `empty_load_as_error = false`).
    #[arg(long)]
    pub accept_empty_loads: bool,

    /// Write the generated CA certificate (PEM) to this file, for the client's `ca_file`.
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<PathBuf>,

    /// The server certificate to present, for trying `ssl_mode` and `sluice doctor`: `good`,
    /// `unknown-issuer` (not from the CA written by `--ca-out`), `wrong-name` (for
    /// `wrong.example`), `expired`, or `ip-only` (for 127.0.0.1 and ::1, no DNS name).
    #[arg(long, value_enum, value_name = "KIND", default_value_t = CertKind::Good)]
    pub cert: CertKind,

    /// How long finished labels are remembered, e.g. `3d` or `10m`.
    #[arg(long, value_name = "DURATION", default_value = "3d", value_parser = humantime::parse_duration)]
    pub label_keep: Duration,

    /// Extra time every load takes before its body is read, e.g. `100ms`: makes loads overlap
    /// and crashes land mid-load in fault drills. Default none.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub load_delay: Option<Duration>,

    /// Where the BE is: `redirect` (307 to plain http), `redirect-tls-be` (307 to https) or
    /// `proxy` (one https port that loads directly).
    #[arg(long, value_enum, default_value_t = Mode::Redirect)]
    pub mode: Mode,

    /// Read the password from this file (trailing newline dropped); default `sluice-emulator`.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Port of the FE (or the proxy) on 127.0.0.1; 0 picks a free one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub port: u16,

    /// Stop by itself after this long, e.g. `30s`; without it, run until SIGINT or SIGTERM.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub run_for: Option<Duration>,

    /// A table to declare, as `db.table:ncols`; repeat for more.
    #[arg(long = "table", value_name = "DB.TABLE:NCOLS", value_parser = TableSpec::parse)]
    pub tables: Vec<TableSpec>,

    /// The user that loads must authenticate as.
    #[arg(long, default_value = "root")]
    pub user: String,
}

/// Runs `sluice emulate`: starts the emulator, prints `endpoint=`, `be=`, `ca=` lines (and
/// `mode=`), then serves until `--for` elapses or SIGINT/SIGTERM arrives.
///
/// # Errors
///
/// When the password file cannot be read, the CA cannot be written, or the ports cannot be
/// bound.
pub async fn run_cli(args: EmulateArgs) -> anyhow::Result<()> {
    let mut opts = EmulatorOptions {
        cert: args.cert,
        empty_load_as_error: !args.accept_empty_loads,
        label_keep: args.label_keep,
        load_delay: args.load_delay.unwrap_or_default(),
        mode: args.mode,
        port: args.port,
        tables: args.tables.clone(),
        user: args.user.clone(),
        ..EmulatorOptions::default()
    };
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read password file `{}`", path.display()))?;
        opts.password = text.trim_end_matches(['\r', '\n']).to_string();
    }
    let emulator = Emulator::start(opts)
        .await
        .context("failed to start the emulator")?;
    if let Some(path) = &args.ca_out {
        std::fs::write(path, emulator.ca_pem())
            .with_context(|| format!("failed to write the CA to `{}`", path.display()))?;
    }
    print_facts(&emulator, &args).context("failed to write to stdout")?;

    let deadline = async {
        match args.run_for {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = deadline => tracing::info!("emulator time is up"),
        result = stop_signal() => result.context("failed to listen for signals")?,
    }
    emulator.shutdown().await;
    Ok(())
}

fn print_facts(emulator: &Emulator, args: &EmulateArgs) -> std::io::Result<()> {
    let be_scheme = if args.mode == Mode::Redirect {
        "http"
    } else {
        "https"
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "endpoint={}", emulator.endpoint())?;
    writeln!(out, "be={be_scheme}://{}", emulator.be_addr())?;
    if let Some(path) = &args.ca_out {
        writeln!(out, "ca={}", path.display())?;
    }
    let mode = args
        .mode
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    writeln!(out, "mode={mode}")?;
    out.flush()
}

async fn stop_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulateArgs,
    }

    #[test]
    fn parses_flags() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "x",
            "--table",
            "db.t:3",
            "--table",
            "db.u:1",
            "--mode",
            "redirect-tls-be",
            "--for",
            "5s",
            "--port",
            "0",
            "--cert",
            "wrong-name",
        ]);
        assert_eq!(cli.args.cert, CertKind::WrongName);
        assert_eq!(cli.args.tables.len(), 2);
        assert_eq!(cli.args.mode, Mode::RedirectTlsBe);
        assert_eq!(cli.args.run_for, Some(Duration::from_secs(5)));
        assert_eq!(cli.args.label_keep, Duration::from_secs(3 * 24 * 3600));
        assert!(Cli::try_parse_from(["x", "--table", "nope"]).is_err());
    }

    #[tokio::test]
    async fn stops_by_itself_and_writes_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let password = dir.path().join("pw");
        std::fs::write(&password, "secret\n").unwrap();
        let cli = Cli::parse_from([
            "x",
            "--for",
            "50ms",
            "--ca-out",
            ca.to_str().unwrap(),
            "--password-file",
            password.to_str().unwrap(),
        ]);
        tokio::time::timeout(Duration::from_secs(10), run_cli(cli.args))
            .await
            .unwrap()
            .unwrap();
        assert!(
            std::fs::read_to_string(&ca)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
    }
}
