//! SIP dialogs (RFC 3261 §12): identifiers, local and remote CSeq, route set, remote target,
//! target refresh, and building in-dialog requests. Sans-IO.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::net::{Flow, Proto};
use crate::sip::{HeaderName, Method, NameAddr, Request, Response, SipMessage, Uri, new_branch};

#[cfg(test)]
mod tests;

/// Dialog state (RFC 3261 §12: early or confirmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
}

/// One dialog, seen from our side.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: Box<str>,
    /// Our tag.
    pub local_tag: Box<str>,
    /// The peer's tag.
    pub remote_tag: Box<str>,
    /// Our URI (From in requests we send).
    pub local_uri: Box<str>,
    /// The peer's URI (To in requests we send).
    pub remote_uri: Box<str>,
    /// Last CSeq we used.
    pub local_cseq: u32,
    /// Last CSeq the peer used (`None` until it sends a request, or after adoption).
    pub remote_cseq: Option<u32>,
    /// Route set, in the order Route headers are written.
    pub route_set: Box<[String]>,
    /// Remote target (the peer's Contact URI).
    pub remote_target: Box<str>,
    /// Where in-dialog requests go.
    pub flow: Flow,
    /// Requests go over `flow` whatever address the remote target names: the peer is behind
    /// NAT (it sends from another address than it says), so only the flow its router opened
    /// reaches it (RFC 3581 applied to the dialog, as RFC 5626 does for registrations).
    pub pinned: bool,
    /// State.
    pub state: DialogState,
}

/// Whether a peer is behind NAT: it is reached at `seen`, yet it names `named` as its
/// address. Over TCP only the address counts (a connection's port is never the listening
/// one).
pub fn behind_nat(named: Option<SocketAddr>, seen: Flow) -> bool {
    named.is_some_and(|a| match seen.proto {
        crate::net::Proto::Udp => a != seen.remote,
        crate::net::Proto::Tcp | crate::net::Proto::Tls => a.ip() != seen.remote.ip(),
    })
}

/// Our own address as put in Via and Contact.
#[derive(Debug, Clone)]
pub struct LocalContact {
    /// `host:port` for UDP.
    pub udp: String,
    /// `host:port` for TCP.
    pub tcp: String,
    /// `host:port` for TLS (empty without a TLS listener: then the TCP one).
    pub tls: String,
}

impl LocalContact {
    /// `host:port` for a protocol.
    pub fn hostport(&self, proto: Proto) -> &str {
        match proto {
            Proto::Udp => &self.udp,
            Proto::Tcp => &self.tcp,
            Proto::Tls if self.tls.is_empty() => &self.tcp,
            Proto::Tls => &self.tls,
        }
    }

    /// A Via value with a fresh branch.
    pub fn via(&self, proto: Proto) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            proto.via_token(),
            self.hostport(proto),
            new_branch()
        )
    }

    /// Our Contact for a protocol.
    pub fn contact(&self, proto: Proto) -> String {
        match proto {
            Proto::Udp => format!("<sip:{}>", self.udp),
            Proto::Tcp => format!("<sip:{};transport=tcp>", self.tcp),
            Proto::Tls => format!("<sip:{};transport=tls>", self.hostport(Proto::Tls)),
        }
    }
}

/// Resolve a SIP URI to a socket address without DNS: IP literals only (port 5061 by
/// default for TLS: `sips:` or `transport=tls`).
pub fn uri_addr(uri: &Uri) -> Option<SocketAddr> {
    let ip: IpAddr = uri.host.trim_matches(['[', ']']).parse().ok()?;
    let default = if uri_is_tls(uri) { 5061 } else { 5060 };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(default)))
}

fn uri_is_tls(uri: &Uri) -> bool {
    uri.scheme.eq_ignore_ascii_case("sips") || uri.transport().as_deref() == Some("tls")
}

/// The flow for a URI: its transport parameter (UDP by default; `sips:` is TLS) and IP
/// literal.
pub fn uri_flow(uri: &Uri) -> Option<Flow> {
    let addr = uri_addr(uri)?;
    Some(if uri_is_tls(uri) {
        Flow::tls(addr)
    } else {
        match uri.transport().as_deref() {
            Some("tcp") => Flow::tcp(addr),
            _ => Flow::udp(addr),
        }
    })
}

impl Dialog {
    /// The dialog we create as UAS when answering `req` with our tag (RFC 3261 §12.1.1).
    pub fn as_uas(req: &Request, local_tag: &str, flow: Flow) -> Option<Self> {
        let from = req.from().ok()?;
        let to = req.to().ok()?;
        // A dialog's strings are boxed: no spare capacity left from formatting (memory per
        // held call), and 8 bytes less each.
        let remote_target = req
            .contact()
            .map(|c| c.uri.to_string())
            .unwrap_or_else(|| from.uri.to_string());
        let route_set = req.record_route();
        // The peer's own address is its top Via's sent-by (RFC 3261 §18.2.1).
        let sent_by = req.top_via().ok().and_then(|v| v.sent_by_addr());
        Some(Self {
            call_id: req.call_id().ok()?.into(),
            local_tag: local_tag.into(),
            remote_tag: from.tag()?.into(),
            local_uri: strip_tag(&to).into(),
            remote_uri: strip_tag(&from).into(),
            local_cseq: 0,
            remote_cseq: req.cseq().ok().map(|c| c.seq),
            pinned: route_set.is_empty() && behind_nat(sent_by, flow),
            route_set: route_set.into_boxed_slice(),
            remote_target: remote_target.into(),
            flow,
            state: DialogState::Early,
        })
    }

