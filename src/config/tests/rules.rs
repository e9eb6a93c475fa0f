//! One test per loading or validation rule: each asserts the error names the right key.

use super::*;

#[test]
fn unknown_keys_are_named_with_their_line() {
    assert_error(
        &with("[pair]\npeer = \"127.0.0.1:5062\"\nsecrte = \"x\"\n"),
        "pair.secrte",
        "line 6",
    );
    assert_error(
        &with("[pair]\nsecrte = \"x\"\n"),
        "pair.secrte",
        "unknown field `secrte`",
    );
    assert_error(
        &with(
            "[[users]]\nname = \"a\"\npassword = \"p\"\n[[users]]\nname = \"b\"\npasword = \"p\"\n",
        ),
        "users[1].pasword",
        "line 9",
    );
    assert_error(
        &with("[nodes]\nname = \"x\"\n"),
        "nodes",
        "unknown field `nodes`",
    );
    assert_error(
        "[node]\nname = \"n\"\nsip_udp = \"127.0.0.1:1\"\ncolour = 1\n",
        "node.colour",
        "line 4",
    );
}

#[test]
fn wrong_types_and_syntax_errors_name_key_and_line() {
    assert_error(
        &with("[pair]\nkeepalive_ms = \"fast\"\n"),
        "pair.keepalive_ms",
        "line 5",
    );
    assert_error(&with("[timers]\nt1_ms = -5\n"), "timers.t1_ms", "line 5");
    let errs = errors(&with("[timers]\nt1_ms = = 5\n"));
    assert!(errs.0[0].reason.contains("line 5"), "{errs}");
    assert_eq!(errs.0[0].key, "timers", "the table the bad line is in");
    let errs = errors(&with("[node]\nname = \"again\"\n"));
    assert!(errs.0[0].reason.contains("line 4"), "{errs}");
}

#[test]
fn errors_display_file_key_and_reason() {
    let errs = errors(&with(
        "[pair]\npeer = \"127.0.0.1:5062\"\n[admin]\nlisten = \"0.0.0.0:1\"\n",
    ));
    let text = errs.to_string();
    assert_eq!(text.lines().count(), errs.0.len());
    assert!(
        text.lines()
            .any(|l| l.starts_with("test.toml: pair.secret: required when [pair] is set")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with(
            "test.toml: admin.token: required when admin.listen is not a loopback address"
        )),
        "{text}"
    );
}

#[test]
fn all_errors_are_collected() {
    let errs = errors(
        "[node]\nname = \"\"\nsip_udp = \"nowhere\"\nhome_role = \"boss\"\n\
         [pair]\npeer = \"127.0.0.1:5062\"\nsecret = \"short\"\nkeepalive_ms = 1\nmode = \"warm\"\n\
         [media]\nrtp_ports = \"3-2\"\n",
    );
    for key in [
        "node.name",
        "node.sip_udp",
        "node.home_role",
        "pair.secret",
        "pair.keepalive_ms",
        "pair.mode",
        "media.rtp_ports",
    ] {
        assert!(errs.find(key).is_some(), "missing {key}:\n{errs}");
    }
    // A bad sip_udp is not also reported as a missing listen address.
    assert_eq!(
        errs.0.iter().filter(|e| e.key == "node.sip_udp").count(),
        1,
        "{errs}"
    );
}

#[test]
fn load_names_an_unreadable_file() {
    let path = config_dir().join("does-not-exist.toml");
    let errs = Config::load(&path).expect_err("missing file");
    assert_eq!(errs.0.len(), 1);
    assert!(errs.0[0].file.contains("does-not-exist.toml"));
    assert!(
        errs.to_string().starts_with(&path.display().to_string()),
        "{errs}"
    );
}

#[test]
fn node_section_and_name_are_required() {
    assert_error("[admin]\nlisten = \"127.0.0.1:8060\"\n", "node", "required");
    assert_error(
        "[node]\nsip_udp = \"127.0.0.1:5060\"\n",
        "node.name",
        "required",
    );
    assert_error(
        "[node]\nname = \" \"\nsip_udp = \"127.0.0.1:5060\"\n",
        "node.name",
        "required",
    );
}

