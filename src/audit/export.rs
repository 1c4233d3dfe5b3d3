//! `sluice ledger export`: every record, oldest first, as JSON lines or CSV, streamed.
//!
//! The first fifteen fields are DESIGN.md's, in its order; the ones after them carry what an
//! auditor needs to re-check the chain with `jq` and `sha256sum` (README, "For auditors"):
//! `record_id`, `disposed_to`, `record_sha256`, the record's `chain` entries (and `chain_later`
//! ones written while the export ran) and the stored `record_json` itself. Memory stays flat:
//! one record at a time, written as it is read.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{AuditError, rfc3339};
use crate::ledger::{ChainEntry, Ledger, Record, SealedRecord};

/// The CSV columns, in order. CSV has no place for lists: the chain is summed up by its last
/// entry, and the stored JSON is left to the JSON-lines export.
const CSV_COLUMNS: &[&str] = &[
    "label",
    "database",
    "table",
    "sha256",
    "path",
    "bytes",
    "status",
    "attempts",
    "first_seen",
    "finished_at",
    "rows_loaded",
    "rows_filtered",
    "txn_id",
    "message",
    "duplicate_of",
    "record_id",
    "disposed_to",
    "record_sha256",
    "chain_seq",
    "chain_hash",
];

/// The export's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// A record's outside fields: DESIGN.md's, in its order, then `record_id` and `disposed_to`.
/// `list --json` prints exactly this.
#[derive(Debug, Serialize)]
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
    pub record_id: u64,
    pub disposed_to: Option<String>,
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
            first_seen: rfc3339(record.first_seen),
            finished_at: record.finished_at.map(rfc3339),
            rows_loaded: record.rows_loaded,
            rows_filtered: record.rows_filtered,
            txn_id: record.txn_id,
            message: record.message.as_deref(),
            duplicate_of: record.duplicate_of.as_deref(),
            record_id: record.id,
            disposed_to: record.disposed_to.as_ref().map(|p| p.display().to_string()),
        }
    }
}

/// One JSON-lines export line: the outside fields, then the evidence.
#[derive(Serialize)]
struct ExportLine<'a> {
    #[serde(flatten)]
    record: ExportRecord<'a>,
    record_sha256: &'a str,
    /// The record's entries up to the chain head when the export began: over the whole export
    /// these are exactly entries 1 to that head.
    chain: Vec<ExportLink<'a>>,
    /// Entries written while the export ran (a live service); empty otherwise.
    chain_later: Vec<ExportLink<'a>>,
    record_json: &'a str,
}

/// One chain entry of a record, as exported.
#[derive(Serialize)]
struct ExportLink<'a> {
    seq: u64,
    record_sha256: &'a str,
    hash: &'a str,
}

/// Writes every record in `format`, oldest first, streaming.
///
/// # Errors
///
/// A ledger read or an output write failed.
pub fn export(
    ledger: &Ledger,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    if format == ExportFormat::Csv {
        write_csv_row(out, CSV_COLUMNS.iter().map(|c| Some((*c).to_owned())))?;
    }
    // Entries past this are left to `chain_later`, so that the export's chain is whole even
    // while the service writes.
    let head = ledger.chain_head()?.map_or(0, |h| h.seq);
    for sealed in ledger.sealed_records() {
        let sealed = sealed?;
        match format {
            ExportFormat::Jsonl => write_jsonl(out, &sealed, head)?,
            ExportFormat::Csv => write_csv(out, &sealed)?,
        }
    }
    Ok(())
}

/// The JSON-lines export onto `out` (kept for callers of the first version).
///
/// # Errors
///
/// A ledger read or an output write failed. A closed pipe ends the output quietly.
pub fn export_jsonl(ledger: &Ledger, out: &mut impl Write) -> Result<(), AuditError> {
    super::answer(
        ledger,
        &super::Query::Export {
            format: ExportFormat::Jsonl,
        },
        out,
    )
    .map(drop)
}

fn write_jsonl(out: &mut dyn Write, sealed: &SealedRecord, head: u64) -> Result<(), AuditError> {
    let (chain, later): (Vec<_>, Vec<_>) = sealed.chain.iter().partition(|e| e.seq <= head);
    let line = ExportLine {
        record: ExportRecord::of(&sealed.record),
        record_sha256: &sealed.record_sha256,
        chain: chain.into_iter().map(link).collect(),
        chain_later: later.into_iter().map(link).collect(),
        record_json: &sealed.stored,
    };
    serde_json::to_writer(&mut *out, &line).map_err(|err| AuditError::Write(err.into()))?;
    out.write_all(b"\n")?;
    Ok(())
}

fn link(entry: &ChainEntry) -> ExportLink<'_> {
    ExportLink {
        seq: entry.seq,
        record_sha256: &entry.record_sha256,
        hash: &entry.hash,
    }
}

fn write_csv(out: &mut dyn Write, sealed: &SealedRecord) -> Result<(), AuditError> {
    let r = ExportRecord::of(&sealed.record);
    let last = sealed.chain.last();
    let fields = [
        Some(r.label.to_owned()),
        Some(r.database.to_owned()),
        Some(r.table.to_owned()),
        Some(r.sha256.to_owned()),
        Some(r.path),
        Some(r.bytes.to_string()),
        Some(r.status.to_owned()),
        Some(r.attempts.to_string()),
        Some(r.first_seen),
        r.finished_at,
        r.rows_loaded.map(|n| n.to_string()),
        r.rows_filtered.map(|n| n.to_string()),
        r.txn_id.map(|n| n.to_string()),
        r.message.map(str::to_owned),
        r.duplicate_of.map(str::to_owned),
        Some(r.record_id.to_string()),
        r.disposed_to,
        Some(sealed.record_sha256.clone()),
        last.map(|e| e.seq.to_string()),
        last.map(|e| e.hash.clone()),
    ];
    write_csv_row(out, fields.into_iter())
}

/// One CSV row: fields with a comma, quote or line break are quoted, quotes doubled; a missing
/// value is an empty field.
fn write_csv_row(
    out: &mut dyn Write,
    fields: impl Iterator<Item = Option<String>>,
) -> Result<(), AuditError> {
    let mut line = String::new();
    for (i, field) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        let field = field.unwrap_or_default();
        if field.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&field);
        }
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())?;
    Ok(())
}

/// Parses one CSV export back into rows of fields (for tests and tools; quoted fields may hold
/// line breaks).
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_round_trip_through_quotes_and_line_breaks() {
        let mut out = Vec::new();
        let fields = ["plain", "a,b", "say \"hi\"", "two\nlines", ""];
        write_csv_row(&mut out, fields.iter().map(|f| Some((*f).to_owned()))).unwrap();
        write_csv_row(&mut out, [None, Some("x".to_owned())].into_iter()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows = parse_csv(&text);
        assert_eq!(rows[0], fields);
        assert_eq!(rows[1], ["", "x"]);
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn csv_columns_begin_with_the_design_fields_in_order() {
        let design = [
            "label",
            "database",
            "table",
            "sha256",
            "path",
            "bytes",
            "status",
            "attempts",
            "first_seen",
            "finished_at",
            "rows_loaded",
            "rows_filtered",
            "txn_id",
            "message",
            "duplicate_of",
        ];
        assert_eq!(&CSV_COLUMNS[..design.len()], design);
    }
}
