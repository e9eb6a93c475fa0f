//! The `cdr` table: creation, row encoding and decoding.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, Transaction, params};

use super::{CdrError, CdrRecord, MediaCounters};

/// `PRAGMA user_version` written by this build.
const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS cdr (
    id               INTEGER PRIMARY KEY,
    call_id          TEXT    NOT NULL,
    b_call_id        TEXT    NOT NULL,
    token            TEXT    NOT NULL,
    caller           TEXT    NOT NULL,
    callee           TEXT    NOT NULL,
    trunk            TEXT,
    start_ms         INTEGER NOT NULL,
    answer_ms        INTEGER,
    end_ms           INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    end_reason       TEXT    NOT NULL,
    recovered        INTEGER NOT NULL,
    node             TEXT    NOT NULL,
    a_to_b_packets   INTEGER,
    a_to_b_lost      INTEGER,
    a_to_b_jitter_ms REAL,
    b_to_a_packets   INTEGER,
    b_to_a_lost      INTEGER,
    b_to_a_jitter_ms REAL,
    transfer_of      TEXT
);
CREATE INDEX IF NOT EXISTS cdr_start_ms ON cdr (start_ms);
CREATE INDEX IF NOT EXISTS cdr_call_id ON cdr (call_id);
";

/// The data columns, in the order used by `INSERT` and by [`decode`].
pub(super) const COLUMNS: &str = "call_id, b_call_id, token, caller, callee, trunk, start_ms, answer_ms, \
     end_ms, duration_ms, end_reason, recovered, node, a_to_b_packets, a_to_b_lost, \
     a_to_b_jitter_ms, b_to_a_packets, b_to_a_lost, b_to_a_jitter_ms, transfer_of";

const INSERT: &str = "INSERT INTO cdr (call_id, b_call_id, token, caller, callee, trunk, start_ms, \
     answer_ms, end_ms, duration_ms, end_reason, recovered, node, a_to_b_packets, a_to_b_lost, \
     a_to_b_jitter_ms, b_to_a_packets, b_to_a_lost, b_to_a_jitter_ms, transfer_of) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
     ?20)";

/// Open (creating if needed) the database for writing: WAL, `synchronous=NORMAL`, table and indexes.
pub(super) fn open_for_write(path: &Path) -> Result<Connection, CdrError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CdrError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let conn = Connection::open(path).map_err(CdrError::sqlite(path, "open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(CdrError::sqlite(path, "set busy timeout"))?;
    // `journal_mode` answers with the resulting mode; anything but WAL (e.g. on a filesystem
    // without shared memory) still works, just with more blocking between readers and the writer.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(CdrError::sqlite(path, "enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "CDR database is not in WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(CdrError::sqlite(path, "set synchronous=NORMAL"))?;
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(CdrError::sqlite(path, "read schema version"))?;
    if found > SCHEMA_VERSION {
        return Err(CdrError::SchemaVersion {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    conn.execute_batch(CREATE)
        .map_err(CdrError::sqlite(path, "create table"))?;
    add_missing_columns(&conn).map_err(CdrError::sqlite(path, "add the transfer_of column"))?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(CdrError::sqlite(path, "write schema version"))?;
    Ok(conn)
}

/// Columns added after the first release, added to a table an earlier build created. Older
/// builds still read and write such a table: they name their columns.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('cdr')")?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if !names.iter().any(|n| n == "transfer_of") {
        conn.execute_batch("ALTER TABLE cdr ADD COLUMN transfer_of TEXT")?;
    }
    Ok(())
}

/// Insert `rows` inside the transaction `tx`.
pub(super) fn insert(tx: &Transaction<'_>, rows: &[CdrRecord]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(INSERT)?;
    for r in rows {
        let m = r.media.as_ref();
        stmt.execute(params![
            r.call_id,
            r.b_call_id,
            r.token,
            r.caller,
            r.callee,
            r.trunk,
            r.start_ms,
            r.answer_ms,
            r.end_ms,
            r.duration_ms,
            r.end_reason,
            r.recovered,
            r.node,
            m.map(|m| saturate(m.a_to_b_packets)),
            m.map(|m| saturate(m.a_to_b_lost)),
            m.map(|m| m.a_to_b_jitter_ms),
            m.map(|m| saturate(m.b_to_a_packets)),
            m.map(|m| saturate(m.b_to_a_lost)),
            m.map(|m| m.b_to_a_jitter_ms),
            r.transfer_of,
        ])?;
    }
    Ok(())
}

/// SQLite integers are signed 64-bit; counters that large are clamped rather than rejected.
pub(super) fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Decode one row of `SELECT {COLUMNS}`.
pub(super) fn decode(row: &Row<'_>) -> rusqlite::Result<CdrRecord> {
    let a_to_b_packets: Option<u64> = row.get(13)?;
    let media = match a_to_b_packets {
        None => None,
        Some(a_to_b_packets) => Some(MediaCounters {
            a_to_b_packets,
            a_to_b_lost: row.get::<_, Option<u64>>(14)?.unwrap_or_default(),
            a_to_b_jitter_ms: row.get::<_, Option<f64>>(15)?.unwrap_or_default(),
            b_to_a_packets: row.get::<_, Option<u64>>(16)?.unwrap_or_default(),
            b_to_a_lost: row.get::<_, Option<u64>>(17)?.unwrap_or_default(),
            b_to_a_jitter_ms: row.get::<_, Option<f64>>(18)?.unwrap_or_default(),
        }),
    };
    Ok(CdrRecord {
        call_id: row.get(0)?,
        b_call_id: row.get(1)?,
        token: row.get(2)?,
        caller: row.get(3)?,
        callee: row.get(4)?,
        trunk: row.get(5)?,
        start_ms: row.get(6)?,
        answer_ms: row.get(7)?,
        end_ms: row.get(8)?,
        duration_ms: row.get(9)?,
        end_reason: row.get(10)?,
        recovered: row.get(11)?,
        node: row.get(12)?,
        media,
        transfer_of: row.get(19)?,
    })
}

/// Read every record in the database at `path`, oldest first. The file is opened read-only and
/// must already exist.
///
/// # Errors
///
/// [`CdrError::Sqlite`] if the file cannot be opened or read (missing, not a CDR database).
pub fn read_all(path: &Path) -> Result<Vec<CdrRecord>, CdrError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(CdrError::sqlite(path, "open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(CdrError::sqlite(path, "set busy timeout"))?;
    let mut stmt = conn
        .prepare(&format!("SELECT {COLUMNS} FROM cdr ORDER BY id"))
        .map_err(CdrError::sqlite(path, "read"))?;
    let rows = stmt
        .query_map([], decode)
        .map_err(CdrError::sqlite(path, "read"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(CdrError::sqlite(path, "read"))
}
