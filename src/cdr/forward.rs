//! CDRs in PostgreSQL (`[cdr] url = "postgres://…"`): the local SQLite database stays the
//! spool. The writer commits every record there first, as without PostgreSQL; this
//! forwarder's thread copies committed rows to PostgreSQL in order, in batches, and keeps how
//! far it got in the spool itself (`cdr_forwarded`). While PostgreSQL is unreachable the rows
//! wait in the spool and the forwarder retries with a growing pause (1 s doubling to 30 s);
//! across a restart it goes on from where it was. A row reaches PostgreSQL once: each carries
//! the node and its spool row id, unique together, so a batch repeated after a crash between
//! the two commits inserts nothing twice.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::{CdrError, CdrRecord, MAX_BATCH, schema};

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS cdr (
    id               BIGSERIAL PRIMARY KEY,
    node             TEXT NOT NULL,
    spool_id         BIGINT NOT NULL,
    call_id          TEXT NOT NULL,
    b_call_id        TEXT NOT NULL,
    token            TEXT NOT NULL,
    caller           TEXT NOT NULL,
    callee           TEXT NOT NULL,
    trunk            TEXT,
    start_ms         BIGINT NOT NULL,
    answer_ms        BIGINT,
    end_ms           BIGINT NOT NULL,
    duration_ms      BIGINT NOT NULL,
    end_reason       TEXT NOT NULL,
    recovered        BOOLEAN NOT NULL,
    a_to_b_packets   BIGINT,
    a_to_b_lost      BIGINT,
    a_to_b_jitter_ms DOUBLE PRECISION,
    b_to_a_packets   BIGINT,
    b_to_a_lost      BIGINT,
    b_to_a_jitter_ms DOUBLE PRECISION,
    transfer_of      TEXT,
    UNIQUE (node, spool_id)
);
CREATE INDEX IF NOT EXISTS cdr_start_ms ON cdr (start_ms);
";

const INSERT: &str = "INSERT INTO cdr (node, spool_id, call_id, b_call_id, token, caller, \
     callee, trunk, start_ms, answer_ms, end_ms, duration_ms, end_reason, recovered, \
     a_to_b_packets, a_to_b_lost, a_to_b_jitter_ms, b_to_a_packets, b_to_a_lost, \
     b_to_a_jitter_ms, transfer_of) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18, $19, $20, $21) ON CONFLICT (node, spool_id) DO NOTHING";

/// The longest pause between attempts while PostgreSQL is unreachable.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How often the spool is looked at when nothing says new rows came.
const POLL: Duration = Duration::from_millis(250);

/// Counters for `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Rows copied to PostgreSQL since start.
    pub forwarded: AtomicU64,
    /// Failed attempts (connect or insert).
    pub failures: AtomicU64,
    /// Whether the last attempt reached PostgreSQL.
    pub connected: AtomicBool,
}

/// The forwarder: a thread, a way to wake it and to stop it.
#[derive(Debug)]
pub struct Forwarder {
    wake: Option<mpsc::Sender<()>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Its counters.
    pub counters: Arc<ForwardCounters>,
}

impl Forwarder {
    /// Start forwarding the spool at `spool` (the writer's SQLite file, already open) to `url`.
    ///
    /// # Errors
    ///
    /// The spool cannot be opened or its progress table created, or the thread cannot start.
    /// PostgreSQL being unreachable is not an error: the rows wait.
    pub fn start(spool: &Path, url: &str) -> Result<Self, CdrError> {
        let conn = Connection::open(spool).map_err(CdrError::sqlite(spool, "open the spool"))?;
        conn.busy_timeout(schema::BUSY_TIMEOUT)
            .map_err(CdrError::sqlite(spool, "set busy timeout"))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS cdr_forwarded (last_id INTEGER NOT NULL); \
             INSERT INTO cdr_forwarded (last_id) SELECT 0 \
             WHERE NOT EXISTS (SELECT 1 FROM cdr_forwarded);",
        )
        .map_err(CdrError::sqlite(spool, "create the forwarding table"))?;
        let (wake, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ForwardCounters::default());
        let thread = {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            let (url, spool) = (url.to_owned(), spool.to_path_buf());
            // (`spool` is moved into the thread; `run` borrows it.)
            std::thread::Builder::new()
                .name("cdr-postgres".into())
                .spawn(move || run(conn, &spool, &url, &rx, &stop, &counters))
                .map_err(CdrError::Spawn)?
        };
        Ok(Self {
            wake: Some(wake),
            stop,
            thread: Some(thread),
            counters,
        })
    }

    /// New rows were committed to the spool.
    pub fn nudge(&self) {
        if let Some(w) = &self.wake {
            let _ = w.send(());
        }
    }

    /// Copy what is left, for at most `limit`, then stop; rows not copied stay in the spool
    /// for the next start.
    pub fn close(mut self, limit: Duration) {
        self.stop.store(true, Ordering::Release);
        drop(self.wake.take());
        let until = Instant::now() + limit;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("CDRs not yet in PostgreSQL stay in the spool for the next start");
            }
        }
    }
}

