//! The ledger commands' side: find the ledger, ask the running service or open the store, and
//! write the answer to standard output or to a file.
//!
//! The service's socket is tried first: when it answers, the service holds the store and the
//! answer comes from it. Otherwise the command opens the ledger itself. While it does, a
//! `sluice run` starting at that moment finds the ledger locked and exits (systemd's restart
//! brings it back): keep direct reads of a large ledger for when the service is stopped, or run
//! them while it runs.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::socket::{ask, socket_path};
use super::{AuditError, Filter, Query, Verdict, answer};
use crate::cli::{LedgerCommand, LedgerFilterArgs, LedgerSource};
use crate::config::Config;
use crate::ledger::{Ledger, LedgerError};

/// Runs one `sluice ledger` command to completion.
///
/// # Errors
///
/// The configuration or the ledger cannot be read, the service's answer failed, the output
/// cannot be written. A closed output pipe is not an error: the command stops quietly.
pub fn run_command(command: &LedgerCommand) -> anyhow::Result<Verdict> {
    let (source, query, out) = query_of(command);
    let dir = ledger_dir(source)?;
    let mut output = Output::open(out)?;
    let result = ask_or_open(&dir, &query, output.writer());
    let verdict = match result {
        Err(AuditError::Write(err)) if err.kind() == io::ErrorKind::BrokenPipe => {
            return Ok(Verdict::Done);
        }
        other => other?,
    };
    output.finish()?;
    Ok(verdict)
}

fn query_of(command: &LedgerCommand) -> (&LedgerSource, Query, Option<&Path>) {
    match command {
        // `commands::dispatch` sends `resolve` to the service's operator module, never here:
        // a decision writes the ledger, and these queries only read it.
        LedgerCommand::Resolve(_) => unreachable!("ledger resolve is dispatched before audit"),
        LedgerCommand::Export(args) => (
            &args.source,
            Query::Export {
                format: args.format,
            },
            args.out.as_deref(),
        ),
        LedgerCommand::List(args) => (
            &args.source,
            Query::List {
                filter: filter_of(&args.filter),
                json: args.json,
            },
            None,
        ),
        LedgerCommand::Show(args) => (
            &args.source,
            Query::Show {
                keys: show_keys(&args.key),
                json: args.json,
            },
            None,
        ),
        LedgerCommand::Stats(args) => (
            &args.source,
            Query::Stats {
                filter: filter_of(&args.filter),
                json: args.json,
            },
            None,
        ),
        LedgerCommand::Verify(args) => (
            &args.source,
            Query::Verify {
                anchors: args.anchor.clone(),
            },
            None,
        ),
    }
}

fn filter_of(args: &LedgerFilterArgs) -> Filter {
    Filter {
        label: args.label.clone(),
        path: args.path.clone(),
        since: args.since,
        statuses: args.status.clone(),
        table: args.table.clone(),
        until: args.until,
    }
}

/// The key as given, plus its absolute form when it names a file here: the service's working
/// directory is not ours, and the ledger keeps absolute paths.
fn show_keys(key: &str) -> Vec<String> {
    let mut keys = vec![key.to_owned()];
    if let Ok(full) = fs::canonicalize(key) {
        keys.push(full.display().to_string());
    } else if let Ok(cwd) = std::env::current_dir()
        && Path::new(key).is_relative()
        && key.contains('/')
    {
        keys.push(cwd.join(key).display().to_string());
    }
    keys
}

fn ledger_dir(source: &LedgerSource) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &source.ledger {
        return Ok(dir.clone());
    }
    let config = Config::load(&source.config.config)?;
    Ok(config.ledger.path)
}

/// Asks the service that holds the ledger, or opens it when none does.
fn ask_or_open(dir: &Path, query: &Query, out: &mut dyn Write) -> Result<Verdict, AuditError> {
    let socket = socket_path(dir);
    let refused = match UnixStream::connect(&socket) {
        Ok(stream) => return ask(&socket, stream, query, out),
        Err(err) => err,
    };
    // sled would create an empty ledger at a mistyped path; an auditor wants to hear about it.
    if !dir.join("db").exists() {
        return Err(AuditError::Service(format!(
            "no ledger at `{}` (no sled `db` file there)",
            dir.display()
        )));
    }
    match Ledger::open_for_reading(dir) {
        Ok(ledger) => answer(&ledger, query, out),
        Err(LedgerError::Locked { path }) => Err(AuditError::Service(format!(
            "ledger at `{}` is held by another sluice process, and its audit socket `{}` does \
             not answer ({refused}); is that process an older sluice, or is the socket's \
             folder not reachable for this user?",
            path.display(),
            socket.display()
        ))),
        Err(err) => Err(err.into()),
    }
}

/// Standard output, or a temporary file beside `--out` that becomes it on success.
enum Output {
    Stdout(BufWriter<io::StdoutLock<'static>>),
    File {
        writer: BufWriter<tempfile::NamedTempFile>,
        dest: PathBuf,
    },
}

impl Output {
    fn open(out: Option<&Path>) -> anyhow::Result<Output> {
        let Some(dest) = out else {
            return Ok(Output::Stdout(BufWriter::new(io::stdout().lock())));
        };
        let dir = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".sluice-export-")
            .tempfile_in(dir)
            .with_context(|| format!("failed to create a file in `{}`", dir.display()))?;
        Ok(Output::File {
            writer: BufWriter::with_capacity(256 * 1024, temp),
            dest: dest.to_path_buf(),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File { writer, .. } => writer,
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::Stdout(mut w) => match w.flush() {
                Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
                    Err(err).context("failed to write standard output")
                }
                _ => Ok(()),
            },
            Output::File { writer, dest } => {
                let temp = writer
                    .into_inner()
                    .map_err(|err| err.into_error())
                    .with_context(|| format!("failed to write `{}`", dest.display()))?;
                temp.as_file()
                    .sync_all()
                    .with_context(|| format!("failed to write `{}`", dest.display()))?;
                if let Err(err) = temp.persist(&dest) {
                    bail!(
                        "failed to rename the export to `{}`: {}",
                        dest.display(),
                        err.error
                    );
                }
                Ok(())
            }
        }
    }
}
