//! Loading the example files, defaults, the shared digest and the lookups; the rules are in
//! `rules.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::*;

mod rules;

/// The smallest valid file: a node name and one listen address.
const MINIMAL: &str = "[node]\nname = \"n1\"\nsip_udp = \"127.0.0.1:5060\"\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn parse(text: &str) -> Config {
    match Config::from_toml_str(text, "test.toml") {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(text: &str) -> ConfigErrors {
    match Config::from_toml_str(text, "test.toml") {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(e) => e,
    }
}

/// Asserts that `text` fails with an error about `key` whose reason contains `reason`.
#[track_caller]
fn assert_error(text: &str, key: &str, reason: &str) {
    let errs = errors(text);
    let found = errs
        .find(key)
        .unwrap_or_else(|| panic!("no error for {key}:\n{errs}"));
    assert!(
        found.reason.contains(reason),
        "error for {key} should contain {reason:?}: {found}"
    );
}

/// `MINIMAL` plus `extra` (more sections).
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

const PAIR: &str = "[pair]\npeer = \"127.0.0.1:5062\"\nsecret = \"long-enough\"\n";

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn load_example(name: &str) -> Config {
    match Config::load(&config_dir().join(name)) {
        Ok(config) => config,
        Err(e) => panic!("{name}:\n{e}"),
    }
}

#[test]
fn every_example_config_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(config_dir()).expect("config/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Config::load(&path) {
                panic!("{}:\n{e}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected single, main and standby, found {seen}");
}

#[test]
fn example_files_say_what_the_brief_says() {
    let single = load_example("single.toml");
    assert!(single.pair.is_none());
    let (carrier, number) = single.trunk_for_number("9123").expect("carrier");
    assert_eq!((carrier.name.as_str(), number.as_str()), ("carrier", "123"));
    let (gateway, number) = single.trunk_for_number("0123").expect("gateway");
    assert_eq!(
        (gateway.name.as_str(), number.as_str()),
        ("gateway", "0123")
    );

    let main = load_example("main.toml");
    assert_eq!(main.node.name, "main-1");
    assert_eq!(main.node.home_role, HomeRole::Main);
    assert_eq!(main.node.sip_udp, Some(addr("127.0.0.1:5060")));
    assert_eq!(main.node.sip_tcp, Some(addr("127.0.0.1:5060")));
    assert_eq!(main.admin.listen, addr("127.0.0.1:8060"));
    assert_eq!(main.state.dir, PathBuf::from("state/main-1"));
    let pair = main.pair.as_ref().expect("main has [pair]");
    assert_eq!(pair.peer, addr("127.0.0.1:5062"));
    assert_eq!((pair.keepalive_ms, pair.missed_keepalives), (200, 3));
    assert_eq!(pair.probe_timeout_ms, 200);

    let standby = load_example("standby.toml");
    assert_eq!(standby.node.name, "standby-1");
    assert_eq!(standby.node.home_role, HomeRole::Standby);
    assert_eq!(standby.node.sip_udp, Some(addr("127.0.0.1:5062")));
    assert_eq!(standby.admin.listen, addr("127.0.0.1:8062"));
    assert_eq!(standby.state.dir, PathBuf::from("state/standby-1"));
    let pair = standby.pair.as_ref().expect("standby has [pair]");
    assert_eq!(pair.peer, addr("127.0.0.1:5060"));
}

#[test]
fn pair_examples_share_a_digest() {
    let main = load_example("main.toml");
    let standby = load_example("standby.toml");
    assert_eq!(main.shared_digest(), standby.shared_digest());
    assert_eq!(main.shared_digest().len(), 64);
    assert_eq!(main.shared_digest(), main.clone().shared_digest());

    let mut changed = main.clone();
    changed.users[0].password = "another-secret".to_owned();
    assert_ne!(changed.shared_digest(), main.shared_digest());

    let mut changed = main.clone();
    changed.trunks[0].prefixes.push("8".to_owned());
    assert_ne!(changed.shared_digest(), main.shared_digest());

    let mut changed = main.clone();
    changed.timers.t1_ms = 50;
    assert_ne!(changed.shared_digest(), main.shared_digest());

    // Per-node settings do not count, and neither does the order of users.
    let mut per_node = main.clone();
    per_node.node.name = "other".to_owned();
    per_node.node.sip_udp = Some(addr("10.0.0.1:5060"));
    per_node.admin.listen = addr("127.0.0.1:9999");
    per_node.state.dir = PathBuf::from("elsewhere");
    per_node.cdr.enabled = false;
    per_node.media.rtp_ports = (30000, 30999);
    if let Some(pair) = per_node.pair.as_mut() {
        pair.peer = addr("10.0.0.2:5060");
    }
    per_node.users.reverse();
    assert_eq!(per_node.shared_digest(), main.shared_digest());
}

#[test]
fn builtin_default_is_valid_and_as_documented() {
    let config = Config::builtin_default();
    assert_eq!(config.validate("builtin"), Ok(()));
    assert!(config.pair.is_none());
    assert_eq!(config.node.name, "understudy");
    assert_eq!(config.node.sip_udp, Some(addr("127.0.0.1:5060")));
    assert_eq!(config.node.sip_tcp, Some(addr("127.0.0.1:5060")));
    assert_eq!(config.node.domain, "pbx.local");
    assert_eq!(config.admin.listen, addr("127.0.0.1:8060"));
    assert_eq!(config.state.dir, PathBuf::from("state/understudy"));
    assert_eq!(
        config.user("alice").map(|u| u.password.as_str()),
        Some("alice-secret")
    );
    assert_eq!(
        config.user("bob").map(|u| u.password.as_str()),
        Some("bob-secret")
    );
    assert!(config.user("carol").is_none());
}

#[test]
fn builtin_default_matches_a_file_with_the_same_keys() {
    let text = "[node]\nname = \"understudy\"\nsip_udp = \"127.0.0.1:5060\"\n\
                sip_tcp = \"127.0.0.1:5060\"\n\
                [[users]]\nname = \"alice\"\npassword = \"alice-secret\"\n\
                [[users]]\nname = \"bob\"\npassword = \"bob-secret\"\n";
    assert_eq!(parse(text), Config::builtin_default());
}

#[test]
fn defaults_are_applied() {
    let c = parse(MINIMAL);
    assert_eq!(c.node.home_role, HomeRole::Main);
    assert_eq!(c.node.sip_tcp, None);
    assert_eq!(c.node.advertise, None);
    assert_eq!(c.node.domain, "pbx.local");
    assert!(c.node.force_rport);
    assert_eq!(c.admin.listen, addr("127.0.0.1:8060"));
    assert_eq!(c.admin.token, None);
    assert_eq!(c.state.dir, PathBuf::from("state/n1"));
    assert!(c.pair.is_none());
    assert_eq!(
        c.takeover,
        TakeoverConfig {
            parallel: 64,
            query_timeout_ms: 2000,
            fallback: Fallback::None
        }
    );
    assert_eq!(
        (c.registrar.min_expires, c.registrar.max_expires),
        (60, 3600)
    );
    assert_eq!(c.registrar.default_expires, 3600);
    assert_eq!(c.registrar.realm.as_deref(), Some("pbx.local"));
    assert_eq!(c.realm(), "pbx.local");
    assert_eq!(
        c.timers,
        TimersConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000
        }
    );
    assert_eq!(
        c.calls,
        CallsConfig {
            session_expires_s: 1800,
            min_se_s: 90,
            max_calls: 100_000
        }
    );
    assert!(c.users.is_empty() && c.trunks.is_empty());
    assert_eq!(
        c.media,
        MediaConfig {
            mode: MediaMode::Bypass,
            rtp_ports: (20000, 29999)
        }
    );
    assert_eq!(
        c.cdr,
        CdrConfig {
            path: PathBuf::from("state/n1/cdr.sqlite"),
            enabled: true,
            url: None,
        }
    );
}

