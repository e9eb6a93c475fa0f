//! The typed configuration sections, their defaults, and the small enums with their TOML names.

use crate::sip::digest::Algorithm;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// `node.domain` when the file does not set it.
pub(super) const DEFAULT_DOMAIN: &str = "pbx.local";
/// The CDR database file name inside the state directory (default `cdr.path`).
pub(super) const CDR_FILE_NAME: &str = "cdr.sqlite";
/// The SIP port used for a trunk address without a port.
/// The SIP port when none is given.
pub const DEFAULT_SIP_PORT: u16 = 5060;

/// A node's configured (home) role; what it does now can differ after a takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeRole {
    /// `"main"`: becomes active at start-up unless an active peer is seen.
    Main,
    /// `"standby"`: watches the main and takes over only when its keep-alives stop.
    Standby,
}

/// `[node]`: identity and SIP listen addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// `name` (required): shown in status, logs and CDRs.
    pub name: String,
    /// `home_role`: `"main"` (default) or `"standby"`.
    pub home_role: HomeRole,
    /// `sip_udp`: UDP listen address; at least one of `sip_udp` / `sip_tcp` is required.
    pub sip_udp: Option<SocketAddr>,
    /// `sip_tcp`: TCP listen address.
    pub sip_tcp: Option<SocketAddr>,
    /// `sip_tls`: TLS listen address (needs `tls_cert` and `tls_key`).
    pub sip_tls: Option<SocketAddr>,
    /// `tls_cert`: our certificate chain (PEM), for the TLS listener and as a client
    /// certificate towards TLS trunks.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// `tls_ca`: the CA certificates (PEM) trusted for TLS trunks; the public web roots when
    /// unset.
    pub tls_ca: Option<PathBuf>,
    /// `advertise`: `"host:port"` put in Via and Contact instead of the listen address.
    pub advertise: Option<String>,
    /// `domain`: the SIP domain of users (default `"pbx.local"`).
    pub domain: String,
    /// `force_rport`: reply to the packet's source port even without `rport` (default true).
    pub force_rport: bool,
}

/// `[admin]`: the HTTP admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `listen` (default `127.0.0.1:8060`).
    pub listen: SocketAddr,
    /// `token`: bearer token; required when `listen` is not a loopback address.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8060),
            token: None,
        }
    }
}

/// `[state]`: small durable state (the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// `dir` (default `state/<node.name>`).
    pub dir: PathBuf,
}

/// `pair.mode`: how calls survive a takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairMode {
    /// `"hot"`: query endpoints for their dialogs and rebuild the calls.
    Hot,
    /// `"cold"`: tell endpoints to reset; calls are lost.
    Cold,
}

/// `[pair]`: the peer node and the keep-alive that watches it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairConfig {
    /// `peer` (required): the other node's SIP address.
    pub peer: SocketAddr,
    /// `secret` (required, at least 8 characters): authenticates the pair link.
    pub secret: String,
    /// `keepalive_ms`: interval between keep-alive OPTIONS (default 200, at least 10).
    pub keepalive_ms: u64,
    /// `missed_keepalives`: how many missed keep-alives start a probe (default 3, at least 1).
    pub missed_keepalives: u32,
    /// `probe_timeout_ms`: how long the final probe waits (default 200, at least 10).
    pub probe_timeout_ms: u64,
    /// `mode`: `"hot"` (default) or `"cold"`.
    pub mode: PairMode,
    /// `preempt`: the home main takes its role back when it returns (default false).
    pub preempt: bool,
    /// `preempt_after_s`: stable keep-alive time before preempting (default 60).
    pub preempt_after_s: u64,
    /// `witnesses`: addresses that must answer OPTIONS before a takeover (default none).
    pub witnesses: Vec<SocketAddr>,
    /// `redirect_when_standby`: answer new INVITEs with 302 to the active node (default false).
    pub redirect_when_standby: bool,
    /// `test_hooks`: enable `POST /test/partition` on the admin API, which drops the peer's
    /// packets to simulate a network split (tests only; default false).
    pub test_hooks: bool,
    /// `dialog_digest`: carry the identifiers of call legs on the keep-alives so the stand-by
    /// can re-bind calls without asking the endpoints (default true).
    pub dialog_digest: bool,
    /// `ping_endpoints`: OPTIONS-ping endpoints while standby (default false).
    pub ping_endpoints: bool,
    /// `max_clock_skew_ms`: a pair message signed longer ago (or later) than this by the
    /// peer's clock is refused as stale (default 5000; the nodes' clocks must be synchronised,
    /// e.g. by NTP, to well within it).
    pub max_clock_skew_ms: u64,
    /// `accept_v1`: accept a peer that signs as version 1 (no freshness) — only while a pair
    /// is upgraded one node at a time (default false).
    pub accept_v1: bool,
}

