//! The whole server in-process on a virtual clock: calls between two trunks (the carrier on
//! UDP or TCP), driven with the bytes the trunks would send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Server;
use crate::config::Config;
use crate::dialog::LocalContact;
use crate::media::sdp::media_addr;
use crate::net::{Flow, Inbound};
use crate::sip::{HeaderName, Message, Request, Response, SipMessage, parse_datagram, response_to};

const A: &str = "127.0.0.1:5080";
const B: &str = "127.0.0.1:5070";

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

fn server(now: Instant, b_transport: &str) -> Server {
    server_with(now, b_transport, "")
}

/// [`server`] with more keys for the carrier trunk (e.g. its credentials).
fn server_with(now: Instant, b_transport: &str, carrier_extra: &str) -> Server {
    let text = format!(
        "[node]\nname = \"n\"\nsip_udp = \"127.0.0.1:5060\"\n\
         [media]\nmode = \"relay\"\nrtp_ports = \"30000-30099\"\n\
         [cdr]\nenabled = false\n\
         [[trunks]]\nname = \"gateway\"\naddress = \"{A}\"\nprefixes = [\"0\"]\n\
         [[trunks]]\nname = \"carrier\"\naddress = \"{B}\"\nprefixes = [\"9\"]\nstrip = 1\n\
         transport = \"{b_transport}\"\n{carrier_extra}\
         [[users]]\nname = \"caller\"\npassword = \"caller-secret\"\n"
    );
    let cfg = Config::from_toml_str(&text, "test").expect("config");
    let me = LocalContact {
        udp: "127.0.0.1:5060".into(),
        tcp: "127.0.0.1:5060".into(),
        tls: String::new(),
    };
    Server::new(
        Arc::new(cfg),
        me,
        now,
        1_700_000_000_000,
        Box::new(crate::pair::epoch::MemoryEpochStore::new(1)),
    )
}

fn feed(s: &mut Server, now: Instant, bytes: &[u8], from: &str) {
    let p = parse_datagram(bytes).expect("parses");
    let from: SocketAddr = from.parse().expect("addr");
    s.handle_inbound(now, Inbound::Message(Box::new(p), Flow::udp(from)));
}

fn feed_tcp(s: &mut Server, now: Instant, bytes: &[u8], from: &str) {
    let p = parse_datagram(bytes).expect("parses");
    let from: SocketAddr = from.parse().expect("addr");
    s.handle_inbound(now, Inbound::Message(Box::new(p), Flow::tcp(from)));
}

fn sent_to(s: &mut Server, to: &str) -> Vec<Message> {
    let to: SocketAddr = to.parse().expect("addr");
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit() {
        if t.flow.remote == to
            && let Ok(p) = parse_datagram(&t.bytes)
        {
            out.push(p.message);
        }
    }
    out
}

fn first_request(msgs: Vec<Message>, method: crate::sip::Method) -> Request {
    msgs.into_iter()
        .find_map(|m| match m {
            Message::Request(r) if r.method == method => Some(r),
            _ => None,
        })
        .expect("request sent")
}

fn ok_to(msgs: Vec<Message>) -> Response {
    msgs.into_iter()
        .find_map(|m| match m {
            Message::Response(r) if r.status == 200 => Some(r),
            _ => None,
        })
        .expect("200 sent")
}

/// A call from the gateway (UDP) to the carrier, answered and acknowledged. Returns the
/// INVITE the carrier got and the 200 the gateway got.
fn answered_call(s: &mut Server, t0: Instant, b_tcp: bool) -> (Request, Response) {
    answered_call_with_id(s, t0, b_tcp, "refresh-1")
}

