//! The node's DNS resolver (hickory): answers the server's [`DnsQuery`]s off the event loop.
//! SRV first when asked (`_sip._udp.<name>`), each SRV target's A/AAAA records, else the
//! name's own A/AAAA records with the query's port. Servers from `[dns] servers`, else the
//! system's configuration.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use tokio::sync::mpsc;

use crate::config::DnsConfig;
use crate::dns::{DnsQuery, DnsTarget};

/// An answer for the event loop: the name, and its targets with how long they hold.
pub(super) type Answer = (String, Result<(Vec<DnsTarget>, Duration), String>);

/// Start the resolver task: questions in, answers out.
pub(super) fn start(
    cfg: &DnsConfig,
) -> Result<(mpsc::UnboundedSender<DnsQuery>, mpsc::Receiver<Answer>), String> {
    let resolver = build(cfg)?;
    let (q_tx, mut q_rx) = mpsc::unbounded_channel::<DnsQuery>();
    let (a_tx, a_rx) = mpsc::channel::<Answer>(256);
    tokio::spawn(async move {
        while let Some(q) = q_rx.recv().await {
            let resolver = resolver.clone();
            let a_tx = a_tx.clone();
            tokio::spawn(async move {
                let answer = lookup(&resolver, &q).await;
                let _ = a_tx.send((q.name, answer)).await;
            });
        }
    });
    Ok((q_tx, a_rx))
}

fn build(cfg: &DnsConfig) -> Result<TokioResolver, String> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    let builder = if cfg.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for s in &cfg.servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[s.ip()],
                s.port(),
                true,
            ));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), group),
            TokioConnectionProvider::default(),
        )
    };
    Ok(builder.with_options(opts).build())
}

fn ttl_of(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<(Vec<SocketAddr>, Duration), String> {
    let ips = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let ttl = ttl_of(ips.valid_until());
    Ok((
        ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
        ttl,
    ))
}

async fn lookup(
    resolver: &TokioResolver,
    q: &DnsQuery,
) -> Result<(Vec<DnsTarget>, Duration), String> {
    if let Some(srv) = &q.srv
        && let Ok(records) = resolver.srv_lookup(srv.as_str()).await
    {
        let mut ttl = ttl_of(records.as_lookup().valid_until());
        let mut out = Vec::new();
        for r in records.iter() {
            let target = r.target().to_utf8();
            let target = target.trim_end_matches('.');
            match addresses(resolver, target, r.port()).await {
                Ok((addrs, t)) => {
                    ttl = ttl.min(t);
                    out.extend(addrs.into_iter().map(|addr| DnsTarget {
                        priority: r.priority(),
                        weight: r.weight(),
                        addr,
                    }));
                }
                Err(e) => tracing::warn!(srv, target, error = e, "SRV target has no address"),
            }
        }
        if !out.is_empty() {
            return Ok((out, ttl));
        }
    }
    // No SRV (or asked with a port): the name's own addresses.
    let (addrs, ttl) = addresses(resolver, &q.name, q.port).await?;
    Ok((
        addrs
            .into_iter()
            .map(|addr| DnsTarget {
                priority: 0,
                weight: 0,
                addr,
            })
            .collect(),
        ttl,
    ))
}
