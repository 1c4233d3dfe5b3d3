//! What an attempt's answer means: the outcome table of DESIGN.md, the resolution of unknown
//! outcomes by label, and the label window.
//!
//! An unknown outcome (a lost answer, a cut connection, a 5xx, a crash mid-attempt) is resolved
//! at once by asking the cluster about the label, or by resending under the same label, but only
//! while the cluster can still remember the label. Past the window less a margin the record
//! becomes `indeterminate` and waits for an operator.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, warn};

use super::{Service, dispose};
use crate::config::WatchConfig;
use crate::ledger::{Record, Status};
use crate::upload::{LabelState, Reply, UploadError, Verdict};

/// How much of the cluster's error log is kept beside a refused file.
const MAX_ERROR_ROWS_BYTES: usize = 1 << 20;

/// How often a running label is asked about while it finishes: from the first to the last,
/// doubling.
const LABEL_POLL_FIRST: Duration = Duration::from_millis(500);
const LABEL_POLL_LAST: Duration = Duration::from_secs(5);

/// How long a running label is waited for before the attempt counts as failed. A stream load
/// runs for at most its `timeout` (600 s by default on the cluster); this leaves room over that.
const LABEL_WAIT_MAX: Duration = Duration::from_secs(15 * 60);

/// Attempt outcomes after which the rows may or may not be in the cluster.
const UNRESOLVED: &[&str] = &["unknown", "cut_short"];

/// What one attempt taught us.
pub(crate) enum Step {
    /// A terminal state: loaded, duplicate, rejected or indeterminate.
    Done(Record),
    /// Try again under the same label after a backoff.
    Retry {
        outcome: &'static str,
        reason: String,
    },
    /// Credentials refused: wait until they work again, then try again.
    Pause(Record),
    /// Stop for this run without a terminal state: something only an operator can fix (a
    /// redirect to plain http refused). The file stays in the working folder.
    Hold(Record),
    /// The file's bytes changed after they were digested: nothing was committed under the
    /// label; the file goes back to be taken again as new bytes.
    Changed(Record),
}

impl Service {
    pub(crate) async fn judge(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        reply: Reply,
    ) -> Step {
        debug!(label = %record.label, http_status = reply.http_status, status = %reply.status,
            message = %reply.message, "cluster answered");
        let verdict = reply.verdict();
        note_reply(record, &reply, verdict_word(&verdict));
        match verdict {
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
            // This attempt was refused for its label; only earlier ones can have loaded.
            Verdict::LabelFinished => label_was_loaded(record, false),
            Verdict::LabelRunning => self.wait_for_label(watch, record, false).await,
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
            Verdict::Unknown { reason } => {
                set_last_outcome(record, "unknown");
                self.resolve_unknown(watch, record, reason).await
            }
            Verdict::AuthRefused { message } => {
                self.refuse_credentials(&message);
                record.status = Status::Retrying;
                record.message = Some(format!("credentials refused: {message}"));
                Step::Pause(record.clone())
            }
        }
    }

    pub(crate) async fn judge_error(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        err: UploadError,
    ) -> Step {
        let reason = format!("{err:#}");
        let sent = err.body_may_have_been_sent();
        if let Some(last) = record.attempts.last_mut() {
            last.outcome = Some(if sent { "unknown" } else { "not_sent" }.into());
            last.message = Some(reason.clone());
        }
        match err {
            UploadError::InsecureRedirect { .. } => {
                error!(label = %record.label, error = %reason,
                    "refusing to send rows and credentials in clear; fix the endpoint or redirect map");
                record.status = Status::Retrying;
                record.message = Some(reason);
                Step::Hold(record.clone())
            }
            UploadError::FileAltered { .. } | UploadError::FileChanged { .. } => {
                warn!(label = %record.label, path = %record.path.display(),
                    "file changed after it was digested; taken again as new bytes");
                record.status = Status::Retrying;
                record.message = Some(reason);
                Step::Changed(record.clone())
            }
            UploadError::AuthRefused { ref message, .. } => {
                self.refuse_credentials(message);
                record.status = Status::Retrying;
                record.message = Some(reason);
                Step::Pause(record.clone())
            }
            _ if sent => self.resolve_unknown(watch, record, reason).await,
            _ => Step::Retry {
                outcome: "not_sent",
                reason,
            },
        }
    }