#[test]
fn pair_and_entry_defaults_are_applied() {
    let c = parse(&with(&format!(
        "{PAIR}[[users]]\nname = \"u\"\npassword = \"p\"\n\
         [[trunks]]\nname = \"t\"\naddress = \"10.0.0.1\"\n\
         [state]\ndir = \"/var/lib/us\"\n"
    )));
    let pair = c.pair.as_ref().expect("pair");
    assert_eq!(
        (
            pair.keepalive_ms,
            pair.missed_keepalives,
            pair.probe_timeout_ms
        ),
        (200, 3, 200)
    );
    assert_eq!(pair.mode, PairMode::Hot);
    assert!(!pair.preempt && !pair.redirect_when_standby && !pair.ping_endpoints);
    assert_eq!(pair.preempt_after_s, 60);
    assert!(pair.witnesses.is_empty());
    assert_eq!(c.users[0].priority, 0);
    assert_eq!(
        (c.users[0].contact.as_ref(), c.users[0].reset_event.as_ref()),
        (None, None)
    );
    let t = &c.trunks[0];
    assert_eq!((t.strip, t.dialog_query, t.priority), (0, false, 0));
    assert_eq!(t.transport, TrunkTransport::Udp);
    assert!(t.prefixes.is_empty() && t.reset_event.is_none());
    assert_eq!(c.cdr.path, PathBuf::from("/var/lib/us/cdr.sqlite"));
}

