//! The auditors' side: `sluice ledger list|show|export|verify|stats` on real ledgers (written by
//! the real service against the emulator, or by the real `Ledger`), tampered with through sled
//! itself, and read while a `sluice run` process holds the store.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use common::{EnvBuilder, WatchSpec, drop_sample, sample_rows};
use sluice::audit::{self, Filter, Query};
use sluice::emulator::Fault;
use sluice::label;
use sluice::ledger::{Action, Attempt, GENESIS, Ledger, Record, Status, entry_hash, sha256_hex};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(30);

/// DESIGN.md's export fields, in its order, then ours.
const EXPORT_FIELDS: &[&str] = &[
    "label",
    "database",
    "table",
    "sha256",
    "path",
    "bytes",
    "status",
    "attempts",
    "first_seen",
    "finished_at",
    "rows_loaded",
    "rows_filtered",
    "txn_id",
    "message",
    "duplicate_of",
    "record_id",
    "disposed_to",
    "record_sha256",
    "chain",
    "chain_later",
    "record_json",
];

fn sluice(args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("SLUICE_LEDGER")
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap()
}

fn ledger_arg(path: &Path) -> [String; 2] {
    ["--ledger".to_owned(), path.display().to_string()]
}

fn sluice_on(ledger: &Path, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.splice(2..2, ledger_arg(ledger));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sluice(&refs)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A record as the service would write it, taken `age` ago.
fn record(ledger: &Ledger, n: usize, table: &str, status: Status, age: Duration) -> Record {
    let sha256 = sha256_hex(format!("file {n}").as_bytes());
    let first_seen = SystemTime::now() - age;
    let loaded = status == Status::Loaded;
    Record {
        id: ledger.next_id().unwrap(),
        label: label::label_for("sluice_", "db", table, &sha256),
        database: "db".into(),
        table: table.into(),
        sha256,
        path: format!("/srv/landing/{table}/file-{n:04}.csv").into(),
        bytes: 100 + n as u64,
        status,
        attempts: vec![Attempt {
            number: 1,
            started_at: first_seen,
            duration_ms: Some(40),
            outcome: Some(status.as_str().into()),
            http_status: Some(200),
            cluster_status: Some(if loaded { "Success" } else { "Fail" }.into()),
            message: Some("OK".into()),
            txn_id: Some(1000 + n as i64),
            rows_loaded: loaded.then_some(10),
            rows_filtered: Some(0),
            bytes: 100 + n as u64,
        }],
        first_seen,
        finished_at: Some(first_seen + Duration::from_millis(50)),
        rows_loaded: loaded.then_some(10),
        rows_filtered: Some(0),
        txn_id: Some(1000 + n as i64),
        message: Some("OK".into()),
        duplicate_of: None,
        disposed_to: Some(format!("/srv/landing/{table}/done/file-{n:04}.csv").into()),
        identity: None,
        next_attempt_at: None,
        actions: Vec::new(),
    }
}

/// Writes `record` the way the pipeline does: taken, attempt started, outcome.
fn put_in_steps(ledger: &Ledger, record: &Record) {
    let mut step = record.clone();
    step.status = Status::Pending;
    step.attempts.clear();
    ledger.create_primary(step.clone()).unwrap();
    step.status = Status::Submitting;
    step.attempts = record.attempts.clone();
    ledger.put(&step).unwrap();
    ledger.put(record).unwrap();
}

/// A ledger of `n` records over three tables and several statuses and days.
fn synthetic_ledger(path: &Path, n: usize) -> Vec<Record> {
    let ledger = Ledger::open(path).unwrap();
    let statuses = [
        Status::Loaded,
        Status::Loaded,
        Status::Rejected,
        Status::Retrying,
    ];
    let tables = ["orders", "customers", "items"];
    (0..n)
        .map(|i| {
            // Half a day apart, an hour off the day boundaries the tests cut at.
            let age = Duration::from_secs(3600 * 24 * (n - i) as u64 / 2 + 3600);
            let r = record(&ledger, i, tables[i % 3], statuses[i % 4], age);
            put_in_steps(&ledger, &r);
            // As stored: times keep microseconds.
            ledger.get(r.id).unwrap().unwrap()
        })
        .collect()
}

/// Re-checks an export with the README's steps, in Rust: every record matches its latest entry,
/// the outside fields match the stored record, and the `chain` entries are 1..head, linked.
/// Returns the head as `SEQ:HASH`.
fn recheck_export(text: &str) -> Result<String, String> {
    let mut entries = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
        let stored = v["record_json"].as_str().ok_or("no record_json")?;
        let got = sha256_hex(stored.as_bytes());
        let all: Vec<&Value> = v["chain"]
            .as_array()
            .unwrap()
            .iter()
            .chain(v["chain_later"].as_array().unwrap())
            .collect();
        let last = all.last().map(|e| e["record_sha256"].as_str().unwrap());
        if v["record_sha256"] != got.as_str() || last != Some(got.as_str()) {
            return Err(format!(
                "line {}: record does not match its chain entry",
                n + 1
            ));
        }
        let r: Value = serde_json::from_str(stored).unwrap();
        for field in [
            "label", "database", "table", "sha256", "status", "bytes", "txn_id",
        ] {
            if v[field] != r[field] {
                return Err(format!(
                    "line {}: `{field}` differs from record_json",
                    n + 1
                ));
            }
        }
        for e in v["chain"].as_array().unwrap() {
            let seq = e["seq"].as_u64().unwrap();
            let link = (
                v["record_id"].as_u64().unwrap(),
                e["record_sha256"].as_str().unwrap().to_owned(),
                e["hash"].as_str().unwrap().to_owned(),
            );
            entries.insert(seq, link);
        }
    }
    let mut prev = GENESIS.to_owned();
    let mut expected = 1;
    for (seq, (id, rsha, hash)) in &entries {
        if *seq != expected {
            return Err(format!("chain entry {expected} is missing"));
        }
        if entry_hash(*seq, *id, rsha, &prev) != *hash {
            return Err(format!("chain entry {seq} is broken"));
        }
        prev.clone_from(hash);
        expected += 1;
    }
    Ok(format!("{}:{prev}", expected - 1))
}

