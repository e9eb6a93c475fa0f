//! Non-INVITE client transaction (RFC 3261 §17.1.2, Figure 6).

use std::time::Duration;

use bytes::Bytes;

use super::client_invite::Up;
use super::ctx::Ctx;
use super::timer::Timer;
use crate::sip::Response;

/// States of Figure 6.
#[derive(Debug)]
pub(crate) enum State {
    /// Request sent; Timer E retransmits (UDP), doubling up to T2.
    Trying { interval: Duration },
    /// A provisional arrived; retransmit every T2.
    Proceeding,
    /// A final arrived; Timer K absorbs retransmissions.
    Completed,
    /// Done.
    Terminated,
}

/// A non-INVITE client transaction.
#[derive(Debug)]
pub(crate) struct ClientNonInvite {
    pub(crate) state: State,
    request: Bytes,
}

impl ClientNonInvite {
    /// Start: send, arm E (UDP) and F.
    pub(crate) fn start(bytes: Bytes, ctx: &mut Ctx<'_>) -> Self {
        ctx.send(bytes.clone());
        if ctx.unreliable() {
            ctx.arm(Timer::E, ctx.timers.t1);
        }
        ctx.arm(Timer::F, ctx.timers.t64());
        Self {
            state: State::Trying {
                interval: ctx.timers.t1,
            },
            request: bytes,
        }
    }

    /// A response matched.
    pub(crate) fn on_response(&mut self, resp: Response, ctx: &mut Ctx<'_>) -> Up {
        match self.state {
            State::Trying { .. } | State::Proceeding => {
                if resp.status < 200 {
                    self.state = State::Proceeding;
                } else {
                    ctx.disarm(Timer::E);
                    ctx.disarm(Timer::F);
                    ctx.arm(Timer::K, ctx.timers.t4_or_zero(ctx.flow.proto));
                    self.state = State::Completed;
                }
                Up::Response(resp)
            }
            State::Completed | State::Terminated => Up::Nothing,
        }
    }

    /// A timer fired.
    pub(crate) fn on_timer(&mut self, t: Timer, ctx: &mut Ctx<'_>) -> Up {
        match (t, &self.state) {
            (Timer::E, State::Trying { interval }) => {
                let next = (*interval * 2).min(ctx.timers.t2);
                ctx.send(self.request.clone());
                ctx.arm(Timer::E, next);
                self.state = State::Trying { interval: next };
                Up::Nothing
            }
            (Timer::E, State::Proceeding) => {
                ctx.send(self.request.clone());
                ctx.arm(Timer::E, ctx.timers.t2);
                Up::Nothing
            }
            (Timer::F, State::Trying { .. } | State::Proceeding) => {
                ctx.disarm(Timer::E);
                self.state = State::Terminated;
                Up::Timeout
            }
            (Timer::K, State::Completed) => {
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
