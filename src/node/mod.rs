//! Wiring: builds the layers from a config, binds the sockets, and runs the one event loop
//! that feeds received messages, timer expiries and admin requests into the sans-IO
//! [`Server`]. No protocol logic lives here.

mod admin;
mod capture;
mod resolver;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::cdr::CdrWriter;
use crate::config::Config;
use crate::dialog::LocalContact;
use crate::server::Server;
use crate::transport::{self, Inbound, Transport};

pub use admin::AdminQuery;

/// Addresses the node actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// SIP over UDP.
    pub udp: Option<SocketAddr>,
    /// SIP over TCP.
    pub tcp: Option<SocketAddr>,
    /// Admin HTTP.
    pub admin: SocketAddr,
}

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A SIP socket could not be bound.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// The admin socket could not be bound.
    #[error("cannot bind admin {addr}: {source}")]
    Admin {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The media relay could not start.
    #[error("media relay: {0}")]
    Media(std::io::Error),
    /// The state directory is unusable.
    #[error("state directory: {0}")]
    State(String),
    /// The DNS resolver for trunk host names could not start.
    #[error("dns: {0}")]
    Dns(String),
    /// The TLS configuration (certificate, key, CA) is not usable.
    #[error("tls: {0}")]
    Tls(String),
    /// The CDR database could not be opened or flushed.
    #[error(transparent)]
    Cdr(#[from] crate::cdr::CdrError),
    /// The HEP capture socket could not be opened.
    #[error("capture.hep: cannot open a socket: {0}")]
    Capture(std::io::Error),
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hostport(
    configured: Option<&str>,
    bound: Option<SocketAddr>,
    other: Option<SocketAddr>,
) -> String {
    if let Some(a) = configured {
        return a.to_string();
    }
    let Some(addr) = bound.or(other) else {
        return "127.0.0.1:5060".into();
    };
    if addr.ip().is_unspecified() {
        tracing::warn!(%addr, "listening on a wildcard address without [node] advertise; advertising 127.0.0.1");
        return format!("127.0.0.1:{}", addr.port());
    }
    addr.to_string()
}

/// The TLS side of the transport, when the node listens on TLS or has a TLS trunk.
fn tls_settings(cfg: &Config) -> Result<Option<transport::TlsSettings>, NodeError> {
    let node = &cfg.node;
    let tls_trunks = cfg
        .trunks
        .iter()
        .any(|t| t.transport == crate::config::TrunkTransport::Tls);
    if node.sip_tls.is_none() && !tls_trunks {
        return Ok(None);
    }
    let ours = node.tls_cert.as_deref().zip(node.tls_key.as_deref());
    let listen = match (node.sip_tls, ours) {
        (Some(addr), Some((cert, key))) => Some((
            addr,
            crate::tls::server_config(cert, key).map_err(NodeError::Tls)?,
        )),
        (Some(_), None) => {
            return Err(NodeError::Tls(
                "node.sip_tls needs node.tls_cert and node.tls_key".into(),
            ));
        }
        (None, _) => None,
    };
    let client = crate::tls::client_config(node.tls_ca.as_deref(), ours).map_err(NodeError::Tls)?;
    Ok(Some(transport::TlsSettings { listen, client }))
}

/// Hand finished calls, with their media counters, to the CDR writer. Drained even when CDRs
/// are off, so neither the server nor the relay keeps them.
/// Hand the CDRs of calls that ended to the writer; `true` when there were any.
fn flush_cdrs(
    server: &mut Server,
    relay: &mut crate::media::Relay,
    cdr: Option<&CdrWriter>,
) -> bool {
    let cdrs = server.take_cdrs();
    let any = !cdrs.is_empty();
    for mut r in cdrs {
        if let Ok(token) = u64::from_str_radix(&r.token, 16) {
            r.media = relay.take_final(token);
        }
        if let Some(w) = cdr {
            w.record(r);
        }
    }
    any
}

fn apply_media(relay: &mut crate::media::Relay, c: crate::b2bua::MediaCommand) {
    use crate::b2bua::MediaCommand;
    match c {
        MediaCommand::Open { token, side, port } => {
            if let Err(e) = relay.open(token, side, port) {
                tracing::error!(error = %e, "media relay");
            }
        }
        MediaCommand::Peer {
            token,
            side,
            rtp,
            rtcp,
            formats,
            receives,
        } => relay.set_peer(token, side, rtp, rtcp, formats, receives),
        MediaCommand::Close { token } => {
            relay.close(token);
        }
    }
}

/// How a node finds its configuration again (`understudy reload`, SIGHUP).
#[derive(Debug, Default)]
pub struct Reloading {
    /// The file the configuration came from; without it, reloads are refused.
    pub path: Option<std::path::PathBuf>,
    /// Each message asks for a reload (the process's SIGHUP handler sends them).
    pub requests: Option<mpsc::Receiver<()>>,
}

/// Run a node until `shutdown` becomes true. `bound` receives the bound addresses once the
/// sockets are open.
pub async fn run(
    cfg: Config,
    shutdown: watch::Receiver<bool>,
    bound: Option<oneshot::Sender<Bound>>,
) -> Result<(), NodeError> {
    run_with(cfg, shutdown, bound, Reloading::default()).await
}

/// Re-read the configuration file and apply it: what changed, or why nothing did (the
/// file's errors with key and line, or the section that needs a restart).
pub(crate) fn reload(
    server: &mut Server,
    path: Option<&std::path::Path>,
    now: std::time::Instant,
) -> Result<Vec<String>, String> {
    let Some(path) = path else {
        return Err("this node was started without a configuration file".into());
    };
    let cfg = Config::load(path).map_err(|e| {
        let e = e.to_string();
        tracing::error!(
            error = e,
            "reload refused: the configuration file has errors"
        );
        e
    })?;
    server.reload(now, cfg).inspect_err(|e| {
        tracing::error!(error = e, "reload refused");
    })
}

/// [`run`], with a way to reload the configuration.
pub async fn run_with(
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    bound: Option<oneshot::Sender<Bound>>,
    mut reloading: Reloading,
) -> Result<(), NodeError> {
    let cfg = Arc::new(cfg);
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(8192);
    let limits = transport::Limits {
        tcp_connections: cfg.limits.tcp_connections,
        tcp_idle: Duration::from_secs(cfg.limits.tcp_idle_s),
    };
    let tls = tls_settings(&cfg)?;
    let transport =
        Transport::start(cfg.node.sip_udp, cfg.node.sip_tcp, in_tx, limits, tls).await?;
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(|source| NodeError::Admin {
            addr: cfg.admin.listen,
            source,
        })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin.listen);
    let me = LocalContact {
        udp: hostport(
            cfg.node.advertise.as_deref(),
            transport.udp_local(),
            transport.tcp_local(),
        ),
        tcp: hostport(
            cfg.node.advertise.as_deref(),
            transport.tcp_local(),
            transport.udp_local(),
        ),
        // TLS has its own port: the advertised host with it.
        tls: transport
            .tls_local()
            .map(|a| {
                let host = cfg
                    .node
                    .advertise
                    .as_deref()
                    .and_then(|h| h.rsplit_once(':').map(|(h, _)| h.to_string()));
                match host {
                    Some(h) => format!("{h}:{}", a.port()),
                    None => hostport(None, Some(a), None),
                }
            })
            .unwrap_or_default(),
    };
    let hep = capture::Hep::start(
        &cfg.capture,
        capture::Locals {
            udp: transport.udp_local(),
            tcp: transport.tcp_local(),
            tls: transport.tls_local(),
        },
    )
    .await
    .map_err(NodeError::Capture)?;
    // Every message in goes to the server through here (and to the capture first).
    let feed = |server: &mut Server, now, ib: Inbound| {
        if let Some(h) = &hep {
            h.inbound(&ib);
        }
        server.handle_inbound_guarded(now, ib);
    };
    let cdr = if cfg.cdr.enabled {
        Some(CdrWriter::open(&cfg.cdr.path)?)
    } else {
        None
    };
    // PostgreSQL: the SQLite file is the spool, a forwarder copies from it.
    let forwarder = match (&cdr, &cfg.cdr.url) {
        (Some(_), Some(url)) => Some(crate::cdr::Forwarder::start(&cfg.cdr.path, url)?),
        _ => None,
    };
    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminQuery>(64);
    let (stop_admin_tx, stop_admin_rx) = watch::channel(false);
    let admin_task = tokio::spawn(crate::admin::http::serve(
        admin_listener,
        cfg.admin.token.clone(),
        admin::handler(admin_tx),
        stop_admin_rx,
    ));
    tracing::info!(
        node = cfg.node.name,
        udp = ?transport.udp_local(),
        tcp = ?transport.tcp_local(),
        admin = %admin_addr,
        advertise = me.udp,
        "node started"
    );
    if let Some(b) = bound {
        let _ = b.send(Bound {
            udp: transport.udp_local(),
            tcp: transport.tcp_local(),
            admin: admin_addr,
        });
    }
    let start = tokio::time::Instant::now().into_std();
    let epochs: Box<dyn crate::pair::epoch::EpochStore> = if cfg.pair.is_some() {
        Box::new(crate::pair::epoch::FileEpochStore::new(&cfg.state.dir).map_err(NodeError::State)?)
    } else {
        Box::new(crate::pair::epoch::MemoryEpochStore::new(1))
    };
    let relay_ip = me
        .udp
        .rsplit_once(':')
        .and_then(|(h, _)| h.trim_matches(['[', ']']).parse().ok())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let mut server = Server::new(cfg.clone(), me, start, wall_ms(), epochs);
    // Trunk host names: a resolver task when there are any.
    let named_trunks = cfg.trunks.iter().any(|t| t.host.is_some());
    let (dns_q, mut dns_a) = if named_trunks {
        let (q, a) = resolver::start(&cfg.dns).map_err(NodeError::Dns)?;
        (Some(q), Some(a))
    } else {
        (None, None)
    };
    let mut relay = crate::media::Relay::new(relay_ip).map_err(NodeError::Media)?;
    loop {
        let now = tokio::time::Instant::now();
        let deadline = server
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
            Some(q) = admin_rx.recv() => {
                let now = tokio::time::Instant::now().into_std();
                admin::answer(
                    &mut server,
                    &transport,
                    &relay,
                    admin::Outside {
                        hep: hep.as_ref().map(|h| &*h.counters),
                        forward: forwarder.as_ref().map(|f| &*f.counters),
                    },
                    reloading.path.as_deref(),
                    now,
                    q,
                );
            }
            Some(()) = async {
                match reloading.requests.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::time::Instant::now().into_std();
                let _ = reload(&mut server, reloading.path.as_deref(), now);
            }
            Some(ib) = in_rx.recv() => {
                let now = tokio::time::Instant::now().into_std();
                feed(&mut server, now, ib);
                // Drain what is already queued before sleeping again.
                for _ in 0..256 {
                    match in_rx.try_recv() {
                        Ok(ib) => feed(&mut server, now, ib),
                        Err(_) => break,
                    }
                }
            }
            Some((name, answer)) = async {
                match dns_a.as_mut() {
                    Some(a) => a.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // A TLS trunk named by a host must show a certificate for that name.
                if let Ok((targets, _)) = &answer {
                    for t in targets {
                        transport.tls_name(t.addr.ip(), &name);
                    }
                }
                server.on_dns_answer(tokio::time::Instant::now().into_std(), &name, answer);
            }
            _ = tokio::time::sleep_until(deadline) => {
                server.handle_timeout_guarded(tokio::time::Instant::now().into_std());
            }
        }
        if let Some(q) = &dns_q {
            for query in server.take_dns_queries(tokio::time::Instant::now().into_std()) {
                let _ = q.send(query);
            }
        }
        while let Some(t) = server.poll_transmit() {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let first = t.bytes.split(|&b| b == b'\r').next().unwrap_or_default();
                tracing::debug!(flow = %t.flow, line = %String::from_utf8_lossy(first), "out");
            }
            if let Some(h) = &hep {
                h.outbound(&t);
            }
            transport.send(t);
        }
        for c in server.take_media_commands() {
            apply_media(&mut relay, c);
        }
        if flush_cdrs(&mut server, &mut relay, cdr.as_ref())
            && let Some(f) = &forwarder
        {
            f.nudge();
        }
        // Let the tasks this batch woke run: the connections' writers above all. The loop runs
        // as a task on a worker, and taking queued messages (`try_recv`) spends no cooperative
        // budget, so under a steady stream it would otherwise keep the worker for thousands of
        // messages while a TCP write queue fills and the connection is dropped as stalled.
        tokio::task::yield_now().await;
    }
    tracing::info!(
        node = cfg.node.name,
        calls = server.b2bua().call_count(),
        "shutting down"
    );
    let _ = stop_admin_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    // Every call still up gets its CDR (`end_reason = shutdown`).
    server.shutdown(tokio::time::Instant::now().into_std());
    // Trunk un-REGISTERs: the loop goes on (answering their challenges) until each has its
    // final response, for at most 2 s.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        while let Some(t) = server.poll_transmit() {
            if let Some(h) = &hep {
                h.outbound(&t);
            }
            transport.send(t);
        }
        let now = tokio::time::Instant::now();
        if !server.unregistering() || now >= until {
            break;
        }
        let deadline = server
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or(until)
            .min(until);
        tokio::select! {
            Some(ib) = in_rx.recv() => {
                feed(&mut server, tokio::time::Instant::now().into_std(), ib);
            }
            _ = tokio::time::sleep_until(deadline) => {
                server.handle_timeout_guarded(tokio::time::Instant::now().into_std());
            }
        }
    }
    // What went last still has to leave the transport's queues.
    tokio::time::sleep(Duration::from_millis(20)).await;
    flush_cdrs(&mut server, &mut relay, cdr.as_ref());
    if let Some(w) = cdr {
        let n = w.close()?;
        tracing::info!(rows = n, "CDRs flushed");
    }
    if let Some(f) = forwarder {
        f.close(Duration::from_secs(2));
    }
    Ok(())
}
