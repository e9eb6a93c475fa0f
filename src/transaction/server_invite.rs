//! INVITE server transaction (RFC 3261 §17.2.1, Figure 7, as updated by RFC 6026 §7.1), with
//! the UAS core's 2xx retransmission (RFC 3261 §13.3.1.4) kept here in the Accepted state.

use std::time::Duration;

use bytes::Bytes;

use super::ctx::Ctx;
use super::timer::Timer;

/// States of Figure 7 (with RFC 6026's Accepted).
#[derive(Debug)]
pub(crate) enum State {
    /// Waiting for the TU's final response; `last` is the latest provisional sent.
    Proceeding { last: Option<Bytes> },
    /// A 2xx was sent; it is retransmitted until the ACK arrives or Timer L fires.
    Accepted {
        response: Bytes,
        interval: Duration,
        acked: bool,
    },
    /// A non-2xx final was sent; Timer G retransmits it until ACK or Timer H.
    Completed { response: Bytes, interval: Duration },
    /// ACK received; Timer I absorbs ACK retransmissions.
    Confirmed,
    /// Done.
    Terminated,
}

/// What the layer should tell the transaction user.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Up {
    Nothing,
    /// No ACK arrived for the final response (Timer H, or Timer L without an ACK for a 2xx).
    NoAck,
}

/// An INVITE server transaction.
#[derive(Debug)]
pub(crate) struct ServerInvite {
    pub(crate) state: State,
}

impl ServerInvite {
    /// A new transaction in Proceeding.
    pub(crate) fn new() -> Self {
        Self {
            state: State::Proceeding { last: None },
        }
    }

    /// The request was retransmitted.
    pub(crate) fn on_retransmission(&mut self, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Proceeding { last: Some(b) } => ctx.send(b.clone()),
            State::Completed { response, .. } => ctx.send(response.clone()),
            State::Accepted {
                response, acked, ..
            } if !acked => ctx.send(response.clone()),
            _ => {}
        }
    }

    /// An ACK matched this transaction (a non-2xx ACK has the INVITE's branch).
    pub(crate) fn on_ack(&mut self, ctx: &mut Ctx<'_>) {
        if let State::Completed { .. } = self.state {
            ctx.disarm(Timer::G);
            ctx.disarm(Timer::H);
            ctx.arm(Timer::I, ctx.timers.t4_or_zero(ctx.flow.proto));
            self.state = State::Confirmed;
        }
    }

    /// The ACK for our 2xx arrived (matched by dialog, not branch).
    pub(crate) fn on_2xx_ack(&mut self, ctx: &mut Ctx<'_>) {
        if let State::Accepted {
            acked, response, ..
        } = &mut self.state
        {
            *acked = true;
            // The 2xx is never sent again once ACKed: free it.
            *response = Bytes::new();
            ctx.disarm(Timer::Retransmit2xx);
        }
    }

    /// The TU sends a response.
    pub(crate) fn respond(&mut self, status: u16, bytes: Bytes, ctx: &mut Ctx<'_>) {
        let State::Proceeding { .. } = self.state else {
            // 2xx retransmissions from the TU and late responses are absorbed.
            return;
        };
        ctx.send(bytes.clone());
        if status < 200 {
            self.state = State::Proceeding { last: Some(bytes) };
        } else if status < 300 {
            if ctx.unreliable() {
                ctx.arm(Timer::Retransmit2xx, ctx.timers.t1);
            }
            ctx.arm(Timer::L, ctx.timers.t64());
            self.state = State::Accepted {
                response: bytes,
                interval: ctx.timers.t1,
                acked: false,
            };
        } else {
            if ctx.unreliable() {
                ctx.arm(Timer::G, ctx.timers.t1);
            }
            ctx.arm(Timer::H, ctx.timers.t64());
            self.state = State::Completed {
                response: bytes,
                interval: ctx.timers.t1,
            };
        }
    }

    /// A timer fired.
    pub(crate) fn on_timer(&mut self, t: Timer, ctx: &mut Ctx<'_>) -> Up {
        match (t, &mut self.state) {
            (Timer::G, State::Completed { response, interval }) => {
                let next = (*interval * 2).min(ctx.timers.t2);
                let r = response.clone();
                *interval = next;
                ctx.send(r);
                ctx.arm(Timer::G, next);
                Up::Nothing
            }
            (
                Timer::Retransmit2xx,
                State::Accepted {
                    response,
                    interval,
                    acked: false,
                },
            ) => {
                let next = (*interval * 2).min(ctx.timers.t2);
                let r = response.clone();
                *interval = next;
                ctx.send(r);
                ctx.arm(Timer::Retransmit2xx, next);
                Up::Nothing
            }
            (Timer::H, State::Completed { .. }) => {
                ctx.disarm(Timer::G);
                self.state = State::Terminated;
                Up::NoAck
            }
            (Timer::L, State::Accepted { acked, .. }) => {
                let acked = *acked;
                ctx.disarm(Timer::Retransmit2xx);
                self.state = State::Terminated;
                if acked { Up::Nothing } else { Up::NoAck }
            }
            (Timer::I, State::Confirmed) => {
                self.state = State::Terminated;
                Up::Nothing
            }
            _ => Up::Nothing,
        }
    }

    /// Whether a final response has been sent.
    pub(crate) fn has_final(&self) -> bool {
        !matches!(self.state, State::Proceeding { .. })
    }

    /// Whether the transaction has ended.
    pub(crate) fn is_terminated(&self) -> bool {
        matches!(self.state, State::Terminated)
    }
}
