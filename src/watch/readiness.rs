//! The readiness rules of one watch: what a name is, and when a file with events or without them
//! is ready.
//!
//! A [`Tracker`] keeps two maps by file name: files still being followed (`pending`) and files
//! already sent (`emitted`), so a file that stays in place unchanged is sent once. Emitted files
//! keep only their stamp, so many kept files cost little memory and a rescan of them costs one
//! stat each.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use globset::{Glob, GlobSet, GlobSetBuilder};
use tokio::time::Instant;
use tracing::debug;

use super::{Candidate, ReadyVia, WatchError, is_ignored};
use crate::config::WatchConfig;

/// The fixed rules of one watch, compiled once at start.
#[derive(Debug)]
pub(super) struct Rules {
    /// The watch directory, absolute; event paths are compared with it.
    pub(super) dir: PathBuf,
    ignore: GlobSet,
    marker_suffix: Option<OsString>,
}

/// What a directory entry's name makes of it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NameKind<'a> {
    /// A possible candidate.
    Data,
    /// Never a candidate.
    Ignored,
    /// The marker of the data file with this name.
    Marker(&'a OsStr),
}

impl Rules {
    /// Compiles the ignore patterns of `watch` and makes its directory absolute.
    pub(super) fn new(watch: &WatchConfig) -> Result<Rules, WatchError> {
        let dir = std::path::absolute(&watch.dir).map_err(|source| WatchError::ReadDir {
            dir: watch.dir.clone(),
            source,
        })?;
        let mut builder = GlobSetBuilder::new();
        for pattern in &watch.ignore {
            let glob = Glob::new(pattern).map_err(|source| WatchError::IgnorePattern {
                dir: watch.dir.clone(),
                pattern: pattern.clone(),
                source,
            })?;
            builder.add(glob);
        }
        let ignore = builder
            .build()
            .map_err(|source| WatchError::IgnorePattern {
                dir: watch.dir.clone(),
                pattern: watch.ignore.join(" "),
                source,
            })?;
        let marker_suffix = watch
            .marker_suffix
            .as_deref()
            .filter(|suffix| !suffix.is_empty())
            .map(OsString::from);
        Ok(Rules {
            dir,
            ignore,
            marker_suffix,
        })
    }

    /// Markers are recognised before the ignore patterns so that a marker's arrival can wake
    /// its data file; either way neither a marker nor an ignored name is ever a candidate.
    pub(super) fn classify<'a>(&self, name: &'a OsStr) -> NameKind<'a> {
        if let Some(suffix) = &self.marker_suffix {
            let bytes = name.as_bytes();
            let suffix = suffix.as_bytes();
            if bytes.len() > suffix.len() && bytes.ends_with(suffix) {
                let data = OsStr::from_bytes(&bytes[..bytes.len() - suffix.len()]);
                return NameKind::Marker(data);
            }
        }
        if is_ignored(name, &self.ignore) {
            NameKind::Ignored
        } else {
            NameKind::Data
        }
    }

    /// Whether the data file `name` may be ready as far as its marker goes.
    fn has_marker(&self, name: &OsStr) -> bool {
        let Some(suffix) = &self.marker_suffix else {
            return true;
        };
        let mut marker = name.to_owned();
        marker.push(suffix);
        fs::symlink_metadata(self.dir.join(marker)).is_ok()
    }
}

/// What identifies one version of a file: a change of any part means the file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    size: u64,
    mtime: SystemTime,
    dev: u64,
    ino: u64,
}

