//! TCP and TLS: accepted and outgoing connections, each with a reader task that frames
//! messages by Content-Length and a writer task fed by a channel. Connections are kept in a
//! table keyed by id and by remote address, so requests to a peer reuse its connection
//! (RFC 3261 §18.1.1, §18.2.2). A TLS table does the same over `tokio-rustls` streams: the
//! handshake comes first (accepted: our certificate; opened: the peer's is checked against
//! its name, see [`TlsSide::names`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{ConnId, Flow, Inbound, Proto};
use crate::sip::StreamFramer;

type Writer = mpsc::Sender<Bytes>;

/// Tells a connection's reader and writer to stop (we are closing the connection).
type Closer = Arc<tokio::sync::watch::Sender<bool>>;

fn closer() -> Closer {
    Arc::new(tokio::sync::watch::Sender::new(false))
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<u64, (SocketAddr, Writer, Closer)>,
    by_remote: HashMap<SocketAddr, u64>,
}

/// What a TLS connection table needs besides sockets.
#[derive(Clone)]
pub(crate) struct TlsSide {
    /// Handshakes of accepted connections (with the listener).
    pub(crate) acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Handshakes of connections we open.
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// The name a server's certificate must carry, by its IP (trunks named by a host);
    /// otherwise its IP address.
    pub(crate) names: Arc<Mutex<HashMap<std::net::IpAddr, String>>>,
}

impl std::fmt::Debug for TlsSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSide")
            .field("acceptor", &self.acceptor.is_some())
            .finish_non_exhaustive()
    }
}

/// The connection table, bounded by `Limits::tcp_connections`; each connection's write queue
/// by [`super::TCP_WRITE_QUEUE`].
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    table: Arc<Mutex<Table>>,
    next: Arc<AtomicU64>,
    inbound: mpsc::Sender<Inbound>,
    limits: super::Limits,
    counters: Arc<super::Counters>,
    /// `Tcp`, or `Tls` with its [`TlsSide`].
    proto: Proto,
    tls: Option<TlsSide>,
}

