//! The TOML configuration file: typed sections, defaults, and validation whose errors name the
//! file, the key and the reason (DESIGN.md "Config file").
//!
//! Loading runs in three steps, each in its own file:
//! 1. `raw`: serde structs with `deny_unknown_fields`, mirroring the file. TOML syntax errors,
//!    unknown keys and wrong value types stop here, reported with the key path and line.
//! 2. `raw`: conversion to the typed [`Config`], applying defaults and parsing addresses, enum
//!    names and the RTP port range. Every bad value is collected, not just the first.
//! 3. `validate`: rules across keys (ranges, duplicates, the pair secret, the admin token).
//!
//! [`Config::shared_digest`] fingerprints what both nodes of a pair must agree on; it rides on
//! every keep-alive so that a mismatch is visible.

mod digest;
mod locate;
mod raw;
mod types;
mod validate;

pub use types::{
    AdminConfig, CallsConfig, CaptureConfig, CdrConfig, DEFAULT_SIP_PORT, DnsConfig, Fallback,
    HomeRole, LimitsConfig, MediaConfig, MediaMode, NodeConfig, PairConfig, PairMode,
    RegistrarConfig, StateConfig, TakeoverConfig, TimersConfig, TrunkAddress, TrunkConfig,
    TrunkCredentials, TrunkRegister, TrunkTransport, UserConfig,
};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// A whole node configuration, as loaded from one TOML file (see `config/*.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[node]`: who this node is and where it listens for SIP (required section).
    pub node: NodeConfig,
    /// `[admin]`: the HTTP admin API.
    pub admin: AdminConfig,
    /// `[state]`: the directory for the epoch and other small durable state.
    pub state: StateConfig,
    /// `[pair]`: the peer node; `None` means a single node that is always active.
    pub pair: Option<PairConfig>,
    /// `[takeover]`: how the stand-by queries endpoints when it takes over.
    pub takeover: TakeoverConfig,
    /// `[registrar]`: REGISTER expiry bounds and the digest realm.
    pub registrar: RegistrarConfig,
    /// `[timers]`: RFC 3261 transaction timer bases.
    pub timers: TimersConfig,
    /// `[calls]`: session timers and the call limit.
    pub calls: CallsConfig,
    /// `[limits]`: bounds on tables and queues.
    pub limits: LimitsConfig,
    /// `[[users]]`: digest-authenticated users, in file order.
    pub users: Vec<UserConfig>,
    /// `[[trunks]]`: IP-authenticated peers, in file order.
    pub trunks: Vec<TrunkConfig>,
    /// `[media]`: RTP bypass or relay.
    pub media: MediaConfig,
    /// `[cdr]`: call detail records.
    pub cdr: CdrConfig,
    /// `[dns]`: resolving trunk host names.
    pub dns: DnsConfig,
    /// `[capture]`: HEP copies of the SIP traffic.
    pub capture: CaptureConfig,
}

/// One configuration problem: which file, which key (e.g. `users[1].name`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file label given to the loader (usually the path).
    pub file: String,
    /// The key path, like `pair.secret` or `trunks[0].address`; empty for file-level problems.
    pub key: String,
    /// What is wrong, with `line N` when the key could be found in the file.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The first error about exactly `key`, if any.
    pub fn find(&self, key: &str) -> Option<&ConfigError> {
        self.0.iter().find(|e| e.key == key)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one file while loading or validating.
#[derive(Debug)]
struct Errors {
    file: String,
    list: Vec<ConfigError>,
}

impl Errors {
    fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            list: Vec::new(),
        }
    }

    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Appends `later`, dropping errors about a key already reported (or inside a section
    /// already reported), which are usually consequences of the first error.
    fn merge_unreported(&mut self, later: Vec<ConfigError>) {
        let reported = self.list.len();
        for e in later {
            let covered = self
                .list
                .iter()
                .take(reported)
                .any(|seen| key_covers(&seen.key, &e.key));
            if !covered {
                self.list.push(e);
            }
        }
    }

    fn into_result(self) -> Result<(), ConfigErrors> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.list))
        }
    }
}

/// A TOML error message on one line (they can span several).
fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}

