//! `sluice ledger stats`: files, bytes and rows by day, table and status.
//!
//! The day is the UTC date the file was taken (`first_seen`). Memory grows with days × tables ×
//! statuses, not with records.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::{AuditError, Filter};
use crate::ledger::Ledger;

/// The sums of one group.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Totals {
    files: u64,
    bytes: u64,
    rows_loaded: u64,
    rows_filtered: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.rows_loaded += other.rows_loaded;
        self.rows_filtered += other.rows_filtered;
    }
}

/// One output line of `--json`.
#[derive(Serialize)]
struct StatsLine<'a> {
    /// `YYYY-MM-DD`, or `all` for the totals over every day.
    day: &'a str,
    table: &'a str,
    status: &'a str,
    #[serde(flatten)]
    totals: Totals,
}

/// Writes the sums per (day, table, status), then per (table, status) over all days.
///
/// # Errors
///
/// A ledger read or an output write failed, or the path glob is bad.
pub(super) fn stats(
    ledger: &Ledger,
    filter: &Filter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    let matcher = filter.matcher()?;
    let mut by_day: BTreeMap<(String, String, &'static str), Totals> = BTreeMap::new();
    for record in ledger.records() {
        let record = record?;
        if !matcher.matches(&record) {
            continue;
        }
        let day = humantime::format_rfc3339_seconds(record.first_seen).to_string();
        let day = day.get(..10).unwrap_or(&day).to_owned();
        let totals = by_day
            .entry((day, record.target(), record.status.as_str()))
            .or_default();
        totals.add(&Totals {
            files: 1,
            bytes: record.bytes,
            rows_loaded: record.rows_loaded.unwrap_or(0),
            rows_filtered: record.rows_filtered.unwrap_or(0),
        });
    }
    let mut all: BTreeMap<(&str, &str), Totals> = BTreeMap::new();
    for ((_, table, status), totals) in &by_day {
        all.entry((table, status)).or_default().add(totals);
    }

    if !json {
        writeln!(
            out,
            "{:<10}  {:<24}  {:<13}  {:>9}  {:>14}  {:>12}  {:>9}",
            "day", "table", "status", "files", "bytes", "rows", "filtered"
        )?;
    }
    for ((day, table, status), totals) in &by_day {
        write_line(out, json, day, table, status, totals)?;
    }
    for ((table, status), totals) in &all {
        write_line(out, json, "all", table, status, totals)?;
    }
    Ok(())
}

fn write_line(
    out: &mut dyn Write,
    json: bool,
    day: &str,
    table: &str,
    status: &str,
    totals: &Totals,
) -> Result<(), AuditError> {
    if json {
        let line = StatsLine {
            day,
            table,
            status,
            totals: *totals,
        };
        serde_json::to_writer(&mut *out, &line).map_err(|err| AuditError::Write(err.into()))?;
        out.write_all(b"\n")?;
    } else {
        writeln!(
            out,
            "{day:<10}  {table:<24}  {status:<13}  {:>9}  {:>14}  {:>12}  {:>9}",
            totals.files, totals.bytes, totals.rows_loaded, totals.rows_filtered
        )?;
    }
    Ok(())
}
