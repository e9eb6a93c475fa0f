//! [`Pair`]: two real `understudy` processes (main + stand-by) on loopback, with a generated
//! config per node ([`PairSpec`]), a temporary directory each, their logs in files, and
//! async access to the admin API. Nodes are stopped with SIGKILL ([`Node::kill9`]) to simulate
//! a crash, or SIGTERM ([`Node::terminate`]) so that CDRs are flushed before they are read.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use understudy::cdr::CdrRecord;

use crate::server::TempDir;

/// Build the real binary once per test process and return its path.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "understudy", "--bin", "understudy"])
            .current_dir(&root)
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "building the understudy binary failed");
        let exe = std::env::current_exe().expect("test exe");
        // target/<profile>/deps/main-xxxx → target/<profile>/understudy
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("understudy"))
            .expect("target dir");
        assert!(bin.exists(), "{} not found", bin.display());
        bin
    })
}

/// A port free for both UDP and TCP on 127.0.0.1.
pub fn free_port() -> u16 {
    // The kernel may hand the port just released to the next bind: a port this process has
    // handed out is never handed out again (two nodes of a pair once got the same one).
    static GIVEN: OnceLock<std::sync::Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = u.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && given.lock().is_ok_and(|mut g| g.insert(p))
        {
            return p;
        }
    }
}

/// A `[[trunks]]` entry.
#[derive(Debug, Clone)]
pub struct TrunkSpec {
    /// Name.
    pub name: String,
    /// Address (with port).
    pub addr: SocketAddr,
    /// Number prefixes routed to it.
    pub prefixes: Vec<String>,
    /// Digits stripped.
    pub strip: usize,
    /// Ask it for its dialogs at takeover.
    pub dialog_query: bool,
    /// Reach it over TCP.
    pub tcp: bool,
}

impl TrunkSpec {
    /// A UDP trunk without dialog query.
    pub fn new(name: &str, addr: SocketAddr, prefix: &str) -> Self {
        Self {
            name: name.into(),
            addr,
            prefixes: vec![prefix.into()],
            strip: 0,
            dialog_query: false,
            tcp: false,
        }
    }
}

/// What both nodes' configs say (the shared sections must match on both).
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// `pair.mode`: `hot` or `cold`.
    pub mode: &'static str,
    /// `pair.dialog_digest`.
    pub dialog_digest: bool,
    /// `pair.witnesses`.
    pub witnesses: Vec<SocketAddr>,
    /// `takeover.fallback`: `none` or `cold`.
    pub fallback: &'static str,
    /// `takeover.query_timeout_ms`.
    pub query_timeout_ms: u64,
    /// `takeover.parallel`.
    pub parallel: usize,
    /// `timers.t1_ms`.
    pub t1_ms: u64,
    /// `[[users]]`: name and password.
    pub users: Vec<(String, String)>,
    /// `[[trunks]]`.
    pub trunks: Vec<TrunkSpec>,
    /// Run the main and the stand-by in these network namespaces at these addresses
    /// (`natbed`), instead of on loopback.
    pub sites: Option<[Site; 2]>,
    /// More TOML appended to both configs (sections of per-node settings).
    pub extra: String,
    /// Per node (main, stand-by): more `[pair]` settings.
    pub pair_extra: [String; 2],
    /// Per node (main, stand-by): another build of `understudy` to run (a rolling upgrade).
    pub binaries: [Option<PathBuf>; 2],
}

/// Where a node runs: a network namespace and its address there (SIP on port 5060, the admin
/// API on 8080).
#[derive(Debug, Clone)]
pub struct Site {
    /// Namespace name.
    pub netns: String,
    /// The node's address.
    pub ip: std::net::IpAddr,
    /// The address it knows its peer by (`pair.peer`), when not the peer's own: a relay on
    /// the pair link (`wan`).
    pub peer_via: Option<SocketAddr>,
}