/// Whether an error about `outer` also covers `inner` (`node` covers `node.name`).
fn key_covers(outer: &str, inner: &str) -> bool {
    match inner.strip_prefix(outer) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

impl Config {
    /// Parses and validates a configuration from TOML text. `file_label` names the source in
    /// errors (usually the path). All errors found are returned, not just the first.
    pub fn from_toml_str(text: &str, file_label: &str) -> Result<Self, ConfigErrors> {
        let located = locate::Locator::new(text);
        let raw: raw::RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let (key, line) = match e.span() {
                    Some(span) => located.at_offset(span.start),
                    None => (String::new(), None),
                };
                let message = one_line(e.message());
                let reason = match line {
                    Some(n) => format!("{message} (line {n})"),
                    None => message,
                };
                return Err(ConfigErrors(vec![ConfigError {
                    file: file_label.to_owned(),
                    key,
                    reason,
                }]));
            }
        };
        let mut errors = Errors::new(file_label);
        let config = raw::build(raw, &mut errors);
        let semantic = config.validate(file_label).err().map(|e| e.0);
        errors.merge_unreported(semantic.unwrap_or_default());
        let mut lines: Vec<(Option<usize>, ConfigError)> = errors
            .list
            .drain(..)
            .map(|mut e| {
                let line = located.line_of_key(&e.key);
                if let Some(n) = line {
                    e.reason = format!("{} (line {n})", e.reason);
                }
                (line, e)
            })
            .collect();
        // File order; errors with no line (missing sections) last.
        lines.sort_by_key(|(line, _)| line.unwrap_or(usize::MAX));
        errors.list = lines.into_iter().map(|(_, e)| e).collect();
        errors.into_result().map(|()| config)
    }

    /// Reads, parses and validates the file at `path`. An unreadable file is an error that
    /// names the file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let label = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml_str(&text, &label),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: label,
                key: String::new(),
                reason: format!("cannot read the config file: {e}"),
            }])),
        }
    }

    /// The configuration used when no file is given: a single node (no `[pair]`) named
    /// `understudy` on 127.0.0.1:5060 (UDP and TCP), domain `pbx.local`, admin API on
    /// 127.0.0.1:8060, state in `state/understudy`, and demo users `alice` / `alice-secret`
    /// and `bob` / `bob-secret`.
    pub fn builtin_default() -> Self {
        let sip = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060);
        let domain = types::DEFAULT_DOMAIN.to_owned();
        let state_dir = PathBuf::from("state/understudy");
        let demo_user = |name: &str, password: &str| UserConfig {
            name: name.to_owned(),
            password: password.to_owned(),
            contact: None,
            reset_event: None,
            priority: 0,
        };
        Self {
            node: NodeConfig {
                name: "understudy".to_owned(),
                home_role: HomeRole::Main,
                sip_udp: Some(sip),
                sip_tcp: Some(sip),
                sip_tls: None,
                tls_cert: None,
                tls_key: None,
                tls_ca: None,
                advertise: None,
                domain: domain.clone(),
                force_rport: true,
            },
            admin: AdminConfig::default(),
            cdr: CdrConfig {
                path: state_dir.join(types::CDR_FILE_NAME),
                enabled: true,
                url: None,
            },
            state: StateConfig { dir: state_dir },
            dns: DnsConfig::default(),
            capture: CaptureConfig {
                hep: None,
                hep_id: types::DEFAULT_HEP_ID,
                password: None,
            },
            pair: None,
            takeover: TakeoverConfig::default(),
            registrar: RegistrarConfig {
                realm: Some(domain),
                ..RegistrarConfig::default()
            },
            timers: TimersConfig::default(),
            calls: CallsConfig::default(),
            limits: LimitsConfig::default(),
            users: vec![
                demo_user("alice", "alice-secret"),
                demo_user("bob", "bob-secret"),
            ],
            trunks: Vec::new(),
            media: MediaConfig::default(),
        }
    }

    /// Checks the rules that span keys (ranges, duplicates, the pair secret, the admin token)
    /// on an already typed configuration, e.g. one built or modified in code. Loading runs
    /// this too.
    pub fn validate(&self, file_label: &str) -> Result<(), ConfigErrors> {
        let mut errors = Errors::new(file_label);
        validate::check(self, &mut errors);
        errors.into_result()
    }

    /// Hex SHA-256 over a canonical serialization of what both nodes of a pair must share:
    /// users, trunks, registrar, takeover, calls, timers, `media.mode`, `pair.mode`,
    /// `pair.secret` and `node.domain`. Node name, addresses, admin, state, CDR and
    /// `pair.peer` are per node and excluded. Users are taken in name order (their order has
    /// no meaning); trunks in file order (it breaks routing ties).
    pub fn shared_digest(&self) -> String {
        digest::shared_digest(self)
    }

    /// Each shared setting under a key naming its item (`user[alice].password`) with a
    /// keyed hash of its value, so that the nodes of a pair can say which settings differ.
    pub fn setting_digests(&self, secret: &[u8]) -> std::collections::BTreeMap<String, String> {
        digest::setting_digests(self, secret)
    }

    /// The realm for digest challenges: `registrar.realm`, else `node.domain`.
    pub fn realm(&self) -> &str {
        self.registrar.realm.as_deref().unwrap_or(&self.node.domain)
    }

    /// The configured user with exactly this name (SIP user parts are case-sensitive).
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The trunk that requests from `src` belong to. A trunk whose address has a port wins
    /// over one that accepts any port of the same IP; otherwise the first in file order.
    pub fn trunk_for_source(&self, src: SocketAddr) -> Option<&TrunkConfig> {
        // Trunks named by a host are matched by what it resolved to (the server's DNS cache).
        let by_ip = || self.trunks.iter().filter(|t| t.host.is_none());
        let exact = by_ip().find(|t| t.address.port.is_some() && t.address.matches(src));
        exact.or_else(|| by_ip().find(|t| t.address.matches(src)))
    }

    /// The trunk for a dialled number: the one with the longest prefix that `user_part` starts
    /// with (ties: lower `priority`, then file order), and the number with the trunk's `strip`
    /// leading characters removed.
    pub fn trunk_for_number(&self, user_part: &str) -> Option<(&TrunkConfig, String)> {
        let mut best: Option<(&TrunkConfig, usize)> = None;
        for trunk in &self.trunks {
            for prefix in &trunk.prefixes {
                if !user_part.starts_with(prefix.as_str()) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((chosen, len)) => {
                        prefix.len() > len
                            || (prefix.len() == len && trunk.priority < chosen.priority)
                    }
                };
                if better {
                    best = Some((trunk, prefix.len()));
                }
            }
        }
        best.map(|(trunk, _)| (trunk, user_part.chars().skip(trunk.strip).collect()))
    }
}

#[cfg(test)]
mod tests;
