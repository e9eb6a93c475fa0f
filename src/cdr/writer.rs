//! The non-blocking writer: a channel in front of a thread that owns the SQLite connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::{CdrError, CdrRecord, schema};

/// Most rows inserted in one transaction.
pub const MAX_BATCH: usize = 500;

/// How long a batch stays open for more rows after its first: at a few thousand calls a second
/// one transaction (one WAL write) per row cost more CPU than the call itself spent in the
/// kernel; a batch a few milliseconds long costs one write for dozens of rows.
pub const LINGER: Duration = Duration::from_millis(20);

/// Attempts at one batch (each may wait [`schema::BUSY_TIMEOUT`] for a lock) before giving up on it.
const MAX_ATTEMPTS: u32 = 5;

/// Pause after a failed attempt, multiplied by the attempt number.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Writes [`CdrRecord`]s to SQLite from a dedicated thread, so that [`record`](Self::record)
/// never waits for the database.
///
/// The queue is unbounded: if the disk stalls, records pile up in memory rather than slowing
/// down calls. A batch that still fails after a few retries (about 12 s of trying) is given up on;
/// each of its records is logged as JSON at error level, and [`close`](Self::close) reports the loss.
///
/// `CdrWriter` is `Sync`: share it by reference or in an `Arc` to record from many threads.
/// Dropping it without calling `close` still flushes the queue (and waits for that).
#[derive(Debug)]
pub struct CdrWriter {
    /// `None` only once `close` or `drop` has started.
    tx: Option<mpsc::Sender<CdrRecord>>,
    /// `None` only once the thread has been joined.
    thread: Option<JoinHandle<Outcome>>,
    /// Rows committed so far, updated by the thread after each commit.
    written: Arc<AtomicU64>,
    /// Transactions committed so far.
    commits: Arc<AtomicU64>,
    path: PathBuf,
}

/// What the writer thread reports when it ends.
#[derive(Debug, Default)]
struct Outcome {
    lost: u64,
    last_error: Option<String>,
}

impl CdrWriter {
    /// Open or create the database at `path` (creating parent directories and the `cdr` table as
    /// needed) and start the writer thread. Rows already in the file are kept; new ones are appended.
    ///
    /// # Errors
    ///
    /// The directory or database cannot be created or opened, the file holds a newer schema, or
    /// the thread cannot be spawned.
    pub fn open(path: &Path) -> Result<Self, CdrError> {
        let conn = schema::open_for_write(path)?;
        let (tx, rx) = mpsc::channel();
        let written = Arc::new(AtomicU64::new(0));
        let commits = Arc::new(AtomicU64::new(0));
        let thread = {
            let written = Arc::clone(&written);
            let commits = Arc::clone(&commits);
            let path = path.to_path_buf();
            std::thread::Builder::new()
                .name("cdr-writer".into())
                .spawn(move || run(conn, &rx, (&written, &commits), &path))
                .map_err(CdrError::Spawn)?
        };
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            written,
            commits,
            path: path.to_path_buf(),
        })
    }

    /// Queue a record for writing. Never blocks on the database: it only pushes onto a channel.
    pub fn record(&self, r: CdrRecord) {
        let Some(tx) = &self.tx else {
            log_lost(&r, "CDR writer is closed");
            return;
        };
        if let Err(mpsc::SendError(r)) = tx.send(r) {
            log_lost(&r, "CDR writer thread is gone");
        }
    }

    /// Rows committed to the database by this writer so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Transactions (batches of rows) committed by this writer so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// Write everything still queued, stop the thread and return the number of rows this writer
    /// committed.
    ///
    /// # Errors
    ///
    /// [`CdrError::WriterPanicked`] or [`CdrError::Lost`] if some rows never reached the database.
    pub fn close(mut self) -> Result<u64, CdrError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<u64, CdrError> {
        // Dropping the sender lets the thread drain the queue and then see the disconnect.
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return Ok(self.written());
        };
        let outcome = thread.join().map_err(|_| CdrError::WriterPanicked)?;
        let written = self.written();
        match outcome.last_error {
            Some(last_error) if outcome.lost > 0 => Err(CdrError::Lost {
                lost: outcome.lost,
                written,
                last_error,
            }),
            _ => Ok(written),
        }
    }
}

impl Drop for CdrWriter {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        match self.finish() {
            Ok(rows) => tracing::debug!(path = %self.path.display(), rows, "CDR writer dropped"),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "CDR writer dropped")
            }
        }
    }
}

/// The writer thread: block for one record, take what else comes within [`LINGER`] (up to
/// [`MAX_BATCH`]), commit it in one transaction, repeat until every sender is gone (then what
/// is queued is written at once).
fn run(
    mut conn: Connection,
    rx: &mpsc::Receiver<CdrRecord>,
    (written, commits): (&AtomicU64, &AtomicU64),
    path: &Path,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        let until = std::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            let wait = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match write_batch(&mut conn, &batch, path) {
            Ok(()) => {
                written.fetch_add(batch.len() as u64, Ordering::Release);
                commits.fetch_add(1, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, rows = batch.len(),
                    "giving up on a CDR batch");
                for r in &batch {
                    log_lost(r, "database write failed");
                }
                outcome.lost += batch.len() as u64;
                outcome.last_error = Some(e.to_string());
            }
        }
        batch.clear();
    }
    outcome
}

/// Insert one batch, retrying the whole transaction a few times (lock contention, full disk).
fn write_batch(conn: &mut Connection, batch: &[CdrRecord], path: &Path) -> rusqlite::Result<()> {
    let mut attempt = 1;
    loop {
        let result = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                schema::insert(&tx, batch)?;
                tx.commit()
            });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(path = %path.display(), error = %e, attempt, rows = batch.len(),
                    "CDR batch failed; retrying");
                std::thread::sleep(RETRY_PAUSE * attempt);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keep a record that could not be stored in the log, where an operator can still recover it.
fn log_lost(r: &CdrRecord, why: &str) {
    let json = serde_json::to_string(r).unwrap_or_default();
    tracing::error!(cdr = %json, "CDR lost: {why}");
}
