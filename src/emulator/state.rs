//! The emulator's memory: declared tables and their rows, labels and their latest transaction,
//! queued faults, error logs, and the label-window clock.
//!
//! Everything mutable sits behind one mutex that is only held for short, synchronous updates,
//! never across I/O.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{EmulatorOptions, Fault, LabelStats, PUBLISH_DELAY, Stats, TableStats};

/// Error logs kept at once; older ones are dropped first.
const MAX_ERROR_LOGS: usize = 256;

/// The transaction states the emulator models (no 2PC `PREPARED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnState {
    Prepare,
    Committed,
    Visible,
    Aborted,
}

impl TxnState {
    fn name(self) -> &'static str {
        match self {
            TxnState::Prepare => "PREPARE",
            TxnState::Committed => "COMMITTED",
            TxnState::Visible => "VISIBLE",
            TxnState::Aborted => "ABORTED",
        }
    }
}

/// A transaction that began and must end in [`State::commit`] or [`State::abort`].
#[derive(Debug)]
pub(crate) struct Txn {
    pub(crate) id: i64,
    pub(crate) database: String,
    pub(crate) label: String,
    pub(crate) table: String,
    /// The fault this load took from the queue, if any.
    pub(crate) fault: Option<Fault>,
}

/// Why a transaction could not begin: the label is held by a live transaction.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LabelInUse {
    Running,
    Finished,
}

pub(crate) struct State {
    pub(crate) empty_load_as_error: bool,
    /// Extra time every load takes before its body is read, so that tests see loads overlap.
    pub(crate) load_delay: Duration,
    keep_rows: usize,
    label_keep: Duration,
    password: String,
    /// `(database, table)` → column count; fixed at start.
    tables: BTreeMap<(String, String), usize>,
    pub(crate) user: String,
    clock_start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    clock_offset: Duration,
    error_logs: HashMap<String, String>,
    error_log_order: VecDeque<String>,
    faults: VecDeque<Fault>,
    labels: BTreeMap<(String, String), LabelRecord>,
    next_txn_id: i64,
    table_stats: BTreeMap<String, TableStats>,
    /// Loads past their header phase and not yet answered, now and at most.
    loads_now: u64,
    loads_max: u64,
    /// A password set after start, replacing the configured one.
    password: Option<String>,
}

/// A label and its latest transaction, plus counters that survive reuse and expiry.
struct LabelRecord {
    attempts: u64,
    commits: u64,
    /// When the latest transaction finished (or, if `COMMITTED`, turns visible), on the clock.
    finished_at: Option<Duration>,
    rows: u64,
    state: TxnState,
    txn_id: i64,
}

