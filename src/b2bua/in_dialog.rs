//! Requests inside a call: the ACK for our 2xx, BYE, session refreshes, and the
//! pass-through of re-INVITE, UPDATE, INFO and in-dialog OPTIONS to the other leg with their
//! responses back (RFC 3261 §12–§15, RFC 3311, RFC 6086).

use std::cmp::Reverse;

use bytes::Bytes;

use super::call::{CallState, Relay, Side, kept};
use super::{ALLOW, B2bua, Env, PerLeg, Purpose, copy_body, media, session};
use crate::net::Flow;
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, response_to};
use crate::transaction::{ClientTxId, ServerTxId};

impl B2bua {
    /// An ACK that matched no transaction: the ACK for one of our 2xx.
    pub fn on_ack(&mut self, env: &mut Env<'_>, req: &Request) {
        let (Some(tag), Ok(call_id)) = (req.to_tag(), req.call_id()) else {
            return;
        };
        let Some((token, side)) = self.locate(&tag, call_id) else {
            return;
        };
        let sdp = (!req.body.is_empty()).then(|| {
            let ct = req
                .headers
                .get(&HeaderName::ContentType)
                .unwrap_or("application/sdp")
                .to_string();
            let body = media::relay(
                &mut self.media,
                token,
                side,
                Bytes::copy_from_slice(&req.body),
            );
            (body, ct)
        });
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        // The caller's INVITE CSeq (its PRACKs came after it, RFC 3262).
        let invite_cseq = call
            .reliable
            .as_deref()
            .map(super::prack::ReliableA::invite_cseq)
            .or(call.a.remote_cseq)
            .unwrap_or(cseq);
        if side == Side::A && call.state == CallState::Answered && cseq == invite_cseq {
            call.state = CallState::Confirmed;
            if let Some(b) = call.b.as_mut() {
                if let Some((body, _)) = &sdp {
                    *call.last_sdp.leg_mut(Side::B) = Some(kept(body));
                }
                call.b_ack_body = sdp.clone().map(Box::new);
                let ack = b.ack(env.me, call.b_invite_cseq, sdp);
                env.tx.send_stateless(b.next_hop(), ack.to_bytes());
                call.b_acked = true;
            }
            return;
        }
        // The ACK of a relayed re-INVITE: forward to the other leg.
        if let Some(relay) = &call.reinvite
            && relay.from == side
        {
            let out_cseq = relay.out_cseq;
            call.reinvite = None;
            let other = side.other();
            if let Some((body, _)) = &sdp {
                *call.last_sdp.leg_mut(other) = Some(kept(body));
            }
            if let Some(d) = call.leg_mut(other) {
                let ack = d.ack(env.me, out_cseq, sdp);
                env.tx.send_stateless(d.next_hop(), ack.to_bytes());
            }
        }
    }

    /// The call and leg an in-dialog request belongs to: our tag in its To, and that leg's
    /// Call-ID.
    fn dialog_of(&self, req: &Request) -> Option<(u64, Side)> {
        self.locate(&req.to_tag()?, req.call_id().ok()?)
    }

