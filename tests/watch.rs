//! Discovery and readiness against real temp directories and real inotify.
//!
//! Timings: settle periods of a few hundred milliseconds keep the tests short; every wait is
//! bounded, and assertions on "nothing arrives" watch for well over a settle period.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;
use tokio::sync::mpsc::Receiver;
use tokio::time::{Instant, timeout};

use sluice::config::{AfterLoad, LoadConfig, WatchConfig};
use sluice::watch::{
    Candidate, Discovery, ReadyVia, WatchError, default_ignore_patterns, scan_ready,
};

/// Upper bound for any single test.
const TEST_LIMIT: Duration = Duration::from_secs(30);

fn watch_config(dir: &Path) -> WatchConfig {
    WatchConfig {
        after_load: AfterLoad::Move,
        column_separator: ",".to_owned(),
        database: "sales".to_owned(),
        dir: dir.to_path_buf(),
        done_dir: dir.join("done"),
        failed_dir: dir.join("failed"),
        headers: Default::default(),
        ignore: default_ignore_patterns(),
        label_prefix: "sluice_".to_owned(),
        marker_suffix: None,
        table: "orders".to_owned(),
        work_dir: dir.join(".sluice-work"),
    }
}

fn load_config(settle: Duration, rescan: Duration) -> LoadConfig {
    LoadConfig {
        max_in_flight: 4,
        max_attempts: 10,
        rescan,
        retry_initial: Duration::from_secs(5),
        retry_max: Duration::from_secs(300),
        settle,
        shutdown_grace: Duration::from_secs(30),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Writes a file whose mtime lies an hour back, as if it had landed long ago.
fn write_old(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap();
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

async fn next(rx: &mut Receiver<Candidate>, within: Duration) -> Option<Candidate> {
    timeout(within, rx.recv()).await.ok().flatten()
}

async fn expect_next(rx: &mut Receiver<Candidate>, within: Duration) -> Candidate {
    next(rx, within)
        .await
        .unwrap_or_else(|| panic!("no candidate within {within:?}"))
}

async fn expect_nothing(rx: &mut Receiver<Candidate>, during: Duration) {
    if let Some(candidate) = next(rx, during).await {
        panic!("unexpected candidate {candidate:?}");
    }
}

fn name(candidate: &Candidate) -> &str {
    candidate.path.file_name().unwrap().to_str().unwrap()
}

fn start(dir: &Path, settle: Duration, rescan: Duration) -> (Discovery, Receiver<Candidate>) {
    start_with(watch_config(dir), settle, rescan)
}

fn start_with(
    watch: WatchConfig,
    settle: Duration,
    rescan: Duration,
) -> (Discovery, Receiver<Candidate>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Discovery::start(&[watch], &load_config(settle, rescan)).unwrap()
}

async fn bounded(test: impl Future<Output = ()>) {
    timeout(TEST_LIMIT, test).await.expect("test took too long");
}

#[tokio::test]
async fn initial_scan_finds_existing_settled_files() {
    bounded(async {
        let land = TempDir::new().unwrap();
        write_old(&land.path().join("old.csv"), "1,a\n");
        fs::write(land.path().join("new.csv"), "2,b\n").unwrap();
        let settle = ms(400);

        let started = Instant::now();
        let (_discovery, mut rx) = start(land.path(), settle, Duration::from_secs(60));

        let first = expect_next(&mut rx, ms(300)).await;
        assert_eq!(name(&first), "old.csv", "an old file needs no settle wait");
        assert_eq!(first.via, ReadyVia::Settled);
        assert_eq!(first.path, land.path().join("old.csv"));
        assert_eq!(first.size, 4);
        assert_eq!(first.watch, 0);

        let second = expect_next(&mut rx, ms(2000)).await;
        assert_eq!(name(&second), "new.csv");
        assert_eq!(second.via, ReadyVia::Settled);
        assert!(
            started.elapsed() >= ms(350),
            "a young file waits out the settle period"
        );
        expect_nothing(&mut rx, ms(800)).await;
    })
    .await;
}

#[tokio::test]
async fn ignored_names_are_never_candidates() {
    bounded(async {
        let land = TempDir::new().unwrap();
        for ignored in [".hidden", "a.tmp", "b.part", "c.swp", "d.csv~"] {
            write_old(&land.path().join(ignored), "x\n");
        }
        write_old(&land.path().join("keep.csv"), "x\n");
        let (_discovery, mut rx) = start(land.path(), ms(300), ms(200));

        assert_eq!(name(&expect_next(&mut rx, ms(1000)).await), "keep.csv");

        for ignored in [".later", "e.tmp", "f.part"] {
            fs::write(land.path().join(ignored), "y\n").unwrap();
        }
        fs::write(land.path().join("later.csv"), "y\n").unwrap();
        let later = expect_next(&mut rx, ms(1000)).await;
        assert_eq!(name(&later), "later.csv");
        expect_nothing(&mut rx, ms(1200)).await;
    })
    .await;
}

#[tokio::test]
async fn slow_writer_is_not_ready_until_it_closes() {
    bounded(async {
        let land = TempDir::new().unwrap();
        let settle = ms(500);
        // Rescans every 200 ms, so several of them see the file while its writer pauses.
        let (_discovery, mut rx) = start(land.path(), settle, ms(200));
        tokio::time::sleep(ms(100)).await;

        let path = land.path().join("slow.csv");
        let mut file = File::create(&path).unwrap();
        for line in ["1,a\n", "2,b\n", "3,c\n"] {
            file.write_all(line.as_bytes()).unwrap();
            file.flush().unwrap();
            // Each pause is more than twice the settle period.
            expect_nothing(&mut rx, ms(1200)).await;
        }

        drop(file);
        let closed_at = Instant::now();
        let candidate = expect_next(&mut rx, ms(2000)).await;
        assert_eq!(name(&candidate), "slow.csv");
        assert_eq!(candidate.via, ReadyVia::Closed);
        assert_eq!(candidate.size, 12);
        assert!(
            closed_at.elapsed() < settle,
            "ready at the close, not after a settle period: {:?}",
            closed_at.elapsed()
        );
        expect_nothing(&mut rx, ms(800)).await;
    })
    .await;
}

#[tokio::test]
async fn file_renamed_into_place_is_ready_at_once() {
    bounded(async {
        let root = TempDir::new().unwrap();
        let land = root.path().join("land");
        let staging = root.path().join("staging");
        fs::create_dir(&land).unwrap();
        fs::create_dir(&staging).unwrap();
        let settle = Duration::from_secs(3);
        let (_discovery, mut rx) = start(&land, settle, Duration::from_secs(60));
        tokio::time::sleep(ms(100)).await;

        // Freshly written, so only the rename can make it ready before the settle period.
        fs::write(staging.join("orders.csv"), "1,a\n").unwrap();
        let renamed_at = Instant::now();
        fs::rename(staging.join("orders.csv"), land.join("orders.csv")).unwrap();

        let candidate = expect_next(&mut rx, ms(2000)).await;
        assert_eq!(name(&candidate), "orders.csv");
        assert_eq!(candidate.via, ReadyVia::Renamed);
        assert!(
            renamed_at.elapsed() < ms(1000),
            "{:?}",
            renamed_at.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn marker_file_gates_readiness() {
    bounded(async {
        let land = TempDir::new().unwrap();
        write_old(&land.path().join("early.csv"), "0\n");
        let mut watch = watch_config(land.path());
        watch.marker_suffix = Some(".ok".to_owned());
        let (_discovery, mut rx) = start_with(watch, ms(300), ms(200));

        fs::write(land.path().join("x.csv"), "1,a\n").unwrap();
        expect_nothing(&mut rx, ms(1200)).await;

        File::create(land.path().join("x.csv.ok")).unwrap();
        let candidate = expect_next(&mut rx, ms(1000)).await;
        assert_eq!(name(&candidate), "x.csv");
        assert_eq!(candidate.via, ReadyVia::Closed);

        // A file that was there before start waits for its marker too.
        File::create(land.path().join("early.csv.ok")).unwrap();
        let candidate = expect_next(&mut rx, ms(1000)).await;
        assert_eq!(name(&candidate), "early.csv");
        assert_eq!(candidate.via, ReadyVia::Settled);

        // The markers themselves never are candidates.
        expect_nothing(&mut rx, ms(1000)).await;
    })
    .await;
}

/// Puts a directory holding `a.csv` where the watched directory was. The watcher still follows
/// the old directory, so `a.csv` arrives without a single event for the watch.
fn replace_watched_dir(root: &Path) -> PathBuf {
    let land = root.join("land");
    let staging = root.join("staging");
    fs::create_dir(&staging).unwrap();
    write_old(&staging.join("a.csv"), "1,a\n");
    fs::rename(&land, root.join("old-land")).unwrap();
    fs::rename(&staging, &land).unwrap();
    land
}

#[tokio::test]
async fn events_alone_miss_a_replaced_directory() {
    bounded(async {
        let root = TempDir::new().unwrap();
        fs::create_dir(root.path().join("land")).unwrap();
        let (_discovery, mut rx) = start(
            &root.path().join("land"),
            ms(300),
            Duration::from_secs(3600),
        );
        tokio::time::sleep(ms(200)).await;

        replace_watched_dir(root.path());
        expect_nothing(&mut rx, ms(1500)).await;
    })
    .await;
}

#[tokio::test]
async fn rescan_finds_files_that_arrived_without_events() {
    bounded(async {
        let root = TempDir::new().unwrap();
        fs::create_dir(root.path().join("land")).unwrap();
        let (_discovery, mut rx) = start(&root.path().join("land"), ms(300), ms(400));
        tokio::time::sleep(ms(200)).await;

        let land = replace_watched_dir(root.path());
        let candidate = expect_next(&mut rx, ms(3000)).await;
        assert_eq!(candidate.path, land.join("a.csv"));
        assert_eq!(candidate.via, ReadyVia::Settled);
    })
    .await;
}

#[tokio::test]
async fn subfolders_and_special_files_are_skipped() {
    bounded(async {
        let root = TempDir::new().unwrap();
        let land = root.path().join("land");
        fs::create_dir(&land).unwrap();
        for sub in ["done", "failed", ".sluice-work", "nested"] {
            fs::create_dir(land.join(sub)).unwrap();
            write_old(&land.join(sub).join(format!("{sub}.csv")), "x\n");
        }
        write_old(&root.path().join("outside.csv"), "x\n");
        std::os::unix::fs::symlink(root.path().join("outside.csv"), land.join("link.csv")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(land.join("pipe.csv"))
            .status()
            .unwrap();
        assert!(fifo.success());
        write_old(&land.join("real.csv"), "x\n");

        let (_discovery, mut rx) = start(&land, ms(300), ms(200));
        assert_eq!(name(&expect_next(&mut rx, ms(1000)).await), "real.csv");

        // Arrivals inside subfolders while running are not seen either.
        fs::write(land.join("done").join("moved.csv"), "y\n").unwrap();
        fs::create_dir(land.join("fresh-dir")).unwrap();
        fs::write(land.join("fresh-dir").join("inner.csv"), "y\n").unwrap();
        expect_nothing(&mut rx, ms(1500)).await;
    })
    .await;
}

#[tokio::test]
async fn unchanged_file_is_sent_once() {
    bounded(async {
        let land = TempDir::new().unwrap();
        write_old(&land.path().join("kept.csv"), "1,a\n");
        let (_discovery, mut rx) = start(land.path(), ms(300), ms(150));

        assert_eq!(name(&expect_next(&mut rx, ms(1000)).await), "kept.csv");
        // About ten rescans, and reads of the file, pass without a second send.
        for _ in 0..3 {
            let _ = fs::read(land.path().join("kept.csv")).unwrap();
            expect_nothing(&mut rx, ms(500)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn changed_file_is_sent_again() {
    bounded(async {
        let land = TempDir::new().unwrap();
        let path = land.path().join("grows.csv");
        write_old(&path, "1,a\n");
        let (_discovery, mut rx) = start(land.path(), ms(300), ms(200));

        let first = expect_next(&mut rx, ms(1000)).await;
        assert_eq!(first.size, 4);

        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"2,b\n").unwrap();
        drop(file);
        let second = expect_next(&mut rx, ms(1000)).await;
        assert_eq!(second.path, first.path);
        assert_eq!(second.size, 8);
        assert_eq!(second.via, ReadyVia::Closed);
        assert_ne!(second.mtime, first.mtime);
        expect_nothing(&mut rx, ms(800)).await;
    })
    .await;
}

#[tokio::test]
async fn rescan_now_and_retry_send_a_file_again() {
    bounded(async {
        let land = TempDir::new().unwrap();
        let path = land.path().join("stuck.csv");
        write_old(&path, "1,a\n");
        let (discovery, mut rx) = start(land.path(), ms(300), Duration::from_secs(3600));

        let first = expect_next(&mut rx, ms(1000)).await;
        expect_nothing(&mut rx, ms(500)).await;

        discovery.rescan_now();
        let again = expect_next(&mut rx, ms(1000)).await;
        assert_eq!(again, first);

        discovery.retry(path.clone());
        let once_more = expect_next(&mut rx, ms(1000)).await;
        assert_eq!(once_more, first);
        expect_nothing(&mut rx, ms(500)).await;
    })
    .await;
}

#[tokio::test]
async fn burst_of_files_is_sent_once_each() {
    bounded(async {
        let land = TempDir::new().unwrap();
        let (_discovery, mut rx) = start(land.path(), ms(300), ms(500));
        tokio::time::sleep(ms(100)).await;

        let total = 3000;
        for i in 0..total {
            fs::write(land.path().join(format!("f{i:05}.csv")), format!("{i}\n")).unwrap();
        }

        let mut counts: HashMap<PathBuf, usize> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while counts.len() < total && Instant::now() < deadline {
            if let Some(candidate) = next(&mut rx, ms(1000)).await {
                *counts.entry(candidate.path).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), total);
        assert!(counts.values().all(|&n| n == 1));
        expect_nothing(&mut rx, ms(1200)).await;
    })
    .await;
}

#[tokio::test]
async fn stop_ends_the_channel() {
    bounded(async {
        let land = TempDir::new().unwrap();
        let (discovery, mut rx) = start(land.path(), ms(300), ms(200));
        discovery.stop();
        let end = timeout(ms(2000), rx.recv())
            .await
            .expect("channel did not end");
        assert!(end.is_none());
    })
    .await;
}

#[tokio::test]
async fn invalid_ignore_pattern_is_named() {
    bounded(async {
        let land = TempDir::new().unwrap();
        let mut watch = watch_config(land.path());
        watch.ignore = vec!["*.tmp".to_owned(), "[abc".to_owned()];
        let load = load_config(ms(300), ms(200));

        let err = Discovery::start(std::slice::from_ref(&watch), &load)
            .err()
            .expect("a bad pattern must fail");
        assert!(matches!(&err, WatchError::IgnorePattern { pattern, .. } if pattern == "[abc"));
        assert!(err.to_string().contains("`[abc`"), "{err}");

        let err = scan_ready(&[watch], ms(300)).await.unwrap_err();
        assert!(matches!(err, WatchError::IgnorePattern { .. }));
    })
    .await;
}

#[tokio::test]
async fn missing_watch_dir_fails_to_start() {
    bounded(async {
        let root = TempDir::new().unwrap();
        let watch = watch_config(&root.path().join("absent"));
        let err = Discovery::start(&[watch], &load_config(ms(300), ms(200)))
            .err()
            .expect("a missing directory must fail");
        assert!(matches!(err, WatchError::WatchDir { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn scan_ready_waits_for_unsettled_files() {
    bounded(async {
        let land = TempDir::new().unwrap();
        write_old(&land.path().join("old.csv"), "1\n");
        fs::write(land.path().join("fresh.csv"), "2\n").unwrap();
        write_old(&land.path().join(".hidden.csv"), "3\n");
        let growing = land.path().join("growing.csv");
        fs::write(&growing, "0\n").unwrap();
        let writer = std::thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(growing).unwrap();
            for i in 0..15 {
                std::thread::sleep(ms(100));
                writeln!(file, "{i}").unwrap();
            }
        });

        let settle = ms(500);
        let started = Instant::now();
        let ready = scan_ready(&[watch_config(land.path())], settle)
            .await
            .unwrap();
        let elapsed = started.elapsed();
        writer.join().unwrap();

        let names: Vec<&str> = ready.iter().map(name).collect();
        assert_eq!(names, ["fresh.csv", "old.csv"]);
        assert!(ready.iter().all(|c| c.via == ReadyVia::Settled));
        assert!(
            elapsed >= ms(450),
            "fresh.csv must wait out settle: {elapsed:?}"
        );
        assert!(
            elapsed < ms(1500),
            "waits at most about one settle period: {elapsed:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn scan_ready_returns_at_once_when_all_files_are_old() {
    bounded(async {
        let land = TempDir::new().unwrap();
        write_old(&land.path().join("a.csv"), "1\n");
        let started = Instant::now();
        let ready = scan_ready(&[watch_config(land.path())], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ready.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    })
    .await;
}

#[tokio::test]
async fn hard_linked_file_settles_instead_of_waiting_for_a_close() {
    bounded(async {
        let root = TempDir::new().unwrap();
        let land = root.path().join("land");
        fs::create_dir(&land).unwrap();
        fs::write(root.path().join("source.csv"), "1,a\n").unwrap();
        let settle = ms(400);
        let (_discovery, mut rx) = start(&land, settle, Duration::from_secs(3600));
        tokio::time::sleep(ms(100)).await;

        // A link gets a create event and nothing else: no open, no close.
        let linked_at = Instant::now();
        fs::hard_link(root.path().join("source.csv"), land.join("linked.csv")).unwrap();
        let candidate = expect_next(&mut rx, ms(2000)).await;
        assert_eq!(name(&candidate), "linked.csv");
        assert_eq!(candidate.via, ReadyVia::Settled);
        assert!(linked_at.elapsed() >= ms(350));
    })
    .await;
}