/// `takeover.fallback`: what to do with calls a hot takeover cannot rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `"cold"`: reset those endpoints as in cold mode.
    Cold,
    /// `"none"`: leave them alone.
    None,
}

/// `[takeover]`: the endpoint queries of a hot takeover.
#[derive(Debug, Clone, PartialEq)]
pub struct TakeoverConfig {
    /// `parallel`: queries in flight at once (default 64, at least 1).
    pub parallel: usize,
    /// `query_timeout_ms`: how long to wait for one endpoint's answer (default 2000).
    pub query_timeout_ms: u64,
    /// `fallback`: `"none"` (default: never reset an endpoint as a side effect) or `"cold"`.
    pub fallback: Fallback,
}

impl Default for TakeoverConfig {
    fn default() -> Self {
        Self {
            parallel: 64,
            query_timeout_ms: 2000,
            fallback: Fallback::None,
        }
    }
}

/// `[registrar]`: REGISTER handling.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrarConfig {
    /// `min_expires`: shorter requests get 423 (default 60).
    pub min_expires: u32,
    /// `max_expires`: longer requests are cut down to this (default 3600).
    pub max_expires: u32,
    /// `default_expires`: used when the request has no expiry (default 3600).
    pub default_expires: u32,
    /// `realm`: digest realm. Loading fills in `node.domain` when absent, so this is `Some`
    /// for a loaded config; see also `Config::realm`.
    pub realm: Option<String>,
    /// `digest_algorithms`: the challenges offered, in order (default `["MD5"]`: several
    /// deployed clients refuse a 401 that lists any algorithm they do not know, so SHA-256
    /// (RFC 8760) is opt-in: `["SHA-256", "MD5"]`). Credentials in either are always accepted.
    pub digest_algorithms: Vec<Algorithm>,
    /// `nat_keepalive_s`: every so many seconds, an OPTIONS to each phone registered here
    /// from behind NAT, over its flow, so that its router keeps the flow open (default 20;
    /// 0: off).
    pub nat_keepalive_s: u32,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            realm: None,
            digest_algorithms: vec![Algorithm::Md5],
            nat_keepalive_s: 20,
        }
    }
}

/// `[timers]`: RFC 3261 §17 timer bases.
#[derive(Debug, Clone, PartialEq)]
pub struct TimersConfig {
    /// `t1_ms`: RTT estimate, T1 (default 500, at least 1).
    pub t1_ms: u64,
    /// `t2_ms`: maximum retransmit interval, T2 (default 4000, at least `t1_ms`).
    pub t2_ms: u64,
    /// `t4_ms`: maximum time a message stays in the network, T4 (default 5000).
    pub t4_ms: u64,
}

impl Default for TimersConfig {
    fn default() -> Self {
        Self {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
        }
    }
}

/// `[calls]`: call limits and RFC 4028 session timers.
#[derive(Debug, Clone, PartialEq)]
pub struct CallsConfig {
    /// `session_expires_s`: Session-Expires we ask for (default 1800, at least `min_se_s`).
    pub session_expires_s: u32,
    /// `min_se_s`: smallest session interval we accept (default 90).
    pub min_se_s: u32,
    /// `max_calls`: new calls beyond this get 503 (default 100000).
    pub max_calls: usize,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            session_expires_s: 1800,
            min_se_s: 90,
            max_calls: 100_000,
        }
    }
}

/// `[limits]`: how much one peer, or a flood, can make the node keep. Each bound has a policy
/// (refuse, evict the oldest, or 503) and a counter in `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// `tcp_connections`: open SIP TCP connections, accepted and outgoing (default 10000);
    /// beyond it a new connection is closed at once.
    pub tcp_connections: usize,
    /// `tcp_idle_s`: a TCP connection with no traffic for this long is closed (default 600).
    pub tcp_idle_s: u64,
    /// `contacts_per_aor`: bindings one AOR may hold (default 10); a REGISTER adding one
    /// more replaces the oldest.
    pub contacts_per_aor: usize,
    /// `subscriptions`: dialog-event (BLF) subscriptions to our users (default 10000);
    /// beyond it SUBSCRIBE gets 503.
    pub subscriptions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            tcp_connections: 10_000,
            tcp_idle_s: 600,
            contacts_per_aor: 10,
            subscriptions: 10_000,
        }
    }
}

