//! End to end over HTTPS against the emulator: the service's main job, through the real code.

mod common;

use std::fs;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::{EnvBuilder, WatchSpec, drop_sample, files_in, sample_rows, spawn_run, wait_until};
use sluice::emulator::Mode;
use sluice::ledger::Status;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_real_csv_files_loads_with_matching_row_counts() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("flights", 19))
        .watch(WatchSpec::new("weather", 15))
        .start()
        .await;
    drop_sample("flights_jan1.csv", &env.landing("flights"), "jan1.csv");
    drop_sample("flights_jan2.csv", &env.landing("flights"), "jan2.csv");
    drop_sample("weather.csv", &env.landing("weather"), "weather.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 3, "{summary:?}");
    assert!(summary.is_clean(), "{summary:?}");
    let flights = sample_rows("flights_jan1.csv") + sample_rows("flights_jan2.csv");
    assert_eq!(env.rows("flights"), flights);
    assert_eq!(env.rows("weather"), sample_rows("weather.csv"));
    assert_eq!(files_in(&env.landing("flights")), Vec::<String>::new());
    assert_eq!(
        files_in(&env.landing("flights").join("done")),
        vec!["jan1.csv", "jan2.csv"]
    );

    let service = env.service();
    let records: Vec<_> = service.ledger().records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    for record in &records {
        assert_eq!(record.status, Status::Loaded);
        assert_eq!(record.attempts.len(), 1);
        assert!(record.txn_id.is_some());
        assert!(record.finished_at.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_under_a_new_name_are_a_duplicate_with_one_commit() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let landing = env.landing("airlines");
    drop_sample("airlines.csv", &landing, "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(env.once().await.loaded, 1);

    drop_sample("airlines.csv", &landing, "b.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = env.once().await;

    assert_eq!(second.duplicate, 1, "{second:?}");
    assert_eq!(second.loaded, 0);
    assert_eq!(env.commits("airlines"), 1);
    assert_eq!(env.rows("airlines"), sample_rows("airlines.csv"));
    let stats = env.emulator.stats();
    assert_eq!(
        stats.labels.values().map(|l| l.attempts).sum::<u64>(),
        1,
        "sent only once"
    );
    let service = env.service();
    let dup = service
        .ledger()
        .records()
        .map(Result::unwrap)
        .last()
        .unwrap();
    assert_eq!(dup.status, Status::Duplicate);
    assert!(dup.duplicate_of.is_some());
    assert_eq!(files_in(&landing.join("done")), vec!["a.csv", "b.csv"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_is_not_loaded_before_its_writer_finishes() {
    let env = EnvBuilder::new()
        .settle("300ms")
        .watch(WatchSpec::new("flights", 19))
        .start()
        .await;
    let service = env.service();
    let (stop, running) = spawn_run(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = fs::read(format!("{}/flights_jan1.csv", common::DATA)).unwrap();
    let path = env.landing("flights").join("slow.csv");
    let mut file = fs::File::create(&path).unwrap();
    for chunk in text.chunks(text.len() / 4 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        // Pauses three times longer than the settle period.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(
            env.commits("flights"),
            0,
            "loaded while its writer was still writing"
        );
        assert!(path.exists(), "claimed while still open for writing");
    }
    drop(file);

    assert!(
        wait_until(WAIT, || env.rows("flights")
            == sample_rows("flights_jan1.csv"))
        .await
    );
    stop.send(()).unwrap();
    let summary = running.await.unwrap();
    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(env.commits("flights"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_into_place_is_loaded_at_once() {
    // A settle period far longer than the test: only the rename can make the file ready.
    let env = EnvBuilder::new()
        .settle("1h")
        .watch(WatchSpec::new("planes", 9))
        .start()
        .await;
    let service = env.service();
    let (stop, running) = spawn_run(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop_sample("planes.csv", &env.landing("planes"), "planes.csv");

    assert!(wait_until(WAIT, || env.rows("planes") == sample_rows("planes.csv")).await);
    stop.send(()).unwrap();
    assert_eq!(running.await.unwrap().loaded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_bad_rows_is_rejected_into_the_failed_folder_with_its_error_rows() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let landing = env.landing("airlines");
    fs::write(
        landing.join("bad.csv"),
        "carrier,name\nAA,American\nBB,Too,Many,Fields\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.rejected, 1, "{summary:?}");
    assert_eq!(env.rows("airlines"), 0);
    let failed = landing.join("failed");
    assert_eq!(
        files_in(&failed),
        vec!["bad.csv", "bad.csv.errors.txt", "bad.csv.reply.json"]
    );
    let errors = fs::read_to_string(failed.join("bad.csv.errors.txt")).unwrap();
    assert!(errors.contains("Too,Many,Fields"), "{errors}");
    let reply = fs::read_to_string(failed.join("bad.csv.reply.json")).unwrap();
    assert!(reply.contains("too many filtered rows"), "{reply}");
    let service = env.service();
    let record = service.ledger().records().next().unwrap().unwrap();
    assert_eq!(record.status, Status::Rejected);
    assert_eq!(record.rows_filtered, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_the_be_after_the_redirect() {
    // The emulator's BE checks basic auth again; a client that dropped it gets
    // `no valid Basic authorization` and nothing loads.
    let env = EnvBuilder::new()
        .mode(Mode::RedirectTlsBe)
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    drop_sample("airlines.csv", &env.landing("airlines"), "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let summary = env.once().await;
    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(env.rows("airlines"), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_redirect_is_refused_and_the_file_kept() {
    let env = EnvBuilder::new()
        .mode(Mode::Redirect)
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    drop_sample("airlines.csv", &env.landing("airlines"), "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 0);
    assert_eq!(summary.retrying, 1, "{summary:?}");
    assert_eq!(env.rows("airlines"), 0);
    let stats = env.emulator.stats();
    assert_eq!(
        stats.labels.values().map(|l| l.attempts).sum::<u64>(),
        0,
        "nothing reached a BE"
    );
    let working = common::working_files(&env.landing("airlines"));
    assert_eq!(
        working,
        vec!["a.csv"],
        "the file is kept for a later attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_redirect_loads_when_explicitly_allowed() {
    let env = EnvBuilder::new()
        .mode(Mode::Redirect)
        .cluster("allow_insecure_http = true")
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    drop_sample("airlines.csv", &env.landing("airlines"), "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(env.once().await.loaded, 1);
    assert_eq!(env.rows("airlines"), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_proxy_mode_the_table_holds_the_files_rows() {
    // With empty loads accepted, an empty-body probe would load nothing under the file's label
    // and the real file would then be refused as already loaded.
    let env = EnvBuilder::new()
        .mode(Mode::Proxy)
        .empty_load_as_error(false)
        .watch(WatchSpec::new("weather", 15))
        .start()
        .await;
    drop_sample("weather.csv", &env.landing("weather"), "w.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let summary = env.once().await;
    assert_eq!(summary.loaded, 1, "{summary:?}");
    assert_eq!(env.rows("weather"), sample_rows("weather.csv"));
    assert_eq!(env.commits("weather"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_survive_a_control_character_and_a_multi_character_separator() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("hex", 2).separator("\\x01"))
        .watch(WatchSpec::new("pipes", 2).separator("||"))
        .start()
        .await;
    let airlines = fs::read_to_string(format!("{}/airlines.csv", common::DATA)).unwrap();
    fs::write(
        env.landing("hex").join("a.csv"),
        airlines.replace(',', "\x01"),
    )
    .unwrap();
    fs::write(
        env.landing("pipes").join("a.csv"),
        airlines.replace(',', "||"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 2, "{summary:?}");
    let stats = env.emulator.stats();
    for table in ["db.hex", "db.pipes"] {
        let t = &stats.tables[table];
        assert_eq!(t.rows, 16, "{table}");
        assert_eq!(
            t.sample[0],
            vec!["9E".to_owned(), "Endeavor Air Inc.".to_owned()],
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_files_are_recognised_on_rescan_without_a_new_load() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2).after_load("keep"))
        .start()
        .await;
    drop_sample("airlines.csv", &env.landing("airlines"), "a.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(env.once().await.loaded, 1);

    let again = env.once().await;

    assert_eq!(again.loaded + again.duplicate, 0, "{again:?}");
    assert_eq!(
        again.digested, 0,
        "an unchanged kept file is not read again"
    );
    assert_eq!(files_in(&env.landing("airlines")), vec!["a.csv"]);
    assert_eq!(env.service().ledger().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_in_flight_loads_run_at_once() {
    let env = EnvBuilder::new()
        .load("max_in_flight = 2")
        .load_delay(Duration::from_millis(150))
        .watch(WatchSpec::new("flights", 19))
        .start()
        .await;
    let text = fs::read_to_string(format!("{}/flights_jan1.csv", common::DATA)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for i in 0..12 {
        let body: String = std::iter::once(lines[0])
            .chain(lines[1 + i * 100..1 + (i + 1) * 100].iter().copied())
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(env.landing("flights").join(format!("part{i:02}.csv")), body).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    let summary = env.once().await;

    assert_eq!(summary.loaded, 12, "{summary:?}");
    let stats = env.emulator.stats();
    assert!(stats.max_concurrent_loads >= 1);
    assert!(
        stats.max_concurrent_loads <= 2,
        "{} loads at once",
        stats.max_concurrent_loads
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_differ_from_the_digest_are_never_committed_under_its_label() {
    use sluice::upload::{LoadRequest, UploadError, Uploader};

    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let uploader = Uploader::new(&env.config().cluster).unwrap();
    let text = fs::read(format!("{}/airlines.csv", common::DATA)).unwrap();
    let (digest, len) = sluice::label::digest_reader(&mut &text[..]).unwrap();
    // The file on disk was rewritten in place after it was digested: same length, other bytes.
    let altered = String::from_utf8(text).unwrap().replace("AA", "ZZ");
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(altered.as_bytes()).unwrap();
    let headers = vec![
        ("column_separator".to_owned(), ",".to_owned()),
        ("skip_header".to_owned(), "1".to_owned()),
    ];
    let label = sluice::label::label_for("sluice_", "db", "airlines", &digest);
    let request = LoadRequest {
        database: "db",
        table: "airlines",
        label: &label,
        headers: &headers,
        file: Arc::new(file),
        len,
        sha256: Some(&digest),
    };

    let result = uploader.load(&request).await;

    assert!(
        matches!(result, Err(UploadError::FileAltered { .. })),
        "{result:?}"
    );
    assert_eq!(env.rows("airlines"), 0);
    assert_eq!(env.commits("airlines"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_through_a_second_handle_after_its_digest_goes_to_the_failed_folder() {
    let env = EnvBuilder::new()
        .load_delay(Duration::from_millis(1500))
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let service = env.service();
    let (stop, running) = spawn_run(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = env.landing("airlines").join("a.csv");
    // A second writer opens the file first and keeps it open.
    let mut late = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    fs::write(
        &path,
        fs::read(format!("{}/airlines.csv", common::DATA)).unwrap(),
    )
    .unwrap();
    assert!(wait_until(WAIT, || service.snapshot().loads_in_flight == 1).await);
    late.write_all(b"ZZ,Written Late Inc.\n").unwrap();
    drop(late);

    assert!(
        wait_until(WAIT, || !files_in(&env.landing("airlines").join("failed"))
            .is_empty())
        .await
    );
    stop.send(()).unwrap();
    running.await.unwrap();
    assert_eq!(
        env.rows("airlines"),
        16,
        "the digested bytes, not the late row"
    );
    assert_eq!(
        files_in(&env.landing("airlines").join("failed")),
        vec!["a.csv"]
    );
    let record = service.ledger().records().next().unwrap().unwrap();
    assert_eq!(record.status, Status::Loaded);
    assert!(
        record
            .message
            .unwrap()
            .contains("changed after it was digested")
    );
}