impl Default for PairSpec {
    fn default() -> Self {
        Self {
            mode: "hot",
            dialog_digest: true,
            witnesses: Vec::new(),
            fallback: "none",
            query_timeout_ms: 2000,
            parallel: 64,
            t1_ms: 100,
            users: Vec::new(),
            trunks: Vec::new(),
            sites: None,
            extra: String::new(),
            pair_extra: [String::new(), String::new()],
            binaries: [None, None],
        }
    }
}

/// The admin token of nodes in a namespace (their admin API is not on loopback).
const ADMIN_TOKEN: &str = "natbed-admin-token";

/// The password every generated user gets.
pub fn password_of(user: &str) -> String {
    format!("pw-{user}")
}

impl PairSpec {
    /// Add users with the password from [`password_of`].
    pub fn with_users<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        for n in names {
            let n = n.as_ref().to_string();
            let pw = password_of(&n);
            self.users.push((n, pw));
        }
        self
    }

    fn config(&self, me: &NodePorts, peer: &NodePorts, home: &str, dir: &Path) -> String {
        let mut s = format!(
            r#"[node]
name = "{home}-1"
home_role = "{home}"
sip_udp = "{ip}:{sip}"
sip_tcp = "{ip}:{sip}"
domain = "pbx.local"

[admin]
listen = "{ip}:{admin}"{token}

[state]
dir = "{dir}"

[cdr]
path = "{dir}/cdr.sqlite"

[timers]
t1_ms = {t1}

[pair]
peer = "{peer}"
secret = "takeover-test-secret"
keepalive_ms = 200
missed_keepalives = 3
probe_timeout_ms = 200
test_hooks = true
mode = "{mode}"
dialog_digest = {digest}
witnesses = [{witnesses}]
{pair_extra}

[takeover]
parallel = {parallel}
query_timeout_ms = {qt}
fallback = "{fallback}"
"#,
            ip = me.ip,
            token = if me.netns.is_some() {
                format!("\ntoken = \"{ADMIN_TOKEN}\"")
            } else {
                String::new()
            },
            sip = me.sip,
            admin = me.admin,
            peer = me
                .peer_via
                .unwrap_or_else(|| SocketAddr::new(peer.ip, peer.sip)),
            dir = dir.display(),
            t1 = self.t1_ms,
            mode = self.mode,
            digest = self.dialog_digest,
            witnesses = self
                .witnesses
                .iter()
                .map(|w| format!("\"{w}\""))
                .collect::<Vec<_>>()
                .join(", "),
            parallel = self.parallel,
            qt = self.query_timeout_ms,
            fallback = self.fallback,
            pair_extra = if home == "main" {
                &self.pair_extra[0]
            } else {
                &self.pair_extra[1]
            },
        );
        for (name, pw) in &self.users {
            s.push_str(&format!(
                "\n[[users]]\nname = \"{name}\"\npassword = \"{pw}\"\n"
            ));
        }
        for t in &self.trunks {
            let prefixes: Vec<String> = t.prefixes.iter().map(|p| format!("\"{p}\"")).collect();
            s.push_str(&format!(
                "\n[[trunks]]\nname = \"{}\"\naddress = \"{}\"\nprefixes = [{}]\nstrip = {}\n\
                 dialog_query = {}\ntransport = \"{}\"\n",
                t.name,
                t.addr,
                prefixes.join(", "),
                t.strip,
                t.dialog_query,
                if t.tcp { "tcp" } else { "udp" },
            ));
        }
        s.push('\n');
        s.push_str(&self.extra);
        s
    }
}

struct NodePorts {
    ip: std::net::IpAddr,
    sip: u16,
    admin: u16,
    netns: Option<String>,
    peer_via: Option<SocketAddr>,
}

/// One `understudy` process.
#[derive(Debug)]
pub struct Node {
    /// `main` or `standby` (its home role).
    pub name: &'static str,
    child: Option<Child>,
    /// The network namespace it runs in (loopback tests: none).
    netns: Option<String>,
    /// The admin API's bearer token (required off loopback).
    token: Option<String>,
    /// The build it runs (default: this workspace's, [`binary`]).
    bin: Option<PathBuf>,
    cfg: PathBuf,
    /// SIP address (UDP and TCP).
    pub sip: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// The CDR database.
    pub cdr_path: PathBuf,
}