/// Rows of the spool after `last`, with their ids.
fn pending(spool: &Connection, last: i64) -> rusqlite::Result<Vec<(i64, CdrRecord)>> {
    let sql = format!(
        "SELECT {}, id FROM cdr WHERE id > ?1 ORDER BY id LIMIT ?2",
        schema::COLUMNS
    );
    let mut stmt = spool.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![last, MAX_BATCH as i64], |row| {
        Ok((row.get::<_, i64>(20)?, schema::decode(row)?))
    })?;
    rows.collect()
}

/// Copy `rows` in one PostgreSQL transaction.
fn copy(client: &mut postgres::Client, rows: &[(i64, CdrRecord)]) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    let stmt = tx.prepare(INSERT)?;
    for (id, r) in rows {
        let m = r.media.as_ref();
        tx.execute(
            &stmt,
            &[
                &r.node,
                id,
                &r.call_id,
                &r.b_call_id,
                &r.token,
                &r.caller,
                &r.callee,
                &r.trunk,
                &r.start_ms,
                &r.answer_ms,
                &r.end_ms,
                &r.duration_ms,
                &r.end_reason,
                &r.recovered,
                &m.map(|m| schema::saturate(m.a_to_b_packets)),
                &m.map(|m| schema::saturate(m.a_to_b_lost)),
                &m.map(|m| m.a_to_b_jitter_ms),
                &m.map(|m| schema::saturate(m.b_to_a_packets)),
                &m.map(|m| schema::saturate(m.b_to_a_lost)),
                &m.map(|m| m.b_to_a_jitter_ms),
                &r.transfer_of,
            ],
        )?;
    }
    tx.commit()
}

fn run(
    spool: Connection,
    path: &Path,
    url: &str,
    wake: &mpsc::Receiver<()>,
    stop: &AtomicBool,
    counters: &ForwardCounters,
) {
    let mut client: Option<postgres::Client> = None;
    let mut pause = Duration::from_secs(1);
    loop {
        let last: i64 = spool
            .query_row("SELECT last_id FROM cdr_forwarded", [], |r| r.get(0))
            .unwrap_or(0);
        let rows = match pending(&spool, last) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(spool = %path.display(), error = %e, "cannot read the CDR spool");
                Vec::new()
            }
        };
        if rows.is_empty() {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let _ = wake.recv_timeout(POLL);
            continue;
        }
        if client.is_none() {
            match postgres::Client::connect(url, postgres::NoTls)
                .and_then(|mut c| c.batch_execute(CREATE).map(|()| c))
            {
                Ok(c) => {
                    tracing::info!("CDRs: connected to PostgreSQL");
                    client = Some(c);
                }
                Err(e) => {
                    failed(counters, &mut pause, &e, rows.len(), stop);
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(pause);
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        match copy(c, &rows) {
            Ok(()) => {
                let upto = rows.last().map_or(last, |(id, _)| *id);
                if let Err(e) =
                    spool.execute("UPDATE cdr_forwarded SET last_id = ?1", params![upto])
                {
                    // The rows are in PostgreSQL; the next copy repeats them harmlessly.
                    tracing::warn!(error = %e, "cannot record the CDR forwarding progress");
                }
                counters
                    .forwarded
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                counters.connected.store(true, Ordering::Relaxed);
                pause = Duration::from_secs(1);
            }
            Err(e) => {
                client = None;
                failed(counters, &mut pause, &e, rows.len(), stop);
                if stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(pause);
            }
        }
    }
}

fn failed(
    counters: &ForwardCounters,
    pause: &mut Duration,
    e: &postgres::Error,
    waiting: usize,
    stop: &AtomicBool,
) {
    counters.failures.fetch_add(1, Ordering::Relaxed);
    counters.connected.store(false, Ordering::Relaxed);
    tracing::warn!(
        error = %e,
        waiting,
        retry_in_s = pause.as_secs(),
        stopping = stop.load(Ordering::Acquire),
        "CDRs: PostgreSQL unreachable; the rows wait in the local spool"
    );
    *pause = (*pause * 2).min(MAX_PAUSE);
}
