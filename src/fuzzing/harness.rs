//! The whole sans-IO [`Server`] driven by a fuzz input: a mode byte, then a sequence of
//! events, each from one of eight fixed network addresses, after a delay on a virtual clock.
//!
//! Encoding (all integers little-endian):
//! - byte 0, the mode: bits 0–1 pick a single node (0), the main of a pair (1), the stand-by
//!   of a pair in hot (2) or cold (3) mode; bit 2 turns the media relay on.
//! - then events: `[op << 4 | source] [delay_ms: u16] [len: u16] [len bytes of data]`.
//!
//! | op | event |
//! |---|---|
//! | 0 | UDP datagram `data` from `source` |
//! | 1 | TCP bytes `data` from `source`, framed by a [`StreamFramer`] per source |
//! | 2 | a response from `source` to the last request the server sent it: status in `data[0..2]`, body after |
//! | 3 | a request from `source` in the dialog of the last request the server sent it (`source` is that dialog's UAS); method `data[0]`, body after |
//! | 4 | a request from `source` in the dialog of the last final response the server sent it (`source` is the UAC); method `data[0]`, body after |
//! | 5 | control `data[0]`: switchover, partition on, partition off, `source` unreachable, shutdown |
//!
//! Generated messages (ops 2–4) let mutations reach deep call states: the server's own tags,
//! branches and Call-IDs are echoed back whatever they are. Keep-alives from the peer address
//! are re-signed with the pair secret, so mutated ones still pass authentication and reach the
//! role machine and the digest. Every random draw comes from [`crate::entropy`], reseeded per
//! run, so an input replays the same way each time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::dialog::LocalContact;
use crate::net::{Flow, Inbound, Proto};
use crate::pair::{auth, keepalive};
use crate::server::Server;
use crate::sip::{
    HeaderName, Message, Method, Parsed, Request, Response, SipMessage, StreamFramer, Version,
    parse_datagram, response_to,
};

/// The shared secret of the harness's pair.
pub const SECRET: &str = "fuzz-pair-secret";

/// The eight addresses events come from.
pub const SOURCES: [&str; 8] = [
    "127.0.0.1:5091",    // 0: alice's phone
    "127.0.0.1:5092",    // 1: bob's phone
    "127.0.0.1:5080",    // 2: the gateway trunk
    "127.0.0.1:5070",    // 3: the carrier trunk (answers dialog queries)
    "127.0.0.1:5062",    // 4: the peer node
    "198.51.100.7:5060", // 5: a stranger
    "[::1]:5093",        // 6: carol's phone, over IPv6
    "127.0.0.1:5094",    // 7: dave's phone
];

/// Index of the peer node in [`SOURCES`].
pub const PEER: u8 = 4;

/// The server's wall clock (unix ms) when the harness starts it.
pub const WALL_MS: u64 = 1_700_000_000_000;

/// Methods ops 3 and 4 can send, by `data[0] % len`.
pub const METHODS: [&str; 10] = [
    "ACK", "BYE", "INVITE", "NOTIFY", "UPDATE", "INFO", "CANCEL", "OPTIONS", "REFER", "PRACK",
];

/// What the server is, for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A node without `[pair]`.
    Single,
    /// The home main of a pair.
    Main,
    /// The home stand-by of a pair, hot takeover.
    Standby,
    /// The home stand-by of a pair, cold takeover.
    StandbyCold,
}

impl Mode {
    /// The mode byte for this mode (relay off).
    pub fn byte(self, relay: bool) -> u8 {
        let m = match self {
            Self::Single => 0,
            Self::Main => 1,
            Self::Standby => 2,
            Self::StandbyCold => 3,
        };
        m | if relay { 4 } else { 0 }
    }
}

/// One event of a fuzz input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Operation (see the module table).
    pub op: u8,
    /// Index into [`SOURCES`].
    pub source: u8,
    /// Virtual time to let pass first.
    pub delay_ms: u16,
    /// Payload.
    pub data: Vec<u8>,
}

impl Event {
    /// Append the encoding of this event.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push((self.op << 4) | (self.source & 0x0f));
        out.extend_from_slice(&self.delay_ms.to_le_bytes());
        let len = u16::try_from(self.data.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(self.data.get(..usize::from(len)).unwrap_or(&self.data));
    }

