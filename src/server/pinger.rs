//! Endpoint keep-alives (`pair.ping_endpoints`, DESIGN "Endpoint keep-alives"): while active,
//! the node OPTIONS-pings every registered contact every 30 s; a contact that has not
//! answered the last two pings is marked unreachable in `/registrations` and counted in
//! `/status` and `/metrics`. Stateless: answers are matched by Call-ID.

use crate::entropy::HashMap;
use std::time::{Duration, Instant};

use crate::dialog::{LocalContact, uri_flow};
use crate::net::Flow;
use crate::registrar::{Origin, Registrar};
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, new_branch, new_tag};
use crate::transaction::TransactionLayer;

/// How often every contact is pinged.
const INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    /// Pings sent since the last answer.
    unanswered: u32,
}

/// The endpoint pinger.
#[derive(Debug)]
pub(crate) struct Pinger {
    call_id: String,
    next: Instant,
    health: HashMap<String, Health>,
    /// Contacts of the last round, by CSeq − 1.
    round: Vec<String>,
}

impl Pinger {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            call_id: format!("ep-{:016x}", crate::entropy::random::<u64>()),
            next: now + INTERVAL,
            health: HashMap::default(),
            round: Vec::new(),
        }
    }

    /// When the next round is due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// Send a round of pings when due.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        registrar: &Registrar,
        me: &LocalContact,
    ) {
        if now < self.next {
            return;
        }
        self.next = now + INTERVAL;
        let mut seen = Vec::new();
        for (_, list) in registrar.location().iter() {
            for b in list
                .iter()
                .filter(|b| b.origin != Origin::Static && b.expires_at > now)
            {
                let Some(flow) = b.source.or_else(|| uri_flow(&b.contact.uri)) else {
                    continue;
                };
                let uri = b.contact.uri.to_string();
                // The CSeq carries the contact's index in this round for matching the answer.
                let seq = u32::try_from(seen.len() + 1).unwrap_or(u32::MAX);
                let r = options_to(&uri, flow, me, &self.call_id, seq);
                tx.send_stateless(flow, r.to_bytes());
                self.health.entry(uri.clone()).or_default().unanswered += 1;
                seen.push(uri);
            }
        }
        let current: crate::entropy::HashSet<&String> = seen.iter().collect();
        self.health.retain(|u, _| current.contains(u));
        self.round = seen;
    }

    /// An answer to one of our pings (any status means the contact is there).
    pub(crate) fn on_response(&mut self, resp: &Response) -> bool {
        if resp.call_id().ok() != Some(self.call_id.as_str()) {
            return false;
        }
        if let Ok(c) = resp.cseq()
            && let Some(uri) = self.round.get((c.seq as usize).wrapping_sub(1))
            && let Some(h) = self.health.get_mut(uri)
        {
            h.unanswered = 0;
        }
        true
    }

    /// Whether a contact missed the last two pings.
    pub(crate) fn unreachable(&self, contact: &str) -> bool {
        self.health.get(contact).is_some_and(|h| h.unanswered >= 3)
    }

    /// How many contacts are unreachable.
    pub(crate) fn unreachable_count(&self) -> usize {
        self.health.values().filter(|h| h.unanswered >= 3).count()
    }
}

/// An out-of-dialog OPTIONS to `uri` over `flow` (answers are matched by `call_id`).
fn options_to(uri: &str, flow: Flow, me: &LocalContact, call_id: &str, seq: u32) -> Request {
    let mut r = Request::new(Method::Options, uri.to_string());
    r.headers.push(
        HeaderName::Via,
        format!(
            "SIP/2.0/{} {};branch={};rport",
            flow.proto.via_token(),
            me.hostport(flow.proto),
            new_branch()
        ),
    );
    r.headers.push(HeaderName::MaxForwards, "70");
    r.headers.push(
        HeaderName::From,
        format!("<sip:ping@{}>;tag={}", me.hostport(flow.proto), new_tag()),
    );
    r.headers.push(HeaderName::To, format!("<{uri}>"));
    r.headers.push(HeaderName::CallId, call_id.to_string());
    r.headers.push(HeaderName::CSeq, format!("{seq} OPTIONS"));
    r
}

