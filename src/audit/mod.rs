//! The auditors' side of the ledger: `list`, `show`, `export`, `verify` and `stats`.
//!
//! Every view is a function from a [`Query`] and a `Ledger` to bytes on a writer. A command
//! opens the ledger itself when it is free; while `sluice run` or `once` holds it (sled allows
//! one process), the command sends the same `Query` over a read-only Unix socket in the ledger
//! directory and the service answers from its own handle in a blocking thread (`socket`). The
//! export's field names and order are part of the outside interface (DESIGN.md): keep them.

mod client;
mod export;
mod filter;
mod list;
mod show;
mod socket;
mod stats;
mod verify;

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::ledger::{Ledger, LedgerError};

pub use client::run_command;
pub use export::{ExportFormat, ExportRecord, export, export_jsonl, parse_csv};
pub use filter::{Filter, parse_time};
pub use list::{list, print_list};
pub use socket::{AuditServer, SOCKET_NAME, serve};
pub use verify::Anchor;

/// Errors while answering a query.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("failed to write output: {0}")]
    Write(#[from] io::Error),
    #[error("bad `--path` glob `{glob}`: {source}")]
    Glob {
        glob: String,
        source: globset::Error,
    },
    #[error("no record matches `{0}`")]
    NotFound(String),
    /// The service answered the query with an error.
    #[error("{0}")]
    Service(String),
}

/// How a query ended, when it ran to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done; for `verify`, the ledger is intact.
    Done,
    /// `verify` found the ledger altered or damaged.
    Broken,
}

/// A read of the ledger, as the CLI asks it and as it travels over the audit socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum Query {
    Export {
        format: ExportFormat,
    },
    List {
        filter: Filter,
        json: bool,
    },
    /// Records whose label or SHA-256 starts with any key (of 8 characters or more), or whose
    /// path, disposed path or file name equals one.
    Show {
        keys: Vec<String>,
        json: bool,
    },
    Stats {
        filter: Filter,
        json: bool,
    },
    Verify {
        anchors: Vec<Anchor>,
    },
}

/// Answers `query` from `ledger` onto `out`. A reader that goes away (a closed pipe) ends the
/// answer quietly.
///
/// # Errors
///
/// A ledger read or an output write failed, a glob is bad, or `show` found nothing.
pub fn answer(ledger: &Ledger, query: &Query, out: &mut dyn Write) -> Result<Verdict, AuditError> {
    let result = match query {
        Query::Export { format } => export(ledger, *format, out).map(|()| Verdict::Done),
        Query::List { filter, json } => list(ledger, filter, *json, out).map(|()| Verdict::Done),
        Query::Show { keys, json } => show::show(ledger, keys, *json, out).map(|()| Verdict::Done),
        Query::Stats { filter, json } => {
            stats::stats(ledger, filter, *json, out).map(|()| Verdict::Done)
        }
        Query::Verify { anchors } => verify::verify(ledger, anchors, out),
    };
    let result = result.and_then(|verdict| out.flush().map(|()| verdict).map_err(Into::into));
    match result {
        Err(AuditError::Write(err)) if err.kind() == io::ErrorKind::BrokenPipe => Ok(Verdict::Done),
        other => other,
    }
}

/// RFC 3339 in UTC with microseconds, the export's time format.
fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}
