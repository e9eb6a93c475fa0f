//! Epoch persistence (DESIGN: "The epoch is written to `state.dir` (fsync) before the node acts
//! as active, so a restart never goes back").
//!
//! The write is started with [`EpochStore::begin`] and its result collected with
//! [`EpochStore::poll`], so an fsync never blocks the event loop: the file store writes on a
//! thread of its own. A node whose write fails does not become active (`pair::role`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The result of an epoch write: which epoch, and whether it is durable.
pub type Persisted = (u64, Result<(), String>);

/// Where the epoch lives.
pub trait EpochStore: std::fmt::Debug + Send {
    /// The persisted epoch (0 when none).
    fn load(&self) -> Result<u64, String>;
    /// Persist durably before returning.
    fn store(&mut self, epoch: u64) -> Result<(), String>;
    /// Start persisting `epoch`; the result comes from [`Self::poll`]. The default writes at
    /// once with [`Self::store`].
    fn begin(&mut self, epoch: u64) {
        let r = self.store(epoch);
        self.finished(epoch, r);
    }
    /// Keep a finished result for [`Self::poll`] (used by the default [`Self::begin`]).
    fn finished(&mut self, _epoch: u64, _result: Result<(), String>) {}
    /// A finished write, once it is finished (`now` lets a simulated disk be slow).
    fn poll(&mut self, now: std::time::Instant) -> Option<Persisted>;
}

/// `<state.dir>/epoch`, written with write + fsync + rename + directory fsync, on a thread of
/// its own when started with [`EpochStore::begin`].
#[derive(Debug)]
pub struct FileEpochStore {
    dir: PathBuf,
    done: Option<std::sync::mpsc::Receiver<Persisted>>,
}

impl FileEpochStore {
    /// A store in `dir` (created when missing).
    pub fn new(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            done: None,
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("epoch")
    }
}

impl EpochStore for FileEpochStore {
    fn load(&self) -> Result<u64, String> {
        match std::fs::read_to_string(self.path()) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("{}: not a number: {:?}", self.path().display(), s.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("{}: {e}", self.path().display())),
        }
    }

    fn store(&mut self, epoch: u64) -> Result<(), String> {
        let tmp = self.dir.join("epoch.tmp");
        let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        writeln!(f, "{epoch}").map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, self.path()).map_err(err)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn begin(&mut self, epoch: u64) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut writer = Self {
            dir: self.dir.clone(),
            done: None,
        };
        let spawned = std::thread::Builder::new()
            .name("epoch-write".into())
            .spawn(move || {
                let _ = tx.send((epoch, writer.store(epoch)));
            });
        if let Err(e) = spawned {
            let (tx, rx2) = std::sync::mpsc::channel();
            let _ = tx.send((epoch, Err(format!("cannot start the epoch writer: {e}"))));
            self.done = Some(rx2);
            return;
        }
        self.done = Some(rx);
    }

    fn poll(&mut self, _now: std::time::Instant) -> Option<Persisted> {
        let r = self.done.as_ref()?.try_recv();
        match r {
            Ok(p) => {
                self.done = None;
                Some(p)
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.done = None;
                Some((0, Err("the epoch writer died".into())))
            }
        }
    }
}

/// An in-memory store (single nodes without a state dir, tests).
#[derive(Debug, Default)]
pub struct MemoryEpochStore(pub u64, pub Option<Persisted>);

impl MemoryEpochStore {
    /// A store holding `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self(epoch, None)
    }
}

impl EpochStore for MemoryEpochStore {
    fn load(&self) -> Result<u64, String> {
        Ok(self.0)
    }

    fn store(&mut self, epoch: u64) -> Result<(), String> {
        self.0 = epoch;
        Ok(())
    }

    fn finished(&mut self, epoch: u64, result: Result<(), String>) {
        self.1 = Some((epoch, result));
    }

    fn poll(&mut self, _now: std::time::Instant) -> Option<Persisted> {
        self.1.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trip_and_restart() {
        let dir = std::env::temp_dir().join(format!("understudy-epoch-{}", rand::random::<u64>()));
        let mut s = FileEpochStore::new(&dir).unwrap();
        assert_eq!(s.load().unwrap(), 0);
        s.store(7).unwrap();
        // Off the caller's thread: the result arrives through poll.
        s.begin(9);
        let t0 = std::time::Instant::now();
        let got = loop {
            if let Some(p) = s.poll(t0) {
                break p;
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::yield_now();
        };
        assert_eq!(got, (9, Ok(())));
        assert_eq!(FileEpochStore::new(&dir).unwrap().load().unwrap(), 9);
        s.store(7).unwrap();
        let again = FileEpochStore::new(&dir).unwrap();
        assert_eq!(again.load().unwrap(), 7);
        std::fs::write(dir.join("epoch"), "x").unwrap();
        assert!(again.load().unwrap_err().contains("not a number"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