impl Stamp {
    /// The stamp of a regular file, or `None` for anything else (directories, symlinks, fifos).
    pub(super) fn of(meta: &Metadata) -> Option<Stamp> {
        if !meta.file_type().is_file() {
            return None;
        }
        Some(Stamp {
            size: meta.len(),
            // Every Linux filesystem we run on records mtimes; a missing one reads as the epoch,
            // which only makes the file look old, and the size still has to hold still.
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the file was last modified at least `settle` ago. An mtime in the future (clock
    /// skew, network filesystems) counts as young.
    fn is_older_than(&self, settle: Duration) -> bool {
        SystemTime::now()
            .duration_since(self.mtime)
            .is_ok_and(|age| age >= settle)
    }
}

/// What the watcher saw happen to a name, reduced to what readiness needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// A new file appeared (`open` with `O_CREAT`, or a hard link).
    Created,
    /// Someone opened it; after `Created`, this is the writer that created it.
    Opened,
    /// Its data changed.
    Written,
    /// A writer closed it.
    ClosedWrite,
    /// It was moved into place.
    MovedIn,
    /// It went away (removed or moved out).
    Gone,
    /// Something else (metadata); look again.
    Touched,
}

/// Where a followed file stands, by its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No event says anything: the settle period decides.
    Unknown,
    /// Created, but no open seen yet: a hard link gets no open, so the settle period decides
    /// unless an open follows.
    Created,
    /// Written (or created and opened) and not closed since.
    Writing,
    /// Its writer closed it after the last write.
    Closed,
    /// Moved into place.
    Renamed,
}

#[derive(Debug)]
struct Pending {
    phase: Phase,
    /// The stamp last seen and when it was first seen; the settle period runs from there.
    observed: Option<(Stamp, Instant)>,
    /// When a settle check is due, while the settle period decides.
    deadline: Option<Instant>,
    /// The scan generation in which the file was last seen, to forget vanished files.
    seen: u64,
}

#[derive(Debug)]
struct Emitted {
    stamp: Stamp,
    seen: u64,
}

/// The outcome of looking at one file.
#[derive(Debug)]
pub(super) enum Check {
    Ready(Candidate),
    /// Not ready; look again at the deadline, if there is one (else an event or scan will).
    Wait(Option<Instant>),
    /// Nothing to follow: gone, not a regular file, or already sent unchanged.
    Done,
}

/// The readiness state of one watch.
#[derive(Debug)]
pub(super) struct Tracker {
    index: usize,
    rules: Arc<Rules>,
    settle: Duration,
    pending: HashMap<OsString, Pending>,
    emitted: HashMap<OsString, Emitted>,
}

impl Tracker {
    pub(super) fn new(index: usize, rules: Arc<Rules>, settle: Duration) -> Tracker {
        Tracker {
            index,
            rules,
            settle,
            pending: HashMap::new(),
            emitted: HashMap::new(),
        }
    }

    pub(super) fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// Applies one event signal for `name`; returns the data name to look at, if any.
    pub(super) fn on_signal<'a>(
        &mut self,
        name: &'a OsStr,
        signal: Signal,
        generation: u64,
    ) -> Option<&'a OsStr> {
        let name = match self.rules.classify(name) {
            NameKind::Ignored => return None,
            // A marker coming or going only matters to its data file; look at that again.
            NameKind::Marker(data) => {
                return (self.rules.classify(data) == NameKind::Data).then_some(data);
            }
            NameKind::Data => name,
        };
        let next = match signal {
            Signal::Gone => {
                self.forget(name);
                return None;
            }
            Signal::Touched => return Some(name),
            Signal::Opened => match self.pending.get(name) {
                Some(p) if p.phase == Phase::Created => Phase::Writing,
                _ => return None,
            },
            Signal::Created => Phase::Created,
            Signal::Written => Phase::Writing,
            Signal::ClosedWrite => Phase::Closed,
            Signal::MovedIn => Phase::Renamed,
        };
        let pending = self.pending.entry(name.to_owned()).or_insert(Pending {
            phase: Phase::Unknown,
            observed: None,
            deadline: None,
            seen: generation,
        });
        if next == Phase::Writing && pending.phase != Phase::Writing {
            debug!(path = %self.rules.dir.join(name).display(), "file is being written");
        }
        pending.phase = next;
        pending.seen = generation;
        // The settle clock and the "changed since close" check start afresh from this event.
        if next != Phase::Writing {
            pending.observed = None;
        }
        Some(name)
    }

