//! Where a trunk named by a host name is (RFC 3263 §4, RFC 2782): sans-IO. The node's
//! resolver task answers the [`DnsQuery`]s this cache asks for (SRV `_sip._udp.<name>` or
//! `_sip._tcp.<name>` when the trunk's address has no port, else the name's A/AAAA records
//! with that port; no NAPTR); answers are kept for their TTL (at least 5 s, at most an
//! hour) and asked again before they run out. Requests to the trunk go to the targets in
//! priority order, by weight within a priority (RFC 2782's weighted random order); a target
//! that failed (timeout, transport error, 503) goes last for 30 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::{Config, TrunkConfig, TrunkTransport};
use crate::entropy::HashMap;

/// Shortest and longest time an answer is kept.
const TTL_MIN: Duration = Duration::from_secs(5);
const TTL_MAX: Duration = Duration::from_secs(3600);
/// How long a failed target goes last.
const QUARANTINE: Duration = Duration::from_secs(30);
/// Retry after a failed lookup.
const RETRY: Duration = Duration::from_secs(5);

/// One question for the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// The trunk's host name (the cache key).
    pub name: String,
    /// The SRV name to look up (`_sip._udp.<name>`), when the address has no port.
    pub srv: Option<String>,
    /// The port for A/AAAA answers (given, or 5060 when SRV has no answer).
    pub port: u16,
}

/// One place to send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsTarget {
    /// SRV priority (lower first; 0 for A/AAAA answers).
    pub priority: u16,
    /// SRV weight.
    pub weight: u16,
    /// Address and port.
    pub addr: SocketAddr,
}

#[derive(Debug)]
struct Entry {
    query: DnsQuery,
    targets: Vec<DnsTarget>,
    /// When to ask again.
    due: Instant,
    asked: bool,
    error: Option<String>,
    failed: HashMap<SocketAddr, Instant>,
}

/// The answers for every trunk named by a host.
#[derive(Debug, Default)]
pub struct Dns {
    entries: HashMap<String, Entry>,
}

impl Dns {
    /// A cache for the named trunks of `cfg`, every name due now.
    pub fn new(cfg: &Config, now: Instant) -> Self {
        let mut entries = HashMap::default();
        for t in &cfg.trunks {
            let Some(name) = &t.host else {
                continue;
            };
            let srv = t.address.port.is_none().then(|| match t.transport {
                TrunkTransport::Udp => format!("_sip._udp.{name}"),
                TrunkTransport::Tcp => format!("_sip._tcp.{name}"),
                TrunkTransport::Tls => format!("_sips._tcp.{name}"),
            });
            let query = DnsQuery {
                name: name.clone(),
                srv,
                port: t.address.port.unwrap_or(match t.transport {
                    TrunkTransport::Tls => 5061,
                    _ => crate::config::DEFAULT_SIP_PORT,
                }),
            };
            entries.entry(name.clone()).or_insert_with(|| Entry {
                query,
                targets: Vec::new(),
                due: now,
                asked: false,
                error: None,
                failed: HashMap::default(),
            });
        }
        Self { entries }
    }

    /// The questions due at `now` (each once until its answer comes).
    pub fn poll_queries(&mut self, now: Instant) -> Vec<DnsQuery> {
        self.entries
            .values_mut()
            .filter(|e| !e.asked && now >= e.due)
            .map(|e| {
                e.asked = true;
                e.query.clone()
            })
            .collect()
    }

