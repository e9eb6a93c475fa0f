//! Epoch persistence (DESIGN: "The epoch is written to `state.dir` (fsync) before the node acts
//! as active, so a restart never goes back").

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where the epoch lives.
pub trait EpochStore: std::fmt::Debug + Send {
    /// The persisted epoch (0 when none).
    fn load(&self) -> Result<u64, String>;
    /// Persist durably before returning.
    fn store(&mut self, epoch: u64) -> Result<(), String>;
}

/// `<state.dir>/epoch`, written with write + fsync + rename + directory fsync.
#[derive(Debug)]
pub struct FileEpochStore {
    dir: PathBuf,
}

impl FileEpochStore {
    /// A store in `dir` (created when missing).
    pub fn new(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
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
}

/// An in-memory store (single nodes without a state dir, tests).
#[derive(Debug, Default)]
pub struct MemoryEpochStore(pub u64);

impl EpochStore for MemoryEpochStore {
    fn load(&self) -> Result<u64, String> {
        Ok(self.0)
    }

    fn store(&mut self, epoch: u64) -> Result<(), String> {
        self.0 = epoch;
        Ok(())
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
        let again = FileEpochStore::new(&dir).unwrap();
        assert_eq!(again.load().unwrap(), 7);
        std::fs::write(dir.join("epoch"), "x").unwrap();
        assert!(again.load().unwrap_err().contains("not a number"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
