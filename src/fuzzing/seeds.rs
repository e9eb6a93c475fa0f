//! Seed corpora for the fuzz targets, made from real traffic: each server seed is recorded by
//! driving a [`Harness`] through a scenario (registration with its digest challenge, calls
//! through both legs, re-INVITE, BLF and reg subscriptions, keep-alives with digest bodies,
//! a takeover) and answering what the server really sent. `fuzz/gen-seeds.sh` writes them to
//! `fuzz/seeds/<target>/`; the tests replay every one.

use super::harness::{Event, Harness, METHODS, Mode, PEER, SOURCES};
use crate::net::Proto;
use crate::pair::keepalive::{self, Info};
use crate::pair::{Announced, dialoginfo, regsync};
use crate::sip::digest::answer_challenge;
use crate::sip::{HeaderName, Message};

/// A seed: the target it is for, a file name, the bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Fuzz target (`message`, `framing`, `server`, `bodies`, `admin`).
    pub target: &'static str,
    /// File name.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

const ALICE: u8 = 0;
const BOB: u8 = 1;
const GATEWAY: u8 = 2;
const CARRIER: u8 = 3;

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// Records events while driving a harness, so that the recording replays the same run.
struct Script {
    h: Harness,
    events: Vec<Event>,
    mode_byte: u8,
    seen: Vec<(u8, Proto, Message)>,
    seq: u32,
}

impl Script {
    fn new(mode: Mode, relay: bool) -> Self {
        Self {
            h: Harness::new(mode, relay, 0x5eed),
            events: Vec::new(),
            mode_byte: mode.byte(relay),
            seen: Vec::new(),
            seq: 0,
        }
    }

    fn push(&mut self, op: u8, source: u8, delay_ms: u16, data: Vec<u8>) {
        let ev = Event {
            op,
            source,
            delay_ms,
            data,
        };
        let out = self.h.apply(&ev);
        self.seen.extend(out);
        self.events.push(ev);
    }

    fn udp(&mut self, source: u8, text: &str) {
        self.push(0, source, 5, text.as_bytes().to_vec());
    }

    fn tcp(&mut self, source: u8, text: &str) {
        self.push(1, source, 5, text.as_bytes().to_vec());
    }

    fn reply(&mut self, source: u8, status: u16, body: &str) {
        let mut data = status.wrapping_sub(100).to_le_bytes().to_vec();
        data.extend_from_slice(body.as_bytes());
        self.push(2, source, 5, data);
    }

    fn in_dialog(&mut self, source: u8, as_uas: bool, method: &str, body: &str) {
        let m = METHODS.iter().position(|x| *x == method).unwrap_or(1);
        let mut data = vec![u8::try_from(m).unwrap_or(1)];
        data.extend_from_slice(body.as_bytes());
        self.push(if as_uas { 3 } else { 4 }, source, 5, data);
    }

    fn wait(&mut self, ms: u16) {
        self.push(0, 5, ms, Vec::new());
    }

    fn seed(&self, name: &str) -> Seed {
        let mut bytes = vec![self.mode_byte];
        for e in &self.events {
            e.encode(&mut bytes);
        }
        Seed {
            target: "server",
            name: name.to_string(),
            bytes,
        }
    }

