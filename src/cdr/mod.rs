//! Call detail records in SQLite, written off the signalling path.
//!
//! The call logic hands a finished call to [`CdrWriter::record`], which only pushes the record onto
//! a channel. A dedicated OS thread (`cdr-writer`) owns the SQLite connection and drains the channel,
//! inserting whatever has queued up (at most [`MAX_BATCH`] rows) in one transaction. Under load the
//! batches grow by themselves; when idle each record is committed as soon as it arrives. The database
//! runs in WAL mode with `synchronous=NORMAL`, so a commit does not wait for an fsync.
//!
//! The table is `cdr`, one column per [`CdrRecord`] field (media counters flattened into six
//! nullable columns), plus an `id` primary key that keeps insertion order. [`read_all`] reads it
//! back, for tests and the CLI.

mod forward;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use forward::{ForwardCounters, Forwarder};
pub use schema::read_all;
pub use writer::{CdrWriter, MAX_BATCH};

/// One finished call, as stored in the `cdr` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CdrRecord {
    /// Call-ID of the A leg.
    pub call_id: String,
    /// Call-ID of the B leg (`""` if the call never got one).
    pub b_call_id: String,
    /// The call token, 16 hex characters.
    pub token: String,
    /// From URI of the A leg.
    pub caller: String,
    /// User part (number) of the A leg's Request-URI.
    pub callee: String,
    /// Trunk name, if the call was routed to or from a trunk.
    pub trunk: Option<String>,
    /// Unix time in milliseconds when the INVITE arrived.
    pub start_ms: i64,
    /// Unix time in milliseconds when the call was answered, if it was.
    pub answer_ms: Option<i64>,
    /// Unix time in milliseconds when the call ended.
    pub end_ms: i64,
    /// `end_ms - answer_ms`, or 0 if the call was never answered.
    pub duration_ms: i64,
    /// Why the call ended: `normal`, `cancelled`, `busy`, `failed:<code>`, `session_timeout`,
    /// `takeover_orphan`, ...
    pub end_reason: String,
    /// Whether the call was rebuilt by a stand-by after a takeover.
    pub recovered: bool,
    /// Name of the node that wrote the record.
    pub node: String,
    /// RTP relay counters, when media was relayed.
    pub media: Option<MediaCounters>,
    /// For the later part of a transferred call: the Call-ID of the transferor's leg it
    /// replaced (that leg is in the earlier part's record, which has the same token and ends
    /// `transferred`).
    #[serde(default)]
    pub transfer_of: Option<String>,
}

/// RTP counters of a relayed call, one set per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MediaCounters {
    /// Packets relayed from the A leg to the B leg.
    pub a_to_b_packets: u64,
    /// Packets lost from the A leg to the B leg (sequence gaps).
    pub a_to_b_lost: u64,
    /// Interarrival jitter from the A leg, in milliseconds (RFC 3550 §6.4.1).
    pub a_to_b_jitter_ms: f64,
    /// Packets relayed from the B leg to the A leg.
    pub b_to_a_packets: u64,
    /// Packets lost from the B leg to the A leg (sequence gaps).
    pub b_to_a_lost: u64,
    /// Interarrival jitter from the B leg, in milliseconds (RFC 3550 §6.4.1).
    pub b_to_a_jitter_ms: f64,
}

/// What can go wrong with the CDR database.
#[derive(Debug, thiserror::Error)]
pub enum CdrError {
    /// The directory that should hold the database could not be created.
    #[error("cannot create CDR directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An SQLite operation on the database failed.
    #[error("CDR database {path}: cannot {op}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What we were doing, e.g. `open`, `create table`, `read`.
        op: &'static str,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer version with a schema we do not know.
    #[error("CDR database {path}: schema version {found} is newer than supported ({supported})")]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the CDR writer thread: {0}")]
    Spawn(std::io::Error),
    /// The writer thread panicked; rows queued at that point are lost.
    #[error("the CDR writer thread panicked")]
    WriterPanicked,
    /// Some records could not be written even after retries (they were logged as JSON instead).
    #[error("{lost} CDR rows could not be written ({written} were); last error: {last_error}")]
    Lost {
        /// Rows given up on.
        lost: u64,
        /// Rows committed.
        written: u64,
        /// The last database error seen.
        last_error: String,
    },
}

impl CdrError {
    /// Wrap an SQLite error with the database path and the operation that failed.
    fn sqlite<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> Self + 'a {
        move |source| Self::Sqlite {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}
