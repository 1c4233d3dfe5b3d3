//! The life of one file: claim, digest, label, ledger check, attempts, outcome, disposal.
//!
//! Order matters and is the exactly-once contract: an attempt is in the ledger (flushed) before
//! its first byte is sent, and its outcome is in the ledger before the file moves. A failure of
//! our own (unreadable file, ledger write) leaves the file where it is.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};

use super::outcome::{Step, has_unresolved_attempt};
use super::{FileOutcome, Service, dispose};
use crate::config::{AfterLoad, WatchConfig};
use crate::label;
use crate::ledger::{Attempt, Created, FileIdentity, Record, Status};
use crate::upload::LoadRequest;

/// A file to work on: where it was found and where it is now.
pub(crate) struct Taken {
    pub(crate) watch: usize,
    /// Where the file was found in the landing folder.
    pub(crate) original: PathBuf,
    /// Where it is now: the working folder, or the landing folder with `after_load = "keep"`.
    pub(crate) working: PathBuf,
}

impl Service {
    /// Digests a taken file and carries it to an outcome.
    pub(crate) async fn process(self: &Arc<Self>, taken: Taken) -> FileOutcome {
        let watch = &self.config.watches[taken.watch];
        match self.process_inner(watch, &taken).await {
            Ok(outcome) => outcome,
            Err(err) => {
                // Nothing was disposed of; hand the file back to the landing folder so that it
                // is where its writer left it (a later start or change takes it again).
                let mut place = taken.working.display().to_string();
                if taken.working != taken.original
                    && dispose::unclaim(&taken.working, &taken.original).is_ok()
                    && taken.original.exists()
                {
                    place = taken.original.display().to_string();
                }
                error!(path = %taken.original.display(), left_at = %place,
                    error = %format!("{err:#}"), "file left in place after a local error");
                FileOutcome::LocalError
            }
        }
    }

    async fn process_inner(
        self: &Arc<Self>,
        watch: &WatchConfig,
        taken: &Taken,
    ) -> anyhow::Result<FileOutcome> {
        let Some((file, sha256, identity)) = self.digest(taken).await? else {
            return Ok(FileOutcome::Skipped);
        };
        let label = label::label_for(&watch.label_prefix, &watch.database, &watch.table, &sha256);
        let lock = self.digest_lock(&watch.target(), &sha256);
        let _held = lock.lock().await;

        let fresh = self.new_record(watch, taken, &label, &sha256, identity)?;
        let record = match self.ledger.create_primary(fresh)? {
            Created::New(record) => record,
            Created::Existing(primary) => {
                let same_file = primary.identity.is_some_and(|i| {
                    (i.dev, i.ino, i.size) == (identity.dev, identity.ino, identity.size)
                });
                match primary.status {
                    // The outcome was durable but the file was not disposed of (a crash or a
                    // failed move): finish the disposal, nothing more.
                    status if status.is_terminal() && same_file => {
                        return self.finish(watch, taken, primary, Instant::now());
                    }
                    Status::Loaded | Status::Duplicate => {
                        return self
                            .record_duplicate(watch, taken, &label, &sha256, identity, &primary);
                    }
                    Status::Indeterminate => {
                        error!(path = %taken.original.display(), label = %primary.label,
                            "same bytes as an indeterminate record: resolve it first; \
                             file left in the working folder");
                        return Ok(FileOutcome::Indeterminate);
                    }
                    // Rejected before, or unfinished: try again under the same label.
                    _ => Record {
                        path: taken.original.clone(),
                        identity: Some(identity),
                        bytes: identity.size,
                        ..primary
                    },
                }
            }
        };
        self.carry(watch, taken, record, Arc::new(file)).await
    }

