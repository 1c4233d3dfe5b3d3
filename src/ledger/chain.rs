//! The ledger's tamper evidence: every write of a record appends an entry to a SHA-256 chain.
//!
//! An entry binds a global sequence number, the record id, the SHA-256 of the record's stored
//! JSON and the previous entry's hash, so that editing, deleting or reordering records (or
//! entries) breaks either a record's match with its latest entry or the chain's links. The
//! record and its entry are written in one sled transaction; readers get both consistently
//! without a lock. The formula is in the README ("For auditors") and in [`entry_hash`].

use sha2::{Digest, Sha256};

use super::{Ledger, LedgerError, Record, decode, decode_id};

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const CHAIN: &str = "chain";
const CHAIN_INDEX: &str = "chain_index";
const CHAIN_HEAD: &str = "chain_head";
const HEAD_KEY: &[u8] = b"head";
/// id (8) + record SHA-256 (32) + entry hash (32).
const ENTRY_LEN: usize = 72;

/// One link of the chain: the record `record_id` was written with these bytes at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// 1 for the first write to the ledger, then +1 per write.
    pub seq: u64,
    pub record_id: u64,
    /// SHA-256 of the record's stored JSON as written at `seq`, lowercase hex.
    pub record_sha256: String,
    /// [`entry_hash`] of this entry, lowercase hex.
    pub hash: String,
}

/// The newest entry: the value to write down somewhere else as an anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

/// A record read together with its exact stored bytes and its chain entries, oldest first.
/// The last entry's `record_sha256` is the SHA-256 of `stored` unless the ledger was altered.
#[derive(Debug, Clone)]
pub struct SealedRecord {
    pub record: Record,
    /// The JSON exactly as the ledger holds it (what `record_sha256` is computed over).
    pub stored: String,
    pub record_sha256: String,
    pub chain: Vec<ChainEntry>,
}

/// What `verify_chain` found wrong, in the words an auditor needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProblem {
    /// The record concerned, when one is.
    pub record_id: Option<u64>,
    pub label: Option<String>,
    pub what: String,
}

/// The result of walking the whole chain and every record.
#[derive(Debug, Clone, Default)]
pub struct ChainReport {
    pub entries: u64,
    pub records: u64,
    pub head: Option<ChainHead>,
    /// Every problem, in the order found (chain walk first, then records by id).
    pub problems: Vec<ChainProblem>,
}