/// One `[[users]]` entry: a digest-authenticated user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserConfig {
    /// `name` (required): the user part, characters `A-Z a-z 0-9 . _ - +`.
    pub name: String,
    /// `password`: may be empty only for a user with a static `contact`.
    pub password: String,
    /// `contact`: a static binding (`sip:` URI) for a device that does not register.
    pub contact: Option<String>,
    /// `reset_event`: Event header of the cold-mode reset NOTIFY for this device.
    pub reset_event: Option<String>,
    /// `priority`: lower first during takeover (default 0).
    pub priority: i32,
}

/// `trunks[].transport`: how we send to a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkTransport {
    /// `"udp"` (default).
    Udp,
    /// `"tcp"`.
    Tcp,
    /// `"tls"`: TLS over TCP; the trunk's certificate must name its host (or IP).
    Tls,
}

/// One `[[trunks]]` entry: an IP-authenticated peer (gateway, carrier, load generator).
#[derive(Debug, Clone, PartialEq)]
pub struct TrunkConfig {
    /// `name` (required, unique).
    pub name: String,
    /// `address` (required): `"ip:port"`, or `"ip"` for any port of that IP.
    pub address: TrunkAddress,
    /// `prefixes`: numbers starting with one of these route here (longest prefix wins).
    pub prefixes: Vec<String>,
    /// `strip`: leading characters removed from the number before sending (default 0).
    pub strip: usize,
    /// `dialog_query`: ask this trunk for its dialogs on hot takeover (default false).
    pub dialog_query: bool,
    /// `priority`: lower first during takeover (default 0).
    pub priority: i32,
    /// `reset_event`: Event header of the cold-mode reset NOTIFY for this trunk.
    pub reset_event: Option<String>,
    /// `transport`: `"udp"` (default) or `"tcp"`.
    pub transport: TrunkTransport,
    /// `max_cps`: at most this many re-binds per second to this trunk at a takeover (a
    /// carrier's calls-per-second limit); none by default.
    pub max_cps: Option<u32>,
    /// `username`, `password`, `realm`: what we answer the trunk's digest challenges with
    /// (REGISTER, INVITE and in-dialog requests).
    pub credentials: Option<TrunkCredentials>,
    /// `register = true`: the active node registers to the trunk (`register_expires`,
    /// `contact_user`).
    pub register: Option<TrunkRegister>,
    /// The host name when `address` names one (RFC 3263: SRV without a port, else A/AAAA);
    /// then `address.ip` is unspecified and only `address.port` counts.
    pub host: Option<String>,
}

/// `capture.hep_id` when the file does not set it.
pub const DEFAULT_HEP_ID: u32 = 2001;

/// `[capture]`: a copy of every SIP message to a HEP capture server (Homer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// `hep`: the capture server's `ip:port` (UDP); no capture when unset.
    pub hep: Option<SocketAddr>,
    /// `hep_id`: this node's capture agent id (default 2001).
    pub hep_id: u32,
    /// `password`: the capture server's password (HEP auth key chunk), if it wants one.
    pub password: Option<String>,
}

/// `[dns]`: how trunk host names are resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// `servers`: DNS servers (`"ip"` or `"ip:port"`); the system's when empty.
    pub servers: Vec<SocketAddr>,
}

impl TrunkConfig {
    /// Where to send requests for a trunk configured by IP: its port, else 5060 (5061 for
    /// TLS, RFC 3263 §4.2).
    pub fn target(&self) -> SocketAddr {
        let default = match self.transport {
            TrunkTransport::Tls => 5061,
            _ => DEFAULT_SIP_PORT,
        };
        SocketAddr::new(self.address.ip, self.address.port.unwrap_or(default))
    }

    /// The address as configured: `host`, `host:port`, `ip` or `ip:port`.
    pub fn address_text(&self) -> String {
        match (&self.host, self.address.port) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.clone(),
            (None, _) => self.address.to_string(),
        }
    }
}

