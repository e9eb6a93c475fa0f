//! CDRs in PostgreSQL (`[cdr] url`), against a real PostgreSQL server started by the test
//! (Debian `postgresql`): 1,000 calls land there; with PostgreSQL stopped in the middle, the
//! next 200 wait in the node's SQLite spool and all of them are there once it is back, each
//! once.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sip_tests::cluster::{Solo, free_port};
use sip_tests::{Answer, Ua};

/// Debian's PostgreSQL binaries.
fn pg_bin(name: &str) -> Result<PathBuf> {
    let root = std::path::Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .context("no /usr/lib/postgresql (apt-get install postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    let bin = versions.last().context("no PostgreSQL version installed")?;
    Ok(bin.join("bin").join(name))
}

/// A PostgreSQL cluster of its own, run by the `postgres` user (it refuses root), stopped and
/// removed on drop.
struct Pg {
    dir: PathBuf,
    port: u16,
}

impl Pg {
    fn as_postgres(&self, bin: &str, args: &[&str]) -> Result<()> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin(bin)?)
            .args(args)
            .output()
            .with_context(|| format!("running {bin}"))?;
        ensure!(
            out.status.success(),
            "{bin} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn start_new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "understudy-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let st = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()?;
        ensure!(st.success(), "chown {dir:?}");
        let pg = Self {
            dir,
            port: free_port(),
        };
        let data = pg.data();
        pg.as_postgres("initdb", &["-D", &data, "-A", "trust", "-U", "postgres"])?;
        pg.start()?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn start(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log").to_string_lossy().into_owned();
        self.as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        )
    }

    fn stop(&self) -> Result<()> {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `SELECT …` through psql: the single value, or `None` when it fails (no table yet).
    fn query(&self, sql: &str) -> Option<String> {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-tAc", sql])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn rows(&self) -> u64 {
        self.query("SELECT count(*) FROM cdr")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn wait_rows(&self, n: u64, limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        while self.rows() < n {
            if Instant::now() >= until {
                bail!(
                    "PostgreSQL has {} CDRs, not {n}, after {limit:?}",
                    self.rows()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn calls(alice: &mut Ua, bob: &Ua, n: usize) -> Result<()> {
    for _ in 0..n {
        bob.answer_next_invite(Answer::ok());
        let d = alice.call("bob").await?;
        ensure!(alice.bye(&d).await?.status == 200, "BYE");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_reach_postgresql_and_none_is_lost_while_it_is_down() -> Result<()> {
    let pg = Pg::start_new()?;
    let url = format!("url = \"{}\"\n", pg.url());
    let mut solo = Solo::start_full(&["alice", "bob"], "", &url, "").await?;
    let [mut alice, bob]: [Ua; 2] = solo
        .registered(&["alice", "bob"])
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two phones"))?;
    let t0 = Instant::now();
    calls(&mut alice, &bob, 1000).await?;
    pg.wait_rows(1000, Duration::from_secs(30)).await?;
    eprintln!(
        "[cdr-postgres] 1,000 calls in PostgreSQL {:?} after the first",
        t0.elapsed()
    );

    // PostgreSQL stops; calls go on; their CDRs wait in the spool.
    pg.stop()?;
    calls(&mut alice, &bob, 200).await?;
    let spooled = solo.node.wait_cdrs(1200).await?.len();
    ensure!(spooled == 1200, "the spool holds {spooled} CDRs");
    pg.start()?;
    pg.wait_rows(1200, Duration::from_secs(60)).await?;
    let forwarded = solo
        .node
        .wait_metric("understudy_cdr_forwarded_total", "1200", |v| v >= 1200.0)
        .await?;
    let failures = solo
        .node
        .metric("understudy_cdr_forward_failures_total")
        .await?;
    ensure!(
        forwarded >= 1200.0 && failures >= 1.0,
        "metrics: {forwarded} forwarded, {failures} failures (PostgreSQL was down once)"
    );
    let st = solo.node.terminate().await?;
    ensure!(st.success(), "node exit {st}");
    let distinct = pg
        .query("SELECT count(DISTINCT spool_id) FROM cdr")
        .unwrap_or_default();
    ensure!(
        pg.rows() == 1200 && distinct == "1200",
        "PostgreSQL: {} rows, {distinct} distinct",
        pg.rows()
    );
    let normal = pg
        .query("SELECT count(*) FROM cdr WHERE end_reason = 'normal' AND callee = 'bob'")
        .unwrap_or_default();
    ensure!(normal == "1200", "{normal} normal CDRs for bob");
    Ok(())
}
