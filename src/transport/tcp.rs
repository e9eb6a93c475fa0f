//! TCP: accepted and outgoing connections, each with a reader task that frames messages by
//! Content-Length and a writer task fed by a channel. Connections are kept in a table keyed
//! by id and by remote address, so requests to a peer reuse its connection (RFC 3261 §18.1.1,
//! §18.2.2).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{ConnId, Flow, Inbound, Proto};
use crate::sip::StreamFramer;

/// Idle connections are closed after this long without traffic.
const IDLE: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<u64, (SocketAddr, mpsc::UnboundedSender<Bytes>)>,
    by_remote: HashMap<SocketAddr, u64>,
}

/// The connection table.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    table: Arc<Mutex<Table>>,
    next: Arc<AtomicU64>,
    inbound: mpsc::Sender<Inbound>,
}

impl Connections {
    pub(crate) fn new(inbound: mpsc::Sender<Inbound>) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table::default())),
            next: Arc::new(AtomicU64::new(1)),
            inbound,
        }
    }

    /// How many connections are open.
    pub(crate) fn count(&self) -> usize {
        self.table.lock().map(|t| t.by_id.len()).unwrap_or(0)
    }

    fn register(&self, remote: SocketAddr, w: mpsc::UnboundedSender<Bytes>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = self.table.lock() {
            t.by_id.insert(id, (remote, w));
            t.by_remote.insert(remote, id);
        }
        id
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut t) = self.table.lock()
            && let Some((remote, _)) = t.by_id.remove(&id)
            && t.by_remote.get(&remote) == Some(&id)
        {
            t.by_remote.remove(&remote);
        }
    }

    /// Send on the flow's connection, or on any open connection to its remote address, or
    /// on a new connection.
    pub(crate) fn send(&self, flow: Flow, bytes: Bytes) {
        let existing = self.table.lock().ok().and_then(|t| {
            flow.conn
                .and_then(|c| t.by_id.get(&c.0))
                .or_else(|| t.by_remote.get(&flow.remote).and_then(|id| t.by_id.get(id)))
                .map(|(_, w)| w.clone())
        });
        if let Some(w) = existing
            && w.send(bytes.clone()).is_ok()
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(flow.remote))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let w = this.start(stream, flow.remote);
                    let _ = w.send(bytes);
                }
                Ok(Err(e)) => {
                    tracing::info!(remote = %flow.remote, error = %e, "tcp connect failed");
                    let _ = this.inbound.send(Inbound::Unreachable(flow)).await;
                }
                Err(_) => {
                    tracing::info!(remote = %flow.remote, "tcp connect timed out");
                    let _ = this.inbound.send(Inbound::Unreachable(flow)).await;
                }
            }
        });
    }

    /// Run reader and writer tasks for a connection; returns its writer.
    pub(crate) fn start(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> mpsc::UnboundedSender<Bytes> {
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Bytes>();
        let id = self.register(remote, wtx.clone());
        let (mut rd, mut wr) = stream.into_split();
        tokio::spawn(async move {
            while let Some(b) = wrx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let this = self.clone();
        let flow = Flow {
            proto: Proto::Tcp,
            remote,
            conn: Some(ConnId(id)),
        };
        tokio::spawn(async move {
            let mut framer = StreamFramer::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match tokio::time::timeout(IDLE, rd.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                };
                match framer.push(&buf[..n]) {
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
                                raw: Bytes::copy_from_slice(&buf[..n]),
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
        wtx
    }
}

/// Accept connections until the listener fails.
pub(crate) async fn accept_loop(listener: TcpListener, conns: Connections) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                conns.start(stream, remote);
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
