//! Bounded tables under floods (issue "No packet can stop a node"): one real `understudy`
//! process with small `[limits]`, flooded on loopback one table at a time. For each flood the
//! table's gauge never passes its bound, the refusal is counted in `/metrics`, the table
//! drains afterwards, and the process's resident memory comes back to within
//! [`SLACK_KIB`] of its baseline (taken after a warm-up, so that the allocator's first growth
//! is not mistaken for a leak) and does not grow from one round of floods to the next.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sip_tests::cluster::{Pair, PairSpec, Solo, password_of};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use understudy::sip::digest::answer_challenge;
use understudy::sip::{HeaderName, Message, Method, SipMessage, parse_datagram, response_to};

/// How far above its baseline the process may stay after a flood: the inbound queue holds
/// up to 8,192 parsed messages (about 16 MiB) and the allocator keeps what it once held, per
/// thread; an unbounded table would grow by more with every round.
const SLACK_KIB: u64 = 32 * 1024;

/// How much the process may grow from one round of every flood to the next.
const ROUND_GROWTH_KIB: u64 = 4 * 1024;
/// The least a round must add to count as growing (see [`no_growth`]).
const MIN_STEP_KIB: u64 = 512;

const LIMITS: &str =
    "[limits]\ntcp_connections = 100\ncontacts_per_aor = 10\nsubscriptions = 200\n";

/// Send every request (keyed by Call-ID) with at most `window` unanswered, retransmitting
/// after a second of silence; returns the final status per Call-ID.
pub(crate) async fn exchange(
    sock: &UdpSocket,
    server: SocketAddr,
    requests: &[(String, String)],
    window: usize,
) -> Result<HashMap<String, u16>> {
    let mut done: HashMap<String, u16> = HashMap::new();
    let mut in_flight: HashMap<String, &str> = HashMap::new();
    let mut next = 0;
    let mut buf = vec![0u8; 65_535];
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.len() < requests.len() {
        if Instant::now() > deadline {
            bail!("{} of {} answered", done.len(), requests.len());
        }
        while in_flight.len() < window
            && let Some((id, text)) = requests.get(next)
        {
            sock.send_to(text.as_bytes(), server).await?;
            in_flight.insert(id.clone(), text);
            next += 1;
        }
        let n = match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                for text in in_flight.values() {
                    sock.send_to(text.as_bytes(), server).await?;
                }
                continue;
            }
        };
        let Ok(p) = parse_datagram(&buf[..n]) else {
            continue;
        };
        let r = match p.message {
            Message::Response(r) => r,
            Message::Request(req) => {
                // NOTIFYs of the subscriptions: answered, as a phone would.
                if req.method != Method::Ack {
                    let ok = response_to(&req, 200, Some("flood"));
                    sock.send_to(&ok.to_bytes(), server).await?;
                }
                continue;
            }
        };
        if r.status < 200 {
            continue;
        }
        let id = r.call_id()?.to_string();
        if in_flight.remove(&id).is_some() {
            done.insert(id, r.status);
        }
    }
    Ok(done)
}

/// A challenge for `method` from the server, answered later with growing nonce counts.
pub(crate) async fn challenge(
    sock: &UdpSocket,
    server: SocketAddr,
    method: &str,
    uri: &str,
) -> Result<String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let call_id = format!("ch-{method}-{n}");
    let me = sock.local_addr()?;
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@pbx.local>;tag=ch\r\nTo: <sip:alice@pbx.local>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:alice@{me}>\r\nEvent: dialog\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(text.as_bytes(), server).await?;
    let mut buf = vec![0u8; 65_535];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Ok(n) = tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
        else {
            if Instant::now() > deadline {
                bail!("no challenge for {method}");
            }
            // Timer E: retransmit.
            sock.send_to(text.as_bytes(), server).await?;
            continue;
        };
        let n = n?;
        if let Ok(p) = parse_datagram(&buf[..n])
            && let Message::Response(r) = p.message
        {
            if r.call_id()? == call_id && !matches!(r.status, 401 | 407) {
                bail!("{method} answered {} instead of a challenge", r.status);
            }
            if r.call_id()? != call_id {
                continue;
            }
            return r
                .headers
                .get(&HeaderName::WwwAuthenticate)
                .or_else(|| r.headers.get(&HeaderName::ProxyAuthenticate))
                .map(str::to_string)
                .context("challenge header");
        }
    }
}

