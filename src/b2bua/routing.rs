//! Where a call goes: a registered or static user, else the trunk with the longest matching
//! prefix (with `strip`), else 404 (DESIGN: request-URI resolution order).

use std::time::Instant;

use super::refusal::Refusal;
use crate::config::{Config, TrunkTransport};
use crate::dialog::uri_flow;
use crate::net::Flow;
use crate::registrar::Registrar;

/// One destination of the B leg.
#[derive(Debug, Clone)]
pub struct Target {
    /// Request-URI.
    pub uri: String,
    /// To header value (without tag).
    pub to: String,
    /// Where to send.
    pub flow: Flow,
}

/// The routing decision.
#[derive(Debug, Clone)]
pub struct Route {
    /// Destinations (several: fork in parallel).
    pub targets: Vec<Target>,
    /// The trunk used, if any.
    pub trunk: Option<String>,
    /// A trunk named by a host with several targets: the next ones to try, in order, when
    /// the first times out, cannot be reached or answers 503 (RFC 3263 §4.3).
    pub alternates: Vec<Target>,
    /// That trunk's host name.
    pub host: Option<String>,
}

/// Resolve a dialled user part. `Err` says why no call can go there.
pub fn resolve(
    cfg: &Config,
    registrar: &Registrar,
    dns: &crate::dns::Dns,
    user: &str,
    now: Instant,
) -> Result<Route, Refusal> {
    let bindings = registrar.location().lookup(user, now);
    if !bindings.is_empty() {
        let to = format!("<sip:{user}@{}>", cfg.node.domain);
        let targets = bindings
            .iter()
            .filter_map(|b| {
                let uri = b.contact.uri.clone();
                // Requests go where the REGISTER came from (NAT-friendly; for peer-learned
                // bindings the peer tells us), static bindings to the contact address itself.
                let flow = match b.source {
                    Some(src) => src,
                    None => uri_flow(&uri)?,
                };
                Some(Target {
                    uri: uri.to_string(),
                    to: to.clone(),
                    flow,
                })
            })
            .collect::<Vec<_>>();
        if !targets.is_empty() {
            return Ok(Route {
                targets,
                trunk: None,
                alternates: Vec::new(),
                host: None,
            });
        }
    }
    if let Some((trunk, number)) = cfg.trunk_for_number(user) {
        let dests = match &trunk.host {
            Some(h) => dns.targets(h, now),
            None => vec![trunk.target()],
        };
        if dests.is_empty() {
            return Err(Refusal::TrunkUnresolved);
        }
        let transport = match trunk.transport {
            TrunkTransport::Tcp => ";transport=tcp",
            TrunkTransport::Tls => ";transport=tls",
            TrunkTransport::Udp => "",
        };
        // The Request-URI names the carrier by its host name when it has one.
        let host = trunk.host.clone();
        let mut targets = dests.into_iter().map(|dest| {
            let flow = match trunk.transport {
                TrunkTransport::Tcp => Flow::tcp(dest),
                TrunkTransport::Tls => Flow::tls(dest),
                TrunkTransport::Udp => Flow::udp(dest),
            };
            let hostpart = host.clone().unwrap_or_else(|| dest.to_string());
            Target {
                to: format!("<sip:{number}@{hostpart}>"),
                uri: format!("sip:{number}@{hostpart}{transport}"),
                flow,
            }
        });
        let first = targets.next().ok_or(Refusal::TrunkUnresolved)?;
        return Ok(Route {
            targets: vec![first],
            trunk: Some(trunk.name.clone()),
            alternates: targets.collect(),
            host,
        });
    }
    if registrar.is_user(user) {
        Err(Refusal::Unavailable)
    } else {
        Err(Refusal::NotFound)
    }
}
