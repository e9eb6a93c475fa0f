//! Pair tests: two nodes as separate processes (the real `understudy` binary) on loopback.
//! kill -9 and detection time, restart as stand-by with a lower epoch, switchover both ways,
//! forged keep-alives, a simulated network split, and registrations surviving a takeover.
//! (The binary and free ports come from [`sip_tests::cluster`], which the takeover tests use
//! with an async harness.)

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use sip_tests::cluster::{binary, free_port};
use understudy::sip::{
    HeaderName, Message, Method, Request, SipMessage, digest::answer_challenge, new_branch,
    new_tag, parse_datagram, response_to,
};

struct Ports {
    main_sip: u16,
    main_admin: u16,
    standby_sip: u16,
    standby_admin: u16,
    trunk: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            main_sip: free_port(),
            main_admin: free_port(),
            standby_sip: free_port(),
            standby_admin: free_port(),
            trunk: free_port(),
        }
    }
}

fn config(
    name: &str,
    home: &str,
    sip: u16,
    admin: u16,
    peer: u16,
    trunk: u16,
    dir: &Path,
) -> String {
    format!(
        r#"[node]
name = "{name}"
home_role = "{home}"
sip_udp = "127.0.0.1:{sip}"
sip_tcp = "127.0.0.1:{sip}"
domain = "pbx.local"
[admin]
listen = "127.0.0.1:{admin}"
[state]
dir = "{dir}"
[pair]
peer = "127.0.0.1:{peer}"
secret = "pair-test-secret"
keepalive_ms = 200
missed_keepalives = 3
probe_timeout_ms = 200
test_hooks = true
[[users]]
name = "alice"
password = "alice-secret"
[[trunks]]
name = "load"
address = "127.0.0.1:{trunk}"
prefixes = ["9"]
"#,
        dir = dir.display()
    )
}

struct Node {
    name: &'static str,
    child: Option<Child>,
    cfg: PathBuf,
    admin: u16,
    sip: u16,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::File::create(self.cfg.with_extension("log")).expect("log");
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&self.cfg)
            .env("RUST_LOG", "info")
            // tracing writes to stdout: keep it in the log too.
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn understudy");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn status(&self) -> Option<Value> {
        http("GET", self.admin, "/status").and_then(|b| serde_json::from_str(&b).ok())
    }

    fn role(&self) -> Option<String> {
        self.status()
            .and_then(|v| v["role"].as_str().map(str::to_string))
    }

    fn epoch(&self) -> u64 {
        self.status().and_then(|v| v["epoch"].as_u64()).unwrap_or(0)
    }

    fn post(&self, path: &str) -> Option<String> {
        http("POST", self.admin, path)
    }

    /// Wait until `/status` satisfies `f`, polling every 10 ms, up to `limit`.
    fn wait(&self, limit: Duration, f: impl Fn(&Value) -> bool) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.status().is_some_and(|v| f(&v)) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.cfg.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal blocking HTTP/1.1 client for the admin API.