fn answered_call_with_id(
    s: &mut Server,
    t0: Instant,
    b_tcp: bool,
    call_id: &str,
) -> (Request, Response) {
    let body = sdp(6000);
    let invite = format!(
        "INVITE sip:91234@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{A}>;tag=f1\r\nTo: <sip:91234@127.0.0.1:5060>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{A}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    feed(s, t0, invite.as_bytes(), A);
    let b_invite = first_request(sent_to(s, B), crate::sip::Method::Invite);
    let mut ok = response_to(&b_invite, 200, Some("callee-tag"));
    let transport = if b_tcp { ";transport=tcp" } else { "" };
    ok.headers
        .push(HeaderName::Contact, format!("<sip:callee@{B}{transport}>"));
    ok.headers.push(HeaderName::ContentType, "application/sdp");
    ok.body = sdp(7000).into_bytes().into();
    if b_tcp {
        feed_tcp(s, t0, &ok.to_bytes(), B);
    } else {
        feed(s, t0, &ok.to_bytes(), B);
    }
    let ok_a = ok_to(sent_to(s, A));
    let ack = format!(
        "ACK sip:caller@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK{call_id}ack\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{A}>;tag=f1\r\nTo: {}\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        ok_a.headers.get(&HeaderName::To).unwrap_or_default()
    );
    feed(s, t0, ack.as_bytes(), A);
    let _ = sent_to(s, B);
    (b_invite, ok_a)
}

#[test]
fn the_session_refresh_to_b_offers_the_relay_not_the_caller() {
    let t0 = Instant::now();
    let mut s = server(t0, "udp");
    let (b_invite, _) = answered_call(&mut s, t0, false);
    let offered = media_addr(&b_invite.body).expect("SDP to B");
    assert!((30000..=30099).contains(&offered.rtp.port()), "{offered:?}");

    // B did not negotiate a session timer: we refresh it at half the 1800 s default.
    let mut now = t0;
    let mut refresh = None;
    while refresh.is_none() && now < t0 + Duration::from_secs(901) {
        now = s
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .max(now + Duration::from_millis(1));
        s.handle_timeout(now);
        refresh = sent_to(&mut s, B).into_iter().find_map(|m| match m {
            Message::Request(r) if r.method == crate::sip::Method::Invite => Some(r),
            _ => None,
        });
    }
    let refresh = refresh.expect("a refresh re-INVITE to B by 901 s");
    assert!(now >= t0 + Duration::from_secs(900), "refreshed too early");
    assert_eq!(refresh.call_id().ok(), b_invite.call_id().ok());
    assert_eq!(
        media_addr(&refresh.body).map(|m| m.rtp),
        Some(offered.rtp),
        "the refresh offers B the relay port it already has"
    );
}

#[test]
fn a_relayed_2xx_carries_the_contact_of_the_leg_it_goes_back_on() {
    let t0 = Instant::now();
    let mut s = server(t0, "tcp");
    let (b_invite, _) = answered_call(&mut s, t0, true);
    // The carrier (TCP) sends a re-INVITE; the gateway (UDP) accepts it.
    let body = sdp(7002);
    let reinvite = format!(
        "INVITE sip:127.0.0.1:5060;transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/TCP {B};branch=z9hG4bKre1\r\nMax-Forwards: 70\r\n\
         From: <sip:1234@{B}>;tag=callee-tag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 INVITE\r\n\
         Contact: <sip:callee@{B};transport=tcp>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        b_invite.headers.get(&HeaderName::From).unwrap_or_default(),
        b_invite.call_id().unwrap_or_default(),
        body.len()
    );
    feed_tcp(&mut s, t0, reinvite.as_bytes(), B);
    let to_a = first_request(sent_to(&mut s, A), crate::sip::Method::Invite);
    let mut ok = response_to(&to_a, 200, None);
    ok.headers
        .push(HeaderName::Contact, format!("<sip:caller@{A}>"));
    ok.headers.push(HeaderName::ContentType, "application/sdp");
    ok.body = sdp(6002).into_bytes().into();
    feed(&mut s, t0, &ok.to_bytes(), A);
    let ok_b = ok_to(sent_to(&mut s, B));
    let contact = ok_b.headers.get(&HeaderName::Contact).unwrap_or_default();
    assert!(
        contact.contains("transport=tcp"),
        "Contact to the TCP leg: {contact}"
    );
}

/// The NOTIFYs the carrier got, after a run of the server's clock to `until`.
fn run_until(s: &mut Server, from: Instant, until: Instant, to: &str) -> Vec<Request> {
    let mut now = from;
    let mut got = Vec::new();
    while now < until {
        now = s
            .poll_timeout()
            .unwrap_or(until)
            .clamp(now + Duration::from_millis(1), until);
        s.handle_timeout(now);
        got.extend(sent_to(s, to).into_iter().filter_map(|m| match m {
            Message::Request(r) if r.method == crate::sip::Method::Notify => Some(r),
            _ => None,
        }));
    }
    got
}

#[test]
fn a_dialog_subscriber_hears_of_changes_only_and_is_dropped_when_gone() {
    let t0 = Instant::now();
    let mut s = server(t0, "udp");
    // The carrier (a trunk: no authentication) watches user `caller`.
    let subscribe = format!(
        "SUBSCRIBE sip:caller@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {B};branch=z9hG4bKs1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:watcher@{B}>;tag=w1\r\nTo: <sip:caller@127.0.0.1:5060>\r\n\
         Call-ID: blf-1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:watcher@{B}>\r\nEvent: dialog\r\n\
         Accept: application/dialog-info+xml\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    feed(&mut s, t0, subscribe.as_bytes(), B);
    let first = sent_to(&mut s, B);
    assert!(
        first
            .iter()
            .any(|m| matches!(m, Message::Response(r) if r.status == 200))
    );
    let initial = first_request(first, crate::sip::Method::Notify);
    assert!(!String::from_utf8_lossy(&initial.body).contains("<dialog "));
    feed(&mut s, t0, &response_to(&initial, 200, None).to_bytes(), B);

    // `caller` calls: one NOTIFY for the new confirmed dialog, none for the seconds it lasts.
    answered_call(&mut s, t0, false);
    let mut notifies = run_until(&mut s, t0, t0 + Duration::from_secs(6), B);
    // (Unanswered, a NOTIFY is retransmitted: count each one once.)
    let mut seen = std::collections::HashSet::new();
    notifies.retain(|n| seen.insert(n.headers.get(&HeaderName::CSeq).map(str::to_string)));
    assert_eq!(notifies.len(), 1, "one change, one NOTIFY");
    assert!(String::from_utf8_lossy(&notifies[0].body).contains("confirmed"));
    assert_eq!(s.blf.len(), 1);

    // The watcher forgot the subscription: it is dropped.
    feed(
        &mut s,
        t0 + Duration::from_secs(6),
        &response_to(&notifies[0], 481, None).to_bytes(),
        B,
    );
    assert_eq!(s.blf.len(), 0);
}

/// The last line of defence (`server/guard.rs`): a panic while handling a message of one
/// call ends that call (BYE both legs, CDR `internal_error`), counts it, and leaves every
/// other call and the server working.
#[test]
fn a_panic_costs_one_call_not_the_node() {
    let t0 = Instant::now();
    let mut s = server(t0, "udp");
    let (_, ok1) = answered_call_with_id(&mut s, t0, false, "guard-1");
    let (_, ok2) = answered_call_with_id(&mut s, t0, false, "guard-2");
    assert_eq!(s.b2bua().call_count(), 2);
    let bye = |ok: &Response, call_id: &str| {
        format!(
            "BYE sip:caller@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK{call_id}bye\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{A}>;tag=f1\r\nTo: {}\r\nCall-ID: {call_id}\r\n\
             CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            ok.headers.get(&HeaderName::To).unwrap_or_default()
        )
    };
    let p = parse_datagram(bye(&ok1, "guard-1").as_bytes()).expect("parses");
    let from: SocketAddr = A.parse().expect("addr");
    let inbound = Inbound::Message(Box::new(p), Flow::udp(from));
    let context = super::guard::Context::of(&inbound);
    s.contained(t0, context, |_| panic!("injected fault"));
    assert_eq!(s.counters().internal_errors, 1);
    assert_eq!(s.b2bua().call_count(), 1, "only the touched call ended");
    let byes = sent_to(&mut s, B);
    assert!(
        byes.iter()
            .any(|m| matches!(m, Message::Request(r) if r.method == crate::sip::Method::Bye)),
        "the callee of the touched call gets a BYE"
    );
    let cdrs = s.take_cdrs();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].end_reason, "internal_error");
    // The other call still works: its caller's BYE ends it normally.
    feed(&mut s, t0, bye(&ok2, "guard-2").as_bytes(), A);
    let _ = sent_to(&mut s, B);
    assert_eq!(s.b2bua().call_count(), 0);
    let cdrs = s.take_cdrs();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].end_reason, "normal");
}

