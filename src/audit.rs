//! Reading the ledger for people and scripts: the list table and the JSON-lines export.
//!
//! The export's field names and order are part of the outside interface (DESIGN.md): keep them.

use std::io::{self, Write};

use serde::Serialize;

use crate::ledger::{Ledger, LedgerError, Record};

/// Errors while writing a ledger view.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("failed to write output: {0}")]
    Write(#[from] io::Error),
}

/// One export line, in the documented field order.
#[derive(Serialize)]
pub struct ExportRecord<'a> {
    pub label: &'a str,
    pub database: &'a str,
    pub table: &'a str,
    pub sha256: &'a str,
    pub path: String,
    pub bytes: u64,
    pub status: &'static str,
    pub attempts: usize,
    pub first_seen: String,
    pub finished_at: Option<String>,
    pub rows_loaded: Option<u64>,
    pub rows_filtered: Option<u64>,
    pub txn_id: Option<i64>,
    pub message: Option<&'a str>,
    pub duplicate_of: Option<&'a str>,
}

impl<'a> ExportRecord<'a> {
    pub fn of(record: &'a Record) -> ExportRecord<'a> {
        ExportRecord {
            label: &record.label,
            database: &record.database,
            table: &record.table,
            sha256: &record.sha256,
            path: record.path.display().to_string(),
            bytes: record.bytes,
            status: record.status.as_str(),
            attempts: record.attempts.len(),
            first_seen: humantime::format_rfc3339_micros(record.first_seen).to_string(),
            finished_at: record
                .finished_at
                .map(|t| humantime::format_rfc3339_micros(t).to_string()),
            rows_loaded: record.rows_loaded,
            rows_filtered: record.rows_filtered,
            txn_id: record.txn_id,
            message: record.message.as_deref(),
            duplicate_of: record.duplicate_of.as_deref(),
        }
    }
}

/// Writes every record as one JSON object per line, oldest first, streaming.
///
/// # Errors
///
/// A ledger read or an output write failed. A closed pipe ends the output quietly.
pub fn export_jsonl(ledger: &Ledger, out: &mut impl Write) -> Result<(), AuditError> {
    for record in ledger.records() {
        let record = record?;
        let line = serde_json::to_string(&ExportRecord::of(&record))
            .map_err(|err| AuditError::Write(err.into()))?;
        if quiet_on_broken_pipe(writeln!(out, "{line}"))? {
            return Ok(());
        }
    }
    quiet_on_broken_pipe(out.flush())?;
    Ok(())
}

/// Writes a table of records, newest first.
///
/// # Errors
///
/// A ledger read or an output write failed. A closed pipe ends the output quietly.
pub fn print_list(ledger: &Ledger, out: &mut impl Write) -> Result<(), AuditError> {
    let mut records = ledger.records().collect::<Result<Vec<_>, _>>()?;
    records.reverse();
    let header = format!(
        "{:<20}  {:<13}  {:<24}  {:>9}  {:>10}  {:>3}  {}",
        "first seen", "status", "table", "rows", "bytes", "try", "file (label)"
    );
    if quiet_on_broken_pipe(writeln!(out, "{header}"))? {
        return Ok(());
    }
    for record in &records {
        let when = humantime::format_rfc3339_seconds(record.first_seen).to_string();
        let rows = record
            .rows_loaded
            .map_or_else(|| "-".to_owned(), |r| r.to_string());
        let line = format!(
            "{:<20}  {:<13}  {:<24}  {:>9}  {:>10}  {:>3}  {} ({})",
            when,
            record.status.as_str(),
            record.target(),
            rows,
            record.bytes,
            record.attempts.len(),
            record.path.display(),
            record.label,
        );
        if quiet_on_broken_pipe(writeln!(out, "{line}"))? {
            return Ok(());
        }
    }
    Ok(())
}

/// `Ok(true)` when the reader went away: the ledger CLI then stops without an error.
fn quiet_on_broken_pipe(result: io::Result<()>) -> Result<bool, AuditError> {
    match result {
        Ok(()) => Ok(false),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(err) => Err(err.into()),
    }
}