    /// Decode events until the input ends (a short last event takes what is left).
    pub fn decode_all(mut data: &[u8]) -> Vec<Self> {
        let mut out = Vec::new();
        while let Some((&[kind, d0, d1, l0, l1], rest)) = data.split_first_chunk::<5>() {
            let len = usize::from(u16::from_le_bytes([l0, l1]));
            let (payload, rest) = rest.split_at_checked(len).unwrap_or((rest, &[]));
            out.push(Self {
                op: kind >> 4,
                source: kind & 0x0f,
                delay_ms: u16::from_le_bytes([d0, d1]),
                data: payload.to_vec(),
            });
            data = rest;
        }
        out
    }
}

/// The configuration of the harness's node for `mode`.
pub fn config(mode: Mode, relay: bool) -> Config {
    let (name, home, udp, peer) = match mode {
        Mode::Single | Mode::Main => ("main-1", "main", "127.0.0.1:5060", "127.0.0.1:5062"),
        Mode::Standby | Mode::StandbyCold => {
            ("standby-1", "standby", "127.0.0.1:5060", "127.0.0.1:5062")
        }
    };
    let pair = match mode {
        Mode::Single => String::new(),
        _ => format!(
            "[pair]\npeer = \"{peer}\"\nsecret = \"{SECRET}\"\nmode = \"{}\"\n\
             witnesses = []\ntest_hooks = true\nping_endpoints = true\n\
             [takeover]\nfallback = \"cold\"\n",
            if mode == Mode::StandbyCold {
                "cold"
            } else {
                "hot"
            }
        ),
    };
    let media = if relay {
        "[media]\nmode = \"relay\"\nrtp_ports = \"30000-30019\"\n"
    } else {
        ""
    };
    let text = format!(
        "[node]\nname = \"{name}\"\nhome_role = \"{home}\"\nsip_udp = \"{udp}\"\n\
         sip_tcp = \"{udp}\"\n{pair}{media}\
         [timers]\nt1_ms = 50\nt2_ms = 400\nt4_ms = 500\n\
         [cdr]\nenabled = false\n\
         [[users]]\nname = \"alice\"\npassword = \"alice-secret\"\n\
         [[users]]\nname = \"bob\"\npassword = \"bob-secret\"\n\
         [[users]]\nname = \"carol\"\npassword = \"carol-secret\"\n\
         [[users]]\nname = \"dave\"\npassword = \"dave-secret\"\ncontact = \"sip:dave@127.0.0.1:5094\"\n\
         [[trunks]]\nname = \"gateway\"\naddress = \"127.0.0.1:5080\"\nprefixes = [\"0\"]\n\
         [[trunks]]\nname = \"carrier\"\naddress = \"127.0.0.1:5070\"\nprefixes = [\"9\"]\n\
         strip = 1\ndialog_query = true\n"
    );
    match Config::from_toml_str(&text, "fuzz") {
        Ok(c) => c,
        Err(e) => panic!("the harness config is invalid: {e}"),
    }
}

/// A server and the world around it.
#[derive(Debug)]
pub struct Harness {
    server: Server,
    now: Instant,
    mode: Mode,
    framers: HashMap<u8, StreamFramer>,
    /// The last request the server sent to each source, and on which transport.
    last_request: HashMap<u8, (Request, Proto)>,
    /// The last INVITE (and the last other request) the server sent to each source: the
    /// dialogs op 3 continues.
    last_dialog: HashMap<(u8, bool), (Request, Proto)>,
    /// The last final response the server sent to each source.
    last_final: HashMap<u8, (Response, Proto)>,
    cseq: u32,
    branch: u64,
    start: Instant,
    peer_signer: auth::Signer,
}

fn source_addr(source: u8) -> SocketAddr {
    let s = SOURCES
        .get(usize::from(source % 8))
        .copied()
        .unwrap_or("127.0.0.1:5091");
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5091)))
}

fn source_of(addr: SocketAddr) -> Option<u8> {
    (0..8u8).find(|&i| source_addr(i) == addr)
}

/// Longest virtual time one event may let pass (keeps a run short; with T1 = 50 ms every
/// transaction timer, Timer B and F included, fires within it).
const MAX_DELAY: Duration = Duration::from_secs(4);

/// Most timer firings one delay may cause.
const MAX_FIRINGS: usize = 5_000;

