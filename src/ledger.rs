//! The load ledger: one record per file taken, with every attempt, in an embedded sled store.
//!
//! The ledger is the long memory of exactly-once: the cluster forgets labels after its window,
//! the ledger never does. Records are keyed by a monotonic id (so iteration is chronological);
//! an index maps (target, digest) to the record that first took those bytes, and another maps a
//! path to its latest record so that kept files are recognised without being read. Every write
//! that an invariant depends on is flushed before the call returns. Only this module touches sled.

mod chain;
mod scan;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use thiserror::Error;

pub use chain::{
    ChainEntry, ChainHead, ChainProblem, ChainReport, GENESIS, SealedRecord, entry_hash, sha256_hex,
};

/// sled's page cache.
const CACHE_BYTES: u64 = 8 << 20;

/// Errors of the ledger. None of them is worth retrying at once: the caller stops the file.
#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("ledger at `{path}` is in use by another sluice process (only one may open it)")]
    Locked { path: PathBuf },
    #[error("failed to open ledger at `{path}`: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("ledger write failed: {0}")]
    Write(#[source] sled::Error),
    #[error("ledger read failed: {0}")]
    Read(#[source] sled::Error),
    #[error("ledger record {id} cannot be decoded: {source}")]
    Decode { id: u64, source: serde_json::Error },
}

/// Where a record stands. Terminal: loaded, duplicate, rejected, indeterminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Taken and digested; no attempt started yet.
    Pending,
    /// An attempt has started and its outcome is not yet recorded.
    Submitting,
    Loaded,
    /// The same bytes were already loaded into the same target (`duplicate_of` says by whom).
    Duplicate,
    /// The cluster refused the data; the file is in the failed folder.
    Rejected,
    /// The last attempt failed in a way worth trying again.
    Retrying,
    /// The outcome could not be learned inside the label window; an operator must decide.
    Indeterminate,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Loaded | Status::Duplicate | Status::Rejected | Status::Indeterminate
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Submitting => "submitting",
            Status::Loaded => "loaded",
            Status::Duplicate => "duplicate",
            Status::Rejected => "rejected",
            Status::Retrying => "retrying",
            Status::Indeterminate => "indeterminate",
        }
    }
}

/// What a file looked like on disk when it was taken; lets a rescan of a kept file recognise it
/// by a `stat` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch (an i64 lasts until 2262).
    pub mtime_ns: i64,
}

/// One submission of a file to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    pub duration_ms: Option<u64>,
    /// How the attempt ended, in one word: loaded, rejected, transient, unknown, auth, ...
    pub outcome: Option<String>,
    pub http_status: Option<u16>,
    /// The cluster's `Status` and `Message`, as sent.
    pub cluster_status: Option<String>,
    pub message: Option<String>,
    pub txn_id: Option<i64>,
    pub rows_loaded: Option<u64>,
    pub rows_filtered: Option<u64>,
    pub bytes: u64,
}

/// One file taken by sluice, and everything that happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub label: String,
    pub database: String,
    pub table: String,
    pub sha256: String,
    /// Where the file was found.
    pub path: PathBuf,
    pub bytes: u64,
    pub status: Status,
    pub attempts: Vec<Attempt>,
    #[serde(with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(with = "rfc3339_opt")]
    pub finished_at: Option<SystemTime>,
    pub rows_loaded: Option<u64>,
    pub rows_filtered: Option<u64>,
    pub txn_id: Option<i64>,
    pub message: Option<String>,
    /// For a duplicate: the label of the record that loaded these bytes.
    pub duplicate_of: Option<String>,
    /// Where the file went after its outcome (done or failed folder), if it moved.
    pub disposed_to: Option<PathBuf>,
    pub identity: Option<FileIdentity>,
    #[serde(with = "rfc3339_opt")]
    pub next_attempt_at: Option<SystemTime>,
    /// Decisions operators recorded on this record (`sluice ledger resolve`), oldest first.
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// An operator's decision about a record, kept with who, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// The operator: the user that ran the command (`$SUDO_USER`, else `$USER`, else the uid).
    pub by: String,
    /// `loaded` (the rows are known to be in) or `reload` (send the file again).
    pub decision: String,
    pub reason: String,
    /// The status the record had before the decision.
    pub from_status: Status,
}