    /// The resolver's answer for `name`: targets and how long they hold, or why none.
    pub fn on_answer(
        &mut self,
        now: Instant,
        name: &str,
        answer: Result<(Vec<DnsTarget>, Duration), String>,
    ) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        e.asked = false;
        match answer {
            Ok((targets, ttl)) if !targets.is_empty() => {
                let ttl = ttl.clamp(TTL_MIN, TTL_MAX);
                // Ask again a little before the answer runs out.
                e.due = now + ttl - ttl / 10;
                if e.targets != targets {
                    tracing::info!(name, targets = ?targets, "trunk host resolved");
                }
                e.targets = targets;
                e.error = None;
            }
            Ok(_) => {
                e.due = now + RETRY;
                e.error = Some("no address".into());
                tracing::warn!(name, "trunk host has no address; keeping the last answer");
            }
            Err(why) => {
                e.due = now + RETRY;
                tracing::warn!(
                    name,
                    error = why,
                    "trunk host lookup failed; keeping the last answer"
                );
                e.error = Some(why);
            }
        }
    }

    /// Where requests for `name` go, in order: working targets by priority (weighted random
    /// order within one), then the ones that failed in the last 30 s.
    pub fn targets(&self, name: &str, now: Instant) -> Vec<SocketAddr> {
        let Some(e) = self.entries.get(name) else {
            return Vec::new();
        };
        let mut by_priority: Vec<DnsTarget> = e.targets.clone();
        by_priority.sort_by_key(|t| t.priority);
        let mut ordered = Vec::with_capacity(by_priority.len());
        let mut rest = by_priority.as_slice();
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .take_while(|t| t.priority == first.priority)
                .count();
            let (same, tail) = rest.split_at(n);
            ordered.extend(weighted_order(same));
            rest = tail;
        }
        let failed = |a: &SocketAddr| e.failed.get(a).is_some_and(|t| now < *t + QUARANTINE);
        let (bad, good): (Vec<SocketAddr>, Vec<SocketAddr>) = ordered.into_iter().partition(failed);
        good.into_iter().chain(bad).collect()
    }

    /// A request to `addr` of `name` failed: it goes last for a while.
    pub fn mark_failed(&mut self, name: &str, addr: SocketAddr, now: Instant) {
        if let Some(e) = self.entries.get_mut(name) {
            tracing::warn!(name, %addr, "trunk target failed; trying it last for 30 s");
            e.failed.insert(addr, now);
        }
    }

    /// The named trunk `src` belongs to (its address is one of the trunk's targets; with a
    /// configured port, the port must match too).
    pub fn trunk_for_source<'c>(
        &self,
        cfg: &'c Config,
        src: SocketAddr,
    ) -> Option<&'c TrunkConfig> {
        cfg.trunks.iter().find(|t| {
            t.host.as_ref().is_some_and(|h| {
                self.entries.get(h).is_some_and(|e| {
                    e.targets.iter().any(|d| {
                        d.addr.ip().to_canonical() == src.ip().to_canonical()
                            && t.address.port.is_none_or(|p| p == src.port())
                    })
                })
            })
        })
    }

    /// When a question is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.asked)
            .map(|e| e.due)
            .min()
    }

    /// For `/trunks`: what `name` resolved to.
    pub fn view(&self, name: &str) -> Value {
        match self.entries.get(name) {
            Some(e) => json!({
                "targets": e.targets.iter().map(|t| json!({
                    "priority": t.priority, "weight": t.weight, "address": t.addr.to_string(),
                })).collect::<Vec<_>>(),
                "error": e.error,
            }),
            None => Value::Null,
        }
    }
}

/// RFC 2782's order within one priority: repeatedly pick a target with probability
/// proportional to its weight (weight 0 has a small chance, ordered first as the RFC says).
fn weighted_order(same: &[DnsTarget]) -> Vec<SocketAddr> {
    let mut left: Vec<DnsTarget> = same.to_vec();
    left.sort_by_key(|t| t.weight);
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|t| u64::from(t.weight)).sum();
        let pick = if total == 0 {
            0
        } else {
            crate::entropy::random::<u64>() % (total + 1)
        };
        let mut acc = 0u64;
        let mut index = 0;
        for (i, t) in left.iter().enumerate() {
            acc += u64::from(t.weight);
            if acc >= pick {
                index = i;
                break;
            }
        }
        out.push(left.remove(index).addr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(priority: u16, weight: u16, addr: &str) -> DnsTarget {
        DnsTarget {
            priority,
            weight,
            addr: addr.parse().unwrap(),
        }
    }

    fn cache(name: &str, due: Instant) -> Dns {
        let mut d = Dns::default();
        d.entries.insert(
            name.into(),
            Entry {
                query: DnsQuery {
                    name: name.into(),
                    srv: Some(format!("_sip._udp.{name}")),
                    port: 5060,
                },
                targets: Vec::new(),
                due,
                asked: false,
                error: None,
                failed: HashMap::default(),
            },
        );
        d
    }

    #[test]
    fn priorities_first_failed_targets_last_and_answers_expire() {
        let t0 = Instant::now();
        let mut d = cache("carrier.test", t0);
        let q = d.poll_queries(t0);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].srv.as_deref(), Some("_sip._udp.carrier.test"));
        assert!(d.poll_queries(t0).is_empty(), "asked once until answered");
        let a = "192.0.2.1:5060".parse().unwrap();
        let b = "192.0.2.2:5060".parse().unwrap();
        d.on_answer(
            t0,
            "carrier.test",
            Ok((
                vec![
                    target(20, 1, "192.0.2.2:5060"),
                    target(10, 1, "192.0.2.1:5060"),
                ],
                Duration::from_secs(60),
            )),
        );
        assert_eq!(d.targets("carrier.test", t0), vec![a, b]);
        d.mark_failed("carrier.test", a, t0);
        assert_eq!(d.targets("carrier.test", t0), vec![b, a]);
        assert_eq!(d.targets("carrier.test", t0 + QUARANTINE), vec![a, b]);
        // Asked again before the 60 s run out; a failed lookup keeps the last answer.
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(54)));
        assert_eq!(d.poll_queries(t0 + Duration::from_secs(54)).len(), 1);
        d.on_answer(t0, "carrier.test", Err("SERVFAIL".into()));
        assert_eq!(d.targets("carrier.test", t0 + QUARANTINE), vec![a, b]);
    }

    #[test]
    fn weights_order_targets_of_one_priority() {
        let same = [
            target(10, 0, "192.0.2.1:5060"),
            target(10, 100, "192.0.2.2:5060"),
        ];
        let heavy: SocketAddr = "192.0.2.2:5060".parse().unwrap();
        let first_heavy = (0..200)
            .filter(|_| weighted_order(&same).first() == Some(&heavy))
            .count();
        assert!(first_heavy > 150, "{first_heavy} of 200");
        assert_eq!(weighted_order(&same).len(), 2);
    }
}