    /// The outcome is not known: ask the cluster what became of the label.
    pub(crate) async fn resolve_unknown(
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
                label_was_loaded(record, true)
            }
            Ok(LabelState::Prepare) => self.wait_for_label(watch, record, true).await,
            // Once the window may have passed, UNKNOWN proves nothing: the label may have been
            // committed and forgotten.
            Ok(LabelState::Unknown) if self.is_past_window(record) => self.indeterminate(record),
            // Aborted, or never seen inside the window: resending under the label is safe.
            Ok(state) => Step::Retry {
                outcome: "unknown",
                reason: format!("{reason}; label state {state:?}"),
            },
            Err(UploadError::AuthRefused { message, .. }) => {
                self.refuse_credentials(&message);
                record.status = Status::Retrying;
                record.message = Some(format!("credentials refused: {message}"));
                Step::Pause(record.clone())
            }
            Err(err) => Step::Retry {
                outcome: "unknown",
                reason: format!("{reason}; label state not known: {err:#}"),
            },
        }
    }

    /// The label is running (ours from a lost answer, or another host's): poll until final.
    /// `last_may_be_ours` as for [`label_was_loaded`].
    async fn wait_for_label(
        &self,
        watch: &WatchConfig,
        record: &mut Record,
        last_may_be_ours: bool,
    ) -> Step {
        let deadline = Instant::now() + LABEL_WAIT_MAX;
        let mut poll = LABEL_POLL_FIRST;
        while Instant::now() < deadline && !self.is_stopping() {
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(LABEL_POLL_LAST);
            match self
                .uploader
                .label_state(&watch.database, &record.label)
                .await
            {
                Ok(LabelState::Visible | LabelState::Committed | LabelState::Prepared) => {
                    return label_was_loaded(record, last_may_be_ours);
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

    /// Whether the cluster may have forgotten the label of an unresolved attempt: the window
    /// counts from the first attempt (or the operator's last decision), less a tenth of it.
    pub(crate) fn is_past_window(&self, record: &Record) -> bool {
        let Some(start) = window_start(record) else {
            return false;
        };
        let keep = self.config.cluster.label_keep;
        let usable = keep.saturating_sub(keep / 10);
        SystemTime::now()
            .duration_since(start)
            .is_ok_and(|age| age >= usable)
    }

    /// Gives up on learning the outcome: never resent without an operator's decision.
    pub(crate) fn indeterminate(&self, record: &mut Record) -> Step {
        record.status = Status::Indeterminate;
        record.message = Some(format!(
            "outcome unknown and the cluster's label window ({}) may have passed: decide with \
             `sluice ledger resolve {} --loaded` or `--reload --reason ...`",
            humantime::format_duration(self.config.cluster.label_keep),
            record.label
        ));
        error!(label = %record.label, path = %record.path.display(),
            "indeterminate: an operator must decide whether the rows are in");
        Step::Done(record.clone())
    }

    async fn keep_error_rows(&self, watch: &WatchConfig, record: &Record, reply: &Reply) {
        let failed = watch
            .failed_dir
            .join(record.path.file_name().unwrap_or_default());
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
}

/// The cluster holds a finished load under our label. If an attempt of ours whose outcome was
/// never learned may have reached it, the rows are ours (an answer lost); if not, another host or
/// run loaded them. `last_may_be_ours` is false when the last attempt was itself refused for
/// its label, so that it cannot be the one that loaded.
pub(crate) fn label_was_loaded(record: &mut Record, last_may_be_ours: bool) -> Step {
    let considered = if last_may_be_ours {
        &record.attempts[..]
    } else {
        &record.attempts[..record.attempts.len().saturating_sub(1)]
    };
    let ours = considered
        .iter()
        .any(|a| a.outcome.as_deref().is_none_or(|o| UNRESOLVED.contains(&o)));
    if ours {
        record.status = Status::Loaded;
        record.message = Some("committed by an earlier attempt whose answer was lost".into());
    } else {
        record.status = Status::Duplicate;
        record.duplicate_of = Some(record.label.clone());
        record.message = Some("label already loaded by another host or run".into());
    }
    Step::Done(record.clone())
}

/// Whether the record has an attempt whose outcome was never learned.
pub(crate) fn has_unresolved_attempt(record: &Record) -> bool {
    record
        .attempts
        .iter()
        .any(|a| a.outcome.as_deref().is_none_or(|o| UNRESOLVED.contains(&o)))
}

/// When the label window of this record's unresolved attempts started, if it has any.
fn window_start(record: &Record) -> Option<SystemTime> {
    let since = record.actions.last().map(|a| a.at);
    let first = record
        .attempts
        .iter()
        .filter(|a| since.is_none_or(|s| a.started_at >= s))
        .map(|a| a.started_at)
        .min()?;
    has_unresolved_attempt(record).then_some(first)
}

fn set_last_outcome(record: &mut Record, outcome: &str) {
    if let Some(last) = record.attempts.last_mut() {
        last.outcome = Some(outcome.to_owned());
    }
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
