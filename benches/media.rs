//! Media relay benchmark (`cargo bench --bench media`, or `sipp-scenarios/bench-media.sh`):
//! N concurrent streams at 50 packets/s each way (160-byte payloads), first sent directly
//! between two sockets, then through the relay, in the same run. The generator is one thread
//! (paced sends and an epoll loop for the receives), so on a 2-core machine it and the relay
//! thread each get a core. Prints packets/s relayed, CPU per 1,000 relayed packets (process
//! CPU of the relay run minus the direct run) and the one-way latency percentiles of both
//! runs (the relay adds the difference).
//!
//! Knobs: `STREAMS` (default 500), `PPS` per stream and direction (50), `SECS` (5),
//! `RTP_BASE` (first relay port, 21000).

// Benchmark code: it may unwrap, index and panic (the no-panic lints are for the server).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use understudy::media::Relay;

fn cpu_ms() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let k: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (u + k) * 10.0 // CLK_TCK = 100
}

fn env(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Results {
    sent: u64,
    received: u64,
    latencies_us: Vec<u64>,
    cpu_ms: f64,
    secs: f64,
}

/// One stream direction: a socket that sends to `dest`.
struct Stream {
    sock: UdpSocket,
    dest: SocketAddr,
    seq: u16,
}

fn run(mut streams: Vec<Stream>, pps: u64, secs: u64, epoch: Instant) -> Results {
    let mut poll = Poll::new().expect("poll");
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(&mut s.sock, Token(i), Interest::READABLE)
            .expect("register");
    }
    let interval = Duration::from_micros(1_000_000 / pps);
    let n = streams.len();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut p = [0u8; 172];
    p[0] = 0x80;
    let mut received = 0u64;
    let mut sent_total = 0u64;
    let mut lat = Vec::with_capacity((n as u64 * pps * secs) as usize + 1024);
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    let stop_sending = t0 + Duration::from_secs(secs);
    let drain_until = stop_sending + Duration::from_millis(300);
    let mut sent = 0usize; // stream-slots sent in this round
    let mut round_start = t0;
    loop {
        let now = Instant::now();
        if now >= drain_until {
            break;
        }
        // Send the packets due: stream i of a round goes out at round_start + i/n of the interval.
        if now < stop_sending {
            if now >= round_start + interval {
                round_start += interval;
                sent = 0;
            }
            let due =
                (((now - round_start).as_nanos() * n as u128) / interval.as_nanos()) as usize + 1;
            while sent < due.min(n) {
                let s = &mut streams[sent];
                p[2..4].copy_from_slice(&s.seq.to_be_bytes());
                p[4..8].copy_from_slice(&(u32::from(s.seq) * 160).to_be_bytes());
                p[8..12].copy_from_slice(&(sent as u32).to_be_bytes());
                p[12..20].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                let _ = s.sock.send_to(&p, s.dest);
                s.seq = s.seq.wrapping_add(1);
                sent += 1;
                sent_total += 1;
            }
        }
        let next_send = round_start + interval.mul_f64((sent.min(n) as f64) / n as f64);
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(5));
        let _ = poll.poll(&mut events, Some(wait));
        for ev in events.iter() {
            let s = &streams[ev.token().0];
            loop {
                match s.sock.recv_from(&mut buf) {
                    Ok((len, _)) if len >= 20 => {
                        let at = u64::from_be_bytes(buf[12..20].try_into().unwrap_or([0; 8]));
                        let now = epoch.elapsed().as_nanos() as u64;
                        lat.push(now.saturating_sub(at) / 1000);
                        received += 1;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
    let cpu = cpu_ms() - cpu0;
    lat.sort_unstable();
    Results {
        sent: sent_total,
        received,
        latencies_us: lat,
        cpu_ms: cpu,
        secs: secs as f64,
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn sock() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind")
}

fn main() {
    let streams = env("STREAMS", 500) as usize;
    let pps = env("PPS", 50);
    let secs = env("SECS", 5);
    let epoch = Instant::now();
    println!("bench-media: {streams} streams x 2 directions x {pps} packets/s, {secs} s per run");

    // Direct: endpoint A sends to endpoint B and back.
    let mut direct = Vec::new();
    for _ in 0..streams {
        let (a, b) = (sock(), sock());
        let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        direct.push(Stream {
            sock: a,
            dest: ba,
            seq: 0,
        });
        direct.push(Stream {
            sock: b,
            dest: aa,
            seq: 0,
        });
    }
    let d = run(direct, pps, secs, epoch);

    // Relayed: A → relay leg A → relay leg B → B, and back.
    let mut relay = Relay::new("127.0.0.1".parse().expect("ip")).expect("relay thread");
    let base = env("RTP_BASE", 21000) as u16;
    let mut relayed = Vec::new();
    for i in 0..streams {
        let (a, b) = (sock(), sock());
        let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let pa = base + (i as u16) * 4;
        let pb = pa + 2;
        let token = i as u64 + 1;
        relay.open(token, 0, pa).expect("open A");
        relay.open(token, 1, pb).expect("open B");
        relay.set_peer(
            token,
            0,
            aa,
            SocketAddr::new(aa.ip(), aa.port() + 1),
            vec![(0, 8000)],
            true,
        );
        relay.set_peer(
            token,
            1,
            ba,
            SocketAddr::new(ba.ip(), ba.port() + 1),
            vec![(0, 8000)],
            true,
        );
        relayed.push(Stream {
            sock: a,
            dest: SocketAddr::from(([127, 0, 0, 1], pa)),
            seq: 0,
        });
        relayed.push(Stream {
            sock: b,
            dest: SocketAddr::from(([127, 0, 0, 1], pb)),
            seq: 0,
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = run(relayed, pps, secs, epoch);
    let expected = streams as f64 * 2.0 * pps as f64 * secs as f64;
    let extra_cpu = (r.cpu_ms - d.cpu_ms).max(0.0);
    for (name, x) in [("direct ", &d), ("relayed", &r)] {
        println!(
            "{name}: sent {} (target {expected:.0}), received {} ({:.2} %), p50 {} us, p99 {} us, process CPU {:.0} ms",
            x.sent,
            x.received,
            100.0 * x.received as f64 / x.sent.max(1) as f64,
            pct(&x.latencies_us, 0.5),
            pct(&x.latencies_us, 0.99),
            x.cpu_ms
        );
    }
    println!(
        "SUMMARY bench-media streams={streams} relayed_pps={:.0} cpu_ms_per_1000_packets={:.3} added_latency_p50_us={} added_latency_p99_us={} loss_pct={:.3}",
        r.received as f64 / r.secs,
        extra_cpu * 1000.0 / r.received.max(1) as f64,
        pct(&r.latencies_us, 0.5).saturating_sub(pct(&d.latencies_us, 0.5)),
        pct(&r.latencies_us, 0.99).saturating_sub(pct(&d.latencies_us, 0.99)),
        100.0 * (1.0 - r.received as f64 / r.sent.max(1) as f64).max(0.0)
    );
}
