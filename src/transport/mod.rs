//! SIP transports: UDP and TCP listeners, the TCP connection table, and sending to a flow
//! (RFC 3261 §18). The only module that owns SIP sockets. Parsing of received bytes happens
//! here, on the receiving task, so the core loop only sees messages.

mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

pub use crate::net::{ConnId, Flow, Inbound, Proto, Transmit};

use crate::sip::parse_datagram;

/// Parse a datagram on the receiving task. A parser bug that panics must not end the task
/// (the node would go deaf): it is caught and the datagram handed on as malformed.
fn parse_inbound(data: &[u8], flow: Flow) -> Inbound {
    let parsed = std::panic::catch_unwind(|| parse_datagram(data));
    let error = match parsed {
        Ok(Ok(p)) => return Inbound::Message(Box::new(p), flow),
        Ok(Err(e)) => e.to_string(),
        Err(_) => {
            tracing::error!(%flow, "internal error in the parser; datagram handled as malformed");
            "internal parser error".to_string()
        }
    };
    Inbound::Malformed {
        raw: Bytes::copy_from_slice(data),
        error,
        flow,
    }
}

/// Socket buffers for SIP over UDP: a burst of a few thousand messages must wait in the
/// kernel, not be dropped, while the receiving task is descheduled.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = s.set_recv_buffer_size(UDP_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = s.set_send_buffer_size(UDP_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the UDP send buffer");
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding a socket failed.
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind {
        /// Protocol.
        proto: Proto,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// Bounds on what the transports keep (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open TCP connections, accepted and outgoing; beyond it new ones are closed at once.
    pub tcp_connections: usize,
    /// A TCP connection with no traffic for this long is closed.
    pub tcp_idle: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tcp_connections: 10_000,
            tcp_idle: std::time::Duration::from_secs(600),
        }
    }
}

/// Messages waiting to be sent because a UDP socket buffer was full; beyond this they are
/// dropped (and counted): a peer that does not drain its socket must not grow our memory.
pub const UDP_BACKLOG: usize = 16_384;

/// Messages waiting for one TCP connection's writer; beyond this the peer is not reading,
/// and the connection is closed (and counted).
pub const TCP_WRITE_QUEUE: usize = 4_096;

/// What the transports dropped to stay within their bounds, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// UDP messages dropped because the send backlog was full.
    pub udp_backlog_dropped: std::sync::atomic::AtomicU64,
    /// TCP connections refused (accepted then closed, or not opened) at the connection limit.
    pub tcp_refused: std::sync::atomic::AtomicU64,
    /// TCP connections closed because their write queue was full.
    pub tcp_queue_overflow: std::sync::atomic::AtomicU64,
    /// TCP connections closed after `tcp_idle` without traffic.
    pub tcp_idle_closed: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn bump(c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The running transports: send side for the core loop.
#[derive(Debug, Clone)]
pub struct Transport {
    udp: Option<udp::UdpSender>,
    tcp: tcp::Connections,
    tcp_local: Option<SocketAddr>,
    tls: Option<tcp::Connections>,
    tls_local: Option<SocketAddr>,
    counters: Arc<Counters>,
}

/// The TLS side of the transport: the listener (with the server configuration) and the
/// client configuration for connections we open.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Where to listen, with our certificate; `None`: only outgoing TLS.
    pub listen: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// For connections we open.
    pub client: Arc<rustls::ClientConfig>,
}

impl Transport {
    /// Bind the listeners and start their tasks; received messages go to `inbound`.
    pub async fn start(
        udp_addr: Option<SocketAddr>,
        tcp_addr: Option<SocketAddr>,
        inbound: mpsc::Sender<Inbound>,
        limits: Limits,
        tls: Option<TlsSettings>,
    ) -> Result<Self, Error> {
        let counters = Arc::new(Counters::default());
        let mut udp = None;
        if let Some(addr) = udp_addr {
            let sock = bind_udp(addr).map_err(|source| Error::Bind {
                proto: Proto::Udp,
                addr,
                source,
            })?;
            let sock = Arc::new(sock);
            tokio::spawn(udp::recv_loop(sock.clone(), inbound.clone()));
            udp = Some(udp::UdpSender::new(sock, counters.clone()));
        }
        let mut tls_conns = None;
        let mut tls_local = None;
        if let Some(t) = tls {
            let side = tcp::TlsSide {
                acceptor: t
                    .listen
                    .as_ref()
                    .map(|(_, c)| tokio_rustls::TlsAcceptor::from(c.clone())),
                connector: tokio_rustls::TlsConnector::from(t.client.clone()),
                names: Arc::default(),
            };
            let conns = tcp::Connections::new_tls(inbound.clone(), limits, counters.clone(), side);
            if let Some((addr, _)) = t.listen {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind {
                        proto: Proto::Tls,
                        addr,
                        source,
                    })?;
                tls_local = l.local_addr().ok();
                tokio::spawn(tcp::accept_loop(l, conns.clone()));
            }
            tls_conns = Some(conns);
        }
        let conns = tcp::Connections::new(inbound, limits, counters.clone());
        let mut tcp_local = None;
        if let Some(addr) = tcp_addr {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    proto: Proto::Tcp,
                    addr,
                    source,
                })?;
            tcp_local = l.local_addr().ok();
            tokio::spawn(tcp::accept_loop(l, conns.clone()));
        }
        Ok(Self {
            udp,
            tcp: conns,
            tcp_local,
            tls: tls_conns,
            tls_local,
            counters,
        })
    }

    /// The bound UDP address.
    pub fn udp_local(&self) -> Option<SocketAddr> {
        self.udp.as_ref().and_then(udp::UdpSender::local_addr)
    }

    /// The bound TCP listener address.
    pub fn tcp_local(&self) -> Option<SocketAddr> {
        self.tcp_local
    }

    /// The bound TLS listener address.
    pub fn tls_local(&self) -> Option<SocketAddr> {
        self.tls_local
    }

    /// Open TCP and TLS connections.
    pub fn tcp_connections(&self) -> usize {
        self.tcp.count() + self.tls.as_ref().map_or(0, tcp::Connections::count)
    }

    /// A TLS server at `ip` must show a certificate for `name` (a trunk named by a host).
    pub fn tls_name(&self, ip: std::net::IpAddr, name: &str) {
        if let Some(t) = &self.tls {
            t.set_name(ip, name);
        }
    }

    /// Messages waiting in the UDP send backlog.
    pub fn udp_backlog(&self) -> usize {
        self.udp.as_ref().map_or(0, udp::UdpSender::backlog)
    }

    /// What was dropped to stay within the bounds.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Write a message to a flow. Never awaits.
    pub fn send(&self, t: Transmit) {
        match t.flow.proto {
            Proto::Udp => match &self.udp {
                Some(u) => u.send(t.bytes, t.flow.remote),
                None => tracing::debug!(flow = %t.flow, "no UDP transport; dropped"),
            },
            // Outgoing TCP works without a listener.
            Proto::Tcp => self.tcp.send(t.flow, t.bytes),
            Proto::Tls => match &self.tls {
                Some(c) => c.send(t.flow, t.bytes),
                None => tracing::debug!(flow = %t.flow, "no TLS configuration; dropped"),
            },
        }
    }
}