    /// Stats `name` now and decides.
    pub(super) fn check_path(&mut self, name: &OsStr, now: Instant, generation: u64) -> Check {
        match fs::symlink_metadata(self.rules.dir.join(name)) {
            Ok(meta) => match Stamp::of(&meta) {
                Some(stamp) => self.check(name, stamp, now, generation),
                None => {
                    self.forget(name);
                    Check::Done
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.forget(name);
                Check::Done
            }
            Err(err) => {
                // Left pending without a settle check, so a stat that keeps failing cannot
                // spin the timer; the next scan or event looks again.
                if let Some(pending) = self.pending.get_mut(name) {
                    pending.deadline = None;
                }
                debug!(path = %self.rules.dir.join(name).display(), error = %err, "cannot stat file");
                Check::Wait(None)
            }
        }
    }

    /// A scan listed the regular file `name` with `stamp`. Files already sent and unchanged are
    /// settled here without another syscall or glob match (only data names are ever sent);
    /// other data names are looked at afresh, because events handled while the listing ran may
    /// be newer than the listing.
    pub(super) fn on_listed(
        &mut self,
        name: &OsStr,
        stamp: Stamp,
        now: Instant,
        generation: u64,
    ) -> Check {
        if let Some(emitted) = self.emitted.get_mut(name)
            && emitted.stamp == stamp
            && !self.pending.contains_key(name)
        {
            emitted.seen = generation;
            return Check::Done;
        }
        if self.rules.classify(name) != NameKind::Data {
            return Check::Done;
        }
        self.check_path(name, now, generation)
    }

    fn check(&mut self, name: &OsStr, stamp: Stamp, now: Instant, generation: u64) -> Check {
        let writing = self
            .pending
            .get(name)
            .is_some_and(|p| p.phase == Phase::Writing);
        if let Some(emitted) = self.emitted.get_mut(name) {
            if emitted.stamp == stamp {
                emitted.seen = generation;
                if !writing {
                    self.pending.remove(name);
                }
                return Check::Done;
            }
            // Changed since it was sent: it has to become ready again.
            self.emitted.remove(name);
        }

        let settle = self.settle;
        let pending = self.pending.entry(name.to_owned()).or_insert(Pending {
            phase: Phase::Unknown,
            observed: None,
            deadline: None,
            seen: generation,
        });
        pending.seen = generation;
        pending.deadline = None;
        if pending.phase == Phase::Writing {
            return Check::Wait(None);
        }

        let first_sight = pending.observed.is_none();
        let since = match pending.observed {
            Some((seen_stamp, since)) if seen_stamp == stamp => since,
            _ => {
                // A file that was closed or renamed and then changed without any event is no
                // longer known to be finished.
                if !first_sight && matches!(pending.phase, Phase::Closed | Phase::Renamed) {
                    pending.phase = Phase::Unknown;
                }
                pending.observed = Some((stamp, now));
                now
            }
        };
        let via = match pending.phase {
            Phase::Closed => ReadyVia::Closed,
            Phase::Renamed => ReadyVia::Renamed,
            Phase::Unknown | Phase::Created => {
                let settled = now.duration_since(since) >= settle
                    || (first_sight && stamp.is_older_than(settle));
                if !settled {
                    pending.deadline = Some(since + settle);
                    return Check::Wait(pending.deadline);
                }
                ReadyVia::Settled
            }
            Phase::Writing => return Check::Wait(None),
        };

        if !self.rules.has_marker(name) {
            return Check::Wait(None);
        }
        self.pending.remove(name);
        self.emitted.insert(
            name.to_owned(),
            Emitted {
                stamp,
                seen: generation,
            },
        );
        Check::Ready(self.candidate(name, stamp, via))
    }

    fn candidate(&self, name: &OsStr, stamp: Stamp, via: ReadyVia) -> Candidate {
        Candidate {
            watch: self.index,
            path: self.rules.dir.join(name),
            size: stamp.size,
            mtime: stamp.mtime,
            dev: stamp.dev,
            ino: stamp.ino,
            via,
        }
    }

    /// Whether `candidate` still describes the file as it was sent, i.e. nothing has changed or
    /// gone since it was found ready.
    pub(super) fn is_current(&self, candidate: &Candidate) -> bool {
        let Some(name) = candidate.path.file_name() else {
            return false;
        };
        self.emitted.get(name).is_some_and(|e| {
            e.stamp.size == candidate.size
                && e.stamp.mtime == candidate.mtime
                && e.stamp.ino == candidate.ino
                && e.stamp.dev == candidate.dev
        })
    }

    /// Names whose settle check is due at `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<OsString> {
        self.pending
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The earliest settle check still wanted.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().filter_map(|p| p.deadline).min()
    }

