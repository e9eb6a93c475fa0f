//! The RTP/RTCP relay (the only media code that touches sockets). One thread polls every
//! relay socket (mio/epoll) and forwards each packet as soon as it is read — no task wake-up
//! per packet — which keeps the added latency in the tens of microseconds.
//!
//! Per call and leg one RTP and one RTCP socket; what arrives on one leg goes out of the
//! other leg's socket to that leg's peer. Which sources are accepted, and where a leg's
//! media goes, is the latching rule of [`super::latch`]: packets from anyone else are dropped
//! and counted (`foreign` in `/calls`), so a third party cannot take over a call's media.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::latch::{RtcpLatch, RtpHead, RtpLatch, Verdict};
use super::sdp;
use super::stats::StreamStats;
use crate::cdr::MediaCounters;

const WAKER: Token = Token(usize::MAX);

/// Why the relay could not open a port.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind media port {port}: {source}")]
pub struct RelayError {
    /// Port.
    pub port: u16,
    /// OS error.
    pub source: std::io::Error,
}

/// Counters shared between the relay thread and readers: index 0 = packets received on leg A
/// (A → B), 1 = on leg B (B → A).
type Shared = Arc<Mutex<[StreamStats; 2]>>;

enum Cmd {
    Open {
        token: u64,
        side: usize,
        rtp: std::net::UdpSocket,
        rtcp: std::net::UdpSocket,
        stats: Shared,
    },
    Peer {
        token: u64,
        side: usize,
        rtp: SocketAddr,
        rtcp: SocketAddr,
        formats: Vec<(u8, u32)>,
        receives: bool,
    },
    Close {
        token: u64,
    },
}

/// The relay engine: a handle to the relay thread.
#[derive(Debug)]
pub struct Relay {
    ip: IpAddr,
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
    live: HashMap<u64, (Shared, Vec<u16>)>,
    finished: HashMap<u64, MediaCounters>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("relay command")
    }
}

fn bind(ip: IpAddr, port: u16) -> Result<std::net::UdpSocket, RelayError> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))
        .map_err(|source| RelayError { port, source })?;
    s.set_nonblocking(true)
        .map_err(|source| RelayError { port, source })?;
    Ok(s)
}

fn counters(s: &Shared) -> MediaCounters {
    let [a, b] = s.lock().map(|g| *g).unwrap_or_default();
    MediaCounters {
        a_to_b_packets: a.packets,
        a_to_b_lost: a.lost,
        a_to_b_jitter_ms: a.jitter_ms,
        b_to_a_packets: b.packets,
        b_to_a_lost: b.lost,
        b_to_a_jitter_ms: b.jitter_ms,
    }
}

