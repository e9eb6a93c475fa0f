//! The B2BUA's side of media relay: port pairs per call (one facing each leg), SDP rewritten
//! as it crosses the call, and commands for the relay that owns the sockets.

use crate::entropy::HashMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use super::PerLeg;
use super::call::{Side, idx};
use crate::media::{PortPool, sdp};

/// What the relay must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// Bind leg `side` (0 = A, 1 = B) of call `token` on `port`/`port+1`.
    Open {
        /// Call token.
        token: u64,
        /// Leg index.
        side: usize,
        /// RTP port.
        port: u16,
    },
    /// Leg `side` wants media at these addresses (from its SDP).
    Peer {
        /// Call token.
        token: u64,
        /// Leg index.
        side: usize,
        /// RTP address.
        rtp: SocketAddr,
        /// RTCP address.
        rtcp: SocketAddr,
        /// Payload types of the stream with their clock rates.
        formats: Vec<(u8, u32)>,
        /// Whether the leg wants media now (not on hold: RFC 3264 direction, `c=0.0.0.0`).
        receives: bool,
    },
    /// Stop relaying the call.
    Close {
        /// Call token.
        token: u64,
    },
}

/// Ports and pending commands.
#[derive(Debug)]
pub struct MediaPlan {
    ip: IpAddr,
    pool: PortPool,
    ports: HashMap<u64, [u16; 2]>,
    commands: Vec<MediaCommand>,
}

impl MediaPlan {
    /// A plan relaying from `ip` with ports `lo..=hi`.
    pub fn new(ip: IpAddr, lo: u16, hi: u16) -> Self {
        Self {
            ip,
            pool: PortPool::new(lo, hi),
            ports: HashMap::default(),
            commands: Vec::new(),
        }
    }

    /// Take two port pairs for a call; `false` when the pool is exhausted.
    pub fn alloc(&mut self, token: u64) -> bool {
        if self.ports.contains_key(&token) {
            return true;
        }
        let Some(a) = self.pool.take() else {
            return false;
        };
        let Some(b) = self.pool.take() else {
            self.pool.give(a);
            return false;
        };
        self.ports.insert(token, [a, b]);
        self.commands.push(MediaCommand::Open {
            token,
            side: 0,
            port: a,
        });
        self.commands.push(MediaCommand::Open {
            token,
            side: 1,
            port: b,
        });
        true
    }

    /// SDP from leg `from` on its way to the other leg: remember where `from` wants media and
    /// put our port facing the other leg in it.
    pub fn body(&mut self, token: u64, from: Side, body: Bytes) -> Bytes {
        if body.is_empty() {
            return body;
        }
        let Some(ports) = self.ports.get(&token).copied() else {
            return body;
        };
        if let Some(m) = sdp::media_addr(&body) {
            self.commands.push(MediaCommand::Peer {
                token,
                side: idx(from),
                rtp: m.rtp,
                rtcp: m.rtcp,
                formats: sdp::formats(&body),
                receives: m.receives,
            });
        }
        let port = *ports.leg(from.other());
        sdp::rewrite(&body, self.ip, port).unwrap_or(body)
    }

    /// The call ended: close and give the ports back.
    pub fn release(&mut self, token: u64) {
        if let Some(p) = self.ports.remove(&token) {
            self.commands.push(MediaCommand::Close { token });
            for port in p {
                self.pool.give(port);
            }
        }
    }

    /// Free port pairs.
    pub fn available(&self) -> usize {
        self.pool.available()
    }

    /// Commands since the last call.
    pub fn take_commands(&mut self) -> Vec<MediaCommand> {
        std::mem::take(&mut self.commands)
    }
}

/// Rewrite `body` when relaying (no-op in bypass mode).
pub(super) fn relay(plan: &mut Option<MediaPlan>, token: u64, from: Side, body: Bytes) -> Bytes {
    match plan.as_mut() {
        Some(p) => p.body(token, from, body),
        None => body,
    }
}
