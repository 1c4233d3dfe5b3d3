//! What the auditors' views need beyond the service's own: a reader's open, records newest
//! first.

use std::path::Path;

use super::{Ledger, LedgerError, Record, decode, decode_id};

/// The page cache of a ledger opened for reading. A full scan touches every page once, so a
/// large cache only grows memory: with sled's default (1 GiB) an export of a million records
/// peaked at 2 GiB resident; with this at about 380 MiB, of which some 340 MiB is what sled
/// holds for any open ledger of that size (its page table, built when it opens).
const READER_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl Ledger {
    /// Opens the ledger as `open` does, with a small page cache, for the ledger commands that
    /// scan it whole.
    ///
    /// # Errors
    ///
    /// As `open`: `Locked` when another process holds it.
    pub fn open_for_reading(path: &Path) -> Result<Ledger, LedgerError> {
        Self::open_with(path, sled::Config::new().cache_capacity(READER_CACHE_BYTES))
    }

    /// Every record, newest first (by id), streaming.
    pub fn records_newest_first(&self) -> impl Iterator<Item = Result<Record, LedgerError>> + '_ {
        self.records.iter().rev().map(|item| {
            let (key, bytes) = item.map_err(LedgerError::Read)?;
            decode(decode_id(&key), &bytes)
        })
    }
}
