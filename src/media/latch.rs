//! Which source a relayed leg's media is accepted from: symmetric latching that a third party
//! cannot hijack (sans-IO: the relay thread passes the clock in).
//!
//! The rule, per leg and per call:
//! 1. Packets from the address the leg's SDP names are always accepted, and latch.
//! 2. For [`LATCH_WINDOW`] after each offer/answer that names the leg's address (and while
//!    nothing is latched), the first source that sends a valid RTP packet (version 2, a
//!    payload type the SDPs of the call list) latches instead: a phone behind NAT sends from
//!    an address its SDP cannot know.
//! 3. Once latched, packets from any other source are dropped and counted — unless the latched
//!    source has been silent for [`RELATCH_SILENCE`] and the newcomer carries the same SSRC
//!    (the same stream after a NAT rebinding), or it is the SDP address (rule 1).
//! 4. Before anything latches and outside the window, only the SDP address is accepted.
//!
//! RTCP follows its RTP: accepted from the SDP's RTCP address, or from the IP address the RTP
//! latched to; anything else is dropped. Media from us to the leg goes to the latched address,
//! else to the SDP address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long after an offer/answer a source other than the SDP address may latch.
pub const LATCH_WINDOW: Duration = Duration::from_secs(10);

/// How long a latched source must be silent before the same stream may move to a new source.
pub const RELATCH_SILENCE: Duration = Duration::from_secs(2);

/// What the relay needs of an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHead {
    /// Payload type.
    pub payload_type: u8,
    /// Synchronization source.
    pub ssrc: u32,
}

impl RtpHead {
    /// The header of a version-2 RTP packet, or `None` for anything else.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let (head, _) = packet.split_first_chunk::<12>()?;
        let [b0, b1, _, _, _, _, _, _, s0, s1, s2, s3] = *head;
        if b0 >> 6 != 2 {
            return None;
        }
        Some(Self {
            payload_type: b1 & 0x7f,
            ssrc: u32::from_be_bytes([s0, s1, s2, s3]),
        })
    }
}

/// Whether to forward a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Forward,
    /// Drop it: it comes from a source the leg is not latched to.
    Foreign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing latched; sources other than the SDP address may latch until `until`.
    Open { until: Instant },
    /// Nothing latched and the window is over: only the SDP address.
    Closed,
    /// Latched to `addr`, whose stream is `ssrc`, last heard at `last`.
    Latched {
        addr: SocketAddr,
        ssrc: u32,
        last: Instant,
    },
}

/// The RTP latch of one leg.
#[derive(Debug, Clone)]
pub struct RtpLatch {
    sdp: Option<SocketAddr>,
    state: State,
}

impl Default for RtpLatch {
    fn default() -> Self {
        Self {
            sdp: None,
            state: State::Closed,
        }
    }
}

impl RtpLatch {
    /// An offer or answer named `sdp` for this leg. A new address starts over; the same one
    /// re-opens the window while nothing is latched (a resumed call may start sending late).
    pub fn on_sdp(&mut self, now: Instant, sdp: SocketAddr) {
        let moved = self.sdp != Some(sdp);
        self.sdp = Some(sdp);
        if moved || !matches!(self.state, State::Latched { .. }) {
            self.state = State::Open {
                until: now + LATCH_WINDOW,
            };
        }
    }

    /// A packet arrived from `src`; `head` is its RTP header when it is RTP, and `expected`
    /// says whether a payload type is one the call negotiated.
    pub fn on_packet(
        &mut self,
        now: Instant,
        src: SocketAddr,
        head: Option<RtpHead>,
        expected: impl Fn(u8) -> bool,
    ) -> Verdict {
        let valid = head.filter(|h| expected(h.payload_type));
        let from_sdp = self.sdp == Some(src);
        match self.state {
            State::Latched { addr, ssrc, .. } if addr == src => {
                self.state = State::Latched {
                    addr,
                    ssrc: head.map_or(ssrc, |h| h.ssrc),
                    last: now,
                };
                Verdict::Forward
            }
            State::Latched { ssrc, last, .. } => match valid {
                Some(h)
                    if from_sdp
                        || (h.ssrc == ssrc
                            && now.saturating_duration_since(last) >= RELATCH_SILENCE) =>
                {
                    self.latch(now, src, h);
                    Verdict::Forward
                }
                _ => Verdict::Foreign,
            },
            State::Open { until } => match valid {
                Some(h) if from_sdp || now <= until => {
                    self.latch(now, src, h);
                    Verdict::Forward
                }
                _ if from_sdp => Verdict::Forward,
                _ => Verdict::Foreign,
            },
            State::Closed => match valid {
                Some(h) if from_sdp => {
                    self.latch(now, src, h);
                    Verdict::Forward
                }
                _ if from_sdp => Verdict::Forward,
                _ => Verdict::Foreign,
            },
        }
    }

    fn latch(&mut self, now: Instant, addr: SocketAddr, h: RtpHead) {
        if !matches!(self.state, State::Latched { addr: a, .. } if a == addr) {
            tracing::debug!(%addr, ssrc = h.ssrc, "media relay: latched");
        }
        self.state = State::Latched {
            addr,
            ssrc: h.ssrc,
            last: now,
        };
    }

    /// The address RTP is latched to.
    pub fn latched(&self) -> Option<SocketAddr> {
        match self.state {
            State::Latched { addr, .. } => Some(addr),
            _ => None,
        }
    }

    /// Where media for this leg goes: the latched address, else the SDP's.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched().or(self.sdp)
    }
}

