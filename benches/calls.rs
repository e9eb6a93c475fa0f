//! In-process call benchmark: the whole server (transactions, B2BUA, CDR events) driven with
//! messages as a trunk and a callee would send them, no sockets. Prints the CPU time per call
//! (INVITE → 100/180/200 → ACK → BYE → 200 on both legs) and the live heap per held call,
//! measured with a counting allocator, at 10,000 concurrent calls (`CALLS_N` for another
//! number).
//!
//! Under `valgrind --tool=callgrind` (see `sipp-scenarios/instructions.sh`) the server's own
//! work is what [`feed`] and [`drain`] do — parse a datagram and handle it, hand out what
//! the server sends, its CDR records and its timers — so toggling collection on those two
//! functions counts the instructions the server spends per call, apart from this bench's
//! building and reading of messages.

// Benchmark code: it may unwrap, index and panic (the no-panic lints are for the server).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
#![allow(unsafe_code)] // the counting allocator below (a benchmark, not the product)

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use understudy::config::{Config, TrunkAddress, TrunkConfig, TrunkTransport};
use understudy::dialog::LocalContact;
use understudy::server::Server;
use understudy::sip::{Message, SipMessage, parse_datagram, response_to};
use understudy::transport::{Flow, Inbound};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Live allocations by size (in 8-byte steps; the last bucket holds everything larger), for
/// the per-call allocation list (`CALLS_HIST=1`).
const BUCKETS: usize = 513;
static HIST: [AtomicIsize; BUCKETS] = [const { AtomicIsize::new(0) }; BUCKETS];
/// Whether `HIST` is kept (off by default: it would add to the instruction count).
static HIST_ON: AtomicBool = AtomicBool::new(false);

fn bucket(size: usize) -> usize {
    size.div_ceil(8).min(BUCKETS - 1)
}

fn hist_snapshot() -> Vec<isize> {
    HIST.iter().map(|h| h.load(Ordering::Relaxed)).collect()
}

