//! The UA's TCP side (RFC 3261 §18): a listener on the same port as the UDP socket, and one
//! connection per peer address. Connections we open are bound to that same port
//! (`SO_REUSEPORT`), so the address a server records for us (the source of our requests)
//! is one it can connect back to later, as a phone's would be. Messages are framed with
//! [`StreamFramer`] and handed to the same handlers as datagrams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use understudy::sip::StreamFramer;

use super::recv;
use super::state::{Peer, Shared, Transport};

/// Connections by peer address: connection id and the writer's queue.
type Conns = HashMap<SocketAddr, (u64, mpsc::UnboundedSender<Bytes>)>;

/// The TCP state of a UA.
#[derive(Debug, Default)]
pub(crate) struct TcpSide {
    conns: Mutex<Conns>,
    next_id: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Connections accepted so far, by peer address (for assertions).
    accepted: Mutex<Vec<SocketAddr>>,
    /// The accept task (aborting it closes the listener).
    pub(crate) listener: Mutex<Option<AbortHandle>>,
    /// For TLS peers: the client side of the handshake (the server's certificate is
    /// checked against the test CA).
    pub(crate) tls: Mutex<Option<Arc<tokio_rustls::rustls::ClientConfig>>>,
}

impl TcpSide {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add_task(&self, h: AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(h);
    }

    /// Stop every connection task.
    pub(crate) fn abort_all(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }

    /// Close the listener (connection attempts are refused from now on) and every
    /// connection.
    pub(crate) fn close(&self) {
        if let Some(t) = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
        self.abort_all();
        self.conns().clear();
    }

    /// Peer addresses of the connections accepted so far.
    pub(crate) fn accepted(&self) -> Vec<SocketAddr> {
        self.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn socket(local: SocketAddr) -> std::io::Result<TcpSocket> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(local)?;
    Ok(s)
}

/// Listen on `local` (the UDP socket's address).
pub(crate) fn listen(local: SocketAddr) -> std::io::Result<TcpListener> {
    socket(local)?.listen(128)
}

/// Accept connections until the task is aborted.
pub(crate) async fn accept_loop(me: Weak<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(shared) = me.upgrade() else {
            return;
        };
        let Some(tcp) = &shared.tcp else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = tcp.next_id.fetch_add(1, Ordering::Relaxed);
        tcp.conns().insert(peer, (id, tx));
        tcp.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(peer);
        let sh = shared.clone();
        let t = tokio::spawn(run_conn(sh, stream, Peer::tcp(peer), id, rx));
        tcp.add_task(t.abort_handle());
    }
}

/// Send `bytes` to `to` over TCP or TLS: on the connection with that peer, or a new one.
pub(crate) fn send(shared: &Shared, bytes: Bytes, peer: Peer) {
    let to = peer.addr;
    let Some(tcp) = &shared.tcp else {
        eprintln!(
            "ua {}: no TCP side; message to {to} dropped (bind with Ua::bind_tcp)",
            shared.user
        );
        return;
    };
    let mut conns = tcp.conns();
    if let Some((_, tx)) = conns.get(&to)
        && tx.send(bytes.clone()).is_ok()
    {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(bytes);
    let id = tcp.next_id.fetch_add(1, Ordering::Relaxed);
    conns.insert(to, (id, tx));
    drop(conns);
    let Some(me) = shared.me.get().and_then(Weak::upgrade) else {
        return;
    };
    let connector = tcp
        .tls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let local = shared.local;
    let t = tokio::spawn(async move {
        let stream = match socket(local) {
            Ok(s) => s.connect(to).await,
            Err(e) => Err(e),
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ua {}: TCP connect {local} → {to} failed: {e}", me.user);
                forget(&me, to, id);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        if peer.transport != Transport::Tls {
            run_conn(me, stream, peer, id, rx).await;
            return;
        }
        let Some(connector) = connector else {
            eprintln!("ua {}: no TLS settings; message to {to} dropped", me.user);
            forget(&me, to, id);
            return;
        };
        let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(to.ip().into());
        let connector = tokio_rustls::TlsConnector::from(connector);
        match connector.connect(name, stream).await {
            Ok(s) => run_conn(me, s, peer, id, rx).await,
            Err(e) => {
                eprintln!("ua {}: TLS handshake with {to} failed: {e}", me.user);
                forget(&me, to, id);
            }
        }
    });
    tcp.add_task(t.abort_handle());
}

fn forget(shared: &Shared, peer: SocketAddr, id: u64) {
    if let Some(tcp) = &shared.tcp {
        let mut conns = tcp.conns();
        if conns.get(&peer).is_some_and(|(i, _)| *i == id) {
            conns.remove(&peer);
        }
    }
}

/// Write queued messages and read framed ones until either side closes.
async fn run_conn<S>(
    shared: Arc<Shared>,
    stream: S,
    from: Peer,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let peer = from.addr;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    };
    let sh = shared.clone();
    let reader = async move {
        let mut framer = StreamFramer::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match framer.push(&buf[..n]) {
                Ok(msgs) => {
                    for p in msgs {
                        recv::dispatch(&sh, p.message, from);
                    }
                }
                Err(e) => {
                    eprintln!("ua {}: bad TCP stream from {peer}: {e}", sh.user);
                    break;
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    forget(&shared, peer, id);
}