impl Record {
    /// `database.table`.
    pub fn target(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }
}

/// The stored form: a tagged version, so that a later layout adds a variant instead of
/// breaking ledgers already written.
#[derive(Serialize, Deserialize)]
#[serde(tag = "v")]
enum Stored {
    #[serde(rename = "1")]
    V1(Record),
}

/// What `Ledger::create_primary` found.
#[derive(Debug)]
pub enum Created {
    /// The record is new and now owns (target, digest).
    New(Record),
    /// Another record already owns (target, digest); nothing was written.
    Existing(Record),
}

/// The ledger store. Cheap to clone; all clones share one sled database.
#[derive(Clone)]
pub struct Ledger {
    db: sled::Db,
    records: sled::Tree,
    digests: sled::Tree,
    paths: sled::Tree,
    /// Ids of records not yet in a terminal state, so that start-up finds unfinished work
    /// without reading every record.
    open: sled::Tree,
    /// This ledger's instance id, made once when the ledger is created.
    instance: String,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`.
    ///
    /// # Errors
    ///
    /// `Locked` when another process holds it; `Open` for anything else.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        // sled's default cache is 1 GiB; records are read rarely (the path index answers the
        // common question), so a small cache keeps a restart over 100,000 files small.
        Self::open_with(path, sled::Config::new().cache_capacity(CACHE_BYTES))
    }

    /// `open` with sled settings of the caller's (see `open_for_reading`).
    fn open_with(path: &Path, config: sled::Config) -> Result<Ledger, LedgerError> {
        let db = config.path(path).open().map_err(|source| {
            if is_lock_error(&source) {
                LedgerError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                LedgerError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let open = |name: &str| {
            db.open_tree(name).map_err(|source| LedgerError::Open {
                path: path.to_path_buf(),
                source,
            })
        };
        let instance = instance_id(&db).map_err(|source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let ledger = Ledger {
            instance,
            records: open("records")?,
            digests: open("digests")?,
            paths: open("paths")?,
            open: open("open")?,
            db,
        };
        // Tamper evidence (see chain.rs): chain records left by a version without it.
        chain::adopt_unchained(&ledger)?;
        Ok(ledger)
    }

    /// The record that owns (target, digest), if any.
    ///
    /// # Errors
    ///
    /// A failed read or an undecodable record.
    pub fn find_by_digest(
        &self,
        target: &str,
        sha256: &str,
    ) -> Result<Option<Record>, LedgerError> {
        let Some(id) = self
            .digests
            .get(digest_key(target, sha256))
            .map_err(LedgerError::Read)?
        else {
            return Ok(None);
        };
        self.get(decode_id(&id))
    }

    /// The latest record taken from `path`, if any.
    ///
    /// # Errors
    ///
    /// A failed read or an undecodable record.
    pub fn find_by_path(&self, path: &Path) -> Result<Option<Record>, LedgerError> {
        let Some(id) = self.paths.get(path_key(path)).map_err(LedgerError::Read)? else {
            return Ok(None);
        };
        self.get(decode_id(&id[..id.len().min(8)]))
    }

    /// The identity of the file at `path` if its latest record is terminal, read from the
    /// path index alone: a restart over 100,000 kept files checks each without decoding its
    /// record.
    ///
    /// # Errors
    ///
    /// A failed read or an undecodable record.
    pub fn handled_identity(&self, path: &Path) -> Result<Option<FileIdentity>, LedgerError> {
        let Some(value) = self.paths.get(path_key(path)).map_err(LedgerError::Read)? else {
            return Ok(None);
        };
        if value.len() == PATH_VALUE_LEN {
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&value[9 + i * 8..17 + i * 8]);
                b
            };
            return Ok((value[8] == 1).then(|| FileIdentity {
                dev: u64::from_be_bytes(word(0)),
                ino: u64::from_be_bytes(word(1)),
                size: u64::from_be_bytes(word(2)),
                mtime_ns: i64::from_be_bytes(word(3)),
            }));
        }
        // An index entry of an older layout: only the id.
        let record = self.get(decode_id(&value[..value.len().min(8)]))?;
        Ok(record
            .filter(|r| r.status.is_terminal())
            .and_then(|r| r.identity))
    }

    /// The record with this id.
    ///
    /// # Errors
    ///
    /// A failed read or an undecodable record.
    pub fn get(&self, id: u64) -> Result<Option<Record>, LedgerError> {
        let Some(bytes) = self
            .records
            .get(id.to_be_bytes())
            .map_err(LedgerError::Read)?
        else {
            return Ok(None);
        };
        decode(id, &bytes).map(Some)
    }

    /// A fresh record id, increasing over the life of the ledger.
    ///
    /// # Errors
    ///
    /// A failed write of sled's id counter.
    pub fn next_id(&self) -> Result<u64, LedgerError> {
        // sled ids start at 0; keep 0 free so that "no id" never looks like a record.
        self.db
            .generate_id()
            .map(|id| id + 1)
            .map_err(LedgerError::Write)
    }

    /// Stores `record` as the owner of its (target, digest), unless another record already is.
    /// Durable when it returns.
    ///
    /// # Errors
    ///
    /// A failed write or flush.
    pub fn create_primary(&self, record: Record) -> Result<Created, LedgerError> {
        let key = digest_key(&record.target(), &record.sha256);
        let claimed = self
            .digests
            .compare_and_swap(&key, None::<&[u8]>, Some(&record.id.to_be_bytes()[..]))
            .map_err(LedgerError::Write)?;
        if let Err(current) = claimed {
            let owner = current.current.map(|id| decode_id(&id));
            if let Some(existing) = owner.map(|id| self.get(id)).transpose()?.flatten() {
                return Ok(Created::Existing(existing));
            }
            // The index names a record that is gone; take the digest over.
            self.digests
                .insert(&key, &record.id.to_be_bytes())
                .map_err(LedgerError::Write)?;
        }
        self.put(&record)?;
        Ok(Created::New(record))
    }

    /// Stores `record` (new or updated) and flushes. The path index follows the record.
    ///
    /// # Errors
    ///
    /// A failed write or flush.
    pub fn put(&self, record: &Record) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec(&Stored::V1(record.clone())).map_err(|source| {
            LedgerError::Decode {
                id: record.id,
                source,
            }
        })?;
        // The record and its tamper-evidence chain entry, in one transaction (see chain.rs).
        chain::insert_chained(self, record.id, &bytes)?;
        self.paths
            .insert(path_key(&record.path), path_value(record))
            .map_err(LedgerError::Write)?;
        if record.status.is_terminal() {
            self.open
                .remove(record.id.to_be_bytes())
                .map_err(LedgerError::Write)?;
        } else {
            self.open
                .insert(record.id.to_be_bytes(), &[])
                .map_err(LedgerError::Write)?;
        }
        self.flush()
    }

    /// Records not yet in a terminal state, oldest first.
    ///
    /// # Errors
    ///
    /// A failed read or an undecodable record.
    pub fn unfinished(&self) -> Result<Vec<Record>, LedgerError> {
        let mut found = Vec::new();
        for key in self.open.iter().keys() {
            let id = decode_id(&key.map_err(LedgerError::Read)?);
            if let Some(record) = self.get(id)? {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// Makes every write so far durable.
    ///
    /// # Errors
    ///
    /// A failed flush (disk full, I/O error).
    pub fn flush(&self) -> Result<(), LedgerError> {
        self.db.flush().map(drop).map_err(LedgerError::Write)
    }

    /// Every record, oldest first.
    pub fn records(&self) -> impl Iterator<Item = Result<Record, LedgerError>> + '_ {
        self.records.iter().map(|item| {
            let (key, bytes) = item.map_err(LedgerError::Read)?;
            decode(decode_id(&key), &bytes)
        })
    }

    /// This ledger's instance id (12 hex digits), stable for the life of the ledger.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The id of this ledger, created with it and kept for good: it names the working folder of
/// the sluice instance that owns the ledger, so that several instances sharing one landing
/// folder never take each other's claimed files.
fn instance_id(db: &sled::Db) -> Result<String, sled::Error> {
    const KEY: &[u8] = b"instance";
    if let Some(id) = db.get(KEY)? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    let seed = format!(
        "{:?}{}{}",
        std::time::SystemTime::now(),
        std::process::id(),
        db.generate_id()?
    );
    let digest = sha2::Sha256::digest(seed.as_bytes());
    let id: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    // Two racing creators cannot exist: sled holds the ledger's lock.
    db.insert(KEY, id.as_bytes())?;
    db.flush()?;
    Ok(id)
}

fn is_lock_error(err: &sled::Error) -> bool {
    match err {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

fn digest_key(target: &str, sha256: &str) -> Vec<u8> {
    format!("{target}\0{sha256}").into_bytes()
}

fn path_key(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

/// Bytes of a path index value: record id, terminal flag, then dev, ino, size and mtime.
const PATH_VALUE_LEN: usize = 8 + 1 + 4 * 8;

fn path_value(record: &Record) -> Vec<u8> {
    let mut value = Vec::with_capacity(PATH_VALUE_LEN);
    value.extend_from_slice(&record.id.to_be_bytes());
    match record.identity {
        Some(id) => {
            value.push(u8::from(record.status.is_terminal()));
            value.extend_from_slice(&id.dev.to_be_bytes());
            value.extend_from_slice(&id.ino.to_be_bytes());
            value.extend_from_slice(&id.size.to_be_bytes());
            value.extend_from_slice(&id.mtime_ns.to_be_bytes());
        }
        None => value.push(0),
    }
    value
}

fn decode_id(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

fn decode(id: u64, bytes: &[u8]) -> Result<Record, LedgerError> {
    match serde_json::from_slice::<Stored>(bytes) {
        Ok(Stored::V1(record)) => Ok(record),
        Err(source) => Err(LedgerError::Decode { id, source }),
    }
}

/// RFC 3339 UTC with seconds precision plus fraction, as the export promises.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_micros(*time).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::rfc3339::serialize(time, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ledger: &Ledger, sha: &str, path: &str) -> Record {
        Record {
            id: ledger.next_id().unwrap(),
            label: format!("sluice_{sha}"),
            database: "db".into(),
            table: "t".into(),
            sha256: sha.into(),
            path: path.into(),
            bytes: 3,
            status: Status::Pending,
            attempts: vec![],
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
    fn second_record_for_same_digest_finds_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l")).unwrap();
        let first = record(&ledger, "aa", "/x/a.csv");
        assert!(matches!(
            ledger.create_primary(first.clone()).unwrap(),
            Created::New(_)
        ));
        let second = record(&ledger, "aa", "/x/b.csv");
        match ledger.create_primary(second).unwrap() {
            Created::Existing(existing) => assert_eq!(existing.id, first.id),
            Created::New(_) => panic!("digest taken twice"),
        }
        assert_eq!(
            ledger.find_by_digest("db.t", "aa").unwrap().unwrap().path,
            first.path
        );
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let ids: Vec<u64> = {
            let ledger = Ledger::open(&path).unwrap();
            (0..3)
                .map(|i| {
                    let mut r = record(&ledger, &format!("d{i}"), &format!("/x/{i}"));
                    r.status = Status::Loaded;
                    ledger.create_primary(r.clone()).unwrap();
                    r.id
                })
                .collect()
        };
        let ledger = Ledger::open(&path).unwrap();
        let read: Vec<u64> = ledger.records().map(|r| r.unwrap().id).collect();
        assert_eq!(read, ids);
        let by_path = ledger.find_by_path(Path::new("/x/1")).unwrap().unwrap();
        assert_eq!(by_path.status, Status::Loaded);
    }
}