    /// A request inside a dialog (To tag present). No call of ours matches: 481.
    pub fn on_in_dialog(&mut self, env: &mut Env<'_>, id: ServerTxId, req: Request, source: Flow) {
        let Some((token, side)) = self.dialog_of(&req) else {
            // A transferor's BYE crossing ours: its leg left the call just now.
            let departed = req.method == Method::Bye
                && req
                    .call_id()
                    .ok()
                    .zip(req.to_tag())
                    .is_some_and(|(c, t)| self.departed.contains_key(&(c.to_string(), t)));
            let status = if departed { 200 } else { 481 };
            let _ = env
                .tx
                .respond(env.now, id, &response_to(&req, status, None));
            return;
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(leg) = call.leg_mut(side) else {
            return;
        };
        if !leg.accept_remote_cseq(&req) {
            let r = response_to(&req, 500, None);
            let _ = env.tx.respond(env.now, id, &r);
            return;
        }
        // A request from a leg tells us where it is now (adopted TCP legs, NAT rebinding).
        if source.proto == leg.flow.proto {
            leg.flow = source;
        }
        match req.method {
            Method::Bye => {
                let r = response_to(&req, 200, None);
                let _ = env.tx.respond(env.now, id, &r);
                if self.transferor_left(token, side) {
                    // The transferor's part is over; the transfer goes on.
                    return;
                }
                let Some(call) = self.calls.get_mut(&token) else {
                    return;
                };
                if side == Side::A && call.b.is_none() {
                    call.cancelled = true;
                    self.cancel_forks(env, token, None);
                }
                self.finish(env, token, "normal", &[side.other()]);
            }
            Method::Prack if side == Side::A => self.on_prack(env, token, id, &req),
            Method::Refer => self.on_refer(env, token, side, id, &req),
            Method::Update if req.body.is_empty() => {
                // A session refresh without an offer: answered here, for this leg only.
                let mut r = response_to(&req, 200, None);
                session::refreshed_by_peer(call, env, side, &req, &mut r);
                r.headers
                    .push(HeaderName::Contact, env.me.contact(source.proto));
                let _ = env.tx.respond(env.now, id, &r);
                for t in session::deadlines(call) {
                    self.timers.push(Reverse(t));
                }
            }
            _ => self.relay_request(env, token, side, id, req),
        }
    }

    pub(super) fn relay_request(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        side: Side,
        id: ServerTxId,
        req: Request,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let is_invite = req.method == Method::Invite;
        if (is_invite || req.method == Method::Update)
            && (call.reinvite.is_some() || call.rebind.is_some())
        {
            // Glare (RFC 3261 §14.2): one re-INVITE at a time per call.
            let mut r = response_to(&req, 491, None);
            r.headers.push(HeaderName::RetryAfter, "1");
            let _ = env.tx.respond(env.now, id, &r);
            return;
        }
        if (is_invite || req.method == Method::Update)
            && let Some(leg) = call.leg_mut(side)
        {
            leg.refresh_target(req.contact());
        }
        let other = side.other();
        let Some(out_leg) = call.leg_mut(other) else {
            let r = response_to(&req, 491, None);
            let _ = env.tx.respond(env.now, id, &r);
            return;
        };
        let mut out = out_leg.request(req.method.clone(), env.me, None);
        let out_cseq = out_leg.local_cseq;
        let hop = out_leg.next_hop();
        for name in [
            HeaderName::Event,
            HeaderName::SubscriptionState,
            HeaderName::Accept,
            HeaderName::Reason,
        ] {
            for v in req.headers.get_all(&name) {
                out.headers.push(name.clone(), v);
            }
        }
        if is_invite || req.method == Method::Update {
            out.headers.push(HeaderName::Allow, ALLOW);
            out.headers.push(HeaderName::Supported, super::SUPPORTED);
        }
        let body = copy_body(&req, &req.body, &mut out.headers);
        out.body = media::relay(&mut self.media, token, side, body);
        if !out.body.is_empty() && (is_invite || req.method == Method::Update) {
            *call.last_sdp.leg_mut(other) = Some(kept(&out.body));
        }
        match env.tx.send_request(env.now, &out, hop) {
            Ok(tx) => {
                self.client.insert(tx, (token, Purpose::Relay));
                let relay = Relay {
                    from: side,
                    server: id,
                    request: req,
                    out_cseq,
                };
                if is_invite {
                    call.reinvite = Some(Box::new(relay));
                } else {
                    call.relays_insert(tx, relay);
                }
                if is_invite {
                    call.relay_tx = Some(tx);
                }
            }
            Err(_) => {
                let r = response_to(&req, 500, None);
                let _ = env.tx.respond(env.now, id, &r);
            }
        }
    }

    pub(super) fn relay_response(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        id: ClientTxId,
        resp: Response,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        if resp.status == 100 {
            return;
        }
        let final_ = resp.status >= 200;
        let relay_is_invite = call.relay_tx == Some(id);
        let relay = if relay_is_invite {
            // None: a 2xx retransmission after the ACK went out, nothing to relay.
            call.reinvite.as_deref()
        } else {
            call.relay(id)
        };
        let Some(relay) = relay else {
            return;
        };
        let (from, server, method) = (relay.from, relay.server, relay.request.method.clone());
        let mut r = response_to(&relay.request, resp.status, None);
        r.reason = resp.reason.clone();
        let other = from.other();
        if (200..300).contains(&resp.status) && matches!(method, Method::Invite | Method::Update) {
            if let Some(d) = call.leg_mut(other) {
                d.refresh_target(resp.contact());
            }
            // The response goes back on the leg the request came from.
            let proto = call.leg(from).map_or(call.a.flow.proto, |d| d.flow.proto);
            r.headers.push(HeaderName::Contact, env.me.contact(proto));
            for t in session::touch(call, env) {
                self.timers.push(Reverse(t));
            }
        }
        let body = copy_body(&resp, &resp.body, &mut r.headers);
        r.body = media::relay(&mut self.media, token, other, body);
        if !r.body.is_empty() && method == Method::Invite {
            *call.last_sdp.leg_mut(from) = Some(kept(&r.body));
        }
        let _ = env.tx.respond(env.now, server, &r);
        if final_ {
            if relay_is_invite {
                if resp.status >= 300 {
                    call.reinvite = None;
                    call.relay_tx = None;
                    self.client.remove(&id);
                }
            } else {
                call.relay_done(id);
                self.client.remove(&id);
            }
            if matches!(resp.status, 408 | 481) {
                // The other endpoint no longer knows the dialog: end the call on both legs.
                self.finish(env, token, &format!("failed:{}", resp.status), &[from]);
            }
        }
    }
}
