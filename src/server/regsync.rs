//! Registration sync between the nodes with the RFC 3680 `reg` event package: the stand-by
//! subscribes at the active and keeps its bindings (origin `peer`); the active is the notifier
//! (a full `reginfo+xml` state first, then partial NOTIFYs as bindings change). Both sides sign
//! and check every request (`pair::auth`), and they travel on the state channel (TCP when the
//! nodes listen on TCP). A full state of any size is split into NOTIFYs of at most
//! [`CHUNK_TCP`] (or [`CHUNK_UDP`]) bytes: the first says `full`, the rest `partial`, each with
//! the next version; a stand-by that sees a version out of order subscribes again, which
//! brings the full state.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::pair::{NotifierSub, PairGlue, REG_EXPIRES, Subscriber};
use crate::dialog::{Dialog, LocalContact};
use crate::net::{Flow, Proto};
use crate::pair::auth;
use crate::pair::regsync::{self, RegContact, RegInfo, RegRecord};
use crate::pair::{Announced, Role};
use crate::registrar::{Binding, Change, Origin, Registrar};
use crate::sip::{
    HeaderName, Method, NameAddr, Request, Response, SipMessage, new_tag, response_to,
};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};

/// Registration subscriptions the active keeps at once (the peer needs one).
const REG_SUBSCRIBERS: usize = 4;

/// Largest reginfo body in one NOTIFY on a TCP state channel (bytes).
pub(crate) const CHUNK_TCP: usize = 60_000;

/// Largest reginfo body in one NOTIFY over UDP (keeps datagrams under 1,300 bytes).
pub(crate) const CHUNK_UDP: usize = 500;

