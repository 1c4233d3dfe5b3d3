//! `sluice ledger list`: one line per record, newest first, as a table or as JSON lines.
//!
//! The table fits about 120 columns: the file's name alone (the whole path is in `show` and
//! `--json`) and the first 12 hex digits of its SHA-256, which `show` accepts as a key.

use std::io::Write;

use super::export::ExportRecord;
use super::{AuditError, Filter};
use crate::ledger::{Ledger, Record};

const TABLE_WIDTH: usize = 20;

/// Writes the records that match `filter`, newest first: a table, or JSON lines with `json`.
///
/// # Errors
///
/// A ledger read or an output write failed, or the path glob is bad.
pub fn list(
    ledger: &Ledger,
    filter: &Filter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    let matcher = filter.matcher()?;
    if !json {
        writeln!(
            out,
            "{:<19}  {:<13}  {:<TABLE_WIDTH$}  {:>9}  {:>11}  {:>3}  {:<12}  file",
            "first seen (UTC)", "status", "table", "rows", "bytes", "try", "sha256"
        )?;
    }
    for record in ledger.records_newest_first() {
        let record = record?;
        if !matcher.matches(&record) {
            continue;
        }
        if json {
            serde_json::to_writer(&mut *out, &ExportRecord::of(&record))
                .map_err(|err| AuditError::Write(err.into()))?;
            out.write_all(b"\n")?;
        } else {
            write_row(out, &record)?;
        }
    }
    Ok(())
}

/// The whole ledger as a table, newest first (what `sluice demo` prints).
///
/// # Errors
///
/// A ledger read or an output write failed. A closed pipe ends the output quietly.
pub fn print_list(ledger: &Ledger, out: &mut impl Write) -> Result<(), AuditError> {
    let query = super::Query::List {
        filter: Filter::default(),
        json: false,
    };
    super::answer(ledger, &query, out).map(drop)
}

fn write_row(out: &mut dyn Write, record: &Record) -> Result<(), AuditError> {
    let when = humantime::format_rfc3339_seconds(record.first_seen).to_string();
    let when = when.trim_end_matches('Z').replacen('T', " ", 1);
    let rows = record
        .rows_loaded
        .map_or_else(|| "-".to_owned(), |r| r.to_string());
    let name = record.path.file_name().map_or_else(
        || record.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    writeln!(
        out,
        "{when:<19}  {:<13}  {:<TABLE_WIDTH$}  {rows:>9}  {:>11}  {:>3}  {:<12}  {name}",
        record.status.as_str(),
        shorten(&record.target(), TABLE_WIDTH),
        record.bytes,
        record.attempts.len(),
        record.sha256.get(..12).unwrap_or(&record.sha256),
    )?;
    Ok(())
}

/// `text` cut to `width` characters, the cut marked with `…`.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width - 1).collect();
    short.push('…');
    short
}
