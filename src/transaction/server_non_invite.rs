//! Non-INVITE server transaction (RFC 3261 §17.2.2, Figure 8).

use bytes::Bytes;

use super::ctx::Ctx;
use super::timer::Timer;

/// States of Figure 8.
#[derive(Debug)]
pub(crate) enum State {
    /// Request passed to the TU; retransmissions are absorbed silently.
    Trying,
    /// A provisional was sent; retransmissions get it again.
    Proceeding { last: Bytes },
    /// The final was sent; retransmissions get it again until Timer J.
    Completed { response: Bytes },
    /// Done.
    Terminated,
}

/// A non-INVITE server transaction.
#[derive(Debug)]
pub(crate) struct ServerNonInvite {
    pub(crate) state: State,
}

impl ServerNonInvite {
    /// A new transaction in Trying.
    pub(crate) fn new() -> Self {
        Self {
            state: State::Trying,
        }
    }

    /// The request was retransmitted.
    pub(crate) fn on_retransmission(&mut self, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Proceeding { last } => ctx.send(last.clone()),
            State::Completed { response } => ctx.send(response.clone()),
            _ => {}
        }
    }

    /// The TU sends a response.
    pub(crate) fn respond(&mut self, status: u16, bytes: Bytes, ctx: &mut Ctx<'_>) {
        match self.state {
            State::Trying | State::Proceeding { .. } => {
                ctx.send(bytes.clone());
                if status < 200 {
                    self.state = State::Proceeding { last: bytes };
                } else {
                    ctx.arm(Timer::J, ctx.timers.j(ctx.flow.proto));
                    self.state = State::Completed { response: bytes };
                }
            }
            State::Completed { .. } | State::Terminated => {}
        }
    }

    /// A timer fired.
    pub(crate) fn on_timer(&mut self, t: Timer) {
        if let (Timer::J, State::Completed { .. }) = (t, &self.state) {
            self.state = State::Terminated;
        }
    }

    /// Whether a final response has been sent.
    pub(crate) fn has_final(&self) -> bool {
        matches!(self.state, State::Completed { .. } | State::Terminated)
    }

    /// Whether the transaction has ended.
    pub(crate) fn is_terminated(&self) -> bool {
        matches!(self.state, State::Terminated)
    }
}
