//! Listing a watch directory, and the event-free readiness check of `sluice once`.
//!
//! A listing is one `readdir` plus one `lstat` per possible candidate; file contents are never
//! read, so a rescan stays cheap with many files kept in place.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::readiness::{Check, NameKind, Rules, Stamp, Tracker};
use super::{Candidate, WatchError};
use crate::config::WatchConfig;

/// Shortest and longest pause between two looks while `scan_ready` waits for files to settle.
const MIN_STEP: Duration = Duration::from_millis(20);
const MAX_STEP: Duration = Duration::from_millis(500);

/// The regular files a listing found whose names may make them candidates.
pub(super) type Listing = Vec<(OsString, Stamp)>;

/// Lists the regular files directly inside the watch directory with their stamps. Entries that
/// vanish mid-listing are skipped.
///
/// Names are not classified here: the caller first asks whether a name was already sent
/// unchanged, a hash lookup that is much cheaper than matching globs, and most names of a
/// directory with many kept files are such names.
///
/// # Errors
///
/// The directory cannot be read.
pub(super) fn list_dir(rules: &Rules) -> io::Result<Listing> {
    let mut listing = Vec::new();
    for entry in fs::read_dir(&rules.dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // `file_type` comes from the directory entry itself on most filesystems, so symlinks,
        // directories and fifos cost no stat; `metadata` does not follow symlinks.
        match entry.file_type() {
            Ok(kind) if kind.is_file() => {}
            // Folders are sluice's own (done, failed, working) or the writers' business.
            Ok(kind) if kind.is_dir() => continue,
            Ok(kind) => {
                // A symlink could point anywhere (a password file, another landing folder):
                // never followed, and said so, at debug since a rescan sees it every time.
                tracing::debug!(path = %entry.path().display(), symlink = kind.is_symlink(),
                    "not a regular file: not loaded");
                continue;
            }
            Err(_) => continue,
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if let Some(stamp) = Stamp::of(&meta) {
            listing.push((name, stamp));
        }
    }
    Ok(listing)
}

/// Lists every watch on the blocking pool, so that a large directory does not hold up the
/// runtime's workers.
pub(super) async fn list_all(rules: Vec<Arc<Rules>>) -> Vec<io::Result<Listing>> {
    let joined = tokio::task::spawn_blocking(move || {
        rules
            .iter()
            .map(|rules| list_dir(rules))
            .collect::<Vec<_>>()
    })
    .await;
    match joined {
        Ok(listings) => listings,
        // The closure does not panic short of allocation failure; report it as a read error
        // rather than taking the caller down.
        Err(err) => vec![Err(io::Error::other(err))],
    }
}

/// For `sluice once`: scans every watch and returns every ready file.
///
/// Files whose mtime is older than `settle` are ready at once. The others are looked at again
/// in small steps until `settle` has passed since the scan; those that did not change in that
/// time are ready too, and those still changing are left for a later run. No events are used,
/// so a writer that pauses longer than `settle` is not seen (see the module limitations). With
/// a marker suffix, a file is returned only if its marker exists when the file is ready. Candidates come
/// sorted by watch and path, all with `via` [`Settled`](super::ReadyVia::Settled).
///
/// # Errors
///
/// An ignore pattern is invalid, or a watch directory cannot be read.
///
/// # Cancel safety
///
/// Cancelling is harmless: nothing is claimed or changed on disk.
pub async fn scan_ready(
    watches: &[WatchConfig],
    settle: Duration,
) -> Result<Vec<Candidate>, WatchError> {
    let rules = watches
        .iter()
        .map(|watch| Rules::new(watch).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut trackers: Vec<Tracker> = rules
        .iter()
        .enumerate()
        .map(|(index, rules)| Tracker::new(index, Arc::clone(rules), settle))
        .collect();

    let start = Instant::now();
    let listings = list_all(rules).await;
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for (index, (tracker, listing)) in trackers.iter_mut().zip(listings).enumerate() {
        let listing = listing.map_err(|source| WatchError::ReadDir {
            dir: tracker.rules().dir.clone(),
            source,
        })?;
        for (name, _) in listing {
            if tracker.rules().classify(&name) != NameKind::Data {
                continue;
            }
            match tracker.check_path(&name, start, 0) {
                Check::Ready(candidate) => ready.push(candidate),
                Check::Wait(Some(_)) => waiting.push((index, name)),
                _ => {}
            }
        }
    }

    let step = (settle / 10).clamp(MIN_STEP, MAX_STEP);
    let end = start + settle;
    while !waiting.is_empty() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep(step.min(end - now)).await;
        let now = Instant::now();
        waiting.retain(
            |(index, name)| match trackers[*index].check_path(name, now, 0) {
                Check::Ready(candidate) => {
                    ready.push(candidate);
                    false
                }
                Check::Wait(Some(_)) => true,
                _ => false,
            },
        );
    }

    ready.sort_by(|a, b| (a.watch, &a.path).cmp(&(b.watch, &b.path)));
    Ok(ready)
}
