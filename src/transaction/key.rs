//! Transaction matching (RFC 3261 §17.1.3 for responses, §17.2.3 for requests, with the
//! RFC 2543 fallback for requests whose branch lacks the magic cookie).

use crate::sip::{Method, Request, Response, SipMessage, Via};

/// Identifies a server transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerKey {
    /// RFC 3261: branch + sent-by + method (ACK matches INVITE).
    Rfc3261 {
        /// Top Via branch.
        branch: String,
        /// Top Via sent-by.
        sent_by: String,
        /// Method, with ACK mapped to INVITE.
        method: Method,
    },
    /// RFC 2543 fallback: Call-ID, From tag, CSeq number, top Via and method.
    Rfc2543 {
        /// Call-ID.
        call_id: String,
        /// From tag.
        from_tag: String,
        /// CSeq number.
        cseq: u32,
        /// Top Via as received.
        via: String,
        /// Method, with ACK mapped to INVITE.
        method: Method,
    },
}

fn key_method(m: &Method) -> Method {
    match m {
        Method::Ack => Method::Invite,
        other => other.clone(),
    }
}

impl ServerKey {
    /// The key of a request, `None` if its Via/CSeq do not parse (validation rejects those).
    pub fn of(req: &Request) -> Option<Self> {
        Self::with_method(req, &req.method)
    }

    /// The key a request would have with another method (CANCEL → its INVITE).
    pub fn with_method(req: &Request, method: &Method) -> Option<Self> {
        Self::from_via(req, &req.top_via().ok()?, method)
    }

    /// The key from the request's already parsed top Via.
    pub fn from_via(req: &Request, via: &Via, method: &Method) -> Option<Self> {
        if via.has_rfc3261_branch() {
            let mut sent_by = via.sent_by();
            sent_by.make_ascii_lowercase();
            Some(Self::Rfc3261 {
                branch: via.branch()?.to_string(),
                sent_by,
                method: key_method(method),
            })
        } else {
            Some(Self::Rfc2543 {
                call_id: req.call_id().ok()?.to_string(),
                from_tag: req.from_tag().unwrap_or_default(),
                cseq: req.cseq().ok()?.seq,
                via: format!("{}:{}", via.host, via.port.unwrap_or(5060)),
                method: key_method(method),
            })
        }
    }
}

/// Identifies a client transaction: our branch and the CSeq method (§17.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Branch we put in the top Via.
    pub branch: String,
    /// CSeq method.
    pub method: Method,
}

impl ClientKey {
    /// The key of a request we send.
    pub fn of_request(req: &Request) -> Option<Self> {
        Some(Self {
            branch: req.top_via_branch()?.to_string(),
            method: req.method.clone(),
        })
    }

    /// The key a response matches.
    pub fn of_response(resp: &Response) -> Option<Self> {
        Some(Self {
            branch: resp.top_via_branch()?.to_string(),
            method: resp.cseq().ok()?.method,
        })
    }
}
