//! The UA's dialogs (RFC 3261 §12): identifiers, CSeq, route set, remote target and the peer
//! address in-dialog requests go to, plus what a dialog-info (RFC 4235) report needs later:
//! direction, state and start time.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use understudy::sip::{Method, NameAddr, Request, Response, SipMessage, Uri};

use super::build::NewRequest;
use super::state::{Peer, Transport};

/// A dialog identifier: Call-ID and both tags, seen from this UA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

/// Where a dialog is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
    /// We sent BYE and wait for its response.
    Terminating,
    /// BYE done (either side), or the INVITE failed.
    Terminated,
}

/// One dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Identifier.
    pub id: DialogId,
    /// Our URI (From of our requests), without tag.
    pub local_uri: String,
    /// The peer's URI (To of our requests), without tag.
    pub remote_uri: String,
    /// Last CSeq we used.
    pub local_cseq: u32,
    /// Last CSeq the peer used.
    pub remote_cseq: Option<u32>,
    /// The peer's Contact URI.
    pub remote_target: String,
    /// Where in-dialog requests go: the remote target's address when it is an IP literal,
    /// else where the dialog came from.
    pub peer: SocketAddr,
    /// The transport in-dialog requests use (from the remote target's `transport`
    /// parameter, else the one the dialog came over).
    pub transport: Transport,
    /// Route set, in the order Route headers are written.
    pub route_set: Vec<String>,
    /// State.
    pub state: DialogState,
    /// Whether we sent the initial INVITE.
    pub initiator: bool,
    /// CSeq number of the INVITE that created the dialog (ACK for a 2xx reuses it).
    pub invite_cseq: u32,
    /// The last SDP body the peer sent.
    pub remote_sdp: Option<Bytes>,
    /// Version of our last SDP (`o=` line).
    pub sdp_version: u32,
    /// We hold the call: our offers say `sendonly`, our answers `sendonly` or `inactive`.
    pub hold: bool,
    /// When the dialog was created.
    pub created: Instant,
    /// re-INVITEs received in this dialog.
    pub reinvites: u32,
    /// Where the last re-INVITE came from.
    pub last_reinvite_from: Option<SocketAddr>,
    /// Whether it came without an offer.
    pub last_reinvite_offerless: bool,
    /// We answered an offerless re-INVITE with an offer and the answer (in the ACK) is due.
    pub awaiting_answer: bool,
    /// SDP answers received in ACKs.
    pub answers_in_ack: u32,
}

/// The address of a SIP URI whose host is an IP literal (port 5060 by default).
pub(crate) fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let u = Uri::parse(uri).ok()?;
    let ip: IpAddr = u.host.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

fn without_tag(a: &NameAddr) -> String {
    let mut a = a.clone();
    a.params.remove("tag");
    a.to_string()
}

fn contact_uri(m: &impl SipMessage) -> Option<String> {
    m.contact().map(|c| c.uri.to_string())
}

/// The transport a URI asks for (`;transport=tcp`), if any.
pub(crate) fn uri_transport(uri: &str) -> Option<Transport> {
    let t = Uri::parse(uri).ok()?.transport()?;
    if t.eq_ignore_ascii_case("tcp") {
        Some(Transport::Tcp)
    } else if t.eq_ignore_ascii_case("tls") {
        Some(Transport::Tls)
    } else if t.eq_ignore_ascii_case("udp") {
        Some(Transport::Udp)
    } else {
        None
    }
}

impl Dialog {
    /// The dialog we create as UAC from a response with a To tag to our INVITE `req`, which
    /// went to `dest` (RFC 3261 §12.1.2).
    pub(crate) fn as_uac(req: &Request, resp: &Response, dest: Peer) -> Option<Self> {
        let from = req.from().ok()?;
        let to = resp.to().ok()?;
        let remote_target = contact_uri(resp).unwrap_or_else(|| req.uri.clone());
        let mut route_set = resp.record_route();
        route_set.reverse();
        let seq = req.cseq().ok()?.seq;
        Some(Self {
            id: DialogId {
                call_id: req.call_id().ok()?.to_string(),
                local_tag: from.tag()?.to_string(),
                remote_tag: to.tag()?.to_string(),
            },
            local_uri: without_tag(&from),
            remote_uri: without_tag(&to),
            local_cseq: seq,
            remote_cseq: None,
            peer: uri_addr(&remote_target).unwrap_or(dest.addr),
            transport: uri_transport(&remote_target).unwrap_or(dest.transport),
            remote_target,
            route_set,
            state: if resp.status < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            initiator: true,
            invite_cseq: seq,
            remote_sdp: (!resp.body.is_empty()).then(|| resp.body.clone()),
            sdp_version: 1,
            hold: false,
            created: Instant::now(),
            reinvites: 0,
            last_reinvite_from: None,
            last_reinvite_offerless: false,
            awaiting_answer: false,
            answers_in_ack: 0,
        })
    }