#[test]
fn a_listen_address_is_required() {
    assert_error("[node]\nname = \"n\"\n", "node.sip_udp", "at least one of");
    parse("[node]\nname = \"n\"\nsip_tcp = \"127.0.0.1:5060\"\n");
}

#[test]
fn bad_socket_addresses_are_named() {
    assert_error(
        "[node]\nname = \"n\"\nsip_udp = \"localhost:5060\"\n",
        "node.sip_udp",
        "invalid socket address",
    );
    assert_error(
        "[node]\nname = \"n\"\nsip_udp = \"127.0.0.1:1\"\nsip_tcp = \"1.2.3.4\"\n",
        "node.sip_tcp",
        "invalid",
    );
    assert_error(
        &with("[admin]\nlisten = \"127.0.0.1\"\n"),
        "admin.listen",
        "invalid",
    );
    assert_error(
        &with("[pair]\npeer = \"x:1\"\nsecret = \"12345678\"\n"),
        "pair.peer",
        "invalid",
    );
    assert_error(
        &with(&format!(
            "{PAIR}witnesses = [\"127.0.0.1:7000\", \"bad\"]\n"
        )),
        "pair.witnesses[1]",
        "invalid",
    );
    assert_error(
        &with("[[trunks]]\nname = \"t\"\naddress = \"256.1.1.1\"\n"),
        "trunks[0].address",
        "invalid trunk address",
    );
    assert_error(
        &with("[[trunks]]\nname = \"t\"\naddress = \"bad host!\"\n"),
        "trunks[0].address",
        "\"host:port\"",
    );
    assert_error(
        &with("[dns]\nservers = [\"nameserver\"]\n"),
        "dns.servers[0]",
        "is not",
    );
    assert_error(
        &with("[[trunks]]\nname = \"t\"\n"),
        "trunks[0].address",
        "required",
    );
    assert_error(
        &with("[[trunks]]\nname = \"t\"\naddress = \"1.2.3.4:0\"\n"),
        "trunks[0].address",
        "port 0",
    );
    assert_error(
        &with("").replace("sip_udp", "advertise = \"nohost\"\nsip_udp"),
        "node.advertise",
        "host:port",
    );
}

#[test]
fn bad_enum_values_are_named() {
    assert_error(
        "[node]\nname = \"n\"\nsip_udp = \"127.0.0.1:1\"\nhome_role = \"backup\"\n",
        "node.home_role",
        "\"main\" or \"standby\"",
    );
    assert_error(
        &with(&format!("{PAIR}mode = \"warm\"\n")),
        "pair.mode",
        "\"hot\" or \"cold\"",
    );
    assert_error(
        &with("[takeover]\nfallback = \"hot\"\n"),
        "takeover.fallback",
        "\"cold\" or \"none\"",
    );
    assert_error(
        &with("[media]\nmode = \"proxy\"\n"),
        "media.mode",
        "\"bypass\" or \"relay\"",
    );
    assert_error(
        &with("[[trunks]]\nname = \"t\"\naddress = \"1.2.3.4\"\ntransport = \"sctp\"\n"),
        "trunks[0].transport",
        "\"udp\" or \"tcp\"",
    );
}

#[test]
fn bad_port_ranges_are_named() {
    for bad in [
        "20000",
        "a-b",
        "30000-20000",
        "20000-20000",
        "0-100",
        "20000-70000",
    ] {
        assert_error(
            &with(&format!("[media]\nrtp_ports = \"{bad}\"\n")),
            "media.rtp_ports",
            "",
        );
    }
    let c = parse(&with("[media]\nrtp_ports = \"10001-10002\"\n"));
    assert_eq!(c.media.rtp_ports, (10001, 10002));
}

