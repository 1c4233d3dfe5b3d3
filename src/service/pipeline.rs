//! The life of one file: claim, digest, label, ledger check, attempts, outcome, disposal.
//!
//! Order matters and is the exactly-once contract: an attempt is in the ledger (flushed) before
//! its first byte is sent, and its outcome is in the ledger before the file moves. A failure of
//! our own (unreadable file, ledger write) leaves the file where it is.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use super::{FileOutcome, Service, dispose};
use crate::config::{AfterLoad, WatchConfig};
use crate::label;
use crate::ledger::{Attempt, Created, FileIdentity, Record, Status};
use crate::upload::{LabelState, LoadRequest, Reply, UploadError, Verdict};

/// How much of the cluster's error log is kept beside a refused file.
const MAX_ERROR_ROWS_BYTES: usize = 1 << 20;

/// How often a running label is asked about while it finishes.
const LABEL_POLL: Duration = Duration::from_secs(1);

/// A file to work on: where it was found and where it is now.
pub(crate) struct Taken {
    pub(crate) watch: usize,
    /// Where the file was found in the landing folder.
    pub(crate) original: PathBuf,
    /// Where it is now: the working folder, or the landing folder with `after_load = "keep"`.
    pub(crate) working: PathBuf,
}

/// What one attempt taught us.
enum Step {
    Done(Record),
    Retry {
        outcome: &'static str,
        reason: String,
    },
    /// Stop attempting for now without a terminal state (credentials refused, bad redirect).
    Pause(Record),
}

impl Service {
    /// Digests a taken file and carries it to an outcome.
    pub(crate) async fn process(self: &Arc<Self>, taken: Taken) -> FileOutcome {
        let watch = &self.config.watches[taken.watch];
        match self.process_inner(watch, &taken).await {
            Ok(outcome) => outcome,
            Err(err) => {
                error!(path = %taken.original.display(), error = %format!("{err:#}"),
                    "file left in place after a local error");
                FileOutcome::LocalError
            }
        }
    }

    async fn process_inner(
        self: &Arc<Self>,
        watch: &WatchConfig,
        taken: &Taken,
    ) -> anyhow::Result<FileOutcome> {
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
            return Ok(FileOutcome::Skipped);
        }

        let label = label::label_for(&watch.label_prefix, &watch.database, &watch.table, &sha256);
        let target = watch.target();
        let lock = self.digest_lock(&target, &sha256);
        let _held = lock.lock().await;

        let fresh = self.new_record(watch, taken, &label, &sha256, after)?;
        let mut record = match self.ledger.create_primary(fresh)? {
            Created::New(record) => record,
            Created::Existing(primary) => match primary.status {
                Status::Loaded | Status::Duplicate => {
                    return self.record_duplicate(watch, taken, &label, &sha256, after, &primary);
                }
                Status::Indeterminate => {
                    error!(path = %taken.original.display(), label = %primary.label,
                        "same bytes as an indeterminate record: resolve it first, file left in place");
                    return Ok(FileOutcome::Indeterminate);
                }
                // Rejected before, or unfinished: try again under the same label.
                _ => Record {
                    path: taken.original.clone(),
                    identity: Some(after),
                    bytes: len,
                    ..primary
                },
            },
        };