impl Node {
    /// Start the process (its output goes to `<config>.log`; `RUST_LOG` is `info` unless
    /// `UNDERSTUDY_TEST_LOG` says otherwise).
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.log_path()).context("log file")?;
        let level = std::env::var("UNDERSTUDY_TEST_LOG").unwrap_or_else(|_| "info".into());
        let bin = self.bin.clone().unwrap_or_else(|| binary().to_path_buf());
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.cfg)
            .env("RUST_LOG", level)
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .spawn()
            .context("spawn understudy")?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait (at most 10 s) until it exited; returns its exit status.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .context("kill -TERM")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not exit within 10 s of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every CDR in the node's database (stop it with [`Self::terminate`] first).
    pub fn cdrs(&self) -> Result<Vec<CdrRecord>> {
        if !self.cdr_path.exists() {
            return Ok(Vec::new());
        }
        understudy::cdr::read_all(&self.cdr_path).map_err(|e| anyhow!("reading CDRs: {e}"))
    }

    /// The CDRs once there are at least `n`, read for at most 10 s: the writer commits a
    /// batch a few milliseconds after a call ends, so a running node's file lags its calls.
    pub async fn wait_cdrs(&self, n: usize) -> Result<Vec<CdrRecord>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cdrs = self.cdrs()?;
            if cdrs.len() >= n || Instant::now() > deadline {
                return Ok(cdrs);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.cfg.with_extension("log")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines containing `needle`.
    pub fn log_grep(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    async fn http(&self, method: &str, path: &str) -> Result<String> {
        let (status, body) = self.http_status(method, path).await?;
        if status != 200 {
            bail!("{} {method} {path}: HTTP {status}: {body}", self.name);
        }
        Ok(body)
    }

    /// `method path` on the admin API: the HTTP status and body, whatever the status.
    pub async fn http_status(&self, method: &str, path: &str) -> Result<(u16, String)> {
        understudy::admin::http::request(
            &self.admin.to_string(),
            method,
            path,
            self.token.as_deref(),
            None,
        )
        .await
        .map_err(|e| anyhow!("{} {method} {path}: {e}", self.name))
    }

    /// `GET path` as text.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        self.http("GET", path).await
    }

    /// A sample from `/metrics`: the value of the line that starts with `series` followed
    /// by a space (e.g. `understudy_tcp_connections` or `x_total{reason="y"}`).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = self.get_text("/metrics").await?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .ok_or_else(|| anyhow!("{}: no metric {series} in /metrics", self.name))
    }

    /// Reads the sample `series` until `ok` holds, for at most 30 s; fails naming `what` was
    /// awaited, with the node's log tail. Counters move after the work they count is done (the
    /// CDR forwarder adds to its counter after PostgreSQL committed the rows, a gauge drops
    /// after the task that held it ended), so a test that saw the work reads until they catch up.
    pub async fn wait_metric(
        &self,
        series: &str,
        what: &str,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.metric(series).await?;
            if ok(v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "{series} = {v}: not {what}\nlog tail:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory of the process, in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let body = self.http("GET", path).await?;
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// `POST path`.
    pub async fn post(&self, path: &str) -> Result<String> {
        self.http("POST", path).await
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Value> {
        self.get_json("/status").await
    }

    /// Poll `/status` every 20 ms until `f` holds, at most `limit`; returns that status.
    pub async fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_json(limit, "/status", what, f).await
    }

    /// Poll `GET path` every 20 ms until `f` holds, at most `limit`; returns that answer.
    pub async fn wait_json(
        &self,
        limit: Duration,
        path: &str,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            match self.get_json(path).await {
                Ok(v) if f(&v) => return Ok(v),
                Ok(v) => last = Some(v),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: not {what} after {limit:?}; last {path}: {}\nlog tail:\n{}",
                    self.name,
                    last.map(|v| v.to_string()).unwrap_or_default(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the node is active and its takeover report is closed
    /// (`takeover.in_progress == false`); returns the report.
    pub async fn wait_takeover_done(&self, limit: Duration) -> Result<Value> {
        let v = self
            .wait_status(limit, "active with its takeover finished", |v| {
                v["role"] == "active"
                    && v["takeover"].is_object()
                    && v["takeover"]["in_progress"] == false
            })
            .await?;
        Ok(v["takeover"].clone())
    }

    /// The AORs in `/registrations` with at least one contact learned from the peer (or
    /// any origin when `from_peer` is false).
    pub async fn registered_aors(&self, from_peer: bool) -> Result<Vec<String>> {
        let v = self.get_json("/registrations").await?;
        let regs = v["registrations"]
            .as_array()
            .ok_or_else(|| anyhow!("/registrations: no array in {v}"))?;
        Ok(regs
            .iter()
            .filter(|r| {
                r["contacts"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| !from_peer || c["origin"].as_str() == Some("peer"))
                })
            })
            .filter_map(|r| r["aor"].as_str().map(str::to_string))
            .collect())
    }

    /// `GET /calls`, the `calls` array.
    pub async fn calls(&self) -> Result<Vec<Value>> {
        let v = self.get_json("/calls").await?;
        v["calls"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("/calls: no array in {v}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A main and a stand-by.
#[derive(Debug)]
pub struct Pair {
    /// The home main (active after start).
    pub main: Node,
    /// The home stand-by.
    pub standby: Node,
    label: String,
    dir: TempDir,
}

/// Where [`Pair`] copies both nodes' logs when it is dropped (the temporary directory goes).
pub fn log_dir() -> PathBuf {
    std::env::temp_dir().join("understudy-takeover-logs")
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.main.kill9();
        self.standby.kill9();
        let out = log_dir();
        let _ = std::fs::create_dir_all(&out);
        for n in [&self.main, &self.standby] {
            let _ = std::fs::copy(
                n.log_path(),
                out.join(format!("{}-{}.log", self.label, n.name)),
            );
        }
    }
}

impl Pair {
    /// Write both configs, start both processes and wait until the main is active, the
    /// stand-by is stand-by, and each sees the other alive.
    /// `label` names the copies of the logs kept in [`log_dir`].
    pub async fn start(label: &str, spec: &PairSpec) -> Result<Self> {
        let dir = TempDir::new()?;
        let ports = |site: Option<&Site>| match site {
            Some(s) => NodePorts {
                ip: s.ip,
                sip: 5060,
                admin: 8080,
                netns: Some(s.netns.clone()),
                peer_via: s.peer_via,
            },
            None => NodePorts {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                sip: free_port(),
                admin: free_port(),
                netns: None,
                peer_via: None,
            },
        };
        let mp = ports(spec.sites.as_ref().map(|[m, _]| m));
        let sp = ports(spec.sites.as_ref().map(|[_, s]| s));
        let node = |name: &'static str, me: &NodePorts, peer: &NodePorts| -> Result<Node> {
            let ndir = dir.path().join(name);
            std::fs::create_dir_all(&ndir)?;
            let cfg = dir.path().join(format!("{name}.toml"));
            std::fs::write(&cfg, spec.config(me, peer, name, &ndir))?;
            Ok(Node {
                name,
                child: None,
                netns: me.netns.clone(),
                token: me.netns.as_ref().map(|_| ADMIN_TOKEN.to_string()),
                bin: if name == "main" {
                    spec.binaries[0].clone()
                } else {
                    spec.binaries[1].clone()
                },
                cfg,
                sip: SocketAddr::new(me.ip, me.sip),
                admin: SocketAddr::new(me.ip, me.admin),
                cdr_path: ndir.join("cdr.sqlite"),
            })
        };
        let mut p = Pair {
            main: node("main", &mp, &sp)?,
            standby: node("standby", &sp, &mp)?,
            label: label.to_string(),
            dir,
        };
        p.main.start()?;
        p.standby.start()?;
        p.wait_settled().await?;
        Ok(p)
    }

    /// Wait until the main is active and the stand-by is stand-by, both seeing the peer.
    pub async fn wait_settled(&self) -> Result<()> {
        let limit = Duration::from_secs(10);
        self.main
            .wait_status(limit, "active with the peer alive", |v| {
                v["role"] == "active" && v["peer"]["state"] == "alive"
            })
            .await?;
        self.standby
            .wait_status(limit, "stand-by with the active peer alive", |v| {
                v["role"] == "standby"
                    && v["peer"]["state"] == "alive"
                    && v["peer"]["role"] == "active"
            })
            .await?;
        Ok(())
    }

    /// The temporary directory (configs, logs, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One `understudy` process without a peer: a generated config (users from `users`, then
/// `extra` TOML appended), in its own temporary directory.
#[derive(Debug)]
pub struct Solo {
    /// The process.
    pub node: Node,
    dir: TempDir,
}

impl Solo {
    /// Test UAs for configured users `names`, each registered at this node with digest
    /// auth (password [`password_of`]).
    pub async fn registered(&self, names: &[&str]) -> Result<Vec<crate::Ua>> {
        let mut out = Vec::new();
        for name in names {
            let mut ua = crate::Ua::bind(name).await?;
            ua.set_server(self.node.sip);
            ua.set_password(&password_of(name));
            let r = ua.register().await?;
            anyhow::ensure!(
                r.status == 200,
                "{name} registers: {} {}",
                r.status,
                r.reason
            );
            out.push(ua);
        }
        Ok(out)
    }

    /// Write the config, start the process and wait until `/status` answers.
    pub async fn start(users: &[&str], extra: &str) -> Result<Self> {
        Self::start_with(users, "", extra).await
    }

    /// [`Self::start`] with more `[node]` keys (`node_extra`, TOML lines).
    pub async fn start_with(users: &[&str], node_extra: &str, extra: &str) -> Result<Self> {
        Self::start_full(users, node_extra, "", extra).await
    }

    /// [`Self::start_with`], with `cdr_extra` (more `[cdr]` keys, e.g. `url`) in the `[cdr]`
    /// section.
    pub async fn start_full(
        users: &[&str],
        node_extra: &str,
        cdr_extra: &str,
        extra: &str,
    ) -> Result<Self> {
        let dir = TempDir::new()?;
        let sip = free_port();
        let admin = free_port();
        let ndir = dir.path().join("solo");
        std::fs::create_dir_all(&ndir)?;
        let mut text = format!(
            "[node]\nname = \"solo\"\nsip_udp = \"127.0.0.1:{sip}\"\nsip_tcp = \"127.0.0.1:{sip}\"\n\
             domain = \"pbx.local\"\n{node_extra}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [state]\ndir = \"{d}\"\n[cdr]\npath = \"{d}/cdr.sqlite\"\n{cdr_extra}\n",
            d = ndir.display()
        );
        for u in users {
            text.push_str(&format!(
                "\n[[users]]\nname = \"{u}\"\npassword = \"{}\"\n",
                password_of(u)
            ));
        }
        text.push('\n');
        text.push_str(extra);
        let cfg = dir.path().join("solo.toml");
        std::fs::write(&cfg, text)?;
        let mut node = Node {
            name: "solo",
            child: None,
            netns: None,
            token: None,
            bin: None,
            cfg,
            sip: SocketAddr::from(([127, 0, 0, 1], sip)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            cdr_path: ndir.join("cdr.sqlite"),
        };
        node.start()?;
        // Up: a node without a pair is active at once; one with a [pair] section (extra)
        // may be anything.
        node.wait_status(Duration::from_secs(10), "up", |v| {
            v["role"] == "active" || (v["role"].is_string() && extra.contains("[pair]"))
        })
        .await?;
        Ok(Self { node, dir })
    }

    /// The temporary directory (config, log, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
