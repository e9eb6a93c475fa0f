//! Adopting calls after a takeover: the RFC 3725 re-bind exchange (offerless re-INVITE to
//! leg A; A's offer in a re-INVITE to leg B; B's answer in the ACK to A), with our Contact
//! in both, so both endpoints send their later requests here. Glare (491) is retried after
//! the RFC 3261 §14.1 random delay; a leg that no longer knows its dialog (481/408) or
//! refuses ends the call cleanly on the other leg.

use std::cmp::Reverse;
use std::time::Duration;

use bytes::Bytes;

use super::call::{Call, CallState, SessionTimer, Side, kept};
use super::{B2bua, Env, PerLeg, Purpose, TimerKind};
use crate::dialog::Dialog;
use crate::sip::{HeaderName, Method, Response, SipMessage};

/// How a call was found at takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// From the endpoints' answers to the dialog query (RFC 4235).
    Query,
    /// From the dialog digest on the keep-alives.
    Digest,
}

/// A call to adopt: both legs as rebuilt from what the endpoints (or the digest) said.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The call token from the tags.
    pub token: u64,
    /// Leg A (the caller).
    pub a: Dialog,
    /// Leg B (the callee).
    pub b: Dialog,
    /// Caller URI.
    pub caller: String,
    /// Callee.
    pub callee: String,
    /// When the call started (unix ms), from the reported duration when known.
    pub start_ms: u64,
    /// How it was found.
    pub source: Source,
    /// The Call-ID of the transferor's leg this call's later part replaced (CDR
    /// `transfer_of`), when the digest said so.
    pub transfer_of: Option<String>,
}

impl Adopted {
    /// The call tokens our tags in its legs carry other than its own (legs an attended
    /// transfer joined): the endpoints' reports of those dialogs belong to this call.
    pub fn alias_tokens(&self) -> impl Iterator<Item = u64> + '_ {
        [&self.a, &self.b]
            .into_iter()
            .filter_map(|d| super::parse_tag(&d.local_tag))
            .map(|(t, _)| t)
            .filter(|t| *t != self.token)
    }
}

/// What came back for a re-bind re-INVITE.
#[derive(Debug)]
pub(super) enum Answer {
    /// A final response.
    Final(Response),
    /// The transport could not reach the leg (a TCP endpoint not reachable from here).
    Unreachable,
}

/// The result of re-binding one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Both legs now talk to this node.
    Recovered(Source),
    /// An endpoint no longer knew the dialog (481/408): the call was cleaned up.
    Ended(u16),
    /// An endpoint refused the re-INVITE: the call was ended on both legs.
    Failed(u16),
    /// A TCP leg's endpoint could not be reached; the call is kept for when it comes back.
    Unreachable,
    /// The first leg answered 503 (overloaded): the re-bind is tried again later.
    Deferred,
    /// An endpoint hung up while its call was being re-bound: the call ended normally.
    HungUp,
}

/// How many times a re-bind refused with 503 is tried again before the call is given up.
pub const REBIND_ATTEMPTS: u8 = 6;

/// Where a re-bind is.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// Offerless re-INVITE sent to the first leg.
    First { cseq: u32 },
    /// The first leg answered with `offer`; re-INVITE with it sent to the second leg. The
    /// first leg's 2xx waits for our ACK.
    Second {
        first_cseq: u32,
        offer: Bytes,
        second_cseq: u32,
    },
}

/// Re-bind state of a call.
#[derive(Debug, Clone)]
pub(super) struct Rebind {
    pub(super) step: Step,
    pub(super) source: Source,
    /// The leg re-INVITEd first (offerless): leg A, unless only leg B is over TCP — the leg
    /// most likely to be unreachable goes first, so that nothing is owed to the other when it
    /// is.
    pub(super) first: Side,
    /// Attempts refused with 503 so far.
    pub(super) refused: u8,
}

