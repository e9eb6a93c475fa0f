//! The UAS core checks of RFC 3261 §8.2 applied to every request before it reaches the
//! registrar or the B2BUA: method, URI scheme, required extensions, body type, Accept,
//! Max-Forwards and loops. One place maps each failure to its response.

use crate::sip::{HeaderName, Method, Request, SipMessage, Uri};

/// Option tags we support (RFC 3261 §8.2.2.3).
pub(crate) const SUPPORTED: &str = "timer, 100rel, replaces";

/// Body types we accept (RFC 3261 §8.2.3).
pub(crate) const ACCEPT: &str = "application/sdp";

/// A check that failed, with the response it calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(HeaderName, String)>,
}

impl Refusal {
    fn plain(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
        }
    }
}

/// Methods this server handles.
pub(crate) fn is_allowed(m: &Method) -> bool {
    matches!(
        m,
        Method::Invite
            | Method::Ack
            | Method::Bye
            | Method::Cancel
            | Method::Options
            | Method::Info
            | Method::Update
            | Method::Prack
            | Method::Refer
            | Method::Register
            | Method::Subscribe
            | Method::Notify
    )
}

/// Run the checks. `me` lists our own `host:port` strings for loop detection.
pub(crate) fn check(req: &Request, me: &[(&str, String)]) -> Result<(), Refusal> {
    if let Method::Other(_) = req.method {
        return Err(Refusal {
            status: 501,
            headers: vec![(HeaderName::Allow, crate::b2bua::ALLOW.into())],
        });
    }
    if !is_allowed(&req.method) {
        return Err(Refusal {
            status: 405,
            headers: vec![(HeaderName::Allow, crate::b2bua::ALLOW.into())],
        });
    }
    if req.method == Method::Ack {
        return Ok(());
    }
    match Uri::parse(&req.uri) {
        Ok(u) if u.is_sip() => {}
        _ => return Err(Refusal::plain(416)),
    }
    if req.method != Method::Cancel {
        let unsupported: Vec<String> = req
            .headers
            .get_all(&HeaderName::Require)
            .chain(req.headers.get_all(&HeaderName::ProxyRequire))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !SUPPORTED
                        .split(',')
                        .any(|s| s.trim().eq_ignore_ascii_case(t))
            })
            .map(str::to_string)
            .collect();
        if !unsupported.is_empty() {
            return Err(Refusal {
                status: 420,
                headers: vec![(HeaderName::Unsupported, unsupported.join(", "))],
            });
        }
    }
    if matches!(req.method, Method::Invite | Method::Update) {
        if !req.body.is_empty() {
            let ct = req
                .headers
                .get(&HeaderName::ContentType)
                .map(|c| {
                    c.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            if ct != "application/sdp" && ct != "multipart/mixed" {
                return Err(Refusal {
                    status: 415,
                    headers: vec![(HeaderName::Accept, ACCEPT.into())],
                });
            }
        }
        if req.headers.get(&HeaderName::Accept).is_some() {
            let ok = req
                .headers
                .get_all(&HeaderName::Accept)
                .flat_map(|v| v.split(','))
                .map(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .any(|t| {
                    t.is_empty() || t == "application/sdp" || t == "application/*" || t == "*/*"
                });
            if !ok {
                return Err(Refusal {
                    status: 406,
                    headers: vec![(HeaderName::Accept, ACCEPT.into())],
                });
            }
        }
    }
    let mf = req
        .header_u32(&HeaderName::MaxForwards)
        .and_then(Result::ok);
    if mf == Some(0) && !matches!(req.method, Method::Options | Method::Register) {
        return Err(Refusal::plain(483));
    }
    // A request carrying our own Via was sent by us: a routing loop (RFC 3261 §16.3 step 4).
    // Ours means our transport and our address for it: a client's UDP port may well be the
    // number of our TCP listener's port.
    if req.to_tag().is_none()
        && req.headers.get_all(&HeaderName::Via).any(|v| {
            crate::sip::Via::parse(v).is_ok_and(|v| {
                me.iter()
                    .any(|(t, m)| v.transport == *t && v.sent_by().eq_ignore_ascii_case(m))
            })
        })
    {
        return Err(Refusal::plain(482));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_via(via: &str) -> Request {
        let text = format!(
            "OPTIONS sip:pbx.local SIP/2.0\r\nVia: {via};branch=z9hG4bKx\r\nMax-Forwards: 70\r\n\
             From: <sip:a@pbx.local>;tag=1\r\nTo: <sip:pbx.local>\r\nCall-ID: c\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        match crate::sip::parse_datagram(text.as_bytes()).map(|p| p.message) {
            Ok(crate::sip::Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn a_loop_is_our_own_transport_and_address_not_just_the_port() {
        let me = [
            ("UDP", "127.0.0.1:5060".to_string()),
            ("TCP", "127.0.0.1:40001".to_string()),
        ];
        let ours = options_via("SIP/2.0/UDP 127.0.0.1:5060");
        assert_eq!(check(&ours, &me).map_err(|r| r.status), Err(482));
        // A client whose UDP port has the number of our TCP listener's port is not us.
        let client = options_via("SIP/2.0/UDP 127.0.0.1:40001");
        assert!(check(&client, &me).is_ok());
        let ours_tcp = options_via("SIP/2.0/TCP 127.0.0.1:40001");
        assert_eq!(check(&ours_tcp, &me).map_err(|r| r.status), Err(482));
    }
}