    /// One streaming SHA-256 pass. `None` when the file changed while being read: it is handed
    /// back and taken again once it is ready again.
    async fn digest(&self, taken: &Taken) -> anyhow::Result<Option<(File, String, FileIdentity)>> {
        use anyhow::Context as _;

        let file = File::open(&taken.working)
            .with_context(|| format!("failed to open `{}`", taken.working.display()))?;
        let before = identity(&file)?;
        let (file, sha256, len) = tokio::task::spawn_blocking(move || {
            let digest = label::digest_reader(&mut &file);
            digest.map(|(sha, len)| (file, sha, len))
        })
        .await?
        .with_context(|| format!("failed to read `{}`", taken.working.display()))?;
        self.digested
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let after = identity(&file)?;
        if before != after || len != after.size {
            warn!(path = %taken.original.display(), "file changed while being digested, left for later");
            if taken.working != taken.original {
                dispose::unclaim(&taken.working, &taken.original)?;
            }
            return Ok(None);
        }
        // The open handle reads on after the path is gone; a file deleted or replaced meanwhile
        // must not be recorded (and then "moved") as if it were still there.
        let still_there = std::fs::metadata(&taken.working).is_ok_and(|m| identity_of(&m) == after);
        anyhow::ensure!(
            still_there,
            "`{}` vanished or was replaced while being digested",
            taken.working.display()
        );
        Ok(Some((file, sha256, after)))
    }