/// The carrier's challenge to our session refresh is answered at once with the trunk's
/// credentials (same dialog, next CSeq); challenged again, the refresh is not sent a third
/// time (the call ends, as for any failed refresh).
#[test]
fn a_carrier_challenge_to_a_session_refresh_is_answered_once() {
    let t0 = Instant::now();
    let mut s = server_with(
        t0,
        "udp",
        "username = \"pbx1\"\npassword = \"trunk-secret\"\n",
    );
    let (b_invite, _) = answered_call(&mut s, t0, false);
    let mut server_digest = crate::sip::digest::DigestServer::new("carrier.test", b"k", 3600);
    let challenge = |r: &Request, d: &mut crate::sip::digest::DigestServer| {
        let mut c = response_to(r, 407, Some("callee-tag"));
        for ch in d.challenges(1000, false) {
            c.headers.push(HeaderName::ProxyAuthenticate, ch);
        }
        c
    };
    let refresh_by = |s: &mut Server, from: Instant, until: Instant| {
        let mut now = from;
        while now < until {
            now = s
                .poll_timeout()
                .unwrap_or(until)
                .clamp(now + Duration::from_millis(1), until);
            s.handle_timeout(now);
            if let Some(r) = sent_to(s, B).into_iter().find_map(|m| match m {
                Message::Request(r) if r.method == crate::sip::Method::Invite => Some(r),
                _ => None,
            }) {
                return Some((now, r));
            }
        }
        None
    };
    let (now, refresh) =
        refresh_by(&mut s, t0, t0 + Duration::from_secs(901)).expect("a refresh by 901 s");
    assert!(
        refresh
            .headers
            .get(&HeaderName::ProxyAuthorization)
            .is_none()
    );
    feed(
        &mut s,
        now,
        &challenge(&refresh, &mut server_digest).to_bytes(),
        B,
    );
    let (now, again) = refresh_by(&mut s, now, now + Duration::from_secs(1))
        .expect("the refresh again, with credentials, at once");
    assert_eq!(again.call_id().ok(), b_invite.call_id().ok());
    assert_eq!(
        again.cseq().map(|c| c.seq).ok(),
        refresh.cseq().map(|c| c.seq + 1).ok(),
        "the next CSeq of the dialog"
    );
    let creds = again
        .headers
        .get(&HeaderName::ProxyAuthorization)
        .expect("Proxy-Authorization")
        .to_string();
    assert_eq!(
        server_digest.verify(1000, &creds, "INVITE", |_| Some("trunk-secret")),
        Ok("pbx1".to_string())
    );
    // Refused again: no third refresh.
    feed(
        &mut s,
        now,
        &challenge(&again, &mut server_digest).to_bytes(),
        B,
    );
    assert!(
        refresh_by(&mut s, now, now + Duration::from_secs(5)).is_none(),
        "no refresh loop"
    );
}

