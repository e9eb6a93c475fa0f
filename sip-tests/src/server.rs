//! [`TestServer`]: an Understudy node running in-process on `127.0.0.1:0`.
//!
//! Each server gets its own temporary state directory (the CDR database lives inside), SIP
//! over UDP and TCP and the admin API on ephemeral ports, and short RFC 3261 timers
//! (T1 = 50 ms, T2 = 400 ms, T4 = 200 ms) so that Timer B/H/J expire in about 3 s and
//! Timer I/K in 200 ms.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use understudy::cdr::CdrRecord;
use understudy::config::{Config, TrunkAddress, TrunkConfig, TrunkTransport};
use understudy::node::{self, NodeError};

use crate::ua::Ua;

/// T1 used by test servers.
pub const T1_MS: u64 = 50;

/// The `counts` object of `GET /status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls in progress.
    pub calls: u64,
    /// Registered bindings.
    pub registrations: u64,
    /// Client transactions alive.
    pub client_transactions: u64,
    /// Server transactions alive.
    pub server_transactions: u64,
}

impl Counts {
    /// No call and no server transaction left. Client transactions are not counted: an
    /// INVITE client transaction that got a non-2xx stays for Timer D, at least 32 s on UDP
    /// whatever T1 is (RFC 3261 §17.1.1.2).
    pub fn idle(&self) -> bool {
        self.calls == 0 && self.server_transactions == 0
    }
}

/// A running node and its temporary directory.
#[derive(Debug)]
pub struct TestServer {
    /// SIP over UDP.
    pub sip: SocketAddr,
    /// SIP over TCP.
    pub tcp: Option<SocketAddr>,
    /// Admin HTTP.
    pub admin: SocketAddr,
    /// The CDR database.
    pub cdr_path: PathBuf,
    dir: TempDir,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

/// A trunk entry for `[[trunks]]`: IP-authenticated, UDP, no dialog query.
pub fn trunk(name: &str, addr: SocketAddr, prefixes: &[&str], strip: usize) -> TrunkConfig {
    TrunkConfig {
        name: name.to_string(),
        address: TrunkAddress {
            ip: addr.ip(),
            port: Some(addr.port()),
        },
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        strip,
        dialog_query: false,
        priority: 0,
        reset_event: None,
        transport: TrunkTransport::Udp,
        max_cps: None,
        credentials: None,
        register: None,
        host: None,
    }
}

impl TestServer {
    /// The built-in default configuration (users alice and bob, domain `pbx.local`) with
    /// loopback port 0 everywhere and test timers. State paths are filled in by
    /// [`Self::start_with`].
    pub fn config() -> Config {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let mut cfg = Config::builtin_default();
        cfg.node.name = "test".into();
        cfg.node.sip_udp = Some(any);
        cfg.node.sip_tcp = Some(any);
        cfg.admin.listen = any;
        cfg.timers.t1_ms = T1_MS;
        cfg.timers.t2_ms = 8 * T1_MS;
        cfg.timers.t4_ms = 4 * T1_MS;
        cfg
    }

    /// Start a node with the default test configuration.
    pub async fn start() -> Result<Self> {
        Self::start_with(Self::config()).await
    }

    /// Start a node with `cfg` (usually [`Self::config`] modified). The state directory and
    /// CDR path are replaced by a fresh temporary directory.
    pub async fn start_with(mut cfg: Config) -> Result<Self> {
        let dir = TempDir::new()?;
        cfg.state.dir = dir.path().to_path_buf();
        cfg.cdr.path = dir.path().join("cdr.sqlite");
        cfg.validate("test config")
            .map_err(|e| anyhow!("invalid test config: {e}"))?;
        let cdr_path = cfg.cdr.path.clone();
        let (shutdown, rx) = watch::channel(false);
        let (bound_tx, bound_rx) = oneshot::channel();
        let task = tokio::spawn(node::run(cfg, rx, Some(bound_tx)));
        let bound = match bound_rx.await {
            Ok(b) => b,
            Err(_) => {
                let err = task.await.context("node task panicked")?.err();
                bail!("node did not start: {err:?}");
            }
        };
        Ok(Self {
            sip: bound.udp.context("node bound no UDP socket")?,
            tcp: bound.tcp,
            admin: bound.admin,
            cdr_path,
            dir,
            shutdown,
            task: Some(task),
        })
    }

    /// A UA for configured user `user` (password `<user>-secret`, as in the built-in
    /// configuration) that sends to this server.
    pub async fn ua(&self, user: &str) -> Result<Ua> {
        let ua = Ua::bind(user).await?;
        ua.set_server(self.sip);
        ua.set_password(&format!("{user}-secret"));
        Ok(ua)
    }

    /// The temporary state directory.
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET path` on the admin API, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let addr = self.admin.to_string();
        let (status, body) = understudy::admin::http::request(&addr, "GET", path, None, None)
            .await
            .map_err(|e| anyhow!("GET {path}: {e}"))?;
        if status != 200 {
            bail!("GET {path}: HTTP {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// `GET path` on the admin API as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.admin.to_string();
        understudy::admin::http::request(&addr, "GET", path, None, None)
            .await
            .map_err(|e| anyhow!("GET {path}: {e}"))
    }

    /// The `counts` of `GET /status`.
    pub async fn counts(&self) -> Result<Counts> {
        let v = self.get_json("/status").await?;
        let c = &v["counts"];
        let n = |k: &str| {
            c[k].as_u64()
                .ok_or_else(|| anyhow!("/status counts.{k} missing in {v}"))
        };
        Ok(Counts {
            calls: n("calls")?,
            registrations: n("registrations")?,
            client_transactions: n("client_transactions")?,
            server_transactions: n("server_transactions")?,
        })
    }

    /// Poll `/status` (every 20 ms) until `done(counts)` holds, at most `limit`. Returns the
    /// last counts, or an error naming them.
    pub async fn wait_counts(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Counts) -> bool,
    ) -> Result<Counts> {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.counts().await?;
            if done(&c) {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                bail!("after {limit:?} the server is still not {what}: {c:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until no call and no server transaction is left (bounded by 64×T1 + 3 s: the
    /// longest server transaction timer, J or L, is 64×T1).
    pub async fn wait_idle(&self) -> Result<Counts> {
        let limit = Duration::from_millis(64 * T1_MS) + Duration::from_secs(3);
        self.wait_counts(limit, "idle", Counts::idle).await
    }

    /// The contact URIs registered for `aor` (user name), from `GET /registrations`.
    pub async fn contacts_of(&self, aor: &str) -> Result<Vec<String>> {
        let v = self.get_json("/registrations").await?;
        let regs = v["registrations"]
            .as_array()
            .ok_or_else(|| anyhow!("/registrations: no array in {v}"))?;
        Ok(regs
            .iter()
            .filter(|r| r["aor"].as_str() == Some(aor))
            .flat_map(|r| r["contacts"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["contact"].as_str().map(str::to_string))
            .collect())
    }

    /// Stop the node (CDRs are flushed on the way out) and return every CDR written.
    pub async fn stop(mut self) -> Result<Vec<CdrRecord>> {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .context("node did not stop within 10 s")?
                .context("node task panicked")?
                .map_err(|e| anyhow!("node failed: {e}"))?;
        }
        if !self.cdr_path.exists() {
            return Ok(Vec::new());
        }
        understudy::cdr::read_all(&self.cdr_path).map_err(|e| anyhow!("reading CDRs: {e}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A directory under the system temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Create a fresh one.
    pub fn new() -> Result<Self> {
        let name = format!(
            "understudy-sip-tests-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