impl State {
    pub(crate) fn new(opts: EmulatorOptions) -> State {
        let tables: BTreeMap<_, _> = opts
            .tables
            .iter()
            .map(|t| ((t.database.clone(), t.table.clone()), t.columns))
            .collect();
        let table_stats = tables
            .keys()
            .map(|(db, table)| (format!("{db}.{table}"), TableStats::default()))
            .collect();
        State {
            empty_load_as_error: opts.empty_load_as_error,
            load_delay: opts.load_delay,
            keep_rows: opts.keep_rows,
            label_keep: opts.label_keep,
            password: opts.password,
            tables,
            user: opts.user,
            clock_start: Instant::now(),
            inner: Mutex::new(Inner {
                clock_offset: Duration::ZERO,
                error_logs: HashMap::new(),
                error_log_order: VecDeque::new(),
                faults: VecDeque::new(),
                labels: BTreeMap::new(),
                next_txn_id: 1000,
                table_stats,
                loads_now: 0,
                loads_max: 0,
                password: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters, not invariants, half-updated; keep
        // serving rather than poisoning every later request.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn is_valid_login(&self, user: &str, password: &str) -> bool {
        let inner = self.lock();
        let expected = inner.password.as_deref().unwrap_or(&self.password);
        user == self.user && password == expected
    }

    /// Changes the password basic auth must carry, as an operator would on the cluster.
    pub(crate) fn set_password(&self, password: &str) {
        self.lock().password = Some(password.to_owned());
    }

    pub(crate) fn has_database(&self, database: &str) -> bool {
        self.tables.keys().any(|(db, _)| db == database)
    }

    pub(crate) fn columns(&self, database: &str, table: &str) -> Option<usize> {
        self.tables
            .get(&(database.to_string(), table.to_string()))
            .copied()
    }

    fn now(&self, inner: &Inner) -> Duration {
        self.clock_start.elapsed() + inner.clock_offset
    }

    pub(crate) fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += by;
    }

    pub(crate) fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Takes a queued [`Fault::Http500`] if it is next in line.
    pub(crate) fn take_http500(&self) -> bool {
        let mut inner = self.lock();
        if inner.faults.front() == Some(&Fault::Http500) {
            inner.faults.pop_front();
            return true;
        }
        false
    }

    /// Begins a transaction under `label`, unless a live transaction holds it. Counts the
    /// attempt either way, and takes the next queued fault when the transaction begins.
    pub(crate) fn begin(
        &self,
        database: &str,
        table: &str,
        label: &str,
    ) -> Result<Txn, LabelInUse> {
        let mut inner = self.lock();
        let now = self.now(&inner);
        let keep = self.label_keep;
        let key = (database.to_string(), label.to_string());
        let id = inner.next_txn_id;
        if let Some(record) = inner.labels.get_mut(&key) {
            record.attempts += 1;
            match record.effective_state(now, keep) {
                Some(TxnState::Prepare) => return Err(LabelInUse::Running),
                Some(TxnState::Committed | TxnState::Visible) => return Err(LabelInUse::Finished),
                Some(TxnState::Aborted) | None => {}
            }
            record.txn_id = id;
            record.state = TxnState::Prepare;
            record.finished_at = None;
        } else {
            let record = LabelRecord {
                attempts: 1,
                commits: 0,
                finished_at: None,
                rows: 0,
                state: TxnState::Prepare,
                txn_id: id,
            };
            inner.labels.insert(key, record);
        }
        inner.next_txn_id += 1;
        let fault = match inner.faults.front() {
            Some(Fault::Http500) | None => None,
            Some(_) => inner.faults.pop_front(),
        };
        Ok(Txn {
            id,
            database: database.to_string(),
            label: label.to_string(),
            table: table.to_string(),
            fault,
        })
    }

    /// How many more sample rows the table would keep.
    pub(crate) fn sample_room(&self, database: &str, table: &str) -> usize {
        let inner = self.lock();
        let kept = inner
            .table_stats
            .get(&format!("{database}.{table}"))
            .map_or(0, |t| t.sample.len());
        self.keep_rows.saturating_sub(kept)
    }

    /// Counts a load as running until the guard drops.
    pub(crate) fn enter_load(&self) -> LoadGuard<'_> {
        let mut inner = self.lock();
        inner.loads_now += 1;
        inner.loads_max = inner.loads_max.max(inner.loads_now);
        LoadGuard { state: self }
    }

    pub(crate) fn abort(&self, txn: &Txn) {
        let mut inner = self.lock();
        let now = self.now(&inner);
        if let Some(record) = inner
            .labels
            .get_mut(&(txn.database.clone(), txn.label.clone()))
            && record.txn_id == txn.id
        {
            record.state = TxnState::Aborted;
            record.finished_at = Some(now);
        }
    }

    /// Commits the rows of `txn`; visible at once, or after [`PUBLISH_DELAY`] when `visible`
    /// is false (a publish timeout).
    pub(crate) fn commit(&self, txn: &Txn, rows: u64, sample: Vec<Vec<String>>, visible: bool) {
        let mut inner = self.lock();
        let now = self.now(&inner);
        let keep_rows = self.keep_rows;
        if let Some(table) = inner
            .table_stats
            .get_mut(&format!("{}.{}", txn.database, txn.table))
        {
            table.rows += rows;
            table.commits += 1;
            let room = keep_rows.saturating_sub(table.sample.len());
            table.sample.extend(sample.into_iter().take(room));
        }
        if let Some(record) = inner
            .labels
            .get_mut(&(txn.database.clone(), txn.label.clone()))
            && record.txn_id == txn.id
        {
            record.commits += 1;
            record.rows += rows;
            if visible {
                record.state = TxnState::Visible;
                record.finished_at = Some(now);
            } else {
                record.state = TxnState::Committed;
                record.finished_at = Some(now + PUBLISH_DELAY);
            }
        }
    }

    /// The `get_load_state` answer for a label: its latest transaction's state, or `UNKNOWN`.
    pub(crate) fn label_state(&self, database: &str, label: &str) -> &'static str {
        let inner = self.lock();
        let now = self.now(&inner);
        inner
            .labels
            .get(&(database.to_string(), label.to_string()))
            .and_then(|r| r.effective_state(now, self.label_keep))
            .map_or("UNKNOWN", TxnState::name)
    }

