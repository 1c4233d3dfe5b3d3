//! The `sluice` binary: parse the command line, set up logging, run a command, exit with its code.

use std::process::ExitCode;

use clap::Parser;

use sluice::cli::Cli;
use sluice::commands::{self, Exit};
use sluice::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log_level, cli.log_format);
    let exit = match commands::dispatch(cli.command) {
        Ok(exit) => exit,
        Err(err) => {
            sluice::progress::clear();
            eprintln!("sluice: {err:#}");
            Exit::Failure
        }
    };
    ExitCode::from(exit as u8)
}
