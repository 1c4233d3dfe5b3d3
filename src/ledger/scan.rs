//! Reads the auditors' views need beyond the service's own: records newest first.

use super::{Ledger, LedgerError, Record, decode, decode_id};

impl Ledger {
    /// Every record, newest first (by id), streaming.
    pub fn records_newest_first(&self) -> impl Iterator<Item = Result<Record, LedgerError>> + '_ {
        self.records.iter().rev().map(|item| {
            let (key, bytes) = item.map_err(LedgerError::Read)?;
            decode(decode_id(&key), &bytes)
        })
    }
}
