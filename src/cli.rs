//! The command line: parsing only. `main` turns it into work and an exit code.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Loads files from landing directories into StarRocks or CelerData over HTTPS Stream Load,
/// exactly once.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
#[deny(missing_docs)]
pub struct Cli {
    /// Log filter in RUST_LOG form (`info`, `sluice=debug`); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info", env = "SLUICE_LOG")]
    pub log_level: String,

    /// Log line format: `text` (default; plain when stderr is the journal) or `json`.
    #[arg(long, global = true, default_value = "text", env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch every landing folder and load files as they become ready, until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Load everything ready now, wait for every outcome, and exit.
    Once(OnceArgs),
    /// Validate the configuration without touching the network.
    Check(ConfigArg),
    /// Reach the cluster as loads will: DNS, TCP, TLS at `ssl_mode`, credentials, each
    /// watch's database and table, the FE's redirect. Loads nothing.
    Doctor(ConfigArg),
    /// Print the label a file would be loaded under.
    Label(LabelArgs),
    /// Read the load ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Start the built-in emulator, load sample files over HTTPS, print the ledger.
    Demo(DemoArgs),
    /// Run the built-in Stream Load emulator alone.
    Emulate(crate::emulator::EmulateArgs),
}

/// The configuration file option shared by the service commands.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Path of the TOML configuration.
    #[arg(
        long,
        short,
        env = "SLUICE_CONFIG",
        default_value = "/etc/sluice/sluice.toml"
    )]
    pub config: PathBuf,
}

/// `sluice once`.
#[derive(Debug, Args)]
pub struct OnceArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Write Prometheus metrics of the run to this file when it ends (atomically, for the node
    /// exporter's textfile collector: name it `*.prom`).
    #[arg(long, env = "SLUICE_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
}

/// `sluice label`.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The file to label.
    pub file: PathBuf,
    /// Target database.
    #[arg(long)]
    pub database: String,
    /// Target table.
    #[arg(long)]
    pub table: String,
    /// Label prefix, as `label_prefix` of the watch.
    #[arg(long, default_value = crate::label::DEFAULT_PREFIX)]
    pub prefix: String,
}

/// `sluice ledger ...`.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// One line per file record, newest first.
    List(ConfigArg),
    /// Every record as JSON lines, oldest first.
    Export(ConfigArg),
    /// Record an operator's decision on an indeterminate record, and act on it.
    Resolve(ResolveArgs),
}

/// `sluice ledger resolve`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("decision").required(true).args(["loaded", "reload"])))]
pub struct ResolveArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The label of the indeterminate record.
    pub label: String,
    /// The rows are in the table: record the file as loaded and move it to the done folder.
    #[arg(long)]
    pub loaded: bool,
    /// Load the file again: it goes back into the landing folder.
    #[arg(long, requires = "reason")]
    pub reload: bool,
    /// Why, for the auditors (required with `--reload`).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `sluice demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's folders and ledger in this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