/// An SDP answer that rejects every stream of `offer` (ports 0), for ending a half-done
/// exchange cleanly (RFC 3264 §6).
pub(super) fn rejecting_answer(offer: &Bytes) -> Bytes {
    let text = String::from_utf8_lossy(offer);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("m=") {
            let mut parts = rest.splitn(3, ' ');
            let media = parts.next().unwrap_or("audio");
            let _port = parts.next();
            let tail = parts.next().unwrap_or("RTP/AVP 0\r\n");
            out.push_str(&format!("m={media} 0 {tail}"));
        } else {
            out.push_str(line);
        }
    }
    Bytes::from(out)
}

impl B2bua {
    /// Adopt a call found at takeover and start re-binding it.
    pub fn adopt(&mut self, env: &mut Env<'_>, mut call: Adopted) {
        if self.calls.contains_key(&call.token) {
            return;
        }
        let base = env.cseq_base();
        call.a.local_cseq = call.a.local_cseq.max(base);
        call.b.local_cseq = call.b.local_cseq.max(base);
        let token = call.token;
        let first = if call.b.flow.proto.is_reliable() && !call.a.flow.proto.is_reliable() {
            Side::B
        } else {
            Side::A
        };
        let mut c = Call::new(
            token,
            CallState::Rebinding,
            call.a,
            call.b.call_id.clone(),
            call.caller.into(),
            call.callee.into(),
            call.start_ms,
            env.now,
        );
        // A leg to a trunk: its name for the CDR, and its credentials for its challenges.
        let trunk_of = |f: crate::net::Flow| {
            env.cfg
                .trunk_for_source(f.remote)
                .or_else(|| env.dns.trunk_for_source(env.cfg, f.remote))
                .map(|t| Box::from(t.name.as_str()))
        };
        c.trunk = trunk_of(call.b.flow).or_else(|| trunk_of(c.a.flow));
        c.b = Some(call.b);
        c.answer_ms = Some(call.start_ms);
        c.recovered = true;
        c.transfer_of = call.transfer_of.map(Box::from);
        c.rebind = Some(Box::new(Rebind {
            step: Step::First { cseq: 0 },
            source: call.source,
            first,
            refused: 0,
        }));
        // Legs an attended transfer joined keep their first call's token in our tag.
        for side in [Side::A, Side::B] {
            if let Some((t, _)) = c.leg(side).and_then(|d| super::parse_tag(&d.local_tag))
                && t != token
            {
                self.aliases.insert(t, token);
            }
        }
        self.calls.insert(token, Box::new(c));
        self.stats.adopted += 1;
        if let Some(m) = self.media.as_mut()
            && !m.alloc(token)
        {
            tracing::warn!("no free media ports for an adopted call: its media is not relayed");
        }
        self.send_rebind_first(env, token);
    }

