//! The command line: parsing only. `main` turns it into work and an exit code.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};

use crate::ledger::Status;

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

/// `sluice ledger ...`: for auditors. Works while `sluice run` holds the ledger (through its
/// audit socket) and without it (opening the ledger directly).
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Every record with its evidence (stored JSON, SHA-256 chain), oldest first, streamed.
    Export(LedgerExportArgs),
    /// One line per file record, newest first.
    List(LedgerListArgs),
    /// The whole record of a label, SHA-256 or path: every attempt and operator action.
    Show(LedgerShowArgs),
    /// Files, bytes and rows by day, table and status.
    Stats(LedgerStatsArgs),
    /// Check the ledger's SHA-256 chain; exit 5 naming the first broken record when it fails.
    Verify(LedgerVerifyArgs),
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

/// Where the ledger commands find the ledger.
#[derive(Debug, Args)]
pub struct LedgerSource {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The ledger directory itself (`[ledger] path`); the configuration is then not read, so
    /// no access to the password is needed.
    #[arg(long, env = "SLUICE_LEDGER", value_name = "DIR")]
    pub ledger: Option<PathBuf>,
}

/// Which records `ledger list` and `ledger stats` take.
#[derive(Debug, Args)]
pub struct LedgerFilterArgs {
    /// Only records whose label starts with this.
    #[arg(long)]
    pub label: Option<String>,
    /// Only files whose path, moved-to path or file name matches this glob (`*` crosses `/`).
    #[arg(long, value_name = "GLOB")]
    pub path: Option<String>,
    /// Only files taken at or after TIME: an age such as `2d` or `90m`, or RFC 3339
    /// (`2024-05-01T00:00:00Z`, or `2024-05-01` for its midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// Only these statuses, comma-separated or repeated: pending, submitting, loaded,
    /// duplicate, rejected, retrying, indeterminate.
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    pub status: Vec<Status>,
    /// Only this target: `DB.TABLE`, or a table name in any database.
    #[arg(long, value_name = "DB.TABLE")]
    pub table: Option<String>,
    /// Only files taken before TIME (same forms as `--since`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<SystemTime>,
}

/// `sluice ledger export`.
#[derive(Debug, Args)]
pub struct LedgerExportArgs {
    #[command(flatten)]
    pub source: LedgerSource,
    /// Output format.
    #[arg(long, default_value = "jsonl")]
    pub format: crate::audit::ExportFormat,
    /// Write to FILE (complete or not at all: written beside it, then renamed) instead of
    /// standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `sluice ledger list`.
#[derive(Debug, Args)]
pub struct LedgerListArgs {
    #[command(flatten)]
    pub source: LedgerSource,
    #[command(flatten)]
    pub filter: LedgerFilterArgs,
    /// JSON lines (DESIGN.md's export fields) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `sluice ledger show`.
#[derive(Debug, Args)]
pub struct LedgerShowArgs {
    #[command(flatten)]
    pub source: LedgerSource,
    /// A label or SHA-256 (or a prefix of 8 or more characters), or the path or name of the
    /// file (where it was found or where it was moved).
    #[arg(value_name = "LABEL|SHA256|PATH")]
    pub key: String,
    /// One JSON object per record (the stored record, `record_sha256`, `chain`).
    #[arg(long)]
    pub json: bool,
}

/// `sluice ledger stats`.
#[derive(Debug, Args)]
pub struct LedgerStatsArgs {
    #[command(flatten)]
    pub source: LedgerSource,
    #[command(flatten)]
    pub filter: LedgerFilterArgs,
    /// JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `sluice ledger verify`.
#[derive(Debug, Args)]
pub struct LedgerVerifyArgs {
    #[command(flatten)]
    pub source: LedgerSource,
    /// A head printed by an earlier verify (`SEQ:HASH`) that must still be in the chain;
    /// repeatable.
    #[arg(long, value_name = "SEQ:HASH")]
    pub anchor: Vec<crate::audit::Anchor>,
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    crate::audit::parse_time(text, SystemTime::now())
}

fn parse_status(text: &str) -> Result<Status, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!(
            "unknown status `{text}` (pending, submitting, loaded, duplicate, rejected, \
             retrying, indeterminate)"
        )
    })
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
