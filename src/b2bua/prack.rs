//! Reliable provisional responses (RFC 3262), hop by hop: each leg's reliability is its own.
//!
//! - Leg B: our INVITE says `Supported: 100rel`; a provisional that requires it is PRACKed on
//!   that fork's early dialog, once per RSeq (a retransmission is neither PRACKed again nor
//!   relayed again: our PRACK has its own retransmissions).
//! - Leg A: when the caller supports 100rel, a provisional carrying SDP (early media) goes to
//!   it reliably (every provisional when it requires 100rel) — `Require: 100rel` and an RSeq, sent again from T1 doubling until its PRACK
//!   arrives — one at a time (§3); later ones wait their turn. The PRACK is answered 200; one
//!   that matches nothing outstanding gets 481. After 64 × T1 without a PRACK the INVITE is
//!   refused with 504 and the call ends (§3: "SHOULD reject the original request with a 5xx").

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{B2bua, Env, Purpose, TimerKind};
use crate::dialog::Dialog;
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, response_to};
use crate::transaction::ServerTxId;

/// Provisionals that may wait for the one being acknowledged; more are dropped (only the
/// latest early SDP matters to the caller).
const QUEUE: usize = 4;

/// A reliable provisional to the caller that waits for its PRACK.
#[derive(Debug)]
struct Unacked {
    rseq: u32,
    resp: Response,
    interval: Duration,
    next: Instant,
    give_up: Instant,
}

/// Leg A's reliable provisionals.
#[derive(Debug)]
pub struct ReliableA {
    next_rseq: u32,
    /// The caller's INVITE CSeq (the RAck names it).
    invite_cseq: u32,
    unacked: Option<Unacked>,
    queue: VecDeque<Response>,
    /// The last RSeq acknowledged (a PRACK retransmission gets 200 again).
    acked: Option<u32>,
    /// The caller requires 100rel: every provisional goes reliably, not only early media.
    required: bool,
}

impl ReliableA {
    /// Leg A's reliability for a caller's INVITE that supports or requires 100rel; `None`
    /// when it does neither.
    pub fn for_invite(req: &Request) -> Option<Box<Self>> {
        let supports = req.has_token(&HeaderName::Supported, "100rel")
            || req.has_token(&HeaderName::Require, "100rel");
        if !supports {
            return None;
        }
        // RFC 3262 §3: the first RSeq is random in 1..2^31.
        let first = crate::entropy::random::<u32>() % 0x7fff_0000 + 1;
        Some(Box::new(Self {
            next_rseq: first,
            invite_cseq: req.cseq().map_or(0, |c| c.seq),
            unacked: None,
            queue: VecDeque::new(),
            acked: None,
            required: req.has_token(&HeaderName::Require, "100rel"),
        }))
    }

    /// The CSeq number of the caller's INVITE.
    pub fn invite_cseq(&self) -> u32 {
        self.invite_cseq
    }

    /// A provisional waits for its PRACK.
    pub fn pending(&self) -> bool {
        self.unacked.is_some()
    }
}

/// The RAck header's RSeq and CSeq number for an INVITE (`rseq cseq INVITE`).
fn rack(req: &Request) -> Option<(u32, u32)> {
    let v = req.headers.get(&HeaderName::Rack)?;
    let mut it = v.split_whitespace();
    let rseq = it.next()?.parse().ok()?;
    let cseq = it.next()?.parse().ok()?;
    it.next()
        .is_some_and(|m| m.eq_ignore_ascii_case("INVITE"))
        .then_some((rseq, cseq))
}

impl B2bua {
    /// Send provisional `r` to the caller on `sid`: reliably when the caller supports it and
    /// `r` carries SDP, else as it is.
    pub(super) fn provisional_to_a(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        sid: ServerTxId,
        r: Response,
    ) {
        let Some(rel) = self
            .calls
            .get_mut(&token)
            .and_then(|c| c.reliable.as_deref_mut())
        else {
            let _ = env.tx.respond(env.now, sid, &r);
            return;
        };
        if r.body.is_empty() && !rel.required {
            let _ = env.tx.respond(env.now, sid, &r);
            return;
        }
        if rel.unacked.is_some() {
            if rel.queue.len() >= QUEUE {
                rel.queue.pop_front();
            }
            rel.queue.push_back(r);
            return;
        }
        self.send_reliable(env, token, sid, r);
    }

    fn send_reliable(&mut self, env: &mut Env<'_>, token: u64, sid: ServerTxId, mut r: Response) {
        let Some(rel) = self
            .calls
            .get_mut(&token)
            .and_then(|c| c.reliable.as_deref_mut())
        else {
            return;
        };
        let rseq = rel.next_rseq;
        rel.next_rseq = rel.next_rseq.wrapping_add(1);
        r.headers.push(HeaderName::Require, "100rel");
        r.headers.push(HeaderName::Rseq, rseq.to_string());
        let _ = env.tx.respond(env.now, sid, &r);
        let t1 = Duration::from_millis(env.cfg.timers.t1_ms.max(1));
        let next = env.now + t1;
        rel.unacked = Some(Unacked {
            rseq,
            resp: r,
            interval: t1,
            next,
            give_up: env.now + t1 * 64,
        });
        self.timers
            .push(Reverse((next, token, TimerKind::Reliable)));
    }

