//! A simulated endpoint: a trunk or phone that behaves like the real ones we test against —
//! answers calls, accepts re-bind re-INVITEs from a new address and sends its later requests
//! to the current remote target, refuses the dialog package (489), answers NOTIFYs and
//! OPTIONS, retransmits its own requests over UDP, and reads its socket at a finite rate
//! through a finite receive buffer: what arrives while the buffer is full is dropped, like a
//! socket at its stock size (about 64 datagrams in 208 KiB) in front of an application that
//! handles 10,000 messages a second.

use std::collections::VecDeque;

use crate::entropy::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Datagram;
use crate::net::Proto;
use crate::sip::{
    HeaderName, Message, Method, Request, Response, SipMessage, Uri, parse_datagram, response_to,
};

/// T1 of the endpoint's own retransmissions.
const T1: Duration = Duration::from_millis(500);

/// One dialog the endpoint has.
#[derive(Debug, Clone)]
pub struct EpDialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The PBX's tag.
    pub remote_tag: String,
    /// Where our in-dialog requests go (the PBX node that last re-bound us).
    pub remote_target: SocketAddr,
    /// Our CSeq.
    pub cseq: u32,
    /// Our From/To as we send them.
    local_uri: String,
    remote_uri: String,
    /// Whether we placed the call.
    pub caller: bool,
    /// The callee got the ACK of its 2xx: only then may it send BYE (RFC 3261 §15.1.1).
    pub acked: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    bye: bool,
    bytes: Bytes,
    to: SocketAddr,
    next: Instant,
    interval: Duration,
    tries: u32,
}

/// Counters for the checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpStats {
    /// Datagrams dropped because the receive buffer was full.
    pub dropped: u64,
    /// Requests received that were retransmissions of one already answered.
    pub retransmissions: u64,
    /// Re-INVITEs for known dialogs (re-binds, refreshes).
    pub reinvites: u64,
    /// BYEs we sent that got 200.
    pub byes_ok: u64,
    /// BYEs we sent that got another final answer or none.
    pub byes_failed: u64,
    /// Calls we placed that were answered.
    pub answered: u64,
    /// Requests we gave up retransmitting.
    pub timeouts: u64,
    /// `check-sync` resets received.
    pub resets: u64,
    /// Re-INVITEs refused with 503.
    pub refused: u64,
    /// BYEs received for known dialogs.
    pub byes_received: u64,
}

/// A simulated endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// Its dialogs, by Call-ID.
    pub dialogs: HashMap<String, EpDialog>,
    /// Counters.
    pub stats: EpStats,
    /// Receive buffer, in datagrams.
    pub buffer: usize,
    /// Time to handle one datagram (the reading rate).
    pub service: Duration,
    /// Answer this many re-INVITEs with `503` + `Retry-After: 1` first (an overloaded SBC).
    pub refuse_reinvites: u32,
    queue: VecDeque<Datagram>,
    next_service: Option<Instant>,
    /// Responses sent, by the request's branch (to answer retransmissions).
    answered: HashMap<String, Bytes>,
    pending: HashMap<String, Pending>,
    next_id: u64,
    out: Vec<Datagram>,
    /// A phone's registration: user, password, and the REGISTER waiting for its answer.
    registration: Option<(String, String)>,
    /// Registrations answered 200.
    pub registered: u64,
    /// Where the phone registers.
    registrar: SocketAddr,
    /// The clock at the last datagram handled.
    now: Instant,
    /// Our INVITEs not yet answered finally, and where they went.
    invites: HashMap<String, (Request, SocketAddr)>,
}

fn sdp(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = addr.ip(),
        port = addr.port().wrapping_add(1000)
    )
}

fn target_of(contact: Option<&str>) -> Option<SocketAddr> {
    let c = contact?;
    let na = crate::sip::NameAddr::parse(c).ok()?;
    let host = na.uri.host.trim_matches(['[', ']']);
    Some(SocketAddr::new(
        host.parse().ok()?,
        na.uri.port.unwrap_or(5060),
    ))
}

impl Endpoint {
    /// An endpoint at `addr` with a receive buffer of `buffer` datagrams, reading 10,000
    /// datagrams a second.
    pub fn new(addr: SocketAddr, buffer: usize) -> Self {
        Self {
            addr,
            dialogs: HashMap::default(),
            stats: EpStats::default(),
            buffer,
            service: Duration::from_micros(100),
            refuse_reinvites: 0,
            queue: VecDeque::new(),
            next_service: None,
            answered: HashMap::default(),
            pending: HashMap::default(),
            next_id: 0,
            out: Vec::new(),
            registration: None,
            registered: 0,
            registrar: addr,
            now: Instant::now(),
            invites: HashMap::default(),
        }
    }

