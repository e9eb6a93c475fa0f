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
}

/// Resolve a dialled user part. `Err` says why no call can go there.
pub fn resolve(
    cfg: &Config,
    registrar: &Registrar,
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
            });
        }
    }
    if let Some((trunk, number)) = cfg.trunk_for_number(user) {
        let dest = trunk.address.target();
        let flow = match trunk.transport {
            TrunkTransport::Tcp => Flow::tcp(dest),
            TrunkTransport::Udp => Flow::udp(dest),
        };
        let transport = match trunk.transport {
            TrunkTransport::Tcp => ";transport=tcp",
            TrunkTransport::Udp => "",
        };
        let uri = format!("sip:{number}@{dest}{transport}");
        return Ok(Route {
            targets: vec![Target {
                to: format!("<sip:{number}@{dest}>"),
                uri,
                flow,
            }],
            trunk: Some(trunk.name.clone()),
        });
    }
    if registrar.is_user(user) {
        Err(Refusal::Unavailable)
    } else {
        Err(Refusal::NotFound)
    }
}
