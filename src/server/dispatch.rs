//! Where every message goes: validation of what arrived, the transaction layer's events,
//! and the requests that start something (REGISTER, OPTIONS, INVITE, SUBSCRIBE, CANCEL) or
//! belong to a dialog, with the UAS-core checks of RFC 3261 §8.2 first.

use std::time::Instant;

use super::pair::PairGlue;
use super::{Server, routable, uas};
use crate::net::{Flow, Inbound};
use crate::pair::keepalive;
use crate::registrar::AuthOutcome;
use crate::sip::{
    HeaderName, Message, Method, Request, SipMessage, new_tag, response_to, salvage_request,
    validate,
};
use crate::transaction::{ServerTxId, TxEvent};

impl Server {
    /// Something arrived from the network.
    pub fn handle_inbound(&mut self, now: Instant, inbound: Inbound) {
        if let Inbound::Message(_, flow)
        | Inbound::Malformed { flow, .. }
        | Inbound::Unreachable(flow) = &inbound
            && self.cut_off(flow)
        {
            return;
        }
        match inbound {
            Inbound::Unreachable(flow) => {
                // Debug only: a peer that closed its connection makes one per message.
                tracing::debug!(%flow, "destination unreachable");
                self.tx.transport_error(flow);
            }
            Inbound::Message(parsed, flow) => {
                if let Err(rej) = validate(&parsed) {
                    match parsed.message {
                        Message::Request(req) if req.method != Method::Ack && routable(&req) => {
                            tracing::debug!(%flow, status = rej.status, reason = rej.reason, "invalid request");
                            let mut r = response_to(&req, rej.status, Some(&new_tag()));
                            r.reason = rej.reason;
                            if rej.status == 501 {
                                r.headers.push(HeaderName::Allow, crate::b2bua::ALLOW);
                            }
                            self.counters.malformed_answered += 1;
                            self.tx.send_stateless(flow, r.to_bytes());
                        }
                        _ => {
                            tracing::debug!(%flow, reason = rej.reason, "invalid message dropped");
                            self.counters.malformed_dropped += 1;
                        }
                    }
                    return;
                }
                match parsed.message {
                    Message::Request(req) => {
                        tracing::debug!(%flow, method = %req.method, uri = req.uri, call_id = req.call_id().unwrap_or(""), "request in");
                        match self.counters.requests.get_mut(req.method.as_str()) {
                            Some(n) => *n += 1,
                            None => {
                                self.counters
                                    .requests
                                    .insert(req.method.as_str().to_string(), 1);
                            }
                        }
                        self.tx.handle_request(now, req, flow);
                    }
                    Message::Response(resp) => {
                        tracing::debug!(%flow, status = resp.status, call_id = resp.call_id().unwrap_or(""), "response in");
                        let class = usize::from(resp.status / 100).min(6);
                        if let Some(n) = self.counters.responses.get_mut(class) {
                            *n += 1;
                        }
                        self.tx.handle_response(now, resp, flow);
                    }
                }
            }
            Inbound::Malformed { raw, error, flow } => match salvage_request(&raw) {
                Some(s) if s.method != "ACK" => {
                    tracing::debug!(%flow, error, "malformed request answered 400");
                    let mut r = crate::sip::Response::new(400);
                    r.reason = format!(
                        "Bad Request ({})",
                        error.chars().take(80).collect::<String>()
                    );
                    for h in s.headers.iter() {
                        r.headers.push(h.name.clone(), h.value.clone());
                    }
                    self.counters.malformed_answered += 1;
                    self.tx.send_stateless(flow, r.to_bytes());
                }
                _ => {
                    tracing::debug!(%flow, error, "malformed message dropped");
                    self.counters.malformed_dropped += 1;
                }
            },
        }
        self.drain_events(now);
        self.take_handoff(now);
        self.drive_takeover(now);
        self.pump_digest(now);
    }

