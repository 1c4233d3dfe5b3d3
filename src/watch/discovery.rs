//! The long-running discovery of `sluice run`: notify events plus scans, feeding a channel of
//! ready files.
//!
//! The notify callback only forwards raw events into a bounded queue; one Tokio task owns all
//! readiness state, so nothing is locked. Listings run on the blocking pool while the task keeps
//! handling events. Ready files wait in the task's own queue until the consumer takes them, so
//! a slow consumer holds files back without stalling the event queue and nothing is dropped.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, warn};

use super::readiness::{Check, Rules, Signal, Tracker, name_in};
use super::scan::{Listing, list_dir};
use super::{Candidate, WatchError};
use crate::config::{LoadConfig, WatchConfig};

/// Raw events buffered between the notify thread and the task. When it is full, events are
/// dropped and a rescan makes up for them, exactly as for a kernel queue overflow.
const EVENT_QUEUE: usize = 4096;

/// Ready files buffered in the channel to the consumer.
const CANDIDATE_QUEUE: usize = 128;

/// Most events handled before the files they touched are looked at.
const MAX_BATCH: usize = 1024;

/// `tokio::time::interval` panics on a zero period; the config forbids zero anyway.
const MIN_RESCAN: Duration = Duration::from_millis(10);

/// Discovery of ready files in every watch directory, running until stopped.
///
/// Dropping it has the same effect as [`Discovery::stop`].
pub struct Discovery {
    /// Requests to the task; when this sender is dropped the task ends.
    commands: mpsc::UnboundedSender<Command>,
    /// Kept for its side effect: the OS watches last as long as it does.
    _watcher: RecommendedWatcher,
    /// Becomes true once the start-up scan of every directory has been merged.
    scanned: tokio::sync::watch::Receiver<bool>,
}

#[derive(Debug)]
enum Command {
    Rescan,
    Retry(PathBuf),
}