#[test]
fn numbers_out_of_range_are_named() {
    let pair = |extra: &str| with(&format!("{PAIR}{extra}\n"));
    assert_error(
        &pair("keepalive_ms = 9"),
        "pair.keepalive_ms",
        "at least 10",
    );
    assert_error(
        &pair("missed_keepalives = 0"),
        "pair.missed_keepalives",
        "at least 1",
    );
    assert_error(
        &pair("probe_timeout_ms = 5"),
        "pair.probe_timeout_ms",
        "at least 10",
    );
    assert_error(&with("[timers]\nt1_ms = 0\n"), "timers.t1_ms", "at least 1");
    assert_error(
        &with("[timers]\nt1_ms = 500\nt2_ms = 499\n"),
        "timers.t2_ms",
        "less than timers.t1_ms",
    );
    assert_error(
        &with("[registrar]\nmin_expires = 100\nmax_expires = 50\n"),
        "registrar.min_expires",
        "greater than",
    );
    assert_error(
        &with("[registrar]\ndefault_expires = 10\n"),
        "registrar.default_expires",
        "outside",
    );
    assert_error(
        &with("[takeover]\nparallel = 0\n"),
        "takeover.parallel",
        "at least 1",
    );
    assert_error(
        &with("[calls]\nsession_expires_s = 60\n"),
        "calls.session_expires_s",
        "less than calls.min_se_s",
    );
    assert_error(
        &with("[calls]\nmax_calls = 0\n"),
        "calls.max_calls",
        "at least 1",
    );
    assert_error(
        &with("[pair]\nmissed_keepalives = 5000000000\n"),
        "pair.missed_keepalives",
        "line 5",
    );
    parse(&pair(
        "keepalive_ms = 10\nmissed_keepalives = 1\nprobe_timeout_ms = 10",
    ));
    parse(&with(
        "[timers]\nt1_ms = 1\nt2_ms = 1\n[registrar]\nmin_expires = 5\nmax_expires = 5\ndefault_expires = 5\n",
    ));
}

#[test]
fn pair_secret_rules() {
    assert_error(
        &with("[pair]\npeer = \"127.0.0.1:5062\"\n"),
        "pair.secret",
        "required when [pair] is set",
    );
    assert_error(
        &with("[pair]\npeer = \"127.0.0.1:5062\"\nsecret = \"\"\n"),
        "pair.secret",
        "required when [pair] is set",
    );
    assert_error(
        &with("[pair]\npeer = \"127.0.0.1:5062\"\nsecret = \"1234567\"\n"),
        "pair.secret",
        "at least 8",
    );
    assert_error(
        &with("[pair]\nsecret = \"12345678\"\n"),
        "pair.peer",
        "required",
    );
    parse(&with(
        "[pair]\npeer = \"127.0.0.1:5062\"\nsecret = \"12345678\"\n",
    ));
}

#[test]
fn pair_peer_must_not_be_this_node() {
    assert_error(
        &with("[pair]\npeer = \"127.0.0.1:5060\"\nsecret = \"12345678\"\n"),
        "pair.peer",
        "own SIP address",
    );
    let wildcard = "[node]\nname = \"n\"\nsip_udp = \"0.0.0.0:5060\"\n[pair]\npeer = \"127.0.0.1:5060\"\nsecret = \"12345678\"\n";
    assert_error(wildcard, "pair.peer", "own SIP address");
    parse(&wildcard.replace("127.0.0.1:5060", "10.0.0.2:5060"));
}

#[test]
fn admin_token_rule() {
    assert_error(
        &with("[admin]\nlisten = \"0.0.0.0:8060\"\n"),
        "admin.token",
        "required when admin.listen is not a loopback address",
    );
    assert_error(
        &with("[admin]\nlisten = \"10.0.0.1:8060\"\ntoken = \"\"\n"),
        "admin.token",
        "required",
    );
    parse(&with(
        "[admin]\nlisten = \"0.0.0.0:8060\"\ntoken = \"t0ken\"\n",
    ));
    parse(&with("[admin]\nlisten = \"[::1]:8060\"\n"));
}

