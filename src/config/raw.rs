//! The file as written (serde, `deny_unknown_fields`) and its conversion to the typed
//! [`Config`]: defaults, and parsing of addresses, enum names and the port range. Bad values
//! are collected in [`Errors`] and replaced by defaults so that conversion always finishes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::sip::digest::Algorithm;
use serde::Deserialize;

use super::types::{CDR_FILE_NAME, DEFAULT_DOMAIN, TomlName};
use super::{
    AdminConfig, CallsConfig, CaptureConfig, CdrConfig, Config, DnsConfig, Errors, HomeRole,
    LimitsConfig, MediaConfig, MediaMode, NodeConfig, PairConfig, PairMode, RegistrarConfig,
    StateConfig, TakeoverConfig, TimersConfig, TrunkAddress, TrunkConfig, TrunkCredentials,
    TrunkRegister, TrunkTransport, UserConfig,
};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    node: Option<RawNode>,
    admin: Option<RawAdmin>,
    state: Option<RawState>,
    pair: Option<RawPair>,
    takeover: Option<RawTakeover>,
    registrar: Option<RawRegistrar>,
    timers: Option<RawTimers>,
    calls: Option<RawCalls>,
    limits: Option<RawLimits>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    trunks: Vec<RawTrunk>,
    media: Option<RawMedia>,
    cdr: Option<RawCdr>,
    dns: Option<RawDns>,
    capture: Option<RawCapture>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    hep: Option<String>,
    hep_id: Option<u32>,
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    servers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    home_role: Option<String>,
    sip_udp: Option<String>,
    sip_tcp: Option<String>,
    sip_tls: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    advertise: Option<String>,
    domain: Option<String>,
    force_rport: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    peer: Option<String>,
    secret: Option<String>,
    keepalive_ms: Option<u64>,
    missed_keepalives: Option<u32>,
    probe_timeout_ms: Option<u64>,
    mode: Option<String>,
    preempt: Option<bool>,
    preempt_after_s: Option<u64>,
    #[serde(default)]
    witnesses: Vec<String>,
    redirect_when_standby: Option<bool>,
    test_hooks: Option<bool>,
    dialog_digest: Option<bool>,
    ping_endpoints: Option<bool>,
    max_clock_skew_ms: Option<u64>,
    accept_v1: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTakeover {
    parallel: Option<usize>,
    query_timeout_ms: Option<u64>,
    fallback: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistrar {
    min_expires: Option<u32>,
    max_expires: Option<u32>,
    default_expires: Option<u32>,
    realm: Option<String>,
    digest_algorithms: Option<Vec<String>>,
    nat_keepalive_s: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimers {
    t1_ms: Option<u64>,
    t2_ms: Option<u64>,
    t4_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    session_expires_s: Option<u32>,
    min_se_s: Option<u32>,
    max_calls: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    tcp_connections: Option<usize>,
    tcp_idle_s: Option<u64>,
    contacts_per_aor: Option<usize>,
    subscriptions: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Option<String>,
    password: Option<String>,
    contact: Option<String>,
    reset_event: Option<String>,
    priority: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    name: Option<String>,
    address: Option<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    strip: Option<usize>,
    dialog_query: Option<bool>,
    priority: Option<i32>,
    reset_event: Option<String>,
    transport: Option<String>,
    max_cps: Option<u32>,
    username: Option<String>,
    password: Option<String>,
    realm: Option<String>,
    register: Option<bool>,
    register_expires: Option<u32>,
    contact_user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    mode: Option<String>,
    rtp_ports: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCdr {
    path: Option<PathBuf>,
    enabled: Option<bool>,
    url: Option<String>,
}

/// Converts the file to a typed config. Every problem goes to `errors`; the returned config
/// then holds defaults in place of the bad values and must not be used.
pub(super) fn build(raw: RawConfig, errors: &mut Errors) -> Config {
    let node = match raw.node {
        Some(node) => build_node(node, errors),
        None => {
            errors.push("node", "required section [node] is missing");
            build_node(RawNode::default(), errors)
        }
    };
    let admin = build_admin(raw.admin.unwrap_or_default(), errors);
    let state = StateConfig {
        dir: raw
            .state
            .and_then(|s| s.dir)
            .unwrap_or_else(|| PathBuf::from("state").join(&node.name)),
    };
    let pair = raw.pair.map(|pair| build_pair(pair, errors));
    let takeover = build_takeover(raw.takeover.unwrap_or_default(), errors);
    let registrar = build_registrar(errors, raw.registrar.unwrap_or_default(), &node.domain);
    let timers = build_timers(raw.timers.unwrap_or_default());
    let calls = build_calls(raw.calls.unwrap_or_default());
    let limits = build_limits(raw.limits.unwrap_or_default());
    let users = raw.users.into_iter().enumerate();
    let users = users.map(|(i, u)| build_user(i, u, errors)).collect();
    let trunks = raw.trunks.into_iter().enumerate();
    let trunks = trunks.map(|(i, t)| build_trunk(i, t, errors)).collect();
    let media = build_media(raw.media.unwrap_or_default(), errors);
    let cdr = raw.cdr.unwrap_or_default();
    let url = cdr.url.filter(|u| !u.is_empty());
    if let Some(u) = &url
        && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
    {
        errors.push(
            "cdr.url",
            "expected \"postgres://user:password@host:port/database\"".to_string(),
        );
    }
    let cdr = CdrConfig {
        path: cdr.path.unwrap_or_else(|| state.dir.join(CDR_FILE_NAME)),
        enabled: cdr.enabled.unwrap_or(true),
        url,
    };
    let mut servers = Vec::new();
    for (i, s) in raw.dns.unwrap_or_default().servers.iter().enumerate() {
        let parsed = s
            .parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(a) => servers.push(a),
            Err(_) => errors.push(
                format!("dns.servers[{i}]"),
                format!("{s:?} is not \"ip\" or \"ip:port\""),
            ),
        }
    }
    let dns = DnsConfig { servers };
    let capture = raw.capture.unwrap_or_default();
    let capture = CaptureConfig {
        hep: capture
            .hep
            .and_then(|s| socket_addr(errors, "capture.hep", &s)),
        hep_id: capture.hep_id.unwrap_or(super::types::DEFAULT_HEP_ID),
        password: capture.password.filter(|p| !p.is_empty()),
    };
    Config {
        capture,
        node,
        admin,
        state,
        dns,
        pair,
        takeover,
        registrar,
        timers,
        calls,
        limits,
        users,
        trunks,
        media,
        cdr,
    }
}

fn build_node(raw: RawNode, errors: &mut Errors) -> NodeConfig {
    NodeConfig {
        name: raw.name.unwrap_or_default(),
        home_role: enum_value(errors, "node.home_role", raw.home_role, HomeRole::Main),
        sip_udp: raw
            .sip_udp
            .and_then(|s| socket_addr(errors, "node.sip_udp", &s)),
        sip_tcp: raw
            .sip_tcp
            .and_then(|s| socket_addr(errors, "node.sip_tcp", &s)),
        sip_tls: raw
            .sip_tls
            .and_then(|s| socket_addr(errors, "node.sip_tls", &s)),
        tls_cert: raw.tls_cert,
        tls_key: raw.tls_key,
        tls_ca: raw.tls_ca,
        advertise: raw.advertise,
        domain: raw.domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_owned()),
        force_rport: raw.force_rport.unwrap_or(true),
    }
}

fn build_admin(raw: RawAdmin, errors: &mut Errors) -> AdminConfig {
    let default = AdminConfig::default();
    AdminConfig {
        listen: raw
            .listen
            .and_then(|s| socket_addr(errors, "admin.listen", &s))
            .unwrap_or(default.listen),
        token: raw.token,
    }
}

fn build_pair(raw: RawPair, errors: &mut Errors) -> PairConfig {
    let peer = match raw.peer {
        Some(s) => socket_addr(errors, "pair.peer", &s),
        None => {
            errors.push("pair.peer", "required when [pair] is set");
            None
        }
    };
    let witnesses = raw.witnesses.iter().enumerate();
    let witnesses = witnesses
        .filter_map(|(i, s)| socket_addr(errors, &format!("pair.witnesses[{i}]"), s))
        .collect();
    PairConfig {
        peer: peer.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        secret: raw.secret.unwrap_or_default(),
        keepalive_ms: raw.keepalive_ms.unwrap_or(200),
        missed_keepalives: raw.missed_keepalives.unwrap_or(3),
        probe_timeout_ms: raw.probe_timeout_ms.unwrap_or(200),
        mode: enum_value(errors, "pair.mode", raw.mode, PairMode::Hot),
        preempt: raw.preempt.unwrap_or(false),
        preempt_after_s: raw.preempt_after_s.unwrap_or(60),
        witnesses,
        redirect_when_standby: raw.redirect_when_standby.unwrap_or(false),
        test_hooks: raw.test_hooks.unwrap_or(false),
        dialog_digest: raw.dialog_digest.unwrap_or(true),
        ping_endpoints: raw.ping_endpoints.unwrap_or(false),
        max_clock_skew_ms: raw.max_clock_skew_ms.unwrap_or(5000),
        accept_v1: raw.accept_v1.unwrap_or(false),
    }
}

fn build_takeover(raw: RawTakeover, errors: &mut Errors) -> TakeoverConfig {
    let default = TakeoverConfig::default();
    TakeoverConfig {
        parallel: raw.parallel.unwrap_or(default.parallel),
        query_timeout_ms: raw.query_timeout_ms.unwrap_or(default.query_timeout_ms),
        fallback: enum_value(errors, "takeover.fallback", raw.fallback, default.fallback),
    }
}

fn build_registrar(errors: &mut Errors, raw: RawRegistrar, domain: &str) -> RegistrarConfig {
    let default = RegistrarConfig::default();
    let mut algorithms = Vec::new();
    match raw.digest_algorithms {
        None => algorithms = default.digest_algorithms.clone(),
        Some(names) => {
            for (i, a) in names.iter().enumerate() {
                match Algorithm::parse(a) {
                    Some(alg) => algorithms.push(alg),
                    None => errors.push(
                        format!("registrar.digest_algorithms[{i}]"),
                        format!("unknown digest algorithm {a:?} (expected \"MD5\" or \"SHA-256\")"),
                    ),
                }
            }
        }
    }
    if algorithms.is_empty() {
        errors.push(
            "registrar.digest_algorithms",
            "at least one algorithm is required".to_string(),
        );
        algorithms = default.digest_algorithms.clone();
    }
    RegistrarConfig {
        digest_algorithms: algorithms,
        min_expires: raw.min_expires.unwrap_or(default.min_expires),
        max_expires: raw.max_expires.unwrap_or(default.max_expires),
        default_expires: raw.default_expires.unwrap_or(default.default_expires),
        realm: Some(raw.realm.unwrap_or_else(|| domain.to_owned())),
        nat_keepalive_s: raw.nat_keepalive_s.unwrap_or(default.nat_keepalive_s),
    }
}

fn build_timers(raw: RawTimers) -> TimersConfig {
    let default = TimersConfig::default();
    TimersConfig {
        t1_ms: raw.t1_ms.unwrap_or(default.t1_ms),
        t2_ms: raw.t2_ms.unwrap_or(default.t2_ms),
        t4_ms: raw.t4_ms.unwrap_or(default.t4_ms),
    }
}

fn build_calls(raw: RawCalls) -> CallsConfig {
    let default = CallsConfig::default();
    CallsConfig {
        session_expires_s: raw.session_expires_s.unwrap_or(default.session_expires_s),
        min_se_s: raw.min_se_s.unwrap_or(default.min_se_s),
        max_calls: raw.max_calls.unwrap_or(default.max_calls),
    }
}

fn build_limits(raw: RawLimits) -> LimitsConfig {
    let default = LimitsConfig::default();
    LimitsConfig {
        tcp_connections: raw.tcp_connections.unwrap_or(default.tcp_connections),
        tcp_idle_s: raw.tcp_idle_s.unwrap_or(default.tcp_idle_s),
        contacts_per_aor: raw.contacts_per_aor.unwrap_or(default.contacts_per_aor),
        subscriptions: raw.subscriptions.unwrap_or(default.subscriptions),
    }
}

fn build_user(index: usize, raw: RawUser, errors: &mut Errors) -> UserConfig {
    let name = raw.name.unwrap_or_else(|| {
        errors.push(format!("users[{index}].name"), "required");
        String::new()
    });
    UserConfig {
        name,
        password: raw.password.unwrap_or_default(),
        contact: raw.contact,
        reset_event: raw.reset_event,
        priority: raw.priority.unwrap_or(0),
    }
}

fn build_trunk(index: usize, raw: RawTrunk, errors: &mut Errors) -> TrunkConfig {
    let name = raw.name.unwrap_or_else(|| {
        errors.push(format!("trunks[{index}].name"), "required");
        String::new()
    });
    let key = format!("trunks[{index}].address");
    let mut host = None;
    let address = match raw
        .address
        .as_deref()
        .map(|s| (s, s.parse::<TrunkAddress>()))
    {
        Some((_, Ok(address))) => Some(address),
        Some((text, Err(reason))) => match host_and_port(text) {
            Some((name, port)) => {
                host = Some(name);
                Some(TrunkAddress {
                    ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    port,
                })
            }
            None => {
                errors.push(key, format!("{reason}, or \"host\" / \"host:port\""));
                None
            }
        },
        None => {
            errors.push(key, "required");
            None
        }
    };
    let credentials = match (raw.username, raw.password) {
        (Some(username), Some(password)) => Some(TrunkCredentials {
            username,
            password,
            realm: raw.realm,
        }),
        (Some(_), None) => {
            errors.push(
                format!("trunks[{index}].password"),
                "required with username",
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                format!("trunks[{index}].username"),
                "required with password",
            );
            None
        }
        (None, None) => None,
    };
    let register = match (raw.register.unwrap_or(false), &credentials) {
        (false, _) => None,
        (true, None) => {
            errors.push(
                format!("trunks[{index}].register"),
                "needs username and password (the carrier challenges REGISTER)",
            );
            None
        }
        (true, Some(c)) => {
            let expires = raw.register_expires.unwrap_or(3600);
            if !(60..=86_400).contains(&expires) {
                errors.push(
                    format!("trunks[{index}].register_expires"),
                    format!("{expires} is outside 60..=86400 seconds"),
                );
            }
            Some(TrunkRegister {
                expires,
                contact_user: raw.contact_user.unwrap_or_else(|| c.username.clone()),
            })
        }
    };
    let key = format!("trunks[{index}].transport");
    TrunkConfig {
        name,
        address: address.unwrap_or(TrunkAddress {
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: None,
        }),
        prefixes: raw.prefixes,
        strip: raw.strip.unwrap_or(0),
        dialog_query: raw.dialog_query.unwrap_or(false),
        priority: raw.priority.unwrap_or(0),
        reset_event: raw.reset_event,
        transport: enum_value(errors, &key, raw.transport, TrunkTransport::Udp),
        max_cps: raw.max_cps,
        credentials,
        register,
        host,
    }
}

/// `"carrier.example"` or `"carrier.example:5070"`: a DNS name (letters, digits, `-`, `.`,
/// with at least one letter) and an optional port.
fn host_and_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)),
        None => (s, None),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && name.chars().any(|c| c.is_ascii_alphabetic());
    ok.then(|| (name.to_ascii_lowercase(), port))
}