/// Credentials for a trunk's digest challenges.
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkCredentials {
    /// `username`.
    pub username: String,
    /// `password`.
    pub password: String,
    /// `realm`: answer only challenges of this realm (any realm when unset).
    pub realm: Option<String>,
}

impl std::fmt::Debug for TrunkCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkCredentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("realm", &self.realm)
            .finish()
    }
}

/// Outbound registration to a trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkRegister {
    /// `register_expires`: the expiry we ask for, seconds (default 3600).
    pub expires: u32,
    /// `contact_user`: the user part of our Contact (default: `username`).
    pub contact_user: String,
}

/// A trunk's address: an IP, with or without a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrunkAddress {
    /// The trunk's IP address.
    pub ip: IpAddr,
    /// The port; `None` accepts requests from any port of `ip` and sends to 5060.
    pub port: Option<u16>,
}

impl TrunkAddress {
    /// Whether a request from `src` comes from this trunk. IPv4-mapped IPv6 sources (from a
    /// dual-stack socket) match the IPv4 address.
    pub fn matches(&self, src: SocketAddr) -> bool {
        self.ip.to_canonical() == src.ip().to_canonical()
            && self.port.is_none_or(|port| port == src.port())
    }

    /// Where to send requests for this trunk (port 5060 when none is configured).
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(DEFAULT_SIP_PORT))
    }
}

impl FromStr for TrunkAddress {
    type Err = String;

    /// Parses `"127.0.0.1:5070"`, `"127.0.0.1"`, `"[::1]:5070"` or `"::1"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("port 0 in {s:?}: give a port or leave it out"));
            }
            return Ok(Self {
                ip: addr.ip(),
                port: Some(addr.port()),
            });
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(Self { ip, port: None }),
            Err(_) => Err(format!(
                "invalid trunk address {s:?}: expected \"ip:port\" or \"ip\", e.g. \"127.0.0.1:5070\""
            )),
        }
    }
}

impl fmt::Display for TrunkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.ip, port)),
            None => write!(f, "{}", self.ip),
        }
    }
}

/// `media.mode`: whether RTP flows through us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaMode {
    /// `"bypass"` (default): SDP passes unchanged, RTP flows between endpoints.
    Bypass,
    /// `"relay"`: we rewrite SDP and relay RTP through our own ports.
    Relay,
}

/// `[media]`: RTP handling.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// `mode`: `"bypass"` (default) or `"relay"`.
    pub mode: MediaMode,
    /// `rtp_ports`: `"LOW-HIGH"` inclusive relay port range (default `"20000-29999"`).
    pub rtp_ports: (u16, u16),
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            mode: MediaMode::Bypass,
            rtp_ports: (20000, 29999),
        }
    }
}

/// `[cdr]`: call detail records in SQLite.
#[derive(Debug, Clone, PartialEq)]
pub struct CdrConfig {
    /// `path` (default `<state.dir>/cdr.sqlite`).
    pub path: PathBuf,
    /// `enabled` (default true).
    pub enabled: bool,
    /// `url`: PostgreSQL to copy the records to (`postgres://user:password@host:port/db`);
    /// the SQLite file at `path` is then the spool.
    pub url: Option<String>,
}

/// The parsing side of a config enum's file names, used by the loader.
pub(super) trait TomlName: Sized {
    /// The value called `name` in the config file.
    fn from_toml_name(name: &str) -> Option<Self>;

    /// The accepted names, for error messages: `"hot" or "cold"`.
    fn expected() -> String;
}

/// Gives a config enum its file names: `as_str` and `Display` (public, e.g. for status
/// output), and [`TomlName`] for the loader.
macro_rules! toml_names {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            /// The name of this value in the config file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }

        impl TomlName for $ty {
            fn from_toml_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)+
                    _ => None,
                }
            }

            fn expected() -> String {
                [$(concat!("\"", $name, "\"")),+].join(" or ")
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

toml_names!(HomeRole { "main" => Main, "standby" => Standby });
toml_names!(PairMode { "hot" => Hot, "cold" => Cold });
toml_names!(Fallback { "cold" => Cold, "none" => None });
toml_names!(TrunkTransport { "udp" => Udp, "tcp" => Tcp, "tls" => Tls });
toml_names!(MediaMode { "bypass" => Bypass, "relay" => Relay });