/// Split `records` into bodies of at most about `limit` bytes (a record larger than that
/// goes alone), keeping the order.
pub(super) fn chunks(records: Vec<RegRecord>, limit: usize) -> Vec<Vec<RegRecord>> {
    let mut out: Vec<Vec<RegRecord>> = Vec::new();
    let mut cur: Vec<RegRecord> = Vec::new();
    let mut size = 0;
    for r in records {
        let est = 80
            + r.aor.len()
            + r.contacts
                .iter()
                .map(|c| 160 + c.uri.len() * 2 + c.source.as_ref().map_or(0, String::len))
                .sum::<usize>();
        if !cur.is_empty() && size + est > limit {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += est;
        cur.push(r);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

impl PairGlue {
    /// Start or refresh our `reg` subscription at the active peer.
    pub(crate) fn drive_subscriber(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
    ) {
        if self.partitioned || self.machine.role() != Role::Standby {
            return;
        }
        let peer_alive = self.machine.peer_alive(now);
        let info = self.info(0, Announced::Standby);
        let flow = self.channel_flow();
        match &mut self.regs.subscriber {
            Subscriber::Idle { retry_at } if now >= *retry_at && peer_alive => {
                let mut r = Request::new(Method::Subscribe, format!("sip:reg@{}", self.cfg.peer));
                let h = &mut r.headers;
                h.push(HeaderName::Via, me.via(flow.proto));
                h.push(HeaderName::MaxForwards, "70");
                h.push(
                    HeaderName::From,
                    format!("<sip:{}@{}>;tag={}", self.node, me.udp, new_tag()),
                );
                h.push(HeaderName::To, format!("<sip:reg@{}>", self.cfg.peer));
                h.push(
                    HeaderName::CallId,
                    format!("reg-{:016x}", crate::entropy::random::<u64>()),
                );
                h.push(HeaderName::CSeq, "1 SUBSCRIBE");
                h.push(HeaderName::Contact, me.contact(flow.proto));
                h.push(HeaderName::Event, "reg");
                h.push(HeaderName::Accept, "application/reginfo+xml");
                h.push(HeaderName::Expires, REG_EXPIRES.to_string());
                self.link.stamp(&mut r.headers, &info, b"");
                self.link.sign(
                    now,
                    &mut r.headers,
                    &auth::start_of_request("SUBSCRIBE"),
                    b"",
                    flow.proto,
                );
                if let Ok(id) = tx.send_request(now, &r, flow) {
                    self.client_txs.insert(id);
                    self.regs.subscriber = Subscriber::Subscribing {
                        tx: id,
                        request: Box::new(r),
                        version: None,
                    };
                }
            }
            Subscriber::Active {
                dialog,
                refresh_at,
                refreshing,
                ..
            } if now >= *refresh_at && refreshing.is_none() => {
                let mut r = dialog.request(Method::Subscribe, me, None);
                r.headers.push(HeaderName::Event, "reg");
                r.headers
                    .push(HeaderName::Accept, "application/reginfo+xml");
                r.headers.push(HeaderName::Expires, REG_EXPIRES.to_string());
                self.link.stamp(&mut r.headers, &info, b"");
                let hop = dialog.next_hop();
                self.link.sign(
                    now,
                    &mut r.headers,
                    &auth::start_of_request("SUBSCRIBE"),
                    b"",
                    hop.proto,
                );
                if let Ok(id) = tx.send_request(now, &r, hop) {
                    self.client_txs.insert(id);
                    *refreshing = Some(id);
                }
            }
            _ => {}
        }
    }

    /// A response or timeout for one of our pair client transactions.
    pub(crate) fn on_client_result(
        &mut self,
        now: Instant,
        id: ClientTxId,
        resp: Option<&Response>,
    ) {
        let status = resp.map_or(408, |r| r.status);
        if status < 200 {
            return;
        }
        self.client_txs.remove(&id);
        let flow = self.channel_flow();
        match &mut self.regs.subscriber {
            Subscriber::Subscribing {
                tx,
                request,
                version,
            } if *tx == id => {
                if let (200..=299, Some(resp)) = (status, resp)
                    && let Some(d) = Dialog::as_uac(request, resp, flow)
                {
                    let exp = resp
                        .header_u32(&HeaderName::Expires)
                        .and_then(Result::ok)
                        .unwrap_or(REG_EXPIRES);
                    tracing::info!(peer = %self.cfg.peer, expires = exp, "pair: subscribed to the active's registrations");
                    self.regs.subscriber = Subscriber::Active {
                        dialog: Box::new(d),
                        refresh_at: now + Duration::from_secs(u64::from(exp) * 4 / 5),
                        refreshing: None,
                        version: *version,
                    };
                } else {
                    tracing::info!(status, "pair: reg subscription refused; retrying");
                    self.regs.subscriber = Subscriber::Idle {
                        retry_at: now + Duration::from_secs(1),
                    };
                }
            }
            Subscriber::Active {
                refreshing,
                refresh_at,
                ..
            } if *refreshing == Some(id) => {
                *refreshing = None;
                if (200..300).contains(&status) {
                    let exp = resp
                        .and_then(|r| r.header_u32(&HeaderName::Expires))
                        .and_then(Result::ok)
                        .unwrap_or(REG_EXPIRES);
                    *refresh_at = now + Duration::from_secs(u64::from(exp) * 4 / 5);
                } else {
                    self.regs.subscriber = Subscriber::Idle {
                        retry_at: now + Duration::from_secs(1),
                    };
                }
            }
            _ => {
                // A NOTIFY we sent as notifier: 481 or no answer means the subscriber is gone.
                if let Some(call_id) = self.regs.notify_txs.remove(&id)
                    && (status == 481 || status == 408)
                {
                    self.regs.notifier.remove(&call_id);
                }
            }
        }
    }

    /// Whether an in-dialog request belongs to our reg subscription (a NOTIFY from the active).
    pub(crate) fn owns_in_dialog(&self, req: &Request) -> bool {
        let Ok(call_id) = req.call_id() else {
            return false;
        };
        match &self.regs.subscriber {
            Subscriber::Active { dialog, .. } => *dialog.call_id == *call_id,
            Subscriber::Subscribing { request, .. } => request.call_id().ok() == Some(call_id),
            Subscriber::Idle { .. } => self.regs.notifier.contains_key(call_id),
        }
    }

    /// A NOTIFY (or a SUBSCRIBE refresh) inside a reg subscription dialog.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_in_dialog(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        registrar: &mut Registrar,
        id: ServerTxId,
        req: &Request,
        source: Flow,
        me: &LocalContact,
    ) {
        if req.method == Method::Subscribe {
            self.on_subscribe(now, tx, registrar, id, req, source, me);
            return;
        }
        if req.method != Method::Notify {
            let _ = tx.respond(now, id, &response_to(req, 405, None));
            return;
        }
        let start = auth::start_of_request("NOTIFY");
        if let Err(e) = self.check(now, source.remote, &req.headers, &start, &req.body) {
            tracing::warn!(error = e, "pair: reg NOTIFY refused");
            let mut r = response_to(req, 403, None);
            r.reason = "Peer Authentication Failed".into();
            let _ = tx.respond(now, id, &r);
            return;
        }
        let _ = tx.respond(now, id, &response_to(req, 200, None));
        self.stats.reg_notifies_received += 1;
        let terminated = req
            .headers
            .get(&HeaderName::SubscriptionState)
            .is_some_and(|s| s.trim_start().starts_with("terminated"));
        let body = String::from_utf8_lossy(&req.body);
        let info = match regsync::parse(&body) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "pair: bad reginfo from the peer; subscribing again");
                self.stats.reg_resyncs += 1;
                self.regs.subscriber = Subscriber::Idle { retry_at: now };
                return;
            }
        };
        if let Subscriber::Active { version, .. } | Subscriber::Subscribing { version, .. } =
            &mut self.regs.subscriber
        {
            let in_order =
                info.full || version.is_some_and(|v| v.checked_add(1) == Some(info.version));
            if !in_order {
                // A NOTIFY was lost or came out of order: the full state again.
                tracing::warn!(
                    got = info.version,
                    last = *version,
                    "pair: reg NOTIFY version gap; subscribing again for the full state"
                );
                self.stats.reg_resyncs += 1;
                self.regs.subscriber = Subscriber::Idle { retry_at: now };
                return;
            }
            *version = Some(info.version);
        }
        apply_reginfo(registrar, now, &info);
        if terminated {
            self.regs.subscriber = Subscriber::Idle {
                retry_at: now + Duration::from_secs(1),
            };
        }
    }

    /// A SUBSCRIBE for `Event: reg` (out of dialog or a refresh).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_subscribe(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        registrar: &mut Registrar,
        id: ServerTxId,
        req: &Request,
        source: Flow,
        me: &LocalContact,
    ) {
        let start = auth::start_of_request("SUBSCRIBE");
        let v = self.check(now, source.remote, &req.headers, &start, &req.body);
        let legacy_ok = || self.link.legacy_ok(req);
        let ok = match v {
            Ok(auth::Verified::Fresh) => true,
            Ok(auth::Verified::Legacy) => legacy_ok(),
            Err(_) => false,
        };
        if !ok {
            let mut r = response_to(req, 403, Some(&new_tag()));
            r.reason = "Peer Authentication Failed".into();
            let _ = tx.respond(now, id, &r);
            return;
        }
        if self.machine.role() != Role::Active {
            let mut r = response_to(req, 503, Some(&new_tag()));
            r.headers.push(HeaderName::RetryAfter, "1");
            let _ = tx.respond(now, id, &r);
            return;
        }
        let expires = req
            .header_u32(&HeaderName::Expires)
            .and_then(Result::ok)
            .unwrap_or(REG_EXPIRES)
            .min(3600);
        let call_id = req.call_id().unwrap_or_default().to_string();
        if !self.regs.notifier.contains_key(&call_id) && self.regs.notifier.len() >= REG_SUBSCRIBERS
        {
            // Only the peer subscribes; a new subscription replaces its oldest one (a
            // restarted stand-by subscribes again before the old one expires).
            let oldest = self
                .regs
                .notifier
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.regs.notifier.remove(&k);
            }
        }
        if !self.regs.notifier.contains_key(&call_id) {
            let tag = new_tag();
            let Some(mut d) = Dialog::as_uas(req, &tag, source) else {
                let _ = tx.respond(now, id, &response_to(req, 400, Some(&tag)));
                return;
            };
            d.state = crate::dialog::DialogState::Confirmed;
            self.regs.notifier.insert(
                call_id.clone(),
                NotifierSub {
                    dialog: d,
                    expires_at: now,
                    version: 0,
                },
            );
        }
        let Some(sub) = self.regs.notifier.get_mut(&call_id) else {
            return;
        };
        sub.expires_at = now + Duration::from_secs(u64::from(expires));
        let mut r = response_to(req, 200, Some(&sub.dialog.local_tag));
        r.headers.push(HeaderName::Expires, expires.to_string());
        r.headers
            .push(HeaderName::Contact, me.contact(source.proto));
        let _ = tx.respond(now, id, &r);
        // RFC 6665 §4.2.1.2: the full state follows every accepted SUBSCRIBE, in as many
        // NOTIFYs as its size needs.
        let full = full_state(registrar, now);
        let limit = match source.proto {
            Proto::Tcp | Proto::Tls => CHUNK_TCP,
            Proto::Udp => CHUNK_UDP,
        };
        let parts = chunks(full.records, limit);
        let n = parts.len();
        for (i, records) in parts.into_iter().enumerate() {
            let info = RegInfo {
                version: 0,
                full: i == 0,
                records,
            };
            self.send_notify(now, tx, me, &call_id, info, expires == 0 && i + 1 == n);
        }
        if expires == 0 {
            self.regs.notifier.remove(&call_id);
        }
    }

    fn send_notify(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        call_id: &str,
        mut info: RegInfo,
        terminated: bool,
    ) {
        let Some(sub) = self.regs.notifier.get_mut(call_id) else {
            return;
        };
        info.version = sub.version;
        sub.version += 1;
        let left = sub.expires_at.saturating_duration_since(now).as_secs();
        let mut r = sub.dialog.request(Method::Notify, me, None);
        r.headers.push(HeaderName::Event, "reg");
        r.headers.push(
            HeaderName::SubscriptionState,
            if terminated {
                "terminated;reason=timeout".to_string()
            } else {
                format!("active;expires={left}")
            },
        );
        r.headers
            .push(HeaderName::ContentType, "application/reginfo+xml");
        r.body = Bytes::from(regsync::to_xml(&info, &self.domain));
        let hop = sub.dialog.next_hop();
        let body = r.body.clone();
        self.link.sign(
            now,
            &mut r.headers,
            &auth::start_of_request("NOTIFY"),
            &body,
            hop.proto,
        );
        let size = r.to_bytes().len() as u64;
        if let Ok(id) = tx.send_request(now, &r, hop) {
            self.client_txs.insert(id);
            self.regs.notify_txs.insert(id, call_id.to_string());
            self.stats.reg_notifies_sent += 1;
            self.stats.reg_notify_bytes_sent += size;
        }
    }

    /// Send partial NOTIFYs for registrar changes; expire subscriptions.
    pub(crate) fn publish_changes(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        changes: &[Change],
    ) {
        self.regs.notifier.retain(|_, s| s.expires_at > now);
        if self.machine.role() != Role::Active
            || changes.is_empty()
            || self.regs.notifier.is_empty()
        {
            return;
        }
        let mut records: Vec<RegRecord> = Vec::new();
        let mut index: crate::entropy::HashMap<&str, usize> = crate::entropy::HashMap::default();
        for c in changes {
            let (aor, contact) = match c {
                Change::Bound { aor, binding } if binding.origin != Origin::Static => {
                    (aor, contact_of(binding, now))
                }
                Change::Removed { aor, contact, .. } => (
                    aor,
                    RegContact {
                        uri: contact.clone(),
                        active: false,
                        expires: 0,
                        source: None,
                        instance: None,
                    },
                ),
                Change::Bound { .. } => continue,
            };
            match index.get(aor.as_str()).and_then(|&i| records.get_mut(i)) {
                Some(r) => r.contacts.push(contact),
                None => {
                    index.insert(aor.as_str(), records.len());
                    records.push(RegRecord {
                        aor: aor.clone(),
                        contacts: vec![contact],
                    });
                }
            }
        }
        if records.is_empty() {
            return;
        }
        let keys: Vec<String> = self.regs.notifier.keys().cloned().collect();
        for k in keys {
            let limit = match self.regs.notifier.get(&k).map(|s| s.dialog.flow.proto) {
                Some(Proto::Tcp) => CHUNK_TCP,
                _ => CHUNK_UDP,
            };
            for part in chunks(records.clone(), limit) {
                let info = RegInfo {
                    version: 0,
                    full: false,
                    records: part,
                };
                self.send_notify(now, tx, me, &k, info, false);
            }
        }
    }
}
fn contact_of(b: &Binding, now: Instant) -> RegContact {
    RegContact {
        uri: b.contact.uri.to_string(),
        active: true,
        expires: u32::try_from(b.remaining(now)).unwrap_or(u32::MAX),
        source: b.source.map(|f| format!("{}:{}", f.proto, f.remote)),
        instance: b.contact.params.value("+sip.instance").map(str::to_string),
    }
}