    /// The caller's PRACK (in the early dialog, or after the answer).
    pub(super) fn on_prack(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        id: ServerTxId,
        req: &Request,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let sid = call.a_invite.as_deref().map(|(sid, _)| *sid);
        let matched = match (call.reliable.as_deref_mut(), rack(req)) {
            (Some(rel), Some((rseq, cseq))) if cseq == rel.invite_cseq => {
                if rel.unacked.as_ref().is_some_and(|u| u.rseq == rseq) {
                    rel.unacked = None;
                    rel.acked = Some(rseq);
                    true
                } else {
                    rel.acked == Some(rseq)
                }
            }
            _ => false,
        };
        let status = if matched { 200 } else { 481 };
        let _ = env.tx.respond(env.now, id, &response_to(req, status, None));
        if !matched {
            return;
        }
        let next = call
            .reliable
            .as_deref_mut()
            .filter(|r| r.unacked.is_none())
            .and_then(|r| r.queue.pop_front());
        if let (Some(r), Some(sid)) = (next, sid) {
            self.send_reliable(env, token, sid, r);
        }
    }

    /// Timer: send the unacknowledged provisional again, or give up after 64 × T1.
    pub(super) fn reliable_retransmit(&mut self, env: &mut Env<'_>, token: u64) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some((sid, _)) = call.a_invite.as_deref() else {
            // Answered or ended: nothing is owed any more.
            if let Some(rel) = call.reliable.as_deref_mut() {
                rel.unacked = None;
                rel.queue.clear();
            }
            return;
        };
        let sid = *sid;
        let Some(u) = call
            .reliable
            .as_deref_mut()
            .and_then(|r| r.unacked.as_mut())
        else {
            return;
        };
        if env.now < u.next {
            return;
        }
        if env.now >= u.give_up {
            tracing::warn!(
                token = format!("{token:016x}"),
                "the caller never acknowledged a reliable provisional response: call refused \
                 with 504 (RFC 3262 §3)"
            );
            if let Some((sid, req)) = call.a_invite.take().map(|b| *b) {
                let mut r = response_to(&req, 504, Some(&call.a.local_tag));
                r.reason = "Reliable Provisional Not Acknowledged".into();
                let _ = env.tx.respond(env.now, sid, &r);
            }
            call.cancelled = true;
            self.cancel_forks(env, token, None);
            self.maybe_finish_unanswered(env, token);
            return;
        }
        let _ = env.tx.respond(env.now, sid, &u.resp);
        u.interval = u.interval.saturating_mul(2);
        u.next = env.now + u.interval;
        let next = u.next;
        self.timers
            .push(Reverse((next, token, TimerKind::Reliable)));
    }

    /// A provisional from fork `fi` of the B leg: PRACK it when it is reliable. `false` when
    /// it is a retransmission of one already PRACKed (not to be relayed again).
    pub(super) fn prack_b(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        fi: usize,
        resp: &Response,
    ) -> bool {
        if !resp.has_token(&HeaderName::Require, "100rel") {
            return true;
        }
        let Some(rseq) = resp.header_u32(&HeaderName::Rseq).and_then(Result::ok) else {
            // RFC 3262 §4: a reliable provisional without a valid RSeq is discarded.
            return false;
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return false;
        };
        let invite_cseq = call.b_invite_cseq;
        let Some(fork) = call.forks.get_mut(fi) else {
            return false;
        };
        if fork.rseq.is_some_and(|last| rseq <= last) {
            return false;
        }
        let Some(mut early) = Dialog::as_uac(&fork.request, resp, fork.flow) else {
            return false;
        };
        early.local_cseq = early.local_cseq.max(fork.prack_cseq);
        let mut prack = early.request(Method::Prack, env.me, None);
        prack
            .headers
            .push(HeaderName::Rack, format!("{rseq} {invite_cseq} INVITE"));
        fork.rseq = Some(rseq);
        fork.prack_cseq = early.local_cseq;
        if let Ok(tx) = env.tx.send_request(env.now, &prack, early.next_hop()) {
            self.client.insert(tx, (token, Purpose::Prack));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rack_names_rseq_and_the_invites_cseq() {
        let mut r = Request::new(Method::Prack, "sip:x@h");
        r.headers.push(HeaderName::Rack, "776656 1 INVITE");
        assert_eq!(rack(&r), Some((776656, 1)));
        let mut bad = Request::new(Method::Prack, "sip:x@h");
        bad.headers.push(HeaderName::Rack, "776656 1 BYE");
        assert_eq!(rack(&bad), None);
        bad.headers = Default::default();
        bad.headers.push(HeaderName::Rack, "x 1 INVITE");
        assert_eq!(rack(&bad), None);
    }
}