impl Connections {
    pub(crate) fn new(
        inbound: mpsc::Sender<Inbound>,
        limits: super::Limits,
        counters: Arc<super::Counters>,
    ) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table::default())),
            next: Arc::new(AtomicU64::new(1)),
            inbound,
            limits,
            counters,
            proto: Proto::Tcp,
            tls: None,
        }
    }

    /// A table of TLS connections.
    pub(crate) fn new_tls(
        inbound: mpsc::Sender<Inbound>,
        limits: super::Limits,
        counters: Arc<super::Counters>,
        tls: TlsSide,
    ) -> Self {
        Self {
            proto: Proto::Tls,
            tls: Some(tls),
            ..Self::new(inbound, limits, counters)
        }
    }

    /// A server at `ip` must show a certificate for `name`.
    pub(crate) fn set_name(&self, ip: std::net::IpAddr, name: &str) {
        if let Some(t) = &self.tls
            && let Ok(mut m) = t.names.lock()
        {
            m.insert(ip, name.to_string());
        }
    }

    /// The name `remote`'s certificate must carry.
    fn server_name(&self, remote: SocketAddr) -> rustls::pki_types::ServerName<'static> {
        let named = self
            .tls
            .as_ref()
            .and_then(|t| t.names.lock().ok()?.get(&remote.ip()).cloned())
            .and_then(|n| rustls::pki_types::ServerName::try_from(n).ok());
        named.unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(remote.ip().into()))
    }

    /// How many connections are open.
    pub(crate) fn count(&self) -> usize {
        self.table.lock().map(|t| t.by_id.len()).unwrap_or(0)
    }

    /// Enter a connection (open or still connecting) with its writer channel; its id.
    fn register(&self, t: &mut Table, remote: SocketAddr, w: Writer, closer: Closer) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        t.by_id.insert(id, (remote, w, closer));
        t.by_remote.insert(remote, id);
        id
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut t) = self.table.lock()
            && let Some((remote, _, _)) = t.by_id.remove(&id)
            && t.by_remote.get(&remote) == Some(&id)
        {
            t.by_remote.remove(&remote);
        }
    }

    /// Send on the flow's connection, or on any connection to its remote address (open or
    /// still connecting: messages wait in its channel), or on a new connection.
    pub(crate) fn send(&self, flow: Flow, bytes: Bytes) {
        let Ok(mut t) = self.table.lock() else {
            return;
        };
        let existing = flow
            .conn
            .and_then(|c| t.by_id.get(&c.0.get()))
            .or_else(|| t.by_remote.get(&flow.remote).and_then(|id| t.by_id.get(id)))
            .map(|(_, w, c)| (w.clone(), c.clone()));
        let bytes = match existing {
            Some((w, closer)) => match w.try_send(bytes) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The peer does not read what we write: close the connection (and stop
                    // reading from it) rather than queue without bound.
                    super::Counters::bump(&self.counters.tcp_queue_overflow);
                    tracing::warn!(remote = %flow.remote, "tcp write queue full; closing the connection");
                    let ids: Vec<u64> = t
                        .by_id
                        .iter()
                        .filter(|(_, (_, _, c))| Arc::ptr_eq(c, &closer))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        if let Some((remote, _, _)) = t.by_id.remove(&id)
                            && t.by_remote.get(&remote) == Some(&id)
                        {
                            t.by_remote.remove(&remote);
                        }
                    }
                    drop(t);
                    closer.send_replace(true);
                    self.report_unreachable(flow);
                    return;
                }
                // The connection just closed: open a new one.
                Err(mpsc::error::TrySendError::Closed(b)) => b,
            },
            None => bytes,
        };
        if t.by_id.len() >= self.limits.tcp_connections {
            drop(t);
            super::Counters::bump(&self.counters.tcp_refused);
            tracing::warn!(remote = %flow.remote, limit = self.limits.tcp_connections, "tcp connection limit reached; not connecting");
            self.report_unreachable(flow);
            return;
        }
        let (wtx, wrx) = mpsc::channel::<Bytes>(super::TCP_WRITE_QUEUE);
        let closer = closer();
        let id = self.register(&mut t, flow.remote, wtx.clone(), closer.clone());
        drop(t);
        let _ = wtx.try_send(bytes);
        let this = self.clone();
        tokio::spawn(async move {
            let failure =
                match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(flow.remote))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        let Some(tls) = this.tls.clone() else {
                            this.run(stream, flow.remote, id, wrx, closer);
                            return;
                        };
                        let name = this.server_name(flow.remote);
                        match tokio::time::timeout(
                            Duration::from_secs(5),
                            tls.connector.connect(name, stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => {
                                this.run(s, flow.remote, id, wrx, closer);
                                return;
                            }
                            Ok(Err(e)) => format!("TLS handshake: {e}"),
                            Err(_) => "TLS handshake timed out".to_string(),
                        }
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_string(),
                };
            tracing::info!(remote = %flow.remote, proto = %this.proto, error = failure, "connect failed");
            // One report for everything queued to this peer meanwhile.
            this.unregister(id);
            let _ = this.inbound.send(Inbound::Unreachable(flow)).await;
        });
    }

    fn report_unreachable(&self, flow: Flow) {
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            let _ = inbound.send(Inbound::Unreachable(flow)).await;
        });
    }

    /// Run reader and writer tasks for an accepted connection (TLS: once its handshake is
    /// done), or close it at once when the table is full.
    pub(crate) fn start<S: Split>(&self, stream: S, remote: SocketAddr) {
        let (wtx, wrx) = mpsc::channel::<Bytes>(super::TCP_WRITE_QUEUE);
        let Ok(mut t) = self.table.lock() else {
            return;
        };
        if t.by_id.len() >= self.limits.tcp_connections {
            drop(t);
            super::Counters::bump(&self.counters.tcp_refused);
            tracing::debug!(%remote, "tcp connection limit reached; connection closed");
            return;
        }
        let closer = closer();
        let id = self.register(&mut t, remote, wtx, closer.clone());
        drop(t);
        self.run(stream, remote, id, wrx, closer);
    }

    /// The reader and writer tasks of connection `id` (split as the stream splits best:
    /// owned halves for TCP, a shared lock for TLS).
    fn run<S: Split>(
        &self,
        stream: S,
        remote: SocketAddr,
        id: u64,
        wrx: mpsc::Receiver<Bytes>,
        closer: Closer,
    ) {
        let (rd, wr) = stream.split();
        self.run_halves(rd, wr, remote, id, wrx, closer);
    }

    fn run_halves<R, W>(
        &self,
        mut rd: R,
        mut wr: W,
        remote: SocketAddr,
        id: u64,
        mut wrx: mpsc::Receiver<Bytes>,
        closer: Closer,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        // The writer ends when the table lets go of its queue (closed, overflowed) or the
        // socket fails; the reader then stops too.
        let (writer_done, mut writer_gone) = tokio::sync::oneshot::channel::<()>();
        let mut closed = closer.subscribe();
        tokio::spawn(async move {
            loop {
                let b = tokio::select! {
                    b = wrx.recv() => b,
                    _ = closed.wait_for(|c| *c) => None,
                };
                let Some(b) = b else {
                    break;
                };
                let written = tokio::select! {
                    // TLS buffers records: flush each message out.
                    r = async { wr.write_all(&b).await?; wr.flush().await } => r.is_ok(),
                    _ = closed.wait_for(|c| *c) => false,
                };
                if !written {
                    break;
                }
            }
            let _ = writer_done.send(());
        });
        let mut closed = closer.subscribe();
        let idle = self.limits.tcp_idle;
        let this = self.clone();
        let flow = Flow {
            proto: self.proto,
            remote,
            conn: std::num::NonZeroU64::new(id).map(ConnId),
        };
        tokio::spawn(async move {
            let mut framer = StreamFramer::new();
            let mut crlfs = 0usize;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let read = tokio::select! {
                    r = tokio::time::timeout(idle, rd.read(&mut buf)) => r,
                    _ = &mut writer_gone => break,
                    _ = closed.wait_for(|c| *c) => break,
                };
                let n = match read {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Err(_) => {
                        super::Counters::bump(&this.counters.tcp_idle_closed);
                        tracing::debug!(%remote, "tcp connection idle; closed");
                        break;
                    }
                    Ok(Ok(n)) => n,
                };
                // `read` never reports more than `buf` holds.
                let Some(data) = buf.get(..n) else {
                    break;
                };
                // A parser bug that panics closes this connection only, like lost framing.
                let pushed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| framer.push(data)))
                        .unwrap_or_else(|_| {
                            Err(crate::sip::ParseError::Framing(
                                "internal parser error".into(),
                            ))
                        });
                // RFC 5626 §4.4.1: a CRLFCRLF ping gets a CRLF pong, which keeps the phone's
                // NAT binding towards this node open and tells it the flow is alive.
                crlfs += framer.take_keepalives();
                for _ in 0..crlfs / 2 {
                    this.send(flow, Bytes::from_static(b"\r\n"));
                }
                crlfs %= 2;
                match pushed {
                    Ok(msgs) => {
                        for m in msgs {
                            if this
                                .inbound
                                .send(Inbound::Message(Box::new(m), flow))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::info!(%remote, error = %e, "tcp framing lost; closing connection");
                        let _ = this
                            .inbound
                            .send(Inbound::Malformed {
                                raw: Bytes::copy_from_slice(data),
                                error: e.to_string(),
                                flow,
                            })
                            .await;
                        break;
                    }
                }
            }
            this.unregister(id);
        });
    }
}