impl Discovery {
    /// Starts a notify watcher on every watch directory (not recursive), a full scan at start
    /// and a full rescan every `load.rescan`; ready files are sent on the returned channel.
    ///
    /// The channel is bounded: when the consumer falls behind, ready files wait inside the
    /// discovery task (one small record each) and are sent as room appears; files that changed
    /// or went away in the meantime are not sent. Each file is sent once while it stays in
    /// place unchanged, and again whenever it changes and becomes ready again.
    ///
    /// # Errors
    ///
    /// An ignore pattern is invalid, the watcher cannot be created, or a directory cannot be
    /// watched (missing, not permitted, out of inotify watches).
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub fn start(
        watches: &[WatchConfig],
        load: &LoadConfig,
    ) -> Result<(Discovery, mpsc::Receiver<Candidate>), WatchError> {
        let rules = watches
            .iter()
            .map(|watch| Rules::new(watch).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;

        let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
        let overflow = Arc::new(Notify::new());
        let overflow_signal = Arc::clone(&overflow);
        let mut watcher = notify::recommended_watcher(move |event| {
            // Never block notify's thread: a full queue turns into a rescan.
            if let Err(TrySendError::Full(_)) = event_tx.try_send(event) {
                overflow_signal.notify_one();
            }
        })
        .map_err(WatchError::StartWatcher)?;
        for rules in &rules {
            watcher
                .watch(&rules.dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::WatchDir {
                    dir: rules.dir.clone(),
                    source,
                })?;
            info!(path = %rules.dir.display(), "watching directory");
        }

        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (candidate_tx, candidate_rx) = mpsc::channel(CANDIDATE_QUEUE);
        let (scanned_tx, scanned) = tokio::sync::watch::channel(false);
        let task = Task::new(rules, load.settle, scanned_tx);
        let channels = Channels {
            commands: command_rx,
            events: event_rx,
            overflow,
            candidates: candidate_tx,
        };
        tokio::spawn(
            task.run(channels, load.rescan.max(MIN_RESCAN))
                .instrument(info_span!("discovery")),
        );

        let discovery = Discovery {
            commands: command_tx,
            _watcher: watcher,
            scanned,
        };
        Ok((discovery, candidate_rx))
    }

    /// Resolves once the start-up scan of every watched directory has been taken in (its ready
    /// files queued), or at once if it already was. Cancel-safe.
    pub async fn initial_scan_done(&self) {
        let mut scanned = self.scanned.clone();
        let _ = scanned.wait_for(|done| *done).await;
    }

    /// Asks for a full rescan now, after forgetting which files were already sent: every file
    /// that is ready and still in place is sent again, including files kept in place after
    /// loading. Meant for after a transient failure left files where they were; when the path
    /// is known, [`Discovery::retry`] is far cheaper.
    pub fn rescan_now(&self) {
        // A send fails only once the task has ended, when there is nothing left to rescan.
        let _ = self.commands.send(Command::Rescan);
    }

    /// Forgets that the file at `path` was sent and looks at it again now, so that it is sent
    /// once more if it is still in place and ready (for a file a transient failure left there).
    pub fn retry(&self, path: PathBuf) {
        let _ = self.commands.send(Command::Retry(path));
    }

    /// Stops the watcher, the timers and the task; the receiver then ends (after the files
    /// already in the channel). Ready files not yet in the channel are dropped with the task;
    /// the next start finds them again.
    pub fn stop(self) {
        drop(self);
    }
}

/// The task's ends of its channels.
struct Channels {
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Receiver<notify::Result<Event>>,
    /// Signalled when events were dropped because `events` was full.
    overflow: Arc<Notify>,
    candidates: mpsc::Sender<Candidate>,
}

/// What woke the task.
enum Step<'a> {
    Command(Command),
    Event(notify::Result<Event>),
    EventsClosed,
    Overflow,
    Scanned(Result<Vec<io::Result<Listing>>, JoinError>),
    Send(mpsc::Permit<'a, Candidate>),
    Settle,
    Stop,
    Tick,
}

/// All readiness state; owned by the one discovery task.
struct Task {
    trackers: Vec<Tracker>,
    /// The watch directories, by index, for matching event paths.
    dirs: Vec<PathBuf>,
    /// Files touched by the current batch of events, looked at once the batch is in.
    dirty: BTreeSet<(usize, OsString)>,
    /// Ready files waiting for room in the candidate channel.
    queue: VecDeque<Candidate>,
    /// The earliest settle check; `None` when no file is settling, so an idle task sleeps.
    wakeup: Option<Instant>,
    /// Bumped at the start of each scan; see `Tracker::forget_unseen`.
    generation: u64,
    /// The listing in progress, if any.
    scan: Option<JoinHandle<Vec<io::Result<Listing>>>>,
    /// Another scan was asked for while one was running.
    scan_again: bool,
    /// The watcher reported lost events in the current batch.
    lost_events: bool,
    /// Told once, when the first full scan is merged.
    scanned: tokio::sync::watch::Sender<bool>,
}

impl Task {
    fn new(
        rules: Vec<Arc<Rules>>,
        settle: Duration,
        scanned: tokio::sync::watch::Sender<bool>,
    ) -> Task {
        let dirs = rules.iter().map(|rules| rules.dir.clone()).collect();
        let trackers = rules
            .into_iter()
            .enumerate()
            .map(|(index, rules)| Tracker::new(index, rules, settle))
            .collect();
        Task {
            trackers,
            dirs,
            dirty: BTreeSet::new(),
            queue: VecDeque::new(),
            wakeup: None,
            generation: 0,
            scan: None,
            scan_again: false,
            lost_events: false,
            scanned,
        }
    }

