use std::net::SocketAddr;

use super::*;
use crate::sip::{Headers, response_to};

fn invite() -> Request {
    let mut r = Request::new(Method::Invite, "sip:bob@127.0.0.1:5070");
    let mut h = Headers::new();
    h.push(
        HeaderName::Via,
        "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKx",
    );
    h.push(HeaderName::RecordRoute, "<sip:p1.example;lr>");
    h.push(HeaderName::RecordRoute, "<sip:p2.example;lr>");
    h.push(HeaderName::From, "\"A\" <sip:alice@pbx.local>;tag=ta");
    h.push(HeaderName::To, "<sip:bob@pbx.local>");
    h.push(HeaderName::CallId, "cid");
    h.push(HeaderName::CSeq, "7 INVITE");
    h.push(HeaderName::Contact, "<sip:alice@127.0.0.1:5061>");
    r.headers = h;
    r
}

fn me() -> LocalContact {
    LocalContact {
        udp: "127.0.0.1:5060".into(),
        tcp: "127.0.0.1:5060".into(),
        tls: String::new(),
    }
}

#[test]
fn uas_dialog_uses_record_route_in_order_and_contact_as_target() {
    let src = Flow::udp(SocketAddr::from(([127, 0, 0, 1], 5061)));
    let mut d = Dialog::as_uas(&invite(), "ours", src).unwrap();
    assert_eq!(&*d.remote_tag, "ta");
    assert_eq!(&*d.remote_target, "sip:alice@127.0.0.1:5061");
    d.local_cseq = 65536;
    let bye = d.request(Method::Bye, &me(), None);
    assert_eq!(bye.uri, "sip:alice@127.0.0.1:5061");
    let routes: Vec<_> = bye.headers.get_all(&HeaderName::Route).collect();
    assert_eq!(routes, ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
    assert_eq!(bye.cseq().unwrap().seq, 65537);
    assert_eq!(bye.to_tag().as_deref(), Some("ta"));
    assert_eq!(bye.from_tag().as_deref(), Some("ours"));
}

#[test]
fn uac_dialog_reverses_record_route_and_tracks_cseq() {
    let req = invite();
    let mut resp = response_to(&req, 200, Some("tb"));
    resp.headers
        .push(HeaderName::RecordRoute, "<sip:p2.example;lr>");
    resp.headers
        .push(HeaderName::RecordRoute, "<sip:p1.example;lr>");
    resp.headers
        .push(HeaderName::Contact, "<sip:bob@127.0.0.1:5070>");
    let flow = Flow::udp(SocketAddr::from(([127, 0, 0, 1], 5070)));
    let mut d = Dialog::as_uac(&req, &resp, flow).unwrap();
    assert_eq!(d.state, DialogState::Confirmed);
    assert_eq!(*d.route_set, ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
    let ack = d.ack(&me(), 7, None);
    assert_eq!(ack.cseq().unwrap().seq, 7);
    let bye = d.request(Method::Bye, &me(), None);
    assert_eq!(bye.cseq().unwrap().seq, 8);
}

#[test]
fn remote_cseq_must_not_go_backwards() {
    let src = Flow::udp(SocketAddr::from(([127, 0, 0, 1], 5061)));
    let mut d = Dialog::as_uas(&invite(), "ours", src).unwrap();
    let mut r = invite();
    r.headers.set(HeaderName::CSeq, "8 INVITE");
    assert!(d.accept_remote_cseq(&r));
    r.headers.set(HeaderName::CSeq, "3 INVITE");
    assert!(!d.accept_remote_cseq(&r));
    d.remote_cseq = None; // adopted dialog: any CSeq is accepted first
    assert!(d.accept_remote_cseq(&r));
}

#[test]
fn target_refresh_changes_next_hop() {
    let src = Flow::udp(SocketAddr::from(([127, 0, 0, 1], 5061)));
    let mut d = Dialog::as_uas(&invite(), "ours", src).unwrap();
    d.route_set = Box::default();
    d.refresh_target(NameAddr::parse("<sip:alice@127.0.0.9:6000>").ok());
    assert_eq!(
        d.next_hop().remote,
        SocketAddr::from(([127, 0, 0, 9], 6000))
    );
}

#[test]
fn a_peer_behind_nat_is_reached_where_its_packets_come_from() {
    // The phone says 192.0.2.130:5060 (Via, Contact); its router sent it from another address.
    let mut req = invite();
    req.headers
        .retain(|h| !matches!(h.name, HeaderName::RecordRoute | HeaderName::Via));
    req.headers.push(
        HeaderName::Via,
        "SIP/2.0/UDP 192.0.2.130:5060;branch=z9hG4bKn",
    );
    req.headers
        .set(HeaderName::Contact, "<sip:alice@192.0.2.130:5060>");
    let public = Flow::udp(SocketAddr::from(([203, 0, 113, 2], 40001)));
    let d = Dialog::as_uas(&req, "ours", public).unwrap();
    assert!(d.pinned);
    assert_eq!(d.next_hop(), public);
    // Not behind NAT: the Contact is where requests go (RFC 3261 §12.2.1.1).
    let mut req = invite();
    req.headers.retain(|h| h.name != HeaderName::RecordRoute);
    let src = Flow::udp(SocketAddr::from(([127, 0, 0, 1], 5061)));
    let mut d = Dialog::as_uas(&req, "ours", src).unwrap();
    assert!(!d.pinned);
    d.refresh_target(NameAddr::parse("<sip:alice@127.0.0.1:5099>").ok());
    assert_eq!(
        d.next_hop().remote,
        SocketAddr::from(([127, 0, 0, 1], 5099))
    );
    // As UAC: the INVITE went to a registration's source, not its Request-URI's address.
    let mut out = invite();
    out.uri = "sip:bob@192.0.2.134:5060".into();
    out.headers.retain(|h| h.name != HeaderName::RecordRoute);
    let mut ok = response_to(&out, 200, Some("tb"));
    ok.headers
        .push(HeaderName::Contact, "<sip:bob@192.0.2.134:5060>");
    let home = Flow::udp(SocketAddr::from(([203, 0, 113, 6], 40002)));
    let d = Dialog::as_uac(&out, &ok, home).unwrap();
    assert!(d.pinned);
    assert_eq!(d.next_hop(), home);
}