/// The head line of `sluice ledger verify`.
fn verify_head(output: &Output) -> String {
    stdout(output)
        .lines()
        .find_map(|l| l.strip_prefix("head ").map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trip_equals_what_was_loaded() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .watch(WatchSpec::new("planes", 9))
        .watch(WatchSpec::new("flights", 19))
        .start()
        .await;
    let files = [
        ("airlines", "airlines.csv"),
        ("planes", "planes.csv"),
        ("flights", "flights_jan1.csv"),
        ("flights", "flights_jan2.csv"),
    ];
    for (table, name) in files {
        drop_sample(name, &env.landing(table), name);
    }
    drop_sample("airlines.csv", &env.landing("airlines"), "again.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let summary = env.once().await;
    assert_eq!((summary.loaded, summary.duplicate), (4, 1), "{summary:?}");
    let ledger_dir = env.dir.path().join("ledger");
    let config = env.config_path.display().to_string();

    let out = sluice(&["ledger", "export", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);

    // Field names in the documented order.
    let first = text.lines().next().unwrap();
    let positions: Vec<usize> = EXPORT_FIELDS
        .iter()
        .map(|f| {
            first
                .find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("no `{f}`"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{first}");

    // What was loaded: the source files' digests, labels, bytes and rows.
    for (table, name) in files {
        let source = Path::new(common::DATA).join(name);
        let (sha256, bytes) = label::digest_file(&source).unwrap();
        let line = lines
            .iter()
            .find(|l| l["sha256"] == sha256.as_str() && l["status"] == "loaded")
            .unwrap_or_else(|| panic!("{name} not exported as loaded"));
        assert_eq!(
            line["label"],
            label::label_for("sluice_", "db", table, &sha256).as_str()
        );
        assert_eq!(
            (line["database"].as_str(), line["table"].as_str()),
            (Some("db"), Some(table))
        );
        assert_eq!(line["bytes"], bytes);
        assert_eq!(line["rows_loaded"], sample_rows(name));
        assert_eq!(line["attempts"], 1);
        assert!(line["txn_id"].is_i64());
        assert!(line["first_seen"].as_str().unwrap().ends_with('Z'));
        humantime::parse_rfc3339(line["finished_at"].as_str().unwrap()).unwrap();
    }
    for table in ["airlines", "planes", "flights"] {
        let exported: u64 = lines
            .iter()
            .filter(|l| l["table"] == table)
            .filter_map(|l| l["rows_loaded"].as_u64())
            .sum();
        assert_eq!(exported, env.rows(table), "{table}");
    }
    let dup = lines.iter().find(|l| l["status"] == "duplicate").unwrap();
    let airlines = lines
        .iter()
        .find(|l| l["path"].as_str().unwrap().ends_with("/airlines.csv"));
    assert_eq!(dup["duplicate_of"], airlines.unwrap()["label"]);

    // The stored record in the export is the ledger's record, whole.
    let ledger = Ledger::open(&ledger_dir).unwrap();
    for line in &lines {
        let stored: Value = serde_json::from_str(line["record_json"].as_str().unwrap()).unwrap();
        let record = ledger
            .get(line["record_id"].as_u64().unwrap())
            .unwrap()
            .unwrap();
        let mut expected = serde_json::to_value(&record).unwrap();
        expected["v"] = "1".into();
        assert_eq!(stored, expected);
    }
    drop(ledger);

    // The CSV carries the same values.
    let out = sluice_on(&ledger_dir, &["ledger", "export", "--format", "csv"]);
    let rows = audit::parse_csv(&stdout(&out));
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0][..17], EXPORT_FIELDS[..17]);
    for (row, line) in rows[1..].iter().zip(&lines) {
        for (i, field) in EXPORT_FIELDS[..17].iter().enumerate() {
            let want = match &line[*field] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(row[i], want, "{field}");
        }
        assert_eq!(row[17], line["record_sha256"].as_str().unwrap());
    }

    // --out writes the same bytes as standard output.
    let file = env.dir.path().join("export.jsonl");
    let out = sluice_on(
        &ledger_dir,
        &["ledger", "export", "--out", file.to_str().unwrap()],
    );
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert_eq!(fs::read_to_string(&file).unwrap(), text);

    let head = recheck_export(&text).unwrap();
    assert_eq!(
        head,
        verify_head(&sluice_on(&ledger_dir, &["ledger", "verify"]))
    );
}

/// Copies a closed ledger directory, so that each tampering starts from the same state.
fn copy_ledger(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_ledger(&entry.path(), &to.join(entry.file_name()));
        } else {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Changes the store with sled itself, as someone with access to the files could.
fn tamper(path: &Path, change: impl FnOnce(&sled::Db)) {
    let db = sled::open(path).unwrap();
    change(&db);
    db.flush().unwrap();
}

fn verify_fails_naming(path: &Path, record: &Record, why: &str) {
    let out = sluice_on(path, &["ledger", "verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(5), "{text}");
    let first = text
        .lines()
        .find(|l| l.starts_with("FAILED"))
        .unwrap_or_default();
    assert!(
        first.contains(&format!("first broken record: record {}", record.id)),
        "{text}"
    );
    assert!(text.contains(why), "{text}");
}

#[test]
fn verify_catches_an_edited_a_deleted_and_a_reordered_record() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let records = synthetic_ledger(&clean, 8);
    let out = sluice_on(&clean, &["ledger", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let anchor = verify_head(&out);
    assert_eq!(
        anchor.split(':').next(),
        Some("24"),
        "three writes per record"
    );

    let key = |r: &Record| r.id.to_be_bytes();

    let edited = dir.path().join("edited");
    copy_ledger(&clean, &edited);
    tamper(&edited, |db| {
        let records_tree = db.open_tree("records").unwrap();
        let bytes = records_tree.get(key(&records[1])).unwrap().unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let changed = text.replacen("\"rows_loaded\":10", "\"rows_loaded\":11", 1);
        assert_ne!(text, changed);
        records_tree
            .insert(key(&records[1]), changed.as_bytes())
            .unwrap();
    });
    verify_fails_naming(&edited, &records[1], "does not match its chain entry");

    let deleted = dir.path().join("deleted");
    copy_ledger(&clean, &deleted);
    tamper(&deleted, |db| {
        db.open_tree("records")
            .unwrap()
            .remove(key(&records[3]))
            .unwrap();
    });
    verify_fails_naming(&deleted, &records[3], "gone from the ledger");

    let reordered = dir.path().join("reordered");
    copy_ledger(&clean, &reordered);
    tamper(&reordered, |db| {
        let t = db.open_tree("records").unwrap();
        let (a, b) = (
            t.get(key(&records[4])).unwrap().unwrap(),
            t.get(key(&records[5])).unwrap().unwrap(),
        );
        t.insert(key(&records[4]), b).unwrap();
        t.insert(key(&records[5]), a).unwrap();
    });
    verify_fails_naming(&reordered, &records[4], "swapped");

    // Reordering the chain itself: two entries swap places.
    let relinked = dir.path().join("relinked");
    copy_ledger(&clean, &relinked);
    tamper(&relinked, |db| {
        let t = db.open_tree("chain").unwrap();
        let (a, b) = (
            t.get(7u64.to_be_bytes()).unwrap().unwrap(),
            t.get(8u64.to_be_bytes()).unwrap().unwrap(),
        );
        t.insert(7u64.to_be_bytes(), b).unwrap();
        t.insert(8u64.to_be_bytes(), a).unwrap();
    });
    let out = sluice_on(&relinked, &["ledger", "verify"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stdout(&out).contains("chain entry 7 does not follow"),
        "{}",
        stdout(&out)
    );

    // A cut tail: the newest entry removed.
    let cut = dir.path().join("cut");
    copy_ledger(&clean, &cut);
    tamper(&cut, |db| {
        db.open_tree("chain")
            .unwrap()
            .remove(24u64.to_be_bytes())
            .unwrap();
    });
    verify_fails_naming(&cut, &records[7], "does not match its chain entry");

    // A ledger rebuilt from scratch has a whole chain of its own; only an anchor tells.
    let forged = dir.path().join("forged");
    synthetic_ledger(&forged, 8);
    assert!(sluice_on(&forged, &["ledger", "verify"]).status.success());
    let out = sluice_on(&forged, &["ledger", "verify", "--anchor", &anchor]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("anchor {anchor} no longer holds")),
        "{}",
        stdout(&out)
    );

    // An untouched ledger still holds its anchor.
    let out = sluice_on(&clean, &["ledger", "verify", "--anchor", &anchor]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn every_filter_selects_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let records = synthetic_ledger(&path, 12);
    let ledger = Ledger::open(&path).unwrap();
    let select = |filter: Filter| -> Vec<u64> {
        let mut out = Vec::new();
        audit::answer(&ledger, &Query::List { filter, json: true }, &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["record_id"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let expect = |pred: &dyn Fn(&Record) -> bool| -> Vec<u64> {
        records
            .iter()
            .rev()
            .filter(|r| pred(r))
            .map(|r| r.id)
            .collect()
    };

    assert_eq!(select(Filter::default()), expect(&|_| true), "newest first");
    let loaded = Filter {
        statuses: vec![Status::Loaded],
        ..Filter::default()
    };
    assert_eq!(select(loaded), expect(&|r| r.status == Status::Loaded));
    let two = Filter {
        statuses: vec![Status::Rejected, Status::Retrying],
        ..Filter::default()
    };
    assert_eq!(
        select(two),
        expect(&|r| matches!(r.status, Status::Rejected | Status::Retrying))
    );
    let table = Filter {
        table: Some("db.orders".into()),
        ..Filter::default()
    };
    assert_eq!(select(table), expect(&|r| r.table == "orders"));
    let bare = Filter {
        table: Some("items".into()),
        ..Filter::default()
    };
    assert_eq!(select(bare), expect(&|r| r.table == "items"));
    let other_db = Filter {
        table: Some("other.orders".into()),
        ..Filter::default()
    };
    assert!(select(other_db).is_empty());
    let cut = records[6].first_seen;
    let since = Filter {
        since: Some(cut),
        ..Filter::default()
    };
    assert_eq!(select(since), expect(&|r| r.first_seen >= cut));
    let until = Filter {
        until: Some(cut),
        ..Filter::default()
    };
    assert_eq!(select(until), expect(&|r| r.first_seen < cut));
    let glob = Filter {
        path: Some("*/file-000[1-3].csv".into()),
        ..Filter::default()
    };
    assert_eq!(
        select(glob),
        vec![records[3].id, records[2].id, records[1].id]
    );
    let name = Filter {
        path: Some("file-0004.csv".into()),
        ..Filter::default()
    };
    assert_eq!(select(name), vec![records[4].id], "the name alone matches");
    let moved = Filter {
        path: Some("*/done/file-0005.csv".into()),
        ..Filter::default()
    };
    assert_eq!(
        select(moved),
        vec![records[5].id],
        "the moved-to path matches"
    );
    let label = Filter {
        label: Some(records[7].label[..20].to_owned()),
        ..Filter::default()
    };
    assert_eq!(select(label), vec![records[7].id]);
    let both = Filter {
        statuses: vec![Status::Loaded],
        table: Some("db.orders".into()),
        ..Filter::default()
    };
    assert_eq!(
        select(both),
        expect(&|r| r.status == Status::Loaded && r.table == "orders")
    );
    drop(ledger);

    // The same through the command line, with ages and RFC 3339 times as users type them.
    let ids = |out: Output| -> Vec<u64> {
        assert!(out.status.success(), "{out:?}");
        stdout(&out)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["record_id"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let day = Duration::from_secs(24 * 3600);
    let recent = |r: &Record| r.first_seen >= SystemTime::now() - 2 * day;
    let got = ids(sluice_on(
        &path,
        &["ledger", "list", "--json", "--since", "2d"],
    ));
    assert_eq!(got, expect(&|r| recent(r)));
    let got = ids(sluice_on(
        &path,
        &["ledger", "list", "--json", "--until", "2d"],
    ));
    assert_eq!(got, expect(&|r| !recent(r)));
    let stamp = humantime::format_rfc3339_micros(cut).to_string();
    let got = ids(sluice_on(
        &path,
        &["ledger", "list", "--json", "--since", &stamp],
    ));
    assert_eq!(got, expect(&|r| r.first_seen >= cut));
    let got = ids(sluice_on(
        &path,
        &[
            "ledger",
            "list",
            "--json",
            "--status",
            "rejected,retrying",
            "--table",
            "db.customers",
        ],
    ));
    assert_eq!(
        got,
        expect(
            &|r| matches!(r.status, Status::Rejected | Status::Retrying) && r.table == "customers"
        )
    );
    let got = ids(sluice_on(
        &path,
        &[
            "ledger", "list", "--json", "--path", "*0010*", "--label", "sluice_",
        ],
    ));
    assert_eq!(got, vec![records[10].id]);
    let bad = sluice_on(&path, &["ledger", "list", "--status", "lost"]);
    assert_eq!(bad.status.code(), Some(2));

    // The table: a header and one line per record, the file name and short digest in it.
    let out = sluice_on(&path, &["ledger", "list", "--table", "orders"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1 + 4, "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
    assert!(text.contains("file-0009.csv") && text.contains(&records[9].sha256[..12]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_with_retries_and_refusals_shows_every_attempt_and_action() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .start()
        .await;
    let landing = env.landing("airlines");
    drop_sample("airlines.csv", &landing, "airlines.csv");
    env.emulator.inject(Fault::Http500);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let first = env.once().await;
    assert_eq!(first.loaded, 1, "{first:?}");
    // Fifteen columns into a two-column table: every row filtered, the file refused.
    drop_sample("weather.csv", &landing, "weather.csv");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = env.once().await;
    assert_eq!(second.rejected, 1, "{second:?}");
    let dir = env.dir.path().join("ledger");

    // An operator's decision, as `sluice ledger resolve` records it.
    let (weather_sha, _) =
        label::digest_file(&Path::new(common::DATA).join("weather.csv")).unwrap();
    {
        let ledger = Ledger::open(&dir).unwrap();
        let mut rejected = ledger
            .records()
            .map(Result::unwrap)
            .find(|r| r.sha256 == weather_sha)
            .unwrap();
        rejected.actions.push(Action {
            at: SystemTime::now(),
            by: "alice".into(),
            decision: "loaded".into(),
            reason: "checked by hand in ticket 42".into(),
            from_status: Status::Rejected,
        });
        ledger.put(&rejected).unwrap();
    }

    let out = sluice_on(&dir, &["ledger", "show", "weather.csv"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("status        rejected"), "{text}");
    assert!(
        text.contains("by alice: loaded (was rejected): checked by hand in ticket 42"),
        "{text}"
    );
    assert!(text.contains("status Fail"), "{text}");
    assert!(text.contains("matches its last chain entry"), "{text}");

    let (airlines_sha, _) =
        label::digest_file(&Path::new(common::DATA).join("airlines.csv")).unwrap();
    let label = label::label_for("sluice_", "db", "airlines", &airlines_sha);
    let out = sluice_on(&dir, &["ledger", "show", &label]);
    let text = stdout(&out);
    let attempts: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    assert!(attempts.len() >= 2, "{text}");
    assert!(attempts[0].contains("http 500"), "{text}");
    assert!(
        attempts.last().unwrap().contains("http 200") && text.contains("status Success"),
        "{text}"
    );
    let by_digest = stdout(&sluice_on(&dir, &["ledger", "show", &airlines_sha[..12]]));
    assert_eq!(by_digest, text);
    let json = stdout(&sluice_on(&dir, &["ledger", "show", "--json", &label]));
    let v: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["attempts"].as_array().unwrap().len(), attempts.len());
    assert!(v["chain"].as_array().unwrap().len() >= 3);
    let missing = sluice_on(&dir, &["ledger", "show", "nothing-like-this"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no record matches"));

    // verify, stats and a re-checked export on this ledger too.
    let out = sluice_on(&dir, &["ledger", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let export = stdout(&sluice_on(&dir, &["ledger", "export"]));
    assert_eq!(recheck_export(&export).unwrap(), verify_head(&out));
    let stats = stdout(&sluice_on(&dir, &["ledger", "stats", "--json"]));
    let all: Vec<Value> = stats
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["day"] == "all")
        .collect();
    let loaded = all.iter().find(|v| v["status"] == "loaded").unwrap();
    assert_eq!(loaded["table"], "db.airlines");
    assert_eq!(loaded["files"], 1);
    assert_eq!(loaded["rows_loaded"], sample_rows("airlines.csv"));
    assert_eq!(
        loaded["bytes"],
        fs::metadata(Path::new(common::DATA).join("airlines.csv"))
            .unwrap()
            .len()
    );
    let rejected = all.iter().find(|v| v["status"] == "rejected").unwrap();
    assert_eq!(
        (rejected["files"].as_u64(), rejected["rows_loaded"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn stats_sum_files_bytes_and_rows_by_day_table_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let records = synthetic_ledger(&path, 9);
    let out = sluice_on(&path, &["ledger", "stats", "--json"]);
    assert!(out.status.success());
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut want: BTreeMap<(String, String, String), (u64, u64, u64)> = BTreeMap::new();
    for r in &records {
        let day = humantime::format_rfc3339(r.first_seen).to_string()[..10].to_owned();
        for day in [day, "all".to_owned()] {
            let e = want
                .entry((day, r.target(), r.status.as_str().to_owned()))
                .or_default();
            e.0 += 1;
            e.1 += r.bytes;
            e.2 += r.rows_loaded.unwrap_or(0);
        }
    }
    let got: BTreeMap<(String, String, String), (u64, u64, u64)> = lines
        .iter()
        .map(|v| {
            let key = (
                v["day"].as_str().unwrap().to_owned(),
                v["table"].as_str().unwrap().to_owned(),
                v["status"].as_str().unwrap().to_owned(),
            );
            (
                key,
                (
                    v["files"].as_u64().unwrap(),
                    v["bytes"].as_u64().unwrap(),
                    v["rows_loaded"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
    let table = stdout(&sluice_on(
        &path,
        &[
            "ledger",
            "stats",
            "--table",
            "db.orders",
            "--status",
            "loaded",
        ],
    ));
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l.contains("db.orders") && l.contains("loaded")),
        "{table}"
    );
}

#[test]
fn the_readme_recipe_rechecks_an_export_with_jq_and_sha256sum() {
    let has = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    synthetic_ledger(&path, 5);
    let export = stdout(&sluice_on(&path, &["ledger", "export"]));
    let head = verify_head(&sluice_on(&path, &["ledger", "verify"]));
    assert_eq!(recheck_export(&export).unwrap(), head);

    // Edited, deleted and reordered lines of an export fail the same recheck.
    let lines: Vec<&str> = export.lines().collect();
    let edited = export.replacen("\\\"rows_loaded\\\":10", "\\\"rows_loaded\\\":12", 1);
    assert_ne!(edited, export);
    assert!(
        recheck_export(&edited)
            .unwrap_err()
            .contains("does not match")
    );
    let deleted = [&lines[..2], &lines[3..]].concat().join("\n");
    assert!(recheck_export(&deleted).unwrap_err().contains("missing"));
    let swapped_field = lines[1].replacen(
        &format!(
            "\"record_id\":{}",
            serde_json::from_str::<Value>(lines[1]).unwrap()["record_id"]
        ),
        &format!(
            "\"record_id\":{}",
            serde_json::from_str::<Value>(lines[2]).unwrap()["record_id"]
        ),
        1,
    );
    let relabelled = [&lines[..1], &[swapped_field.as_str()], &lines[2..]]
        .concat()
        .join("\n");
    assert!(recheck_export(&relabelled).is_err());

    if !(has("jq") && has("sha256sum")) {
        eprintln!("jq or sha256sum missing: the shell recipe is not run");
        return;
    }
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme.find("<!-- audit-recipe").unwrap()..];
    let start = after.find("```sh\n").unwrap() + 6;
    let script = &after[start..start + after[start..].find("```").unwrap()];
    let run = |text: &str| -> String {
        let work = tempfile::tempdir().unwrap();
        fs::write(work.path().join("ledger.jsonl"), text).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        stdout(&out)
    };
    assert_eq!(run(&export), format!("head {head}\n"));
    assert!(run(&edited).contains("line 1: record does not match its chain entry"));
    assert!(run(&deleted).contains("is missing"));
    let changed_field = export.replacen("\"status\":\"loaded\"", "\"status\":\"rejected\"", 1);
    assert!(run(&changed_field).contains("fields differ from record_json"));
}

#[test]
fn a_closed_pipe_ends_the_ledger_commands_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    synthetic_ledger(&path, 300);
    for command in [&["export"][..], &["list", "--json"]] {
        let mut child = std::process::Command::new(BIN)
            .arg("ledger")
            .args(command)
            .args(["--ledger", path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdout.take().unwrap();
        let mut first = [0u8; 100];
        std::io::Read::read_exact(&mut pipe, &mut first).unwrap();
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{command:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_mistyped_ledger_path_is_an_error_not_a_new_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ledger");
    let out = sluice_on(&missing, &["ledger", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger at"));
    assert!(!missing.exists());
}

/// `sluice run` as a child process; stopped with SIGTERM (then killed) on drop.
struct Running {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Running {
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "sluice run did not stop on SIGTERM: {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }
}

async fn ask(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_export_work_while_sluice_run_is_loading() {
    let env = EnvBuilder::new()
        .watch(WatchSpec::new("airlines", 2))
        .settle("200ms")
        .load_delay(Duration::from_millis(300))
        .start()
        .await;
    let config = env.config_path.display().to_string();
    let log = env.dir.path().join("run.log");
    let child = tokio::process::Command::new(BIN)
        .args(["run", "--config", &config])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let running = Running { child, log };
    let socket = env.dir.path().join("ledger").join(audit::SOCKET_NAME);
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        socket.exists(),
        "no audit socket: {}",
        fs::read_to_string(&running.log).unwrap()
    );

    // A steady flow of distinct files while we read.
    let landing = env.landing("airlines");
    let files = 12;
    let mut seen_unfinished = false;
    let mut answers = 0;
    for i in 0..files {
        let tmp = landing.join(format!(".f{i}.part"));
        fs::write(
            &tmp,
            format!("carrier,name\nX{i},Carrier number {i}\nY{i},Another {i}\n"),
        )
        .unwrap();
        fs::rename(&tmp, landing.join(format!("f{i}.csv"))).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;

        let list = ask(&["ledger", "list", "--json", "--config", &config]).await;
        assert!(list.status.success(), "{list:?}");
        let statuses: Vec<String> = stdout(&list)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["status"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        seen_unfinished |= statuses.iter().any(|s| s == "pending" || s == "submitting");
        let export = ask(&["ledger", "export", "--config", &config]).await;
        assert!(export.status.success(), "{export:?}");
        let export = stdout(&export);
        recheck_export(&export).unwrap_or_else(|e| panic!("{e}\n{export}"));
        answers += 1;
    }
    assert!(
        seen_unfinished,
        "no query landed while a load was in flight"
    );
    let verify = ask(&["ledger", "verify", "--config", &config]).await;
    assert!(verify.status.success(), "{}", stdout(&verify));
    let table = ask(&["ledger", "list", "--config", &config]).await;
    assert!(stdout(&table).starts_with("first seen (UTC)"));
    let stats = ask(&["ledger", "stats", "--config", &config]).await;
    assert!(stats.status.success());

    // The direct path is really closed: the service holds the store.
    assert!(matches!(
        Ledger::open(&env.dir.path().join("ledger")),
        Err(sluice::ledger::LedgerError::Locked { .. })
    ));
    assert!(
        common::wait_until(WAIT, || env.rows("airlines") == 2 * files).await,
        "rows {}",
        env.rows("airlines")
    );
    let status = running.stop().await;
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket outlived the service");
    assert_eq!(answers, files);

    // After the stop the same commands open the ledger themselves, and agree.
    let export = stdout(&ask(&["ledger", "export", "--config", &config]).await);
    assert_eq!(export.lines().count() as u64, files);
    let verify = ask(&["ledger", "verify", "--config", &config]).await;
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert_eq!(recheck_export(&export).unwrap(), verify_head(&verify));
}

/// Fills a ledger for `scripts/bench-ledger.sh`: `SLUICE_BENCH_LEDGER` (a new directory) with
/// `SLUICE_BENCH_RECORDS` records (default one million), each written in the pipeline's three
/// steps.
#[test]
#[ignore = "run by scripts/bench-ledger.sh"]
fn fill_a_ledger_for_the_benchmark() {
    let path = PathBuf::from(std::env::var("SLUICE_BENCH_LEDGER").expect("SLUICE_BENCH_LEDGER"));
    let count: usize = std::env::var("SLUICE_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let ledger = Ledger::open(&path).unwrap();
    let started = Instant::now();
    let tables = ["orders", "customers", "items", "payments"];
    for i in 0..count {
        let age = Duration::from_secs((count - i) as u64 * 30);
        let r = record(&ledger, i, tables[i % tables.len()], Status::Loaded, age);
        put_in_steps(&ledger, &r);
        if (i + 1) % 100_000 == 0 {
            eprintln!(
                "{} records, {:.0} records/s",
                i + 1,
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    ledger.flush().unwrap();
    println!(
        "filled {count} records in {:.1}s ({:.0} records/s, {} writes)",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64(),
        3 * count
    );
}
