//! The location service: bindings per address-of-record with expiry driven by `now`
//! (RFC 3261 §10.3).

use crate::entropy::HashMap;
use std::time::{Duration, Instant};

use crate::net::Flow;
use crate::sip::{NameAddr, Uri};

/// Where a binding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A REGISTER received by this node.
    Local,
    /// Learned from the peer node's `reg` event notifications (RFC 3680).
    Peer,
    /// A static `[[users]] contact` from the configuration.
    Static,
}

impl Origin {
    /// Learned from the peer (the peer's view of the phone), as opposed to this node's own
    /// (a REGISTER received here, or configured).
    pub fn is_learned(self) -> bool {
        self == Self::Peer
    }
}

/// One contact bound to an AOR.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The Contact value as registered (with its parameters).
    pub contact: NameAddr,
    /// When it expires (static bindings: far future).
    pub expires_at: Instant,
    /// Where the REGISTER came from: requests to the contact go there (NAT-friendly).
    pub source: Option<Flow>,
    /// Call-ID of the registering REGISTER.
    pub call_id: String,
    /// CSeq of the registering REGISTER.
    pub cseq: u32,
    /// Origin.
    pub origin: Origin,
    /// Unix seconds of the latest registration.
    pub registered_at_s: u64,
}

impl Binding {
    /// Seconds until expiry.
    pub fn remaining(&self, now: Instant) -> u64 {
        self.expires_at.saturating_duration_since(now).as_secs()
    }

    /// The contact URI.
    pub fn uri(&self) -> &Uri {
        &self.contact.uri
    }
}

/// Whether two contact URIs name the same contact: user, host and port (parameters such as
/// `transport` or `ob` aside).
fn same_contact(a: &Uri, b: &Uri) -> bool {
    a.user == b.user && a.host.eq_ignore_ascii_case(&b.host) && a.port == b.port
}

/// The `+sip.instance` of a contact (RFC 5626 §4.1), unquoted.
fn instance_of(c: &NameAddr) -> Option<String> {
    c.params
        .value("+sip.instance")
        .map(|v| v.trim_matches('"').to_string())
}

/// What changed in the location service (for the RFC 3680 notifier).
#[derive(Debug, Clone)]
pub enum Change {
    /// A binding was created or refreshed.
    Bound {
        /// AOR user.
        aor: String,
        /// The binding.
        binding: Box<Binding>,
    },
    /// A binding was removed; `expired` tells whether by expiry or by request.
    Removed {
        /// AOR user.
        aor: String,
        /// The contact URI text.
        contact: String,
        /// Whether it expired (vs. unregistered).
        expired: bool,
    },
}

/// Bindings per AOR (keyed by user name), at most `max_per_aor` each.
#[derive(Debug)]
pub struct Location {
    aors: HashMap<String, Vec<Binding>>,
    changes: Vec<Change>,
    max_per_aor: usize,
    evicted: u64,
}

impl Default for Location {
    fn default() -> Self {
        Self::with_limit(10)
    }
}

impl Location {
    /// Empty, at most 10 bindings per AOR.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty, at most `max_per_aor` bindings per AOR (at least 1).
    pub fn with_limit(max_per_aor: usize) -> Self {
        Self {
            aors: HashMap::default(),
            changes: Vec::new(),
            max_per_aor: max_per_aor.max(1),
            evicted: 0,
        }
    }

    /// Add or refresh a binding. The same contact URI replaces the binding of the same view:
    /// this node's own (registered here, or static) and the one learned from the peer are
    /// kept side by side, since a phone registered at both nodes is reached from each over
    /// the flow it opened to that node (behind NAT, the only one its router lets in).
    /// An AOR at its limit makes room by dropping its oldest registration (static contacts
    /// stay): a phone that rebooted onto a new port must not be locked out by its own stale
    /// binding.
    pub fn bind(&mut self, aor: &str, b: Binding) {
        let list = self.aors.entry(aor.to_string()).or_default();
        let key = b.contact.uri.to_string();
        let learned = b.origin.is_learned();
        list.retain(|x| x.origin.is_learned() != learned || x.contact.uri.to_string() != key);
        while list.len() >= self.max_per_aor {
            let oldest = list
                .iter()
                .enumerate()
                .filter(|(_, x)| x.origin != Origin::Static)
                .min_by_key(|(_, x)| (x.registered_at_s, x.expires_at))
                .map(|(i, _)| i);
            let Some(i) = oldest else {
                break;
            };
            let gone = list.remove(i);
            self.evicted += 1;
            tracing::info!(aor, contact = %gone.contact.uri, "too many contacts for this AOR; the oldest is replaced");
            self.changes.push(Change::Removed {
                aor: aor.to_string(),
                contact: gone.contact.uri.to_string(),
                expired: false,
            });
        }
        self.changes.push(Change::Bound {
            aor: aor.to_string(),
            binding: Box::new(b.clone()),
        });
        list.push(b);
    }

    /// Bindings replaced because their AOR was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Remove one contact of an AOR, in both views.
    pub fn unbind(&mut self, aor: &str, contact_uri: &str) {
        self.unbind_where(aor, contact_uri, |_| true);
    }

