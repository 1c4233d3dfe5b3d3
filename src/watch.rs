//! Discovery and readiness: which files in the watch directories are ready to be claimed.
//!
//! [`Discovery`] runs a notify watcher on every watch directory (not recursive), a full scan at
//! start and a periodic rescan, and sends each ready file once as a [`Candidate`]. [`scan_ready`]
//! does the same without events for `sluice once`. The rules of DESIGN.md's "Readiness" live in
//! `readiness`; only regular files directly in a watch directory are ever candidates, so the
//! work, done and failed folders (subfolders by default) are never looked into.
//!
//! Known limitations:
//! - A writer that opened a file before the service started (or while events were lost) and
//!   pauses for longer than the settle period cannot be told apart from a finished file: without
//!   its events only the size and mtime are left, and they do not change while it pauses.
//! - After an event queue overflow the watcher's knowledge of open writers is dropped and every
//!   file falls back to the settle period, with the same weakness.
//! - Several writers on one file: the first close after which no further write arrives makes
//!   the file ready, even if another writer still holds it open and writes later.
//! - A file created with `open(O_RDONLY | O_CREAT)`, or hard-linked into place and opened by a
//!   reader at once, looks like an open writer and waits for a close-write that never comes
//!   until the next restart or overflow.
//! - If a watch directory is moved away or replaced, its events stop; rescans (which go by path)
//!   still find the files, and a restart re-arms the watcher.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use globset::GlobSet;

mod discovery;
mod readiness;
mod scan;

pub use discovery::Discovery;
pub use scan::scan_ready;

/// A file that is ready to be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the file's watch in the slice given to [`Discovery::start`] or [`scan_ready`].
    pub watch: usize,
    /// The watch directory (made absolute) joined with the file name.
    pub path: PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
    pub dev: u64,
    pub ino: u64,
    /// Why the file counts as ready.
    pub via: ReadyVia,
}

/// How a file became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadyVia {
    /// The watcher saw its writer close it after writing.
    Closed,
    /// It was moved into the watch directory, finished.
    Renamed,
    /// A scan found it unchanged for the settle period (or with an older mtime).
    Settled,
}

impl ReadyVia {
    /// The lowercase word used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyVia::Closed => "closed",
            ReadyVia::Renamed => "renamed",
            ReadyVia::Settled => "settled",
        }
    }
}

impl std::fmt::Display for ReadyVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why discovery could not start or a scan could not run.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// An `ignore` pattern of a watch is not a valid glob.
    #[error("invalid ignore pattern `{pattern}` for watch `{dir}`")]
    IgnorePattern {
        dir: PathBuf,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    /// A watch directory could not be listed (or its path made absolute).
    #[error("failed to read watch directory `{dir}`")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The operating system's file watcher could not be created.
    #[error("failed to start the file watcher")]
    StartWatcher(#[source] notify::Error),
    /// A watch directory could not be added to the file watcher.
    #[error("failed to watch directory `{dir}`")]
    WatchDir {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The ignore patterns a watch gets when its configuration names none: dotfiles, `*.tmp`,
/// `*.part`, `*.swp` and `*~`, the usual names of files still being written or of editors.
pub fn default_ignore_patterns() -> Vec<String> {
    [".*", "*.tmp", "*.part", "*.swp", "*~"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Whether a file name (the name only, not a path) matches one of the ignore patterns.
pub fn is_ignored(name: &OsStr, patterns: &GlobSet) -> bool {
    patterns.is_match(Path::new(name))
}

#[cfg(test)]
mod tests {
    use globset::{Glob, GlobSetBuilder};

    use super::*;

    fn defaults() -> GlobSet {
        let mut builder = GlobSetBuilder::new();
        for pattern in default_ignore_patterns() {
            builder.add(Glob::new(&pattern).unwrap());
        }
        builder.build().unwrap()
    }

    #[test]
    fn default_patterns_ignore_temporary_names() {
        let set = defaults();
        for name in [
            ".hidden", ".x.csv", "a.tmp", "a.part", ".a.swp", "a.swp", "a.csv~",
        ] {
            assert!(
                is_ignored(OsStr::new(name), &set),
                "{name} should be ignored"
            );
        }
    }

    #[test]
    fn default_patterns_keep_data_names() {
        let set = defaults();
        for name in [
            "orders.csv",
            "a.json",
            "tmp",
            "part.csv",
            "x.tmp.csv",
            "a~b",
        ] {
            assert!(
                !is_ignored(OsStr::new(name), &set),
                "{name} should not be ignored"
            );
        }
    }

    #[test]
    fn ready_via_has_lowercase_words() {
        assert_eq!(ReadyVia::Closed.to_string(), "closed");
        assert_eq!(ReadyVia::Renamed.as_str(), "renamed");
        assert_eq!(ReadyVia::Settled.as_str(), "settled");
    }
}
