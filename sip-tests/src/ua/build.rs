//! Building the requests a UA sends outside the dialog layer: new requests, the ACK for a
//! non-2xx final response (RFC 3261 §17.1.1.3), CANCEL (§9.1) and the retry of a challenged
//! request with credentials (§22.2, RFC 8760).

use std::net::SocketAddr;

use bytes::Bytes;
use understudy::sip::digest::{DigestParams, answer_challenge};
use understudy::sip::{HeaderName, Method, Request, Response, SipMessage, new_branch};

use super::state::Transport;

/// A Via value for our socket with a fresh branch.
pub(crate) fn via(local: SocketAddr, transport: Transport) -> String {
    format!(
        "SIP/2.0/{} {local};branch={};rport",
        transport.via_token(),
        new_branch()
    )
}

/// The branch of a message's top Via (empty when absent).
pub(crate) fn branch_of(m: &impl SipMessage) -> String {
    m.top_via()
        .ok()
        .and_then(|v| v.branch().map(str::to_string))
        .unwrap_or_default()
}

/// The fields of a new request.
pub(crate) struct NewRequest<'a> {
    pub(crate) method: Method,
    pub(crate) uri: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) call_id: &'a str,
    pub(crate) cseq: u32,
    pub(crate) contact: Option<&'a str>,
    pub(crate) route: &'a [String],
}

impl NewRequest<'_> {
    /// Build it with a Via for `local` over `transport`.
    pub(crate) fn build(&self, local: SocketAddr, transport: Transport) -> Request {
        let mut r = Request::new(self.method.clone(), self.uri);
        let h = &mut r.headers;
        h.push(HeaderName::Via, via(local, transport));
        h.push(HeaderName::MaxForwards, "70");
        for route in self.route {
            h.push(HeaderName::Route, route.clone());
        }
        h.push(HeaderName::From, self.from);
        h.push(HeaderName::To, self.to);
        h.push(HeaderName::CallId, self.call_id);
        h.push(HeaderName::CSeq, format!("{} {}", self.cseq, self.method));
        if let Some(c) = self.contact {
            h.push(HeaderName::Contact, c);
        }
        h.push(HeaderName::UserAgent, "understudy-sip-tests");
        r
    }
}

/// Attach a body with its Content-Type.
pub(crate) fn set_body(r: &mut Request, content_type: &str, body: impl Into<Bytes>) {
    r.headers.set(HeaderName::ContentType, content_type);
    r.body = body.into();
}

/// The ACK for a non-2xx final response: same branch, Request-URI, Call-ID, From, CSeq number
/// and Route as the INVITE; To from the response (RFC 3261 §17.1.1.3).
pub(crate) fn ack_for_failure(invite: &Request, resp: &Response) -> Request {
    let mut a = Request::new(Method::Ack, invite.uri.clone());
    if let Some(v) = invite.headers.get(&HeaderName::Via) {
        a.headers.push(HeaderName::Via, v);
    }
    a.headers.push(HeaderName::MaxForwards, "70");
    for r in invite.headers.get_all(&HeaderName::Route) {
        a.headers.push(HeaderName::Route, r);
    }
    copy(invite, &mut a, &HeaderName::From);
    let to = resp
        .headers
        .get(&HeaderName::To)
        .or_else(|| invite.headers.get(&HeaderName::To))
        .unwrap_or_default()
        .to_string();
    a.headers.push(HeaderName::To, to);
    copy(invite, &mut a, &HeaderName::CallId);
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    a.headers.push(HeaderName::CSeq, format!("{seq} ACK"));
    a
}

/// A CANCEL for `req` (RFC 3261 §9.1): same Request-URI, top Via, From, To, Call-ID, CSeq
/// number and Route.
pub(crate) fn cancel_for(req: &Request) -> Request {
    let mut c = Request::new(Method::Cancel, req.uri.clone());
    if let Some(v) = req.headers.get(&HeaderName::Via) {
        c.headers.push(HeaderName::Via, v);
    }
    c.headers.push(HeaderName::MaxForwards, "70");
    for r in req.headers.get_all(&HeaderName::Route) {
        c.headers.push(HeaderName::Route, r);
    }
    copy(req, &mut c, &HeaderName::From);
    copy(req, &mut c, &HeaderName::To);
    copy(req, &mut c, &HeaderName::CallId);
    let seq = req.cseq().map(|c| c.seq).unwrap_or(1);
    c.headers.push(HeaderName::CSeq, format!("{seq} CANCEL"));
    c
}

fn copy(from: &Request, to: &mut Request, name: &HeaderName) {
    if let Some(v) = from.headers.get(name) {
        to.headers.push(name.clone(), v);
    }
}

/// Retry `req` after the 401/407 `resp` with credentials: new branch, CSeq + 1, and an
/// `Authorization`/`Proxy-Authorization` answering the first challenge (or the first
/// SHA-256 one when `prefer_sha256`). `None` when the response carries no usable challenge.
pub(crate) fn with_credentials(
    req: &Request,
    resp: &Response,
    user: &str,
    password: &str,
    prefer_sha256: bool,
    local: SocketAddr,
    transport: Transport,
) -> Option<Request> {
    let (challenge_name, answer_name) = if resp.status == 407 {
        (
            HeaderName::ProxyAuthenticate,
            HeaderName::ProxyAuthorization,
        )
    } else {
        (HeaderName::WwwAuthenticate, HeaderName::Authorization)
    };
    let challenges: Vec<&str> = resp.headers.get_all(&challenge_name).collect();
    let is_sha = |c: &&&str| {
        DigestParams::parse(c)
            .and_then(|p| {
                p.get("algorithm")
                    .map(|a| a.eq_ignore_ascii_case("SHA-256"))
            })
            .unwrap_or(false)
    };
    let challenge = if prefer_sha256 {
        challenges.iter().find(is_sha).or(challenges.first())
    } else {
        challenges.first()
    }?;
    let cnonce = format!("{:016x}", rand::random::<u64>());
    let value = answer_challenge(
        challenge,
        user,
        password,
        req.method.as_str(),
        &req.uri,
        1,
        &cnonce,
    )?;
    let mut r = req.clone();
    r.headers.remove(&HeaderName::Authorization);
    r.headers.remove(&HeaderName::ProxyAuthorization);
    r.headers.remove_first(&HeaderName::Via);
    r.headers.push_front(HeaderName::Via, via(local, transport));
    let seq = req.cseq().ok()?.seq + 1;
    r.headers
        .set(HeaderName::CSeq, format!("{seq} {}", req.method));
    r.headers.push(answer_name, value);
    Some(r)
}
