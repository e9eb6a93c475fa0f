//! Kamailio from the tests: a configuration from `deploy/`, `-A` defines, its output in a log
//! file in a test directory. Stopped with SIGTERM on drop (the main process stops its
//! children; SIGKILL would leave them running).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A running Kamailio.
#[derive(Debug)]
pub struct Kamailio {
    child: Child,
    log: PathBuf,
}

impl Kamailio {
    /// `kamailio -f deploy/<cfg> -DD -E -w dir -A define…`, output to `dir/<name>.log`;
    /// returns once its start-up lines name `port` (it listens).
    pub async fn start(
        cfg: &str,
        dir: &Path,
        name: &str,
        defines: &[String],
        port: u16,
    ) -> Result<Self> {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(cfg);
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new("kamailio");
        cmd.arg("-f").arg(&cfg).args(["-DD", "-E", "-w"]).arg(dir);
        for d in defines {
            cmd.arg("-A").arg(d);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start kamailio (apt-get install kamailio)")?;
        let mut k = Self { child, log };
        let until = Instant::now() + Duration::from_secs(10);
        while !k.text().contains(&format!(":{port}")) {
            if let Some(st) = k.child.try_wait()? {
                bail!("kamailio exited ({st}):\n{}", k.text());
            }
            ensure!(
                Instant::now() < until,
                "kamailio did not start:\n{}",
                k.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(k)
    }

    /// Its output so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
