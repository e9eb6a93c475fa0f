//! RTP test tooling: a sender (50 packets/s, 160-byte payloads, sequence numbers and
//! timestamps) and a receiver that counts packets, loss by sequence number and the longest
//! gap between arrivals — what "media keeps flowing" means in a test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Packets per second.
pub const PPS: u64 = 50;
/// Payload bytes per packet (20 ms of G.711).
pub const PAYLOAD: usize = 160;

/// A running sender; stop it with [`Sender::stop`], which returns how many it sent.
#[derive(Debug)]
pub struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    dest: Arc<std::sync::Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Sender {
    /// Start sending from `sock` to `dest` with SSRC `ssrc`.
    pub fn start(sock: Arc<UdpSocket>, dest: SocketAddr, ssrc: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let dest = Arc::new(std::sync::Mutex::new(dest));
        let (s2, n2, d2) = (stop.clone(), sent.clone(), dest.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PPS));
            let mut seq: u16 = rand::random();
            let mut ts: u32 = rand::random();
            let mut p = vec![0u8; 12 + PAYLOAD];
            while !s2.load(Ordering::Relaxed) {
                tick.tick().await;
                p[0] = 0x80;
                p[1] = 0;
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                p[4..8].copy_from_slice(&ts.to_be_bytes());
                p[8..12].copy_from_slice(&ssrc.to_be_bytes());
                let to = d2.lock().map(|d| *d).unwrap_or(dest_fallback());
                if sock.send_to(&p, to).await.is_ok() {
                    n2.fetch_add(1, Ordering::Relaxed);
                }
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(PAYLOAD as u32);
            }
        });
        Self {
            stop,
            sent,
            dest,
            task,
        }
    }

    /// Send to another address from now on (the far end moved).
    pub fn redirect(&self, dest: SocketAddr) {
        if let Ok(mut d) = self.dest.lock() {
            *d = dest;
        }
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stop and return the number of packets sent.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.sent.load(Ordering::Relaxed)
    }
}

fn dest_fallback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

/// What a receiver saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Received {
    /// Packets.
    pub packets: u64,
    /// Missing by sequence number.
    pub lost: u64,
    /// Longest time between two packets.
    pub longest_gap: Duration,
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Received>,
    packets: Arc<AtomicU64>,
    by_ssrc: Arc<std::sync::Mutex<std::collections::HashMap<u32, u64>>>,
}

impl Receiver {
    /// Start counting what arrives on `sock`.
    pub fn start(sock: Arc<UdpSocket>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(AtomicU64::new(0));
        let by_ssrc = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let (s2, p2, b2) = (stop.clone(), packets.clone(), by_ssrc.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut r = Received::default();
            let mut last: Option<Instant> = None;
            let (mut first_seq, mut max_ext): (Option<u32>, u32) = (None, 0);
            let mut cycles = 0u32;
            while !s2.load(Ordering::Relaxed) {
                let Ok(Ok((n, _))) =
                    tokio::time::timeout(Duration::from_millis(50), sock.recv_from(&mut buf)).await
                else {
                    continue;
                };
                if n < 12 {
                    continue;
                }
                let now = Instant::now();
                if let Some(l) = last {
                    r.longest_gap = r.longest_gap.max(now - l);
                }
                last = Some(now);
                r.packets += 1;
                p2.store(r.packets, Ordering::Relaxed);
                let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                if let Ok(mut m) = b2.lock() {
                    *m.entry(ssrc).or_insert(0) += 1;
                }
                let seq = u32::from(u16::from_be_bytes([buf[2], buf[3]]));
                match first_seq {
                    None => {
                        first_seq = Some(seq);
                        max_ext = seq;
                    }
                    Some(_) => {
                        let max16 = max_ext & 0xffff;
                        let d = seq.wrapping_sub(max16) & 0xffff;
                        if d > 0 && d < 0x8000 {
                            if seq < max16 {
                                cycles += 1;
                            }
                            max_ext = (cycles << 16) | seq;
                        }
                    }
                }
                if let Some(f) = first_seq {
                    let expected = u64::from(max_ext - f) + 1;
                    r.lost = expected.saturating_sub(r.packets);
                }
            }
            r
        });
        Self {
            stop,
            task,
            packets,
            by_ssrc,
        }
    }

    /// Packets received so far with SSRC `ssrc`.
    pub fn from_ssrc(&self, ssrc: u32) -> u64 {
        self.by_ssrc
            .lock()
            .map(|m| m.get(&ssrc).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Packets received so far.
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Wait until at least `n` packets arrived (bounded by `limit`).
    pub async fn wait_for(&self, n: u64, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.packets() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stop and report.
    pub async fn stop(self) -> Received {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// The first stream's RTP address in an SDP body.
pub fn sdp_addr(body: &[u8]) -> Option<SocketAddr> {
    understudy::media::sdp::media_addr(body).map(|m| m.rtp)
}
