//! INVITE client transaction (RFC 3261 §17.1.1, Figure 5, as updated by RFC 6026 §7.2).

use std::time::Duration;

use bytes::Bytes;

use super::ctx::Ctx;
use super::timer::Timer;
use crate::sip::{Headers, Method, Request, Response, SipMessage};

/// States of Figure 5 (with RFC 6026's Accepted).
#[derive(Debug)]
pub(crate) enum State {
    /// Request sent, nothing heard; Timer A retransmits over UDP.
    Calling { interval: Duration },
    /// A provisional response arrived.
    Proceeding,
    /// A 2xx arrived; later 2xx retransmissions still go to the TU until Timer M.
    Accepted,
    /// A non-2xx final arrived and was ACKed; Timer D absorbs its retransmissions.
    Completed { ack: Bytes },
    /// Done.
    Terminated,
}

/// What the layer should tell the transaction user.
#[derive(Debug)]
pub(crate) enum Up {
    Nothing,
    Response(Response),
    Timeout,
}

/// An INVITE client transaction.
#[derive(Debug)]
pub(crate) struct ClientInvite {
    pub(crate) state: State,
    request: Bytes,
    /// The headers an ACK for a non-2xx copies (§17.1.1.3).
    ack_base: Request,
}

impl ClientInvite {
    /// Start: send the request, arm A (UDP) and B.
    pub(crate) fn start(req: &Request, bytes: Bytes, ctx: &mut Ctx<'_>) -> Self {
        ctx.send(bytes.clone());
        if ctx.unreliable() {
            ctx.arm(Timer::A, ctx.timers.t1);
        }
        ctx.arm(Timer::B, ctx.timers.t64());
        let mut ack = Request::new(Method::Ack, req.uri.clone());
        let mut h = Headers::new();
        if let Some(v) = req.headers.get(&crate::sip::HeaderName::Via) {
            h.push(crate::sip::HeaderName::Via, v);
        }
        for name in [
            crate::sip::HeaderName::Route,
            crate::sip::HeaderName::From,
            crate::sip::HeaderName::CallId,
            crate::sip::HeaderName::MaxForwards,
        ] {
            for v in req.headers.get_all(&name) {
                h.push(name.clone(), v);
            }
        }
        if let Ok(c) = req.cseq() {
            h.push(crate::sip::HeaderName::CSeq, format!("{} ACK", c.seq));
        }
        ack.headers = h;
        Self {
            state: State::Calling {
                interval: ctx.timers.t1,
            },
            request: bytes,
            ack_base: ack,
        }
    }

    fn ack_for(&self, resp: &Response) -> Bytes {
        let mut ack = self.ack_base.clone();
        if let Some(to) = resp.headers.get(&crate::sip::HeaderName::To) {
            ack.headers.push(crate::sip::HeaderName::To, to);
        }
        ack.to_bytes()
    }

    /// A response matched this transaction.
    pub(crate) fn on_response(&mut self, resp: Response, ctx: &mut Ctx<'_>) -> Up {
        match &self.state {
            State::Calling { .. } | State::Proceeding => {
                if resp.status < 200 {
                    ctx.disarm(Timer::A);
                    ctx.disarm(Timer::B);
                    self.state = State::Proceeding;
                    Up::Response(resp)
                } else if resp.status < 300 {
                    ctx.disarm(Timer::A);
                    ctx.disarm(Timer::B);
                    ctx.arm(Timer::M, ctx.timers.t64());
                    self.state = State::Accepted;
                    // Nothing is retransmitted or ACKed by the transaction from here on.
                    self.request = Bytes::new();
                    self.ack_base = Request::new(Method::Ack, String::new());
                    Up::Response(resp)
                } else {
                    ctx.disarm(Timer::A);
                    ctx.disarm(Timer::B);
                    let ack = self.ack_for(&resp);
                    ctx.send(ack.clone());
                    ctx.arm(Timer::D, ctx.timers.d(ctx.flow.proto));
                    self.state = State::Completed { ack };
                    self.request = Bytes::new();
                    Up::Response(resp)
                }
            }
            State::Accepted => {
                if (200..300).contains(&resp.status) {
                    Up::Response(resp)
                } else {
                    Up::Nothing
                }
            }
            State::Completed { ack } => {
                if resp.status >= 300 {
                    let ack = ack.clone();
                    ctx.send(ack);
                }
                Up::Nothing
            }
            State::Terminated => Up::Nothing,
        }
    }

    /// A timer of this transaction fired.
    pub(crate) fn on_timer(&mut self, t: Timer, ctx: &mut Ctx<'_>) -> Up {
        match (t, &self.state) {
            (Timer::A, State::Calling { interval }) => {
                let next = *interval * 2;
                ctx.send(self.request.clone());
                ctx.arm(Timer::A, next);
                self.state = State::Calling { interval: next };
                Up::Nothing
            }
            (Timer::B, State::Calling { .. }) => {
                ctx.disarm(Timer::A);
                self.state = State::Terminated;
                Up::Timeout
            }
            (Timer::D, State::Completed { .. }) | (Timer::M, State::Accepted) => {
                self.state = State::Terminated;
                Up::Nothing
            }
            _ => Up::Nothing,
        }
    }

    /// Whether the transaction has ended.
    pub(crate) fn is_terminated(&self) -> bool {
        matches!(self.state, State::Terminated)
    }
}