/// Everything sent since the last call: (to the gateway A, to the carrier B).
fn sent_ab(s: &mut Server) -> (Vec<Message>, Vec<Message>) {
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().expect("A"), B.parse().expect("B"));
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    while let Some(t) = s.poll_transmit() {
        if let Ok(p) = parse_datagram(&t.bytes) {
            if t.flow.remote == a {
                to_a.push(p.message);
            } else if t.flow.remote == b {
                to_b.push(p.message);
            }
        }
    }
    (to_a, to_b)
}

fn responses(msgs: Vec<Message>, status: u16) -> Vec<Response> {
    msgs.into_iter()
        .filter_map(|m| match m {
            Message::Response(r) if r.status == status => Some(r),
            _ => None,
        })
        .collect()
}

/// RFC 3262 hop by hop: the carrier's reliable 183 is PRACKed on leg B (once, though
/// retransmitted); the caller, which supports 100rel, gets it reliably with an RSeq of ours,
/// again after T1 until its PRACK (answered 200; a PRACK for nothing 481); the ACK after the
/// PRACK still confirms the call, and the BYE to B has a CSeq above the PRACK's.
#[test]
fn reliable_provisionals_are_pracked_on_both_legs() {
    use crate::sip::Method;
    let t0 = Instant::now();
    let mut s = server(t0, "udp");
    let body = sdp(6000);
    let invite = format!(
        "INVITE sip:91234@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bKrel\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{A}>;tag=f1\r\nTo: <sip:91234@127.0.0.1:5060>\r\n\
         Call-ID: rel-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{A}>\r\nSupported: 100rel\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    feed(&mut s, t0, invite.as_bytes(), A);
    let b_invite = first_request(sent_to(&mut s, B), Method::Invite);
    assert!(b_invite.has_token(&HeaderName::Supported, "100rel"));
    let b_cseq = b_invite.cseq().expect("cseq").seq;

    let mut p183 = response_to(&b_invite, 183, Some("callee-tag"));
    p183.reason = "Session Progress".into();
    p183.headers
        .push(HeaderName::Contact, format!("<sip:callee@{B}>"));
    p183.headers.push(HeaderName::Require, "100rel");
    p183.headers.push(HeaderName::Rseq, "7");
    p183.headers
        .push(HeaderName::ContentType, "application/sdp");
    p183.body = sdp(7000).into_bytes().into();
    feed(&mut s, t0, &p183.to_bytes(), B);
    let (to_a, to_b) = sent_ab(&mut s);
    let prack = first_request(to_b, Method::Prack);
    assert_eq!(
        prack.headers.get(&HeaderName::Rack),
        Some(format!("7 {b_cseq} INVITE").as_str())
    );
    assert_eq!(prack.to_tag().as_deref(), Some("callee-tag"));
    let prack_cseq = prack.cseq().expect("cseq").seq;
    assert!(prack_cseq > b_cseq);
    feed(&mut s, t0, &response_to(&prack, 200, None).to_bytes(), B);

    // The caller gets it reliably, through the relay.
    let to_a = responses(to_a, 183);
    let [r183] = to_a.as_slice() else {
        panic!("one 183 to the caller: {to_a:?}")
    };
    assert!(r183.has_token(&HeaderName::Require, "100rel"));
    let rseq: u32 = r183
        .headers
        .get(&HeaderName::Rseq)
        .and_then(|v| v.parse().ok())
        .expect("RSeq");
    assert!(media_addr(&r183.body).is_some_and(|m| (30000..=30099).contains(&m.rtp.port())));

    // The carrier retransmits its 183: no second PRACK, nothing new to the caller.
    feed(&mut s, t0, &p183.to_bytes(), B);
    assert!(
        sent_to(&mut s, B)
            .iter()
            .all(|m| !matches!(m, Message::Request(r) if r.method == Method::Prack)),
        "a retransmitted reliable provisional is PRACKed once"
    );
    // No PRACK from the caller yet: the 183 again after T1 (500 ms), same RSeq.
    let t1 = t0 + Duration::from_millis(500);
    s.handle_timeout(t1);
    let again = responses(sent_to(&mut s, A), 183);
    assert_eq!(again.len(), 1, "retransmitted at T1");
    assert_eq!(
        again[0].headers.get(&HeaderName::Rseq),
        Some(rseq.to_string().as_str())
    );

    let a_tag = r183.to_tag().expect("our tag");
    let prack_a = |rseq: u32, cseq: u32| {
        format!(
            "PRACK sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bKpr{rseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{A}>;tag=f1\r\nTo: <sip:91234@127.0.0.1:5060>;tag={a_tag}\r\n\
             Call-ID: rel-1\r\nCSeq: {cseq} PRACK\r\nRAck: {rseq} 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    feed(&mut s, t1, prack_a(rseq.wrapping_add(5), 2).as_bytes(), A);
    let got = sent_to(&mut s, A);
    assert_eq!(
        responses(got.clone(), 481).len(),
        1,
        "a PRACK for nothing: {got:?}"
    );
    feed(&mut s, t1, prack_a(rseq, 3).as_bytes(), A);
    assert_eq!(
        responses(sent_to(&mut s, A), 200).len(),
        1,
        "the PRACK answered"
    );
    // Acknowledged: no more retransmissions.
    for ms in [1500, 3000, 6000] {
        s.handle_timeout(t0 + Duration::from_millis(ms));
    }
    assert!(responses(sent_to(&mut s, A), 183).is_empty());

    // Answer, ACK (CSeq 1, after the PRACKs), BYE from the caller.
    let mut ok = response_to(&b_invite, 200, Some("callee-tag"));
    ok.headers
        .push(HeaderName::Contact, format!("<sip:callee@{B}>"));
    let now = t0 + Duration::from_secs(7);
    feed(&mut s, now, &ok.to_bytes(), B);
    let ok_a = ok_to(sent_to(&mut s, A));
    let ack = format!(
        "ACK sip:caller@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bKrelack\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{A}>;tag=f1\r\nTo: {}\r\nCall-ID: rel-1\r\n\
         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        ok_a.headers.get(&HeaderName::To).unwrap_or_default()
    );
    feed(&mut s, now, ack.as_bytes(), A);
    let _ack_b = first_request(sent_to(&mut s, B), Method::Ack);
    let bye = format!(
        "BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bKrelbye\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{A}>;tag=f1\r\nTo: {}\r\nCall-ID: rel-1\r\n\
         CSeq: 4 BYE\r\nContent-Length: 0\r\n\r\n",
        ok_a.headers.get(&HeaderName::To).unwrap_or_default()
    );
    feed(&mut s, now, bye.as_bytes(), A);
    let bye_b = first_request(sent_to(&mut s, B), Method::Bye);
    assert!(bye_b.cseq().expect("cseq").seq > prack_cseq);
}