    /// Keeps an error log and returns its file name (`error_log_<hex>_<hex>`).
    pub(crate) fn store_error_log(&self, text: String) -> String {
        let name = format!("error_log_{:016x}_{:016x}", random_u64(), random_u64());
        let mut inner = self.lock();
        inner.error_logs.insert(name.clone(), text);
        inner.error_log_order.push_back(name.clone());
        while inner.error_log_order.len() > MAX_ERROR_LOGS {
            if let Some(old) = inner.error_log_order.pop_front() {
                inner.error_logs.remove(&old);
            }
        }
        name
    }

    pub(crate) fn error_log(&self, name: &str) -> Option<String> {
        self.lock().error_logs.get(name).cloned()
    }

    pub(crate) fn stats(&self) -> Stats {
        let inner = self.lock();
        let now = self.now(&inner);
        let labels = inner
            .labels
            .iter()
            .map(|((db, label), r)| {
                let state = r
                    .effective_state(now, self.label_keep)
                    .map_or("UNKNOWN", TxnState::name);
                let stats = LabelStats {
                    attempts: r.attempts,
                    commits: r.commits,
                    rows: r.rows,
                    state: state.to_string(),
                };
                (format!("{db}/{label}"), stats)
            })
            .collect();
        Stats {
            labels,
            max_concurrent_loads: inner.loads_max,
            tables: inner.table_stats.clone(),
        }
    }
}

impl LabelRecord {
    /// The state at `now`: a publish-delayed commit turns visible, a finished transaction is
    /// forgotten (`None`) once the window passed.
    fn effective_state(&self, now: Duration, keep: Duration) -> Option<TxnState> {
        match (self.state, self.finished_at) {
            (TxnState::Committed, Some(at)) if at <= now => {
                if at + keep <= now {
                    None
                } else {
                    Some(TxnState::Visible)
                }
            }
            (TxnState::Visible | TxnState::Aborted, Some(at)) if at + keep <= now => None,
            (state, _) => Some(state),
        }
    }
}

/// A label like the BE's generated ones (UUID text).
pub(crate) fn generate_label() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Unique, unpredictable-enough ids without a random-number dependency: std's randomly keyed
/// hasher over a counter.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A running load, counted in the concurrency figures while it lives.
pub(crate) struct LoadGuard<'a> {
    state: &'a State,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.state.lock().loads_now -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::TableSpec;

    fn state() -> State {
        State::new(EmulatorOptions {
            label_keep: Duration::from_secs(100),
            tables: vec![TableSpec {
                columns: 2,
                database: "db".into(),
                table: "t".into(),
            }],
            ..EmulatorOptions::default()
        })
    }

    #[test]
    fn label_lifecycle_follows_the_window() {
        let state = state();
        let txn = state.begin("db", "t", "l1").unwrap();
        assert_eq!(state.label_state("db", "l1"), "PREPARE");
        assert_eq!(
            state.begin("db", "t", "l1").unwrap_err(),
            LabelInUse::Running
        );
        state.commit(&txn, 3, vec![], true);
        assert_eq!(state.label_state("db", "l1"), "VISIBLE");
        assert_eq!(
            state.begin("db", "t", "l1").unwrap_err(),
            LabelInUse::Finished
        );
        // Labels are per database.
        assert!(state.begin("other", "t", "l1").is_ok());
        state.advance_clock(Duration::from_secs(101));
        assert_eq!(state.label_state("db", "l1"), "UNKNOWN");
        let again = state.begin("db", "t", "l1").unwrap();
        state.commit(&again, 3, vec![], true);
        let stats = state.stats();
        let label = &stats.labels["db/l1"];
        assert_eq!((label.attempts, label.commits, label.rows), (4, 2, 6));
        assert_eq!(stats.tables["db.t"].rows, 6);
    }

    #[test]
    fn aborted_labels_are_free_and_publish_delay_ends() {
        let state = state();
        let txn = state.begin("db", "t", "l").unwrap();
        state.abort(&txn);
        assert_eq!(state.label_state("db", "l"), "ABORTED");
        let txn = state.begin("db", "t", "l").unwrap();
        state.commit(&txn, 1, vec![], false);
        assert_eq!(state.label_state("db", "l"), "COMMITTED");
        state.advance_clock(PUBLISH_DELAY);
        assert_eq!(state.label_state("db", "l"), "VISIBLE");
    }

    #[test]
    fn generated_labels_look_like_uuids() {
        let label = generate_label();
        assert_eq!(label.len(), 36, "{label}");
        assert_ne!(label, generate_label());
    }
}
