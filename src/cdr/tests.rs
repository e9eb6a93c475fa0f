//! CDR writer tests against real SQLite files in a per-test temporary directory.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::*;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "understudy-cdr-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("nested/dir/cdr.sqlite")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A record whose every field depends on `i`, covering both `None` and `Some` of each option.
fn sample(i: u64) -> CdrRecord {
    let i64 = i as i64;
    let answered = !i.is_multiple_of(3);
    CdrRecord {
        call_id: format!("a-{i}@10.0.0.1"),
        b_call_id: if i.is_multiple_of(5) {
            String::new()
        } else {
            format!("b-{i}@10.0.0.2")
        },
        token: format!("{i:016x}"),
        caller: format!("sip:{}@pbx.local", 1000 + i % 50),
        callee: format!("{}", 2000 + i % 70),
        trunk: i.is_multiple_of(4).then(|| format!("trunk-{}", i % 3)),
        start_ms: 1_700_000_000_000 + i64 * 1000,
        answer_ms: answered.then_some(1_700_000_000_000 + i64 * 1000 + 500),
        end_ms: 1_700_000_000_000 + i64 * 1000 + 60_000,
        duration_ms: if answered { 59_500 } else { 0 },
        end_reason: match i % 4 {
            0 => "normal".into(),
            1 => "cancelled".into(),
            2 => format!("failed:{}", 400 + i % 200),
            _ => "takeover_orphan".into(),
        },
        recovered: i.is_multiple_of(7),
        node: "main-1".into(),
        media: i.is_multiple_of(2).then_some(MediaCounters {
            a_to_b_packets: i * 50,
            a_to_b_lost: i % 11,
            a_to_b_jitter_ms: i as f64 / 7.0,
            b_to_a_packets: i * 49,
            b_to_a_lost: i % 13,
            b_to_a_jitter_ms: i as f64 / 3.0,
        }),
        transfer_of: i.is_multiple_of(6).then(|| format!("t-{i}@10.0.0.3")),
    }
}

/// A table written by a build from before `transfer_of`: opening it adds the column, its
/// rows read back without one, and new rows carry it.
#[test]
fn a_table_from_before_transfer_of_gains_the_column() {
    let dir = TempDir::new("old-table");
    let path = dir.db();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    {
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TABLE cdr (id INTEGER PRIMARY KEY, call_id TEXT NOT NULL, \
             b_call_id TEXT NOT NULL, token TEXT NOT NULL, caller TEXT NOT NULL, \
             callee TEXT NOT NULL, trunk TEXT, start_ms INTEGER NOT NULL, answer_ms INTEGER, \
             end_ms INTEGER NOT NULL, duration_ms INTEGER NOT NULL, end_reason TEXT NOT NULL, \
             recovered INTEGER NOT NULL, node TEXT NOT NULL, a_to_b_packets INTEGER, \
             a_to_b_lost INTEGER, a_to_b_jitter_ms REAL, b_to_a_packets INTEGER, \
             b_to_a_lost INTEGER, b_to_a_jitter_ms REAL); \
             INSERT INTO cdr (call_id, b_call_id, token, caller, callee, start_ms, end_ms, \
             duration_ms, end_reason, recovered, node) \
             VALUES ('old', '', '01', 'a', 'b', 1, 2, 0, 'normal', 0, 'n'); \
             PRAGMA user_version = 1;",
        )
        .expect("old table");
    }
    let mut conn = super::schema::open_for_write(&path).expect("opens the old table");
    let tx = conn.transaction().expect("tx");
    super::schema::insert(&tx, &[sample(6)]).expect("insert");
    tx.commit().expect("commit");
    let rows = read_all(&path).expect("read");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].call_id, "old");
    assert_eq!(rows[0].transfer_of, None);
    assert_eq!(rows[1].transfer_of.as_deref(), Some("t-6@10.0.0.3"));
}

#[test]
fn ten_thousand_records_round_trip() {
    let dir = TempDir::new("10k");
    let writer = CdrWriter::open(&dir.db()).expect("open");
    let expected: Vec<CdrRecord> = (0..10_000).map(sample).collect();
    for r in &expected {
        writer.record(r.clone());
    }
    assert_eq!(writer.close().expect("close"), 10_000);
    let got = read_all(&dir.db()).expect("read");
    assert_eq!(got.len(), 10_000);
    assert_eq!(got, expected);
}

#[test]
fn records_from_many_threads() {
    let dir = TempDir::new("threads");
    let writer = CdrWriter::open(&dir.db()).expect("open");
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let writer = &writer;
            s.spawn(move || {
                for i in 0..1000 {
                    writer.record(sample(t * 1000 + i));
                }
            });
        }
    });
    assert_eq!(writer.close().expect("close"), 8000);
    let got = read_all(&dir.db()).expect("read");
    let ids: HashSet<String> = got.iter().map(|r| r.call_id.clone()).collect();
    assert_eq!(got.len(), 8000);
    assert_eq!(ids.len(), 8000, "no duplicates");
    for r in &got {
        let i = u64::from_str_radix(&r.token, 16).expect("hex token");
        assert_eq!(*r, sample(i));
    }
}

