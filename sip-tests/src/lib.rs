//! Test harness for Understudy: an in-process server on loopback and a scriptable SIP user
//! agent, used by the integration tests in `tests/` (one binary, `tests/main.rs`).
//!
//! # Layout
//! - [`server`]: [`TestServer`] starts `understudy::node::run` on `127.0.0.1:0` with a temporary
//!   state directory (CDR database inside) and short timers (T1 = 50 ms), exposes its SIP and
//!   admin addresses, polls `/status`, and stops the node so that CDRs are flushed.
//! - [`ua`]: [`Ua`], a test user agent over a real UDP socket. A background task answers what
//!   a phone answers by itself (retransmissions, in-dialog BYE/re-INVITE/OPTIONS/INFO, CANCEL,
//!   digest challenges, ACK for 2xx) and queues every message it receives; tests drive it with
//!   verbs (`register`, `invite`, `bye`, `cancel`, `reinvite`) and read its queue with
//!   [`Ua::expect`].
//! - [`cluster`]: [`cluster::Pair`], two real `understudy` processes (main + stand-by) with
//!   generated configs, for pair and takeover tests (kill -9, SIGTERM, admin API polling).
//! - [`raw`]: [`RawClient`], a bare socket that sends arbitrary bytes and collects what comes
//!   back, using an OPTIONS probe as a barrier instead of waiting a fixed time.
//! - [`netns`]: one test run again inside a fresh network namespace.
//! - [`sdp`]: minimal SDP offers and answers.
//! - [`rtp`]: an RTP sender and receiver (50 packets/s, loss and longest gap).
//!
//! Everything runs in real time on loopback (STYLE §4.4.3): waiting means awaiting a message
//! with a timeout, never sleeping.

#![warn(missing_docs)]

pub mod certs;
pub mod cluster;
pub mod kamailio;
pub mod natbed;
pub mod netns;
pub mod raw;
pub mod rtp;
pub mod sdp;
pub mod server;
pub mod sipp;
pub mod ua;
pub mod wan;

use std::time::Duration;

pub use raw::RawClient;
pub use server::{Counts, TestServer, trunk};
pub use ua::{
    Answer, Dialog, DialogId, DialogState, Incoming, Outgoing, Peer, Policy, QueryReply, Reply,
    Transport, Ua,
};

/// How long an expectation waits by default before it fails.
pub const WAIT: Duration = Duration::from_secs(5);
