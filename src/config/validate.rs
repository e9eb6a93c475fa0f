//! Rules on the typed configuration: ranges, rules across keys, duplicates. Every broken rule
//! is reported; none stops the others.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{Config, Errors, PairConfig, UserConfig};

/// The shortest accepted `pair.secret`.
const MIN_SECRET_LEN: usize = 8;

/// Checks every rule on `config`, reporting into `errors`.
pub(super) fn check(config: &Config, errors: &mut Errors) {
    check_node(config, errors);
    check_admin(config, errors);
    if let Some(pair) = &config.pair {
        check_pair(config, pair, errors);
    }
    check_ranges(config, errors);
    check_users(&config.users, errors);
    check_trunks(config, errors);
}

fn check_node(config: &Config, errors: &mut Errors) {
    let node = &config.node;
    if node.name.trim().is_empty() {
        errors.push("node.name", "required (a non-empty name for this node)");
    }
    if node.sip_udp.is_none() && node.sip_tcp.is_none() {
        errors.push(
            "node.sip_udp",
            "at least one of node.sip_udp and node.sip_tcp is required",
        );
    }
    if node.sip_tls.is_some() {
        for (key, path) in [
            ("node.tls_cert", &node.tls_cert),
            ("node.tls_key", &node.tls_key),
        ] {
            if path.is_none() {
                errors.push(key, "required with node.sip_tls");
            }
        }
    }
    for (key, path, what) in [
        (
            "node.tls_cert",
            &node.tls_cert,
            crate::tls::Pem::Certificates,
        ),
        ("node.tls_key", &node.tls_key, crate::tls::Pem::PrivateKey),
        ("node.tls_ca", &node.tls_ca, crate::tls::Pem::Certificates),
    ] {
        if let Some(p) = path
            && let Err(reason) = crate::tls::check_pem(p, what)
        {
            errors.push(key, reason);
        }
    }
    if node.domain.is_empty() || node.domain.contains(char::is_whitespace) {
        errors.push("node.domain", "must be a non-empty name without spaces");
    }
    if let Some(advertise) = &node.advertise
        && !is_host_port(advertise)
    {
        errors.push(
            "node.advertise",
            format!("invalid {advertise:?}: expected \"host:port\", e.g. \"203.0.113.7:5060\""),
        );
    }
    if config.state.dir.as_os_str().is_empty() {
        errors.push("state.dir", "must not be empty");
    }
    if config.cdr.enabled && config.cdr.path.as_os_str().is_empty() {
        errors.push("cdr.path", "must not be empty when CDRs are enabled");
    }
}

/// `host:port` with a non-empty host (IPv6 in brackets) and a non-zero port.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|ip| !ip.is_empty())
    } else {
        !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace)
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

fn check_admin(config: &Config, errors: &mut Errors) {
    let admin = &config.admin;
    let has_token = admin.token.as_deref().is_some_and(|t| !t.is_empty());
    if !admin.listen.ip().to_canonical().is_loopback() && !has_token {
        errors.push(
            "admin.token",
            "required when admin.listen is not a loopback address",
        );
    }
}

fn check_pair(config: &Config, pair: &PairConfig, errors: &mut Errors) {
    if pair.secret.is_empty() {
        errors.push("pair.secret", "required when [pair] is set");
    } else if pair.secret.chars().count() < MIN_SECRET_LEN {
        errors.push(
            "pair.secret",
            format!("too short: use at least {MIN_SECRET_LEN} characters"),
        );
    }
    let own = [config.node.sip_udp, config.node.sip_tcp];
    if own
        .into_iter()
        .flatten()
        .any(|addr| is_same_socket(addr, pair.peer))
    {
        errors.push(
            "pair.peer",
            format!(
                "{} is this node's own SIP address: set the other node's address",
                pair.peer
            ),
        );
    }
    at_least(errors, "pair.keepalive_ms", pair.keepalive_ms, 10);
    at_least(
        errors,
        "pair.max_clock_skew_ms",
        pair.max_clock_skew_ms,
        100,
    );
    at_least(
        errors,
        "pair.missed_keepalives",
        pair.missed_keepalives.into(),
        1,
    );
    at_least(errors, "pair.probe_timeout_ms", pair.probe_timeout_ms, 10);
}

/// Whether `peer` would reach our own `listen` socket (a wildcard listen address covers
/// loopback).
fn is_same_socket(listen: SocketAddr, peer: SocketAddr) -> bool {
    if listen.port() != peer.port() {
        return false;
    }
    let (listen_ip, peer_ip) = (listen.ip().to_canonical(), peer.ip().to_canonical());
    listen_ip == peer_ip || (listen_ip.is_unspecified() && peer_ip.is_loopback())
}