    async fn run(mut self, mut channels: Channels, rescan: Duration) {
        let mut ticker = tokio::time::interval(rescan);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut events_open = true;
        loop {
            let wakeup = self.wakeup;
            let step = tokio::select! {
                command = channels.commands.recv() => command.map_or(Step::Stop, Step::Command),
                event = channels.events.recv(), if events_open => {
                    event.map_or(Step::EventsClosed, Step::Event)
                }
                () = channels.overflow.notified() => Step::Overflow,
                listings = join_scan(&mut self.scan), if self.scan.is_some() => {
                    Step::Scanned(listings)
                }
                () = sleep_until(wakeup), if wakeup.is_some() => Step::Settle,
                _ = ticker.tick() => Step::Tick,
                permit = channels.candidates.reserve(), if !self.queue.is_empty() => {
                    permit.map_or(Step::Stop, Step::Send)
                }
            };
            match step {
                Step::Command(Command::Rescan) => {
                    for tracker in &mut self.trackers {
                        tracker.forget_emitted();
                    }
                    self.start_scan();
                }
                Step::Command(Command::Retry(path)) => self.retry(&path),
                Step::Event(event) => {
                    self.apply_event(event);
                    for _ in 1..MAX_BATCH {
                        match channels.events.try_recv() {
                            Ok(event) => self.apply_event(event),
                            Err(_) => break,
                        }
                    }
                    self.check_dirty();
                    if std::mem::take(&mut self.lost_events) {
                        self.recover_lost_events();
                    }
                }
                // The watcher also goes away when the Discovery is dropped; that is a stop.
                Step::EventsClosed if channels.commands.is_closed() => break,
                Step::EventsClosed => {
                    warn!("file watcher stopped; only rescans find files now");
                    events_open = false;
                }
                Step::Overflow => {
                    warn!("file event queue is full; rescanning");
                    self.recover_lost_events();
                }
                Step::Scanned(listings) => self.merge_scan(listings),
                Step::Send(permit) => self.send_one(permit),
                Step::Settle => self.check_settling(),
                Step::Tick => self.start_scan(),
                Step::Stop => break,
            }
        }
        debug!("discovery stopped");
    }

