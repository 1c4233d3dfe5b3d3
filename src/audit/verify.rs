//! `sluice ledger verify`: walks the chain and every record, names the first broken record.
//!
//! A chain proves nothing against someone who rewrites all of it; it does against anyone who
//! cannot also change a head written down elsewhere. So verify prints the head as an anchor
//! (`SEQ:HASH`), and `--anchor` checks that an anchor noted earlier still holds.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{AuditError, Verdict};
use crate::ledger::{ChainProblem, Ledger};

/// Problems printed one per line before the summary; the count is always complete.
const MAX_PRINTED: usize = 100;

/// A chain entry noted earlier: `SEQ:HASH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl FromStr for Anchor {
    type Err = String;

    fn from_str(text: &str) -> Result<Anchor, String> {
        let bad = || format!("anchor `{text}` is not SEQ:HASH (as `sluice ledger verify` prints)");
        let (seq, hash) = text.split_once(':').ok_or_else(bad)?;
        let seq = seq.parse().map_err(|_| bad())?;
        let hash = hash.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Anchor { seq, hash })
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// Verifies the ledger and every anchor, writing a report.
///
/// # Errors
///
/// A ledger read or an output write failed. Damage is `Verdict::Broken`, not an error.
pub(super) fn verify(
    ledger: &Ledger,
    anchors: &[Anchor],
    out: &mut dyn Write,
) -> Result<Verdict, AuditError> {
    let mut report = ledger.verify_chain()?;
    for anchor in anchors {
        let entry = ledger.chain_entry(anchor.seq)?;
        let record_id = entry.as_ref().map(|e| e.record_id);
        let what = match entry {
            Some(entry) if entry.hash == anchor.hash => continue,
            Some(entry) => format!(
                "anchor {anchor} no longer holds: entry {} now has hash {} (the chain was \
                 rewritten at or before it)",
                anchor.seq, entry.hash
            ),
            None => format!("anchor {anchor} is gone: the chain was cut before it"),
        };
        report.problems.push(ChainProblem {
            record_id,
            label: None,
            what,
        });
    }
    for problem in &mut report.problems {
        if problem.label.is_none()
            && let Some(id) = problem.record_id
        {
            problem.label = ledger.get(id).ok().flatten().map(|r| r.label);
        }
    }

    writeln!(
        out,
        "checked {} chain entries and {} records",
        report.entries, report.records
    )?;
    if let Some(head) = &report.head {
        writeln!(out, "head {}:{}", head.seq, head.hash)?;
    }
    if report.is_intact() {
        writeln!(
            out,
            "ok: every record matches its latest chain entry and the chain is whole"
        )?;
        return Ok(Verdict::Done);
    }
    for problem in report.problems.iter().take(MAX_PRINTED) {
        writeln!(out, "broken: {}: {}", name(problem), problem.what)?;
    }
    if report.problems.len() > MAX_PRINTED {
        writeln!(out, "... and {} more", report.problems.len() - MAX_PRINTED)?;
    }
    let first = report
        .problems
        .iter()
        .filter(|p| p.record_id.is_some())
        .min_by_key(|p| p.record_id)
        // Not intact means at least one problem.
        .unwrap_or(&report.problems[0]);
    writeln!(
        out,
        "FAILED: {} problem{}; first broken record: {}",
        report.problems.len(),
        if report.problems.len() == 1 { "" } else { "s" },
        name(first)
    )?;
    Ok(Verdict::Broken)
}

fn name(problem: &ChainProblem) -> String {
    match (&problem.record_id, &problem.label) {
        (Some(id), Some(label)) => format!("record {id} ({label})"),
        (Some(id), None) => format!("record {id}"),
        (None, _) => "the chain".to_owned(),
    }
}
