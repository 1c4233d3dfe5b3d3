//! The service: from ready files to their outcomes, for `sluice run` and `sluice once`.
//!
//! `Service` owns the ledger, the uploader and the limits; discovery feeds it candidates and it
//! carries each through `pipeline`. Loads in flight are bounded by `load.max_in_flight`; files
//! waiting for a load slot are bounded too, so a backlog of 100,000 files costs little memory.

mod dispose;
mod operator;
mod outcome;
mod pipeline;

pub use operator::{Decision, resolve};

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::config::{AfterLoad, Config};
use crate::ledger::{Ledger, LedgerError};
use crate::upload::{UploadError, Uploader};
use crate::watch::{self, Candidate, Discovery};

use pipeline::Taken;

/// Files handled at once beyond the loads in flight (digesting, waiting for a slot).
const EXTRA_HANDLERS: usize = 8;

/// Errors that stop the service before or instead of loading.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
}

/// How one file ended in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    Loaded {
        rows: u64,
        bytes: u64,
    },
    Duplicate,
    Rejected,
    /// Not finished: will be tried again (by a later run, or after a pause).
    Retrying,
    Indeterminate,
    /// Not ours to take now: already handled, claimed elsewhere, or changed while read.
    Skipped,
    /// Our own failure (unreadable file, ledger write); the file was left where it was.
    LocalError,
}

/// What a run did, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub loaded: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub retrying: u64,
    pub indeterminate: u64,
    pub skipped: u64,
    pub local_errors: u64,
    /// Files read through SHA-256 in this run.
    pub digested: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl Summary {
    fn add(&mut self, outcome: FileOutcome) {
        match outcome {
            FileOutcome::Loaded { rows, bytes } => {
                self.loaded += 1;
                self.rows += rows;
                self.bytes += bytes;
            }
            FileOutcome::Duplicate => self.duplicate += 1,
            FileOutcome::Rejected => self.rejected += 1,
            FileOutcome::Retrying => self.retrying += 1,
            FileOutcome::Indeterminate => self.indeterminate += 1,
            FileOutcome::Skipped => self.skipped += 1,
            FileOutcome::LocalError => self.local_errors += 1,
        }
    }

    /// Whether every file reached loaded or duplicate (or was not ours to take).
    pub fn is_clean(&self) -> bool {
        self.rejected == 0
            && self.retrying == 0
            && self.indeterminate == 0
            && self.local_errors == 0
    }
}

/// Live figures of a service at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Files by outcome so far in this process.
    pub summary: Summary,
    pub loads_in_flight: u64,
    /// Files taken and not yet at an outcome (digesting, waiting for a slot, retrying).
    pub files_waiting: u64,
    /// When the oldest of those was taken.
    pub oldest_waiting_since: Option<SystemTime>,
    /// Attempts by how they ended.
    pub attempts: BTreeMap<String, u64>,
    /// When a file was last loaded by this process.
    pub last_success: Option<SystemTime>,
    /// Records in the ledger (all time).
    pub ledger_records: u64,
    /// Files a `once` run found to work on (its scan plus files resumed from working folders),
    /// once its scan is done; `None` before that and in `run`.
    pub planned_files: Option<u64>,
    /// The bytes of those files.
    pub planned_bytes: u64,
    /// Files of the scan that were not taken: kept files already handled, files gone before
    /// their claim. With `summary`, they make up `planned_files` at the end.
    pub passed_over: u64,
}

/// The loading service. Shared in an `Arc` by every file task.
pub struct Service {
    config: Arc<Config>,
    ledger: Ledger,
    uploader: Uploader,
    /// Bounds loads in flight to `load.max_in_flight`.
    in_flight: Semaphore,
    /// Serialises work on one (target, digest) so that two copies of the same bytes never load
    /// at once: the second waits and then finds the first's outcome in the ledger.
    digest_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Paths being worked on, with when each was taken: a rescan does not take a kept file
    /// twice, and metrics report the oldest waiting file.
    active: Mutex<HashMap<PathBuf, SystemTime>>,
    /// Uploads running now.
    loads_now: AtomicU64,
    /// Attempts by how they ended (`loaded`, `rejected`, `transient`, `unknown`, ...).
    attempts: Mutex<BTreeMap<String, u64>>,
    last_success: Mutex<Option<SystemTime>>,
    stopping: AtomicBool,
    stop: Notify,
    /// False while the cluster refuses our credentials: no attempt starts until a slow re-check
    /// sees them accepted again (in `run`; `once` ends the affected files as unfinished).
    credentials_ok: tokio::sync::watch::Sender<bool>,
    /// Whether waiting for credentials is worth it: true in `run`, false in `once`.
    waits_for_credentials: AtomicBool,
    summary: Mutex<Summary>,
    digested: AtomicU64,
    /// Becomes true in `run` once every directory is watched and its start-up scan taken in.
    ready: tokio::sync::watch::Sender<bool>,
    /// Files and bytes a `once` run plans to work on, set after its scan.
    planned: Mutex<Option<(u64, u64)>>,
    passed_over: AtomicU64,
}