#[test]
fn every_key_is_read() {
    let c = parse(
        "[node]\nname = \"n\"\nhome_role = \"standby\"\nsip_tcp = \"[::1]:5070\"\n\
         advertise = \"sip.example.com:5070\"\ndomain = \"example.com\"\nforce_rport = false\n\
         [admin]\nlisten = \"0.0.0.0:8000\"\ntoken = \"tok\"\n\
         [pair]\npeer = \"10.0.0.2:5060\"\nsecret = \"12345678\"\nkeepalive_ms = 100\n\
         missed_keepalives = 5\nprobe_timeout_ms = 50\nmode = \"cold\"\npreempt = true\n\
         preempt_after_s = 5\nwitnesses = [\"10.0.0.3:5060\"]\nredirect_when_standby = true\n\
         ping_endpoints = true\n\
         [takeover]\nparallel = 2\nquery_timeout_ms = 10\nfallback = \"none\"\n\
         [registrar]\nmin_expires = 10\nmax_expires = 20\ndefault_expires = 15\nrealm = \"r\"\n\
         [timers]\nt1_ms = 50\nt2_ms = 400\nt4_ms = 500\n\
         [calls]\nsession_expires_s = 300\nmin_se_s = 100\nmax_calls = 7\n\
         [[users]]\nname = \"dev\"\ncontact = \"sip:dev@10.0.0.9\"\nreset_event = \"check-sync\"\npriority = -1\n\
         [[trunks]]\nname = \"t\"\naddress = \"10.0.0.1:5080\"\nprefixes = [\"1\", \"12\"]\nstrip = 2\n\
         dialog_query = true\npriority = 3\nreset_event = \"resync\"\ntransport = \"tcp\"\n\
         [media]\nmode = \"relay\"\nrtp_ports = \"40000-40100\"\n\
         [cdr]\npath = \"cdr.db\"\nenabled = false\n",
    );
    assert_eq!(c.node.home_role, HomeRole::Standby);
    assert_eq!(
        (c.node.sip_udp, c.node.sip_tcp),
        (None, Some(addr("[::1]:5070")))
    );
    assert_eq!(c.node.advertise.as_deref(), Some("sip.example.com:5070"));
    assert!(!c.node.force_rport);
    assert_eq!(c.admin.token.as_deref(), Some("tok"));
    let pair = c.pair.as_ref().expect("pair");
    assert_eq!(
        (pair.mode, pair.preempt, pair.preempt_after_s),
        (PairMode::Cold, true, 5)
    );
    assert_eq!(pair.witnesses, vec![addr("10.0.0.3:5060")]);
    assert!(pair.redirect_when_standby && pair.ping_endpoints);
    assert_eq!(c.takeover.fallback, Fallback::None);
    assert_eq!(c.realm(), "r");
    assert_eq!(c.timers.t1_ms, 50);
    assert_eq!(c.calls.max_calls, 7);
    assert_eq!(c.users[0].password, "");
    assert_eq!(c.users[0].priority, -1);
    assert_eq!(c.trunks[0].transport, TrunkTransport::Tcp);
    assert_eq!(
        c.media,
        MediaConfig {
            mode: MediaMode::Relay,
            rtp_ports: (40000, 40100)
        }
    );
    assert_eq!(
        c.cdr,
        CdrConfig {
            path: PathBuf::from("cdr.db"),
            enabled: false,
            url: None,
        }
    );
}