    fn apply_event(&mut self, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(error = %err, "file watcher error");
                return;
            }
        };
        if event.need_rescan() {
            warn!("file events were lost; rescanning");
            self.lost_events = true;
            return;
        }
        for (path, signal) in signals(&event) {
            self.apply_signal(path, signal);
        }
    }

    fn apply_signal(&mut self, path: &Path, signal: Signal) {
        for (index, dir) in self.dirs.iter().enumerate() {
            if let Some(name) = name_in(dir, path) {
                if let Some(data) = self.trackers[index].on_signal(name, signal, self.generation) {
                    self.dirty.insert((index, data.to_owned()));
                }
            } else if path == dir && signal == Signal::Gone {
                warn!(path = %dir.display(), "watch directory moved or removed; only rescans find its files now");
            }
        }
    }

    fn check_dirty(&mut self) {
        let now = Instant::now();
        for (index, name) in std::mem::take(&mut self.dirty) {
            let check = self.trackers[index].check_path(&name, now, self.generation);
            self.take(check);
        }
    }

    fn check_settling(&mut self) {
        let now = Instant::now();
        self.wakeup = None;
        for index in 0..self.trackers.len() {
            for name in self.trackers[index].due(now) {
                let check = self.trackers[index].check_path(&name, now, self.generation);
                self.take(check);
            }
        }
        // Deadlines only move later or vanish, so a wakeup kept across checks can be early
        // but never late; recomputing here drops the stale ones.
        self.wakeup = self
            .trackers
            .iter()
            .filter_map(Tracker::next_deadline)
            .min();
    }

    fn take(&mut self, check: Check) {
        match check {
            Check::Ready(candidate) => {
                debug!(path = %candidate.path.display(), via = %candidate.via, "file ready");
                self.queue.push_back(candidate);
            }
            Check::Wait(Some(deadline)) => {
                self.wakeup = Some(self.wakeup.map_or(deadline, |w| w.min(deadline)));
            }
            Check::Wait(None) | Check::Done => {}
        }
    }

    fn send_one(&mut self, permit: mpsc::Permit<'_, Candidate>) {
        while let Some(candidate) = self.queue.pop_front() {
            if self.trackers[candidate.watch].is_current(&candidate) {
                permit.send(candidate);
                break;
            }
            debug!(path = %candidate.path.display(), "file changed or went away before it was taken");
        }
        // A start with many files queues them all at once; give that memory back afterwards.
        if self.queue.is_empty() && self.queue.capacity() > CANDIDATE_QUEUE {
            self.queue.shrink_to(CANDIDATE_QUEUE);
        }
    }

    fn retry(&mut self, path: &Path) {
        for (index, dir) in self.dirs.iter().enumerate() {
            if let Some(name) = name_in(dir, path) {
                self.trackers[index].forget_emitted_name(name);
                self.dirty.insert((index, name.to_owned()));
            }
        }
        self.check_dirty();
    }

    fn recover_lost_events(&mut self) {
        for tracker in &mut self.trackers {
            tracker.distrust_events();
        }
        self.start_scan();
    }

    fn start_scan(&mut self) {
        if self.scan.is_some() {
            self.scan_again = true;
            return;
        }
        self.generation += 1;
        let rules: Vec<Arc<Rules>> = self
            .trackers
            .iter()
            .map(|t| Arc::clone(t.rules()))
            .collect();
        self.scan = Some(tokio::task::spawn_blocking(move || {
            rules.iter().map(|rules| list_dir(rules)).collect()
        }));
    }

    fn merge_scan(&mut self, listings: Result<Vec<io::Result<Listing>>, JoinError>) {
        self.scan = None;
        let now = Instant::now();
        match listings {
            Ok(listings) => {
                for (index, listing) in listings.into_iter().enumerate() {
                    match listing {
                        Ok(listing) => self.merge_listing(index, listing, now),
                        Err(err) => {
                            warn!(path = %self.dirs[index].display(), error = %err, "cannot list watch directory");
                        }
                    }
                }
            }
            Err(err) => warn!(error = %err, "directory scan failed"),
        }
        self.scanned.send_replace(true);
        if std::mem::take(&mut self.scan_again) {
            self.start_scan();
        }
    }

    fn merge_listing(&mut self, index: usize, listing: Listing, now: Instant) {
        for (name, stamp) in listing {
            let check = self.trackers[index].on_listed(&name, stamp, now, self.generation);
            self.take(check);
        }
        self.trackers[index].forget_unseen(self.generation);
    }
}

/// What one notify event says about each of its paths.
fn signals(event: &Event) -> Vec<(&Path, Signal)> {
    let all = |signal: Signal| -> Vec<(&Path, Signal)> {
        event
            .paths
            .iter()
            .map(|path| (path.as_path(), signal))
            .collect()
    };
    match event.kind {
        EventKind::Create(_) => all(Signal::Created),
        EventKind::Access(AccessKind::Open(_)) => all(Signal::Opened),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => all(Signal::ClosedWrite),
        // Reads and read-only closes say nothing about writers.
        EventKind::Access(_) => Vec::new(),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => all(Signal::MovedIn),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => all(Signal::Gone),
        // inotify also sends the separate From and To halves; this repeats them harmlessly.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match event.paths.as_slice() {
            [from, to] => vec![
                (from.as_path(), Signal::Gone),
                (to.as_path(), Signal::MovedIn),
            ],
            _ => all(Signal::Touched),
        },
        EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) => all(Signal::Touched),
        EventKind::Modify(_) => all(Signal::Written),
        EventKind::Remove(_) => all(Signal::Gone),
        EventKind::Any | EventKind::Other => all(Signal::Touched),
    }
}

async fn join_scan(
    scan: &mut Option<JoinHandle<Vec<io::Result<Listing>>>>,
) -> Result<Vec<io::Result<Listing>>, JoinError> {
    match scan {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(wakeup: Option<Instant>) {
    match wakeup {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