/// Every registration of this node as reginfo bodies for a hand-off (partial state: the
/// receiver merges them into what it has).
pub(super) fn handoff_bodies(registrar: &Registrar, now: Instant, domain: &str) -> Vec<String> {
    chunks(full_state(registrar, now).records, CHUNK_TCP)
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(|records| {
            regsync::to_xml(
                &RegInfo {
                    version: 0,
                    full: false,
                    records,
                },
                domain,
            )
        })
        .collect()
}

pub(super) fn full_state(registrar: &Registrar, now: Instant) -> RegInfo {
    let mut records: Vec<RegRecord> = registrar
        .location()
        .iter()
        .map(|(aor, _)| RegRecord {
            aor: aor.clone(),
            contacts: registrar
                .location()
                .lookup(aor, now)
                .into_iter()
                .filter(|b| b.origin != Origin::Static)
                .map(|b| contact_of(b, now))
                .collect(),
        })
        .filter(|r| !r.contacts.is_empty())
        .collect();
    records.sort_by(|a, b| a.aor.cmp(&b.aor));
    RegInfo {
        version: 0,
        full: true,
        records,
    }
}

fn parse_source(s: &str) -> Option<Flow> {
    let (proto, addr) = s.split_once(':')?;
    let addr: SocketAddr = addr.parse().ok()?;
    Some(match Proto::from_token(proto)? {
        Proto::Udp => Flow::udp(addr),
        Proto::Tcp => Flow::tcp(addr),
        Proto::Tls => Flow::tls(addr),
    })
}