    pub(super) fn drain_events(&mut self, now: Instant) {
        while let Some(ev) = self.tx.poll_event() {
            match ev {
                TxEvent::Request {
                    id,
                    request,
                    source,
                } => self.on_request(now, id, request, source),
                TxEvent::Ack { request, .. } => {
                    let (mut env, b) = self.env_parts(now);
                    b.on_ack(&mut env, &request);
                }
                TxEvent::Response { id, response } => {
                    if !self.pair_result(now, id, Some(&response)) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_response(&mut env, id, response);
                    }
                }
                TxEvent::Timeout { id } => {
                    if !self.pair_result(now, id, None) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_timeout(&mut env, id);
                    }
                }
                TxEvent::Unreachable { id } => {
                    if !self.pair_result(now, id, None) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_unreachable(&mut env, id);
                    }
                }
                TxEvent::NoAck { id } => {
                    let (mut env, b) = self.env_parts(now);
                    b.on_no_ack(&mut env, id);
                }
                TxEvent::StrayResponse { response, source } => {
                    let ours =
                        self.pinger
                            .as_mut()
                            .is_some_and(|p| p.on_response(&response))
                            || self
                                .nat_keepalive
                                .as_ref()
                                .is_some_and(|k| k.on_response(&response))
                            || self.pair.as_mut().is_some_and(|p| {
                                p.on_stray_response(now, &response, source.remote)
                            });
                    if !ours {
                        tracing::trace!(%source, status = response.status, "stray response");
                    }
                }
            }
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
        for (host, addr) in self.b2bua.take_dns_failures() {
            self.dns.mark_failed(&host, addr, now);
        }
        let changes = self.registrar.location_mut().take_changes();
        if let Some(p) = self.pair.as_mut() {
            p.publish_changes(now, &mut self.tx, &self.me, &changes);
        }
    }

    /// A result (response, or `None` for a timeout or an unreachable destination) for a client
    /// transaction of the takeover, of the pair link or of a dialog subscription; `false` when
    /// it belongs to a call.
    pub(super) fn pair_result(
        &mut self,
        now: Instant,
        id: crate::transaction::ClientTxId,
        resp: Option<&crate::sip::Response>,
    ) -> bool {
        if let Some(t) = self.takeover.as_mut()
            && t.owns_tx(id)
        {
            t.on_result(id, resp);
            return true;
        }
        if self.trunk_regs.owns(id) {
            self.trunk_regs
                .on_result(now, &mut self.tx, &self.me, &self.dns, id, resp);
            return true;
        }
        if let Some(p) = self.pair.as_mut()
            && p.client_txs.contains(&id)
        {
            p.on_client_result(now, id, resp);
            return true;
        }
        self.blf.on_result(id, resp)
    }

    fn blf_subscribe(&mut self, now: Instant, id: ServerTxId, req: &Request, source: Flow) {
        let domain = self.cfg.node.domain.clone();
        self.blf.on_subscribe(
            now,
            &mut self.tx,
            &self.b2bua,
            &self.me,
            &domain,
            id,
            req,
            source,
        );
    }

    pub(super) fn reply(&mut self, now: Instant, id: ServerTxId, req: &Request, status: u16) {
        let r = response_to(req, status, Some(&new_tag()));
        let _ = self.tx.respond(now, id, &r);
    }

    pub(super) fn on_request(&mut self, now: Instant, id: ServerTxId, req: Request, source: Flow) {
        if let Err(refusal) = uas::check(&req, &self.me_hostports) {
            let mut r = response_to(&req, refusal.status, Some(&new_tag()));
            for (n, v) in refusal.headers {
                r.headers.push(n, v);
            }
            let _ = self.tx.respond(now, id, &r);
            return;
        }
        if req.method == Method::Cancel {
            let target = self.tx.cancel_target(&req);
            match target {
                Some(invite) => {
                    self.reply(now, id, &req, 200);
                    if self.tx.is_pending(invite) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_cancel(&mut env, invite);
                    }
                }
                None => self.reply(now, id, &req, 481),
            }
            return;
        }
        if req.to_tag().is_some() {
            if self.blf.owns(&req) {
                self.blf_subscribe(now, id, &req, source);
                return;
            }
            if let Some(t) = self.takeover.as_mut()
                && t.owns_notify(&req)
            {
                let steps = t.on_notify(now, &mut self.tx, id, &req);
                self.apply_takeover(now, steps);
                return;
            }
            if req.method == Method::Bye
                && let Some(t) = self.takeover.as_mut()
                && let Some((call, side)) = t.claim_waiting(&req)
            {
                // A hang-up that reached us before its call's re-bind: the call ends now, on
                // both legs, with its one CDR.
                self.reply(now, id, &req, 200);
                let other = match side {
                    crate::b2bua::Side::A => call.b,
                    crate::b2bua::Side::B => call.a,
                };
                let (mut env, b) = self.env_parts(now);
                b.bye_unbound(
                    &mut env,
                    other,
                    &call.caller,
                    &call.callee,
                    call.start_ms,
                    "normal",
                );
                self.cdrs.extend(self.b2bua.take_cdrs());
                return;
            }
            if let Some(p) = self.pair.as_mut()
                && p.owns_in_dialog(&req)
            {
                p.on_in_dialog(
                    now,
                    &mut self.tx,
                    &mut self.registrar,
                    id,
                    &req,
                    source,
                    &self.me,
                );
                return;
            }
            // Our tag (the To tag of a request from an endpoint) names the call, even one
            // whose leg is still being set up here.
            let token = req
                .to_tag()
                .and_then(|t| crate::b2bua::parse_tag(&t))
                .map(|(token, _)| token);
            let ours = token.is_some_and(|t| self.b2bua.has_call(t));
            if req.method == Method::Bye
                && !ours
                && let Ok(call_id) = req.call_id()
                && self.b2bua.token_of_call_id(call_id).is_none()
                && let Some(p) = self.pair.as_mut()
                && p.machine.peer_alive(now)
            {
                // Not ours: the peer may own the call (it moved during a split, or has not
                // been re-bound yet). The endpoint is done with it either way.
                self.reply(now, id, &req, 200);
                let call_id = call_id.to_string();
                if let Some(p) = self.pair.as_mut() {
                    p.forward_bye(now, &mut self.tx, &self.me, &call_id);
                }
                return;
            }
            if !ours
                && let Some(token) = token
                && self
                    .pair
                    .as_ref()
                    .is_some_and(|p| p.handed_off_recently(now, token))
            {
                // A call this node just handed to its peer, whose re-bind has not reached
                // the endpoint yet: answer so that the dialog lives on (RFC 5057: 491 and
                // 503 end only the transaction, 481 would end the call) and the endpoint
                // asks again — by then at the new active.
                match req.method {
                    Method::Ack => {}
                    Method::Invite | Method::Update => self.reply(now, id, &req, 491),
                    _ => {
                        let mut r = response_to(&req, 503, None);
                        r.headers.push(HeaderName::RetryAfter, "1");
                        let _ = self.tx.respond(now, id, &r);
                    }
                }
                return;
            }
            let (mut env, b) = self.env_parts(now);
            b.on_in_dialog(&mut env, id, req, source);
            return;
        }
        let now_s = self.wall_ms(now) / 1000;
        match req.method {
            Method::Register => {
                let r = self.registrar.handle_register(now, now_s, &req, source);
                let _ = self.tx.respond(now, id, &r);
            }
            Method::Options if keepalive::is_keepalive(&req) && self.pair.is_some() => {
                let calls = self.b2bua.call_count();
                if let Some(p) = self.pair.as_mut() {
                    p.on_keepalive_request(now, &mut self.tx, id, &req, source, calls);
                }
            }
            Method::Options => {
                let mut r = response_to(&req, 200, Some(&new_tag()));
                r.headers.push(HeaderName::Allow, crate::b2bua::ALLOW);
                r.headers.push(HeaderName::Accept, uas::ACCEPT);
                r.headers.push(HeaderName::Supported, uas::SUPPORTED);
                let _ = self.tx.respond(now, id, &r);
            }
            Method::Invite if !self.accepts_calls() => {
                let redirect = self.pair.as_ref().is_some_and(PairGlue::redirect);
                let mut r = response_to(&req, if redirect { 302 } else { 503 }, Some(&new_tag()));
                if let Some(p) = self.pair.as_ref().filter(|_| redirect) {
                    let user = crate::sip::Uri::parse(&req.uri)
                        .ok()
                        .and_then(|u| u.user)
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default();
                    r.headers
                        .push(HeaderName::Contact, format!("<sip:{user}{}>", p.peer()));
                } else {
                    r.reason = "Stand-by Node".into();
                    r.headers.push(HeaderName::RetryAfter, "5");
                }
                let _ = self.tx.respond(now, id, &r);
            }
            Method::Invite => {
                let trunk = self.trunk_for_source(source.remote).map(|t| t.name.clone());
                if trunk.is_none() {
                    match self.registrar.authenticate(now, now_s, &req, source, true) {
                        AuthOutcome::Authenticated(_) => {}
                        AuthOutcome::Reject(r) => {
                            let _ = self.tx.respond(now, id, &r);
                            return;
                        }
                    }
                }
                let (mut env, b) = self.env_parts(now);
                b.on_invite(&mut env, id, req, source, trunk.as_deref());
                self.cdrs.extend(self.b2bua.take_cdrs());
            }
            Method::Subscribe
                if self.pair.is_some()
                    && req.headers.get(&HeaderName::Event).is_some_and(|e| {
                        e.split(';').next().is_some_and(|t| t.trim() == "reg")
                    }) =>
            {
                if let Some(p) = self.pair.as_mut() {
                    p.on_subscribe(
                        now,
                        &mut self.tx,
                        &mut self.registrar,
                        id,
                        &req,
                        source,
                        &self.me,
                    );
                }
            }
            Method::Subscribe
                if req
                    .headers
                    .get(&HeaderName::Event)
                    .is_some_and(|e| e.split(';').next().is_some_and(|t| t.trim() == "dialog")) =>
            {
                let user_ok = crate::sip::Uri::parse(&req.uri)
                    .ok()
                    .and_then(|u| u.user_unescaped())
                    .is_some_and(|u| self.registrar.is_user(&u));
                if !user_ok {
                    self.reply(now, id, &req, 404);
                    return;
                }
                if self.trunk_for_source(source.remote).is_none()
                    && let AuthOutcome::Reject(r) =
                        self.registrar.authenticate(now, now_s, &req, source, true)
                {
                    let _ = self.tx.respond(now, id, &r);
                    return;
                }
                self.blf_subscribe(now, id, &req, source);
            }
            Method::Subscribe => {
                let mut r = response_to(&req, 489, Some(&new_tag()));
                r.headers.push(HeaderName::AllowEvents, "dialog, reg");
                let _ = self.tx.respond(now, id, &r);
            }
            _ => self.reply(now, id, &req, 481),
        }
    }
}
