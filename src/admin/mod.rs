//! The admin API: an HTTP/1.1 JSON interface on a separate (by default loopback) listener,
//! used by the CLI (`understudy status`, `calls`, `switchover`) and by monitoring.
//!
//! [`http`] is the transport: a small server and client on tokio with bearer-token checks. The
//! routes (`/status`, `/calls`, `/registrations`, `/metrics`, `POST /switchover`) live beside it.

pub mod http;