/// A connection stream and how it splits into a reader and a writer half.
pub(crate) trait Split: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl Split for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// TLS streams (accepted and opened) split through a shared lock.
macro_rules! split_tls {
    ($($stream:ty),+) => {$(
        impl<IO> Split for $stream
        where
            IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            type Read = tokio::io::ReadHalf<Self>;
            type Write = tokio::io::WriteHalf<Self>;
            fn split(self) -> (Self::Read, Self::Write) {
                tokio::io::split(self)
            }
        }
    )+};
}

split_tls!(
    tokio_rustls::server::TlsStream<IO>,
    tokio_rustls::client::TlsStream<IO>
);

/// Accept connections until the listener fails.
pub(crate) async fn accept_loop(listener: TcpListener, conns: Connections) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                match conns.tls.as_ref().and_then(|t| t.acceptor.clone()) {
                    None => conns.start(stream, remote),
                    Some(acceptor) => {
                        // The handshake must not hold up the next accept.
                        let conns = conns.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(s)) => conns.start(s, remote),
                                Ok(Err(e)) => {
                                    tracing::info!(%remote, error = %e, "TLS handshake failed")
                                }
                                Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_to_a_new_peer_opens_one_connection_and_keeps_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let remote = listener.local_addr().expect("addr");
        let (inbound, _rx) = mpsc::channel(16);
        let conns = Connections::new(inbound, super::super::Limits::default(), Arc::default());
        let flow = Flow {
            proto: Proto::Tcp,
            remote,
            conn: None,
        };
        // All sent before the connection can be up.
        let mut want = Vec::new();
        for i in 0..10 {
            let m = format!("message {i};");
            want.extend_from_slice(m.as_bytes());
            conns.send(flow, Bytes::from(m));
        }
        let (mut peer, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < want.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf))
                .await
                .expect("bytes in time")
                .expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, want);
        assert_eq!(conns.count(), 1);
    }

    #[tokio::test]
    async fn a_crlf_ping_gets_a_pong() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (inbound, _rx) = mpsc::channel(16);
        let conns = Connections::new(inbound, super::super::Limits::default(), Arc::default());
        tokio::spawn(accept_loop(listener, conns));
        let mut phone = TcpStream::connect(addr).await.expect("connect");
        // Two pings, the second split across writes.
        phone.write_all(b"\r\n\r\n\r\n").await.expect("ping");
        phone.write_all(b"\r\n").await.expect("ping");
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 4 {
            let n = tokio::time::timeout(Duration::from_secs(5), phone.read(&mut buf))
                .await
                .expect("pong in time")
                .expect("read");
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"\r\n\r\n", "one CRLF pong per CRLFCRLF ping");
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_reported_once_for_a_burst() {
        // A port nobody listens on: bind, note it, close.
        let remote = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("port");
        let (inbound, mut rx) = mpsc::channel(16);
        let conns = Connections::new(inbound, super::super::Limits::default(), Arc::default());
        let flow = Flow {
            proto: Proto::Tcp,
            remote,
            conn: None,
        };
        for _ in 0..5 {
            conns.send(flow, Bytes::from_static(b"x"));
        }
        let first = tokio::time::timeout(Duration::from_secs(6), rx.recv())
            .await
            .expect("a report in time");
        assert!(matches!(first, Some(Inbound::Unreachable(f)) if f.remote == remote));
        assert_eq!(conns.count(), 0);
        // Every sender is gone with the failed attempt: the channel closes with no second report.
        drop(conns);
        assert!(rx.recv().await.is_none());
    }
}
