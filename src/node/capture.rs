//! HEP capture off the signalling path: every SIP message the node receives or sends is
//! encoded ([`crate::capture`]) and queued for a task that sends it to the capture server
//! over UDP. The queue is bounded; when it is full (the capture server or the link is slow)
//! copies are dropped and counted, and calls never wait for capture.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::capture::{Captured, encode};
use crate::config::CaptureConfig;
use crate::net::{Flow, Inbound, Proto, Transmit};

/// Copies waiting for the sender task; beyond, they are dropped.
const QUEUE: usize = 4096;

/// The node's own addresses, by transport (the local end of a capture).
#[derive(Debug, Clone, Copy)]
pub(super) struct Locals {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

/// Counters shown in `/metrics`.
#[derive(Debug, Default)]
pub(super) struct HepCounters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

/// The capture agent.
#[derive(Debug)]
pub(super) struct Hep {
    tx: mpsc::Sender<Vec<u8>>,
    agent: u32,
    password: Option<String>,
    locals: Locals,
    pub counters: Arc<HepCounters>,
}

impl Hep {
    /// Start capturing to `cfg.hep`; `None` when capture is off.
    pub(super) async fn start(
        cfg: &CaptureConfig,
        locals: Locals,
    ) -> std::io::Result<Option<Self>> {
        let Some(dest) = cfg.hep else {
            return Ok(None);
        };
        let any = match dest.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let sock = tokio::net::UdpSocket::bind(SocketAddr::new(any, 0)).await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let counters = Arc::new(HepCounters::default());
        let c = counters.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                match sock.send_to(&p, dest).await {
                    Ok(_) => c.sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => c.dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        tracing::info!(server = %dest, agent = cfg.hep_id, "HEP capture on");
        Ok(Some(Self {
            tx,
            agent: cfg.hep_id,
            password: cfg.password.clone(),
            locals,
            counters,
        }))
    }

    fn local(&self, proto: Proto) -> Option<SocketAddr> {
        match proto {
            Proto::Udp => self.locals.udp,
            Proto::Tcp => self.locals.tcp,
            Proto::Tls => self.locals.tls,
        }
    }

    fn mirror(&self, proto: Proto, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let time_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let c = Captured {
            proto,
            src,
            dst,
            time_us,
            payload,
        };
        let sent = encode(&c, self.agent, self.password.as_deref())
            .is_some_and(|p| self.tx.try_send(p).is_ok());
        if !sent {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A message the node is about to send.
    pub(super) fn outbound(&self, t: &Transmit) {
        if let Some(local) = self.local(t.flow.proto) {
            self.mirror(t.flow.proto, local, t.flow.remote, &t.bytes);
        }
    }

    /// A message the node received (re-serialized: the parser keeps no raw copy).
    pub(super) fn inbound(&self, ib: &Inbound) {
        let (flow, bytes): (Flow, bytes::Bytes) = match ib {
            Inbound::Message(p, flow) => (*flow, p.message.to_bytes()),
            Inbound::Malformed { raw, flow, .. } => (*flow, raw.clone()),
            Inbound::Unreachable(_) => return,
        };
        if let Some(local) = self.local(flow.proto) {
            self.mirror(flow.proto, flow.remote, local, &bytes);
        }
    }
}
