//! The SIP message layer: parse, serialize, typed header access, TCP stream framing,
//! validation mapped to response codes, and digest authentication (RFC 3261 §7, §18.3, §20,
//! §22, §25; RFC 2617; RFC 8760).
//!
//! Datagrams are parsed by our own parser (`wire`); TCP and TLS streams are framed by the
//! parser crate (`sipx-sip`), which is also the reference the `message` fuzz target holds
//! `wire` to. This is the only module that imports the crate: everything above works on the
//! owned types defined here.

mod addr;
mod build;
pub mod digest;
mod message;
pub(crate) mod params;
mod parse;
mod replaces;
mod uri;
mod validate;
mod via;
mod wire;

pub use addr::{NameAddr, tag_param};
pub use build::{new_branch, new_tag, response_to};
pub use message::{
    CSeq, Header, HeaderError, HeaderName, Headers, Message, Method, Request, Response, SipMessage,
    reason_phrase,
};
pub use params::Params;
pub use parse::{
    ParseError, Parsed, Salvaged, StreamFramer, Version, parse_datagram, parse_datagram_reference,
    salvage_request,
};
pub use replaces::Replaces;
pub use uri::{Uri, UriError, unescape};
pub use validate::{Rejection, validate, validate_request, validate_response};
pub use via::Via;

#[cfg(test)]
mod tests;