fn http(method: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

struct Pair {
    main: Node,
    standby: Node,
    ports: Ports,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pair() -> Pair {
    let dir = std::env::temp_dir().join(format!("understudy-pair-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let p = Ports::new();
    let mcfg = dir.join("main.toml");
    let scfg = dir.join("standby.toml");
    std::fs::write(
        &mcfg,
        config(
            "main-1",
            "main",
            p.main_sip,
            p.main_admin,
            p.standby_sip,
            p.trunk,
            &dir.join("main"),
        ),
    )
    .expect("write");
    std::fs::write(
        &scfg,
        config(
            "standby-1",
            "standby",
            p.standby_sip,
            p.standby_admin,
            p.main_sip,
            p.trunk,
            &dir.join("standby"),
        ),
    )
    .expect("write");
    let mut pr = Pair {
        main: Node {
            name: "main",
            child: None,
            cfg: mcfg,
            admin: p.main_admin,
            sip: p.main_sip,
        },
        standby: Node {
            name: "standby",
            child: None,
            cfg: scfg,
            admin: p.standby_admin,
            sip: p.standby_sip,
        },
        ports: p,
        _dir: TempDir(dir),
    };
    pr.main.start();
    pr.standby.start();
    pr.wait_settled(&["main"]);
    pr
}

impl Pair {
    /// Wait until exactly the named node is active, the other is stand-by, and they see each
    /// other alive.
    fn wait_settled(&self, active: &[&str]) {
        let ok = |n: &Node| {
            n.wait(Duration::from_secs(10), |v| {
                let want = if active.contains(&n.name) {
                    "active"
                } else {
                    "standby"
                };
                // The stand-by is settled once it heard the active announce itself (and its
                // epoch), not merely heard it.
                v["role"] == want
                    && v["peer"]["state"] == "alive"
                    && (want == "active" || v["peer"]["role"] == "active")
            })
        };
        assert!(
            ok(&self.main).is_some(),
            "main did not settle: {:?}\n{}",
            self.main.status(),
            self.main.log()
        );
        assert!(
            ok(&self.standby).is_some(),
            "standby did not settle: {:?}\n{}",
            self.standby.status(),
            self.standby.log()
        );
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn kill9_detection_median_of_10_and_restart_comes_back_as_standby() {
    let mut p = pair();
    let mut times = Vec::new();
    for round in 0..10 {
        // Alternate: kill whichever node is active, restart it, and it must come back as
        // stand-by with a lower epoch than the new active.
        let (victim, survivor) = if round % 2 == 0 {
            (&mut p.main, &mut p.standby)
        } else {
            (&mut p.standby, &mut p.main)
        };
        let old_epoch = victim.epoch();
        victim.kill9();
        let t = survivor
            .wait(Duration::from_secs(5), |v| v["role"] == "active")
            .unwrap_or_else(|| panic!("round {round}: no takeover\n{}", survivor.log()));
        times.push(t);
        let new_epoch = survivor.epoch();
        assert!(new_epoch > old_epoch, "epoch must rise on takeover");
        victim.start();
        assert!(
            victim
                .wait(Duration::from_secs(10), |v| v["role"] == "standby"
                    && v["peer"]["state"] == "alive")
                .is_some(),
            "round {round}: restarted node must come back as stand-by\n{}",
            victim.log()
        );
        assert!(
            victim.epoch() < new_epoch,
            "restarted node keeps its lower epoch"
        );
        assert_eq!(
            survivor.role().as_deref(),
            Some("active"),
            "no role flap after the restart"
        );
    }
    let m = median(times.clone());
    eprintln!("detection times (kill -9 → active in /status): {times:?}, median {m:?}");
    assert!(
        m <= Duration::from_millis(1000),
        "median detection {m:?} > 1.0 s"
    );
}

#[test]
fn a_slow_active_does_not_cause_a_takeover() {
    let p = pair();
    let pid = p.main.child.as_ref().map(Child::id).expect("pid");
    // Freeze the active for less than one detection period (2 keep-alive intervals), five times.
    for _ in 0..5 {
        Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill");
        std::thread::sleep(Duration::from_millis(380));
        Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status()
            .expect("kill");
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(
        p.standby.role().as_deref(),
        Some("standby"),
        "{}",
        p.standby.log()
    );
    assert_eq!(p.main.role().as_deref(), Some("active"));
    assert_eq!(p.standby.epoch(), 0);
}

#[test]
fn switchover_both_ways() {
    let p = pair();
    let e0 = p.main.epoch();
    // On the active: it hands over.
    let r = p.main.post("/switchover").expect("answer");
    assert!(r.contains("handing over"), "{r}");
    p.wait_settled(&["standby"]);
    let e1 = p.standby.epoch();
    assert!(e1 > e0);
    // On the stand-by (now the home main): it takes over.
    let r = p.main.post("/switchover").expect("answer");
    assert!(r.contains("taking over"), "{r}");
    p.wait_settled(&["main"]);
    assert!(p.main.epoch() > e1);
    // Never both active at once: the old active steps down within a keep-alive or two.
    assert_eq!(p.standby.role().as_deref(), Some("standby"));
}

fn keepalive_forgery(node: &Node, epoch: u64) -> Request {
    let mut r = Request::new(Method::Options, format!("sip:127.0.0.1:{}", node.sip));
    r.headers.push(
        HeaderName::Via,
        format!("SIP/2.0/UDP 127.0.0.1:9;branch={}", new_branch()),
    );
    r.headers.push(
        HeaderName::From,
        format!("<sip:evil@127.0.0.1>;tag={}", new_tag()),
    );
    r.headers
        .push(HeaderName::To, format!("<sip:127.0.0.1:{}>", node.sip));
    r.headers
        .push(HeaderName::CallId, format!("forged-{}", new_tag()));
    r.headers.push(HeaderName::CSeq, "1 OPTIONS");
    r.headers.push(HeaderName::MaxForwards, "70");
    for (n, v) in [
        ("X-Understudy-Node", "main-1".to_string()),
        ("X-Understudy-Role", "active".to_string()),
        ("X-Understudy-Epoch", epoch.to_string()),
        ("X-Understudy-Calls", "0".to_string()),
        ("X-Understudy-Config", "x".to_string()),
        ("X-Understudy-Auth", "00".repeat(32)),
    ] {
        r.headers.push(HeaderName::Other(n.into()), v);
    }
    r
}

#[test]
fn forged_keepalives_neither_prevent_nor_cause_a_takeover() {
    let mut p = pair();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    // A forged "active, epoch 99" keep-alive to the active: 403, and it does not step down.
    let f = keepalive_forgery(&p.main, 99);
    sock.send_to(&f.to_bytes(), ("127.0.0.1", p.main.sip))
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 403"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.main.role().as_deref(), Some("active"));
    // Kill the main and keep sending forged keep-alives to the stand-by: it still takes over.
    p.main.kill9();
    let t0 = Instant::now();
    let stop = Instant::now() + Duration::from_secs(3);
    let mut took_over = None;
    while Instant::now() < stop {
        let f = keepalive_forgery(&p.standby, 1);
        sock.send_to(&f.to_bytes(), ("127.0.0.1", p.standby.sip))
            .expect("send");
        if p.standby.role().as_deref() == Some("active") {
            took_over = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        took_over.is_some_and(|t| t < Duration::from_millis(1500)),
        "{took_over:?}\n{}",
        p.standby.log()
    );
}

#[test]
fn network_split_gives_two_actives_then_exactly_one() {
    let p = pair();
    assert!(
        p.main
            .post("/test/partition?on")
            .is_some_and(|r| r.contains("true"))
    );
    assert!(
        p.standby
            .post("/test/partition?on")
            .is_some_and(|r| r.contains("true"))
    );
    assert!(
        p.standby
            .wait(Duration::from_secs(5), |v| v["role"] == "active")
            .is_some(),
        "{}",
        p.standby.log()
    );
    assert_eq!(
        p.main.role().as_deref(),
        Some("active"),
        "during a split both are active"
    );
    let (em, es) = (p.main.epoch(), p.standby.epoch());
    assert!(es > em, "standby epoch {es}, main epoch {em}");
    p.main.post("/test/partition?off");
    p.standby.post("/test/partition?off");
    // Healed: the higher epoch (the former stand-by) stays active, the main steps down.
    p.wait_settled(&["standby"]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(p.main.role().as_deref(), Some("standby"));
    assert_eq!(p.standby.role().as_deref(), Some("active"));
}

// ---- a phone registered at the active is reachable through the new active -------------

fn recv_msg(sock: &UdpSocket, want: impl Fn(&Message) -> bool) -> (Message, SocketAddr) {
    let mut buf = vec![0u8; 65535];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && let Ok(p) = parse_datagram(&buf[..n])
            && want(&p.message)
        {
            return (p.message, from);
        }
    }
    panic!("no matching message within 5 s");
}

fn register(sock: &UdpSocket, server: u16) {
    let me = sock.local_addr().expect("addr");
    let call_id = format!("reg-{}", new_tag());
    let build = |cseq: u32, auth: Option<String>| {
        let mut r = Request::new(Method::Register, "sip:pbx.local");
        r.headers.push(
            HeaderName::Via,
            format!("SIP/2.0/UDP {me};branch={};rport", new_branch()),
        );
        r.headers
            .push(HeaderName::From, "<sip:alice@pbx.local>;tag=r1");
        r.headers.push(HeaderName::To, "<sip:alice@pbx.local>");
        r.headers.push(HeaderName::CallId, call_id.clone());
        r.headers.push(HeaderName::CSeq, format!("{cseq} REGISTER"));
        r.headers
            .push(HeaderName::Contact, format!("<sip:alice@{me}>"));
        r.headers.push(HeaderName::Expires, "300");
        r.headers.push(HeaderName::MaxForwards, "70");
        if let Some(a) = auth {
            r.headers.push(HeaderName::Authorization, a);
        }
        r
    };
    sock.send_to(&build(1, None).to_bytes(), ("127.0.0.1", server))
        .expect("send");
    let (m, _) = recv_msg(
        sock,
        |m| matches!(m, Message::Response(r) if r.status == 401),
    );
    let ch = m
        .headers()
        .get(&HeaderName::WwwAuthenticate)
        .expect("challenge")
        .to_string();
    let a = answer_challenge(
        &ch,
        "alice",
        "alice-secret",
        "REGISTER",
        "sip:pbx.local",
        1,
        "c",
    )
    .expect("answer");
    sock.send_to(&build(2, Some(a)).to_bytes(), ("127.0.0.1", server))
        .expect("send");
    recv_msg(
        sock,
        |m| matches!(m, Message::Response(r) if r.status == 200),
    );
}

#[test]
fn registration_survives_takeover_and_the_phone_can_be_called() {
    let mut p = pair();
    let phone = UdpSocket::bind("127.0.0.1:0").expect("bind");
    phone
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok();
    register(&phone, p.main.sip);
    // The stand-by learns the binding through the reg event subscription.
    assert!(
        p.standby
            .wait(Duration::from_secs(5), |_| http(
                "GET",
                p.standby.admin,
                "/registrations"
            )
            .is_some_and(|b| b.contains("\"peer\"")))
            .is_some(),
        "stand-by never learned the registration\n{}",
        p.standby.log()
    );
    p.main.kill9();
    assert!(
        p.standby
            .wait(Duration::from_secs(5), |v| v["role"] == "active")
            .is_some()
    );
    // A call from the trunk to alice through the new active, without re-registering.
    let trunk = UdpSocket::bind(("127.0.0.1", p.ports.trunk)).expect("trunk port");
    trunk
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok();
    let tme = trunk.local_addr().expect("addr");
    let mut inv = Request::new(
        Method::Invite,
        format!("sip:alice@127.0.0.1:{}", p.standby.sip),
    );
    inv.headers.push(
        HeaderName::Via,
        format!("SIP/2.0/UDP {tme};branch={}", new_branch()),
    );
    inv.headers
        .push(HeaderName::From, "<sip:trunk@127.0.0.1>;tag=t1");
    inv.headers.push(HeaderName::To, "<sip:alice@pbx.local>");
    inv.headers
        .push(HeaderName::CallId, format!("call-{}", new_tag()));
    inv.headers.push(HeaderName::CSeq, "1 INVITE");
    inv.headers
        .push(HeaderName::Contact, format!("<sip:trunk@{tme}>"));
    inv.headers.push(HeaderName::MaxForwards, "70");
    trunk
        .send_to(&inv.to_bytes(), ("127.0.0.1", p.standby.sip))
        .expect("send");
    let (m, from) = recv_msg(
        &phone,
        |m| matches!(m, Message::Request(r) if r.method == Method::Invite),
    );
    let Message::Request(b_inv) = m else {
        unreachable!()
    };
    assert_eq!(
        from.port(),
        p.standby.sip,
        "the INVITE comes from the new active"
    );
    let ok = response_to(&b_inv, 200, Some("phone"));
    let mut ok = ok;
    ok.headers.push(
        HeaderName::Contact,
        format!("<sip:alice@{}>", phone.local_addr().expect("addr")),
    );
    phone.send_to(&ok.to_bytes(), from).expect("send");
    let (m, _) = recv_msg(
        &trunk,
        |m| matches!(m, Message::Response(r) if r.status == 200),
    );
    assert_eq!(m.cseq().expect("cseq").method, Method::Invite);
    let _ = &mut p;
}
