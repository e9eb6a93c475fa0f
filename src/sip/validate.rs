//! Request and response checks after parsing, mapped to a response status in one place
//! (RFC 3261 §8.2, §16.3; RFC 4475 §3.1.2, §3.3).

use super::addr::{Checked, NameAddr};
use super::message::{
    CSeq, HeaderError, HeaderName, Message, Method, Request, Response, SipMessage,
};
use super::parse::{Parsed, Version};
use super::uri::Uri;
use super::via::{Checked as ViaChecked, Via};

/// Why a message cannot be acted on, with the status a UAS answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    /// Status to answer with (responses are never answered: they are dropped).
    pub status: u16,
    /// Reason phrase explaining the fault.
    pub reason: String,
}

impl Rejection {
    fn bad(reason: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: reason.into(),
        }
    }
}

/// Headers that may appear at most once (RFC 3261 §7.3.1, RFC 4475 §3.3.8).
const SINGLE: [HeaderName; 8] = [
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::From,
    HeaderName::To,
    HeaderName::MaxForwards,
    HeaderName::ContentType,
    HeaderName::Expires,
    HeaderName::ContentLength,
];

/// Check a parsed message. `Ok` means the message is well-formed enough to act on.
pub fn validate(p: &Parsed) -> Result<(), Rejection> {
    match &p.message {
        Message::Request(r) => {
            if p.version == Version::Unsupported {
                return Err(Rejection {
                    status: 505,
                    reason: "Version Not Supported".into(),
                });
            }
            validate_request(r)
        }
        Message::Response(r) => {
            if p.version == Version::Unsupported {
                return Err(Rejection::bad("unsupported version in response"));
            }
            validate_response(r)
        }
    }
}

fn common(m: &impl SipMessage) -> Result<CSeq, Rejection> {
    for name in &SINGLE {
        if m.headers().count(name) > 1 {
            return Err(Rejection::bad(format!("repeated {name} header")));
        }
    }
    if m.headers().get(&HeaderName::Via).is_none() {
        return Err(Rejection::bad("missing Via header"));
    }
    for v in m.headers().get_all(&HeaderName::Via) {
        let via =
            Via::check(v).map_err(|e| Rejection::bad(format!("malformed Via header: {e}")))?;
        via_params(via)?;
    }
    m.call_id().map_err(|e| Rejection::bad(e.to_string()))?;
    for (name, label) in [(HeaderName::From, "From"), (HeaderName::To, "To")] {
        tag_param(check_addr(m, &name, label)?.tag, label)?;
    }
    let cseq = m.cseq().map_err(|e| Rejection::bad(e.to_string()))?;
    if let Some(d) = m.headers().get(&HeaderName::Date)
        && !d.trim_end().ends_with("GMT")
    {
        return Err(Rejection::bad(
            "Date header must be in GMT (RFC 3261 §20.17)",
        ));
    }
    Ok(cseq)
}

/// Whether `s` is an RFC 3261 §25.1 `token`: one or more of alphanumerics and `-.!%*_+`'~`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(super::params::is_token_byte)
}

/// Check the address in the header `name` as [`SipMessage::from`] / [`SipMessage::to`] would
/// parse it (with the same errors), without building it.
fn check_addr<'a>(
    m: &'a impl SipMessage,
    name: &HeaderName,
    label: &'static str,
) -> Result<Checked<'a>, Rejection> {
    let v = m
        .headers()
        .get(name)
        .ok_or_else(|| Rejection::bad(HeaderError::Missing(label).to_string()))?;
    NameAddr::check(v).map_err(|e| Rejection::bad(HeaderError::Malformed(label, e).to_string()))
}

/// `tag-param = "tag" EQUAL token` (RFC 3261 §25.1): a tag is present with a token value, or
/// absent. Everything above the facade may then treat a tag as ASCII.
fn tag_param(tag: Option<Option<&str>>, header: &str) -> Result<(), Rejection> {
    match tag {
        None => Ok(()),
        Some(Some(t)) if is_token(t) => Ok(()),
        Some(_) => Err(Rejection::bad(format!("{header} tag is not a token"))),
    }
}

/// The Via parameters RFC 3261 §20.42 and RFC 3581 give a syntax: `branch` and the transport
/// are tokens, `received` an IP address, `rport` empty or a port, `ttl` 0–255.
fn via_params(via: ViaChecked<'_>) -> Result<(), Rejection> {
    if !is_token(via.transport) {
        return Err(Rejection::bad("Via transport is not a token"));
    }
    let mut bad = None;
    // The list was checked to parse: every parameter is seen.
    let _ = super::params::each(via.params, |name, value| {
        let ok = if name.eq_ignore_ascii_case("branch") {
            value.is_some_and(is_token)
        } else if name.eq_ignore_ascii_case("received") {
            value.is_some_and(|v| {
                v.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            })
        } else if name.eq_ignore_ascii_case("rport") {
            value.is_none_or(|v| v.parse::<u16>().is_ok_and(|p| p > 0))
        } else if name.eq_ignore_ascii_case("ttl") {
            value.is_some_and(|v| v.parse::<u8>().is_ok())
        } else {
            true
        };
        if !ok && bad.is_none() {
            bad = Some(name);
        }
    });
    match bad {
        Some(name) => Err(Rejection::bad(format!("malformed Via {name} parameter"))),
        None => Ok(()),
    }
}

/// Check a request (RFC 3261 §8.1.1 required headers, scalar ranges, CSeq method).
pub fn validate_request(r: &Request) -> Result<(), Rejection> {
    let cseq = common(r)?;
    let known = !matches!(r.method, Method::Other(_));
    if cseq.method != r.method {
        return Err(if known {
            Rejection::bad("CSeq method does not match the request line")
        } else {
            Rejection {
                status: 501,
                reason: "Not Implemented".into(),
            }
        });
    }
    if let Some(mf) = r.headers.get(&HeaderName::MaxForwards) {
        match mf.trim().parse::<u32>() {
            Ok(n) if n <= 255 => {}
            _ => return Err(Rejection::bad("Max-Forwards out of range")),
        }
    }
    if let Some(e) = r.headers.get(&HeaderName::Expires)
        && e.trim().parse::<u32>().is_err()
    {
        return Err(Rejection::bad("Expires is not a 32-bit number"));
    }
    if r.headers
        .get(&HeaderName::Contact)
        .is_some_and(|c| c.trim() != "*")
    {
        for c in r.headers.get_all(&HeaderName::Contact) {
            let c = NameAddr::check(c)
                .map_err(|e| Rejection::bad(HeaderError::Malformed("Contact", e).to_string()))?;
            if let Some(e) = super::params::find_value(c.params, "expires")
                && e.parse::<u32>().is_err()
            {
                return Err(Rejection::bad("Contact expires is not a 32-bit number"));
            }
        }
    }
    for rr in r
        .headers
        .get_all(&HeaderName::Route)
        .chain(r.headers.get_all(&HeaderName::RecordRoute))
    {
        NameAddr::check(rr).map_err(|e| Rejection::bad(format!("malformed Route: {e}")))?;
    }
    let uri = Uri::check(&r.uri).map_err(|e| Rejection::bad(format!("Request-URI: {e}")))?;
    if uri.headers {
        return Err(Rejection::bad("Request-URI must not carry headers"));
    }
    Ok(())
}

/// Check a response; a bad response is dropped, never answered (RFC 4475 §3.1.2.5, §3.1.2.19).
pub fn validate_response(r: &Response) -> Result<(), Rejection> {
    common(r)?;
    if !(100..=699).contains(&r.status) {
        return Err(Rejection::bad("status code out of range"));
    }
    Ok(())
}