#[test]
fn reopening_appends() {
    let dir = TempDir::new("reopen");
    let first = CdrWriter::open(&dir.db()).expect("open");
    (0..3).for_each(|i| first.record(sample(i)));
    assert_eq!(first.close().expect("close"), 3);

    let second = CdrWriter::open(&dir.db()).expect("reopen");
    (3..5).for_each(|i| second.record(sample(i)));
    assert_eq!(
        second.close().expect("close"),
        2,
        "counts this writer's rows"
    );

    let got = read_all(&dir.db()).expect("read");
    assert_eq!(got, (0..5).map(sample).collect::<Vec<_>>());
}

#[test]
fn record_does_not_wait_for_a_locked_database() {
    let dir = TempDir::new("locked");
    let writer = CdrWriter::open(&dir.db()).expect("open");

    // Another connection takes the write lock and holds it.
    let blocker = Connection::open(dir.db()).expect("second connection");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take write lock");

    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        writer.record(sample(i));
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(50),
        "record() took {slowest:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(writer.written(), 0, "the writer is stuck on the lock");

    blocker.execute_batch("ROLLBACK").expect("release lock");
    assert_eq!(writer.close().expect("close"), 200);
    assert_eq!(read_all(&dir.db()).expect("read").len(), 200);
}

#[test]
fn written_counts_committed_rows() {
    let dir = TempDir::new("written");
    let writer = CdrWriter::open(&dir.db()).expect("open");
    assert_eq!(writer.written(), 0);
    (0..42).for_each(|i| writer.record(sample(i)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.written() < 42 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(writer.written(), 42);
    // Committed means visible to another reader before close.
    assert_eq!(read_all(&dir.db()).expect("read").len(), 42);
    assert_eq!(writer.close().expect("close"), 42);
}

/// Calls that end a moment apart share a transaction: 100 records, one every 200 µs (a call
/// rate of 5,000/s), are committed in far fewer transactions than rows. The bound leaves room
/// for a loaded machine that sleeps much longer than asked.
#[test]
fn records_a_moment_apart_share_a_commit() {
    let dir = TempDir::new("linger");
    let writer = CdrWriter::open(&dir.db()).expect("open");
    for i in 0..100 {
        writer.record(sample(i));
        std::thread::sleep(Duration::from_micros(200));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.written() < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(writer.written(), 100);
    let commits = writer.commits();
    assert!(commits <= 25, "{commits} commits for 100 rows");
    assert_eq!(writer.close().expect("close"), 100);
}

#[test]
fn drop_without_close_flushes() {
    let dir = TempDir::new("drop");
    {
        let writer = CdrWriter::open(&dir.db()).expect("open");
        (0..1234).for_each(|i| writer.record(sample(i)));
    }
    assert_eq!(read_all(&dir.db()).expect("read").len(), 1234);
}

#[test]
fn schema_columns_match_the_fields_and_media_is_nullable() {
    let dir = TempDir::new("schema");
    let writer = CdrWriter::open(&dir.db()).expect("open");
    writer.record(sample(1)); // odd: no media
    writer.close().expect("close");

    let conn = Connection::open(dir.db()).expect("open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let mut stmt = conn.prepare("PRAGMA table_info(cdr)").expect("table_info");
    let cols: Vec<(String, bool)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, bool>(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "call_id",
            "b_call_id",
            "token",
            "caller",
            "callee",
            "trunk",
            "start_ms",
            "answer_ms",
            "end_ms",
            "duration_ms",
            "end_reason",
            "recovered",
            "node",
            "a_to_b_packets",
            "a_to_b_lost",
            "a_to_b_jitter_ms",
            "b_to_a_packets",
            "b_to_a_lost",
            "b_to_a_jitter_ms",
            "transfer_of",
        ]
    );
    for (name, not_null) in &cols[14..] {
        assert!(!not_null, "{name} must be nullable");
    }
    let nulls: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM cdr WHERE a_to_b_packets IS NULL AND b_to_a_jitter_ms IS NULL",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(nulls, 1);
}

#[test]
fn huge_counters_are_clamped_not_rejected() {
    let dir = TempDir::new("clamp");
    let writer = CdrWriter::open(&dir.db()).expect("open");
    let mut r = sample(2);
    r.media = Some(MediaCounters {
        a_to_b_packets: u64::MAX,
        ..MediaCounters::default()
    });
    writer.record(r);
    assert_eq!(writer.close().expect("close"), 1);
    let got = read_all(&dir.db()).expect("read");
    assert_eq!(
        got[0].media.map(|m| m.a_to_b_packets),
        Some(i64::MAX as u64)
    );
}

#[test]
fn errors_name_the_path() {
    let dir = TempDir::new("errors");
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let file = dir.0.join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let err = CdrWriter::open(&file.join("cdr.sqlite")).expect_err("parent is a file");
    assert!(err.to_string().contains("not-a-dir"), "{err}");

    let missing = dir.0.join("missing.sqlite");
    let err = read_all(&missing).expect_err("no such file");
    assert!(err.to_string().contains("missing.sqlite"), "{err}");
}

#[test]
fn records_serialize_to_json() {
    let v = serde_json::to_value(sample(0)).expect("serialize");
    assert_eq!(v["token"], "0000000000000000");
    assert_eq!(v["trunk"], "trunk-0");
    assert_eq!(v["media"]["a_to_b_packets"], 0);
    assert_eq!(
        serde_json::to_value(sample(1)).expect("serialize")["media"],
        serde_json::Value::Null
    );
}
