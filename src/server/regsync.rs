//! Registration sync between the nodes with the RFC 3680 `reg` event package: the stand-by
//! subscribes at the active and keeps its bindings (origin `peer`); the active is the notifier
//! (a full `reginfo+xml` NOTIFY first, then partial ones as bindings change). The requests are
//! authenticated with the keep-alive HMAC.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::pair::{NotifierSub, PairGlue, REG_EXPIRES, Subscriber};
use crate::dialog::{Dialog, LocalContact};
use crate::pair::keepalive;
use crate::pair::regsync::{self, RegContact, RegInfo, RegRecord};
use crate::pair::{Announced, Role};
use crate::registrar::{Binding, Change, Origin, Registrar};
use crate::sip::{
    HeaderName, Method, NameAddr, Request, Response, SipMessage, new_tag, response_to,
};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};
use crate::transport::{Flow, Proto};

/// Registration subscriptions the active keeps at once (the peer needs one).
const REG_SUBSCRIBERS: usize = 4;

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
        match &mut self.subscriber {
            Subscriber::Idle { retry_at } if now >= *retry_at && peer_alive => {
                let mut r = Request::new(Method::Subscribe, format!("sip:reg@{}", self.cfg.peer));
                let h = &mut r.headers;
                h.push(HeaderName::Via, me.via(Proto::Udp));
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
                h.push(HeaderName::Contact, me.contact(Proto::Udp));
                h.push(HeaderName::Event, "reg");
                h.push(HeaderName::Accept, "application/reginfo+xml");
                h.push(HeaderName::Expires, REG_EXPIRES.to_string());
                keepalive::stamp(&mut r.headers, &self.secret, &info, b"");
                if let Ok(id) = tx.send_request(now, &r, Flow::udp(self.cfg.peer)) {
                    self.client_txs.insert(id);
                    self.subscriber = Subscriber::Subscribing {
                        tx: id,
                        request: Box::new(r),
                    };
                }
            }
            Subscriber::Active {
                dialog,
                refresh_at,
                refreshing,
            } if now >= *refresh_at && refreshing.is_none() => {
                let mut r = dialog.request(Method::Subscribe, me, None);
                r.headers.push(HeaderName::Event, "reg");
                r.headers
                    .push(HeaderName::Accept, "application/reginfo+xml");
                r.headers.push(HeaderName::Expires, REG_EXPIRES.to_string());
                keepalive::stamp(&mut r.headers, &self.secret, &info, b"");
                if let Ok(id) = tx.send_request(now, &r, dialog.next_hop()) {
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
        match &mut self.subscriber {
            Subscriber::Subscribing { tx, request } if *tx == id => {
                if let (200..=299, Some(resp)) = (status, resp)
                    && let Some(d) = Dialog::as_uac(request, resp, Flow::udp(self.cfg.peer))
                {
                    let exp = resp
                        .header_u32(&HeaderName::Expires)
                        .and_then(Result::ok)
                        .unwrap_or(REG_EXPIRES);
                    tracing::info!(peer = %self.cfg.peer, expires = exp, "pair: subscribed to the active's registrations");
                    self.subscriber = Subscriber::Active {
                        dialog: Box::new(d),
                        refresh_at: now + Duration::from_secs(u64::from(exp) * 4 / 5),
                        refreshing: None,
                    };
                } else {
                    tracing::info!(status, "pair: reg subscription refused; retrying");
                    self.subscriber = Subscriber::Idle {
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
                    self.subscriber = Subscriber::Idle {
                        retry_at: now + Duration::from_secs(1),
                    };
                }
            }
            _ => {
                // A NOTIFY we sent as notifier: 481 or no answer means the subscriber is gone.
                if let Some(call_id) = self.notify_txs.remove(&id)
                    && (status == 481 || status == 408)
                {
                    self.notifier.remove(&call_id);
                }
            }
        }
    }

    /// Whether an in-dialog request belongs to our reg subscription (a NOTIFY from the active).
    pub(crate) fn owns_in_dialog(&self, req: &Request) -> bool {
        let Ok(call_id) = req.call_id() else {
            return false;
        };
        match &self.subscriber {
            Subscriber::Active { dialog, .. } => dialog.call_id == call_id,
            Subscriber::Subscribing { request, .. } => request.call_id().ok() == Some(call_id),
            Subscriber::Idle { .. } => self.notifier.contains_key(call_id),
        }
    }

    /// A NOTIFY (or a SUBSCRIBE refresh) inside a reg subscription dialog.
    pub(crate) fn on_in_dialog(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        registrar: &mut Registrar,
        id: ServerTxId,
        req: &Request,
        me: &LocalContact,
    ) {
        if req.method == Method::Subscribe {
            self.on_subscribe(now, tx, registrar, id, req, Flow::udp(self.cfg.peer), me);
            return;
        }
        if req.method != Method::Notify {
            let _ = tx.respond(now, id, &response_to(req, 405, None));
            return;
        }
        let _ = tx.respond(now, id, &response_to(req, 200, None));
        self.stats.reg_notifies_received += 1;
        let terminated = req
            .headers
            .get(&HeaderName::SubscriptionState)
            .is_some_and(|s| s.trim_start().starts_with("terminated"));
        let body = String::from_utf8_lossy(&req.body);
        match regsync::parse(&body) {
            Ok(info) => apply_reginfo(registrar, now, &info),
            Err(e) => tracing::warn!(error = %e, "pair: bad reginfo from the peer"),
        }
        if terminated {
            self.subscriber = Subscriber::Idle {
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
        if keepalive::verify(req, &req.body, &self.secret).is_err() {
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
        if !self.notifier.contains_key(&call_id) && self.notifier.len() >= REG_SUBSCRIBERS {
            // Only the peer subscribes; a new subscription replaces its oldest one (a
            // restarted stand-by subscribes again before the old one expires).
            let oldest = self
                .notifier
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.notifier.remove(&k);
            }
        }
        if !self.notifier.contains_key(&call_id) {
            let tag = new_tag();
            let Some(mut d) = Dialog::as_uas(req, &tag, source) else {
                let _ = tx.respond(now, id, &response_to(req, 400, Some(&tag)));
                return;
            };
            d.state = crate::dialog::DialogState::Confirmed;
            self.notifier.insert(
                call_id.clone(),
                NotifierSub {
                    dialog: d,
                    expires_at: now,
                    version: 0,
                },
            );
        }
        let Some(sub) = self.notifier.get_mut(&call_id) else {
            return;
        };
        sub.expires_at = now + Duration::from_secs(u64::from(expires));
        let mut r = response_to(req, 200, Some(&sub.dialog.local_tag));
        r.headers.push(HeaderName::Expires, expires.to_string());
        r.headers.push(HeaderName::Contact, me.contact(Proto::Udp));
        let _ = tx.respond(now, id, &r);
        // RFC 6665 §4.2.1.2: a NOTIFY with the full state follows every accepted SUBSCRIBE.
        let full = full_state(registrar, now);
        self.send_notify(now, tx, me, &call_id, full, expires == 0);
        if expires == 0 {
            self.notifier.remove(&call_id);
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
        let Some(sub) = self.notifier.get_mut(call_id) else {
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
        if let Ok(id) = tx.send_request(now, &r, hop) {
            self.client_txs.insert(id);
            self.notify_txs.insert(id, call_id.to_string());
            self.stats.reg_notifies_sent += 1;
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
        self.notifier.retain(|_, s| s.expires_at > now);
        if self.machine.role() != Role::Active || changes.is_empty() || self.notifier.is_empty() {
            return;
        }
        let mut records: Vec<RegRecord> = Vec::new();
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
                    },
                ),
                Change::Bound { .. } => continue,
            };
            match records.iter_mut().find(|r| &r.aor == aor) {
                Some(r) => r.contacts.push(contact),
                None => records.push(RegRecord {
                    aor: aor.clone(),
                    contacts: vec![contact],
                }),
            }
        }
        if records.is_empty() {
            return;
        }
        let keys: Vec<String> = self.notifier.keys().cloned().collect();
        for k in keys {
            let info = RegInfo {
                version: 0,
                full: false,
                records: records.clone(),
            };
            self.send_notify(now, tx, me, &k, info, false);
        }
    }
}
fn contact_of(b: &Binding, now: Instant) -> RegContact {
    RegContact {
        uri: b.contact.uri.to_string(),
        active: true,
        expires: u32::try_from(b.remaining(now)).unwrap_or(u32::MAX),
        source: b.source.map(|f| format!("{}:{}", f.proto, f.remote)),
    }
}

fn full_state(registrar: &Registrar, now: Instant) -> RegInfo {
    let mut records: Vec<RegRecord> = registrar
        .location()
        .iter()
        .map(|(aor, list)| RegRecord {
            aor: aor.clone(),
            contacts: list
                .iter()
                .filter(|b| b.origin != Origin::Static && b.expires_at > now)
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
    })
}

/// Apply a reginfo document from the peer to our location service.
fn apply_reginfo(registrar: &mut Registrar, now: Instant, info: &RegInfo) {
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
            loc.unbind(&aor, &uri);
        }
    }
    for r in &info.records {
        for c in &r.contacts {
            if !c.active || c.expires == 0 {
                loc.unbind(&r.aor, &c.uri);
                continue;
            }
            let Ok(contact) = NameAddr::parse(&format!("<{}>", c.uri)) else {
                continue;
            };
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