fn build_media(raw: RawMedia, errors: &mut Errors) -> MediaConfig {
    let default = MediaConfig::default();
    let rtp_ports = match raw.rtp_ports {
        Some(s) => port_range(&s).unwrap_or_else(|| {
            errors.push(
                "media.rtp_ports",
                format!("invalid port range {s:?}: expected \"LOW-HIGH\", e.g. \"20000-29999\""),
            );
            default.rtp_ports
        }),
        None => default.rtp_ports,
    };
    MediaConfig {
        mode: enum_value(errors, "media.mode", raw.mode, MediaMode::Bypass),
        rtp_ports,
    }
}

/// `"20000-29999"` → `(20000, 29999)`; the order of the bounds is checked by validation.
fn port_range(s: &str) -> Option<(u16, u16)> {
    let (low, high) = s.split_once('-')?;
    Some((low.trim().parse().ok()?, high.trim().parse().ok()?))
}

/// Parses a literal `ip:port` socket address, reporting a bad one under `key`.
fn socket_addr(errors: &mut Errors, key: &str, s: &str) -> Option<SocketAddr> {
    match s.trim().parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(
                key,
                format!(
                    "invalid socket address {s:?}: expected \"ip:port\", e.g. \"127.0.0.1:5060\" or \"[::1]:5060\""
                ),
            );
            None
        }
    }
}

/// A config enum given by name: `default` when absent, reported under `key` when unknown.
fn enum_value<T: TomlName>(errors: &mut Errors, key: &str, name: Option<String>, default: T) -> T {
    let Some(name) = name else {
        return default;
    };
    match T::from_toml_name(&name) {
        Some(value) => value,
        None => {
            errors.push(
                key,
                format!("unknown value {name:?}: expected {}", T::expected()),
            );
            default
        }
    }
}
