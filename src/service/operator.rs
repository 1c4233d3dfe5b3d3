//! Operator decisions on records the service could not settle: `sluice ledger resolve`.
//!
//! An indeterminate record is one whose outcome was unknown when the cluster's label window ran
//! out: only a person can say whether its rows are in. The decision is recorded on the record
//! (who, when, why, from which status) and acted on: the file moves to the done folder, or back
//! into the landing folder to be loaded again.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, bail};

use super::dispose;
use crate::config::{AfterLoad, Config, WatchConfig};
use crate::ledger::{Action, Ledger, Record, Status};

/// What the operator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The rows are known to be in the table.
    Loaded,
    /// Send the file again (a new attempt under the same label).
    Reload,
}

/// Records `decision` on the indeterminate record labelled `label` and acts on it. Returns the
/// record as stored and where its file is now.
///
/// # Errors
///
/// The ledger is held by a running service, no indeterminate record has that label, or the
/// file cannot be moved. Nothing is changed in those cases.
pub fn resolve(
    config: &Config,
    label: &str,
    decision: Decision,
    reason: &str,
) -> anyhow::Result<(Record, Option<PathBuf>)> {
    let ledger = Ledger::open(&config.ledger.path).map_err(|err| match err {
        crate::ledger::LedgerError::Locked { path } => anyhow::anyhow!(
            "the ledger at `{}` is held by a running sluice: stop it (`systemctl stop sluice`), \
             resolve, then start it again",
            path.display()
        ),
        other => other.into(),
    })?;
    let mut matches = Vec::new();
    for record in ledger.records() {
        let record = record?;
        if record.label == label {
            matches.push(record);
        }
    }
    let statuses: Vec<&str> = matches.iter().map(|r| r.status.as_str()).collect();
    let Some(mut record) = matches
        .into_iter()
        .rev()
        .find(|r| r.status == Status::Indeterminate)
    else {
        if statuses.is_empty() {
            bail!("no record has label `{label}`");
        }
        bail!(
            "the record with label `{label}` is {}: only indeterminate records need a decision",
            statuses.join(", ")
        );
    };

    let watch = config
        .watches
        .iter()
        .find(|w| w.database == record.database && w.table == record.table)
        .with_context(|| format!("no watch loads into `{}` any more", record.target()))?;
    let file_now = record.disposed_to.clone().filter(|p| p.exists());
    record.actions.push(Action {
        at: SystemTime::now(),
        by: operator_name(),
        decision: match decision {
            Decision::Loaded => "loaded",
            Decision::Reload => "reload",
        }
        .into(),
        reason: reason.to_owned(),
        from_status: record.status,
    });

    let destination = match decision {
        Decision::Loaded => {
            record.status = Status::Loaded;
            record.message = Some(format!("marked loaded by an operator: {reason}"));
            record.finished_at = Some(SystemTime::now());
            match (&file_now, watch.after_load) {
                (Some(_), AfterLoad::Move) => Some(free_in(&watch.done_dir, &record)?),
                _ => None,
            }
        }
        Decision::Reload => {
            record.status = Status::Pending;
            record.message = Some(format!(
                "to be loaded again by an operator's decision: {reason}"
            ));
            record.finished_at = None;
            record.next_attempt_at = None;
            match &file_now {
                Some(_) => Some(free_in(&watch.dir, &record)?),
                None => None,
            }
        }
    };
    record.disposed_to = match decision {
        Decision::Loaded => destination.clone().or(file_now.clone()),
        Decision::Reload => None,
    };
    // The decision is durable before the file moves, as every outcome is.
    ledger.put(&record)?;
    move_file(watch, file_now.as_ref(), destination.as_ref(), decision)?;
    Ok((record, destination.or(file_now)))
}

fn free_in(dir: &std::path::Path, record: &Record) -> anyhow::Result<PathBuf> {
    let name = record
        .path
        .file_name()
        .context("record path has no file name")?;
    Ok(dispose::free_name(dir, std::path::Path::new(name))?)
}

fn move_file(
    watch: &WatchConfig,
    from: Option<&PathBuf>,
    to: Option<&PathBuf>,
    decision: Decision,
) -> anyhow::Result<()> {
    match (from, to) {
        (Some(from), Some(to)) => dispose::move_to(from, to)
            .with_context(|| format!("failed to move `{}` to `{}`", from.display(), to.display())),
        (Some(from), None)
            if decision == Decision::Loaded && watch.after_load == AfterLoad::Delete =>
        {
            std::fs::remove_file(from)
                .with_context(|| format!("failed to delete `{}`", from.display()))
        }
        _ => Ok(()),
    }
}

/// Who is deciding: the user behind sudo, else the login name, else the numeric uid.
fn operator_name() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return name;
        }
    }
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| format!("uid {uid}")))
        .unwrap_or_else(|| "unknown".into())
}