#[test]
fn user_rules() {
    let users = |body: &str| with(&body.replace('|', "\n"));
    assert_error(
        &users("[[users]]|name = \"a\"|password = \"p\"|[[users]]|name = \"a\"|password = \"q\"|"),
        "users[1].name",
        "duplicate",
    );
    assert_error(
        &users("[[users]]|name = \"\"|password = \"p\"|"),
        "users[0].name",
        "empty",
    );
    assert_error(
        &users("[[users]]|name = \"a b\"|password = \"p\"|"),
        "users[0].name",
        "' '",
    );
    assert_error(
        &users("[[users]]|name = \"a@b\"|password = \"p\"|"),
        "users[0].name",
        "'@'",
    );
    assert_error(
        &users("[[users]]|password = \"p\"|"),
        "users[0].name",
        "required",
    );
    assert_error(
        &users("[[users]]|name = \"a\"|"),
        "users[0].password",
        "required",
    );
    assert_error(
        &users("[[users]]|name = \"a\"|password = \"\"|"),
        "users[0].password",
        "static contact",
    );
    assert_error(
        &users("[[users]]|name = \"a\"|contact = \"mailto:a@b\"|"),
        "users[0].contact",
        "sip:",
    );
    let c = parse(&users(
        "[[users]]|name = \"A.b_c-d+1\"|password = \"p\"|[[users]]|name = \"phone\"|contact = \"sip:phone@10.0.0.5:5090\"|",
    ));
    assert_eq!(c.users.len(), 2);
}

#[test]
fn trunk_rules() {
    let trunks = |body: &str| with(&body.replace('|', "\n"));
    assert_error(
        &trunks(
            "[[trunks]]|name = \"t\"|address = \"1.2.3.4\"|[[trunks]]|name = \"t\"|address = \"1.2.3.5\"|",
        ),
        "trunks[1].name",
        "duplicate",
    );
    assert_error(
        &trunks("[[trunks]]|address = \"1.2.3.4\"|"),
        "trunks[0].name",
        "required",
    );
    assert_error(
        &trunks("[[trunks]]|name = \"\"|address = \"1.2.3.4\"|"),
        "trunks[0].name",
        "empty",
    );
}

#[test]
fn a_trunk_may_be_named_by_a_host_and_dns_servers_given() {
    let c = parse(&with(
        "[dns]\nservers = [\"127.0.0.1:5353\", \"192.0.2.53\"]\n\n\
         [[trunks]]\nname = \"srv\"\naddress = \"Carrier.Example\"\n\n\
         [[trunks]]\nname = \"a\"\naddress = \"sip.carrier.example:5070\"\n",
    ));
    assert_eq!(
        c.dns.servers,
        vec![addr("127.0.0.1:5353"), addr("192.0.2.53:53")]
    );
    assert_eq!(c.trunks[0].host.as_deref(), Some("carrier.example"));
    assert_eq!(c.trunks[0].address.port, None, "no port: SRV");
    assert_eq!(c.trunks[1].host.as_deref(), Some("sip.carrier.example"));
    assert_eq!(c.trunks[1].address.port, Some(5070));
    // A named trunk never matches a source by its placeholder address.
    assert!(c.trunk_for_source(addr("0.0.0.0:5070")).is_none());
}

#[test]
fn tls_needs_a_certificate_and_a_key_that_can_be_read() {
    assert_error(
        &node_with("sip_tls = \"127.0.0.1:5061\"\n"),
        "node.tls_cert",
        "required with node.sip_tls",
    );
    assert_error(
        &node_with("tls_cert = \"/nonexistent/cert.pem\"\n"),
        "node.tls_cert",
        "cannot read /nonexistent/cert.pem",
    );
    let dir = std::env::temp_dir().join(format!("understudy-tls-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    assert_error(
        &node_with(&format!("tls_ca = \"{}\"\n", junk.display())),
        "node.tls_ca",
        "no certificate",
    );
    assert_error(
        &node_with(&format!("tls_key = \"{}\"\n", junk.display())),
        "node.tls_key",
        "no usable PEM private key",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `MINIMAL` with more keys in its `[node]` table.
fn node_with(keys: &str) -> String {
    MINIMAL.replacen("[node]\n", &format!("[node]\n{keys}"), 1)
}

#[test]
fn a_cdr_url_must_name_postgresql() {
    assert_error(
        &with("[cdr]\nurl = \"mysql://x@127.0.0.1/cdr\"\n"),
        "cdr.url",
        "postgres://",
    );
    let ok = Config::from_toml_str(
        &with("[cdr]\nurl = \"postgres://u:p@127.0.0.1:5432/cdr\"\n"),
        "t",
    )
    .expect("a postgres URL is accepted");
    assert_eq!(
        ok.cdr.url.as_deref(),
        Some("postgres://u:p@127.0.0.1:5432/cdr")
    );
}