    /// Attempts until an outcome, a pause, or the attempt budget of this run runs out.
    async fn carry(
        self: &Arc<Self>,
        watch: &WatchConfig,
        taken: &Taken,
        mut record: Record,
        file: Arc<File>,
    ) -> anyhow::Result<FileOutcome> {
        let started = Instant::now();
        if record.status == Status::Submitting {
            // An earlier run stopped mid-attempt: learn what became of it before sending.
            info!(label = %record.label, path = %record.path.display(),
                "resolving an attempt left unfinished by an earlier run");
            let reason = "attempt left unfinished by an earlier run".to_owned();
            match self.resolve_unknown(watch, &mut record, reason).await {
                Step::Done(done) => return self.finish(watch, taken, done, started),
                Step::Pause(held) | Step::Hold(held) | Step::Changed(held) => {
                    return self.hold(held);
                }
                Step::Retry { .. } => {}
            }
        }

        let mut tries = 0u32;
        loop {
            if has_unresolved_attempt(&record) && self.is_past_window(&record) {
                let Step::Done(done) = self.indeterminate(&mut record) else {
                    unreachable!()
                };
                return self.finish(watch, taken, done, started);
            }
            if tries >= self.config.load.max_attempts {
                record.next_attempt_at = None;
                self.ledger.put(&record)?;
                error!(path = %taken.original.display(), label = %record.label, attempts = tries,
                    "giving up for this run; the file stays in the working folder");
                return Ok(FileOutcome::Retrying);
            }
            if !self.wait_until_due(&record).await || !self.wait_for_credentials().await {
                return Ok(FileOutcome::Retrying);
            }
            tries += 1;
            let number = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX) + 1;
            match self.attempt(watch, &mut record, &file, number).await? {
                Step::Done(done) => return self.finish(watch, taken, done, started),
                Step::Hold(held) => return self.hold(held),
                Step::Changed(changed) => {
                    self.ledger.put(&changed)?;
                    if taken.working != taken.original {
                        dispose::unclaim(&taken.working, &taken.original)?;
                    }
                    return Ok(FileOutcome::Skipped);
                }
                Step::Pause(paused) => {
                    self.ledger.put(&paused)?;
                    record = paused;
                    // Credentials refused: wait (in `run`) for them to work again; the
                    // refused attempt does not count against the budget.
                    tries -= 1;
                    if !self.wait_for_credentials().await {
                        return Ok(FileOutcome::Retrying);
                    }
                }
                Step::Retry { outcome, reason } => {
                    let delay = self.backoff(tries);
                    record.status = Status::Retrying;
                    record.message = Some(reason.clone());
                    record.next_attempt_at = Some(SystemTime::now() + delay);
                    self.ledger.put(&record)?;
                    warn!(path = %taken.original.display(), label = %record.label, attempt = number,
                        outcome, error = %reason, retry_in = %humantime::format_duration(delay),
                        "load failed, will retry");
                }
            }
        }
    }

    fn hold(&self, record: Record) -> anyhow::Result<FileOutcome> {
        self.ledger.put(&record)?;
        Ok(FileOutcome::Retrying)
    }

    /// Sleeps until the record's next attempt is due; false when the service is stopping.
    async fn wait_until_due(&self, record: &Record) -> bool {
        if let Some(due) = record.next_attempt_at
            && let Ok(wait) = due.duration_since(SystemTime::now())
        {
            self.sleep_unless_stopping(wait).await;
        }
        !self.is_stopping()
    }

    /// One attempt: write it ahead, send, learn the outcome.
    async fn attempt(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        file: &Arc<File>,
        number: u32,
    ) -> anyhow::Result<Step> {
        record.status = Status::Submitting;
        record.next_attempt_at = None;
        record.attempts.push(Attempt {
            number,
            started_at: SystemTime::now(),
            duration_ms: None,
            outcome: None,
            http_status: None,
            cluster_status: None,
            message: None,
            txn_id: None,
            rows_loaded: None,
            rows_filtered: None,
            bytes: record.bytes,
        });
        // Invariant 2: the attempt is durable before its first byte leaves.
        self.ledger.put(record)?;

        let headers = request_headers(watch);
        let request = LoadRequest {
            database: &watch.database,
            table: &watch.table,
            label: &record.label,
            headers: &headers,
            file: Arc::clone(file),
            len: record.bytes,
            sha256: Some(&record.sha256),
        };
        let sent_at = Instant::now();
        let result = {
            let _permit = self.in_flight.acquire().await?;
            let _counted = self.count_load();
            self.uploader.load(&request).await
        };
        let elapsed_ms = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(last) = record.attempts.last_mut() {
            last.duration_ms = Some(elapsed_ms);
        }

        let step = match result {
            Ok(reply) => self.judge(watch, record, reply).await,
            Err(err) => self.judge_error(watch, record, err).await,
        };
        let outcome = record.attempts.last().and_then(|a| a.outcome.as_deref());
        self.count_attempt(outcome.unwrap_or("unknown"));
        Ok(step)
    }

    /// Records the outcome durably, then disposes of the file.
    fn finish(
        &self,
        watch: &WatchConfig,
        taken: &Taken,
        mut record: Record,
        started: Instant,
    ) -> anyhow::Result<FileOutcome> {
        if record.finished_at.is_none() || record.disposed_to.is_none() {
            record.finished_at.get_or_insert_with(SystemTime::now);
            let mut destination = self.destination(watch, taken, record.status)?;
            if self.changed_since_digest(taken, &record) {
                // A writer still held the file open and wrote after the digest: the digested
                // bytes are in, the rest is not. Keep it out of `done/` so a person sees it.
                error!(label = %record.label, path = %record.path.display(),
                    "the file changed after it was digested: only the digested bytes were \
                     loaded; the file goes to the failed folder");
                let note = "the file changed after it was digested; only the digested bytes \
                            were loaded";
                record.message = Some(match record.message.take() {
                    Some(message) => format!("{message}; {note}"),
                    None => note.to_owned(),
                });
                if watch.after_load != AfterLoad::Keep {
                    destination = Some(dispose::free_name(
                        &watch.failed_dir,
                        file_name(&taken.original),
                    )?);
                }
            }
            record.disposed_to.clone_from(&destination);
            // Invariant 2: the outcome is durable before the file moves.
            self.ledger.put(&record)?;
        }
        if record.status == Status::Indeterminate {
            self.write_indeterminate_note(watch, &record);
        }
        self.dispose(watch, taken, record.disposed_to.as_deref())?;

        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let rows = record.rows_loaded.unwrap_or(0);
        let outcome = match record.status {
            Status::Loaded => {
                self.note_success();
                info!(label = %record.label, path = %record.path.display(), rows,
                    bytes = record.bytes, elapsed_ms, "loaded");
                FileOutcome::Loaded {
                    rows,
                    bytes: record.bytes,
                }
            }
            Status::Duplicate => {
                info!(label = %record.label, path = %record.path.display(), rows = 0,
                    bytes = record.bytes, elapsed_ms, "duplicate, not loaded again");
                FileOutcome::Duplicate
            }
            Status::Indeterminate => FileOutcome::Indeterminate,
            _ => {
                error!(label = %record.label, path = %record.path.display(),
                    bytes = record.bytes, elapsed_ms,
                    message = record.message.as_deref().unwrap_or(""), "rejected by the cluster");
                FileOutcome::Rejected
            }
        };
        Ok(outcome)
    }

    /// Whether the file on disk is no longer the one digested (a loaded or duplicate file only:
    /// a rejected or indeterminate one goes to the failed folder anyway).
    fn changed_since_digest(&self, taken: &Taken, record: &Record) -> bool {
        if !matches!(record.status, Status::Loaded | Status::Duplicate) {
            return false;
        }
        let now = std::fs::metadata(&taken.working)
            .ok()
            .map(|meta| identity_of(&meta));
        now.is_some() && now != record.identity
    }

    /// Beside an indeterminate file in the failed folder: what happened and what to do.
    fn write_indeterminate_note(&self, watch: &WatchConfig, record: &Record) {
        let mut note = watch
            .failed_dir
            .join(file_name(&record.path))
            .into_os_string();
        note.push(".indeterminate.txt");
        let text = format!(
            "{}\n",
            record.message.as_deref().unwrap_or("outcome unknown")
        );
        if let Err(err) = dispose::write_beside(Path::new(&note), &text) {
            warn!(path = %record.path.display(), error = %err, "could not write the note");
        }
    }

    fn record_duplicate(
        &self,
        watch: &WatchConfig,
        taken: &Taken,
        label: &str,
        sha256: &str,
        identity: FileIdentity,
        primary: &Record,
    ) -> anyhow::Result<FileOutcome> {
        let mut record = self.new_record(watch, taken, label, sha256, identity)?;
        record.status = Status::Duplicate;
        record.duplicate_of = Some(primary.label.clone());
        record.message = Some(format!(
            "same bytes as `{}`, loaded before",
            primary.path.display()
        ));
        record.finished_at = Some(SystemTime::now());
        let destination = self.destination(watch, taken, Status::Duplicate)?;
        record.disposed_to.clone_from(&destination);
        self.ledger.put(&record)?;
        self.dispose(watch, taken, destination.as_deref())?;
        info!(label = %record.label, path = %record.path.display(), rows = 0,
            bytes = record.bytes, elapsed_ms = 0, duplicate_of = %primary.label,
            "duplicate, not loaded again");
        Ok(FileOutcome::Duplicate)
    }

    fn new_record(
        &self,
        watch: &WatchConfig,
        taken: &Taken,
        label: &str,
        sha256: &str,
        identity: FileIdentity,
    ) -> anyhow::Result<Record> {
        Ok(Record {
            id: self.ledger.next_id()?,
            label: label.to_owned(),
            database: watch.database.clone(),
            table: watch.table.clone(),
            sha256: sha256.to_owned(),
            path: taken.original.clone(),
            bytes: identity.size,
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
            identity: Some(identity),
            next_attempt_at: None,
            actions: Vec::new(),
        })
    }

    /// Where the file goes for this status, decided before the record is written so that the
    /// record can say it.
    fn destination(
        &self,
        watch: &WatchConfig,
        taken: &Taken,
        status: Status,
    ) -> anyhow::Result<Option<PathBuf>> {
        let name = file_name(&taken.original);
        Ok(match (status, watch.after_load) {
            (_, AfterLoad::Keep) => None,
            (Status::Rejected | Status::Indeterminate, _) => {
                Some(dispose::free_name(&watch.failed_dir, name)?)
            }
            (_, AfterLoad::Move) => Some(dispose::free_name(&watch.done_dir, name)?),
            (_, AfterLoad::Delete) => None,
        })
    }

    fn dispose(
        &self,
        watch: &WatchConfig,
        taken: &Taken,
        destination: Option<&Path>,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;

        match (destination, watch.after_load) {
            (Some(to), _) => dispose::move_to(&taken.working, to).with_context(|| {
                format!(
                    "failed to move `{}` to `{}`",
                    taken.working.display(),
                    to.display()
                )
            }),
            (None, AfterLoad::Delete) => std::fs::remove_file(&taken.working)
                .with_context(|| format!("failed to delete `{}`", taken.working.display())),
            (None, _) => Ok(()),
        }
    }
}

/// `column_separator` first, then `[watch.headers]` in key order.
fn request_headers(watch: &WatchConfig) -> Vec<(String, String)> {
    let mut headers = vec![(
        "column_separator".to_owned(),
        watch.column_separator.clone(),
    )];
    headers.extend(watch.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    headers
}

fn file_name(path: &Path) -> &Path {
    path.file_name().map_or(path, Path::new)
}

/// The identity of an open file, from `fstat`.
pub(crate) fn identity(file: &File) -> std::io::Result<FileIdentity> {
    let meta = file.metadata()?;
    Ok(identity_of(&meta))
}

pub(crate) fn identity_of(meta: &std::fs::Metadata) -> FileIdentity {
    FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
    }
}