impl Service {
    /// Opens the ledger and prepares the uploader.
    ///
    /// # Errors
    ///
    /// The ledger cannot be opened (locked by another process, unreadable), or the TLS setup
    /// failed (bad `ca_file`).
    pub fn new(config: Config) -> Result<Arc<Service>, ServiceError> {
        let ledger = Ledger::open(&config.ledger.path)?;
        let uploader = Uploader::new(&config.cluster)?;
        Ok(Arc::new(Service {
            in_flight: Semaphore::new(config.load.max_in_flight),
            config: Arc::new(config),
            ledger,
            uploader,
            digest_locks: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            loads_now: AtomicU64::new(0),
            attempts: Mutex::new(BTreeMap::new()),
            last_success: Mutex::new(None),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            credentials_ok: tokio::sync::watch::Sender::new(true),
            waits_for_credentials: AtomicBool::new(false),
            summary: Mutex::new(Summary::default()),
            digested: AtomicU64::new(0),
            ready: tokio::sync::watch::Sender::new(false),
            planned: Mutex::new(None),
            passed_over: AtomicU64::new(0),
        }))
    }

    /// The ledger this service writes.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Scans every watch once, loads everything ready, waits for every outcome.
    ///
    /// # Errors
    ///
    /// A watch folder cannot be scanned.
    pub async fn once(self: &Arc<Self>) -> Result<Summary, ServiceError> {
        // Ledger queries while this process holds the store (see audit::socket).
        let audit = crate::audit::AuditServer::spawn(self.ledger.clone(), &self.config.ledger.path);
        let mut tasks = JoinSet::new();
        let limit = Arc::new(Semaphore::new(
            self.config.load.max_in_flight + EXTRA_HANDLERS,
        ));
        let recovered = self.recover_working_files();
        let recovered_files = recovered.len() as u64;
        let recovered_bytes: u64 = recovered
            .iter()
            .map(|taken| fs::metadata(&taken.working).map_or(0, |meta| meta.len()))
            .sum();
        for taken in recovered {
            self.spawn(&mut tasks, &limit, taken).await;
        }
        let candidates = watch::scan_ready(&self.config.watches, self.config.load.settle).await?;
        info!(files = candidates.len(), "scanned landing folders");
        let scanned_bytes: u64 = candidates.iter().map(|candidate| candidate.size).sum();
        *self.planned.lock().unwrap_or_else(PoisonError::into_inner) = Some((
            recovered_files + candidates.len() as u64,
            recovered_bytes + scanned_bytes,
        ));
        for candidate in candidates {
            if self.is_stopping() {
                break;
            }
            if let Some(taken) = self.take(&candidate) {
                self.spawn(&mut tasks, &limit, taken).await;
            } else {
                self.passed_over.fetch_add(1, Ordering::Relaxed);
            }
        }
        while tasks.join_next().await.is_some() {}
        audit.stop().await;
        self.ledger.flush()?;
        Ok(self.summary())
    }

