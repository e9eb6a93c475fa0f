//! Timer-edge tests on a virtual clock: every instant is computed from a base `Instant`,
//! nothing sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::{Headers, response_to};

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn request(method: Method, branch: &str) -> Request {
    let mut r = Request::new(method.clone(), "sip:bob@127.0.0.1:5070");
    let mut h = Headers::new();
    h.push(
        HeaderName::Via,
        format!("SIP/2.0/UDP 127.0.0.1:5060;branch={branch}"),
    );
    h.push(HeaderName::From, "<sip:alice@pbx.local>;tag=f1");
    h.push(HeaderName::To, "<sip:bob@pbx.local>");
    h.push(HeaderName::CallId, "call-1");
    h.push(HeaderName::CSeq, format!("1 {method}"));
    h.push(HeaderName::MaxForwards, "70");
    r.headers = h;
    r
}

fn layer() -> TransactionLayer {
    TransactionLayer::new(Timers::default(), true)
}

/// Advance the clock in 10 ms steps from `t0` to `t0 + until`, recording when each transmit
/// and event happened (relative to t0, in ms).
fn run(
    l: &mut TransactionLayer,
    t0: Instant,
    until: Duration,
) -> (Vec<u128>, Vec<(u128, TxEvent)>) {
    let mut sent = Vec::new();
    let mut events = Vec::new();
    let mut t = t0;
    while t <= t0 + until {
        if l.poll_timeout().is_some_and(|d| d <= t) {
            l.handle_timeout(t);
        }
        while l.poll_transmit().is_some() {
            sent.push((t - t0).as_millis());
        }
        while let Some(e) = l.poll_event() {
            events.push(((t - t0).as_millis(), e));
        }
        t += Duration::from_millis(10);
    }
    (sent, events)
}

#[test]
fn invite_client_udp_retransmits_at_rfc_instants_and_times_out_at_64_t1() {
    let mut l = layer();
    let t0 = Instant::now();
    l.send_request(
        t0,
        &request(Method::Invite, "z9hG4bKa"),
        Flow::udp(addr(5070)),
    )
    .unwrap();
    let first = l.poll_transmit();
    assert!(first.is_some());
    let (sent, events) = run(&mut l, t0, Duration::from_secs(40));
    assert_eq!(sent, [500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0], (32000, TxEvent::Timeout { .. })));
    assert_eq!(l.client_count(), 0);
}

#[test]
fn invite_client_tcp_never_retransmits() {
    let mut l = layer();
    let t0 = Instant::now();
    l.send_request(
        t0,
        &request(Method::Invite, "z9hG4bKb"),
        Flow::tcp(addr(5070)),
    )
    .unwrap();
    assert!(l.poll_transmit().is_some());
    let (sent, events) = run(&mut l, t0, Duration::from_secs(40));
    assert!(sent.is_empty());
    assert!(matches!(events[..], [(32000, TxEvent::Timeout { .. })]));
}

#[test]
fn invite_client_provisional_stops_a_and_b_non_2xx_is_acked_and_waits_d() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKc");
    l.send_request(t0, &req, Flow::udp(addr(5070))).unwrap();
    l.poll_transmit();
    let t1 = t0 + Duration::from_millis(100);
    l.handle_response(
        t1,
        response_to(&req, 180, Some("tt")),
        Flow::udp(addr(5070)),
    );
    assert!(
        matches!(l.poll_event(), Some(TxEvent::Response { ref response, .. }) if response.status == 180)
    );
    let (sent, events) = run(&mut l, t1, Duration::from_secs(60));
    assert!(sent.is_empty() && events.is_empty(), "1xx stops A and B");
    let t2 = t0 + Duration::from_secs(61);
    l.handle_response(
        t2,
        response_to(&req, 486, Some("tt")),
        Flow::udp(addr(5070)),
    );
    let ack = l.poll_transmit().expect("ACK for non-2xx");
    assert!(ack.bytes.starts_with(b"ACK sip:bob@127.0.0.1:5070 SIP/2.0"));
    let ack_text = String::from_utf8_lossy(&ack.bytes).to_string();
    assert!(ack_text.contains("tag=tt") && ack_text.contains("CSeq: 1 ACK"));
    assert!(ack_text.contains("branch=z9hG4bKc"));
    assert!(
        matches!(l.poll_event(), Some(TxEvent::Response { ref response, .. }) if response.status == 486)
    );
    // a retransmitted 486 is re-ACKed, not passed up
    l.handle_response(
        t2 + Duration::from_secs(1),
        response_to(&req, 486, Some("tt")),
        Flow::udp(addr(5070)),
    );
    assert!(l.poll_transmit().is_some());
    assert!(l.poll_event().is_none());
    // Timer D: 32 s on UDP
    l.handle_timeout(t2 + Duration::from_millis(31_990));
    assert_eq!(l.client_count(), 1);
    l.handle_timeout(t2 + Duration::from_secs(32));
    assert_eq!(l.client_count(), 0);
}