impl Harness {
    /// A fresh server in `mode`, with every random draw a function of `seed`.
    pub fn new(mode: Mode, relay: bool, seed: u64) -> Self {
        crate::entropy::reseed(seed);
        let now = Instant::now();
        let cfg = config(mode, relay);
        let me = LocalContact {
            udp: "127.0.0.1:5060".into(),
            tcp: "127.0.0.1:5060".into(),
            tls: String::new(),
        };
        let server = Server::new(
            Arc::new(cfg),
            me,
            now,
            WALL_MS,
            Box::new(crate::pair::epoch::MemoryEpochStore::new(1)),
        );
        let mut h = Self {
            server,
            now,
            mode,
            framers: HashMap::new(),
            last_request: HashMap::new(),
            last_dialog: HashMap::new(),
            last_final: HashMap::new(),
            cseq: 100,
            branch: 0,
            start: now,
            peer_signer: auth::Signer::new(SECRET.as_bytes(), WALL_MS - 60_000),
        };
        h.server.handle_timeout(now);
        h.drain();
        h
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Let `d` of virtual time pass, firing every timer due on the way.
    pub fn advance(&mut self, d: Duration) -> Vec<(u8, Proto, Message)> {
        let target = self.now + d.min(MAX_DELAY);
        let mut out = Vec::new();
        for _ in 0..MAX_FIRINGS {
            match self.server.poll_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.server.handle_timeout(self.now);
                    out.extend(self.drain());
                }
                _ => break,
            }
        }
        self.now = target;
        out
    }

    /// Apply one event; returns what the server sent meanwhile, by destination source (sends
    /// to other addresses are dropped), parsed.
    pub fn apply(&mut self, ev: &Event) -> Vec<(u8, Proto, Message)> {
        let mut out = self.advance(Duration::from_millis(u64::from(ev.delay_ms)));
        let source = ev.source % 8;
        let from = source_addr(source);
        match ev.op % 6 {
            0 => self.deliver_bytes(source, Flow::udp(from), &ev.data),
            1 => {
                let framer = self.framers.entry(source).or_default();
                match framer.push(&ev.data) {
                    Ok(msgs) => {
                        for p in msgs {
                            self.deliver(source, Flow::tcp(from), p);
                        }
                    }
                    // A stream that lost its framing is closed.
                    Err(_) => {
                        self.framers.remove(&source);
                    }
                }
            }
            2 => {
                if let Some((resp, proto)) = self.reply(source, &ev.data) {
                    let flow = flow(proto, from);
                    self.deliver(source, flow, parsed(Message::Response(resp)));
                }
            }
            3 | 4 => {
                if let Some((req, proto)) = self.in_dialog(source, ev.op % 6 == 3, &ev.data) {
                    let flow = flow(proto, from);
                    self.deliver(source, flow, parsed(Message::Request(req)));
                }
            }
            _ => self.control(source, ev.data.first().copied().unwrap_or(0)),
        }
        out.extend(self.drain());
        out
    }

    fn deliver_bytes(&mut self, source: u8, flow: Flow, bytes: &[u8]) {
        match parse_datagram(bytes) {
            Ok(p) => self.deliver(source, flow, p),
            Err(e) => {
                self.server.handle_inbound(
                    self.now,
                    Inbound::Malformed {
                        raw: bytes::Bytes::copy_from_slice(bytes),
                        error: e.to_string(),
                        flow,
                    },
                );
            }
        }
    }

    fn deliver(&mut self, source: u8, flow: Flow, mut p: Parsed) {
        if source == PEER {
            // The peer signs everything it sends (`pair::auth`): so does the harness, with a
            // fresh time and counter, so that mutated pair messages still get through.
            let body = p.message.body().clone();
            let wall = WALL_MS
                + u64::try_from(self.now.saturating_duration_since(self.start).as_millis())
                    .unwrap_or(0);
            match &mut p.message {
                Message::Request(r) => {
                    keepalive::resign(&mut r.headers, SECRET.as_bytes(), &body);
                    let start = auth::start_of_request(r.method.as_str());
                    self.peer_signer
                        .sign(&mut r.headers, &start, &body, wall, flow.proto.into());
                }
                Message::Response(r) => {
                    keepalive::resign(&mut r.headers, SECRET.as_bytes(), &body);
                    let start = auth::start_of_response(r.status);
                    self.peer_signer
                        .sign(&mut r.headers, &start, &body, wall, flow.proto.into());
                }
            }
        }
        self.server
            .handle_inbound(self.now, Inbound::Message(Box::new(p), flow));
    }

    fn control(&mut self, source: u8, what: u8) {
        match what % 5 {
            0 => {
                let _ = self.server.switchover(self.now);
            }
            1 => {
                let _ = self.server.set_partition(true);
            }
            2 => {
                let _ = self.server.set_partition(false);
            }
            3 => {
                let from = source_addr(source);
                self.server
                    .handle_inbound(self.now, Inbound::Unreachable(Flow::udp(from)));
            }
            _ => self.server.shutdown(self.now),
        }
    }

    /// Collect what the server sent, remembering the last request and final response per
    /// destination.
    pub fn drain(&mut self) -> Vec<(u8, Proto, Message)> {
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            let Some(dest) = source_of(t.flow.remote) else {
                continue;
            };
            let Ok(p) = parse_datagram(&t.bytes) else {
                continue;
            };
            match &p.message {
                Message::Request(r) if r.method != Method::Ack => {
                    self.last_request.insert(dest, (r.clone(), t.flow.proto));
                    let invite = r.method == Method::Invite;
                    self.last_dialog
                        .insert((dest, invite), (r.clone(), t.flow.proto));
                }
                Message::Response(r) if r.status >= 200 => {
                    self.last_final.insert(dest, (r.clone(), t.flow.proto));
                }
                _ => {}
            }
            out.push((dest, t.flow.proto, p.message));
        }
        let _ = self.server.take_cdrs();
        let _ = self.server.take_media_commands();
        out
    }

    fn next_branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bKfz{}", self.branch)
    }

    fn reply(&mut self, source: u8, data: &[u8]) -> Option<(Response, Proto)> {
        let (req, proto) = self.last_request.get(&source)?.clone();
        let (status, body) = match data.split_first_chunk::<2>() {
            Some((s, body)) => (u16::from_le_bytes(*s), body),
            None => (200, &[][..]),
        };
        let status = 100 + status % 600;
        let mut r = response_to(&req, status, Some(&format!("fz{source}")));
        if (101..300).contains(&status) {
            r.headers.push(
                HeaderName::Contact,
                format!("<sip:fz@{}>", contact_host(source, proto)),
            );
        }
        if matches!(req.method, Method::Subscribe) && status < 300 {
            r.headers.push(HeaderName::Expires, "0");
        }
        attach_body(&mut r.headers, &mut r.body, body);
        Some((r, proto))
    }

    fn in_dialog(&mut self, source: u8, as_uas: bool, data: &[u8]) -> Option<(Request, Proto)> {
        let (method, body) = match data.split_first() {
            Some((&m, body)) => (m, body),
            None => (1, &[][..]),
        };
        let name = METHODS
            .get(usize::from(method) % METHODS.len())
            .copied()
            .unwrap_or("BYE");
        let method = Method::from_token(name);
        let contact = contact_host(source, Proto::Udp);
        // An ACK to a non-2xx final response, and a CANCEL, belong to the INVITE's
        // transaction: they reuse its Via (RFC 3261 §17.1.1.3, §9.1).
        let mut via = None;
        let (from, to, call_id, seq, proto, event) = if as_uas {
            // The server's request opened the dialog: we answer in it as the UAS, so our From
            // is its To (with our tag) and our To its From.
            // NOTIFY continues a subscription; anything else prefers a call's dialog.
            let invite = method != Method::Notify;
            let (req, proto) = self
                .last_dialog
                .get(&(source, invite))
                .or_else(|| self.last_request.get(&source))?;
            let to_value = req.headers.get(&HeaderName::To)?.to_string();
            let from_value = if to_value.contains("tag=") {
                to_value
            } else {
                format!("{to_value};tag=fz{source}")
            };
            (
                from_value,
                req.headers.get(&HeaderName::From)?.to_string(),
                req.call_id().ok()?.to_string(),
                None,
                *proto,
                req.headers.get(&HeaderName::Event).map(str::to_string),
            )
        } else {
            // The server answered our request: we continue as its UAC.
            let (resp, proto) = self.last_final.get(&source)?;
            let cseq = resp.cseq().ok()?;
            if (method == Method::Ack && resp.status >= 300) || method == Method::Cancel {
                via = resp.headers.get(&HeaderName::Via).map(str::to_string);
            }
            (
                resp.headers.get(&HeaderName::From)?.to_string(),
                resp.headers.get(&HeaderName::To)?.to_string(),
                resp.call_id().ok()?.to_string(),
                Some(cseq.seq),
                *proto,
                None,
            )
        };
        let seq = match (&method, seq) {
            (Method::Ack | Method::Cancel, Some(s)) => s,
            _ => {
                self.cseq += 1;
                self.cseq
            }
        };
        let mut r = Request::new(method.clone(), format!("sip:fz@{}", source_addr(0)));
        r.uri = "sip:understudy@127.0.0.1:5060".into();
        let via = match via {
            Some(v) => v,
            None => format!(
                "SIP/2.0/{} {contact};branch={};rport",
                proto.via_token(),
                self.next_branch()
            ),
        };
        r.headers.push(HeaderName::Via, via);
        r.headers.push(HeaderName::MaxForwards, "70");
        r.headers.push(HeaderName::From, from);
        r.headers.push(HeaderName::To, to);
        r.headers.push(HeaderName::CallId, call_id);
        r.headers
            .push(HeaderName::CSeq, format!("{seq} {}", method.as_str()));
        r.headers
            .push(HeaderName::Contact, format!("<sip:fz@{contact}>"));
        if method == Method::Notify {
            r.headers
                .push(HeaderName::Event, event.unwrap_or_else(|| "dialog".into()));
            r.headers
                .push(HeaderName::SubscriptionState, "terminated;reason=timeout");
        }
        let mut body = body;
        match (&method, body.split_first()) {
            // A body starting with `?` becomes the escaped Replaces of an attended transfer;
            // with `#`, the RAck of a PRACK: mutations reach both parsers.
            (Method::Refer, Some((b'?', rest))) => {
                let rest = String::from_utf8_lossy(rest);
                r.headers.push(
                    HeaderName::ReferTo,
                    format!("<sip:bob@pbx.local?Replaces={rest}>"),
                );
                body = &[];
            }
            (Method::Refer, _) => r.headers.push(HeaderName::ReferTo, "<sip:bob@pbx.local>"),
            (Method::Prack, Some((b'#', rest))) => {
                r.headers
                    .push(HeaderName::Rack, String::from_utf8_lossy(rest).into_owned());
                body = &[];
            }
            _ => {}
        }
        attach_body(&mut r.headers, &mut r.body, body);
        Some((r, proto))
    }
}