    /// Watches every folder until `shutdown` completes, then lets running attempts finish
    /// within `load.shutdown_grace`.
    ///
    /// # Errors
    ///
    /// The watcher cannot be started.
    pub async fn run(
        self: &Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, ServiceError> {
        // Ledger queries while this process holds the store (see audit::socket).
        let audit = crate::audit::AuditServer::spawn(self.ledger.clone(), &self.config.ledger.path);
        let mut tasks = JoinSet::new();
        let limit = Arc::new(Semaphore::new(
            self.config.load.max_in_flight + EXTRA_HANDLERS,
        ));
        for taken in self.recover_working_files() {
            self.spawn(&mut tasks, &limit, taken).await;
        }
        self.waits_for_credentials.store(true, Ordering::SeqCst);
        let recheck = tokio::spawn(Arc::clone(self).recheck_credentials());
        let (discovery, mut candidates) =
            Discovery::start(&self.config.watches, &self.config.load)?;
        info!(watches = self.config.watches.len(), "sluice is running");
        let mut scanned = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // Ready (for systemd) once the start-up scan is in, not merely once watching.
                () = discovery.initial_scan_done(), if !scanned => {
                    scanned = true;
                    debug!("start-up scan taken in");
                    self.ready.send_replace(true);
                }
                candidate = candidates.recv() => {
                    let Some(candidate) = candidate else { break };
                    if let Some(taken) = self.take(&candidate) {
                        self.spawn(&mut tasks, &limit, taken).await;
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        discovery.stop();
        self.begin_stop();
        info!(running = tasks.len(), "stopping: no new files taken");
        let grace = self.config.load.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                cut_short = tasks.len(),
                "shutdown grace ran out; cut attempts are resolved at next start"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            self.record_cut_short()?;
        }
        recheck.abort();
        // The aborted task holds a reference to the service (and its ledger) until it is dropped.
        let _ = recheck.await;
        audit.stop().await;
        self.ledger.flush()?;
        Ok(self.summary())
    }

    /// Whether `run` is watching every folder and has taken in its start-up scan: it turns
    /// true once, for readiness notifications (systemd READY=1).
    pub fn ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// What this service did so far.
    pub fn summary(&self) -> Summary {
        let mut summary = self
            .summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        summary.digested = self.digested.load(Ordering::Relaxed);
        summary
    }

    /// A consistent view of the live figures, for metrics and progress displays.
    pub fn snapshot(&self) -> Snapshot {
        let (files_waiting, oldest) = {
            let active = self.lock_active();
            (active.len() as u64, active.values().min().copied())
        };
        let planned = *self.planned.lock().unwrap_or_else(PoisonError::into_inner);
        Snapshot {
            planned_files: planned.map(|(files, _)| files),
            planned_bytes: planned.map_or(0, |(_, bytes)| bytes),
            passed_over: self.passed_over.load(Ordering::Relaxed),
            summary: self.summary(),
            loads_in_flight: self.loads_now.load(Ordering::Relaxed),
            files_waiting,
            oldest_waiting_since: oldest,
            attempts: self
                .attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            last_success: *self
                .last_success
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            ledger_records: self.ledger.len() as u64,
        }
    }

    fn count_attempt(&self, outcome: &str) {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        *attempts.entry(outcome.to_owned()).or_default() += 1;
    }

    fn note_success(&self) {
        *self
            .last_success
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
    }

    /// Asks running work to stop at its next safe point.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    async fn spawn(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        limit: &Arc<Semaphore>,
        taken: Taken,
    ) {
        // Back-pressure: wait for a handler slot before taking more from discovery.
        let Ok(permit) = Arc::clone(limit).acquire_owned().await else {
            return;
        };
        let service = Arc::clone(self);
        tasks.spawn(async move {
            let active_key = taken.working.clone();
            let outcome = service.process(taken).await;
            service.lock_active().remove(&active_key);
            service
                .summary
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(outcome);
            drop(permit);
        });
    }

    /// Takes a candidate: recognises a kept file already handled, else claims it.
    fn take(&self, candidate: &Candidate) -> Option<Taken> {
        let watch = &self.config.watches[candidate.watch];
        if watch.after_load == AfterLoad::Keep {
            if self.is_handled_keep(candidate) {
                debug!(path = %candidate.path.display(), "kept file already handled");
                return None;
            }
            if self
                .lock_active()
                .insert(candidate.path.clone(), SystemTime::now())
                .is_some()
            {
                return None;
            }
            return Some(Taken {
                watch: candidate.watch,
                original: candidate.path.clone(),
                working: candidate.path.clone(),
            });
        }
        match dispose::claim(&self.work_dir(watch), &candidate.path) {
            Ok(working) => {
                self.lock_active()
                    .insert(working.clone(), SystemTime::now());
                debug!(path = %candidate.path.display(), working = %working.display(), "claimed");
                Some(Taken {
                    watch: candidate.watch,
                    original: candidate.path.clone(),
                    working,
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                debug!(path = %candidate.path.display(), "gone before it was claimed");
                None
            }
            Err(err) => {
                error!(path = %candidate.path.display(), error = %err,
                    "cannot claim file, left in place");
                None
            }
        }
    }

    /// Whether a kept file is the very file a finished record describes (same inode, size and
    /// mtime): then it is not read again.
    fn is_handled_keep(&self, candidate: &Candidate) -> bool {
        let Ok(Some(identity)) = self.ledger.handled_identity(&candidate.path) else {
            return false;
        };
        let mtime_ns = candidate
            .mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        identity.ino == candidate.ino
            && identity.dev == candidate.dev
            && identity.size == candidate.size
            && identity.mtime_ns == mtime_ns
    }

    /// Files left in working folders by an earlier run that stopped before disposing of them.
    fn recover_working_files(&self) -> Vec<Taken> {
        let mut found = Vec::new();
        for (index, watch) in self.config.watches.iter().enumerate() {
            if watch.after_load == AfterLoad::Keep {
                continue;
            }
            self.warn_about_other_instances(watch);
            let Ok(entries) = fs::read_dir(self.work_dir(watch)) else {
                continue;
            };
            for entry in entries.flatten() {
                let working = entry.path();
                if !entry.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                let original = watch.dir.join(entry.file_name());
                info!(path = %working.display(), "resuming a file left in the working folder");
                self.lock_active()
                    .insert(working.clone(), SystemTime::now());
                found.push(Taken {
                    watch: index,
                    original,
                    working,
                });
            }
        }
        found
    }

    /// Files claimed by other instances (other ledgers) wait in their own working folders; if
    /// such an instance is gone for good (its ledger lost or replaced), nobody takes them, so
    /// say so at every start.
    fn warn_about_other_instances(&self, watch: &crate::config::WatchConfig) {
        let Ok(entries) = fs::read_dir(&watch.work_dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name() == self.ledger.instance() {
                continue;
            }
            let files = fs::read_dir(entry.path()).map_or(0, |e| {
                e.flatten()
                    .filter(|f| f.file_type().is_ok_and(|t| t.is_file()))
                    .count()
            });
            if files > 0 {
                warn!(path = %entry.path().display(), files,
                    "files claimed by another sluice instance wait here; if that instance and \
                     its ledger are gone for good, move them back into the landing folder");
            }
        }
    }

    /// This instance's working folder of `watch`: `work_dir/<ledger instance id>`.
    pub fn work_dir(&self, watch: &crate::config::WatchConfig) -> PathBuf {
        watch.work_dir.join(self.ledger.instance())
    }

    fn digest_lock(&self, target: &str, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .digest_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Drop locks nobody holds, so the map stays as small as the work in flight.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(format!("{target}\0{sha256}")).or_default())
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, SystemTime>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    async fn sleep_unless_stopping(&self, delay: Duration) {
        let stopped = self.stop.notified();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped => {}
        }
    }

    /// Exponential backoff from `retry_initial`, doubling per attempt up to `retry_max`, with
    /// jitter in [50%, 100%] so that a fleet does not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let load = &self.config.load;
        let exp = load
            .retry_initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(load.retry_max);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
        // Whole milliseconds, so that logs read `1s 250ms`, not nanoseconds.
        Duration::from_millis(u64::try_from(capped.mul_f64(jitter).as_millis()).unwrap_or(u64::MAX))
    }

    fn refuse_credentials(&self, message: &str) {
        if self.credentials_ok.send_replace(false) {
            error!(
                message,
                "the cluster refused our credentials: loads paused, no file is marked rejected"
            );
        }
    }

    /// Waits while credentials are refused; false when that wait is not worth it (`once`, or
    /// the service is stopping).
    async fn wait_for_credentials(&self) -> bool {
        if *self.credentials_ok.borrow() {
            return true;
        }
        if !self.waits_for_credentials.load(Ordering::SeqCst) {
            return false;
        }
        let mut ok = self.credentials_ok.subscribe();
        let stopped = self.stop.notified();
        tokio::select! {
            result = ok.wait_for(|ok| *ok) => result.is_ok() && !self.is_stopping(),
            () = stopped => false,
        }
    }

    /// While credentials are refused, asks the cluster every `retry_max` with a request that
    /// loads nothing (a label state query) whether they work again.
    async fn recheck_credentials(self: Arc<Self>) {
        let Some(database) = self.config.watches.first().map(|w| w.database.clone()) else {
            return;
        };
        let mut ok = self.credentials_ok.subscribe();
        loop {
            if ok.wait_for(|ok| !*ok).await.is_err() {
                return;
            }
            tokio::time::sleep(self.config.load.retry_max).await;
            match self
                .uploader
                .label_state(&database, "sluice_credentials_check")
                .await
            {
                Ok(_) => {
                    info!("the cluster accepts our credentials again; loads resume");
                    self.credentials_ok.send_replace(true);
                }
                Err(err) => debug!(error = %err, "credentials still refused"),
            }
        }
    }

    /// After the grace ran out: attempts that were cut are marked so in the ledger; their
    /// records stay `submitting`, and the next start resolves them by label before sending.
    fn record_cut_short(&self) -> Result<(), LedgerError> {
        for mut record in self.ledger.unfinished()? {
            if record.status != crate::ledger::Status::Submitting {
                continue;
            }
            if let Some(last) = record.attempts.last_mut()
                && last.outcome.is_none()
            {
                last.outcome = Some("cut_short".into());
                last.message = Some("cut short by shutdown".into());
                self.ledger.put(&record)?;
            }
        }
        Ok(())
    }

    /// Counts an upload as running while the guard lives.
    fn count_load(&self) -> LoadCount<'_> {
        self.loads_now.fetch_add(1, Ordering::Relaxed);
        LoadCount(&self.loads_now)
    }
}

/// An upload counted in `loads_in_flight`; dropping it, even on cancellation, uncounts it.
struct LoadCount<'a>(&'a AtomicU64);

impl Drop for LoadCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