    /// The dialog we create as UAS when answering `req` (from `source`) with `local_tag`
    /// (RFC 3261 §12.1.1).
    pub(crate) fn as_uas(req: &Request, local_tag: &str, source: Peer) -> Option<Self> {
        let from = req.from().ok()?;
        let to = req.to().ok()?;
        let remote_target = contact_uri(req).unwrap_or_else(|| from.uri.to_string());
        let seq = req.cseq().ok()?.seq;
        Some(Self {
            id: DialogId {
                call_id: req.call_id().ok()?.to_string(),
                local_tag: local_tag.to_string(),
                remote_tag: from.tag()?.to_string(),
            },
            local_uri: without_tag(&to),
            remote_uri: without_tag(&from),
            local_cseq: 0,
            remote_cseq: Some(seq),
            peer: uri_addr(&remote_target).unwrap_or(source.addr),
            transport: uri_transport(&remote_target).unwrap_or(source.transport),
            remote_target,
            route_set: req.record_route(),
            state: DialogState::Early,
            initiator: false,
            invite_cseq: seq,
            remote_sdp: (!req.body.is_empty()).then(|| req.body.clone()),
            sdp_version: 0,
            hold: false,
            created: Instant::now(),
            reinvites: 0,
            last_reinvite_from: None,
            last_reinvite_offerless: false,
            awaiting_answer: false,
            answers_in_ack: 0,
        })
    }

    /// Target refresh from a re-INVITE/UPDATE or its 2xx (RFC 3261 §12.2): a new Contact
    /// moves the remote target, and with it where requests go.
    pub(crate) fn refresh_target(&mut self, m: &impl SipMessage, source: Peer) {
        if let Some(t) = contact_uri(m) {
            self.peer = uri_addr(&t).unwrap_or(source.addr);
            self.transport = uri_transport(&t).unwrap_or(source.transport);
            self.remote_target = t;
        }
    }

    /// Where in-dialog requests go.
    pub fn peer(&self) -> Peer {
        Peer {
            addr: self.peer,
            transport: self.transport,
        }
    }

    /// A new in-dialog request (not ACK or CANCEL): next CSeq, Request-URI = remote target.
    pub(crate) fn request(&mut self, method: Method, local: SocketAddr, contact: &str) -> Request {
        self.local_cseq += 1;
        let from = format!("{};tag={}", self.local_uri, self.id.local_tag);
        let to = format!("{};tag={}", self.remote_uri, self.id.remote_tag);
        let with_contact = matches!(
            method,
            Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
        );
        NewRequest {
            method,
            uri: &self.remote_target,
            from: &from,
            to: &to,
            call_id: &self.id.call_id,
            cseq: self.local_cseq,
            contact: with_contact.then_some(contact),
            route: &self.route_set,
        }
        .build(local, self.transport)
    }

    /// The ACK for a 2xx to our INVITE with CSeq `seq` (RFC 3261 §13.2.2.4).
    pub(crate) fn ack(&self, seq: u32, local: SocketAddr) -> Request {
        let from = format!("{};tag={}", self.local_uri, self.id.local_tag);
        let to = format!("{};tag={}", self.remote_uri, self.id.remote_tag);
        NewRequest {
            method: Method::Ack,
            uri: &self.remote_target,
            from: &from,
            to: &to,
            call_id: &self.id.call_id,
            cseq: seq,
            contact: None,
            route: &self.route_set,
        }
        .build(local, self.transport)
    }

    /// Whether the dialog can still carry requests.
    pub fn is_up(&self) -> bool {
        matches!(self.state, DialogState::Early | DialogState::Confirmed)
    }
}