/// RSS after each round: a leak grows every round; the allocator's high-water mark moves both
/// ways with the size of each round's flood (which depends on how fast this machine is).
fn no_growth(after_round: &[u64]) -> Result<()> {
    println!("RSS after each round: {after_round:?} KiB");
    // Growth is every round adding a step of its own, of a similar size (a leak costs about
    // the same each round). One step among flat rounds is the allocator taking another
    // arena: 78,676 → 84,000 → 84,028 KiB, or 74,204 → 74,744 → 91,440 KiB (seen in the
    // TCP write-queue flood, in either round). Over five rounds, every one of four steps must
    // be such a step for the process to count as growing.
    let steps: Vec<u64> = after_round
        .windows(2)
        .map(|w| match w {
            [a, b] => b.saturating_sub(*a),
            _ => 0,
        })
        .collect();
    let smallest = steps.iter().copied().min().unwrap_or(0);
    let largest = steps.iter().copied().max().unwrap_or(0);
    let grows = smallest >= MIN_STEP_KIB && largest <= 4 * smallest;
    if let (true, [first, .., last]) = (grows, after_round)
        && *last > first + ROUND_GROWTH_KIB
    {
        bail!("memory grows round after round: {after_round:?} KiB");
    }
    Ok(())
}

/// Wait until the node holds no server transaction (they live until Timer J/K).
async fn transactions_drained(solo: &Solo) -> Result<()> {
    solo.node
        .wait_metric("understudy_transactions{kind=\"server\"}", "drained", |v| {
            v == 0.0
        })
        .await
        .map(|_| ())
}