/// Keep-alives to phones behind NAT over the flow each opened to this node
/// (`registrar.nat_keepalive_s`), active or stand-by: a router forgets an idle UDP flow after
/// tens of seconds, and the stand-by's flow carries nothing else until a takeover, when it is
/// the only way in. Only bindings registered here whose source is not their Contact (behind
/// NAT) are pinged; TCP flows stay open by themselves (the phone's CRLF pings). The pings are
/// spread over the interval — each binding has its second of it, by a hash of its contact —
/// so a hundred thousand phones do not get theirs in one burst.
#[derive(Debug)]
pub(crate) struct NatKeepalive {
    interval_s: u32,
    /// Seconds ticked so far (the slot of this second is `seconds % interval_s`).
    seconds: u64,
    next: Instant,
    call_id: String,
    pub(crate) sent: u64,
}

/// FNV-1a over the contact's user, host and port: a fixed spread of contacts over the
/// seconds of the interval, without building the URI text.
fn slot_of(uri: &crate::sip::Uri, slots: u32) -> u64 {
    let port = uri.port.unwrap_or(0).to_be_bytes();
    let bytes = uri
        .user
        .iter()
        .flat_map(|u| u.bytes())
        .chain(uri.host.bytes())
        .chain(port);
    let h = bytes.fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    u64::from(h % slots.max(1))
}

