//! Which records `list` and `stats` show: by status, target, time taken, path and label.

use std::path::Path;
use std::time::{Duration, SystemTime};

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

use super::AuditError;
use crate::ledger::{Record, Status, rfc3339_opt};

/// A conjunction of conditions; an empty filter matches every record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// The label starts with this (a whole label matches itself).
    pub label: Option<String>,
    /// A glob matched against the path the file was found at, the path it was moved to, and
    /// the file name alone (`*` crosses `/`).
    pub path: Option<String>,
    /// Taken (`first_seen`) at or after this time.
    #[serde(with = "rfc3339_opt", default)]
    pub since: Option<SystemTime>,
    /// Any of these statuses; empty means any status.
    pub statuses: Vec<Status>,
    /// `database.table`, or a table name in any database.
    pub table: Option<String>,
    /// Taken before this time.
    #[serde(with = "rfc3339_opt", default)]
    pub until: Option<SystemTime>,
}

/// A [`Filter`] made ready to test records.
pub(super) struct Matcher<'a> {
    filter: &'a Filter,
    glob: Option<GlobMatcher>,
}

impl Filter {
    /// # Errors
    ///
    /// `Glob` when `path` is not a valid glob.
    pub(super) fn matcher(&self) -> Result<Matcher<'_>, AuditError> {
        let glob = self
            .path
            .as_ref()
            .map(|glob| {
                Glob::new(glob)
                    .map(|g| g.compile_matcher())
                    .map_err(|source| AuditError::Glob {
                        glob: glob.clone(),
                        source,
                    })
            })
            .transpose()?;
        Ok(Matcher { filter: self, glob })
    }
}

impl Matcher<'_> {
    pub(super) fn matches(&self, record: &Record) -> bool {
        let f = self.filter;
        (f.statuses.is_empty() || f.statuses.contains(&record.status))
            && f.table.as_ref().is_none_or(|t| is_target(record, t))
            && f.since.is_none_or(|since| record.first_seen >= since)
            && f.until.is_none_or(|until| record.first_seen < until)
            && f.label
                .as_ref()
                .is_none_or(|l| record.label.starts_with(l.as_str()))
            && self.glob.as_ref().is_none_or(|g| is_path_match(record, g))
    }
}

fn is_target(record: &Record, wanted: &str) -> bool {
    match wanted.split_once('.') {
        Some((database, table)) => record.database == database && record.table == table,
        None => record.table == wanted,
    }
}

fn is_path_match(record: &Record, glob: &GlobMatcher) -> bool {
    let matches =
        |path: &Path| glob.is_match(path) || path.file_name().is_some_and(|n| glob.is_match(n));
    matches(&record.path) || record.disposed_to.as_deref().is_some_and(matches)
}

/// A point in time from the command line: RFC 3339 (`2024-05-01T00:00:00Z`, or a date alone,
/// `2024-05-01`, meaning its midnight UTC), or a humantime age (`2d`, `90m`) back from `now`.
///
/// # Errors
///
/// The text is neither.
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    if text.len() == 10
        && let Ok(time) = humantime::parse_rfc3339(&format!("{text}T00:00:00Z"))
    {
        return Ok(time);
    }
    let age: Duration = humantime::parse_duration(text).map_err(|_| {
        format!("`{text}` is neither an RFC 3339 time (2024-05-01T12:00:00Z) nor an age (2d)")
    })?;
    Ok(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_dates_or_ages() {
        let now = humantime::parse_rfc3339("2024-05-10T12:00:00Z").unwrap();
        let at = |s: &str| humantime::format_rfc3339(parse_time(s, now).unwrap()).to_string();
        assert_eq!(at("2d"), "2024-05-08T12:00:00Z");
        assert_eq!(at("90m"), "2024-05-10T10:30:00Z");
        assert_eq!(at("2024-05-01"), "2024-05-01T00:00:00Z");
        assert_eq!(at("2024-05-01T06:07:08Z"), "2024-05-01T06:07:08Z");
        assert!(parse_time("yesterday", now).is_err());
    }
}