    fn register_request(&mut self, cseq: u32, auth: Option<String>) -> Request {
        let (user, _) = self.registration.clone().unwrap_or_default();
        let me = self.addr;
        let mut r = Request::new(Method::Register, "sip:pbx.local");
        let branch = self.id("z9hG4bKr");
        let h = &mut r.headers;
        h.push(
            HeaderName::Via,
            format!("SIP/2.0/UDP {me};branch={branch};rport"),
        );
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("<sip:{user}@pbx.local>;tag=r{}", me.port()),
        );
        h.push(HeaderName::To, format!("<sip:{user}@pbx.local>"));
        h.push(HeaderName::CallId, format!("reg-{user}-{me}"));
        h.push(HeaderName::CSeq, format!("{cseq} REGISTER"));
        h.push(HeaderName::Contact, format!("<sip:{user}@{me}>"));
        h.push(HeaderName::Expires, "3600");
        if let Some(a) = auth {
            h.push(HeaderName::Authorization, a);
        }
        r
    }

    /// Register as `user` at the PBX (a phone); the digest challenge is answered.
    pub fn register(&mut self, now: Instant, pbx: SocketAddr, user: &str, password: &str) {
        self.registration = Some((user.to_string(), password.to_string()));
        self.registrar = pbx;
        let r = self.register_request(1, None);
        self.send_request(now, pbx, &r);
    }

    fn id(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{what}{}x{}", self.next_id, self.addr.port())
    }

    fn send(&mut self, to: SocketAddr, bytes: Bytes) {
        self.out.push(Datagram {
            from: self.addr,
            to,
            proto: Proto::Udp,
            bytes,
        });
    }

    fn send_request(&mut self, now: Instant, to: SocketAddr, r: &Request) {
        let bytes = r.to_bytes();
        if r.method != Method::Ack {
            let key = format!(
                "{}/{}",
                r.call_id().unwrap_or(""),
                r.cseq().map(|c| c.seq).unwrap_or(0)
            );
            self.pending.insert(
                key,
                Pending {
                    bye: r.method == Method::Bye,
                    bytes: bytes.clone(),
                    to,
                    next: now + T1,
                    interval: T1,
                    tries: 1,
                },
            );
        }
        self.send(to, bytes);
    }

    /// What the endpoint sent since the last call.
    pub fn take_out(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.out)
    }

    /// Place a call to `number` through the PBX at `pbx`; returns its Call-ID.
    pub fn call(&mut self, now: Instant, pbx: SocketAddr, number: &str) -> String {
        let call_id = self.id("c");
        let tag = self.id("t");
        let me = self.addr;
        let mut r = Request::new(Method::Invite, format!("sip:{number}@{pbx}"));
        let h = &mut r.headers;
        let branch = self.id("z9hG4bKi");
        h.push(
            HeaderName::Via,
            format!("SIP/2.0/UDP {me};branch={branch};rport"),
        );
        h.push(HeaderName::MaxForwards, "70");
        let from_user = self
            .registration
            .as_ref()
            .map_or_else(|| "ep".to_string(), |(u, _)| u.clone());
        h.push(
            HeaderName::From,
            format!("<sip:{from_user}@pbx.local>;tag={tag}"),
        );
        h.push(HeaderName::To, format!("<sip:{number}@{pbx}>"));
        h.push(HeaderName::CallId, call_id.clone());
        h.push(HeaderName::CSeq, "1 INVITE");
        h.push(HeaderName::Contact, format!("<sip:ep@{me}>"));
        h.push(HeaderName::ContentType, "application/sdp");
        r.body = Bytes::from(sdp(me));
        self.dialogs.insert(
            call_id.clone(),
            EpDialog {
                call_id: call_id.clone(),
                local_tag: tag,
                remote_tag: String::new(),
                remote_target: pbx,
                cseq: 1,
                local_uri: format!("<sip:{from_user}@pbx.local>"),
                remote_uri: format!("<sip:{number}@{pbx}>"),
                caller: true,
                acked: true,
            },
        );
        self.invites.insert(call_id.clone(), (r.clone(), pbx));
        self.send_request(now, pbx, &r);
        call_id
    }

    /// Hang up a call: BYE to its current remote target. `false` when the dialog is unknown
    /// or not yet confirmed.
    pub fn hang_up(&mut self, now: Instant, call_id: &str) -> bool {
        self.hang_up_via(now, call_id, None)
    }

    /// Hang up a call, sending the BYE to `via` instead of the remote target when given (a
    /// phone that failed over to its second server).
    pub fn hang_up_via(&mut self, now: Instant, call_id: &str, via: Option<SocketAddr>) -> bool {
        let Some(d) = self.dialogs.get_mut(call_id) else {
            return false;
        };
        if d.remote_tag.is_empty() || !d.acked {
            return false;
        }
        d.cseq += 1;
        let mut d = d.clone();
        if let Some(v) = via {
            d.remote_target = v;
        }
        self.dialogs.remove(call_id);
        let r = self.in_dialog(&d, Method::Bye, d.cseq);
        self.send_request(now, d.remote_target, &r);
        true
    }

    /// A request of ours in dialog `d`.
    fn in_dialog(&mut self, d: &EpDialog, method: Method, cseq: u32) -> Request {
        let me = self.addr;
        let branch = self.id("z9hG4bKd");
        let mut r = Request::new(method.clone(), format!("sip:pbx@{}", d.remote_target));
        let h = &mut r.headers;
        h.push(
            HeaderName::Via,
            format!("SIP/2.0/UDP {me};branch={branch};rport"),
        );
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("{};tag={}", d.local_uri, d.local_tag),
        );
        h.push(
            HeaderName::To,
            format!("{};tag={}", d.remote_uri, d.remote_tag),
        );
        h.push(HeaderName::CallId, d.call_id.clone());
        h.push(HeaderName::CSeq, format!("{cseq} {}", method.as_str()));
        r
    }

    /// A datagram arrived: into the receive buffer, or dropped when it is full.
    pub fn receive(&mut self, now: Instant, d: &Datagram) {
        if self.queue.len() >= self.buffer {
            self.stats.dropped += 1;
            return;
        }
        self.queue.push_back(d.clone());
        if self.next_service.is_none() {
            self.next_service = Some(now + self.service);
        }
    }

    fn handle(&mut self, now: Instant, d: &Datagram) {
        self.now = now;
        let Ok(p) = parse_datagram(&d.bytes) else {
            return;
        };
        match p.message {
            Message::Request(r) => self.on_request(now, d.from, r),
            Message::Response(r) => self.on_response(now, r),
        }
    }

    fn reply(
        &mut self,
        to: SocketAddr,
        req: &Request,
        status: u16,
        tag: &str,
        body: Option<String>,
    ) {
        let mut r = response_to(req, status, Some(tag));
        if (200..300).contains(&status) && matches!(req.method, Method::Invite) {
            r.headers
                .push(HeaderName::Contact, format!("<sip:ep@{}>", self.addr));
        }
        if let Some(b) = body {
            r.headers.push(HeaderName::ContentType, "application/sdp");
            r.body = Bytes::from(b);
        }
        let bytes = r.to_bytes();
        if let Some(b) = req
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_string))
        {
            self.answered.insert(b, bytes.clone());
        }
        if (200..300).contains(&status) && req.method == Method::Invite {
            // A UAS retransmits its 2xx until the ACK comes (RFC 3261 §13.3.1.4).
            let key = format!("{}/2xx", req.call_id().unwrap_or(""));
            self.pending.insert(
                key,
                Pending {
                    bye: false,
                    bytes: bytes.clone(),
                    to,
                    next: self.now + T1,
                    interval: T1,
                    tries: 1,
                },
            );
        }
        self.send(to, bytes);
    }

    fn on_request(&mut self, now: Instant, from: SocketAddr, r: Request) {
        let _ = now;
        let branch = r
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        if r.method != Method::Ack
            && let Some(prev) = self.answered.get(&branch).cloned()
        {
            self.stats.retransmissions += 1;
            self.send(from, prev);
            return;
        }
        let call_id = r.call_id().unwrap_or("").to_string();
        let to_tag = r.to_tag();
        match r.method {
            Method::Ack => {
                self.pending.remove(&format!("{call_id}/2xx"));
                if let Some(d) = self.dialogs.get_mut(&call_id) {
                    d.acked = true;
                }
            }
            Method::Invite if to_tag.is_none() => {
                let tag = self.id("t");
                let target = target_of(r.headers.get(&HeaderName::Contact)).unwrap_or(from);
                self.dialogs.insert(
                    call_id.clone(),
                    EpDialog {
                        call_id,
                        local_tag: tag.clone(),
                        remote_tag: r.from_tag().unwrap_or_default(),
                        remote_target: target,
                        cseq: 0,
                        local_uri: r.headers.get(&HeaderName::To).unwrap_or("").to_string(),
                        remote_uri: r
                            .headers
                            .get(&HeaderName::From)
                            .and_then(|f| crate::sip::NameAddr::parse(f).ok())
                            .map(|a| format!("<{}>", a.uri))
                            .unwrap_or_default(),
                        caller: false,
                        acked: false,
                    },
                );
                let body = sdp(self.addr);
                self.reply(from, &r, 200, &tag, Some(body));
            }
            Method::Invite if self.refuse_reinvites > 0 && self.dialogs.contains_key(&call_id) => {
                self.refuse_reinvites -= 1;
                self.stats.refused += 1;
                let mut resp = response_to(&r, 503, Some("busy"));
                resp.headers.push(HeaderName::RetryAfter, "1");
                let bytes = resp.to_bytes();
                self.answered.insert(branch, bytes.clone());
                self.send(from, bytes);
            }
            Method::Invite => match self.dialogs.get_mut(&call_id) {
                Some(d) => {
                    self.stats.reinvites += 1;
                    if let Some(t) = target_of(r.headers.get(&HeaderName::Contact)) {
                        d.remote_target = t;
                    }
                    let tag = d.local_tag.clone();
                    let body = sdp(self.addr);
                    self.reply(from, &r, 200, &tag, Some(body));
                }
                None => self.reply(from, &r, 481, "gone", None),
            },
            Method::Bye => {
                let known = self.dialogs.remove(&call_id);
                self.stats.byes_received += u64::from(known.is_some());
                let tag = known
                    .as_ref()
                    .map_or_else(|| "gone".to_string(), |d| d.local_tag.clone());
                self.reply(
                    from,
                    &r,
                    if known.is_some() { 200 } else { 481 },
                    &tag,
                    None,
                );
            }
            Method::Subscribe => self.reply(from, &r, 489, "ep", None),
            Method::Notify => {
                if r.headers
                    .get(&HeaderName::Event)
                    .is_some_and(|e| e.starts_with("check-sync"))
                {
                    self.stats.resets += 1;
                }
                self.reply(from, &r, 200, "ep", None);
            }
            _ => self.reply(from, &r, 200, "ep", None),
        }
    }

    fn on_response(&mut self, now: Instant, r: Response) {
        let Ok(cseq) = r.cseq() else {
            return;
        };
        let call_id = r.call_id().unwrap_or("").to_string();
        if r.status < 200 {
            return;
        }
        let key = format!("{call_id}/{}", cseq.seq);
        let was_pending = self.pending.remove(&key).is_some();
        match cseq.method {
            Method::Register if was_pending => {
                if r.status == 401
                    && cseq.seq < 3
                    && let (Some(ch), Some((user, pw))) = (
                        r.headers.get(&HeaderName::WwwAuthenticate),
                        self.registration.clone(),
                    )
                {
                    let auth = crate::sip::digest::answer_challenge(
                        ch,
                        &user,
                        &pw,
                        "REGISTER",
                        "sip:pbx.local",
                        1,
                        "sim",
                    );
                    let pbx = self.registrar;
                    let req = self.register_request(cseq.seq + 1, auth);
                    self.send_request(now, pbx, &req);
                } else if r.status == 200 {
                    self.registered += 1;
                }
            }
            Method::Invite => {
                let invite = self.invites.remove(&call_id);
                if r.status >= 300
                    && let Some((inv, to)) = &invite
                {
                    // The ACK of a non-2xx belongs to the INVITE's transaction (same branch).
                    let mut ack = Request::new(Method::Ack, inv.uri.clone());
                    for n in [HeaderName::Via, HeaderName::From, HeaderName::CallId] {
                        if let Some(v) = inv.headers.get(&n) {
                            ack.headers.push(n, v);
                        }
                    }
                    if let Some(v) = r.headers.get(&HeaderName::To) {
                        ack.headers.push(HeaderName::To, v);
                    }
                    ack.headers
                        .push(HeaderName::CSeq, format!("{} ACK", cseq.seq));
                    self.send(*to, ack.to_bytes());
                    if matches!(r.status, 401 | 407)
                        && cseq.seq == 1
                        && let Some((user, pw)) = self.registration.clone()
                    {
                        let header = if r.status == 407 {
                            (
                                HeaderName::ProxyAuthenticate,
                                HeaderName::ProxyAuthorization,
                            )
                        } else {
                            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
                        };
                        if let Some(ch) = r.headers.get(&header.0) {
                            let auth = crate::sip::digest::answer_challenge(
                                ch, &user, &pw, "INVITE", &inv.uri, 1, "sim",
                            );
                            let mut again = inv.clone();
                            let branch = self.id("z9hG4bKi");
                            again.headers.set(
                                HeaderName::Via,
                                format!("SIP/2.0/UDP {};branch={branch};rport", self.addr),
                            );
                            again.headers.set(HeaderName::CSeq, "2 INVITE");
                            if let Some(a) = auth {
                                again.headers.push(header.1, a);
                            }
                            if let Some(d) = self.dialogs.get_mut(&call_id) {
                                d.cseq = 2;
                            }
                            let to = *to;
                            self.invites.insert(call_id.clone(), (again.clone(), to));
                            self.send_request(now, to, &again);
                            return;
                        }
                    }
                }
                let Some(d) = self.dialogs.get_mut(&call_id) else {
                    return;
                };
                if (200..300).contains(&r.status) {
                    // The first 2xx sets the dialog's remote tag and target (RFC 3261
                    // §12.1.2); a retransmission is only ACKed, so it cannot undo a target
                    // refresh that came in between (a re-bind by the other node).
                    if was_pending {
                        self.stats.answered += 1;
                        d.remote_tag = r.to_tag().unwrap_or_default();
                        if let Some(t) = target_of(r.headers.get(&HeaderName::Contact)) {
                            d.remote_target = t;
                        }
                    }
                    let d = d.clone();
                    let ack = self.in_dialog(&d, Method::Ack, cseq.seq);
                    self.send_request(now, d.remote_target, &ack);
                } else {
                    self.dialogs.remove(&call_id);
                }
            }
            Method::Bye if was_pending => {
                if r.status == 200 {
                    self.stats.byes_ok += 1;
                } else {
                    self.stats.byes_failed += 1;
                }
            }
            _ => {}
        }
    }

    /// Read what is due from the buffer, retransmit what is due; give up after 7 tries
    /// (Timer B/F).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.next_service
            && t <= now
        {
            match self.queue.pop_front() {
                Some(d) => {
                    self.handle(now, &d);
                    self.next_service = (!self.queue.is_empty()).then(|| t + self.service);
                }
                None => self.next_service = None,
            }
        }
        let mut due = Vec::new();
        let mut gone = Vec::new();
        for (k, p) in &mut self.pending {
            if p.next <= now {
                if p.tries >= 7 {
                    gone.push((k.clone(), p.bye));
                    continue;
                }
                p.tries += 1;
                p.interval = (p.interval * 2).min(Duration::from_secs(4));
                p.next = now + p.interval;
                due.push((p.to, p.bytes.clone()));
            }
        }
        for (k, bye) in gone {
            self.pending.remove(&k);
            if let Some(call_id) = k.strip_suffix("/2xx") {
                // No ACK for our 2xx: the dialog is confirmed, but the session ends with a
                // BYE (RFC 3261 §13.3.1.4).
                let call_id = call_id.to_string();
                if let Some(d) = self.dialogs.get_mut(&call_id) {
                    d.acked = true;
                }
                self.hang_up(now, &call_id);
                continue;
            }
            self.stats.timeouts += 1;
            if bye {
                self.stats.byes_failed += 1;
            }
        }
        for (to, b) in due {
            self.send(to, b);
        }
    }

    /// When [`Self::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.next)
            .chain(self.next_service)
            .min()
    }

    /// Confirmed dialogs.
    pub fn confirmed(&self) -> usize {
        self.dialogs
            .values()
            .filter(|d| !d.remote_tag.is_empty())
            .count()
    }

    /// A confirmed dialog's Call-ID (one we may hang up), if any.
    pub fn some_call(&self) -> Option<String> {
        self.dialogs
            .values()
            .find(|d| !d.remote_tag.is_empty() && d.acked)
            .map(|d| d.call_id.clone())
    }

    /// The URI host of `uri` as an address (helper for checks).
    pub fn addr_of(uri: &str) -> Option<SocketAddr> {
        let u = Uri::parse(uri).ok()?;
        Some(SocketAddr::new(
            u.host.trim_matches(['[', ']']).parse().ok()?,
            u.port.unwrap_or(5060),
        ))
    }
}