// SAFETY-free: delegates to the product's allocator (mimalloc, as in src/main.rs) and only
// counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        if HIST_ON.load(Ordering::Relaxed) {
            HIST[bucket(l.size())].fetch_add(1, Ordering::Relaxed);
        }
        unsafe { MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        if HIST_ON.load(Ordering::Relaxed) {
            HIST[bucket(l.size())].fetch_sub(1, Ordering::Relaxed);
        }
        unsafe { MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        if HIST_ON.load(Ordering::Relaxed) {
            HIST[bucket(l.size())].fetch_sub(1, Ordering::Relaxed);
            HIST[bucket(n)].fetch_add(1, Ordering::Relaxed);
        }
        unsafe { MiMalloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn trunk(name: &str, addr: SocketAddr, prefix: &str) -> TrunkConfig {
    TrunkConfig {
        name: name.into(),
        address: TrunkAddress {
            ip: addr.ip(),
            port: Some(addr.port()),
        },
        prefixes: vec![prefix.into()],
        strip: 1,
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

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// The server receives a datagram: parsed as the transport does, then handled.
#[inline(never)]
fn feed(s: &mut Server, now: Instant, bytes: &[u8], from: SocketAddr) {
    let p = parse_datagram(bytes).expect("parses");
    s.handle_inbound(now, Inbound::Message(Box::new(p), Flow::udp(from)));
}

/// Everything the server has to send, with its destination, and its CDR records (the node
/// hands them to the writer thread).
#[inline(never)]
fn drain(s: &mut Server) -> Vec<(SocketAddr, bytes::Bytes)> {
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit() {
        out.push((t.flow.remote, t.bytes));
    }
    std::hint::black_box(s.take_cdrs());
    out
}

/// Timers due at `now`.
#[inline(never)]
fn tick(s: &mut Server, now: Instant) {
    s.handle_timeout(now);
}

/// Drain what the server sent; return the messages that went to `to`.
fn sent_to(s: &mut Server, to: SocketAddr) -> Vec<Message> {
    drain(s)
        .into_iter()
        .filter(|(dest, _)| *dest == to)
        .filter_map(|(_, bytes)| parse_datagram(&bytes).ok().map(|p| p.message))
        .collect()
}

fn invite(i: usize, from: SocketAddr) -> String {
    format!(
        "INVITE sip:91234@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKa{i}\r\nMax-Forwards: 70\r\nFrom: <sip:caller@{from}>;tag=f{i}\r\nTo: <sip:91234@127.0.0.1:5060>\r\nCall-ID: call-{i}@bench\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{from}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

fn main() {
    let a: SocketAddr = "127.0.0.1:5080".parse().expect("addr");
    let b: SocketAddr = "127.0.0.1:5070".parse().expect("addr");
    let mut cfg = Config::builtin_default();
    cfg.trunks = vec![trunk("carrier", b, "9"), trunk("gateway", a, "0")];
    cfg.cdr.enabled = false;
    let me = LocalContact {
        udp: "127.0.0.1:5060".into(),
        tcp: "127.0.0.1:5060".into(),
        tls: String::new(),
    };
    let t0 = Instant::now();
    let mut s = Server::new(
        Arc::new(cfg),
        me,
        t0,
        1_700_000_000_000,
        Box::new(understudy::pair::epoch::MemoryEpochStore::new(1)),
    );
    let n: usize = std::env::var("CALLS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    HIST_ON.store(std::env::var_os("CALLS_HIST").is_some(), Ordering::Relaxed);
    let before = LIVE.load(Ordering::Relaxed);
    let hist_before = hist_snapshot();
    // What the bench keeps of each B leg to hang it up later: its From and Call-ID.
    let mut b_dialogs: Vec<(String, String)> = Vec::with_capacity(n);
    let cpu0 = Instant::now();
    let mut now = t0;
    for i in 0..n {
        now += Duration::from_micros(100);
        feed(&mut s, now, invite(i, a).as_bytes(), a);
        let msgs = sent_to(&mut s, b);
        let Some(Message::Request(binv)) = msgs.into_iter().next() else {
            panic!("no B INVITE")
        };
        let mut ringing = response_to(&binv, 180, Some(&format!("t{i}")));
        ringing.headers.push(
            understudy::sip::HeaderName::Contact,
            format!("<sip:callee@{b}>"),
        );
        feed(&mut s, now, &ringing.to_bytes(), b);
        let mut ok = response_to(&binv, 200, Some(&format!("t{i}")));
        ok.headers.push(
            understudy::sip::HeaderName::Contact,
            format!("<sip:callee@{b}>"),
        );
        ok.headers
            .push(understudy::sip::HeaderName::ContentType, "application/sdp");
        ok.body = bytes::Bytes::from_static(SDP.as_bytes());
        feed(&mut s, now, &ok.to_bytes(), b);
        let to_a = sent_to(&mut s, a);
        let ok_a = to_a
            .iter()
            .find_map(|m| match m {
                Message::Response(r) if r.status == 200 => Some(r.clone()),
                _ => None,
            })
            .expect("200 to A");
        let ack = format!(
            "ACK sip:caller@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKack{i}\r\nMax-Forwards: 70\r\nFrom: <sip:caller@{a}>;tag=f{i}\r\nTo: {}\r\nCall-ID: call-{i}@bench\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            ok_a.headers
                .get(&understudy::sip::HeaderName::To)
                .unwrap_or("")
        );
        feed(&mut s, now, ack.as_bytes(), a);
        let _ = sent_to(&mut s, b);
        b_dialogs.push((
            binv.headers
                .get(&understudy::sip::HeaderName::From)
                .unwrap_or("")
                .to_string(),
            binv.call_id().unwrap_or("").to_string(),
        ));
    }
    let setup = cpu0.elapsed();
    // Let every transaction of the ramp end (Timer M/L/K/J), then measure the held calls.
    now += Duration::from_secs(40);
    tick(&mut s, now);
    now += Duration::from_secs(2);
    tick(&mut s, now);
    let _ = sent_to(&mut s, b);
    let held = LIVE.load(Ordering::Relaxed) - before;
    // What the counting allocator counted for it: the strings' capacities and the vector.
    let kept: usize = b_dialogs
        .iter()
        .map(|(from, call_id)| from.capacity() + call_id.capacity())
        .sum::<usize>()
        + b_dialogs.capacity() * std::mem::size_of::<(String, String)>();
    let calls = s.b2bua().call_count();
    eprintln!(
        "debug: tx client {} server {} tracked {} size_of Call {} Dialog {}",
        s.transactions().client_count(),
        s.transactions().server_count(),
        s.b2bua().tracked_transactions(),
        std::mem::size_of::<understudy::b2bua::Call>(),
        std::mem::size_of::<understudy::dialog::Dialog>()
    );
    assert_eq!(calls, n);
    println!(
        "calls set up: {n} in {:?} → {:.1} µs of CPU per call setup (INVITE/180/200/ACK through both legs)",
        setup,
        setup.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "live heap per held call: {:.0} bytes (server only: {} bytes total minus ~{} bytes this bench keeps)",
        (held as f64 - kept as f64) / n as f64,
        held,
        kept
    );
    if std::env::var_os("CALLS_HIST").is_some() {
        // Allocations per held call by size (the bench's own two strings per call included).
        for (i, (a, b)) in hist_snapshot().iter().zip(&hist_before).enumerate() {
            let per_call = (a - b) as f64 / n as f64;
            if per_call >= 0.05 {
                println!(
                    "allocations of {:>5} bytes: {per_call:.2} per held call",
                    i * 8
                );
            }
        }
    }
    if std::env::var_os("CALLS_EXIT_HELD").is_some() {
        // For a heap profiler's end-of-run view (valgrind --tool=dhat): the server's live
        // heap with every call held.
        std::process::exit(0);
    }
    // Hang up every call from B and measure the teardown.
    let cpu1 = Instant::now();
    for (i, (from, call_id)) in b_dialogs.iter().enumerate() {
        let bye = format!(
            "BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {b};branch=z9hG4bKbye{i}\r\nMax-Forwards: 70\r\nFrom: <sip:91234@127.0.0.1>;tag=t{i}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            from, call_id
        );
        feed(&mut s, now, bye.as_bytes(), b);
        let to_a = sent_to(&mut s, a);
        if let Some(Message::Request(bye_a)) =
            to_a.into_iter().find(|m| matches!(m, Message::Request(_)))
        {
            let ok = response_to(&bye_a, 200, None);
            feed(&mut s, now, &ok.to_bytes(), a);
        }
    }
    println!(
        "calls torn down: {n} in {:?} → {:.1} µs per BYE pair; calls left {}",
        cpu1.elapsed(),
        cpu1.elapsed().as_secs_f64() * 1e6 / n as f64,
        s.b2bua().call_count()
    );
    // The BYE transactions end too (their share of each call's cost).
    now += Duration::from_secs(40);
    tick(&mut s, now);
    drain(&mut s);
}
