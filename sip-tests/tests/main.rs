//! Integration tests: Understudy in-process on loopback, driven by test UAs over real
//! sockets (STYLE §4.4.3). One test binary; one module per area.

mod admin_openapi;
mod bounded;
mod calls;
mod cdr_postgres;
mod common;
mod crossing;
mod dns_srv;
mod flood;
mod hep;
mod malformed;
mod media;
mod metrics;
mod options;
mod pair;
mod prack;
mod ready;
mod registration;
mod regsync_scale;
mod reload;
mod routing;
mod smart_ua;
mod takeover;
mod tls_load;
mod tls_trunk;
mod torture;
mod transfer;
mod transfer_trunk;
mod ua;