impl Relay {
    /// A relay sending from `ip`, with its thread started.
    pub fn new(ip: IpAddr) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        std::thread::Builder::new()
            .name("media-relay".into())
            .spawn(move || run(poll, rx))?;
        Ok(Self {
            ip,
            tx,
            waker,
            live: HashMap::new(),
            finished: HashMap::new(),
        })
    }

    fn send(&self, c: Cmd) {
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Open leg `side` (0 = A, 1 = B) of call `token` on port pair `port`/`port+1`.
    pub fn open(&mut self, token: u64, side: usize, port: u16) -> Result<(), RelayError> {
        let rtp = bind(self.ip, port)?;
        let rtcp = bind(self.ip, port + 1)?;
        let entry = self.live.entry(token).or_insert_with(|| {
            (
                Arc::new(Mutex::new([StreamStats::default(); 2])),
                Vec::new(),
            )
        });
        entry.1.push(port);
        let stats = entry.0.clone();
        self.send(Cmd::Open {
            token,
            side,
            rtp,
            rtcp,
            stats,
        });
        Ok(())
    }

    /// Tell the relay where leg `side` wants media, its payload types with their clock rates,
    /// and whether it wants media now (from its SDP); see [`super::latch`] for what that does
    /// to latching. A leg that does not receive (it holds the call, or it is `inactive`) gets
    /// no RTP until an SDP says otherwise; its RTCP still flows (RFC 3264 §5.1).
    pub fn set_peer(
        &mut self,
        token: u64,
        side: usize,
        rtp: SocketAddr,
        rtcp: SocketAddr,
        formats: Vec<(u8, u32)>,
        receives: bool,
    ) {
        self.send(Cmd::Peer {
            token,
            side,
            rtp,
            rtcp,
            formats,
            receives,
        });
    }

    /// Stop relaying a call; its counters are kept for [`Self::take_final`]. Returns its ports.
    pub fn close(&mut self, token: u64) -> Vec<u16> {
        self.send(Cmd::Close { token });
        match self.live.remove(&token) {
            Some((s, ports)) => {
                self.finished.insert(token, counters(&s));
                ports
            }
            None => Vec::new(),
        }
    }

    /// Counters of a live call.
    pub fn live(&self, token: u64) -> Option<MediaCounters> {
        self.live.get(&token).map(|(s, _)| counters(s))
    }

    /// Packets dropped from foreign sources on a live call: (leg A, leg B).
    pub fn foreign(&self, token: u64) -> Option<(u64, u64)> {
        let (s, _) = self.live.get(&token)?;
        let [a, b] = s.lock().map(|g| *g).unwrap_or_default();
        Some((a.foreign, b.foreign))
    }

    /// Final counters of a closed call.
    pub fn take_final(&mut self, token: u64) -> Option<MediaCounters> {
        self.finished.remove(&token)
    }

    /// Calls being relayed.
    pub fn sessions(&self) -> usize {
        self.live.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropping the sender ends the thread at its next wake-up.
        let _ = self.waker.wake();
    }
}

struct Leg {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    rtp_latch: RtpLatch,
    rtcp_latch: RtcpLatch,
    /// Payload types this leg's SDP lists, with their clock rates.
    formats: Vec<(u8, u32)>,
    /// The leg's SDP says it wants RTP (not on hold).
    receives: bool,
}

struct Session {
    legs: [Option<Leg>; 2],
    stats: Shared,
    tokens: Vec<Token>,
    /// The payload types either leg's SDP lists, with their clock rates.
    formats: Vec<(u8, u32)>,
}

