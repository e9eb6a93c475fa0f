//! The RTP/RTCP relay (the only media code that touches sockets): per call and leg one RTP
//! and one RTCP socket; what arrives on one leg goes out of the other leg's socket to that
//! leg's peer. Symmetric latching: a leg's peer is where its packets come from once the first
//! one arrives (soft-phones often send from another address than their SDP says), the SDP
//! address before that.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::stats::StreamStats;
use crate::cdr::MediaCounters;

/// Where a leg's packets go.
#[derive(Debug, Default, Clone, Copy)]
struct Peer {
    sdp_rtp: Option<SocketAddr>,
    sdp_rtcp: Option<SocketAddr>,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
}

impl Peer {
    fn rtp(&self) -> Option<SocketAddr> {
        self.latched_rtp.or(self.sdp_rtp)
    }

    fn rtcp(&self) -> Option<SocketAddr> {
        self.latched_rtcp.or(self.sdp_rtcp)
    }
}

#[derive(Debug)]
struct Leg {
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    peer: Arc<Mutex<Peer>>,
    /// Packets received on this leg (this leg → the other).
    stats: Arc<Mutex<StreamStats>>,
    port: u16,
}

#[derive(Debug)]
struct Session {
    legs: [Option<Leg>; 2],
    tasks: Vec<JoinHandle<()>>,
}

/// Why the relay could not open a port.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind media port {port}: {source}")]
pub struct RelayError {
    /// Port.
    pub port: u16,
    /// OS error.
    pub source: std::io::Error,
}

/// The relay engine.
#[derive(Debug)]
pub struct Relay {
    ip: IpAddr,
    start: Instant,
    sessions: HashMap<u64, Session>,
    finished: HashMap<u64, MediaCounters>,
}

fn bind(ip: IpAddr, port: u16) -> Result<Arc<UdpSocket>, RelayError> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))
        .map_err(|source| RelayError { port, source })?;
    s.set_nonblocking(true)
        .map_err(|source| RelayError { port, source })?;
    UdpSocket::from_std(s)
        .map(Arc::new)
        .map_err(|source| RelayError { port, source })
}

/// RTP clock rate of a payload type (static types of RFC 3551; dynamic ones assumed 8 kHz).
fn clock_rate(pt: u8) -> u32 {
    match pt {
        9 => 8000, // G.722 uses an 8 kHz RTP clock
        10 | 11 => 44100,
        14 | 25 | 26 | 28 | 31..=34 => 90000,
        _ => 8000,
    }
}

impl Relay {
    /// A relay sending from `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            start: Instant::now(),
            sessions: HashMap::new(),
            finished: HashMap::new(),
        }
    }

    /// Open leg `side` (0 = A, 1 = B) of call `token` on port pair `port`/`port+1`.
    pub fn open(&mut self, token: u64, side: usize, port: u16) -> Result<(), RelayError> {
        let rtp = bind(self.ip, port)?;
        let rtcp = bind(self.ip, port + 1)?;
        let s = self.sessions.entry(token).or_insert_with(|| Session {
            legs: [None, None],
            tasks: Vec::new(),
        });
        if let Some(slot) = s.legs.get_mut(side) {
            *slot = Some(Leg {
                rtp,
                rtcp,
                peer: Arc::new(Mutex::new(Peer::default())),
                stats: Arc::new(Mutex::new(StreamStats::default())),
                port,
            });
        }
        if let [Some(a), Some(b)] = &s.legs
            && s.tasks.is_empty()
        {
            let start = self.start;
            for (from, to) in [(a, b), (b, a)] {
                s.tasks.push(tokio::spawn(pump(
                    from.rtp.clone(),
                    to.rtp.clone(),
                    from.peer.clone(),
                    to.peer.clone(),
                    Some(from.stats.clone()),
                    start,
                )));
                s.tasks.push(tokio::spawn(pump(
                    from.rtcp.clone(),
                    to.rtcp.clone(),
                    from.peer.clone(),
                    to.peer.clone(),
                    None,
                    start,
                )));
            }
        }
        Ok(())
    }

    /// Tell the relay where leg `side` wants media (from its SDP); resets latching.
    pub fn set_peer(&mut self, token: u64, side: usize, rtp: SocketAddr, rtcp: SocketAddr) {
        if let Some(l) = self
            .sessions
            .get(&token)
            .and_then(|s| s.legs.get(side))
            .and_then(Option::as_ref)
            && let Ok(mut p) = l.peer.lock()
        {
            if p.sdp_rtp != Some(rtp) {
                p.latched_rtp = None;
                p.latched_rtcp = None;
            }
            p.sdp_rtp = Some(rtp);
            p.sdp_rtcp = Some(rtcp);
        }
    }

    fn counters(s: &Session) -> MediaCounters {
        let get = |i: usize| {
            s.legs
                .get(i)
                .and_then(Option::as_ref)
                .and_then(|l| l.stats.lock().ok().map(|g| *g))
                .unwrap_or_default()
        };
        let (a, b) = (get(0), get(1));
        MediaCounters {
            a_to_b_packets: a.packets,
            a_to_b_lost: a.lost,
            a_to_b_jitter_ms: a.jitter_ms,
            b_to_a_packets: b.packets,
            b_to_a_lost: b.lost,
            b_to_a_jitter_ms: b.jitter_ms,
        }
    }

    /// Stop relaying a call; its counters are kept for [`Self::take_final`].
    pub fn close(&mut self, token: u64) -> Vec<u16> {
        let Some(s) = self.sessions.remove(&token) else {
            return Vec::new();
        };
        for t in &s.tasks {
            t.abort();
        }
        self.finished.insert(token, Self::counters(&s));
        s.legs.iter().flatten().map(|l| l.port).collect()
    }

    /// Counters of a live call.
    pub fn live(&self, token: u64) -> Option<MediaCounters> {
        self.sessions.get(&token).map(Self::counters)
    }

    /// Final counters of a closed call.
    pub fn take_final(&mut self, token: u64) -> Option<MediaCounters> {
        self.finished.remove(&token)
    }

    /// Calls being relayed.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

async fn pump(
    rx: Arc<UdpSocket>,
    tx: Arc<UdpSocket>,
    from_peer: Arc<Mutex<Peer>>,
    to_peer: Arc<Mutex<Peer>>,
    stats: Option<Arc<Mutex<StreamStats>>>,
    start: Instant,
) {
    let is_rtp = stats.is_some();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, src)) = rx.recv_from(&mut buf).await else {
            continue;
        };
        let data = &buf[..n];
        // Latch: packets from this leg tell us where it really is.
        let dest = {
            let Ok(mut p) = from_peer.lock() else {
                continue;
            };
            if is_rtp {
                if p.latched_rtp.is_none() {
                    p.latched_rtp = Some(src);
                }
            } else if p.latched_rtcp.is_none() {
                p.latched_rtcp = Some(src);
            }
            drop(p);
            let Ok(to) = to_peer.lock() else {
                continue;
            };
            if is_rtp { to.rtp() } else { to.rtcp() }
        };
        if let Some(st) = &stats
            && let Ok(r) = rtp_rs::RtpReader::new(data)
            && let Ok(mut s) = st.lock()
        {
            let arrival = start.elapsed().as_secs_f64() * 1000.0;
            s.on_packet(
                u16::from(r.sequence_number()),
                r.timestamp(),
                r.payload().len(),
                arrival,
                clock_rate(r.payload_type()),
            );
        }
        if let Some(d) = dest {
            match tx.try_send_to(data, d) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = tx.send_to(data, d).await;
                }
                Err(_) => {}
            }
        }
    }
}
