//! SIPp from the tests: a process started (optionally inside a network namespace) with its
//! output in a directory, killed when dropped, and its `-trace_stat` figures read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

/// The repository's `sipp-scenarios` directory.
pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sipp-scenarios")
}

/// A SIPp process, killed on drop.
#[derive(Debug)]
pub struct Sipp {
    child: Child,
    name: &'static str,
}

impl Sipp {
    /// `sipp args…`, inside namespace `ns` when given; output to `dir/name.log`, run in `dir`.
    pub fn start(
        name: &'static str,
        ns: Option<&str>,
        dir: &Path,
        args: &[String],
    ) -> Result<Self> {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sipp"]);
                c
            }
            None => Command::new("sipp"),
        };
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = cmd
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start sipp (apt-get install sip-tester)")?;
        Ok(Self { child, name })
    }

    /// Stop it now (SIGKILL), as a server that dies.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait (at most `limit`) for it to exit.
    pub async fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            ensure!(
                Instant::now() < until,
                "{} still running after {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last row of a SIPp `-trace_stat` file as column name -> value.
pub fn stats(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines
        .next()
        .context("empty stats file")?
        .split(';')
        .collect();
    let last: Vec<&str> = lines
        .next_back()
        .context("no stats row")?
        .split(';')
        .collect();
    Ok(head
        .into_iter()
        .zip(last)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// A counter from [`stats`] (0 when absent).
pub fn stat(stats: &HashMap<String, String>, key: &str) -> u64 {
    stats
        .get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