/// The process's memory must come back within [`SLACK_KIB`] of its baseline. The allocator
/// (mimalloc) gives freed pages back to the kernel after a short delay, and blocks freed by
/// another thread only once their thread allocates again: the RSS is read until it is back,
/// for at most [`RETURN_WAIT`].
async fn check_memory(solo: &Solo, baseline: u64, flood: &str) -> Result<()> {
    let deadline = Instant::now() + RETURN_WAIT;
    loop {
        let rss = solo.node.rss_kib()?;
        if rss <= baseline + SLACK_KIB {
            println!("{flood}: RSS {rss} KiB (baseline {baseline} KiB)");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("after the {flood} flood RSS is {rss} KiB, baseline {baseline} KiB");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long memory may take to come back after a flood (see [`check_memory`]).
const RETURN_WAIT: Duration = Duration::from_secs(10);

/// 5,000 REGISTERs from alice, each with a new contact: at most `contacts_per_aor` bindings.
async fn register_flood(solo: &Solo, sock: &UdpSocket, round: u32) -> Result<()> {
    let server = solo.node.sip;
    let me = sock.local_addr()?;
    let ch = challenge(sock, server, "REGISTER", "sip:pbx.local").await?;
    let pw = password_of("alice");
    let reqs: Vec<(String, String)> = (0..5_000u32)
        .map(|i| {
            let auth = answer_challenge(&ch, "alice", &pw, "REGISTER", "sip:pbx.local", i + 1, "cn")
                .unwrap_or_default();
            let id = format!("reg-{round}-{i}");
            let text = format!(
                "REGISTER sip:pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@pbx.local>;tag=r{i}\r\nTo: <sip:alice@pbx.local>\r\n\
                 Call-ID: {id}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.2:{}>\r\nExpires: 600\r\n\
                 Authorization: {auth}\r\nContent-Length: 0\r\n\r\n",
                10_000 + i
            );
            (id, text)
        })
        .collect();
    let got = exchange(sock, server, &reqs, 64).await?;
    let ok = got.values().filter(|s| **s == 200).count();
    assert_eq!(
        ok,
        reqs.len(),
        "every REGISTER accepted: {got:?}",
        got = got.values().take(5).collect::<Vec<_>>()
    );
    let n = solo.node.metric("understudy_registrations").await?;
    assert!(n <= 10.0, "{n} bindings for one AOR, limit 10");
    // Unregister everything.
    let auth = answer_challenge(&ch, "alice", &pw, "REGISTER", "sip:pbx.local", 30_000, "cn")
        .unwrap_or_default();
    let clear = vec![(
        format!("unreg-{round}"),
        format!(
            "REGISTER sip:pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKunreg{round}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@pbx.local>;tag=u\r\nTo: <sip:alice@pbx.local>\r\n\
             Call-ID: unreg-{round}\r\nCSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\n\
             Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        ),
    )];
    let got = exchange(sock, server, &clear, 1).await?;
    assert_eq!(got.values().next(), Some(&200));
    solo.node
        .wait_metric("understudy_registrations", "0", |v| v == 0.0)
        .await?;
    Ok(())
}

/// 600 dialog SUBSCRIBEs from alice (Expires 2 s): at most `subscriptions` held, the rest
/// 503; all gone once they expire.
async fn subscribe_flood(solo: &Solo, sock: &UdpSocket, round: u32) -> Result<()> {
    let server = solo.node.sip;
    let me = sock.local_addr()?;
    let ch = challenge(sock, server, "SUBSCRIBE", "sip:bob@pbx.local").await?;
    let pw = password_of("alice");
    let reqs: Vec<(String, String)> = (0..600u32)
        .map(|i| {
            let auth =
                answer_challenge(&ch, "alice", &pw, "SUBSCRIBE", "sip:bob@pbx.local", i + 1, "cn")
                    .unwrap_or_default();
            let id = format!("sub-{round}-{i}");
            let text = format!(
                "SUBSCRIBE sip:bob@pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@pbx.local>;tag=s{i}\r\nTo: <sip:bob@pbx.local>\r\n\
                 Call-ID: {id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:alice@{me}>\r\nEvent: dialog\r\n\
                 Accept: application/dialog-info+xml\r\nExpires: 2\r\n\
                 Proxy-Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"
            );
            (id, text)
        })
        .collect();
    let got = exchange(sock, server, &reqs, 32).await?;
    let ok = got.values().filter(|s| **s == 200).count();
    let refused = got.values().filter(|s| **s == 503).count();
    assert!(ok <= 200, "{ok} subscriptions accepted, limit 200");
    assert_eq!(
        ok + refused,
        600,
        "only 200 and 503: {:?}",
        got.values().take(5).collect::<Vec<_>>()
    );
    assert!(refused >= 400);
    solo.node
        .wait_metric("understudy_dialog_subscriptions", "0", |v| v == 0.0)
        .await?;
    Ok(())
}

/// 400 TCP connections at once, limit 100: the rest closed at once and counted.
async fn tcp_connection_flood(solo: &Solo) -> Result<()> {
    let series = "understudy_transport_dropped_total{reason=\"tcp_connection_limit\"}";
    // The counter adds up over the rounds: this round's 300 come on top.
    let before = solo.node.metric(series).await?;
    let mut conns = Vec::new();
    for _ in 0..400 {
        conns.push(TcpStream::connect(solo.node.sip).await?);
    }
    let n = solo
        .node
        .wait_metric(series, "≥ 300 more", |v| v >= before + 300.0)
        .await?
        - before;
    let open = solo.node.metric("understudy_tcp_connections").await?;
    assert!(
        open <= 100.0,
        "{open} connections open, limit 100 ({n} refused)"
    );
    drop(conns);
    solo.node
        .wait_metric("understudy_tcp_connections", "0", |v| v == 0.0)
        .await?;
    Ok(())
}

/// A TCP peer that sends 60,000 OPTIONS and never reads the answers: the connection is
/// closed once its write queue is full, instead of queueing without bound.
async fn tcp_reader_stall(solo: &Solo, round: u32) -> Result<()> {
    let before = solo
        .node
        .metric("understudy_transport_dropped_total{reason=\"tcp_write_queue_full\"}")
        .await?;
    let mut s = TcpStream::connect(solo.node.sip).await?;
    let me = s.local_addr()?;
    let mut batch = String::new();
    for i in 0..60_000u32 {
        batch.push_str(&options(me, "TCP", &format!("stall-{round}-{i}")));
        if batch.len() > 64 * 1024 {
            if s.write_all(batch.as_bytes()).await.is_err() {
                break; // closed by the server: what we wait for
            }
            batch.clear();
        }
    }
    let _ = s.write_all(batch.as_bytes()).await;
    solo.node
        .wait_metric(
            "understudy_transport_dropped_total{reason=\"tcp_write_queue_full\"}",
            "counted",
            |v| v > before,
        )
        .await?;
    drop(s);
    solo.node
        .wait_metric("understudy_tcp_connections", "0", |v| v == 0.0)
        .await?;
    transactions_drained(solo).await?;
    Ok(())
}

/// Wrong passwords from 12,000 source addresses (127.1.x.y): the failure table keeps at
/// most 10,000, the oldest making room.
async fn auth_failure_flood(solo: &Solo, sock: &UdpSocket) -> Result<()> {
    let server = solo.node.sip;
    let ch = challenge(sock, server, "REGISTER", "sip:pbx.local").await?;
    let before = solo
        .node
        .metric("understudy_register_total{result=\"forbidden\"}")
        .await?;
    for batch in 0..12u32 {
        for j in 0..1000u32 {
            let i = batch * 1000 + j;
            let [_, _, a, b] = i.to_be_bytes();
            let from = UdpSocket::bind((std::net::Ipv4Addr::new(127, 1, a, b.max(1)), 0)).await?;
            let me = from.local_addr()?;
            let auth =
                answer_challenge(&ch, "alice", "wrong", "REGISTER", "sip:pbx.local", 1, "cn")
                    .unwrap_or_default();
            let text = format!(
                "REGISTER sip:pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKaf{i}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@pbx.local>;tag=a{i}\r\nTo: <sip:alice@pbx.local>\r\n\
                 Call-ID: af-{i}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@{me}>\r\n\
                 Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"
            );
            from.send_to(text.as_bytes(), server).await?;
        }
        let want = before + f64::from((batch + 1) * 1000) - 50.0;
        solo.node
            .wait_metric(
                "understudy_register_total{result=\"forbidden\"}",
                "caught up",
                |v| v >= want,
            )
            .await?;
    }
    solo.node
        .wait_metric(
            "understudy_limit_dropped_total{table=\"auth_failures\"}",
            "counted",
            |v| v >= 1500.0,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn floods_of_every_kind_stay_within_their_bounds_and_memory_returns() -> Result<()> {
    let solo = Solo::start(&["alice", "bob"], LIMITS).await?;
    let r = floods(&solo).await;
    if r.is_err() {
        eprintln!("log tail:\n{}", solo.node.log_tail(40));
    }
    r
}

async fn floods(solo: &Solo) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    // Warm-up: two rounds of each flood (the allocator's arenas grow to their working size
    // once per thread), then the baseline.
    for round in 0..2 {
        register_flood(solo, &sock, round).await?;
        subscribe_flood(solo, &sock, round).await?;
        tcp_connection_flood(solo).await?;
        tcp_reader_stall(solo, round).await?;
    }
    let baseline = solo.node.rss_kib()?;
    let mut after_round = Vec::new();
    // Five measured rounds: a leak adds a similar step every round; the allocator's steps
    // (seen: 83,012 → 84,260 → 87,872 KiB in three rounds) do not go on.
    for round in 2..=6 {
        register_flood(solo, &sock, round).await?;
        check_memory(solo, baseline, "REGISTER").await?;
        subscribe_flood(solo, &sock, round).await?;
        check_memory(solo, baseline, "SUBSCRIBE").await?;
        tcp_connection_flood(solo).await?;
        check_memory(solo, baseline, "TCP connection").await?;
        tcp_reader_stall(solo, round).await?;
        check_memory(solo, baseline, "TCP write queue").await?;
        after_round.push(solo.node.rss_kib()?);
    }
    no_growth(&after_round)?;
    auth_failure_flood(solo, &sock).await?;
    check_memory(solo, baseline, "auth failure").await?;
    // Still serving.
    let n = solo.node.metric("understudy_internal_errors_total").await?;
    assert_eq!(n, 0.0);
    Ok(())
}

/// This test's path inside the test binary, for the namespaced re-run.
const BACKLOG_TEST: &str =
    "bounded::a_peer_that_cannot_take_our_datagrams_meets_the_udp_send_backlog";

/// A peer that asks faster than the link back to it carries: on the loopback of a fresh
/// network namespace, `tc` holds what the node sends to the flooder's port (8 kbit/s, a deep
/// queue) while everything else flows. The node's socket buffer fills, answers wait in the
/// UDP send backlog, which never holds more than its 16,384 messages; the rest are dropped
/// and counted. Then the link opens: the backlog drains, the node still answers others, and
/// memory comes back to its baseline, round after round.
#[test]
fn a_peer_that_cannot_take_our_datagrams_meets_the_udp_send_backlog() {
    if !sip_tests::netns::inside() {
        let out = sip_tests::netns::run_inside(BACKLOG_TEST);
        assert!(
            out.contains("udp backlog: checked"),
            "the namespaced run checked nothing"
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(backlog_flood()) {
        panic!("{e:#}");
    }
}

fn tc(cmd: &str) -> Result<()> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("tc {cmd}")])
        .output()?;
    if !out.status.success() {
        bail!("tc {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Set the rate of what the node sends from its SIP port.
fn node_link(rate: &str) -> Result<()> {
    tc(&format!(
        "class change dev lo parent 1: classid 1:10 htb rate {rate} ceil {rate}"
    ))
}

async fn backlog_flood() -> Result<()> {
    // Short timers, so that a round's OPTIONS transactions end within seconds.
    let solo = Solo::start(&["alice"], &format!("{LIMITS}[timers]\nt1_ms = 50\n")).await?;
    let sip = solo.node.sip.port();
    tc("qdisc add dev lo root handle 1: htb default 20")?;
    tc("class add dev lo parent 1: classid 1:10 htb rate 1gbit ceil 1gbit")?;
    tc("class add dev lo parent 1: classid 1:20 htb rate 10gbit")?;
    tc("qdisc add dev lo parent 1:10 pfifo limit 200000")?;
    tc(&format!(
        "filter add dev lo parent 1: protocol ip u32 match ip sport {sip} 0xffff flowid 1:10"
    ))?;
    let r = backlog_rounds(&solo).await;
    if r.is_err() {
        eprintln!("log tail:\n{}", solo.node.log_tail(40));
    }
    r
}

async fn backlog_rounds(solo: &Solo) -> Result<()> {
    let bound = understudy::transport::UDP_BACKLOG as f64;
    let series = "understudy_transport_dropped_total{reason=\"udp_backlog_full\"}";
    let flooder = UdpSocket::bind("127.0.0.1:0").await?;
    let me = flooder.local_addr()?;
    let other = UdpSocket::bind("127.0.0.1:0").await?;
    let mut baseline = 0;
    let mut after_round = Vec::new();
    for round in 0..5u32 {
        let before = solo.node.metric(series).await?;
        let mut peak = 0.0f64;
        node_link("8kbit")?;
        // OPTIONS in chunks of 1,000 until the node counts answers dropped at the full
        // backlog (at most 200,000), the backlog read between chunks.
        let mut sent = 0u32;
        while sent < 200_000 && solo.node.metric(series).await? <= before {
            for _ in 0..1_000u32 {
                let i = sent;
                sent += 1;
                let text = options(me, "UDP", &format!("backlog-{round}-{i}"));
                flooder.send_to(text.as_bytes(), solo.node.sip).await?;
            }
            peak = peak.max(solo.node.metric("understudy_udp_send_backlog").await?);
        }
        let dropped = solo
            .node
            .wait_metric(series, "counted", |v| v > before)
            .await?;
        peak = peak.max(solo.node.metric("understudy_udp_send_backlog").await?);
        assert!(peak <= bound, "send backlog reached {peak}, bound {bound}");
        assert!(peak > 0.0, "the flood never reached the backlog");
        node_link("1gbit")?;
        solo.node
            .wait_metric("understudy_udp_send_backlog", "drained", |v| v == 0.0)
            .await?;
        transactions_drained(solo).await?;
        println!(
            "round {round}: {sent} OPTIONS, backlog peak {peak}, {} answers dropped at the full \
             backlog",
            dropped - before
        );
        // Still answering others.
        probe(&other, solo.node.sip, &format!("{round}-end")).await?;
        // The first two rounds are the warm-up that sets the baseline.
        if round < 2 {
            baseline = solo.node.rss_kib()?;
        } else {
            check_memory(solo, baseline, "UDP send backlog").await?;
            after_round.push(solo.node.rss_kib()?);
        }
    }
    no_growth(&after_round)?;
    assert_eq!(
        solo.node.metric("understudy_internal_errors_total").await?,
        0.0
    );
    println!("udp backlog: checked");
    Ok(())
}

/// An OPTIONS from `me` over `transport` (`UDP`, `TCP`), its Call-ID (and branch) from `id`.
fn options(me: SocketAddr, transport: &str, id: &str) -> String {
    format!(
        "OPTIONS sip:solo@pbx.local SIP/2.0\r\nVia: SIP/2.0/{transport} {me};branch=z9hG4bK{id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:load@pbx.local>;tag=o\r\nTo: <sip:solo@pbx.local>\r\n\
         Call-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// An OPTIONS from `sock`, answered 200.
async fn probe(sock: &UdpSocket, server: SocketAddr, id: &str) -> Result<()> {
    let me = sock.local_addr()?;
    let call_id = format!("probe-{id}");
    let req = vec![(call_id.clone(), options(me, "UDP", &call_id))];
    let got = exchange(sock, server, &req, 1).await?;
    if got.values().next() != Some(&200) {
        bail!("probe {id}: {got:?}");
    }
    Ok(())
}

/// The pair's own tables are fed only by the authenticated peer: registration subscriptions
/// (the active's notifier) and the dialog digest (the stand-by's pending takeover work). A
/// flood of forged pair traffic from another address — reg SUBSCRIBEs and keep-alives
/// carrying digest bodies, with well-formed but wrong signatures — is refused (403) and
/// counted, neither table grows, and both processes' memory stays at its baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pair_traffic_cannot_grow_the_pair_tables() -> Result<()> {
    let pair = Pair::start("forged-pair-flood", &PairSpec::default()).await?;
    // The stand-by's own reg subscription first (a main still starting answers it 503 and the
    // stand-by tries again a second later): the check below counts it.
    pair.main
        .wait_status(
            Duration::from_secs(10),
            "the stand-by's reg subscription",
            |v| v["reg_subscribers"].as_u64() == Some(1),
        )
        .await?;
    let sock = UdpSocket::bind("127.0.0.2:0").await?;
    let me = sock.local_addr()?;
    let forged = |kind: &str, i: u32| -> (String, String) {
        let id = format!("forged-{kind}-{i}");
        let sig = format!(
            "X-Understudy-Version: 2\r\nX-Understudy-Seq: 1700000000000.{i}\r\n\
             X-Understudy-Time: 1700000000000\r\nX-Understudy-Sig: {}\r\n",
            "0".repeat(64)
        );
        let text = if kind == "reg" {
            format!(
                "SUBSCRIBE sip:reg@pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:standby-1@{me}>;tag=f{i}\r\nTo: <sip:reg@pbx.local>\r\n\
                 Call-ID: {id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:standby-1@{me}>\r\nEvent: reg\r\n\
                 Expires: 600\r\n{sig}Content-Length: 0\r\n\r\n"
            )
        } else {
            let body = format!("D\t{i:016x}\ta\tcall-{i}\tt1\tt2\n");
            format!(
                "OPTIONS sip:pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:main-1@{me}>;tag=f{i}\r\nTo: <sip:standby-1@pbx.local>\r\n\
                 Call-ID: {id}\r\nCSeq: {i} OPTIONS\r\nX-Understudy-Node: main-1\r\n\
                 X-Understudy-Role: active\r\nX-Understudy-Epoch: 99\r\nX-Understudy-Calls: 1\r\n\
                 {sig}Content-Type: application/x-understudy-digest\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        (id, text)
    };
    let mut baseline = [0u64; 2];
    let mut after_round = Vec::new();
    for round in 0..5u32 {
        let reg: Vec<_> = (0..2_000)
            .map(|i| forged("reg", round * 10_000 + i))
            .collect();
        let ka: Vec<_> = (0..2_000)
            .map(|i| forged("ka", round * 10_000 + i))
            .collect();
        for (target, reqs) in [(pair.main.sip, &reg), (pair.standby.sip, &ka)] {
            let got = exchange(&sock, target, reqs, 64).await?;
            let refused = got.values().filter(|s| **s == 403).count();
            if refused != reqs.len() {
                bail!(
                    "{refused} of {} forged pair messages refused: {:?}",
                    reqs.len(),
                    got.values().take(5).collect::<Vec<_>>()
                );
            }
        }
        let main = pair.main.status().await?;
        let standby = pair.standby.status().await?;
        if main["reg_subscribers"].as_u64() != Some(1) {
            bail!(
                "the main holds {} reg subscriptions",
                main["reg_subscribers"]
            );
        }
        if standby["digest"]["calls_known"].as_u64() != Some(0) || standby["role"] != "standby" {
            bail!("forged keep-alives moved the stand-by: {standby}");
        }
        // The 403s' server transactions live until Timer J; measure once they are gone (the
        // pair's own keep-alives keep a few dozen alive at any time).
        for node in [&pair.main, &pair.standby] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while node
                .metric("understudy_transactions{kind=\"server\"}")
                .await?
                > 100.0
            {
                if Instant::now() > deadline {
                    bail!("{}: server transactions never drained", node.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let rss = [pair.main.rss_kib()?, pair.standby.rss_kib()?];
        if round < 2 {
            baseline = rss;
        } else {
            for (node, (now, base)) in ["main", "standby"].iter().zip(rss.iter().zip(baseline)) {
                println!("forged pair flood: {node} RSS {now} KiB (baseline {base} KiB)");
                if *now > base + SLACK_KIB {
                    bail!("{node}: RSS {now} KiB after the flood, baseline {base} KiB");
                }
            }
            after_round.push(rss[0] + rss[1]);
        }
    }
    no_growth(&after_round)?;
    let rejected = pair
        .standby
        .metric("understudy_keepalives_total{dir=\"rejected\"}")
        .await?;
    if rejected < 6_000.0 {
        bail!("the stand-by counted {rejected} rejected keep-alives, 6,000 were forged");
    }
    println!("forged pair flood: the stand-by rejected {rejected} keep-alives");
    Ok(())
}