fn flow(proto: Proto, remote: SocketAddr) -> Flow {
    match proto {
        Proto::Udp => Flow::udp(remote),
        Proto::Tcp => Flow::tcp(remote),
        Proto::Tls => Flow::tls(remote),
    }
}

fn parsed(message: Message) -> Parsed {
    Parsed {
        message,
        version: Version::Sip20,
    }
}

fn contact_host(source: u8, _proto: Proto) -> String {
    source_addr(source).to_string()
}

/// Put `body` on a message with the Content-Type its first bytes suggest.
fn attach_body(h: &mut crate::sip::Headers, slot: &mut bytes::Bytes, body: &[u8]) {
    if body.is_empty() {
        return;
    }
    let kind = if body.starts_with(b"v=") {
        "application/sdp"
    } else if body.windows(7).any(|w| w == b"reginfo") {
        "application/reginfo+xml"
    } else if body.windows(11).any(|w| w == b"dialog-info") {
        "application/dialog-info+xml"
    } else if body.starts_with(b"SIP/2.0") {
        "message/sipfrag"
    } else {
        "text/plain"
    };
    h.push(HeaderName::ContentType, kind);
    *slot = bytes::Bytes::copy_from_slice(body);
}

/// Run a whole fuzz input: a fresh server, every event, a final stretch of time so that
/// every timer the events started fires.
pub fn run(data: &[u8]) {
    let Some((&mode, events)) = data.split_first() else {
        return;
    };
    let relay = mode & 4 != 0;
    let mode = match mode & 3 {
        0 => Mode::Single,
        1 => Mode::Main,
        2 => Mode::Standby,
        _ => Mode::StandbyCold,
    };
    let mut h = Harness::new(mode, relay, 0x5eed);
    for ev in Event::decode_all(events).iter().take(128) {
        h.apply(ev);
    }
    h.advance(Duration::from_secs(5));
}