    /// Drops files a complete scan (of generation `generation`) did not find and no event has
    /// mentioned since it began.
    pub(super) fn forget_unseen(&mut self, generation: u64) {
        self.pending.retain(|_, p| p.seen >= generation);
        self.emitted.retain(|_, e| e.seen >= generation);
    }

    /// Events were lost: what they said about open writers can no longer be trusted, so those
    /// files fall back to the settle period.
    pub(super) fn distrust_events(&mut self) {
        for pending in self.pending.values_mut() {
            if matches!(pending.phase, Phase::Writing | Phase::Created) {
                pending.phase = Phase::Unknown;
            }
        }
    }

    /// Forgets which files were sent, so that the next look sends every ready file again.
    pub(super) fn forget_emitted(&mut self) {
        self.emitted.clear();
    }

    /// Forgets that `name` was sent.
    pub(super) fn forget_emitted_name(&mut self, name: &OsStr) {
        self.emitted.remove(name);
    }

    fn forget(&mut self, name: &OsStr) {
        self.pending.remove(name);
        self.emitted.remove(name);
    }
}

/// Whether `path` names an entry directly inside `dir`; returns its name.
pub(super) fn name_in<'a>(dir: &Path, path: &'a Path) -> Option<&'a OsStr> {
    if path.parent()? == dir {
        path.file_name()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(marker: Option<&str>) -> Rules {
        let mut builder = GlobSetBuilder::new();
        builder.add(Glob::new(".*").unwrap());
        Rules {
            dir: PathBuf::from("/land"),
            ignore: builder.build().unwrap(),
            marker_suffix: marker.map(OsString::from),
        }
    }

    #[test]
    fn marker_names_point_at_their_data_file() {
        let rules = rules(Some(".ok"));
        assert_eq!(
            rules.classify(OsStr::new("x.csv.ok")),
            NameKind::Marker(OsStr::new("x.csv"))
        );
        assert_eq!(rules.classify(OsStr::new("x.csv")), NameKind::Data);
        assert_eq!(rules.classify(OsStr::new(".ok")), NameKind::Ignored);
        assert_eq!(rules.classify(OsStr::new(".x")), NameKind::Ignored);
    }

    #[test]
    fn without_marker_suffix_nothing_is_a_marker() {
        let rules = rules(None);
        assert_eq!(rules.classify(OsStr::new("x.csv.ok")), NameKind::Data);
    }

    #[test]
    fn names_are_only_taken_directly_inside_the_dir() {
        let dir = Path::new("/land");
        assert_eq!(
            name_in(dir, Path::new("/land/a.csv")),
            Some(OsStr::new("a.csv"))
        );
        assert_eq!(name_in(dir, Path::new("/land/done/a.csv")), None);
        assert_eq!(name_in(dir, Path::new("/land")), None);
    }
}
