//! The last line of defence: one bad message costs at most that message and the call it
//! touched, never the node.
//!
//! The protocol layers are written not to panic on network data (clippy forbids unchecked
//! indexing, slicing, `unwrap` and `panic!` in `src/`, and fuzzers drive every layer). Should a
//! future bug panic anyway, the driver calls [`Server::handle_inbound_guarded`] and
//! [`Server::handle_timeout_guarded`], which catch the unwind and then:
//! - count it (`understudy_internal_errors_total` in `/metrics`),
//! - log one error line naming the message's first line and Call-ID,
//! - end the call the message belonged to (found by its Call-ID): BYE to both legs and a CDR
//!   with `end_reason = internal_error`, since its state may be half-updated; if even that
//!   panics, the call is forgotten without a CDR (and the log says so).
//!
//! Every other call, registration and transaction stays as it was, and the next event is
//! handled normally.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::Server;
use crate::b2bua::Side;
use crate::net::Inbound;
use crate::sip::{Message, SipMessage};

/// What is known about an event before it is handled, for the log line and the teardown.
#[derive(Debug, Default)]
pub(super) struct Context {
    first_line: String,
    call_id: Option<String>,
}

impl Context {
    pub(super) fn of(inbound: &Inbound) -> Self {
        match inbound {
            Inbound::Message(p, flow) => {
                let first_line = match &p.message {
                    Message::Request(r) => format!("{} {} from {flow}", r.method.as_str(), r.uri),
                    Message::Response(r) => format!("{} {} from {flow}", r.status, r.reason),
                };
                Self {
                    first_line,
                    call_id: p.message.call_id().ok().map(str::to_string),
                }
            }
            Inbound::Malformed { raw, flow, .. } => {
                let line = raw
                    .split(|&b| b == b'\r' || b == b'\n')
                    .next()
                    .unwrap_or_default();
                Self {
                    first_line: format!(
                        "{} from {flow} (malformed)",
                        String::from_utf8_lossy(line)
                            .chars()
                            .take(120)
                            .collect::<String>()
                    ),
                    call_id: None,
                }
            }
            Inbound::Unreachable(flow) => Self {
                first_line: format!("{flow} unreachable"),
                call_id: None,
            },
        }
    }
}

fn what(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl Server {
    /// [`Server::handle_inbound`] behind the last line of defence (module docs).
    pub fn handle_inbound_guarded(&mut self, now: Instant, inbound: Inbound) {
        let context = Context::of(&inbound);
        self.contained(now, context, |s| s.handle_inbound(now, inbound));
    }

    /// [`Server::handle_timeout`] behind the last line of defence (module docs).
    pub fn handle_timeout_guarded(&mut self, now: Instant) {
        let context = Context {
            first_line: "timer".into(),
            call_id: None,
        };
        self.contained(now, context, |s| s.handle_timeout(now));
    }

    /// Run `f`; if it panics, contain the damage as the module docs say.
    pub(super) fn contained(&mut self, now: Instant, context: Context, f: impl FnOnce(&mut Self)) {
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(self))) else {
            return;
        };
        self.counters.internal_errors += 1;
        let token = context
            .call_id
            .as_deref()
            .and_then(|c| self.b2bua.token_of_call_id(c));
        tracing::error!(
            event = context.first_line,
            call_id = context.call_id.as_deref().unwrap_or(""),
            error = what(payload.as_ref()),
            call = token.map(|t| format!("{t:016x}")),
            "internal error while handling an event; ending only the call it touched"
        );
        let Some(token) = token else {
            return;
        };
        let ended = catch_unwind(AssertUnwindSafe(|| {
            let (mut env, b) = self.env_parts(now);
            b.finish(&mut env, token, "internal_error", &[Side::A, Side::B]);
        }));
        if ended.is_err() {
            tracing::error!(
                call = format!("{token:016x}"),
                "the call could not be ended cleanly either; forgotten without a CDR"
            );
            self.b2bua.discard(token);
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_the_message() {
        let raw = bytes::Bytes::from_static(b"BYE sip:x SIP/2.0\r\nVia: broken");
        let flow = crate::net::Flow::udp("127.0.0.1:5091".parse().expect("addr"));
        let c = Context::of(&Inbound::Malformed {
            raw,
            error: "x".into(),
            flow,
        });
        assert!(
            c.first_line.starts_with("BYE sip:x SIP/2.0 from "),
            "{}",
            c.first_line
        );
        assert_eq!(c.call_id, None);
    }
}
