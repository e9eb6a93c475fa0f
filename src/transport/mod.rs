//! SIP transports: UDP and TCP listeners, the TCP connection table, and sending to a flow
//! (RFC 3261 §18). The only module that owns SIP sockets.

mod addr;

pub use addr::{ConnId, Flow, Proto, Transmit};
