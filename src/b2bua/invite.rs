//! Setting a call up: the caller's INVITE, the B-leg forks and their responses, CANCEL
//! (RFC 3261 §13, §9; parallel forking and cancelling the losers as in §16.7 and §16.10).

use std::cmp::Reverse;

use super::call::{Call, CallState, Fork, Side, kept, tag_for};
use super::outbound_auth;
use super::refusal::Refusal;
use super::{
    ALLOW, B2bua, COPIED, Env, PerLeg, Purpose, RING_TIMEOUT, TimerKind, cancel_for, copy_body,
    media, reason_for, resolve, session,
};
use crate::dialog::{Dialog, DialogState};
use crate::net::Flow;
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, Uri, response_to};
use crate::transaction::{ClientTxId, ServerTxId};

impl B2bua {
    /// A new INVITE outside any dialog, already authenticated (or from a trunk).
    pub fn on_invite(
        &mut self,
        env: &mut Env<'_>,
        id: ServerTxId,
        req: Request,
        source: Flow,
        from_trunk: Option<&str>,
    ) {
        let refuse = |env: &mut Env<'_>, why: Refusal| {
            let mut r = response_to(&req, why.status(), Some(&crate::sip::new_tag()));
            if let Some(phrase) = why.phrase() {
                r.reason = phrase.to_string();
            }
            if why == Refusal::IntervalTooBrief {
                r.headers
                    .push(HeaderName::MinSe, env.cfg.calls.min_se_s.to_string());
            }
            let _ = env.tx.respond(env.now, id, &r);
        };
        if let Some(value) = req.headers.get(&HeaderName::Replaces).map(str::to_string) {
            return self.on_invite_replaces(env, id, req, source, &value);
        }
        let Some(user) = Uri::parse(&req.uri).ok().and_then(|u| u.user_unescaped()) else {
            self.stats.refused += 1;
            return refuse(env, Refusal::NoUser);
        };
        if self.calls.len() >= env.cfg.calls.max_calls {
            self.stats.refused += 1;
            return refuse(env, Refusal::CallLimit);
        }
        // RFC 4028 §8.1: a Session-Expires below our Min-SE gets 422.
        let a_se = session::requested(&req);
        if let Some((s, _)) = a_se
            && s < env.cfg.calls.min_se_s
        {
            self.stats.refused += 1;
            return refuse(env, Refusal::IntervalTooBrief);
        }
        let route = match resolve(env.cfg, env.registrar, env.dns, &user, env.now) {
            Ok(r) => r,
            Err(why) => {
                self.stats.refused += 1;
                return refuse(env, why);
            }
        };
        let token = self.new_token();
        let Some(mut a) = Dialog::as_uas(&req, &tag_for(token, Side::A), source) else {
            self.stats.refused += 1;
            return refuse(env, Refusal::CannotBuildDialog);
        };
        a.local_cseq = env.cseq_base();
        let Ok(from) = req.from() else {
            return refuse(env, Refusal::Malformed);
        };
        let mf = req
            .header_u32(&HeaderName::MaxForwards)
            .and_then(Result::ok)
            .unwrap_or(70)
            .saturating_sub(1);
        let b_call_id = env.new_call_id();
        if let Some(m) = self.media.as_mut()
            && !m.alloc(token)
        {
            self.stats.refused += 1;
            tracing::warn!("no free media ports: call refused");
            return refuse(env, Refusal::NoMediaPorts);
        }
        let b_cseq = env.cseq_base().saturating_add(1);
        let mut b_from = from.clone();
        b_from.params.set("tag", Some(&tag_for(token, Side::B)));
        // The offer every fork carries (in relay mode: rewritten to our ports, once).
        let mut offer_type = crate::sip::Headers::default();
        let offer = copy_body(&req, &req.body, &mut offer_type);
        let offer = media::relay(&mut self.media, token, Side::A, offer);
        let mut forks = Vec::with_capacity(route.targets.len());
        for target in &route.targets {
            let mut b = Request::new(Method::Invite, target.uri.clone());
            let h = &mut b.headers;
            h.push(HeaderName::Via, env.me.via(target.flow.proto));
            h.push(HeaderName::MaxForwards, mf.to_string());
            h.push(HeaderName::From, b_from.to_string());
            h.push(HeaderName::To, target.to.clone());
            h.push(HeaderName::CallId, b_call_id.clone());
            h.push(HeaderName::CSeq, format!("{b_cseq} INVITE"));
            h.push(HeaderName::Contact, env.me.contact(target.flow.proto));
            h.push(HeaderName::Allow, ALLOW);
            h.push(HeaderName::Supported, "timer, 100rel, replaces");
            if env.cfg.calls.session_expires_s > 0 {
                h.push(
                    HeaderName::SessionExpires,
                    format!("{};refresher=uac", env.cfg.calls.session_expires_s),
                );
                h.push(HeaderName::MinSe, env.cfg.calls.min_se_s.to_string());
            }
            for name in COPIED {
                let n = HeaderName::from_wire(name);
                for v in req.headers.get_all(&n) {
                    h.push(n.clone(), v);
                }
            }
            if let Some(ct) = offer_type.get(&HeaderName::ContentType) {
                b.headers.push(HeaderName::ContentType, ct);
            }
            b.body = offer.clone();
            match env.tx.send_request(env.now, &b, target.flow) {
                Ok(tx) => {
                    self.client.insert(tx, (token, Purpose::Fork));
                    forks.push(Fork {
                        tx,
                        request: b,
                        flow: target.flow,
                        provisional: false,
                        cancel_wanted: false,
                        done: false,
                        early_tag: None,
                        early_target: None,
                        rseq: None,
                        prack_cseq: 0,
                        auth: None,
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot start B-leg INVITE"),
            }
        }
        if forks.is_empty() {
            self.stats.refused += 1;
            if let Some(m) = self.media.as_mut() {
                m.release(token);
            }
            return refuse(env, Refusal::NoTarget);
        }
        tracing::debug!(
            token = format!("{token:016x}"),
            user,
            forks = forks.len(),
            "call created"
        );
        let mut call = Call::new(
            token,
            CallState::Calling,
            a,
            b_call_id.into(),
            from.uri.to_string().into(),
            user.into(),
            env.now_ms,
            env.now,
        );
        call.reliable = super::prack::ReliableA::for_invite(&req);
        call.a_invite = Some(Box::new((id, req)));
        call.invite_tx = Some(id);
        call.b_invite_cseq = b_cseq;
        call.forks = forks;
        call.last_sdp = [None, (!offer.is_empty()).then(|| kept(&offer))];
        call.trunk = route
            .trunk
            .map(Box::from)
            .or_else(|| from_trunk.map(Box::from));
        if !route.alternates.is_empty() {
            let rare = call.rare_mut();
            rare.alternates = route.alternates;
            rare.trunk_host = route.host;
        }
        self.stats.created += 1;
        self.server_invites.insert(id, token);
        self.calls.insert(token, Box::new(call));
        self.timers
            .push(Reverse((env.now + RING_TIMEOUT, token, TimerKind::Ring)));
        self.digest_ringing(token);
    }

    /// A CANCEL matched the initial INVITE on server transaction `invite` (the CANCEL itself
    /// has been answered 200 by the caller of this method).
    pub fn on_cancel(&mut self, env: &mut Env<'_>, invite: ServerTxId) {
        let Some(&token) = self.server_invites.get(&invite) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some((id, req)) = call.a_invite.take().map(|b| *b) else {
            return;
        };
        let r = response_to(&req, 487, Some(&call.a.local_tag));
        let _ = env.tx.respond(env.now, id, &r);
        call.cancelled = true;
        self.cancel_forks(env, token, None);
        self.maybe_finish_unanswered(env, token);
    }

    /// Fail every call not answered yet: `503` + `Retry-After` to the caller and CANCEL to
    /// the callee's forks (a node stepping down does this before handing its calls over: a
    /// ringing call cannot move).
    pub fn reject_unanswered(&mut self, env: &mut Env<'_>) {
        let ringing: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.a_invite.is_some())
            .map(|(t, _)| *t)
            .collect();
        for token in ringing {
            let Some(call) = self.calls.get_mut(&token) else {
                continue;
            };
            let Some((id, req)) = call.a_invite.take().map(|b| *b) else {
                continue;
            };
            let mut r = response_to(&req, 503, Some(&call.a.local_tag));
            r.headers.push(HeaderName::RetryAfter, "1");
            let _ = env.tx.respond(env.now, id, &r);
            call.cancelled = true;
            // The CDR is the winner's: the digest told it of this ringing call, and it fails
            // it on its side too (a crashed node could not).
            call.no_cdr = true;
            self.cancel_forks(env, token, None);
            self.finish(env, token, "failed:503", &[]);
        }
    }

    pub(super) fn cancel_forks(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        except: Option<ClientTxId>,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let mut sends = Vec::new();
        for f in call
            .forks
            .iter_mut()
            .filter(|f| !f.done && Some(f.tx) != except)
        {
            if f.provisional {
                sends.push((cancel_for(&f.request), f.flow));
            } else {
                f.cancel_wanted = true;
            }
        }
        for (c, flow) in sends {
            if let Ok(tx) = env.tx.send_request(env.now, &c, flow) {
                self.client.insert(tx, (token, Purpose::Cancel));
            }
        }
    }

    /// End an unanswered call once every fork has a final response.
    pub(super) fn maybe_finish_unanswered(&mut self, env: &mut Env<'_>, token: u64) {
        let Some(call) = self.calls.get(&token) else {
            return;
        };
        if call.b.is_none() && call.forks.iter().all(|f| f.done) {
            let reason = if call.cancelled {
                "cancelled".to_string()
            } else {
                "failed:500".to_string()
            };
            self.finish(env, token, &reason, &[]);
        }
    }

    pub(super) fn fork_response(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        id: ClientTxId,
        resp: Response,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(fi) = call.forks.iter().position(|f| f.tx == id) else {
            // The forks are gone: a retransmitted 2xx of the winner gets a fresh ACK.
            if call.b_tx == Some(id) && (200..300).contains(&resp.status) {
                call.reack_b(env);
            }
            return;
        };
        let status = resp.status;
        if status < 200 {
            if status == 100 {
                return;
            }
            if !self.prack_b(env, token, fi, &resp) {
                return;
            }
            let Some(call) = self.calls.get_mut(&token) else {
                return;
            };
            let Some(fork) = call.forks.get_mut(fi) else {
                return;
            };
            fork.provisional = true;
            let new_early = fork.early_tag.is_none() && resp.to_tag().is_some();
            if new_early {
                fork.early_tag = resp.to_tag();
                fork.early_target = resp.contact().map(|c| c.uri.to_string());
            }
            if fork.cancel_wanted && !fork.done {
                fork.cancel_wanted = false;
                let c = cancel_for(&fork.request);
                let flow = fork.flow;
                if let Ok(tx) = env.tx.send_request(env.now, &c, flow) {
                    self.client.insert(tx, (token, Purpose::Cancel));
                }
                return;
            }
            if let Some((sid, req)) = call.a_invite.as_deref() {
                let mut r = response_to(req, status, Some(&call.a.local_tag));
                r.reason = resp.reason.clone();
                if resp.to_tag().is_some() {
                    r.headers
                        .push(HeaderName::Contact, env.me.contact(call.a.flow.proto));
                }
                let body = copy_body(&resp, &resp.body, &mut r.headers);
                r.body = media::relay(&mut self.media, token, Side::B, body);
                let sid = *sid;
                call.state = CallState::Ringing;
                self.provisional_to_a(env, token, sid, r);
            }
            if new_early {
                self.digest_ringing(token);
            }
            return;
        }
        if (200..300).contains(&status) {
            let tag = resp.to_tag();
            let same_dialog = call
                .b
                .as_ref()
                .is_some_and(|b| tag.as_deref() == Some(&*b.remote_tag));
            let Some(fork) = call.forks.get_mut(fi) else {
                return;
            };
            if fork.done && same_dialog {
                // A retransmitted 2xx: ACK it again if we already did.
                call.reack_b(env);
                return;
            }
            fork.done = true;
            let fork_req = fork.request.clone();
            let fork_flow = fork.flow;
            let prack_cseq = fork.prack_cseq;
            let Some(mut dialog) = Dialog::as_uac(&fork_req, &resp, fork_flow) else {
                return;
            };
            // Our PRACKs used CSeq numbers in this dialog (RFC 3262 §4).
            dialog.local_cseq = dialog.local_cseq.max(prack_cseq);
            if call.b.is_some() || call.a_invite.is_none() {
                // Another fork already won, or the caller cancelled: ACK and hang up this one.
                let ack = dialog.ack(env.me, call.b_invite_cseq, None);
                env.tx.send_stateless(dialog.next_hop(), ack.to_bytes());
                let bye = dialog.request(Method::Bye, env.me, None);
                if let Ok(tx) = env.tx.send_request(env.now, &bye, dialog.next_hop()) {
                    self.client.insert(tx, (token, Purpose::Bye));
                }
                self.maybe_finish_unanswered(env, token);
                return;
            }
            dialog.state = DialogState::Confirmed;
            *call.peer_update.leg_mut(Side::B) = resp.has_token(&HeaderName::Allow, "UPDATE");
            session::arm_b(call, env, &resp);
            call.b = Some(dialog);
            call.state = CallState::Answered;
            call.answer_ms = Some(env.now_ms);
            self.stats.answered += 1;
            self.answer_latency.observe(
                env.now
                    .saturating_duration_since(call.created)
                    .as_secs_f64(),
            );
            let Some((sid, req)) = call.a_invite.take().map(|b| *b) else {
                return;
            };
            let mut r = response_to(&req, status, Some(&call.a.local_tag));
            r.reason = resp.reason.clone();
            r.headers
                .push(HeaderName::Contact, env.me.contact(call.a.flow.proto));
            r.headers.push(HeaderName::Allow, ALLOW);
            r.headers.push(HeaderName::Supported, super::SUPPORTED);
            session::arm_a(call, env, &req, &mut r);
            let body = copy_body(&resp, &resp.body, &mut r.headers);
            r.body = media::relay(&mut self.media, token, Side::B, body);
            if !r.body.is_empty() {
                *call.last_sdp.leg_mut(Side::A) = Some(kept(&r.body));
            }
            let _ = env.tx.respond(env.now, sid, &r);
            for t in session::deadlines(call) {
                self.timers.push(Reverse(t));
            }
            self.cancel_forks(env, token, Some(id));
            self.digest_legs(token);
            if let Some(call) = self.calls.get_mut(&token) {
                call.b_tx = Some(id);
                for f in call.forks.iter_mut().filter(|f| f.done) {
                    f.shed();
                }
                call.compact_forks();
            }
            return;
        }
        // 3xx–6xx on this fork. A trunk's challenge is answered once (per nonce).
        if matches!(status, 401 | 407)
            && call.b.is_none()
            && call.a_invite.is_some()
            && !call.cancelled
            && let Some(creds) = call
                .trunk
                .as_deref()
                .and_then(|t| env.cfg.trunks.iter().find(|c| c.name == t))
                .and_then(|t| t.credentials.as_ref())
            && let Some(fork) = call.forks.get_mut(fi)
        {
            match outbound_auth::answer(env.me, fork, &resp, creds, call.b_invite_cseq) {
                Ok(retry) => {
                    if let Ok(tx) = env.tx.send_request(env.now, &retry, fork.flow) {
                        call.b_invite_cseq = retry.cseq().map_or(call.b_invite_cseq, |c| c.seq);
                        fork.tx = tx;
                        fork.request = retry;
                        fork.provisional = false;
                        self.client.insert(tx, (token, Purpose::Fork));
                        return;
                    }
                }
                Err(why) => tracing::warn!(
                    trunk = call.trunk.as_deref().unwrap_or_default(),
                    status,
                    error = why,
                    "the trunk's challenge is not answered: the call fails"
                ),
            }
        }
        // The trunk's next target when this one timed out, is unreachable or overloaded.
        if matches!(status, 408 | 503)
            && call.b.is_none()
            && call.a_invite.is_some()
            && !call.cancelled
            && let Some(rare) = call.rare.as_mut().filter(|r| !r.alternates.is_empty())
            && let Some(fork) = call.forks.get_mut(fi)
        {
            let next = rare.alternates.remove(0);
            if let Some(host) = &rare.trunk_host {
                self.dns_failures.push((host.clone(), fork.flow.remote));
            }
            let mut retry = fork.request.clone();
            retry.uri.clone_from(&next.uri);
            retry
                .headers
                .set(HeaderName::Via, env.me.via(next.flow.proto));
            retry.headers.set(HeaderName::To, next.to.clone());
            tracing::info!(
                trunk = call.trunk.as_deref().unwrap_or_default(),
                status,
                failed = %fork.flow.remote,
                next = %next.flow.remote,
                "trunk target failed: trying the next one"
            );
            if let Ok(tx) = env.tx.send_request(env.now, &retry, next.flow) {
                fork.tx = tx;
                fork.request = retry;
                fork.flow = next.flow;
                fork.provisional = false;
                fork.auth = None;
                self.client.insert(tx, (token, Purpose::Fork));
                return;
            }
        }
        // A trunk's challenge we could not answer is ours to fail, not the caller's to
        // answer: the caller gets 503 (its own credentials are not what the trunk wants).
        let trunk_auth_failed = matches!(status, 401 | 407) && call.trunk.is_some();
        let Some(fork) = call.forks.get_mut(fi) else {
            return;
        };
        fork.done = true;
        if call.b.is_some() {
            fork.shed();
            call.compact_forks();
        }
        if call.b.is_some() {
            return;
        }
        if !call.forks.iter().all(|f| f.done) {
            return;
        }
        if let Some((sid, req)) = call.a_invite.take().map(|b| *b) {
            if trunk_auth_failed {
                let mut r = response_to(&req, 503, Some(&call.a.local_tag));
                r.reason = "Trunk Authentication Failed".into();
                let _ = env.tx.respond(env.now, sid, &r);
                self.finish(env, token, "failed:trunk_auth", &[]);
                return;
            }
            let mut r = response_to(&req, status, Some(&call.a.local_tag));
            r.reason = resp.reason.clone();
            for name in [
                HeaderName::RetryAfter,
                HeaderName::Warning,
                HeaderName::Reason,
            ] {
                for v in resp.headers.get_all(&name) {
                    r.headers.push(name.clone(), v);
                }
            }
            let _ = env.tx.respond(env.now, sid, &r);
            self.finish(env, token, &reason_for(status), &[]);
        } else {
            self.maybe_finish_unanswered(env, token);
        }
    }
}