    /// The challenge in the last 401/407 sent to `source`.
    fn challenge(&self, source: u8) -> Option<String> {
        self.seen.iter().rev().find_map(|(d, _, m)| match m {
            Message::Response(r) if *d == source && matches!(r.status, 401 | 407) => r
                .headers
                .get(&HeaderName::WwwAuthenticate)
                .or_else(|| r.headers.get(&HeaderName::ProxyAuthenticate))
                .map(str::to_string),
            _ => None,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// REGISTER `user` from `source`, answering the digest challenge.
    fn register(&mut self, user: &str, source: u8) {
        let addr = SOURCES.get(usize::from(source)).copied().unwrap_or("");
        let call_id = format!("reg-{user}");
        let build = |seq: u32, auth: Option<&str>| {
            let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
            format!(
                "REGISTER sip:pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKr{user}{seq};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@pbx.local>;tag=r{user}\r\nTo: <sip:{user}@pbx.local>\r\n\
                 Call-ID: {call_id}\r\nCSeq: {seq} REGISTER\r\nContact: <sip:{user}@{addr}>;expires=3600\r\n\
                 {auth}User-Agent: seed\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let seq = self.next_seq();
        self.udp(source, &build(seq, None));
        let auth = self.challenge(source).and_then(|c| {
            answer_challenge(
                &c,
                user,
                &format!("{user}-secret"),
                "REGISTER",
                "sip:pbx.local",
                1,
                "c0ffee",
            )
        });
        let seq = self.next_seq();
        self.udp(source, &build(seq, auth.as_deref()));
    }

    /// INVITE `to` from `user` at `source`, answering a 407 when there is one.
    fn invite(&mut self, user: Option<&str>, source: u8, to: &str, call_id: &str, tcp: bool) {
        let addr = SOURCES.get(usize::from(source)).copied().unwrap_or("");
        let via = if tcp { "TCP" } else { "UDP" };
        let from = user.unwrap_or("gw");
        let body = sdp(4000 + u16::from(source) * 2);
        let build = |seq: u32, auth: Option<&str>| {
            let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
            format!(
                "INVITE sip:{to}@pbx.local SIP/2.0\r\nVia: SIP/2.0/{via} {addr};branch=z9hG4bKi{call_id}{seq};rport\r\n\
                 Max-Forwards: 70\r\nFrom: \"{from}\" <sip:{from}@pbx.local>;tag=i{call_id}\r\nTo: <sip:{to}@pbx.local>\r\n\
                 Call-ID: {call_id}\r\nCSeq: {seq} INVITE\r\nContact: <sip:{from}@{addr}>\r\n{auth}\
                 Supported: timer\r\nSession-Expires: 1800\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE\r\n\
                 Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let seq = self.next_seq();
        let first = build(seq, None);
        if tcp {
            self.tcp(source, &first);
        } else {
            self.udp(source, &first);
        }
        if let Some(user) = user
            && let Some(c) = self.challenge(source)
        {
            // ACK the 407, then try again with credentials.
            self.in_dialog(source, false, "ACK", "");
            let auth = answer_challenge(
                &c,
                user,
                &format!("{user}-secret"),
                "INVITE",
                &format!("sip:{to}@pbx.local"),
                1,
                "c0ffee",
            );
            let seq = self.next_seq();
            self.udp(source, &build(seq, auth.as_deref()));
        }
    }

    fn keepalive(&mut self, role: Announced, epoch: u64, body: &str) {
        let n = self.next_seq();
        let peer = SOURCES.get(usize::from(PEER)).copied().unwrap_or("");
        let mut r = crate::sip::Request::new(crate::sip::Method::Options, "sip:127.0.0.1:5060");
        let h = &mut r.headers;
        h.push(
            HeaderName::Via,
            format!("SIP/2.0/UDP {peer};branch=z9hG4bKka{n}"),
        );
        h.push(HeaderName::MaxForwards, "70");
        h.push(HeaderName::From, format!("<sip:main-1@{peer}>;tag=kapeer"));
        h.push(HeaderName::To, "<sip:127.0.0.1:5060>");
        h.push(HeaderName::CallId, "ka-peer-seed");
        h.push(HeaderName::CSeq, format!("{n} OPTIONS"));
        if !body.is_empty() {
            h.push(HeaderName::ContentType, crate::pair::digest::CONTENT_TYPE);
            r.body = bytes::Bytes::copy_from_slice(body.as_bytes());
        }
        let info = Info {
            node: "main-1".into(),
            role,
            epoch,
            calls: 1,
            config: self.h.server().config().shared_digest(),
        };
        let b = r.body.clone();
        keepalive::stamp(&mut r.headers, super::harness::SECRET.as_bytes(), &info, &b);
        self.push(0, PEER, 100, r.to_bytes().to_vec());
    }

    /// A request from the peer node, signed as the peer signs its pair requests.
    fn peer(&mut self, text: &str, role: Announced) {
        let Ok(p) = crate::sip::parse_datagram(text.as_bytes()) else {
            return;
        };
        let Message::Request(mut r) = p.message else {
            return;
        };
        let info = Info {
            node: "main-1".into(),
            role,
            epoch: 0,
            calls: 0,
            config: self.h.server().config().shared_digest(),
        };
        let b = r.body.clone();
        keepalive::stamp(&mut r.headers, super::harness::SECRET.as_bytes(), &info, &b);
        self.push(0, PEER, 5, r.to_bytes().to_vec());
    }

    /// Digest bodies the server sent to the peer (when it is the active).
    fn digest_bodies(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(d, _, _)| *d == PEER)
            .filter_map(|(_, _, m)| {
                let b = String::from_utf8_lossy(m.body()).into_owned();
                b.starts_with("D\t").then_some(b)
            })
            .collect()
    }
}

/// Alice and Bob register; Alice calls Bob; Bob answers; a re-INVITE; Bob hangs up.
fn call_between_phones(mode: Mode, relay: bool) -> Script {
    let mut s = Script::new(mode, relay);
    if mode == Mode::Main {
        s.wait(1000);
    }
    s.register("alice", ALICE);
    s.register("bob", BOB);
    s.invite(Some("alice"), ALICE, "bob", "call-ab", false);
    s.reply(BOB, 180, "");
    s.reply(BOB, 200, &sdp(5002));
    s.in_dialog(ALICE, false, "ACK", "");
    s.wait(500);
    s.in_dialog(ALICE, false, "INVITE", &sdp(4010));
    s.reply(BOB, 200, &sdp(5002));
    s.in_dialog(ALICE, false, "ACK", "");
    s.in_dialog(BOB, true, "BYE", "");
    s.reply(ALICE, 200, "");
    s
}

/// The gateway calls a number on the carrier; the carrier rings, answers and hangs up.
fn trunk_call(tcp: bool) -> Script {
    let mut s = Script::new(Mode::Single, false);
    s.invite(None, GATEWAY, "91234", "call-gw", tcp);
    s.reply(CARRIER, 183, &sdp(6000));
    s.reply(CARRIER, 200, &sdp(6000));
    s.in_dialog(GATEWAY, false, "ACK", "");
    s.in_dialog(CARRIER, true, "INFO", "Signal=1\r\nDuration=160\r\n");
    s.reply(GATEWAY, 200, "");
    s.in_dialog(GATEWAY, false, "BYE", "");
    s.reply(CARRIER, 200, "");
    s
}

/// A call that is cancelled while ringing, and one that is refused.
fn cancel_and_busy() -> Script {
    let mut s = Script::new(Mode::Single, false);
    s.register("bob", BOB);
    s.invite(None, GATEWAY, "bob", "call-cancel", false);
    s.reply(BOB, 180, "");
    s.udp(
        GATEWAY,
        "CANCEL sip:bob@pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKicall-cancel1;rport\r\n\
         Max-Forwards: 70\r\nFrom: \"gw\" <sip:gw@pbx.local>;tag=icall-cancel\r\nTo: <sip:bob@pbx.local>\r\n\
         Call-ID: call-cancel\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
    );
    s.reply(BOB, 487, "");
    s.invite(None, GATEWAY, "bob", "call-busy", false);
    s.reply(BOB, 486, "");
    s.in_dialog(GATEWAY, false, "ACK", "");
    s
}

/// BLF: Alice subscribes to Bob's dialogs; a call to Bob changes them.
fn blf() -> Script {
    let mut s = Script::new(Mode::Single, false);
    s.register("alice", ALICE);
    s.register("bob", BOB);
    let sub = |auth: &str| {
        format!(
            "SUBSCRIBE sip:bob@pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5091;branch=z9hG4bKblf{};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@pbx.local>;tag=blf\r\nTo: <sip:bob@pbx.local>\r\n\
             Call-ID: blf-1\r\nCSeq: {} SUBSCRIBE\r\nContact: <sip:alice@127.0.0.1:5091>\r\n\
             Event: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n",
            auth.len(),
            auth.len() + 1
        )
    };
    s.udp(ALICE, &sub(""));
    if let Some(c) = s.challenge(ALICE) {
        let a = answer_challenge(
            &c,
            "alice",
            "alice-secret",
            "SUBSCRIBE",
            "sip:bob@pbx.local",
            1,
            "b1f",
        )
        .unwrap_or_default();
        s.udp(ALICE, &sub(&format!("Proxy-Authorization: {a}\r\n")));
    }
    s.reply(ALICE, 200, "");
    s.invite(None, GATEWAY, "bob", "call-blf", false);
    s.reply(BOB, 180, "");
    s.wait(1200);
    s.reply(ALICE, 200, "");
    s.reply(BOB, 200, &sdp(5002));
    s.in_dialog(GATEWAY, false, "ACK", "");
    s.wait(1200);
    s.reply(ALICE, 200, "");
    s
}

/// The main of a pair with a stand-by answering its keep-alives and subscribing to its
/// registrations; a call is set up, so the digest flows; then a switchover.
fn main_with_standby() -> Script {
    let mut s = Script::new(Mode::Main, false);
    s.wait(1000);
    s.keepalive(Announced::Standby, 0, "A\t0:0\n");
    s.register("alice", ALICE);
    s.register("bob", BOB);
    s.peer(
        "SUBSCRIBE sip:reg@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKregsub;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:standby-1@127.0.0.1:5062>;tag=regsub\r\nTo: <sip:reg@127.0.0.1:5060>\r\n\
         Call-ID: regsub-1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:standby-1@127.0.0.1:5062>\r\n\
         Event: reg\r\nAccept: application/reginfo+xml\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
        Announced::Standby,
    );
    s.reply(PEER, 200, "");
    s.invite(Some("alice"), ALICE, "bob", "call-pair", false);
    s.reply(BOB, 200, &sdp(5002));
    s.in_dialog(ALICE, false, "ACK", "");
    s.wait(250);
    s.keepalive(Announced::Standby, 0, "A\t0:0\n");
    s.wait(250);
    s.push(5, PEER, 5, vec![0]);
    s.wait(300);
    s
}

/// The stand-by of a pair: keep-alives with the digest of a call, the reg subscription with
/// a full reginfo, then silence: takeover, re-bind of the call, and a BYE through it.
fn standby_takeover(mode: Mode, digest: &[String]) -> Script {
    let mut s = Script::new(mode, false);
    s.keepalive(Announced::Active, 1, "");
    s.wait(150);
    s.reply(PEER, 200, "");
    let info = regsync::RegInfo {
        version: 0,
        full: true,
        records: vec![
            regsync::RegRecord {
                aor: "alice".into(),
                contacts: vec![regsync::RegContact {
                    uri: "sip:alice@127.0.0.1:5091".into(),
                    active: true,
                    expires: 3600,
                    source: Some("udp:127.0.0.1:5091".into()),
                    instance: None,
                }],
            },
            regsync::RegRecord {
                aor: "bob".into(),
                contacts: vec![regsync::RegContact {
                    uri: "sip:bob@127.0.0.1:5092".into(),
                    active: true,
                    expires: 3600,
                    source: Some("udp:127.0.0.1:5092".into()),
                    instance: None,
                }],
            },
        ],
    };
    s.in_dialog(PEER, true, "NOTIFY", &regsync::to_xml(&info, "pbx.local"));
    for d in digest {
        s.keepalive(Announced::Active, 1, d);
    }
    s.keepalive(Announced::Active, 1, "");
    // The main falls silent: probe, takeover, re-bind.
    s.wait(1200);
    s.reply(ALICE, 200, &sdp(4000));
    s.reply(BOB, 200, &sdp(5002));
    s.reply(CARRIER, 200, "");
    s.in_dialog(CARRIER, true, "NOTIFY", &dialog_info_seed());
    s.wait(2500);
    s.in_dialog(ALICE, true, "BYE", "");
    s.reply(BOB, 200, "");
    s
}

fn dialog_info_seed() -> String {
    let info = dialoginfo::DialogInfo {
        version: 1,
        full: true,
        entity: "sip:carrier@127.0.0.1:5070".into(),
        dialogs: vec![dialoginfo::DialogReport {
            id: "1".into(),
            call_id: "call-gw-b".into(),
            local_tag: "ctag".into(),
            remote_tag: "u0123456789abcdefb".into(),
            direction: Some("recipient".into()),
            state: "confirmed".into(),
            duration: Some(12),
            ..Default::default()
        }],
    };
    dialoginfo::to_xml(&info)
}

/// Every seed, for every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut server = vec![
        call_between_phones(Mode::Single, false).seed("call-phones"),
        call_between_phones(Mode::Single, true).seed("call-phones-relay"),
        call_between_phones(Mode::Main, false).seed("call-phones-main"),
        trunk_call(false).seed("call-trunks"),
        trunk_call(true).seed("call-trunks-tcp"),
        cancel_and_busy().seed("cancel-busy"),
        blf().seed("blf"),
    ];
    let main = main_with_standby();
    let digest = main.digest_bodies();
    server.push(main.seed("main-with-standby"));
    server.push(standby_takeover(Mode::Standby, &digest).seed("standby-takeover"));
    server.push(standby_takeover(Mode::StandbyCold, &digest).seed("standby-cold"));

    // Messages: every datagram and TCP chunk of the server seeds, and what the server sent.
    let mut messages = Vec::new();
    for s in &server {
        let Some((_, events)) = s.bytes.split_first() else {
            continue;
        };
        for (i, e) in Event::decode_all(events).into_iter().enumerate() {
            if e.op <= 1 && !e.data.is_empty() {
                messages.push((format!("{}-{i}", s.name), e.data));
            }
        }
    }
    for (name, m) in &messages {
        out.push(Seed {
            target: "message",
            name: name.clone(),
            bytes: m.clone(),
        });
    }
    // Framing: two messages back to back, chunked in a few ways.
    for (i, pair) in messages.windows(2).take(12).enumerate() {
        if let [(_, a), (_, b)] = pair {
            let mut bytes = vec![u8::try_from(i % 16).unwrap_or(0)];
            bytes.extend((0..i % 16).map(|k| u8::try_from(k * 7 + 1).unwrap_or(1)));
            bytes.extend_from_slice(b"\r\n\r\n");
            bytes.extend_from_slice(a);
            bytes.extend_from_slice(b);
            out.push(Seed {
                target: "framing",
                name: format!("pair-{i}"),
                bytes,
            });
        }
    }
    // Bodies: one of each kind, with its selector byte.
    let mut bodies = vec![
        ("dialog-info", 0u8, dialog_info_seed()),
        (
            "reginfo",
            1,
            regsync::to_xml(
                &regsync::RegInfo {
                    version: 3,
                    full: false,
                    records: vec![regsync::RegRecord {
                        aor: "alice".into(),
                        contacts: vec![regsync::RegContact {
                            uri: "sip:alice@127.0.0.1:5091;transport=tcp".into(),
                            active: false,
                            expires: 0,
                            source: None,
                            instance: None,
                        }],
                    }],
                },
                "pbx.local",
            ),
        ),
        ("sdp", 3, sdp(4000)),
        (
            "authorization",
            4,
            "Digest username=\"alice\", realm=\"pbx.local\", nonce=\"1.2.3\", uri=\"sip:pbx.local\", \
             response=\"00\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"x\""
                .to_string(),
        ),
    ];
    for d in &digest {
        bodies.push(("digest", 2, d.clone()));
    }
    for (i, (name, sel, body)) in bodies.into_iter().enumerate() {
        let mut bytes = vec![sel];
        bytes.extend_from_slice(body.as_bytes());
        out.push(Seed {
            target: "bodies",
            name: format!("{name}-{i}"),
            bytes,
        });
    }
    // Admin requests.
    for (name, text) in [
        ("status", "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        (
            "switchover",
            "POST /switchover HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "chunked",
            "POST /calls HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        ),
        (
            "http10",
            "GET /metrics?x=1 HTTP/1.0\nConnection: keep-alive\n\n",
        ),
    ] {
        out.push(Seed {
            target: "admin",
            name: name.into(),
            bytes: text.as_bytes().to_vec(),
        });
    }
    out.extend(server);
    out
}
