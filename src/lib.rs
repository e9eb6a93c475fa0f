//! Understudy: a SIP back-to-back user agent that runs as a main / stand-by pair.
pub mod admin;
pub mod b2bua;
pub mod capture;
pub mod cdr;
pub mod config;
pub mod dialog;
pub mod dns;
pub mod entropy;
#[doc(hidden)]
pub mod fuzzing;
pub mod media;
pub mod metrics;
pub mod net;
pub mod node;
pub mod pair;
pub mod registrar;
pub mod server;
#[doc(hidden)]
pub mod sim;
pub mod sip;
pub mod tls;
pub mod transaction;
pub mod transport;
pub mod trunkreg;
