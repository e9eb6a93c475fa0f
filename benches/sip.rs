//! Micro-benchmarks: the message layer (parse + serialize of a typical INVITE with SDP) and a
//! REGISTER round (401 challenge, then authenticated REGISTER → 200) through the transaction
//! layer and the registrar of the in-process server, bytes in and bytes out.

// Benchmark code: it may unwrap, index and panic (the no-panic lints are for the server).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use understudy::config::Config;
use understudy::dialog::LocalContact;
use understudy::server::Server;
use understudy::sip::{HeaderName, Message, SipMessage, digest::answer_challenge, parse_datagram};
use understudy::transport::{Flow, Inbound};

const INVITE: &str = "INVITE sip:bob@pbx.local SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK1d32hr4;received=192.0.2.21\r\n\
Max-Forwards: 70\r\n\
To: \"Bob\" <sip:bob@pbx.local>\r\n\
From: \"Alice\" <sip:alice@pbx.local>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.10:5060>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, UPDATE, INFO\r\n\
Supported: timer, replaces\r\n\
User-Agent: bench/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 226\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=sendrecv\r\n";

fn parse_serialize(c: &mut Criterion) {
    let bytes = INVITE.as_bytes();
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse+serialize INVITE with SDP", |b| {
        b.iter(|| {
            let p = parse_datagram(black_box(bytes)).expect("parses");
            let Message::Request(r) = &p.message else {
                unreachable!()
            };
            black_box(r.cseq().ok());
            black_box(p.message.to_bytes())
        })
    });
    g.finish();
}

fn register_round(c: &mut Criterion) {
    let cfg = Arc::new(Config::builtin_default());
    let me = LocalContact {
        udp: "127.0.0.1:5060".into(),
        tcp: "127.0.0.1:5060".into(),
        tls: String::new(),
    };
    let t0 = Instant::now();
    let mut server = Server::new(
        cfg,
        me,
        t0,
        1_700_000_000_000,
        Box::new(understudy::pair::epoch::MemoryEpochStore::new(1)),
    );
    let from: SocketAddr = "127.0.0.1:5090".parse().expect("addr");
    let mut n: u64 = 0;
    let mut g = c.benchmark_group("registrar");
    g.throughput(Throughput::Elements(1));
    g.bench_function("REGISTER round (401 + authenticated 200)", |b| {
        b.iter(|| {
            n += 1;
            let req = |cseq: u64, auth: Option<String>| {
                let mut s = format!(
                    "REGISTER sip:pbx.local SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK{n}x{cseq};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:alice@pbx.local>\r\n\
From: <sip:alice@pbx.local>;tag=r{n}\r\n\
Call-ID: reg-{n}@bench\r\n\
CSeq: {cseq} REGISTER\r\n\
Contact: <sip:alice@127.0.0.1:5090>\r\n\
Expires: 600\r\n"
                );
                if let Some(a) = auth {
                    s.push_str(&format!("Authorization: {a}\r\n"));
                }
                s.push_str("Content-Length: 0\r\n\r\n");
                s
            };
            let now = t0 + std::time::Duration::from_micros(n);
            let p = parse_datagram(req(1, None).as_bytes()).expect("parses");
            server.handle_inbound(now, Inbound::Message(Box::new(p), Flow::udp(from)));
            let challenge = server.poll_transmit().expect("401");
            let p = parse_datagram(&challenge.bytes).expect("401 parses");
            let ch = p
                .message
                .headers()
                .get(&HeaderName::WwwAuthenticate)
                .expect("challenge")
                .to_string();
            let a = answer_challenge(
                &ch,
                "alice",
                "alice-secret",
                "REGISTER",
                "sip:pbx.local",
                1,
                "c",
            )
            .expect("answer");
            let p = parse_datagram(req(2, Some(a)).as_bytes()).expect("parses");
            server.handle_inbound(now, Inbound::Message(Box::new(p), Flow::udp(from)));
            let ok = server.poll_transmit().expect("200");
            assert!(ok.bytes.starts_with(b"SIP/2.0 200"));
            // keep the transaction table from growing without bound during the run
            server.handle_timeout(now + std::time::Duration::from_secs(40));
        })
    });
    g.finish();
}

criterion_group!(benches, parse_serialize, register_round);
criterion_main!(benches);