#[test]
fn trunk_address_matching() {
    let with_port: TrunkAddress = "127.0.0.1:5070".parse().expect("with port");
    assert_eq!(
        with_port,
        TrunkAddress {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: Some(5070)
        }
    );
    assert!(with_port.matches(addr("127.0.0.1:5070")));
    assert!(!with_port.matches(addr("127.0.0.1:5071")));
    assert!(!with_port.matches(addr("127.0.0.2:5070")));
    assert!(with_port.matches(addr("[::ffff:127.0.0.1]:5070")));
    assert_eq!(with_port.target(), addr("127.0.0.1:5070"));
    assert_eq!(with_port.to_string(), "127.0.0.1:5070");

    let any_port: TrunkAddress = "127.0.0.1".parse().expect("without port");
    assert_eq!(any_port.port, None);
    assert!(any_port.matches(addr("127.0.0.1:5070")));
    assert!(any_port.matches(addr("127.0.0.1:40000")));
    assert!(!any_port.matches(addr("10.0.0.1:5070")));
    assert_eq!(any_port.target(), addr("127.0.0.1:5060"));
    assert_eq!(any_port.to_string(), "127.0.0.1");

    let v6: TrunkAddress = "[::1]:5070".parse().expect("v6");
    assert!(v6.matches(addr("[::1]:5070")));
    assert_eq!(v6.to_string(), "[::1]:5070");
    assert!(
        "::1"
            .parse::<TrunkAddress>()
            .is_ok_and(|a| a.port.is_none())
    );
    assert!("example.com:5060".parse::<TrunkAddress>().is_err());
}

#[test]
fn trunk_for_source_prefers_an_exact_port() {
    let c = parse(&with(
        "[[trunks]]\nname = \"any\"\naddress = \"127.0.0.1\"\n\
         [[trunks]]\nname = \"exact\"\naddress = \"127.0.0.1:5070\"\n",
    ));
    let name = |src: &str| c.trunk_for_source(addr(src)).map(|t| t.name.as_str());
    assert_eq!(name("127.0.0.1:5070"), Some("exact"));
    assert_eq!(name("127.0.0.1:5099"), Some("any"));
    assert_eq!(name("10.0.0.1:5070"), None);
}

#[test]
fn trunk_for_number_takes_the_longest_prefix_and_strips() {
    let c = parse(&with(
        "[[trunks]]\nname = \"short\"\naddress = \"10.0.0.1\"\nprefixes = [\"0\"]\nstrip = 1\n\
         [[trunks]]\nname = \"long\"\naddress = \"10.0.0.2\"\nprefixes = [\"7\", \"0044\"]\nstrip = 2\n\
         [[trunks]]\nname = \"tie-low\"\naddress = \"10.0.0.3\"\nprefixes = [\"5\"]\npriority = 5\n\
         [[trunks]]\nname = \"tie-high\"\naddress = \"10.0.0.4\"\nprefixes = [\"5\"]\npriority = 1\n\
         [[trunks]]\nname = \"strip-all\"\naddress = \"10.0.0.5\"\nprefixes = [\"8\"]\nstrip = 9\n",
    ));
    let route = |n: &str| c.trunk_for_number(n).map(|(t, num)| (t.name.clone(), num));
    assert_eq!(route("0123"), Some(("short".to_owned(), "123".to_owned())));
    assert_eq!(
        route("00441234"),
        Some(("long".to_owned(), "441234".to_owned()))
    );
    assert_eq!(route("0045"), Some(("short".to_owned(), "045".to_owned())));
    assert_eq!(
        route("555"),
        Some(("tie-high".to_owned(), "555".to_owned()))
    );
    assert_eq!(route("81"), Some(("strip-all".to_owned(), String::new())));
    assert_eq!(route("123"), None);
    assert_eq!(route(""), None);
}