fn check_ranges(config: &Config, errors: &mut Errors) {
    let takeover = &config.takeover;
    at_least(errors, "takeover.parallel", takeover.parallel as u64, 1);
    at_least(
        errors,
        "takeover.query_timeout_ms",
        takeover.query_timeout_ms,
        1,
    );

    let registrar = &config.registrar;
    at_least(
        errors,
        "registrar.min_expires",
        registrar.min_expires.into(),
        1,
    );
    if registrar.min_expires > registrar.max_expires {
        errors.push(
            "registrar.min_expires",
            format!(
                "{} is greater than registrar.max_expires ({})",
                registrar.min_expires, registrar.max_expires
            ),
        );
    } else if !(registrar.min_expires..=registrar.max_expires).contains(&registrar.default_expires)
    {
        errors.push(
            "registrar.default_expires",
            format!(
                "{} is outside registrar.min_expires..registrar.max_expires ({}..{})",
                registrar.default_expires, registrar.min_expires, registrar.max_expires
            ),
        );
    }
    if registrar.realm.as_deref().is_some_and(str::is_empty) {
        errors.push("registrar.realm", "must not be empty");
    }

    let timers = &config.timers;
    at_least(errors, "timers.t1_ms", timers.t1_ms, 1);
    if timers.t2_ms < timers.t1_ms {
        errors.push(
            "timers.t2_ms",
            format!(
                "{} is less than timers.t1_ms ({})",
                timers.t2_ms, timers.t1_ms
            ),
        );
    }
    at_least(errors, "timers.t4_ms", timers.t4_ms, 1);

    let calls = &config.calls;
    at_least(errors, "calls.min_se_s", calls.min_se_s.into(), 1);
    if calls.session_expires_s < calls.min_se_s {
        errors.push(
            "calls.session_expires_s",
            format!(
                "{} is less than calls.min_se_s ({})",
                calls.session_expires_s, calls.min_se_s
            ),
        );
    }
    at_least(errors, "calls.max_calls", calls.max_calls as u64, 1);
    let limits = &config.limits;
    at_least(
        errors,
        "limits.tcp_connections",
        limits.tcp_connections as u64,
        1,
    );
    at_least(errors, "limits.tcp_idle_s", limits.tcp_idle_s, 1);
    at_least(
        errors,
        "limits.contacts_per_aor",
        limits.contacts_per_aor as u64,
        1,
    );
    at_least(
        errors,
        "limits.subscriptions",
        limits.subscriptions as u64,
        1,
    );

    let (low, high) = config.media.rtp_ports;
    if low == 0 || low >= high {
        errors.push(
            "media.rtp_ports",
            format!("invalid range {low}-{high}: need 0 < LOW < HIGH"),
        );
    }
}

fn at_least(errors: &mut Errors, key: &str, value: u64, min: u64) {
    if value < min {
        errors.push(key, format!("{value} is too small: must be at least {min}"));
    }
}

fn check_users(users: &[UserConfig], errors: &mut Errors) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, user) in users.iter().enumerate() {
        let key = |field: &str| format!("users[{i}].{field}");
        if user.name.is_empty() {
            errors.push(key("name"), "must not be empty");
        } else if let Some(bad) = user.name.chars().find(|c| !is_user_char(*c)) {
            errors.push(
                key("name"),
                format!(
                    "{:?} contains {bad:?}: use only A-Z a-z 0-9 . _ - +",
                    user.name
                ),
            );
        } else if let Some(first) = seen.insert(&user.name, i) {
            seen.insert(&user.name, first);
            errors.push(
                key("name"),
                format!("duplicate user {:?} (also users[{first}])", user.name),
            );
        }
        if user.password.is_empty() && user.contact.is_none() {
            errors.push(
                key("password"),
                "required (may be empty only for a user with a static contact)",
            );
        }
        if let Some(contact) = &user.contact {
            let lower = contact.to_ascii_lowercase();
            if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
                errors.push(
                    key("contact"),
                    format!("{contact:?} is not a sip: or sips: URI"),
                );
            }
        }
    }
}

/// The characters allowed in a user name.
fn is_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
}

fn check_trunks(config: &Config, errors: &mut Errors) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, trunk) in config.trunks.iter().enumerate() {
        let key = |field: &str| format!("trunks[{i}].{field}");
        if trunk.name.trim().is_empty() {
            errors.push(key("name"), "must not be empty");
        } else if let Some(first) = seen.insert(&trunk.name, i) {
            seen.insert(&trunk.name, first);
            errors.push(
                key("name"),
                format!("duplicate trunk {:?} (also trunks[{first}])", trunk.name),
            );
        }
        for (j, prefix) in trunk.prefixes.iter().enumerate() {
            if prefix.contains(char::is_whitespace) {
                errors.push(
                    format!("trunks[{i}].prefixes[{j}]"),
                    format!("{prefix:?} contains white space"),
                );
            }
        }
    }
}