impl NatKeepalive {
    /// Every `interval_s` seconds; `None` when 0 (off).
    pub(crate) fn new(now: Instant, interval_s: u32) -> Option<Self> {
        (interval_s > 0).then(|| Self {
            interval_s,
            seconds: 0,
            next: now + Duration::from_secs(1),
            call_id: format!("nat-{:016x}", crate::entropy::random::<u64>()),
            sent: 0,
        })
    }

    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// Once a second: ping the NATed flows whose slot this second is.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        registrar: &Registrar,
        me: &LocalContact,
    ) {
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_secs(1);
        let slot = self.seconds % u64::from(self.interval_s);
        self.seconds += 1;
        for (_, list) in registrar.location().iter() {
            for b in list
                .iter()
                .filter(|b| b.origin == Origin::Local && b.expires_at > now)
            {
                let Some(flow) = b.source.filter(|f| !f.proto.is_reliable()) else {
                    continue;
                };
                if !crate::dialog::behind_nat(crate::dialog::uri_addr(&b.contact.uri), flow)
                    || slot_of(&b.contact.uri, self.interval_s) != slot
                {
                    continue;
                }
                let uri = b.contact.uri.to_string();
                self.sent += 1;
                let seq = u32::try_from(self.sent % u64::from(u32::MAX)).unwrap_or(1);
                let r = options_to(&uri, flow, me, &self.call_id, seq);
                tx.send_stateless(flow, r.to_bytes());
            }
        }
    }

    /// An answer to one of our keep-alives (nothing to do but absorb it).
    pub(crate) fn on_response(&self, resp: &Response) -> bool {
        resp.call_id().ok() == Some(self.call_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Flow;
    use crate::registrar::{Binding, Settings};
    use crate::sip::{NameAddr, parse_datagram, response_to};
    use crate::transaction::Timers;

    fn test_registrar() -> Registrar {
        Registrar::new(
            Settings {
                realm: "pbx.local".into(),
                min_expires: 60,
                max_expires: 3600,
                default_expires: 3600,
                nonce_secret: b"k".to_vec(),
                nonce_lifetime_s: 300,
                max_auth_failures: 3,
                algorithms: vec![],
                max_contacts_per_aor: 10,
            },
            [("alice", "pw")],
        )
    }

    #[test]
    fn nat_keepalives_reach_every_natted_flow_once_per_interval_spread_over_it() {
        let t0 = Instant::now();
        let mut reg = test_registrar();
        // 1,000 phones behind NAT (Contact private, source public) and one that is not.
        for i in 0..1_000u32 {
            let aor = format!("p{i}");
            reg.location_mut().bind(
                &aor,
                Binding {
                    contact: NameAddr::parse(&format!("<sip:{aor}@10.0.0.2:{}>", 5060 + i))
                        .unwrap(),
                    expires_at: t0 + Duration::from_secs(3600),
                    source: Some(Flow::udp(
                        format!("203.0.113.2:{}", 20_000 + i).parse().unwrap(),
                    )),
                    call_id: String::new(),
                    cseq: 1,
                    origin: Origin::Local,
                    registered_at_s: 0,
                },
            );
        }
        reg.location_mut().bind(
            "alice",
            Binding {
                contact: NameAddr::parse("<sip:alice@192.0.2.7:5060>").unwrap(),
                expires_at: t0 + Duration::from_secs(3600),
                source: Some(Flow::udp("192.0.2.7:5060".parse().unwrap())),
                call_id: String::new(),
                cseq: 1,
                origin: Origin::Local,
                registered_at_s: 0,
            },
        );
        let me = LocalContact {
            udp: "192.0.2.1:5060".into(),
            tcp: "192.0.2.1:5060".into(),
            tls: String::new(),
        };
        let mut tx = TransactionLayer::new(Timers::default(), true);
        let mut k = NatKeepalive::new(t0, 10).unwrap();
        let mut per_second = Vec::new();
        let mut to: std::collections::HashMap<std::net::SocketAddr, u32> = Default::default();
        for s in 1..=10u64 {
            let before = k.sent;
            k.tick(t0 + Duration::from_secs(s), &mut tx, &reg, &me);
            per_second.push(k.sent - before);
            while let Some(t) = tx.poll_transmit() {
                *to.entry(t.flow.remote).or_default() += 1;
            }
        }
        assert_eq!(
            k.sent, 1_000,
            "every NATed flow once, the direct phone never"
        );
        assert!(to.values().all(|n| *n == 1) && to.len() == 1_000);
        assert!(
            per_second.iter().all(|n| *n < 200),
            "spread over the interval: {per_second:?}"
        );
    }

    #[test]
    fn silent_contacts_become_unreachable_and_answers_clear_it() {
        let t0 = Instant::now();
        let mut reg = test_registrar();
        let src = Flow::udp("127.0.0.1:5090".parse().unwrap());
        reg.location_mut().bind(
            "alice",
            Binding {
                contact: NameAddr::parse("<sip:alice@127.0.0.1:5090>").unwrap(),
                expires_at: t0 + Duration::from_secs(3600),
                source: Some(src),
                call_id: String::new(),
                cseq: 1,
                origin: Origin::Local,
                registered_at_s: 0,
            },
        );
        let me = LocalContact {
            udp: "127.0.0.1:5060".into(),
            tcp: "127.0.0.1:5060".into(),
            tls: String::new(),
        };
        let mut tx = TransactionLayer::new(Timers::default(), true);
        let mut p = Pinger::new(t0);
        let uri = "sip:alice@127.0.0.1:5090";
        let mut last = None;
        for round in 1..=3u64 {
            p.tick(t0 + INTERVAL * round as u32, &mut tx, &reg, &me);
            let t = tx.poll_transmit().expect("a ping");
            assert_eq!(t.flow, src, "pings go where the REGISTER came from");
            last = Some(t);
        }
        assert!(p.unreachable(uri), "two silent rounds (and one pending)");
        assert_eq!(p.unreachable_count(), 1);
        let ping = parse_datagram(&last.unwrap().bytes).unwrap();
        let crate::sip::Message::Request(req) = ping.message else {
            panic!("request")
        };
        assert!(p.on_response(&response_to(&req, 200, Some("x"))));
        assert!(!p.unreachable(uri));
        // Not ours: ignored.
        let mut other = response_to(&req, 200, Some("x"));
        other.headers.set(HeaderName::CallId, "else");
        assert!(!p.on_response(&other));
    }
}