/// The hash of one entry: SHA-256 of the ASCII line
/// `sluice-chain-v1 <seq> <record_id> <record_sha256> <prev>\n`, numbers in decimal, hashes in
/// lowercase hex, `prev` being the previous entry's hash or [`GENESIS`].
pub fn entry_hash(seq: u64, record_id: u64, record_sha256: &str, prev: &str) -> String {
    let line = format!("sluice-chain-v1 {seq} {record_id} {record_sha256} {prev}\n");
    hex(&Sha256::digest(line.as_bytes()))
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Ledger {
    /// The newest chain entry, or `None` for an empty ledger.
    ///
    /// # Errors
    ///
    /// A failed read.
    pub fn chain_head(&self) -> Result<Option<ChainHead>, LedgerError> {
        let head = self
            .tree(CHAIN_HEAD)?
            .get(HEAD_KEY)
            .map_err(LedgerError::Read)?;
        Ok(head.and_then(|bytes| decode_head(&bytes)))
    }

    /// The chain entry at `seq`, if there is one (and it is well formed).
    ///
    /// # Errors
    ///
    /// A failed read.
    pub fn chain_entry(&self, seq: u64) -> Result<Option<ChainEntry>, LedgerError> {
        let value = self
            .tree(CHAIN)?
            .get(seq.to_be_bytes())
            .map_err(LedgerError::Read)?;
        Ok(value.and_then(|v| decode_entry(seq, &v)))
    }

    /// The record with this id, with its stored bytes and chain entries, read consistently
    /// while other threads write.
    ///
    /// # Errors
    ///
    /// A failed read or an undecodable record.
    pub fn sealed(&self, id: u64) -> Result<Option<SealedRecord>, LedgerError> {
        let records = &self.records;
        let index = self.tree(CHAIN_INDEX)?;
        let chain = self.tree(CHAIN)?;
        // Optimistic read: a record and its entry are written in one transaction, and every
        // write adds an entry, so an unchanged latest entry around the read of the bytes means
        // the bytes are the version that entry describes.
        loop {
            let before = latest_seq(&index, id)?;
            let Some(bytes) = records.get(id.to_be_bytes()).map_err(LedgerError::Read)? else {
                return Ok(None);
            };
            if latest_seq(&index, id)? != before {
                continue;
            }
            let record = decode(id, &bytes)?;
            let mut entries = Vec::new();
            for key in index.scan_prefix(id.to_be_bytes()).keys() {
                let key = key.map_err(LedgerError::Read)?;
                let seq = decode_id(&key[8..]);
                if before.is_some_and(|latest| seq > latest) {
                    break;
                }
                let value = chain
                    .get(key.get(8..).unwrap_or_default())
                    .map_err(LedgerError::Read)?;
                if let Some(entry) = value.and_then(|v| decode_entry(seq, &v)) {
                    entries.push(entry);
                }
            }
            return Ok(Some(SealedRecord {
                record,
                stored: String::from_utf8_lossy(&bytes).into_owned(),
                record_sha256: sha256_hex(&bytes),
                chain: entries,
            }));
        }
    }

    /// Every record with its stored bytes and chain entries, by id (oldest first), streaming.
    pub fn sealed_records(&self) -> impl Iterator<Item = Result<SealedRecord, LedgerError>> + '_ {
        self.records.iter().keys().filter_map(|key| match key {
            Ok(key) => self.sealed(decode_id(&key)).transpose(),
            Err(err) => Some(Err(LedgerError::Read(err))),
        })
    }

    /// Walks the whole chain, then every record, and reports each break. Memory stays flat
    /// (problems aside) whatever the ledger's size. Safe while the service writes: records are
    /// read consistently with their entries, and entries appended during the walk extend it.
    ///
    /// # Errors
    ///
    /// A failed read. Damage is a problem in the report, not an error.
    pub fn verify_chain(&self) -> Result<ChainReport, LedgerError> {
        let mut report = ChainReport::default();
        let start = self.chain_head()?;
        let walked = self.verify_links(&mut report)?;
        let end = self.chain_head()?;
        check_ends(&mut report, start.as_ref(), end.as_ref(), walked.as_ref());
        self.verify_records(&mut report, walked.as_ref().map_or(0, |w| w.seq))?;
        report.head = self.chain_head()?;
        Ok(report)
    }

    /// Checks every entry's link to the one before it; returns the last entry walked.
    fn verify_links(&self, report: &mut ChainReport) -> Result<Option<ChainHead>, LedgerError> {
        let chain = self.tree(CHAIN)?;
        let index = self.tree(CHAIN_INDEX)?;
        let mut last: Option<ChainHead> = None;
        for item in chain.iter() {
            let (key, value) = item.map_err(LedgerError::Read)?;
            if key.len() != 8 {
                report.problem(None, format!("the chain holds a foreign key {key:?}"));
                continue;
            }
            let seq = decode_id(&key);
            report.entries += 1;
            let expected_seq = last.as_ref().map_or(1, |l| l.seq + 1);
            if seq != expected_seq {
                let what = format!("chain entries {expected_seq} to {} are missing", seq - 1);
                report.problem(None, what);
            }
            let prev = last
                .as_ref()
                .map_or(GENESIS, |l| l.hash.as_str())
                .to_owned();
            let Some(entry) = decode_entry(seq, &value) else {
                report.problem(None, format!("chain entry {seq} is malformed"));
                continue;
            };
            if entry_hash(seq, entry.record_id, &entry.record_sha256, &prev) != entry.hash {
                let what = format!(
                    "chain entry {seq} does not follow from its contents and the entry before \
                     it: entries were edited, removed or reordered"
                );
                report.problem(Some(entry.record_id), what);
            }
            let mut index_key = entry.record_id.to_be_bytes().to_vec();
            index_key.extend_from_slice(&seq.to_be_bytes());
            if !index.contains_key(&index_key).map_err(LedgerError::Read)? {
                let what = format!("chain entry {seq} is missing from the record's index");
                report.problem(Some(entry.record_id), what);
            }
            last = Some(ChainHead {
                seq,
                hash: entry.hash,
            });
        }
        Ok(last)
    }

    /// Checks that each record's bytes are what its latest entry says, that the entry was
    /// walked (or written since), and that every record the chain names still exists.
    fn verify_records(&self, report: &mut ChainReport, walked: u64) -> Result<(), LedgerError> {
        let index = self.tree(CHAIN_INDEX)?;
        for key in self.records.iter().keys() {
            let key = key.map_err(LedgerError::Read)?;
            let id = decode_id(&key);
            report.records += 1;
            let sealed = match self.sealed(id) {
                Ok(Some(sealed)) => sealed,
                Ok(None) => continue,
                Err(LedgerError::Decode { .. }) => {
                    report.problem(Some(id), "record cannot be decoded (edited)".to_owned());
                    continue;
                }
                Err(err) => return Err(err),
            };
            let label = Some(sealed.record.label.clone());
            if sealed.record.id != id {
                let what = format!(
                    "record stored under id {id} says it is record {} (records were swapped)",
                    sealed.record.id
                );
                report.problems.push(ChainProblem {
                    record_id: Some(id),
                    label,
                    what,
                });
                continue;
            }
            match sealed.chain.last() {
                None => {
                    let what = "record has no chain entry (written outside sluice)".to_owned();
                    report.problems.push(ChainProblem {
                        record_id: Some(id),
                        label,
                        what,
                    });
                }
                Some(last) if last.record_id != id => {
                    let what = format!(
                        "chain entry {} belongs to record {}",
                        last.seq, last.record_id
                    );
                    report.problems.push(ChainProblem {
                        record_id: Some(id),
                        label,
                        what,
                    });
                }
                Some(last) if last.seq > walked && !self.is_within_head(last.seq)? => {
                    let what = format!(
                        "record's latest chain entry {} lies past the chain head (added \
                         outside sluice)",
                        last.seq
                    );
                    report.problems.push(ChainProblem {
                        record_id: Some(id),
                        label,
                        what,
                    });
                }
                Some(last) if last.record_sha256 != sealed.record_sha256 => {
                    let what = format!(
                        "record content does not match its chain entry {} (edited)",
                        last.seq
                    );
                    report.problems.push(ChainProblem {
                        record_id: Some(id),
                        label,
                        what,
                    });
                }
                Some(_) => {}
            }
        }
        // Records named by the chain that are gone.
        let mut last_id = None;
        for key in index.iter().keys() {
            let key = key.map_err(LedgerError::Read)?;
            let id = decode_id(key.get(..8).unwrap_or_default());
            if last_id == Some(id) {
                continue;
            }
            last_id = Some(id);
            if !self
                .records
                .contains_key(id.to_be_bytes())
                .map_err(LedgerError::Read)?
            {
                report.problem(
                    Some(id),
                    "record is in the chain but gone from the ledger (deleted)".to_owned(),
                );
            }
        }
        Ok(())
    }

    fn is_within_head(&self, seq: u64) -> Result<bool, LedgerError> {
        Ok(self.chain_head()?.is_some_and(|head| seq <= head.seq))
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, LedgerError> {
        // sled keeps opened trees in a map: after the first call this is a read-locked lookup.
        self.db.open_tree(name).map_err(LedgerError::Read)
    }
}

/// Compares the walk's end with the head before and after it: entries appended during the walk
/// are fine, entries missing before the starting head or past the final head are not.
fn check_ends(
    report: &mut ChainReport,
    start: Option<&ChainHead>,
    end: Option<&ChainHead>,
    walked: Option<&ChainHead>,
) {
    let walked_seq = walked.map_or(0, |w| w.seq);
    let start_seq = start.map_or(0, |h| h.seq);
    let end_seq = end.map_or(0, |h| h.seq);
    if walked_seq < start_seq {
        let what = format!(
            "chain entries {} to {start_seq} (the head) are missing",
            walked_seq + 1
        );
        report.problem(None, what);
    } else if walked_seq > end_seq {
        let what = format!(
            "chain entries {} to {walked_seq} lie past the head (added outside sluice)",
            end_seq + 1
        );
        report.problem(None, what);
    } else if walked_seq == end_seq
        && let (Some(end), Some(walked)) = (end, walked)
        && end.hash != walked.hash
    {
        let what = format!("the chain head does not match entry {}", end.seq);
        report.problem(None, what);
    }
}

impl ChainReport {
    /// Whether the chain and every record check out.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, record_id: Option<u64>, what: String) {
        self.problems.push(ChainProblem {
            record_id,
            label: None,
            what,
        });
    }
}