/// Apply a reginfo document from the peer to our location service.
pub(super) fn apply_reginfo(registrar: &mut Registrar, now: Instant, info: &RegInfo) {
    let loc = registrar.location_mut();
    if info.full {
        let peer_learned: Vec<(String, String)> = loc
            .iter()
            .flat_map(|(aor, l)| {
                l.iter()
                    .filter(|b| b.origin == Origin::Peer)
                    .map(|b| (aor.clone(), b.contact.uri.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (aor, uri) in peer_learned {
            loc.unbind_learned(&aor, &uri);
        }
    }
    for r in &info.records {
        for c in &r.contacts {
            if !c.active || c.expires == 0 {
                loc.unbind_learned(&r.aor, &c.uri);
                continue;
            }
            let Ok(mut contact) = NameAddr::parse(&format!("<{}>", c.uri)) else {
                continue;
            };
            if let Some(i) = &c.instance {
                let quoted = if i.starts_with('"') {
                    i.clone()
                } else {
                    format!("\"{i}\"")
                };
                contact.params.set("+sip.instance", Some(&quoted));
            }
            loc.bind(
                &r.aor,
                Binding {
                    contact,
                    expires_at: now + Duration::from_secs(u64::from(c.expires)),
                    source: c.source.as_deref().and_then(parse_source),
                    call_id: String::new(),
                    cseq: 0,
                    origin: Origin::Peer,
                    registered_at_s: 0,
                },
            );
        }
    }
}