    /// Offerless re-INVITE to the first leg.
    fn send_rebind_first(&mut self, env: &mut Env<'_>, token: u64) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(first) = call.rebind.as_ref().map(|r| r.first) else {
            return;
        };
        let Some(leg) = call.leg_mut(first) else {
            return;
        };
        let mut r = leg.request(Method::Invite, env.me, None);
        let cseq = leg.local_cseq;
        r.headers.push(HeaderName::Allow, super::ALLOW);
        r.headers.push(HeaderName::Supported, super::SUPPORTED);
        let hop = leg.next_hop();
        super::outbound_auth::answer_trunk_challenge(env, call, first, &mut r);
        match env.tx.send_request(env.now, &r, hop) {
            Ok(tx) => {
                self.client.insert(tx, (token, Purpose::Rebind(first)));
                call.rebind_txs.push(tx);
                if let Some(rb) = call.rebind.as_mut() {
                    rb.step = Step::First { cseq };
                }
            }
            Err(_) => self.rebind_done(env, token, Outcome::Failed(500), &[first.other()]),
        }
    }

    /// The first leg's offer, in a re-INVITE to the second leg.
    fn send_rebind_second(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        first_cseq: u32,
        offer: Bytes,
        ctype: String,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(first) = call.rebind.as_ref().map(|r| r.first) else {
            return;
        };
        let second = first.other();
        let Some(leg) = call.leg_mut(second) else {
            return;
        };
        let mut r = leg.request(Method::Invite, env.me, None);
        let second_cseq = leg.local_cseq;
        r.headers.push(HeaderName::Allow, super::ALLOW);
        r.headers.push(HeaderName::Supported, super::SUPPORTED);
        r.headers.push(HeaderName::ContentType, ctype);
        r.body = offer.clone();
        let hop = leg.next_hop();
        *call.last_sdp.leg_mut(second) = Some(kept(&offer));
        super::outbound_auth::answer_trunk_challenge(env, call, second, &mut r);
        match env.tx.send_request(env.now, &r, hop) {
            Ok(tx) => {
                self.client.insert(tx, (token, Purpose::Rebind(second)));
                call.rebind_txs.push(tx);
                if let Some(rb) = call.rebind.as_mut() {
                    rb.step = Step::Second {
                        first_cseq,
                        offer,
                        second_cseq,
                    };
                }
            }
            Err(_) => {
                self.close_first(env, token, first, first_cseq, &offer);
                self.rebind_done(env, token, Outcome::Failed(500), &[first]);
            }
        }
    }

    /// The first leg's 2xx (with its offer) is owed an ACK: close that exchange with an
    /// answer refusing every stream, before hanging the leg up.
    fn close_first(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        first: Side,
        first_cseq: u32,
        offer: &Bytes,
    ) {
        if let Some(leg) = self.calls.get_mut(&token).and_then(|c| c.leg_mut(first)) {
            let ack = leg.ack(
                env.me,
                first_cseq,
                Some((rejecting_answer(offer), "application/sdp".into())),
            );
            env.tx.send_stateless(leg.next_hop(), ack.to_bytes());
        }
    }

    fn rebind_done(&mut self, env: &mut Env<'_>, token: u64, outcome: Outcome, bye: &[Side]) {
        self.rebind_outcomes.push((token, outcome));
        if let Some(c) = self.calls.get_mut(&token)
            && !matches!(outcome, Outcome::Deferred)
        {
            c.rebind = None;
        }
        if let (Outcome::Ended(481), Some(c)) = (outcome, self.calls.get_mut(&token)) {
            // The first leg no longer knows the call: it ended before this node owned it,
            // and the node that ended it wrote its CDR (one CDR per call across the pair).
            // A leg that does not answer (408) says nothing of the kind: the call is lost
            // here, and its CDR is this node's (the previous owner may be dead).
            c.no_cdr = true;
        }
        match outcome {
            Outcome::Recovered(_) | Outcome::Unreachable | Outcome::Deferred | Outcome::HungUp => {}
            Outcome::Ended(code) | Outcome::Failed(code) => {
                self.finish(env, token, &format!("failed:{code}"), bye);
            }
        }
    }

    /// What came of a re-bind re-INVITE to leg `side`.
    pub(super) fn rebind_response(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        side: Side,
        answer: Answer,
    ) {
        let resp = match answer {
            Answer::Final(r) => r,
            Answer::Unreachable => return self.rebind_unreachable(env, token, side),
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(rb) = call.rebind.clone() else {
            return;
        };
        let status = resp.status;
        if (1..200).contains(&status) {
            return;
        }
        // The trunk challenged the re-INVITE: the same step again, with its credentials.
        if matches!(status, 401 | 407)
            && super::outbound_auth::take_trunk_challenge(env, call, side, &resp)
        {
            self.rebind_retry(env, token);
            return;
        }
        if let Some(c) = call.trunk_challenge() {
            c.sent = false;
        }
        let first = rb.first;
        let second = first.other();
        match &rb.step {
            Step::First { cseq } if side == first => {
                let cseq = *cseq;
                if (200..300).contains(&status) {
                    let Some(leg) = call.leg_mut(first) else {
                        return;
                    };
                    leg.refresh_target(resp.contact());
                    *call.peer_update.leg_mut(first) = resp.has_token(&HeaderName::Allow, "UPDATE");
                    if resp.body.is_empty() {
                        // No offer: nothing to give the other leg. Close this one and end.
                        if let Some(leg) = call.leg_mut(first) {
                            let ack = leg.ack(env.me, cseq, None);
                            env.tx.send_stateless(leg.next_hop(), ack.to_bytes());
                        }
                        self.rebind_done(env, token, Outcome::Failed(488), &[Side::A, Side::B]);
                        return;
                    }
                    let ctype = resp
                        .headers
                        .get(&HeaderName::ContentType)
                        .unwrap_or("application/sdp")
                        .to_string();
                    let offer = super::media::relay(
                        &mut self.media,
                        token,
                        first,
                        Bytes::copy_from_slice(&resp.body),
                    );
                    self.send_rebind_second(env, token, cseq, offer, ctype);
                } else if status == 491 {
                    self.rebind_glare(env, token, first);
                } else if status == 503 && rb.refused + 1 < REBIND_ATTEMPTS {
                    // Overloaded, not gone: no offer was exchanged yet, so try again later
                    // (after its Retry-After, at most 10 s) rather than drop the call.
                    let after = resp
                        .header_u32(&HeaderName::RetryAfter)
                        .and_then(Result::ok)
                        .map_or_else(|| u64::from(rb.refused) + 1, u64::from)
                        .clamp(1, 10);
                    if let Some(r) = call.rebind.as_mut() {
                        r.refused += 1;
                    }
                    self.timers.push(Reverse((
                        env.now + Duration::from_secs(after),
                        token,
                        TimerKind::RebindRetry,
                    )));
                    self.rebind_outcomes.push((token, Outcome::Deferred));
                } else if matches!(status, 481 | 408) {
                    self.rebind_done(env, token, Outcome::Ended(status), &[second]);
                } else {
                    self.rebind_done(env, token, Outcome::Failed(status), &[second]);
                }
            }
            Step::Second {
                first_cseq,
                offer,
                second_cseq,
            } if side == second => {
                let (first_cseq, offer, second_cseq) = (*first_cseq, offer.clone(), *second_cseq);
                if (200..300).contains(&status) {
                    let Some(leg) = call.leg_mut(second) else {
                        return;
                    };
                    leg.refresh_target(resp.contact());
                    let ack_second = leg.ack(env.me, second_cseq, None).to_bytes();
                    env.tx.send_stateless(leg.next_hop(), ack_second.clone());
                    let answer = super::media::relay(
                        &mut self.media,
                        token,
                        second,
                        Bytes::copy_from_slice(&resp.body),
                    );
                    let ctype = resp
                        .headers
                        .get(&HeaderName::ContentType)
                        .unwrap_or("application/sdp")
                        .to_string();
                    let Some(fleg) = call.leg_mut(first) else {
                        return;
                    };
                    let ack_first = fleg
                        .ack(env.me, first_cseq, Some((answer.clone(), ctype)))
                        .to_bytes();
                    env.tx.send_stateless(fleg.next_hop(), ack_first.clone());
                    *call.last_sdp.leg_mut(first) = Some(kept(&answer));
                    *call.peer_update.leg_mut(second) =
                        resp.has_token(&HeaderName::Allow, "UPDATE");
                    call.state = CallState::Confirmed;
                    let source = rb.source;
                    call.rebind = None;
                    let mut acks = [Bytes::new(), Bytes::new()];
                    *acks.leg_mut(first) = ack_first;
                    *acks.leg_mut(second) = ack_second;
                    call.rebind_acks = Some(Box::new(acks));
                    // The new active refreshes both legs from now on.
                    let s = env.cfg.calls.session_expires_s;
                    if s > 0 {
                        for side in [Side::A, Side::B] {
                            *call.timers.leg_mut(side) = Some(SessionTimer {
                                interval_s: s,
                                we_refresh: true,
                                deadline: env.now + Duration::from_secs(u64::from(s / 2)),
                            });
                        }
                        for t in super::session::deadlines(call) {
                            self.timers.push(Reverse(t));
                        }
                    }
                    self.rebind_outcomes
                        .push((token, Outcome::Recovered(source)));
                    self.stats.recovered += 1;
                    self.digest_legs(token);
                } else if status == 491 {
                    self.rebind_glare(env, token, second);
                } else {
                    // The second leg refused, is gone or unreachable: close the first leg's
                    // exchange, then hang it up.
                    self.close_first(env, token, first, first_cseq, &offer);
                    let outcome = match status {
                        481 | 408 => Outcome::Ended(status),
                        s => Outcome::Failed(s),
                    };
                    self.rebind_outcomes.push((token, outcome));
                    if let Some(c) = self.calls.get_mut(&token) {
                        c.rebind = None;
                        // Gone at the second leg too: ended before we owned it.
                        c.no_cdr = matches!(outcome, Outcome::Ended(481));
                    }
                    self.finish(env, token, &format!("failed:{status}"), &[first]);
                }
            }
            _ => {}
        }
    }

    /// The transport could not reach leg `side` for its re-bind re-INVITE.
    fn rebind_unreachable(&mut self, env: &mut Env<'_>, token: u64, side: Side) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(rb) = call.rebind.clone() else {
            return;
        };
        let first = rb.first;
        let second = first.other();
        match &rb.step {
            Step::First { .. } if side == first => {
                // Cannot reach it from here: keep the call; the endpoint's next in-dialog
                // request (on a connection of its own) adopts it. If nothing comes within a
                // session interval, the session timer ends the call on both legs.
                call.rebind = None;
                call.state = CallState::Confirmed;
                let s = env.cfg.calls.session_expires_s.max(90);
                *call.timers.leg_mut(first) = Some(SessionTimer {
                    interval_s: s,
                    we_refresh: false,
                    deadline: env.now + Duration::from_secs(u64::from(s)),
                });
                for t in super::session::deadlines(call) {
                    self.timers.push(Reverse(t));
                }
                tracing::info!(
                    token = format!("{token:016x}"),
                    ?side,
                    "re-bind: endpoint unreachable over its transport; waiting for it to come back"
                );
                self.rebind_outcomes.push((token, Outcome::Unreachable));
            }
            Step::Second {
                first_cseq, offer, ..
            } if side == second => {
                // The first leg already moved: close its exchange, then hang it up.
                let (first_cseq, offer) = (*first_cseq, offer.clone());
                self.close_first(env, token, first, first_cseq, &offer);
                self.rebind_outcomes.push((token, Outcome::Unreachable));
                if let Some(c) = self.calls.get_mut(&token) {
                    c.rebind = None;
                }
                self.finish(env, token, "failed:503", &[first]);
            }
            _ => {}
        }
    }

    /// 491 on a re-bind re-INVITE: retry after the RFC 3261 §14.1 random delay — 2.1–4 s when
    /// we own the leg's Call-ID (leg B), 0–2 s otherwise.
    fn rebind_glare(&mut self, env: &mut Env<'_>, token: u64, side: Side) {
        let ms = match side {
            Side::B => crate::entropy::range(2100..=4000),
            Side::A => crate::entropy::range(0..=2000),
        };
        self.timers.push(Reverse((
            env.now + Duration::from_millis(ms),
            token,
            TimerKind::RebindRetry,
        )));
    }

    /// A 2xx retransmission for a finished re-bind re-INVITE: send the ACK again.
    pub(super) fn rebind_reack(&mut self, env: &mut Env<'_>, token: u64, side: Side) {
        if let Some(call) = self.calls.get(&token)
            && call.rebind.is_none()
            && let (Some(acks), Some(d)) = (&call.rebind_acks, call.leg(side))
        {
            env.tx.send_stateless(d.next_hop(), acks.leg(side).clone());
        }
    }

    /// The glare retry timer fired.
    pub(super) fn rebind_retry(&mut self, env: &mut Env<'_>, token: u64) {
        let Some(step) = self
            .calls
            .get(&token)
            .and_then(|c| c.rebind.as_ref())
            .map(|r| r.step.clone())
        else {
            return;
        };
        match step {
            Step::First { .. } => self.send_rebind_first(env, token),
            Step::Second {
                first_cseq, offer, ..
            } => {
                self.send_rebind_second(env, token, first_cseq, offer, "application/sdp".into());
            }
        }
    }

    /// Take every confirmed call out, as calls to adopt again (re-bind): their dialogs, the
    /// parties and the start time. Nothing is sent; the calls are gone until re-adopted.
    pub fn take_for_rebind(&mut self) -> Vec<Adopted> {
        let tokens: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Confirmed && c.b.is_some())
            .map(|(t, _)| *t)
            .collect();
        let mut out = Vec::new();
        for token in tokens {
            let Some(c) = self.calls.remove(&token) else {
                continue;
            };
            if let Some(m) = self.media.as_mut() {
                m.release(token);
            }
            self.client.retain(|_, (t, _)| *t != token);
            self.server_invites.retain(|_, t| *t != token);
            let Some(b) = c.b else {
                continue;
            };
            out.push(Adopted {
                token,
                a: c.a,
                b,
                caller: c.caller.into(),
                callee: c.callee.into(),
                start_ms: c.answer_ms.unwrap_or(0),
                source: Source::Digest,
                transfer_of: c.transfer_of.map(String::from),
            });
        }
        out
    }

    /// Hang up a leg whose partner never turned up at takeover, and write its CDR.
    pub fn bye_orphan(
        &mut self,
        env: &mut Env<'_>,
        leg: Dialog,
        caller: &str,
        callee: &str,
        start_ms: u64,
    ) {
        self.bye_unbound(env, leg, caller, callee, start_ms, "takeover_orphan");
        self.stats.orphaned += 1;
    }

    /// Hang up one leg of a call this node never re-bound (its other leg is gone or said
    /// BYE), and write the call's CDR with `reason`.
    pub fn bye_unbound(
        &mut self,
        env: &mut Env<'_>,
        mut leg: Dialog,
        caller: &str,
        callee: &str,
        start_ms: u64,
        reason: &str,
    ) {
        leg.local_cseq = leg.local_cseq.max(env.cseq_base());
        let bye = leg.request(Method::Bye, env.me, None);
        let _ = env.tx.send_request(env.now, &bye, leg.next_hop());
        self.cdrs.push(crate::cdr::CdrRecord {
            call_id: leg.call_id.to_string(),
            b_call_id: String::new(),
            token: super::parse_tag(&leg.local_tag)
                .map(|(t, _)| format!("{t:016x}"))
                .unwrap_or_default(),
            caller: caller.to_string(),
            callee: callee.to_string(),
            trunk: None,
            start_ms: start_ms as i64,
            answer_ms: Some(start_ms as i64),
            end_ms: env.now_ms as i64,
            duration_ms: env.now_ms.saturating_sub(start_ms) as i64,
            end_reason: reason.into(),
            recovered: true,
            node: env.node.to_string(),
            media: None,
            transfer_of: None,
        });
    }

    /// Re-bind results since the last call.
    pub fn take_rebind_outcomes(&mut self) -> Vec<(u64, Outcome)> {
        std::mem::take(&mut self.rebind_outcomes)
    }

    /// Calls still being re-bound.
    pub fn rebinding(&self) -> usize {
        self.calls.values().filter(|c| c.rebind.is_some()).count()
    }
}

impl Call {
    /// Whether a message's Call-ID belongs to one of this call's legs.
    pub fn has_call_id(&self, call_id: &str) -> bool {
        *self.a.call_id == *call_id || self.b.as_ref().is_some_and(|b| *b.call_id == *call_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejecting_answer_zeroes_ports() {
        let offer = Bytes::from_static(
            b"v=0\r\nm=audio 4000 RTP/AVP 0 8\r\na=sendrecv\r\nm=video 5000 RTP/AVP 31\r\n",
        );
        let a = rejecting_answer(&offer);
        assert_eq!(
            &a[..],
            b"v=0\r\nm=audio 0 RTP/AVP 0 8\r\na=sendrecv\r\nm=video 0 RTP/AVP 31\r\n"
        );
    }
}