/// The relay thread: poll, read every ready socket dry, forward.
fn run(mut poll: Poll, rx: mpsc::Receiver<Cmd>) {
    let start = Instant::now();
    let mut events = Events::with_capacity(1024);
    let mut sessions: HashMap<u64, Session> = HashMap::new();
    // token → (call, leg, is RTCP)
    let mut routes: HashMap<usize, (u64, usize, bool)> = HashMap::new();
    let mut next: usize = 0;
    let mut buf = vec![0u8; 2048];
    loop {
        if let Err(e) = poll.poll(&mut events, None)
            && e.kind() != ErrorKind::Interrupted
        {
            tracing::error!(error = %e, "media relay: poll failed");
            return;
        }
        for ev in events.iter() {
            if ev.token() == WAKER {
                loop {
                    match rx.try_recv() {
                        Ok(c) => apply(&mut poll, &mut sessions, &mut routes, &mut next, c),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                }
                continue;
            }
            let Some(&(call, side, rtcp)) = routes.get(&ev.token().0) else {
                continue;
            };
            let Some(s) = sessions.get_mut(&call) else {
                continue;
            };
            forward(s, side, rtcp, &mut buf, start);
        }
    }
}

fn forward(s: &mut Session, side: usize, rtcp: bool, buf: &mut [u8], start: Instant) {
    let formats = &s.formats;
    let clock_rate = |pt: u8| formats.iter().find(|(p, _)| *p == pt).map(|(_, c)| *c);
    let [a, b] = &mut s.legs;
    let (this, out) = match side {
        0 => (a, b),
        1 => (b, a),
        _ => return,
    };
    loop {
        let got = {
            let Some(leg) = this.as_ref() else {
                return;
            };
            let sock = if rtcp { &leg.rtcp } else { &leg.rtp };
            sock.recv_from(buf)
        };
        let (n, src) = match got {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => return,
        };
        // `recv_from` never reports more than `buf` holds.
        let Some(data) = buf.get(..n) else {
            return;
        };
        let now = Instant::now();
        let head = if rtcp { None } else { RtpHead::parse(data) };
        let verdict = match this.as_mut() {
            Some(leg) if rtcp => leg.rtcp_latch.on_packet(src, leg.rtp_latch.latched()),
            Some(leg) => leg
                .rtp_latch
                .on_packet(now, src, head, |pt| clock_rate(pt).is_some()),
            None => return,
        };
        if verdict == Verdict::Foreign {
            if let Ok(mut st) = s.stats.lock()
                && let Some(stream) = st.get_mut(side)
            {
                stream.foreign += 1;
            }
            continue;
        }
        if !rtcp
            && let Ok(r) = rtp_rs::RtpReader::new(data)
            && let Ok(mut st) = s.stats.lock()
            && let Some(stream) = st.get_mut(side)
        {
            let pt = r.payload_type();
            stream.on_packet(
                u16::from(r.sequence_number()),
                r.timestamp(),
                r.payload().len(),
                now.saturating_duration_since(start).as_secs_f64() * 1000.0,
                clock_rate(pt).unwrap_or_else(|| sdp::static_clock_rate(pt)),
            );
        }
        if let Some(out) = out.as_ref().filter(|o| rtcp || o.receives) {
            let dest = if rtcp {
                out.rtcp_latch.destination()
            } else {
                out.rtp_latch.destination()
            };
            if let Some(d) = dest {
                let sock = if rtcp { &out.rtcp } else { &out.rtp };
                // UDP semantics: a full send buffer drops the packet rather than stall the relay.
                let _ = sock.send_to(data, d);
            }
        }
    }
}

fn apply(
    poll: &mut Poll,
    sessions: &mut HashMap<u64, Session>,
    routes: &mut HashMap<usize, (u64, usize, bool)>,
    next: &mut usize,
    c: Cmd,
) {
    match c {
        Cmd::Open {
            token,
            side,
            rtp,
            rtcp,
            stats,
        } => {
            let s = sessions.entry(token).or_insert_with(|| Session {
                legs: [None, None],
                stats,
                tokens: Vec::new(),
                formats: Vec::new(),
            });
            let mut rtp = UdpSocket::from_std(rtp);
            let mut rtcp = UdpSocket::from_std(rtcp);
            for (sock, is_rtcp) in [(&mut rtp, false), (&mut rtcp, true)] {
                let t = Token(*next);
                *next = next.wrapping_add(1) % (usize::MAX - 1);
                if poll
                    .registry()
                    .register(sock, t, Interest::READABLE)
                    .is_ok()
                {
                    routes.insert(t.0, (token, side, is_rtcp));
                    s.tokens.push(t);
                }
            }
            if let Some(slot) = s.legs.get_mut(side) {
                *slot = Some(Leg {
                    rtp,
                    rtcp,
                    rtp_latch: RtpLatch::default(),
                    rtcp_latch: RtcpLatch::default(),
                    formats: Vec::new(),
                    receives: true,
                });
            }
        }
        Cmd::Peer {
            token,
            side,
            rtp,
            rtcp,
            formats,
            receives,
        } => {
            let Some(s) = sessions.get_mut(&token) else {
                return;
            };
            if let Some(leg) = s.legs.get_mut(side).and_then(Option::as_mut) {
                leg.rtp_latch.on_sdp(Instant::now(), rtp);
                leg.rtcp_latch.on_sdp(rtcp);
                leg.formats = formats;
                leg.receives = receives;
            }
            s.formats = s
                .legs
                .iter()
                .flatten()
                .flat_map(|l| l.formats.iter().copied())
                .collect();
            s.formats.sort_unstable();
            s.formats.dedup_by_key(|(pt, _)| *pt);
        }
        Cmd::Close { token } => {
            if let Some(mut s) = sessions.remove(&token) {
                for t in &s.tokens {
                    routes.remove(&t.0);
                }
                for leg in s.legs.iter_mut().flatten() {
                    let _ = poll.registry().deregister(&mut leg.rtp);
                    let _ = poll.registry().deregister(&mut leg.rtcp);
                }
            }
        }
    }
}