#[test]
fn invite_client_2xx_moves_to_accepted_and_passes_retransmissions_until_m() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKd");
    l.send_request(t0, &req, Flow::udp(addr(5070))).unwrap();
    l.poll_transmit();
    let ok = response_to(&req, 200, Some("tt"));
    l.handle_response(t0, ok.clone(), Flow::udp(addr(5070)));
    l.handle_response(
        t0 + Duration::from_secs(1),
        ok.clone(),
        Flow::udp(addr(5070)),
    );
    let mut n = 0;
    while let Some(e) = l.poll_event() {
        assert!(matches!(e, TxEvent::Response { ref response, .. } if response.status == 200));
        n += 1;
    }
    assert_eq!(
        n, 2,
        "2xx retransmission reaches the TU (it re-sends the ACK)"
    );
    assert!(
        l.poll_transmit().is_none(),
        "the transaction never ACKs a 2xx"
    );
    l.handle_timeout(t0 + Duration::from_millis(31_999));
    assert_eq!(l.client_count(), 1);
    l.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(l.client_count(), 0, "Timer M = 64*T1");
}

#[test]
fn non_invite_client_e_doubles_to_t2_then_f() {
    let mut l = layer();
    let t0 = Instant::now();
    l.send_request(
        t0,
        &request(Method::Options, "z9hG4bKe"),
        Flow::udp(addr(5070)),
    )
    .unwrap();
    l.poll_transmit();
    let (sent, events) = run(&mut l, t0, Duration::from_secs(40));
    // 0.5, 1.5, 3.5, 7.5, then every T2 = 4 s: 11.5 ... 31.5
    assert_eq!(
        sent,
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert!(matches!(events[..], [(32000, TxEvent::Timeout { .. })]));
}

#[test]
fn non_invite_client_proceeding_retransmits_every_t2_and_k_after_final() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Options, "z9hG4bKf");
    l.send_request(t0, &req, Flow::udp(addr(5070))).unwrap();
    l.poll_transmit();
    l.handle_response(
        t0 + Duration::from_millis(100),
        response_to(&req, 100, None),
        Flow::udp(addr(5070)),
    );
    // E still at 0.5 (armed in Trying), then T2 steps: 4.5, 8.5 ...
    let (sent, _) = run(
        &mut l,
        t0 + Duration::from_millis(100),
        Duration::from_millis(9_000),
    );
    assert_eq!(sent, [400, 4400, 8400]);
    let tf = t0 + Duration::from_secs(10);
    l.handle_response(tf, response_to(&req, 200, Some("x")), Flow::udp(addr(5070)));
    let events: Vec<_> = std::iter::from_fn(|| l.poll_event()).collect();
    assert!(
        matches!(events[..], [TxEvent::Response { ref response, .. }] if response.status == 200),
        "the final reaches the TU"
    );
    l.handle_timeout(tf + Duration::from_millis(4_999));
    assert_eq!(l.client_count(), 1);
    l.handle_timeout(tf + Duration::from_secs(5));
    assert_eq!(l.client_count(), 0, "Timer K = T4 on UDP");
}

#[test]
fn non_invite_client_tcp_k_is_zero() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Options, "z9hG4bKg");
    l.send_request(t0, &req, Flow::tcp(addr(5070))).unwrap();
    l.handle_response(t0, response_to(&req, 200, Some("x")), Flow::tcp(addr(5070)));
    l.handle_timeout(t0);
    assert_eq!(l.client_count(), 0);
}

