//! Media relay (`[media] mode = "relay"`): port pairs per leg from `rtp_ports`, SDP rewritten
//! to our address, RTP/RTCP relayed between the legs with symmetric latching, and per-stream
//! counters (packets, loss, RFC 3550 jitter) for `/calls` and the CDR. Which source a leg's
//! media is accepted from is `latch`'s rule (hijack-proof symmetric latching).
//!
//! `sdp`, `ports`, `latch` and `stats` are sans-IO; `relay` owns the sockets.

pub mod latch;
pub mod ports;
pub mod relay;
pub mod sdp;
pub mod stats;

pub use ports::PortPool;
pub use relay::Relay;