        let file = Arc::new(file);
        let started = Instant::now();
        let max_attempts = self.config.load.max_attempts;
        loop {
            let number = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX) + 1;
            if number > max_attempts {
                warn!(path = %taken.original.display(), label = %record.label,
                    attempts = number - 1, "giving up for now, file stays in the working folder");
                return Ok(FileOutcome::Retrying);
            }
            match self.attempt(watch, &mut record, &file, len, number).await? {
                Step::Done(done) => {
                    return self.finish(watch, taken, done, started).await;
                }
                Step::Pause(paused) => {
                    self.ledger.put(&paused)?;
                    return Ok(FileOutcome::Retrying);
                }
                Step::Retry { outcome, reason } => {
                    let delay = self.backoff(number);
                    record.status = Status::Retrying;
                    record.message = Some(reason.clone());
                    record.next_attempt_at = Some(SystemTime::now() + delay);
                    self.ledger.put(&record)?;
                    warn!(path = %taken.original.display(), label = %record.label, attempt = number,
                        outcome, error = %reason, retry_in = %humantime::format_duration(delay),
                        "load failed, will retry");
                    if self.is_stopping() {
                        return Ok(FileOutcome::Retrying);
                    }
                    self.sleep_unless_stopping(delay).await;
                    if self.is_stopping() {
                        return Ok(FileOutcome::Retrying);
                    }
                }
            }
        }
    }

    /// One attempt: write it ahead, send, learn the outcome.
    async fn attempt(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        file: &Arc<File>,
        len: u64,
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
            bytes: len,
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
            len,
        };
        let sent_at = Instant::now();
        let result = {
            let _permit = self.in_flight.acquire().await?;
            self.loads_now
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = self.uploader.load(&request).await;
            self.loads_now
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            result
        };
        let elapsed_ms = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(last) = record.attempts.last_mut() {
            last.duration_ms = Some(elapsed_ms);
        }

        let step = match result {
            Ok(reply) => self.judge(watch, record, reply).await?,
            Err(err) => self.judge_error(watch, record, err).await,
        };
        let outcome = record.attempts.last().and_then(|a| a.outcome.as_deref());
        self.count_attempt(outcome.unwrap_or("unknown"));
        Ok(step)
    }

    async fn judge(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        reply: Reply,
    ) -> anyhow::Result<Step> {
        debug!(label = %record.label, http_status = reply.http_status, status = %reply.status,
            message = %reply.message, "cluster answered");
        let verdict = reply.verdict();
        note_reply(record, &reply, verdict_word(&verdict));
        Ok(match verdict {
            Verdict::Loaded { publish_pending } => {
                record.status = Status::Loaded;
                record.rows_loaded = Some(reply.rows_loaded);
                record.rows_filtered = Some(reply.rows_filtered);
                record.txn_id = reply.txn_id;
                record.message = Some(if publish_pending {
                    format!("committed, visible later: {}", reply.message)
                } else {
                    reply.message.clone()
                });
                Step::Done(record.clone())
            }
            Verdict::LabelFinished => self.label_was_loaded(record),
            Verdict::LabelRunning => self.wait_for_label(watch, record).await,
            Verdict::Rejected { reason } => {
                record.status = Status::Rejected;
                record.rows_filtered = Some(reply.rows_filtered);
                record.txn_id = reply.txn_id;
                record.message = Some(reason);
                self.keep_error_rows(watch, record, &reply).await;
                Step::Done(record.clone())
            }
            Verdict::Transient { reason } => Step::Retry {
                outcome: "transient",
                reason,
            },
            Verdict::Unknown { reason } => self.resolve_unknown(watch, record, reason).await,
            Verdict::AuthRefused { message } => {
                self.refuse_credentials(&message);
                record.status = Status::Retrying;
                record.message = Some(format!("credentials refused: {message}"));
                Step::Pause(record.clone())
            }
        })
    }

    async fn judge_error(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        err: UploadError,
    ) -> Step {
        let reason = format!("{err:#}");
        if let Some(last) = record.attempts.last_mut() {
            last.outcome = Some("error".into());
            last.message = Some(reason.clone());
        }
        if matches!(err, UploadError::InsecureRedirect { .. }) {
            error!(label = %record.label, error = %reason,
                "refusing to send rows and credentials in clear; fix the endpoint or redirect map");
            record.status = Status::Retrying;
            record.message = Some(reason);
            return Step::Pause(record.clone());
        }
        if err.body_may_have_been_sent() {
            return self.resolve_unknown(watch, record, reason).await;
        }
        Step::Retry {
            outcome: "not sent",
            reason,
        }
    }

    /// The answer was lost or unclear: ask the cluster what became of the label.
    async fn resolve_unknown(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        reason: String,
    ) -> Step {
        match self
            .uploader
            .label_state(&watch.database, &record.label)
            .await
        {
            Ok(LabelState::Visible | LabelState::Committed | LabelState::Prepared) => {
                self.label_was_loaded(record)
            }
            Ok(LabelState::Prepare) => self.wait_for_label(watch, record).await,
            // Aborted, or never seen: resending under the same label is safe inside the window.
            Ok(state) => Step::Retry {
                outcome: "unknown",
                reason: format!("{reason}; label state {state:?}"),
            },
            Err(err) => Step::Retry {
                outcome: "unknown",
                reason: format!("{reason}; label state not known: {err:#}"),
            },
        }
    }

    /// The label is running (ours from a lost answer, or another host's): poll until final.
    async fn wait_for_label(&self, watch: &WatchConfig, record: &mut Record) -> Step {
        let deadline = Instant::now() + self.config.cluster.timeout;
        while Instant::now() < deadline && !self.is_stopping() {
            tokio::time::sleep(LABEL_POLL).await;
            match self
                .uploader
                .label_state(&watch.database, &record.label)
                .await
            {
                Ok(LabelState::Visible | LabelState::Committed | LabelState::Prepared) => {
                    return self.label_was_loaded(record);
                }
                Ok(LabelState::Prepare) => {}
                Ok(state) => {
                    return Step::Retry {
                        outcome: "unknown",
                        reason: format!("running label ended as {state:?}"),
                    };
                }
                Err(err) => {
                    return Step::Retry {
                        outcome: "unknown",
                        reason: format!("label state not known: {err:#}"),
                    };
                }
            }
        }
        Step::Retry {
            outcome: "unknown",
            reason: "label still running".into(),
        }
    }

    /// The cluster holds a finished load under our label. If we attempted before, it was ours
    /// (an answer lost); if not, another host or run loaded these bytes.
    fn label_was_loaded(&self, record: &mut Record) -> Step {
        let ours = record.attempts.len() > 1;
        record.status = if ours {
            Status::Loaded
        } else {
            Status::Duplicate
        };
        if ours {
            record.message = Some("committed by an earlier attempt whose answer was lost".into());
        } else {
            record.duplicate_of = Some(record.label.clone());
            record.message = Some("label already loaded by another host or run".into());
        }
        Step::Done(record.clone())
    }

    async fn keep_error_rows(&self, watch: &WatchConfig, record: &Record, reply: &Reply) {
        let failed = failed_base(watch, &record.path);
        let mut reply_path = failed.clone().into_os_string();
        reply_path.push(".reply.json");
        if let Err(err) = dispose::write_beside(Path::new(&reply_path), &reply.body) {
            warn!(path = %record.path.display(), error = %err, "could not keep the cluster's answer");
        }
        let Some(url) = &reply.error_url else { return };
        let rows = match self
            .uploader
            .fetch_error_rows(url, MAX_ERROR_ROWS_BYTES)
            .await
        {
            Ok(rows) => rows,
            Err(err) => format!("error rows could not be fetched from {url}: {err:#}\n"),
        };
        let mut rows_path = failed.into_os_string();
        rows_path.push(".errors.txt");
        if let Err(err) = dispose::write_beside(Path::new(&rows_path), &rows) {
            warn!(path = %record.path.display(), error = %err, "could not keep the error rows");
        }
    }

    /// Records the outcome durably, then disposes of the file.
    async fn finish(
        &self,
        watch: &WatchConfig,
        taken: &Taken,
        mut record: Record,
        started: Instant,
    ) -> anyhow::Result<FileOutcome> {
        record.finished_at = Some(SystemTime::now());
        let destination = self.destination(watch, taken, record.status)?;
        record.disposed_to.clone_from(&destination);
        // Invariant 2: the outcome is durable before the file moves.
        self.ledger.put(&record)?;
        self.dispose(watch, taken, destination.as_deref())?;

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
            _ => {
                error!(label = %record.label, path = %record.path.display(),
                    bytes = record.bytes, elapsed_ms,
                    message = record.message.as_deref().unwrap_or(""), "rejected by the cluster");
                FileOutcome::Rejected
            }
        };
        Ok(outcome)
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
            (Status::Rejected, _) => Some(dispose::free_name(&watch.failed_dir, name)?),
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

fn note_reply(record: &mut Record, reply: &Reply, outcome: &str) {
    if let Some(last) = record.attempts.last_mut() {
        last.outcome = Some(outcome.to_owned());
        last.http_status = Some(reply.http_status);
        last.cluster_status = Some(reply.status.clone());
        last.message = Some(reply.message.clone());
        last.txn_id = reply.txn_id;
        last.rows_loaded = Some(reply.rows_loaded);
        last.rows_filtered = Some(reply.rows_filtered);
    }
}

fn verdict_word(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Loaded { .. } => "loaded",
        Verdict::LabelFinished => "label_finished",
        Verdict::LabelRunning => "label_running",
        Verdict::Rejected { .. } => "rejected",
        Verdict::Transient { .. } => "transient",
        Verdict::Unknown { .. } => "unknown",
        Verdict::AuthRefused { .. } => "auth_refused",
    }
}

/// The path in the failed folder the cluster's answer is named after.
fn failed_base(watch: &WatchConfig, original: &Path) -> PathBuf {
    watch.failed_dir.join(file_name(original))
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