fn inbound_invite(l: &mut TransactionLayer, t: Instant, branch: &str, proto: Proto) -> ServerTxId {
    let req = request(Method::Invite, branch);
    let flow = Flow {
        proto,
        remote: addr(5061),
        conn: None,
    };
    l.handle_request(t, req, flow);
    let trying = l.poll_transmit().expect("100 Trying");
    assert!(trying.bytes.starts_with(b"SIP/2.0 100 Trying"));
    match l.poll_event() {
        Some(TxEvent::Request { id, .. }) => id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn invite_server_absorbs_retransmissions_and_g_h_edges() {
    let mut l = layer();
    let t0 = Instant::now();
    let id = inbound_invite(&mut l, t0, "z9hG4bKs1", Proto::Udp);
    // retransmitted INVITE: 100 again, no new event
    l.handle_request(
        t0 + Duration::from_millis(500),
        request(Method::Invite, "z9hG4bKs1"),
        Flow::udp(addr(5061)),
    );
    assert!(l.poll_transmit().is_some());
    assert!(l.poll_event().is_none());
    let req = request(Method::Invite, "z9hG4bKs1");
    l.respond(t0, id, &response_to(&req, 486, Some("t")))
        .unwrap();
    l.poll_transmit();
    let (sent, events) = run(&mut l, t0, Duration::from_secs(40));
    // G: 0.5, 1.5, 3.5, 7.5, then T2: 11.5, ... 31.5; H at 32 s
    assert_eq!(
        sent,
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert!(matches!(events[..], [(32000, TxEvent::NoAck { .. })]));
    assert_eq!(l.server_count(), 0);
}

#[test]
fn invite_server_ack_confirms_and_i_terminates() {
    let mut l = layer();
    let t0 = Instant::now();
    let id = inbound_invite(&mut l, t0, "z9hG4bKs2", Proto::Udp);
    let req = request(Method::Invite, "z9hG4bKs2");
    l.respond(t0, id, &response_to(&req, 404, Some("t")))
        .unwrap();
    l.poll_transmit();
    let mut ack = request(Method::Ack, "z9hG4bKs2");
    ack.headers.set(HeaderName::CSeq, "1 ACK");
    l.handle_request(
        t0 + Duration::from_millis(200),
        ack.clone(),
        Flow::udp(addr(5061)),
    );
    assert!(l.poll_event().is_none(), "ACK for non-2xx is absorbed");
    let (sent, _) = run(
        &mut l,
        t0 + Duration::from_millis(200),
        Duration::from_secs(2),
    );
    assert!(sent.is_empty(), "G stops on ACK");
    l.handle_timeout(t0 + Duration::from_millis(5_199));
    assert_eq!(l.server_count(), 1);
    l.handle_timeout(t0 + Duration::from_millis(5_200));
    assert_eq!(l.server_count(), 0, "Timer I = T4");
}

#[test]
fn invite_server_2xx_retransmitted_until_ack_then_l() {
    let mut l = layer();
    let t0 = Instant::now();
    let id = inbound_invite(&mut l, t0, "z9hG4bKs3", Proto::Udp);
    let req = request(Method::Invite, "z9hG4bKs3");
    l.respond(t0, id, &response_to(&req, 200, Some("t")))
        .unwrap();
    l.poll_transmit();
    let (sent, _) = run(&mut l, t0, Duration::from_millis(4_000));
    assert_eq!(sent, [500, 1500, 3500]);
    // the 2xx ACK has its own branch: matched by Call-ID and CSeq, and passed up
    let mut ack = request(Method::Ack, "z9hG4bKother");
    ack.headers.set(HeaderName::CSeq, "1 ACK");
    l.handle_request(
        t0 + Duration::from_millis(4_000),
        ack,
        Flow::udp(addr(5061)),
    );
    assert!(matches!(l.poll_event(), Some(TxEvent::Ack { .. })));
    let (sent, events) = run(
        &mut l,
        t0 + Duration::from_millis(4_000),
        Duration::from_secs(30),
    );
    assert!(sent.is_empty() && events.is_empty());
    assert_eq!(l.server_count(), 0, "Timer L = 64*T1 ended it");
}

#[test]
fn invite_server_2xx_without_ack_reports_no_ack_at_l() {
    let mut l = layer();
    let t0 = Instant::now();
    let id = inbound_invite(&mut l, t0, "z9hG4bKs4", Proto::Tcp);
    let req = request(Method::Invite, "z9hG4bKs4");
    l.respond(t0, id, &response_to(&req, 200, Some("t")))
        .unwrap();
    l.poll_transmit();
    let (sent, events) = run(&mut l, t0, Duration::from_secs(33));
    assert!(sent.is_empty(), "no 2xx retransmission on TCP");
    assert!(matches!(events[..], [(32000, TxEvent::NoAck { .. })]));
}

#[test]
fn non_invite_server_j_edges_udp_and_tcp() {
    for (proto, j) in [(Proto::Udp, 32_000u64), (Proto::Tcp, 0)] {
        let mut l = layer();
        let t0 = Instant::now();
        let req = request(Method::Options, "z9hG4bKn1");
        l.handle_request(
            t0,
            req.clone(),
            Flow {
                proto,
                remote: addr(5061),
                conn: None,
            },
        );
        let Some(TxEvent::Request { id, .. }) = l.poll_event() else {
            panic!("request event");
        };
        // retransmission before the final: absorbed silently (Trying)
        l.handle_request(
            t0,
            req.clone(),
            Flow {
                proto,
                remote: addr(5061),
                conn: None,
            },
        );
        assert!(l.poll_transmit().is_none());
        l.respond(t0, id, &response_to(&req, 200, Some("t")))
            .unwrap();
        assert!(l.poll_transmit().is_some());
        // retransmission after the final: the final again
        l.handle_request(
            t0,
            req.clone(),
            Flow {
                proto,
                remote: addr(5061),
                conn: None,
            },
        );
        assert!(l.poll_transmit().is_some());
        if j > 0 {
            l.handle_timeout(t0 + Duration::from_millis(j - 1));
            assert_eq!(l.server_count(), 1);
        }
        l.handle_timeout(t0 + Duration::from_millis(j));
        assert_eq!(l.server_count(), 0, "{proto:?}");
    }
}

#[test]
fn custom_t1_scales_every_timer() {
    let mut l = TransactionLayer::new(
        Timers {
            t1: Duration::from_millis(50),
            t2: Duration::from_millis(400),
            t4: Duration::from_millis(500),
        },
        true,
    );
    let t0 = Instant::now();
    l.send_request(
        t0,
        &request(Method::Invite, "z9hG4bKt1"),
        Flow::udp(addr(5070)),
    )
    .unwrap();
    l.poll_transmit();
    let (sent, events) = run(&mut l, t0, Duration::from_secs(4));
    assert_eq!(sent, [50, 150, 350, 750, 1550, 3150]);
    assert!(matches!(events[..], [(3200, TxEvent::Timeout { .. })]));
}

#[test]
fn cancel_matches_its_invite_and_responses_go_to_the_source_port() {
    let mut l = layer();
    let t0 = Instant::now();
    let id = inbound_invite(&mut l, t0, "z9hG4bKc1", Proto::Udp);
    let mut cancel = request(Method::Cancel, "z9hG4bKc1");
    cancel.headers.set(HeaderName::CSeq, "1 CANCEL");
    assert_eq!(l.cancel_target(&cancel), Some(id));
    l.handle_request(t0, cancel, Flow::udp(addr(5099)));
    let Some(TxEvent::Request {
        id: cid, request, ..
    }) = l.poll_event()
    else {
        panic!("CANCEL is its own transaction");
    };
    assert_ne!(cid, id);
    let via = request.top_via().unwrap();
    assert_eq!(via.params.value("received"), None, "same host: no received");
    // responses follow the source address (rport behaviour)
    l.respond(t0, cid, &response_to(&request, 200, None))
        .unwrap();
    let tx = l.poll_transmit().unwrap();
    assert_eq!(tx.flow.remote, addr(5099));
}

#[test]
fn stray_responses_are_reported() {
    let mut l = layer();
    let req = request(Method::Bye, "z9hG4bKnone");
    l.handle_response(
        Instant::now(),
        response_to(&req, 200, None),
        Flow::udp(addr(1)),
    );
    assert!(matches!(
        l.poll_event(),
        Some(TxEvent::StrayResponse { .. })
    ));
}

#[test]
fn a_full_server_table_refuses_with_503_instead_of_growing() {
    let mut l = layer();
    l.set_max_server_transactions(2);
    let t0 = Instant::now();
    for i in 0..3 {
        l.handle_request(
            t0,
            request(Method::Options, &format!("z9hG4bKo{i}")),
            Flow::udp(addr(5061)),
        );
    }
    assert_eq!(l.server_count(), 2);
    assert_eq!(l.stats().overload_refused, 1);
    let sent: Vec<_> = std::iter::from_fn(|| l.poll_transmit()).collect();
    assert!(sent.iter().any(|t| t.bytes.starts_with(b"SIP/2.0 503")));
    // Once the table drains, requests are served again.
    let events: Vec<_> = std::iter::from_fn(|| l.poll_event()).collect();
    for e in events {
        if let TxEvent::Request { id, request, .. } = e {
            l.respond(t0, id, &response_to(&request, 200, Some("t")))
                .unwrap();
        }
    }
    l.handle_timeout(t0 + Duration::from_secs(33));
    assert_eq!(l.server_count(), 0);
    l.handle_request(
        t0 + Duration::from_secs(33),
        request(Method::Options, "z9hG4bKo9"),
        Flow::udp(addr(5061)),
    );
    assert_eq!(l.server_count(), 1);
}