    /// The dialog we create as UAC from `req` (which we sent) and a response with a To tag
    /// (RFC 3261 §12.1.2). The route set is the Record-Route of the response, reversed.
    pub fn as_uac(req: &Request, resp: &Response, flow: Flow) -> Option<Self> {
        let from = req.from().ok()?;
        let to = resp.to().ok()?;
        let mut route_set = resp.record_route();
        route_set.reverse();
        let remote_target = resp
            .contact()
            .map(|c| c.uri.to_string())
            .unwrap_or_else(|| req.uri.clone());
        // We sent the request to `flow` rather than to its URI: the phone registered from
        // behind NAT (its binding's source is not its Contact).
        let named = Uri::parse(&req.uri).ok().and_then(|u| uri_addr(&u));
        Some(Self {
            pinned: route_set.is_empty() && behind_nat(named, flow),
            call_id: req.call_id().ok()?.into(),
            local_tag: from.tag()?.into(),
            remote_tag: to.tag()?.into(),
            local_uri: strip_tag(&from).into(),
            remote_uri: strip_tag(&to).into(),
            local_cseq: req.cseq().ok()?.seq,
            remote_cseq: None,
            route_set: route_set.into_boxed_slice(),
            remote_target: remote_target.into(),
            flow,
            state: if resp.status >= 200 {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
        })
    }

    /// Check a request's CSeq against the remote sequence (RFC 3261 §12.2.2). A lower one is
    /// out of order (answer 500). Returns whether the request is acceptable.
    pub fn accept_remote_cseq(&mut self, req: &Request) -> bool {
        let Ok(c) = req.cseq() else {
            return false;
        };
        if req.method == Method::Ack || req.method == Method::Cancel {
            return true;
        }
        match self.remote_cseq {
            Some(last) if c.seq < last => false,
            _ => {
                self.remote_cseq = Some(c.seq);
                true
            }
        }
    }

    /// Apply a target refresh (re-INVITE/UPDATE or their 2xx carrying a Contact; §12.2).
    pub fn refresh_target(&mut self, contact: Option<NameAddr>) {
        if let Some(c) = contact {
            self.remote_target = c.uri.to_string().into();
        }
    }

    /// Build a request in this dialog (RFC 3261 §12.2.1.1). CSeq is incremented except for
    /// ACK and CANCEL, which reuse `cseq_of`.
    pub fn request(&mut self, method: Method, me: &LocalContact, cseq_of: Option<u32>) -> Request {
        let seq = match (&method, cseq_of) {
            (Method::Ack | Method::Cancel, Some(s)) => s,
            _ => {
                self.local_cseq = self.local_cseq.wrapping_add(1);
                self.local_cseq
            }
        };
        let (uri, routes) = match self.route_set.first() {
            Some(first) if NameAddr::parse(first).is_ok_and(|r| !r.uri.params.has("lr")) => {
                // Strict routing (RFC 3261 §12.2.1.1): first route becomes the Request-URI.
                let u = NameAddr::parse(first)
                    .map(|r| r.uri.to_string())
                    .unwrap_or_default();
                let mut rest: Vec<String> = self.route_set.iter().skip(1).cloned().collect();
                rest.push(format!("<{}>", self.remote_target));
                (u, rest)
            }
            _ => (self.remote_target.to_string(), self.route_set.to_vec()),
        };
        let mut r = Request::new(method.clone(), uri);
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(self.flow.proto));
        h.push(HeaderName::MaxForwards, "70");
        for route in routes {
            h.push(HeaderName::Route, route);
        }
        h.push(
            HeaderName::From,
            format!("{};tag={}", self.local_uri, self.local_tag),
        );
        h.push(
            HeaderName::To,
            format!("{};tag={}", self.remote_uri, self.remote_tag),
        );
        h.push(HeaderName::CallId, self.call_id.clone());
        h.push(HeaderName::CSeq, format!("{seq} {method}"));
        if matches!(
            method,
            Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
        ) {
            h.push(HeaderName::Contact, me.contact(self.flow.proto));
        }
        r
    }

    /// An ACK for a 2xx to the INVITE with CSeq `seq`, optionally carrying an SDP answer.
    pub fn ack(&mut self, me: &LocalContact, seq: u32, sdp: Option<(Bytes, String)>) -> Request {
        let mut r = self.request(Method::Ack, me, Some(seq));
        if let Some((body, ctype)) = sdp {
            r.headers.push(HeaderName::ContentType, ctype);
            r.body = body;
        }
        r
    }

    /// Where the next request in this dialog goes: the first route when routing loosely, else
    /// the remote target; the dialog's flow when the URI is not an IP literal. An open TCP
    /// connection to the same address is reused by the transport.
    pub fn next_hop(&self) -> Flow {
        if self.pinned {
            return self.flow;
        }
        let uri = self
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r).ok())
            .map(|a| a.uri)
            .or_else(|| Uri::parse(&self.remote_target).ok());
        match uri.as_ref().and_then(uri_addr) {
            Some(addr) if addr == self.flow.remote => self.flow,
            Some(addr) => Flow {
                proto: self.flow.proto,
                remote: addr,
                conn: None,
            },
            None => self.flow,
        }
    }
}

fn strip_tag(a: &NameAddr) -> String {
    let mut a = a.clone();
    a.params.remove("tag");
    a.to_string()
}
