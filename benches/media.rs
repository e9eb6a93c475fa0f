//! Media relay benchmark (`cargo bench --bench media`): N concurrent streams at 50 packets/s
//! each way (160-byte payloads), first sent directly between two sockets, then through the
//! relay, in the same run. Prints packets/s relayed, CPU per 1,000 relayed packets (the
//! process CPU of the relay run minus the direct run, per packet), and the one-way latency
//! percentiles of both runs (the relay adds the difference).
//!
//! Knobs: `STREAMS` (default 500), `PPS` per stream and direction (50), `SECS` (5).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use understudy::media::Relay;

fn cpu_ms() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = 100.0; // CLK_TCK on Linux
    let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let k: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (u + k) * 1000.0 / tick
}

fn env(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Results {
    received: u64,
    latencies_us: Vec<u64>,
    cpu_ms: f64,
    secs: f64,
}

/// One RTP packet: 12-byte header + 160-byte payload whose first 8 bytes are the send time.
fn packet(seq: u16, ts: u32, ssrc: u32, sent_ns: u64) -> [u8; 172] {
    let mut p = [0u8; 172];
    p[0] = 0x80;
    p[1] = 0;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p[12..20].copy_from_slice(&sent_ns.to_be_bytes());
    p
}

async fn run(
    pairs: Vec<(Arc<UdpSocket>, Arc<UdpSocket>, SocketAddr, SocketAddr)>,
    pps: u64,
    secs: u64,
    epoch: Instant,
) -> Results {
    let received = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u64>::with_capacity(1 << 20)));
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, (a, b, a_dest, b_dest)) in pairs.into_iter().enumerate() {
        for (tx, dest, ssrc) in [
            (a.clone(), a_dest, i as u32 * 2),
            (b.clone(), b_dest, i as u32 * 2 + 1),
        ] {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / pps));
                // spread the streams over the interval
                tokio::time::sleep(Duration::from_micros(
                    (ssrc as u64 * 997) % (1_000_000 / pps),
                ))
                .await;
                let mut seq = 0u16;
                while Instant::now() < stop_at {
                    tick.tick().await;
                    let p = packet(
                        seq,
                        u32::from(seq) * 160,
                        ssrc,
                        epoch.elapsed().as_nanos() as u64,
                    );
                    let _ = tx.send_to(&p, dest).await;
                    seq = seq.wrapping_add(1);
                }
            }));
        }
        for rx in [a, b] {
            let received = received.clone();
            let lat = lat.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut local = Vec::with_capacity(4096);
                loop {
                    let r =
                        tokio::time::timeout(Duration::from_millis(300), rx.recv_from(&mut buf))
                            .await;
                    let Ok(Ok((n, _))) = r else {
                        break;
                    };
                    if n >= 20 {
                        let sent = u64::from_be_bytes(buf[12..20].try_into().unwrap_or([0; 8]));
                        let now = epoch.elapsed().as_nanos() as u64;
                        local.push(now.saturating_sub(sent) / 1000);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Ok(mut l) = lat.lock() {
                    l.extend(local);
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let cpu = cpu_ms() - cpu0;
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    Results {
        received: received.load(Ordering::Relaxed),
        latencies_us: l,
        cpu_ms: cpu,
        secs: t0.elapsed().as_secs_f64(),
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 - 1.0) * p) as usize]
}

async fn sock() -> Arc<UdpSocket> {
    Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let streams = env("STREAMS", 500) as usize;
    let pps = env("PPS", 50);
    let secs = env("SECS", 5);
    let epoch = Instant::now();
    println!("bench-media: {streams} streams x 2 directions x {pps} packets/s, {secs} s per run");

    // Direct: endpoint A sends to endpoint B and back.
    let mut direct = Vec::new();
    for _ in 0..streams {
        let (a, b) = (sock().await, sock().await);
        let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        direct.push((a, b, ba, aa));
    }
    let d = run(direct, pps, secs, epoch).await;

    // Relayed: A → relay leg A → relay leg B → B, and back.
    let mut relay = Relay::new("127.0.0.1".parse().expect("ip"));
    let base: u16 = env("RTP_BASE", 21000) as u16;
    let mut relayed = Vec::new();
    for i in 0..streams {
        let (a, b) = (sock().await, sock().await);
        let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let pa = base + (i as u16) * 4;
        let pb = pa + 2;
        let token = i as u64 + 1;
        relay.open(token, 0, pa).expect("open A");
        relay.open(token, 1, pb).expect("open B");
        relay.set_peer(token, 0, aa, SocketAddr::new(aa.ip(), aa.port() + 1));
        relay.set_peer(token, 1, ba, SocketAddr::new(ba.ip(), ba.port() + 1));
        let ra: SocketAddr = format!("127.0.0.1:{pa}").parse().expect("addr");
        let rb: SocketAddr = format!("127.0.0.1:{pb}").parse().expect("addr");
        relayed.push((a, b, ra, rb));
    }
    let r = run(relayed, pps, secs, epoch).await;
    let expected = streams as f64 * 2.0 * pps as f64 * secs as f64;
    let extra_cpu = (r.cpu_ms - d.cpu_ms).max(0.0);
    println!(
        "direct : received {} of ~{:.0} ({:.1} %), p50 {} us, p99 {} us, CPU {:.0} ms",
        d.received,
        expected,
        100.0 * d.received as f64 / expected,
        pct(&d.latencies_us, 0.5),
        pct(&d.latencies_us, 0.99),
        d.cpu_ms
    );
    println!(
        "relayed: received {} of ~{:.0} ({:.1} %), p50 {} us, p99 {} us, CPU {:.0} ms",
        r.received,
        expected,
        100.0 * r.received as f64 / expected,
        pct(&r.latencies_us, 0.5),
        pct(&r.latencies_us, 0.99),
        r.cpu_ms
    );
    let relayed_pps = r.received as f64 / r.secs;
    println!(
        "SUMMARY bench-media streams={streams} relayed_pps={relayed_pps:.0} cpu_ms_per_1000_packets={:.3} added_latency_p50_us={} added_latency_p99_us={} loss_pct={:.3}",
        extra_cpu * 1000.0 / r.received.max(1) as f64,
        pct(&r.latencies_us, 0.5).saturating_sub(pct(&d.latencies_us, 0.5)),
        pct(&r.latencies_us, 0.99).saturating_sub(pct(&d.latencies_us, 0.99)),
        100.0 * (1.0 - r.received as f64 / expected).max(0.0)
    );
}
