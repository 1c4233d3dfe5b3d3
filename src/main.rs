//! The `sluice` binary: parse the command line, set up logging, run a command, exit with its code.

use std::process::ExitCode;

use clap::Parser;

use sluice::cli::{Cli, LogFormat};
use sluice::commands::{self, Exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_level, cli.log_format);
    let exit = match commands::dispatch(cli.command) {
        Ok(exit) => exit,
        Err(err) => {
            eprintln!("sluice: {err:#}");
            Exit::Failure
        }
    };
    ExitCode::from(exit as u8)
}

fn init_tracing(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd the journal adds its own timestamps and has no use for colours.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if journal => builder.without_time().with_ansi(false).init(),
        LogFormat::Text => builder.init(),
    }
}