    /// Remove the peer's view of one contact (this node's own binding of it stays).
    pub fn unbind_learned(&mut self, aor: &str, contact_uri: &str) {
        self.unbind_where(aor, contact_uri, Origin::is_learned);
    }

    fn unbind_where(&mut self, aor: &str, contact_uri: &str, view: impl Fn(Origin) -> bool) {
        if let Some(list) = self.aors.get_mut(aor) {
            let before = list.len();
            list.retain(|x| !view(x.origin) || x.contact.uri.to_string() != contact_uri);
            let still = list
                .iter()
                .any(|x| x.contact.uri.to_string() == contact_uri);
            if list.len() != before && !still {
                self.changes.push(Change::Removed {
                    aor: aor.to_string(),
                    contact: contact_uri.to_string(),
                    expired: false,
                });
            }
            if list.is_empty() {
                self.aors.remove(aor);
            }
        }
    }

    /// Remove every non-static contact of an AOR.
    pub fn unbind_all(&mut self, aor: &str) {
        let uris: Vec<String> = self
            .aors
            .get(aor)
            .map(|l| {
                l.iter()
                    .filter(|b| b.origin != Origin::Static)
                    .map(|b| b.contact.uri.to_string())
                    .collect()
            })
            .unwrap_or_default();
        for u in uris {
            self.unbind(aor, &u);
        }
    }

    /// Current bindings of an AOR (expired ones excluded), one per contact: this node's own
    /// binding of a contact before the peer's view of it.
    pub fn lookup(&self, aor: &str, now: Instant) -> Vec<&Binding> {
        let Some(list) = self.aors.get(aor) else {
            return Vec::new();
        };
        let live = |b: &&Binding| b.expires_at > now;
        list.iter()
            .filter(live)
            .filter(|b| {
                !b.origin.is_learned()
                    || !list
                        .iter()
                        .filter(live)
                        .any(|o| !o.origin.is_learned() && o.contact.uri == b.contact.uri)
            })
            .collect()
    }

    /// The flow a phone opened to this node for the contact `target` of `aor`, which the
    /// peer reached at `seen`: its own binding of that contact; else the binding of the same
    /// device (`+sip.instance`, RFC 5626) when it registered another contact here; else the
    /// one binding here from behind the same public address (a phone that rewrites its
    /// Contact to what each node saw registers a different one at each). `None` when it
    /// registered only at the peer.
    pub fn own_flow(&self, aor: &str, target: &Uri, seen: Flow, now: Instant) -> Option<Flow> {
        let list = self.aors.get(aor)?;
        let live = list.iter().filter(|b| b.expires_at > now);
        let own = || live.clone().filter(|b| b.origin == Origin::Local);
        if let Some(b) = own().find(|b| same_contact(&b.contact.uri, target)) {
            return b.source;
        }
        let instance = live
            .clone()
            .find(|b| same_contact(&b.contact.uri, target))
            .and_then(|b| instance_of(&b.contact));
        if let Some(i) = instance {
            return own()
                .find(|b| instance_of(&b.contact).as_deref() == Some(i.as_str()))
                .and_then(|b| b.source);
        }
        let mut same_place = own().filter_map(|b| b.source).filter(|f| {
            f.proto == seen.proto && f.remote.ip() == seen.remote.ip() && f.remote != seen.remote
        });
        match (same_place.next(), same_place.next()) {
            (Some(f), None) => Some(f),
            _ => None,
        }
    }

    /// Remove every contact of an AOR, static ones too.
    pub fn remove_aor(&mut self, aor: &str) {
        let uris: Vec<String> = self
            .aors
            .get(aor)
            .map(|l| l.iter().map(|b| b.contact.uri.to_string()).collect())
            .unwrap_or_default();
        for u in uris {
            self.unbind(aor, &u);
        }
    }

    /// Drop expired bindings.
    pub fn expire(&mut self, now: Instant) {
        let mut removed = Vec::new();
        for (aor, list) in &mut self.aors {
            list.retain(|b| {
                let keep = b.expires_at > now;
                if !keep {
                    removed.push(Change::Removed {
                        aor: aor.clone(),
                        contact: b.contact.uri.to_string(),
                        expired: true,
                    });
                }
                keep
            });
        }
        self.aors.retain(|_, l| !l.is_empty());
        self.changes.extend(removed);
    }

    /// The earliest expiry among bindings.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.aors
            .values()
            .flat_map(|l| l.iter().map(|b| b.expires_at))
            .min()
    }

    /// All AORs and their bindings.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<Binding>)> {
        self.aors.iter()
    }

    /// Number of bindings, a contact known in both views (ours and the peer's) counted once.
    pub fn binding_count(&self) -> usize {
        self.aors
            .values()
            .map(|l| {
                l.iter()
                    .enumerate()
                    .filter(|(i, b)| !l.iter().take(*i).any(|o| o.contact.uri == b.contact.uri))
                    .count()
            })
            .sum()
    }

    /// Take the changes recorded since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// A binding that never expires in practice (static config).
    pub fn far_future(now: Instant) -> Instant {
        now + Duration::from_secs(100 * 365 * 24 * 3600)
    }
}