/// The RTCP latch of one leg: follows its RTP latch (module docs).
#[derive(Debug, Clone, Default)]
pub struct RtcpLatch {
    sdp: Option<SocketAddr>,
    latched: Option<SocketAddr>,
}

impl RtcpLatch {
    /// An offer or answer named `sdp` for this leg's RTCP.
    pub fn on_sdp(&mut self, sdp: SocketAddr) {
        if self.sdp != Some(sdp) {
            self.latched = None;
        }
        self.sdp = Some(sdp);
    }

    /// An RTCP packet arrived from `src`; `rtp` is where the leg's RTP is latched.
    pub fn on_packet(&mut self, src: SocketAddr, rtp: Option<SocketAddr>) -> Verdict {
        if self.latched == Some(src) {
            return Verdict::Forward;
        }
        if self.sdp == Some(src) || rtp.is_some_and(|r| r.ip() == src.ip()) {
            self.latched = Some(src);
            return Verdict::Forward;
        }
        Verdict::Foreign
    }

    /// Where RTCP for this leg goes.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.sdp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn rtp(ssrc: u32) -> Option<RtpHead> {
        Some(RtpHead {
            payload_type: 0,
            ssrc,
        })
    }

    fn pcmu(pt: u8) -> bool {
        pt == 0 || pt == 101
    }

    #[test]
    fn a_nat_source_latches_in_the_window_and_a_third_party_cannot_take_over() {
        let t0 = Instant::now();
        let mut l = RtpLatch::default();
        l.on_sdp(t0, addr("192.168.1.10:4000"));
        let nat = addr("203.0.113.5:61000");
        let attacker = addr("198.51.100.66:4000");
        assert_eq!(l.on_packet(t0, nat, rtp(7), pcmu), Verdict::Forward);
        assert_eq!(l.destination(), Some(nat));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(l.on_packet(t1, nat, rtp(7), pcmu), Verdict::Forward);
        // Mid-call injection, any SSRC, while the real source is alive: dropped.
        for (dt, ssrc) in [(1, 9), (5, 7), (20, 7)] {
            let t = t1 + Duration::from_millis(dt);
            assert_eq!(l.on_packet(t, attacker, rtp(ssrc), pcmu), Verdict::Foreign);
        }
        assert_eq!(l.destination(), Some(nat));
    }

    #[test]
    fn the_same_stream_may_move_after_silence_but_a_new_ssrc_may_not() {
        let t0 = Instant::now();
        let mut l = RtpLatch::default();
        l.on_sdp(t0, addr("192.168.1.10:4000"));
        let old = addr("203.0.113.5:61000");
        let rebound = addr("203.0.113.5:62000");
        assert_eq!(l.on_packet(t0, old, rtp(7), pcmu), Verdict::Forward);
        let quiet = t0 + RELATCH_SILENCE + Duration::from_millis(1);
        assert_eq!(l.on_packet(quiet, rebound, rtp(8), pcmu), Verdict::Foreign);
        assert_eq!(l.on_packet(quiet, rebound, rtp(7), pcmu), Verdict::Forward);
        assert_eq!(l.destination(), Some(rebound));
    }

    #[test]
    fn outside_the_window_only_the_sdp_address_latches() {
        let t0 = Instant::now();
        let mut l = RtpLatch::default();
        let sdp = addr("198.51.100.10:4000");
        l.on_sdp(t0, sdp);
        let late = t0 + LATCH_WINDOW + Duration::from_millis(1);
        assert_eq!(
            l.on_packet(late, addr("198.51.100.66:9"), rtp(1), pcmu),
            Verdict::Foreign
        );
        assert_eq!(l.on_packet(late, sdp, rtp(2), pcmu), Verdict::Forward);
        assert_eq!(l.latched(), Some(sdp));
        // A re-INVITE naming the same address keeps the latch.
        l.on_sdp(late, sdp);
        assert_eq!(l.latched(), Some(sdp));
    }

    #[test]
    fn only_valid_rtp_of_a_negotiated_type_latches() {
        let t0 = Instant::now();
        let mut l = RtpLatch::default();
        l.on_sdp(t0, addr("192.168.1.10:4000"));
        let src = addr("203.0.113.5:61000");
        assert_eq!(l.on_packet(t0, src, None, pcmu), Verdict::Foreign);
        let wrong_pt = Some(RtpHead {
            payload_type: 34,
            ssrc: 1,
        });
        assert_eq!(l.on_packet(t0, src, wrong_pt, pcmu), Verdict::Foreign);
        assert_eq!(l.latched(), None);
        assert_eq!(l.on_packet(t0, src, rtp(1), pcmu), Verdict::Forward);
    }

    #[test]
    fn rtcp_follows_the_rtp_latch() {
        let mut c = RtcpLatch::default();
        c.on_sdp(addr("192.168.1.10:4001"));
        let rtp = Some(addr("203.0.113.5:61000"));
        assert_eq!(
            c.on_packet(addr("198.51.100.66:4001"), rtp),
            Verdict::Foreign
        );
        assert_eq!(
            c.on_packet(addr("203.0.113.5:61001"), rtp),
            Verdict::Forward
        );
        assert_eq!(c.destination(), Some(addr("203.0.113.5:61001")));
    }

    #[test]
    fn rtp_header_parse() {
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 0x80 | 8;
        p[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(
            RtpHead::parse(&p),
            Some(RtpHead {
                payload_type: 8,
                ssrc: 0xdead_beef
            })
        );
        assert_eq!(RtpHead::parse(&p[..11]), None);
        p[0] = 0x40;
        assert_eq!(RtpHead::parse(&p), None);
    }
}
