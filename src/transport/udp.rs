//! UDP: one receive task per socket; sends go straight to the socket from the caller, with a
//! queue for the rare case the socket buffer is full.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{Flow, Inbound, parse_inbound};

/// Largest datagram we read (RFC 3261 §18.1.1 allows up to 65,535 bytes).
const MAX_DATAGRAM: usize = 65_535;

/// Read datagrams until the channel closes. Each becomes an [`Inbound`]; empty datagrams and
/// CRLF keep-alives (RFC 5626 §3.5.1) are ignored.
pub(crate) async fn recv_loop(sock: Arc<UdpSocket>, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                // ICMP errors surface here on Linux (ECONNREFUSED); they are not fatal.
                tracing::trace!(error = %e, "udp recv error");
                continue;
            }
        };
        // `recv_from` never reports more than `buf` holds.
        let Some(data) = buf.get(..n) else {
            continue;
        };
        if data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue;
        }
        let inbound = parse_inbound(data, Flow::udp(from));
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Sends on a UDP socket without awaiting; falls back to a bounded queue drained by a task
/// ([`super::UDP_BACKLOG`] messages, then dropped and counted).
#[derive(Debug, Clone)]
pub(crate) struct UdpSender {
    sock: Arc<UdpSocket>,
    backlog: mpsc::Sender<(Bytes, SocketAddr)>,
    counters: Arc<super::Counters>,
}

impl UdpSender {
    pub(crate) fn new(sock: Arc<UdpSocket>, counters: Arc<super::Counters>) -> Self {
        let (backlog, mut rx) = mpsc::channel::<(Bytes, SocketAddr)>(super::UDP_BACKLOG);
        let s2 = sock.clone();
        tokio::spawn(async move {
            while let Some((b, to)) = rx.recv().await {
                if let Err(e) = s2.send_to(&b, to).await {
                    tracing::debug!(%to, error = %e, "udp send failed");
                }
            }
        });
        Self {
            sock,
            backlog,
            counters,
        }
    }

    pub(crate) fn send(&self, bytes: Bytes, to: SocketAddr) {
        match self.sock.try_send_to(&bytes, to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if self.backlog.try_send((bytes, to)).is_err() {
                    super::Counters::bump(&self.counters.udp_backlog_dropped);
                    tracing::debug!(%to, "udp send backlog full; message dropped");
                }
            }
            Err(e) => tracing::debug!(%to, error = %e, "udp send failed"),
        }
    }

    /// Messages waiting in the backlog.
    pub(crate) fn backlog(&self) -> usize {
        super::UDP_BACKLOG.saturating_sub(self.backlog.capacity())
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.sock.local_addr().ok()
    }
}
