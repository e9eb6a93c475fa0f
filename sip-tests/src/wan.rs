//! A userspace WAN between the two nodes of a pair ([`Relay`]): the kernel here has no
//! `netem`, so the pair link goes through this relay, which delays every datagram and every
//! chunk of a TCP stream by `delay ± jitter` (datagrams independently, so they reorder; a
//! stream in order), drops datagrams at random (`loss`) and those larger than `max_datagram`
//! (a path MTU with fragments dropped, as many firewalls do).
//!
//! Each node knows its peer by the relay's address on its own side (`pair.peer`); the relay
//! forwards from its address on the other side, so each node sees its peer's packets come
//! from the address it configured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// What the link does to traffic.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Mean one-way delay.
    pub delay: Duration,
    /// Each packet's delay is `delay` ± up to this.
    pub jitter: Duration,
    /// Share of datagrams dropped (0–1).
    pub loss: f64,
    /// Datagrams larger than this are dropped.
    pub max_datagram: usize,
}

impl Impairment {
    /// 40 ms ± 10 ms one way, 1 % loss, datagrams over 1,400 bytes dropped.
    pub fn wan() -> Self {
        Self {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(10),
            loss: 0.01,
            max_datagram: 1400,
        }
    }
}

/// What crossed the relay.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams forwarded.
    pub datagrams: AtomicU64,
    /// Datagrams dropped at random.
    pub lost: AtomicU64,
    /// Datagrams dropped for their size.
    pub too_big: AtomicU64,
    /// Stream bytes forwarded.
    pub stream_bytes: AtomicU64,
    /// TCP connections relayed.
    pub connections: AtomicU64,
}

/// One end of the link: the relay's address on a node's side and that node's address.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    /// The relay's address facing the node (the node's `pair.peer`).
    pub relay: SocketAddr,
    /// The node's SIP address.
    pub node: SocketAddr,
}

/// The running relay; its tasks end with the runtime.
#[derive(Debug, Clone)]
pub struct Relay {
    /// What crossed it.
    pub counters: Arc<Counters>,
}

struct Link {
    imp: Impairment,
    rng: Mutex<rand::rngs::StdRng>,
    counters: Arc<Counters>,
}

impl Link {
    async fn delay(&self) -> Duration {
        let j = self.imp.jitter.as_secs_f64();
        let d = self.imp.delay.as_secs_f64() + self.rng.lock().await.gen_range(-j..=j);
        Duration::from_secs_f64(d.max(0.0))
    }

    async fn lose(&self) -> bool {
        self.rng
            .lock()
            .await
            .gen_bool(self.imp.loss.clamp(0.0, 1.0))
    }
}

impl Relay {
    /// Relay between `a` and `b` over UDP and TCP with `imp`, its randomness from `seed`.
    pub async fn start(a: Side, b: Side, imp: Impairment, seed: u64) -> Result<Self> {
        let link = Arc::new(Link {
            imp,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            counters: Arc::default(),
        });
        let ua = Arc::new(
            UdpSocket::bind(a.relay)
                .await
                .context("relay UDP, side a")?,
        );
        let ub = Arc::new(
            UdpSocket::bind(b.relay)
                .await
                .context("relay UDP, side b")?,
        );
        tokio::spawn(datagrams(link.clone(), ua.clone(), ub.clone(), b.node));
        tokio::spawn(datagrams(link.clone(), ub, ua, a.node));
        let ta = TcpListener::bind(a.relay)
            .await
            .context("relay TCP, side a")?;
        let tb = TcpListener::bind(b.relay)
            .await
            .context("relay TCP, side b")?;
        tokio::spawn(accept(link.clone(), ta, b.relay, b.node));
        tokio::spawn(accept(link.clone(), tb, a.relay, a.node));
        Ok(Self {
            counters: link.counters.clone(),
        })
    }
}

/// Datagrams arriving on `from` go out of `to` towards `dest`, impaired.
async fn datagrams(link: Arc<Link>, from: Arc<UdpSocket>, to: Arc<UdpSocket>, dest: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, _)) = from.recv_from(&mut buf).await else {
            return;
        };
        let c = &link.counters;
        if n > link.imp.max_datagram {
            c.too_big.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if link.lose().await {
            c.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        c.datagrams.fetch_add(1, Ordering::Relaxed);
        let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
        let delay = link.delay().await;
        let to = to.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = to.send_to(&data, dest).await;
        });
    }
}

/// Each connection accepted on `listener` is joined to a new one from `src_ip` to `dest`.
async fn accept(link: Arc<Link>, listener: TcpListener, src: SocketAddr, dest: SocketAddr) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let link = link.clone();
        tokio::spawn(async move {
            let Ok(sock) = TcpSocket::new_v4() else {
                return;
            };
            if sock.bind(SocketAddr::new(src.ip(), 0)).is_err() {
                return;
            }
            let Ok(outbound) = sock.connect(dest).await else {
                return;
            };
            link.counters.connections.fetch_add(1, Ordering::Relaxed);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(stream(link.clone(), ri, wo));
            tokio::spawn(stream(link, ro, wi));
        });
    }
}

/// Copy a stream, each chunk released `delay ± jitter` after it arrived but never before the
/// previous one (a stream stays in order).
async fn stream(
    link: Arc<Link>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = (Instant::now() + link.delay().await).max(last);
        last = at;
        link.counters
            .stream_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        if tx
            .send((at, buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