/// Writes a record's stored bytes and its chain entry in one transaction.
pub(super) fn insert_chained(ledger: &Ledger, id: u64, bytes: &[u8]) -> Result<(), LedgerError> {
    use sled::Transactional as _;
    use sled::transaction::{ConflictableTransactionError, TransactionError};

    let chain = ledger.tree(CHAIN)?;
    let index = ledger.tree(CHAIN_INDEX)?;
    let head = ledger.tree(CHAIN_HEAD)?;
    let record_sha256 = sha256_hex(bytes);
    // sled runs transactions one at a time (a global write lock), so reading the head inside
    // the transaction serialises the chain across every writer without a lock of ours.
    let result =
        (&ledger.records, &chain, &index, &head).transaction(|(records, chain, index, head)| {
            let (prev_seq, prev) = match head.get(HEAD_KEY)?.and_then(|v| decode_head(&v)) {
                Some(ChainHead { seq, hash }) => (seq, hash),
                None => (0, GENESIS.to_owned()),
            };
            let seq = prev_seq + 1;
            let hash = entry_hash(seq, id, &record_sha256, &prev);
            let mut value = Vec::with_capacity(ENTRY_LEN);
            value.extend_from_slice(&id.to_be_bytes());
            value.extend_from_slice(&unhex(&record_sha256));
            value.extend_from_slice(&unhex(&hash));
            let mut index_key = id.to_be_bytes().to_vec();
            index_key.extend_from_slice(&seq.to_be_bytes());
            let mut head_value = seq.to_be_bytes().to_vec();
            head_value.extend_from_slice(&unhex(&hash));

            records.insert(&id.to_be_bytes(), bytes)?;
            chain.insert(&seq.to_be_bytes(), value)?;
            index.insert(index_key, &[])?;
            head.insert(HEAD_KEY, head_value)?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
    match result {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(err)) => Err(LedgerError::Write(err)),
        // The closure never aborts.
        Err(TransactionError::Abort(())) => Ok(()),
    }
}

/// Chains records written before the chain existed, once, as they are found. Cheap when the
/// chain is already there.
pub(super) fn adopt_unchained(ledger: &Ledger) -> Result<(), LedgerError> {
    if ledger.chain_head()?.is_some() || ledger.records.is_empty() {
        return Ok(());
    }
    for item in ledger.records.iter() {
        let (key, bytes) = item.map_err(LedgerError::Read)?;
        insert_chained(ledger, decode_id(&key), &bytes)?;
    }
    ledger.flush()
}

/// The id‖seq index's latest seq for record `id`.
fn latest_seq(index: &sled::Tree, id: u64) -> Result<Option<u64>, LedgerError> {
    let last = index
        .scan_prefix(id.to_be_bytes())
        .keys()
        .next_back()
        .transpose()
        .map_err(LedgerError::Read)?;
    Ok(last.map(|key| decode_id(key.get(8..).unwrap_or_default())))
}

fn decode_entry(seq: u64, value: &[u8]) -> Option<ChainEntry> {
    if value.len() != ENTRY_LEN {
        return None;
    }
    Some(ChainEntry {
        seq,
        record_id: decode_id(&value[..8]),
        record_sha256: hex(&value[8..40]),
        hash: hex(&value[40..72]),
    })
}

fn decode_head(value: &[u8]) -> Option<ChainHead> {
    (value.len() == 40).then(|| ChainHead {
        seq: decode_id(&value[..8]),
        hash: hex(&value[8..]),
    })
}

fn hex(bytes: &[u8]) -> String {
    // A table, not `write!("{:02x}")`: the export formats three hashes per record and the
    // formatter was a tenth of its time.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Lowercase hex to bytes; only ever given our own `hex` output.
fn unhex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            (digit(pair[0]) << 4) | pair.get(1).map_or(0, |&c| digit(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::SystemTime;

    use super::*;
    use crate::ledger::Status;

    fn record(id: u64) -> Record {
        Record {
            id,
            label: format!("sluice_{id}"),
            database: "db".into(),
            table: "t".into(),
            sha256: format!("{id:064x}"),
            path: format!("/x/{id}.csv").into(),
            bytes: 1,
            status: Status::Pending,
            attempts: Vec::new(),
            first_seen: SystemTime::now(),
            finished_at: None,
            rows_loaded: None,
            rows_filtered: None,
            txn_id: None,
            message: None,
            duplicate_of: None,
            disposed_to: None,
            identity: None,
            next_attempt_at: None,
            actions: Vec::new(),
        }
    }

    #[test]
    fn entry_hash_is_the_documented_line_through_sha256() {
        // printf 'sluice-chain-v1 1 7 aaaa...(64) 0000...(64)\n' | sha256sum
        let hash = entry_hash(1, 7, &"a".repeat(64), GENESIS);
        assert_eq!(
            hash,
            "261c7583738cf9c1cf8bf7dea358b4a7c5ef9c47c86af420ee60f7d42ae36423"
        );
        assert_eq!(unhex(&hash).len(), 32);
        assert_eq!(hex(&unhex(&hash)), hash);
    }

    #[test]
    fn writers_on_many_threads_keep_one_whole_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l")).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let mut r = record(t * 100 + i + 1);
                        ledger.put(&r).unwrap();
                        r.status = Status::Loaded;
                        ledger.put(&r).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let report = ledger.verify_chain().unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
        assert_eq!((report.entries, report.records), (200, 100));
        assert_eq!(report.head.unwrap().seq, 200);
    }

    #[test]
    fn a_record_read_while_it_is_written_matches_its_latest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l")).unwrap();
        let mut r = record(1);
        ledger.put(&r).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let ledger = ledger.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                for n in 0..300 {
                    r.bytes = n;
                    ledger.put(&r).unwrap();
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut reads = 0;
        while !done.load(Ordering::SeqCst) || reads == 0 {
            let sealed = ledger.sealed(1).unwrap().unwrap();
            let last = sealed.chain.last().unwrap();
            assert_eq!(last.record_sha256, sealed.record_sha256);
            reads += 1;
        }
        writer.join().unwrap();
        assert!(ledger.verify_chain().unwrap().is_intact());
    }

    #[test]
    fn a_ledger_written_before_the_chain_is_chained_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        {
            let db = sled::open(&path).unwrap();
            let records = db.open_tree("records").unwrap();
            for id in 1..=3u64 {
                let bytes = serde_json::to_vec(&super::super::Stored::V1(record(id))).unwrap();
                records.insert(id.to_be_bytes(), bytes).unwrap();
            }
            db.flush().unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        let report = ledger.verify_chain().unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
        assert_eq!(report.entries, 3);
    }
}
