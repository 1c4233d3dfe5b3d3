//! `sluice ledger show`: whole records with every attempt, every operator action and their
//! chain entries, found by label, SHA-256 (or a prefix of either) or path.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::AuditError;
use crate::ledger::{Attempt, Ledger, Record, SealedRecord};

/// Shortest label or SHA-256 prefix taken as a key, so that a stray short word does not match
/// half the ledger.
const MIN_PREFIX: usize = 8;

/// Writes every record that any of `keys` names, oldest first: as text, or with `json` one JSON
/// object per record (the stored record plus `record_sha256` and `chain`).
///
/// # Errors
///
/// `NotFound` when no record matches; a ledger read or an output write failed.
pub(super) fn show(
    ledger: &Ledger,
    keys: &[String],
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    let mut found = 0;
    for sealed in ledger.sealed_records() {
        let sealed = sealed?;
        if !keys.iter().any(|key| is_named_by(&sealed.record, key)) {
            continue;
        }
        if found > 0 && !json {
            writeln!(out)?;
        }
        found += 1;
        if json {
            write_json(out, &sealed)?;
        } else {
            write_text(out, &sealed)?;
        }
    }
    if found == 0 {
        return Err(AuditError::NotFound(
            keys.first().cloned().unwrap_or_default(),
        ));
    }
    Ok(())
}

fn is_named_by(record: &Record, key: &str) -> bool {
    let is_prefix = |full: &str| key.len() >= MIN_PREFIX && full.starts_with(key);
    let is_path = |path: &Path| {
        path.as_os_str() == key
            || (!key.contains('/') && path.file_name().is_some_and(|n| n == key))
    };
    record.label == key
        || record.sha256 == key
        || is_prefix(&record.label)
        || is_prefix(&record.sha256)
        || is_path(&record.path)
        || record.disposed_to.as_deref().is_some_and(is_path)
}

fn write_json(out: &mut dyn Write, sealed: &SealedRecord) -> Result<(), AuditError> {
    let to_io = |err: serde_json::Error| AuditError::Write(err.into());
    let mut value = serde_json::to_value(&sealed.record).map_err(to_io)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("record_sha256".into(), sealed.record_sha256.clone().into());
        let chain = sealed
            .chain
            .iter()
            .map(|e| {
                serde_json::json!({"seq": e.seq, "record_sha256": e.record_sha256, "hash": e.hash})
            })
            .collect();
        object.insert("chain".into(), serde_json::Value::Array(chain));
    }
    serde_json::to_writer(&mut *out, &value).map_err(to_io)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn write_text(out: &mut dyn Write, sealed: &SealedRecord) -> Result<(), AuditError> {
    let r = &sealed.record;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    writeln!(out, "record {}  {}", r.id, r.label)?;
    writeln!(out, "  target        {}", r.target())?;
    writeln!(out, "  status        {}", r.status.as_str())?;
    writeln!(out, "  file          {}", r.path.display())?;
    if let Some(to) = &r.disposed_to {
        writeln!(out, "  moved to      {}", to.display())?;
    }
    writeln!(out, "  sha256        {}", r.sha256)?;
    writeln!(out, "  bytes         {}", r.bytes)?;
    writeln!(out, "  first seen    {}", time(r.first_seen))?;
    writeln!(out, "  finished      {}", opt(r.finished_at.map(time)))?;
    writeln!(
        out,
        "  rows          loaded {}, filtered {}",
        opt(r.rows_loaded.map(|n| n.to_string())),
        opt(r.rows_filtered.map(|n| n.to_string()))
    )?;
    writeln!(
        out,
        "  txn id        {}",
        opt(r.txn_id.map(|n| n.to_string()))
    )?;
    if let Some(message) = &r.message {
        writeln!(out, "  message       {message}")?;
    }
    if let Some(of) = &r.duplicate_of {
        writeln!(out, "  duplicate of  {of}")?;
    }
    if let Some(next) = r.next_attempt_at {
        writeln!(out, "  next attempt  {}", time(next))?;
    }
    writeln!(out, "  attempts      {}", r.attempts.len())?;
    for attempt in &r.attempts {
        write_attempt(out, attempt)?;
    }
    writeln!(out, "  actions       {}", r.actions.len())?;
    for action in &r.actions {
        writeln!(
            out,
            "    {}  by {}: {} (was {}): {}",
            time(action.at),
            action.by,
            action.decision,
            action.from_status.as_str(),
            action.reason
        )?;
    }
    let last = sealed.chain.last();
    writeln!(
        out,
        "  chain         {} entries, last seq {} hash {}",
        sealed.chain.len(),
        opt(last.map(|e| e.seq.to_string())),
        opt(last.map(|e| e.hash.clone())),
    )?;
    let matches = last.is_some_and(|e| e.record_sha256 == sealed.record_sha256);
    writeln!(
        out,
        "  record sha256 {} ({})",
        sealed.record_sha256,
        if matches {
            "matches its last chain entry"
        } else {
            "DOES NOT MATCH its chain: run `sluice ledger verify`"
        }
    )?;
    Ok(())
}

fn write_attempt(out: &mut dyn Write, a: &Attempt) -> Result<(), AuditError> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let took = a
        .duration_ms
        .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string());
    writeln!(
        out,
        "    #{} {}  took {}  {}  http {}  status {}  txn {}  rows loaded {} filtered {}  bytes {}",
        a.number,
        time(a.started_at),
        opt(took),
        opt(a.outcome.clone()),
        opt(a.http_status.map(|s| s.to_string())),
        opt(a.cluster_status.clone()),
        opt(a.txn_id.map(|n| n.to_string())),
        opt(a.rows_loaded.map(|n| n.to_string())),
        opt(a.rows_filtered.map(|n| n.to_string())),
        a.bytes,
    )?;
    if let Some(message) = &a.message {
        writeln!(out, "       message: {message}")?;
    }
    Ok(())
}

fn time(t: SystemTime) -> String {
    super::rfc3339(t)
}
